"""Categories (issue 28): a request names a category (`NOTIFY_CATEGORIES_FILE`), and an entity's preferences per
category and channel, on top of its channel switches, decide where it goes; the outcome says which preference kept
a channel off. A category that may not be opted out of is sent whatever the entity's preferences say. On both
backends, through the HTTP API, with the local mail and Slack sinks."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError
from temporalio.testing import WorkflowEnvironment

from domain import (
    Category,
    ChannelPreference,
    DirectoryEntry,
    SagaPolicies,
    SendNotificationToEntityOp,
    get_delivery_channel_configs,
)
from harness.processes import ROOT, unconfigured_environment
from settings import ConfigurationError, Settings
from sinks.mail import MailSink
from sinks.slack import SlackSink
from streams import StreamStore
from streams.directory import import_entries
from tests.conftest import ON_BOTH_BACKENDS
from tests.service import Api, entity, notifying

CATEGORIES = """\
- {name: billing, description: Invoices and receipts}
- {name: marketing, description: Product news}
- {name: digest, description: The weekly digest, defaults: {slack: opted-out}}
- {name: security, description: Security alerts, defaults: {email: send, slack: send}, opt_out: false}
"""


PUBLIC_URL = "https://notify.example.com"
LINK_SECRET = "a-secret-long-enough-for-the-tests"


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """The categories, and links signed for the API server's public address (which the tests map to theirs)."""
    (tmp_path / "categories.yaml").write_text(CATEGORIES)
    linked = {"public_url": PUBLIC_URL, "link_secret": SecretStr(LINK_SECRET), "slack_unsubscribe_footer": True}
    return settings.model_copy(update={"categories_file": tmp_path / "categories.yaml", **linked})


def reader(**preferences: dict[str, str]) -> DirectoryEntry:
    """An entity on email and Slack, with these preferences by category."""
    return entity(id="reader", email="reader@example.com", preferences=preferences)


async def _notified(api: Api, category: str | None) -> dict[str, Any]:
    body = {"entity": "reader", "subject": f"About {category}", "body": "B", "category": category}
    answer = await api.call("POST", "/v1/notifications", json=body)
    assert answer.status_code == 202, answer.text
    return await api.outcome(answer.json()["id"])


@ON_BOTH_BACKENDS
async def test_an_entity_opted_out_of_a_category_on_email_gets_it_on_slack_and_the_others_by_email(
    api: Api, owner: StreamStore, mail_sink: MailSink, slack_sink: SlackSink
) -> None:
    await import_entries(owner, [reader(marketing={"email": "opted-out"}, security={"email": "opted-out"})])
    views = {c: await _notified(api, c) for c in ("marketing", "billing", "security", "digest", None)}

    marketing = views["marketing"]
    assert marketing["status"] == "sent"  # what it is opted out of counts for nothing
    email = marketing["channels"]["email"]
    assert (email["outcome"], email["reason"]) == (
        "opted_out",
        "email: opted out of 'marketing' (the entity's preference)",
    )
    assert marketing["channels"]["slack"]["outcome"] == "succeeded"
    assert views["digest"]["channels"]["slack"]["outcome"] == "opted_out"  # the category's default
    assert views["digest"]["channels"]["slack"]["reason"] == "slack: 'digest' is off by default (the category's)"
    for sent_on_both in ("billing", "security", None):  # security: not to be opted out of
        assert {c: v["outcome"] for c, v in views[sent_on_both]["channels"].items()} == {
            "email": "succeeded",
            "slack": "succeeded",
        }, sent_on_both
    mailed = sorted(m.message["Subject"] for m in mail_sink.messages)
    assert mailed == ["About None", "About billing", "About digest", "About security"]
    assert len(slack_sink.messages) == 4  # all but the digest

    unknown = await api.call(
        "POST", "/v1/notifications", json={"entity": "reader", "subject": "S", "body": "B"} | {"category": "sales"}
    )
    assert unknown.status_code == 422
    assert unknown.json()["detail"] == (
        "category: 'sales' is not a configured category (billing, marketing, digest, security)"
    )


