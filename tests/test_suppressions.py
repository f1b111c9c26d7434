"""The suppression list (issue 27): an address a mail server refuses for good is suppressed at once, and the next
notification to it never reaches the mail server: its email channel says `suppressed` and why, and the entity's
fallback channel is used. Operators read and change the list over the API and the command line. On both backends,
with the local mail and Slack sinks."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr

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
from tests.test_inbound import (
    CREDENTIALS,
    SES_BOUNCE,
    SES_MAIL,
    SIGNING_KEY,
    SNS_HEADERS,
    TOKEN,
    VERIFICATION_KEY,
    basic,
    mailgun_body,
    mailgun_failed,
    postmark_record,
    sendgrid_event,
    sendgrid_signed,
    sns,
)

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
    ("reply", "at_rcpt", "at_data"),
    [
        ("550 No such user", True, False),  # no enhanced code: a refused mailbox only at RCPT
        (
            "550 relay not permitted",
            True,
            False,
        ),  # a relay refusal may read so: without an enhanced code, RCPT refuses the mailbox
        ("554 Message rejected as spam", False, False),
        ("550 5.1.1 No such user", True, True),
        ("550 5.1.10 Null MX", True, True),
        ("554 5.2.1 Mailbox disabled", True, True),
        ("553 5.1.8 Sender address rejected: Domain not found", False, False),  # the sender's
        ("550 5.1.7 Bad sender", False, False),
        ("552 5.2.2 Mailbox full", False, False),  # it empties
        ("550 5.7.1 Rejected by policy", False, False),  # about the sender, not the address
        ("554 5.3.4 Message too big", False, False),
        ("450 4.2.1 Try later", False, False),
    ],
)
def test_only_a_permanent_refusal_of_the_mailbox_suppresses(reply: str, at_rcpt: bool, at_data: bool) -> None:
    code, message = reply.split(" ", 1)
    assert refuses_mailbox(int(code), message, at_rcpt=True) is at_rcpt
    assert refuses_mailbox(int(code), message, at_rcpt=False) is at_data


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


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Every provider's inbound webhook configured, and an SNS subscription confirmed on loopback."""
    return settings.model_copy(
        update={
            "sendgrid_verification_key": SecretStr(VERIFICATION_KEY),
            "mailgun_signing_key": SecretStr(SIGNING_KEY),
            "postmark_webhook_credentials": SecretStr(CREDENTIALS),
            "ses_webhook_token": SecretStr(TOKEN),
            "webhook_allow_private": True,
            "postmark_metadata": True,
        }
    )


def _bounce(provider: str, address: str, message_id: str) -> tuple[bytes, dict[str, str], dict[str, str]]:
    """A hard bounce of `address` as `provider` sends it, authenticated: body, headers, query."""
    if provider == "sendgrid":
        event = sendgrid_event("bounce", email=address, reason="550 unknown recipient", status="5.1.1", type="bounce")
        body = json.dumps([event | {"smtp-id": message_id}]).encode()
        return body, sendgrid_signed(body), {}
    if provider == "mailgun":
        failed = mailgun_failed("permanent", 550, "5.1.1 The email account that you tried to reach does not exist.")
        failed["recipient"], failed["message"]["headers"]["message-id"] = address, message_id.strip("<>")
        return mailgun_body(failed), {"Content-Type": "application/json"}, {}
    if provider == "postmark":
        short = message_id.strip("<>").partition("@")[0]  # as the email's X-PM-Metadata-notify-message-id gave it
        body = postmark_record("Bounce", "HardBounce", Email=address, Metadata={"notify-message-id": short})
        return body, basic(CREDENTIALS) | {"Content-Type": "application/json"}, {}
    common: dict[str, Any] = {**SES_MAIL["commonHeaders"], "messageId": message_id}  # type: ignore[dict-item]
    recipient = {"emailAddress": address, "status": "5.1.1", "action": "failed", "diagnosticCode": "smtp; 550"}
    said: dict[str, Any] = {**SES_BOUNCE["bounce"], "bouncedRecipients": [recipient]}  # type: ignore[dict-item]
    bounce = {**SES_BOUNCE, "mail": {**SES_MAIL, "commonHeaders": common, "headers": []}, "bounce": said}
    return sns("Notification", bounce), SNS_HEADERS, {"token": TOKEN}


PROVIDERS = ["sendgrid", "mailgun", "postmark", "ses"]


