"""The suppression list (issue 27): an address a mail server refuses for good is suppressed at once, and the next
notification to it never reaches the mail server: its email channel says `suppressed` and why, and the entity's
fallback channel is used. Operators read and change the list over the API and the command line. On both backends,
with the local mail and Slack sinks."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from activities.email import refuses_mailbox
from domain import SuppressionSource
from harness.processes import ROOT, unconfigured_environment
from settings import Settings
from sinks.mail import MailSink
from sinks.slack import SlackSink
from streams import StreamName, StreamStore
from streams.directory import import_entries
from streams.suppressions import change_suppression, suppressions
from tests.conftest import ON_BOTH_BACKENDS
from tests.service import Api, entity

GONE = "gone@example.com"


@ON_BOTH_BACKENDS
async def test_an_address_refused_for_good_is_suppressed_and_the_next_email_never_reaches_the_server(
    api: Api, owner: StreamStore, mail_sink: MailSink, slack_sink: SlackSink
) -> None:
    """Email only, Slack as its fallback: the 550 fails the email and suppresses the address; the next notification
    goes by Slack alone, its email channel `suppressed`, without a word to the mail server."""
    await import_entries(owner, [entity(id="gone", email=GONE.upper(), channels={"email": "send"}, fallback="slack")])
    mail_sink.rejected_recipients[GONE.upper()] = "550 5.1.1 <GONE@example.com>: no such user"

    first = await _notified(api, "gone")
    assert first["status"] == "sent"  # the fallback delivered
    email = first["channels"]["email"]
    assert email["outcome"] == "failed" and "550 5.1.1" in email["reason"]
    assert mail_sink.refused == [GONE.upper()]
    listed = (await api.call("GET", "/v1/suppressions")).json()
    assert [(s["address"], s["source"], s["notification_id"]) for s in listed] == [(GONE, "smtp", first["id"])]
    assert listed[0]["reason"] == "550 5.1.1 <GONE@example.com>: no such user"

    second = await _notified(api, "gone")
    email = second["channels"]["email"]
    assert (second["status"], email["outcome"]) == ("sent", "suppressed")
    assert f"{GONE} is suppressed since " in email["reason"] and "(smtp: 550 5.1.1" in email["reason"]
    assert second["channels"]["slack"]["fallback"] is True
    assert mail_sink.refused == [GONE.upper()] and mail_sink.messages == []  # nothing more reached the server
    assert len(slack_sink.messages) == 2

    lifted = await api.call("DELETE", f"/v1/suppressions/{GONE}", json={"reason": "the mailbox is back"})
    assert lifted.status_code == 200 and lifted.json()["suppressed"] is False
    assert (await api.call("GET", f"/v1/suppressions/{GONE}")).status_code == 404
    mail_sink.rejected_recipients.clear()
    third = await _notified(api, "gone")
    assert (third["status"], third["channels"]["email"]["outcome"]) == ("sent", "succeeded")
    assert [m.recipients for m in mail_sink.messages] == [(GONE.upper(),)]


async def _notified(api: Api, entity_id: str) -> dict[str, Any]:
    answer = await api.call("POST", "/v1/notifications", json={"entity": entity_id, "subject": "S", "body": "B"})
    assert answer.status_code == 202, answer.text
    return await api.outcome(answer.json()["id"])


@ON_BOTH_BACKENDS
async def test_operators_suppress_and_lift_addresses_over_the_api(api: Api) -> None:
    put = await api.call("PUT", "/v1/suppressions/Someone@Example.com", json={"reason": "asked by phone"})
    assert put.status_code == 200, put.text
    held = put.json()
    assert (held["address"], held["suppressed"], held["source"], held["reason"]) == (
        "someone@example.com",
        True,
        "operator",
        "asked by phone",
    )
    again = await api.call("PUT", "/v1/suppressions/someone@example.com", json={"reason": "again"})
    assert again.json() == held  # suppressed already: its first reason and time stay
    assert (await api.call("GET", "/v1/suppressions/SOMEONE@example.com")).json() == held
    assert (await api.call("PUT", "/v1/suppressions/x@example.com", key="reader")).status_code == 403
    assert (await api.call("PUT", "/v1/suppressions/not-an-address")).status_code == 422
    assert (await api.call("DELETE", "/v1/suppressions/nobody@example.com")).status_code == 404
    assert [s["address"] for s in (await api.call("GET", "/v1/suppressions", key="reader")).json()] == [
        "someone@example.com"
    ]


@pytest.mark.parametrize(
    ("reply", "suppresses"),
    [
        ("550 No such user", True),
        ("550 5.1.1 No such user", True),
        ("554 5.2.1 Mailbox disabled", True),
        ("552 5.2.2 Mailbox full", False),  # it empties
        ("550 5.7.1 Rejected by policy", False),  # about the sender, not the address
        ("554 5.3.4 Message too big", False),
        ("450 4.2.1 Try later", False),
    ],
)
def test_only_a_permanent_refusal_of_the_mailbox_suppresses(reply: str, suppresses: bool) -> None:
    code, message = reply.split(" ", 1)
    assert refuses_mailbox(int(code), message) is suppresses


async def test_the_command_line_lists_adds_and_removes(store: StreamStore, settings: Settings) -> None:
    env = {**unconfigured_environment(), "NOTIFY_STREAMS_URL": settings.streams_location}

    def starter(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(ROOT / "starter.py"), "suppression", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    assert starter("list").stdout == "no address is suppressed\n"
    added = starter("add", "Ops@Example.com", "--reason", "complained by phone")
    assert (added.returncode, added.stdout) == (0, "ops@example.com: suppressed\n")
    assert starter("add", "ops@example.com").stdout == "ops@example.com: suppressed already\n"
    [shown] = json.loads(starter("list", "--json").stdout)
    assert (shown["address"], shown["source"]) == ("ops@example.com", "operator")
    assert shown["reason"] == "complained by phone"
    assert starter("list").stdout.startswith("ops@example.com  since ")
    bad = starter("add", "not an address")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.splitlines()) == 1
    assert starter("remove", "ops@example.com").stdout == "ops@example.com: not suppressed\n"
    assert await suppressions(store.reader(StreamName.EMAIL_EVENT)) == []
    assert await change_suppression(store, "ops@example.com", False, "x", SuppressionSource.OPERATOR) is None