def test_everything_opted_out_ends_opted_out_and_a_channel_switched_off_stays_off() -> None:
    policies = SagaPolicies.model_validate(Settings(_env_file=None, slack_token="xoxb-t").saga_policies().model_dump())
    marketing = Category(name="marketing")
    off_everywhere = reader(marketing={"email": "opted-out", "slack": "opted-out"})
    configs = get_delivery_channel_configs(off_everywhere, policies, marketing)
    assert [c.action for c in configs.configs] == [ChannelPreference.OPTED_OUT] * 2
    slack_off = entity(id="x", channels={"email": "send", "slack": "opted-out"}, preferences={"marketing": {}})
    forced = Category(name="security", opt_out=False, defaults={"slack": "send"})
    assert [(c.channel, c.action) for c in get_delivery_channel_configs(slack_off, policies, forced).configs] == [
        ("email", ChannelPreference.SEND),
        ("slack", ChannelPreference.OPTED_OUT),  # the entity's own switch: a category adds, never takes away
    ]


@pytest.mark.parametrize(
    ("written", "said"),
    [
        ("- {name: a}\n- {name: a}\n", "each category is named once"),
        ("- {name: a, defaults: {fax: send}}\n", "defaults.fax"),
        ("{name: a}\n", "must be a list"),
        ("- [unclosed\n", "while parsing"),
    ],
)
def test_a_categories_file_that_cannot_be_used_is_said_in_one_line(tmp_path: Path, written: str, said: str) -> None:
    (tmp_path / "categories.yaml").write_text(written)
    with pytest.raises(ConfigurationError, match=said) as refused:
        Settings(_env_file=None, categories_file=tmp_path / "categories.yaml").categories()
    assert "\n" not in str(refused.value)