@ON_BOTH_BACKENDS
async def test_each_providers_bounce_suppresses_its_address_and_shows_on_the_notification(
    api: Api, owner: StreamStore, mail_sink: MailSink
) -> None:
    await import_entries(owner, [entity(id=p, email=f"{p}@example.com", channels={"email": "send"}) for p in PROVIDERS])
    sent = {p: await _notified(api, p) for p in PROVIDERS}
    assert all(view["status"] == "sent" for view in sent.values())
    mailed = {m.recipients[0]: m.message for m in mail_sink.messages}
    for provider in PROVIDERS:
        address, view = f"{provider}@example.com", sent[provider]
        message_id = mailed[address]["Message-ID"]
        short = message_id.strip("<>").partition("@")[0]  # for Postmark, which drops the Message-ID
        assert mailed[address]["X-PM-Metadata-notify-message-id"] == short
        body, headers, query = _bounce(provider, address, message_id)
        before = await api.records()
        for forged in _forgeries(provider, body, headers, query):
            refused = await api.call("POST", f"/v1/inbound/{provider}", key=None, **forged)
            assert refused.status_code == 401, (provider, refused.text)
        assert await api.records() == before  # a forged or unsigned event changes nothing

        inbound: dict[str, Any] = {"key": None, "content": body, "headers": headers, "params": query}
        answer = await api.call("POST", f"/v1/inbound/{provider}", **inbound)
        assert answer.status_code == 200, (provider, answer.text)
        assert answer.json() == {
            "recorded": 1,
            "matched": [view["id"]],
            "suppressed": [address],
            "ignored": 0,
            "subscription_confirmed": False,
        }
        again = await api.call("POST", f"/v1/inbound/{provider}", **inbound)
        taken = 1 if provider == "mailgun" else 0  # Mailgun's token, taken once: its signature does not cover the event
        if taken:  # the same request again, or its signature with another event: a replay
            assert again.status_code == 401 and "replay" in again.json()["detail"]
            forged = json.loads(body)
            forged["event-data"]["recipient"] = "someone-else@example.com"
            replayed = await api.call("POST", "/v1/inbound/mailgun", key=None, content=json.dumps(forged).encode())
            assert replayed.status_code == 401
        else:  # said again: nothing more
            assert again.status_code == 200 and again.json()["suppressed"] == []
        assert await api.records() == before + 2 + taken  # the event and the suppression (and the token)

        shown = (await api.call("GET", f"/v1/notifications/{view['id']}")).json()["channels"]["email"]
        [feedback] = shown["feedback"]
        assert (feedback["kind"], feedback["provider"], feedback["permanent"]) == ("bounced", provider, True)
        events = (await api.call("GET", f"/v1/notifications/{view['id']}/events")).json()
        assert [e["type"] for e in events].count("EmailBouncedEvent") == 1
        [audited] = (await api.call("GET", "/v1/audit/email", params={"address": address})).json()
        assert audited["outcome"] == "bounced"
        page = await api.http.get(
            f"/notifications/{view['id']}", headers={"Cookie": f"notify_key={api.keys['reader']}"}
        )
        assert f"Bounced ({provider}, " in page.text and 'class="channel outcome-bounced"' in page.text
    held = (await api.call("GET", "/v1/suppressions")).json()
    assert sorted((s["address"], s["source"]) for s in held) == sorted((f"{p}@example.com", p) for p in PROVIDERS)
    assert all(s["reason"].startswith("bounce: ") for s in held)
    assert (await api.call("POST", "/v1/inbound/sparkpost", key=None, content=b"[]")).status_code == 404


def _forgeries(provider: str, body: bytes, headers: dict[str, str], query: dict[str, str]) -> list[dict[str, Any]]:
    """The request unsigned, and signed by someone else or altered after it was signed."""
    if provider == "sendgrid":
        other = ec.generate_private_key(ec.SECP256R1())
        return [
            {"content": body, "headers": {"Content-Type": "application/json"}},
            {"content": body, "headers": sendgrid_signed(body, other)},
            {"content": body.replace(b"550", b"551"), "headers": headers},
        ]
    if provider == "mailgun":
        signed = json.loads(body)
        return [
            {"content": json.dumps({"event-data": signed["event-data"]}).encode(), "headers": headers},
            {"content": mailgun_body(signed["event-data"], key="key-someone-else"), "headers": headers},
        ]
    if provider == "postmark":
        return [{"content": body}, {"content": body, "headers": basic("notify:guessed")}]
    return [{"content": body, "headers": headers}, {"content": body, "headers": headers, "params": {"token": "guess"}}]


async def test_an_sns_subscription_is_confirmed_by_visiting_its_url(api: Api) -> None:
    visits: list[str] = []

    class Confirmation(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            visits.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Confirmation)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/?Action=ConfirmSubscription&Token=2336412f37"
        body = sns("SubscriptionConfirmation", "You have chosen to subscribe", SubscribeURL=url, Token="2336412f37")
        answer = await api.call("POST", "/v1/inbound/ses", key=None, content=body, params={"token": TOKEN})
    finally:
        server.shutdown()
    assert answer.status_code == 200 and answer.json()["subscription_confirmed"] is True
    assert visits == ["/?Action=ConfirmSubscription&Token=2336412f37"]


async def test_a_soft_bounce_is_recorded_and_suppresses_nothing(
    api: Api, owner: StreamStore, mail_sink: MailSink
) -> None:
    await import_entries(owner, [entity(id="soft", email="soft@example.com", channels={"email": "send"})])
    view = await _notified(api, "soft")
    failed = mailgun_failed("temporary", 452, "4.2.2 The email account that you tried to reach is over quota.")
    failed["recipient"] = "soft@example.com"
    failed["message"]["headers"]["message-id"] = mail_sink.messages[0].message["Message-ID"].strip("<>")
    answer = await api.call("POST", "/v1/inbound/mailgun", key=None, content=mailgun_body(failed))
    assert answer.json() == {
        "recorded": 1,
        "matched": [view["id"]],
        "suppressed": [],
        "ignored": 0,
        "subscription_confirmed": False,
    }
    [feedback] = (await api.call("GET", f"/v1/notifications/{view['id']}")).json()["channels"]["email"]["feedback"]
    assert (feedback["kind"], feedback["permanent"]) == ("bounced", False) and "over quota" in feedback["detail"]
    assert (await api.call("GET", "/v1/suppressions")).json() == []
