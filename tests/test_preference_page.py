"""The preference page (issue 28): every email links to its entity's page, signed by the service; in a real headless
Chromium (Debian's `chromium`, driven by Playwright) with JavaScript off, a category is switched off on email and
saved, without a key or a cookie, and the next notifications obey it; a category that may not be opted out of cannot
be switched off; a forged link is refused. And `starter.py preferences link`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect
from pydantic import SecretStr

from harness.processes import ROOT, unconfigured_environment
from settings import Settings
from sinks.mail import MailSink
from streams import StreamStore
from streams.directory import import_entries
from tests.conftest import ON_BOTH_BACKENDS
from tests.service import Api, eventually
from tests.test_categories import CATEGORIES, LINK_SECRET, PUBLIC_URL, _notified, reader

TEAM = "oncall@ops.test"
FOOTER = re.compile(rf"\n\n--\nYour notification preferences: {PUBLIC_URL}(/preferences/[A-Za-z0-9_.-]+)\n?\Z")


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """The categories, links signed for the API server's public address (which the tests map to theirs), and an
    internal team told of what does not go out as asked."""
    (tmp_path / "categories.yaml").write_text(CATEGORIES)
    linked = {"public_url": PUBLIC_URL, "link_secret": SecretStr(LINK_SECRET), "internal_team_email": TEAM}
    return settings.model_copy(update={"categories_file": tmp_path / "categories.yaml", **linked})


def _emailed(mail_sink: MailSink, subject: str) -> list[str]:
    """The text bodies of the emails with this subject the reader got (with `\n` line ends)."""
    return [
        m.message.get_body(("plain",)).get_content().replace("\r\n", "\n")  # type: ignore[union-attr]
        for m in mail_sink.received_by("reader@example.com")
        if m.message["Subject"] == subject
    ]


@ON_BOTH_BACKENDS
async def test_the_link_in_an_email_opens_a_page_that_switches_a_category_off_email_without_javascript(
    api: Api, owner: StreamStore, mail_sink: MailSink, browser: Browser
) -> None:
    await import_entries(owner, [reader()])
    assert (await _notified(api, "billing"))["status"] == "sent"
    [text] = _emailed(mail_sink, "About billing")
    link = FOOTER.search(text)
    assert link is not None and text.startswith("B\n\n--\n") and LINK_SECRET not in text
    path = link[1]  # on this test's server, as the public address would route it

    context = await browser.new_context(base_url=str(api.http.base_url), java_script_enabled=False)
    page = await context.new_page()
    shown = await page.goto(path)
    assert shown is not None and shown.status == 200
    await expect(page.get_by_role("heading", name="Notification preferences")).to_be_visible()
    marketing, security = page.get_by_label("marketing on email"), page.get_by_label("security on email")
    await expect(marketing).to_be_checked()
    await expect(page.get_by_label("digest on slack")).not_to_be_checked()  # the category's default
    await expect(security).to_be_checked()
    await expect(security).to_be_disabled()
    await expect(page.locator("tr", has_text="security")).to_contain_text("cannot be turned off")
    await marketing.uncheck()
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_role("status")).to_have_text("Your preferences were saved.")
    await expect(page.get_by_label("marketing on email")).not_to_be_checked()
    assert await context.cookies() == []  # no sign-in, no key

    entry = (await api.call("GET", "/v1/entities/reader")).json()
    assert entry["preferences"] == {"marketing": {"email": "opted-out"}}  # only what changed: defaults stay defaults
    views = {c: await _notified(api, c) for c in ("marketing", "billing", "security")}
    marketing_channels = {c: v["outcome"] for c, v in views["marketing"]["channels"].items()}
    assert marketing_channels == {"email": "opted_out", "slack": "succeeded"}
    assert views["billing"]["channels"]["email"]["outcome"] == "succeeded"
    assert views["security"]["channels"]["email"]["outcome"] == "succeeded"
    assert _emailed(mail_sink, "About marketing") == [] and len(_emailed(mail_sink, "About security")) == 1

    forged = path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB")
    refused = await page.goto(forged)
    assert refused is not None and refused.status == 403
    not_saved = await api.http.post(forged, data={"billing:email": "send"})
    assert not_saved.status_code == 403
    not_the_form = await api.http.post(path, data={})  # an empty POST is not the page's form: nothing changes
    assert not_the_form.status_code == 400
    cleared = await api.http.post(path, data={"save": "1"})  # every box unticked: security stays (not to opt out of)
    assert cleared.status_code == 200 and "Your preferences were saved." in cleared.text
    after = (await api.call("GET", "/v1/entities/reader")).json()["preferences"]
    assert "security" not in after and after["billing"] == {"email": "opted-out", "slack": "opted-out"}
    assert (await _notified(api, "security"))["channels"]["email"]["outcome"] == "succeeded"
    await context.close()


async def test_an_html_email_links_too_and_the_operation_keeps_its_bodies_as_requested(
    api: Api, owner: StreamStore, mail_sink: MailSink
) -> None:
    await import_entries(owner, [reader()])
    body = {"entity": "reader", "subject": "S", "body": "B", "html": "<html><body><p>B</p></body></html>"}
    answer = await api.call("POST", "/v1/notifications", json=body)
    assert (await api.outcome(answer.json()["id"]))["status"] == "sent"
    [mail] = mail_sink.received_by("reader@example.com")
    html = mail.message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    link = re.search(r'<p style="font-size:small"><a href="([^"]+)">Your notification preferences</a></p></body>', html)
    assert link is not None and link[1].startswith(f"{PUBLIC_URL}/preferences/")
    assert (await api.http.get(link[1].removeprefix(PUBLIC_URL))).status_code == 200
    events = (await api.call("GET", f"/v1/notifications/{answer.json()['id']}/events")).json()
    [requested] = [e for e in events if e["stream"] == "email-event" and "operation" in e["payload"]]
    operation = requested["payload"]["operation"]
    assert (operation["text_body"], operation["html_body"]) == ("B", "<html><body><p>B</p></body></html>")


async def test_the_internal_teams_email_carries_no_link(api: Api, owner: StreamStore, mail_sink: MailSink) -> None:
    await import_entries(owner, [reader()])
    mail_sink.rejected_recipients["reader@example.com"] = "550 5.1.1 <reader@example.com>: mailbox unavailable"
    assert (await _notified(api, "billing"))["status"] == "partially_sent"

    async def told() -> bool:
        return bool(mail_sink.received_by(TEAM))

    await eventually(told)
    [escalation] = mail_sink.received_by(TEAM)
    assert b"/preferences/" not in escalation.data and b"Your notification preferences" not in escalation.data


async def test_the_command_line_prints_an_entitys_link(api: Api, owner: StreamStore, settings: Settings) -> None:
    await import_entries(owner, [reader()])
    env = {
        **unconfigured_environment(),
        "NOTIFY_STREAMS_URL": settings.streams_location,
        "NOTIFY_PUBLIC_URL": PUBLIC_URL,
        "NOTIFY_LINK_SECRET": LINK_SECRET,
    }

    def starter(entity_id: str, **unset: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(ROOT / "starter.py"), "preferences", "link", entity_id]
        given = {k: v for k, v in env.items() if k not in unset}
        return subprocess.run(command, env=given, capture_output=True, text=True, timeout=60)

    printed = starter("reader")
    assert printed.returncode == 0, printed.stderr
    link = re.fullmatch(rf"{PUBLIC_URL}(/preferences/[A-Za-z0-9_.-]+)\n", printed.stdout)
    assert link is not None
    page = await api.http.get(link[1])
    assert page.status_code == 200 and 'aria-label="billing on email"' in page.text
    for args, code, said in [
        (("reader", {"NOTIFY_LINK_SECRET": ""}), 2, "error: set NOTIFY_PUBLIC_URL and NOTIFY_LINK_SECRET"),
        (("reader", {"NOTIFY_PUBLIC_URL": ""}), 2, "error: set NOTIFY_PUBLIC_URL and NOTIFY_LINK_SECRET"),
        (("nobody", {}), 1, "error: no entity with id 'nobody'"),
    ]:
        entity_id, unset = args
        refused = starter(entity_id, **unset)
        assert refused.returncode == code and refused.stderr.startswith(said), refused.stderr
        assert len(refused.stderr.splitlines()) == 1 and LINK_SECRET not in refused.stderr