def test_a_worker_with_a_categories_file_it_cannot_use_stops_at_once(tmp_path: Path) -> None:
    (tmp_path / "categories.yaml").write_text("- {name: a}\n- {name: a}\n")
    worker = subprocess.run(
        [sys.executable, str(ROOT / "worker.py")],
        env={**unconfigured_environment(), "NOTIFY_CATEGORIES_FILE": str(tmp_path / "categories.yaml")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == 2 and worker.stderr.startswith("error: NOTIFY_CATEGORIES_FILE ")
    assert len(worker.stderr.splitlines()) == 1


@ON_BOTH_BACKENDS
async def test_the_one_click_post_from_a_mails_header_opts_out_of_exactly_that_category_on_email(
    api: Api, owner: StreamStore, mail_sink: MailSink, slack_sink: SlackSink
) -> None:
    await import_entries(owner, [reader()])
    marketing = await _notified(api, "marketing")
    [mail] = mail_sink.received_by("reader@example.com")
    assert mail.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = re.fullmatch(rf"<{PUBLIC_URL}(/v1/unsubscribe/[A-Za-z0-9_.-]+)>", mail.message["List-Unsubscribe"])
    assert link is not None and LINK_SECRET not in mail.message.as_string()
    assert marketing["status"] == "sent"
    path = link[1]  # on this test's server, as the public address would route it

    forged = path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB")
    other_category = path.replace(path.split("/")[-1].split(".")[0], _claims_of(path, category="billing"))
    for bad in (forged, other_category):
        refused = await api.http.post(bad, content=b"List-Unsubscribe=One-Click")
        assert refused.status_code == 403, refused.text
    assert (await api.call("GET", "/v1/entities/reader")).json().get("preferences") is None  # nothing changed

    asked = await api.http.get(path)  # a link checker's GET: a page that asks, and nothing changes
    assert asked.status_code == 200 and '<form method="post">' in asked.text
    assert (await api.call("GET", "/v1/entities/reader")).json().get("preferences") is None
    one_click = await api.http.post(  # as a mailbox provider sends it (RFC 8058)
        path,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert one_click.status_code == 200 and "Unsubscribed" in one_click.text
    assert (await api.call("GET", "/v1/entities/reader")).json()["preferences"] == {"marketing": {"email": "opted-out"}}
    again_recorded = await api.call(
        "PUT", "/v1/entities/reader", json=reader().model_dump(mode="json", exclude_none=True)
    )
    assert again_recorded.status_code == 200  # the entity recorded again, without preferences: it keeps its opt-out
    assert (await api.call("GET", "/v1/entities/reader")).json()["preferences"] == {"marketing": {"email": "opted-out"}}

    again = {c: await _notified(api, c) for c in ("marketing", "billing", "security")}
    assert (again["marketing"]["channels"]["email"]["outcome"], again["marketing"]["channels"]["slack"]["outcome"]) == (
        "opted_out",
        "succeeded",
    )
    assert again["billing"]["channels"]["email"]["outcome"] == "succeeded"
    security_mail = [m for m in mail_sink.received_by("reader@example.com") if m.message["Subject"] == "About security"]
    assert [m.message["List-Unsubscribe"] for m in security_mail] == [None]  # not to be opted out of: no link
    events = (await api.call("GET", f"/v1/notifications/{again['marketing']['id']}/events")).json()
    said = "email: opted out of 'marketing' (the entity's preference)"
    assert any(e["stream"] == "notification-event" and said in json.dumps(e) for e in events)


def _claims_of(url: str, **changed: str) -> str:
    """The link's claims with some changed, its signature kept: an altered link."""
    body = url.split("/")[-1].split(".")[0]
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    altered = json.dumps({**claims, **changed}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(altered).rstrip(b"=").decode()


@ON_BOTH_BACKENDS
async def test_preferences_are_set_over_the_api_and_the_next_notification_obeys_them(
    api: Api, owner: StreamStore, slack_sink: SlackSink
) -> None:
    await import_entries(owner, [reader()])
    put = await api.call("PUT", "/v1/entities/reader/preferences", json={"billing": {"slack": "opted-out"}})
    assert put.status_code == 200, put.text
    assert put.json()["preferences"] == {"billing": {"slack": "opted-out"}}
    billing = await _notified(api, "billing")
    assert (billing["channels"]["email"]["outcome"], billing["channels"]["slack"]["outcome"]) == (
        "succeeded",
        "opted_out",
    )
    assert slack_sink.messages == []
    for body, key, status in [
        ({"sales": {"email": "opted-out"}}, "all", 422),
        ({"billing": {"fax": "opted-out"}}, "all", 422),
        ({"billing": {"email": "opted-out"}}, "reader", 403),
        ({"security": {"email": "opted-out"}}, "all", 422),
    ]:
        refused = await api.call("PUT", "/v1/entities/reader/preferences", key=key, json=body)
        assert refused.status_code == status, (body, refused.text)
    missing = await api.call("PUT", "/v1/entities/nobody/preferences", json={"billing": {"email": "send"}})
    assert missing.status_code == 404
    assert (await api.call("GET", "/v1/entities/reader")).json()["preferences"] == {"billing": {"slack": "opted-out"}}
    again = await api.call("PUT", "/v1/entities/reader", json=reader().model_dump(exclude_none=True))
    assert again.json()["preferences"] == {"billing": {"slack": "opted-out"}}  # recorded again: its choices kept


async def test_the_command_line_shows_and_sets_preferences(
    store: StreamStore, owner: StreamStore, settings: Settings
) -> None:
    await import_entries(owner, [reader(marketing={"email": "opted-out"})])
    env = {
        **unconfigured_environment(),
        "NOTIFY_STREAMS_URL": settings.streams_location,
        "NOTIFY_CATEGORIES_FILE": str(settings.categories_file),
    }

    def starter(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(ROOT / "starter.py"), "preferences", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    shown = starter("show", "reader").stdout.splitlines()
    assert shown == [
        f"{'billing':<24} email: send  slack: send",
        f"{'marketing':<24} email: off: opted out of 'marketing' (the entity's preference)  slack: send",
        f"{'digest':<24} email: send  slack: off: 'digest' is off by default (the category's)",
        f"{'security':<24} email: send  slack: send",
    ]
    assert starter("set", "reader", "digest", "slack", "send").stdout == "reader: digest on slack: send\n"
    decided = json.loads(starter("show", "reader", "--json").stdout)["decided"]
    assert decided["digest"] == {"email": "send", "slack": "send"}
    for args, said in [
        (("set", "reader", "sales", "email", "send"), "error: 'sales' is not a configured category"),
        (("set", "nobody", "digest", "email", "send"), "error: no entity with id 'nobody'"),
        (("set", "reader", "digest", "fax", "send"), "Invalid value for 'CHANNEL'"),
    ]:
        refused = starter(*args)
        assert refused.returncode != 0 and said in refused.stderr, (args, refused.stderr)


def test_a_short_link_secret_or_a_relative_or_plain_http_public_url_is_refused_an_empty_secret_signs_nothing() -> None:
    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings(_env_file=None, link_secret=SecretStr("short"))
    assert Settings(_env_file=None, link_secret=SecretStr("")).link_secret is None
    with pytest.raises(ValidationError, match="must be an absolute http"):
        Settings(_env_file=None, public_url="notify.example.com")  # a link would be relative, and go nowhere
    with pytest.raises(ValidationError, match="must be https"):
        Settings(_env_file=None, public_url="http://notify.example.com")  # a token anyone on the way could read
    assert Settings(_env_file=None, public_url="http://127.0.0.1:8000").public_url == "http://127.0.0.1:8000"


@ON_BOTH_BACKENDS
async def test_a_slack_messages_footer_unsubscribes_from_its_category_on_slack(
    api: Api, owner: StreamStore, slack_sink: SlackSink
) -> None:
    await import_entries(owner, [reader()])
    await _notified(api, "marketing")
    [posted] = slack_sink.messages
    footer = re.search(
        rf"<{PUBLIC_URL}(/v1/unsubscribe/[A-Za-z0-9_.-]+)\|Unsubscribe from marketing on Slack>$", posted.text
    )
    assert footer is not None, posted.text
    assert (await api.http.post(footer[1], content=b"List-Unsubscribe=One-Click")).status_code == 200
    assert (await api.call("GET", "/v1/entities/reader")).json()["preferences"] == {"marketing": {"slack": "opted-out"}}
    again = await _notified(api, "marketing")
    assert {c: v["outcome"] for c, v in again["channels"].items()} == {"email": "succeeded", "slack": "opted_out"}
    await _notified(api, None)  # no category: no footer
    assert not slack_sink.messages[-1].text.endswith("on Slack>")


def test_an_edit_that_cannot_be_used_keeps_the_categories_read_before(tmp_path: Path) -> None:
    file = tmp_path / "categories.yaml"
    file.write_text(CATEGORIES)
    settings = Settings(_env_file=None, categories_file=file)
    assert list(settings.categories()) == ["billing", "marketing", "digest", "security"]
    file.write_text("- [unclosed\n")
    os.utime(file, (1, 1))  # another modification time, however fast the edit
    assert list(settings.categories()) == ["billing", "marketing", "digest", "security"]
    file.write_text("- {name: billing}\n")
    os.utime(file, (2, 2))
    assert list(settings.categories()) == ["billing"]


async def test_the_unsubscribe_header_of_the_longest_entity_id_keeps_every_line_within_998_characters(
    time_skipping_env: WorkflowEnvironment, store: StreamStore, settings: Settings, mail_sink: MailSink
) -> None:
    """Both links (https and, with `NOTIFY_UNSUBSCRIBE_MAILTO`, mailto) of a 200-character entity id, under a public
    URL with a path: the header is folded between them, as RFC 2369 allows, so that no line of the message is longer
    than RFC 5322's 998 (on one line, this one's would be over 1,000)."""
    long_id = "reader-" + "x" * 193
    public = "https://notifications.example.com/" + "p" * 80
    mailto = settings.model_copy(update={"unsubscribe_mailto": "unsubscribe@notify.example.com", "public_url": public})
    async with notifying(time_skipping_env, store, mailto, entity(id=long_id, email="long@example.com")) as notify:
        nid = await notify.client.request(
            SendNotificationToEntityOp(entity_id=long_id, subject="S", body="B", category="marketing")
        )
        await notify.client.result(nid)
    [mail] = mail_sink.received_by("long@example.com")
    assert max(len(line) for line in mail.data.split(b"\r\n")) <= 998
    https, mail_link = mail.message["List-Unsubscribe"].split(", ")
    assert https.startswith(f"<{public}/v1/unsubscribe/") and len(https) + len(mail_link) > 1000
    assert mail_link.startswith("<mailto:unsubscribe@notify.example.com?subject=unsubscribe%20")
