"""The web page, in a real headless Chromium (Debian's `chromium`, driven by Playwright): sign in with a key, see the
overview, find a notification, search by its address, its entity and its id, open its page and see its message as sent,
its files and its records; every page fits a phone's width; a notification under way updates without a reload. And over
plain HTTP: what a page without a usable key does."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, ViewportSize, expect
from temporalio.testing import WorkflowEnvironment

from client import NotificationClient, attachment
from commands import command
from settings import Settings
from sinks.slack import SlackSink
from streams import StreamName, StreamStore
from streams.directory import import_entries
from streams.store import NewRecord
from tests.conftest import SLACK_TOKEN
from tests.service import Api, entity, operation

DESKTOP = ViewportSize(width=1280, height=800)
PHONE = ViewportSize(width=390, height=844)
HTML = (
    '<p>Volume <b id="bold">/data</b> is at 91%.</p><p id="script">static</p>'
    '<script>document.getElementById("script").textContent = "ran"</script>'
)
SLACK_TEXT = "Disk *almost* full: <b>not bold</b>"
TEAM = "oncall@ops.test"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The service's, with an internal team told of what does not go out as asked."""
    return settings.model_copy(update={"internal_team_email": TEAM})


async def signed_in(browser: Browser, api: Api, key: str = "reader", viewport: ViewportSize = DESKTOP) -> Page:
    page = await browser.new_page(base_url=str(api.http.base_url), viewport=viewport)
    await page.goto("/")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await expect(page.locator(".lede")).to_contain_text(
        command("starter.py", "apikey", "create", "NAME", "--scope", "read")
    )
    await page.get_by_label("API key").fill(api.keys[key])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    return page


async def sent(api: Api, subject: str, entity: str = "user-1", **fields: object) -> str:
    response = await api.call(
        "POST", "/v1/notifications", key="sender", json={"entity": entity, "subject": subject, "body": "B", **fields}
    )
    assert response.status_code == 202, response.text
    notification_id: str = response.json()["id"]
    return notification_id


async def search(page: Page, text: str) -> None:
    await page.get_by_label("Entity, notification id, email or Slack channel").fill(text)
    await page.get_by_role("button", name="Search").click()


async def fits(page: Page) -> None:
    """The page is no wider than the window: nothing scrolls sideways but a table in its own container."""
    await page.wait_for_load_state()
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), page.url


async def test_a_notification_is_found_searched_for_and_shown_with_its_message_and_records(
    api: Api, browser: Browser, tmp_path: Path
) -> None:
    subject = "Seen in a browser, with its message in full: the subject, its plain text, its HTML and its Slack text"
    body = "Volume /data is at 91%.\nClean it up."
    nid = await sent(api, subject, body=body, html=HTML, slack_text=SLACK_TEXT)
    assert (await api.outcome(nid))["status"] == "sent"
    page = await signed_in(browser, api)
    cookie = next(c for c in await page.context.cookies() if c["name"] == "notify_key")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert await page.evaluate("document.cookie") == ""  # the page's scripts cannot read the key

    await expect(page.locator(".totals")).to_contain_text("1 ended in the last hour")
    statuses = page.locator("table.statuses tbody tr")
    await expect(statuses).to_have_count(1)
    await expect(statuses.locator("td")).to_have_text(["sent", "1", "1"])
    channels = page.locator("table.channels tbody tr")
    await expect(channels.nth(0).locator("td")).to_have_text(["email", "succeeded", "1", "1"])
    await expect(channels.nth(1).locator("td")).to_have_text(["slack", "succeeded", "1", "1"])
    bars = page.locator("figure.chart svg rect")
    await expect(bars).to_have_count(1)
    await expect(bars.locator("title")).to_contain_text("1 sent")

    await page.get_by_role("link", name="Notifications", exact=True).click()
    row = page.get_by_role("row").filter(has_text=nid)
    await expect(row).to_contain_text(subject)
    await expect(row).to_contain_text("email: succeeded")
    assert await row.locator("td.id a").evaluate("a => a.getClientRects().length") == 1  # the id on one line

    await search(page, "ADA@example.com")
    await expect(page.get_by_role("heading", name="Sent to ADA@example.com")).to_be_visible()
    await page.get_by_role("link", name=nid).click()

    await expect(page.get_by_role("heading", name=subject)).to_be_visible()
    channel_rows = page.locator("table.channels").get_by_role("row")
    await expect(channel_rows.filter(has_text="ada@example.com")).to_contain_text("succeeded")
    await expect(channel_rows.filter(has_text="acme/C0123")).to_contain_text("succeeded")
    email = page.locator(".message-email")
    await expect(email.locator("h3")).to_have_text("Email to ada@example.com")
    await expect(email.locator(".subject")).to_have_text(subject)
    assert await email.locator("pre.text").text_content() == body
    frame = email.locator("iframe")
    assert await frame.get_attribute("sandbox") == ""  # no scripts, no origin of its own
    html = page.frame_locator(".message-email iframe")
    await expect(html.locator("#bold")).to_have_text("/data")  # rendered
    await expect(html.locator("#script")).to_have_text("static")  # its script never ran
    slack = page.locator(".message-slack")
    await expect(slack.locator("h3")).to_have_text("Slack to acme/C0123")
    assert await slack.locator("pre.text").text_content() == SLACK_TEXT  # as text, not rendered
    await expect(slack.locator("b")).to_have_count(0)

    timeline = page.locator(".timeline > li")
    events = (await api.call("GET", f"/v1/notifications/{nid}/events", key="reader")).json()
    await expect(timeline).to_have_count(len(events))
    await expect(timeline.first).to_contain_text("client-operation")
    await expect(page.locator(".timeline")).to_contain_text("SucceededInSendingEmailEvent")
    payload = timeline.first.locator("pre.payload")
    await expect(payload).to_be_hidden()
    await timeline.first.locator("summary").click()
    await expect(payload).to_be_visible()
    assert await payload.text_content() == json.dumps(events[0]["payload"], indent=2, ensure_ascii=False)
    assert SLACK_TOKEN not in await page.content()
    shot = tmp_path / "notification.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes().startswith(b"\x89PNG")

    await search(page, "user-1")  # an entity in the directory: its notifications
    await expect(page.get_by_role("heading", name="Recent notifications")).to_be_visible()
    await expect(page.get_by_role("textbox", name="Entity", exact=True)).to_have_value("user-1")
    await search(page, nid)  # a notification's id: its page
    await expect(page.get_by_role("heading", name=subject)).to_be_visible()


async def test_a_notifications_files_are_listed_by_name_type_size_and_hash_per_channel(
    api: Api, browser: Browser, dev_env: WorkflowEnvironment, settings: Settings
) -> None:
    hostile = '<script>alert("name")<script><img src=x onerror=alert(1)>.txt'  # a file's name is the sender's
    pdf, text, png = b"%PDF-1.7\n" + bytes(3063), b"a text\n", b"\x89PNG\r\n\x1a\n" + bytes(32)
    files = [attachment("report.pdf", pdf), attachment(hostile, text), attachment("logo.png", png, content_id="logo")]
    fields: dict[str, object] = {"html_body": '<p>Attached.</p><img src="cid:logo">', "attachments": files}
    client = NotificationClient(api.store, dev_env.client, settings)
    nid = await client.request(operation("user-1", **fields), contents=[pdf, text, png])
    assert (await api.outcome(nid))["status"] == "sent"
    page = await signed_in(browser, api)
    await page.goto(f"/notifications/{nid}")

    listed = page.get_by_role("table", name="Files", exact=True).locator("tbody tr")
    digests = [sha256(content).hexdigest() for content in (pdf, text, png)]
    await expect(listed).to_have_count(3)
    await expect(listed.nth(0).locator("td")).to_have_text(["report.pdf", "application/pdf", "3.0 KiB", digests[0]])
    await expect(listed.nth(1).locator("td")).to_have_text([hostile, "text/plain", "7 bytes", digests[1]])
    await expect(listed.nth(2).locator("td")).to_have_text(
        ["logo.png inline image, cid:logo", "image/png", "40 bytes", digests[2]]
    )
    await expect(listed.nth(0).locator("td.count")).to_have_attribute("title", "3,072 bytes")
    sha = listed.nth(0).locator("code.sha256")
    await expect(sha).to_have_attribute("title", f"SHA-256 {digests[0]}")
    assert await sha.evaluate("c => c.scrollWidth > c.clientWidth")  # shown shortened, the whole hash selectable
    await expect(listed.nth(1).locator(".filename *")).to_have_count(0)  # the name as text, not markup
    await expect(page.locator("img, table.files a")).to_have_count(0)  # nothing of it ran; no file is served

    await expect(page.locator(".message-email table.files")).to_have_count(0)  # the email carried them all
    slack = page.get_by_role("table", name="Files to acme/C0123").locator(".filename")
    await expect(slack).to_have_text(["report.pdf", hostile])  # an inline image is the HTML's: not Slack's
    emailed = await client.request(operation("user-1", **fields, attach_to=["email"]), contents=[pdf, text, png])
    assert (await api.outcome(emailed))["status"] == "sent"
    await page.goto(f"/notifications/{emailed}")
    await expect(page.get_by_role("table", name="Files", exact=True).locator("tbody tr")).to_have_count(3)
    await expect(page.locator(".message-slack .content dd").last).to_have_text("None")  # attached to email alone
    await page.goto(f"/notifications/{nid}")
    await page.set_viewport_size(PHONE)
    await fits(page)

    await search(page, "acme/C0123")  # the audit names them too
    await expect(page.get_by_role("row").filter(has_text=nid).locator(".files-named")).to_have_text(
        f"(2 files: report.pdf, {hostile})"
    )
    await fits(page)


async def test_every_page_fits_a_phone_and_says_what_happened(
    api: Api,
    browser: Browser,
    owner: StreamStore,
    slack_sink: SlackSink,
    dev_env: WorkflowEnvironment,
    settings: Settings,
) -> None:
    await owner.put(StreamName.ENTITY_DIRECTORY, [NewRecord("user-2", "DirectoryEntry", "not JSON")])
    client = NotificationClient(api.store, dev_env.client, settings)  # `request` does not read the directory first
    nobody = await client.request(operation("user-2", subject="For nobody"))
    later = await sent(api, "Cancelled", send_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
    cancelled = await api.call("POST", f"/v1/notifications/{later}/cancel")
    assert cancelled.json()["status"] == "cancelled", cancelled.text
    slack_sink.unknown_channels.add("C0123")
    nid = await sent(api, "On a phone", html=HTML, slack_text=SLACK_TEXT)
    assert [(await api.outcome(n))["status"] for n in (nobody, nid)] == ["failed", "partially_sent"]
    page = await signed_in(browser, api, viewport=PHONE)
    await expect(page.locator("figure.chart svg")).to_be_visible()
    await fits(page)

    await page.goto("/notifications")
    await expect(page.get_by_role("row").filter(has_text=nid)).to_contain_text("On a phone")
    await fits(page)

    await page.goto(f"/notifications/{nobody}")
    no_channel = page.locator(".no-channel")
    await expect(no_channel).to_contain_text(
        "No channel was sent: entity 'user-2' has a directory entry that cannot be read: record"
    )
    await expect(no_channel).not_to_contain_text("stage")  # how each stage ended is the timeline's
    await expect(page.locator(".message-requested .subject")).to_have_text("For nobody")
    await expect(page.locator(".message-requested h3")).to_have_text("As requested (sent on no channel)")
    await expect(page.locator(".message-email h3")).to_have_text(f"Email to {TEAM} (the internal team)")
    await page.goto(f"/notifications/{later}")
    await expect(page.locator(".no-channel")).to_have_text("Cancelled before any channel was sent.")
    await fits(page)

    await page.goto(f"/notifications/{nid}")
    await expect(page.locator(".message-email h3")).to_have_text(
        ["Email to ada@example.com", f"Email to {TEAM} (the internal team)"]
    )
    await expect(page.locator(".message-slack h3")).to_have_text("Slack to acme/C0123")  # asked for, if not sent
    await expect(page.locator(".message-email iframe").first).to_be_visible()
    for summary in await page.locator(".timeline summary").all():
        await summary.click()
    await fits(page)

    await search(page, "acme/C0123")
    await expect(page.get_by_role("heading", name="Sent to acme/C0123")).to_be_visible()
    await fits(page)


async def test_the_search_looks_for_an_entity_first_even_one_whose_id_is_an_email_address(
    api: Api, browser: Browser, owner: StreamStore
) -> None:
    grace = "grace@example.com"
    await import_entries(owner, [entity(id=grace, name="Grace", email=grace, channels={"email": "send"})])
    nid = await sent(api, "To Grace", entity=grace)
    assert (await api.outcome(nid))["status"] == "sent"
    page = await signed_in(browser, api)
    await expect(page.get_by_role("searchbox")).to_have_attribute(
        "title", re.compile(r"^Looked for in this order: an entity's id .*, a notification id .*, an email address")
    )

    await search(page, grace)  # an entity's id first, though it has an @
    await expect(page.get_by_role("heading", name="Recent notifications")).to_be_visible()
    await expect(page.get_by_role("textbox", name="Entity", exact=True)).to_have_value(grace)
    await page.get_by_role("link", name=nid).click()
    await page.locator("table.channels").get_by_role("link", name=grace).click()  # the address: its audit, always
    await expect(page.get_by_role("heading", name=f"Sent to {grace}")).to_be_visible()
    await expect(page.get_by_role("row").filter(has_text=nid)).to_contain_text("To Grace")


async def test_a_notification_under_way_updates_without_a_reload(api: Api, browser: Browser) -> None:
    nid = await sent(api, "Later", send_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
    page = await signed_in(browser, api)
    await page.goto(f"/notifications/{nid}")
    await expect(page.locator(".facts")).to_contain_text("scheduled")
    await expect(page.locator(".no-channel")).to_have_text("No channel yet (they are chosen when it is sent).")
    await expect(page.locator("#main")).to_contain_text("Decided once every channel has an outcome.")
    await page.evaluate("window.stillThisPage = true")
    cancelled = await api.call("POST", f"/v1/notifications/{nid}/cancel")  # it ends while the page shows it
    assert cancelled.json()["status"] == "cancelled", cancelled.text
    await expect(page.locator(".no-channel")).to_have_text("Cancelled before any channel was sent.", timeout=30_000)
    assert await page.evaluate("window.stillThisPage === true")  # updated in place, not reloaded
    assert await page.locator("#main").get_attribute("data-live") is None  # and it stopped asking
    await expect(page.locator(".facts")).to_contain_text("cancelled")
    await expect(page.locator("#main")).to_contain_text("None: nobody had to be told.")


@pytest.mark.parametrize("key", ["sender", "not-a-key"])
async def test_a_key_without_the_read_scope_does_not_sign_in(api: Api, browser: Browser, key: str) -> None:
    page = await browser.new_page(base_url=str(api.http.base_url))
    await page.goto("/sign-in")
    await page.get_by_label("API key").fill(api.keys.get(key, key))
    await page.get_by_role("button", name="Sign in").click()
    expected = "does not hold the 'read' scope" if key == "sender" else "not valid"
    await expect(page.get_by_role("alert")).to_contain_text(expected)
    assert not [c for c in await page.context.cookies() if c["name"] == "notify_key"]


async def test_without_a_key_pages_send_to_sign_in_and_nowhere_else(api: Api) -> None:
    page = await api.call("GET", "/notifications/x?y=1", key=None)
    assert page.status_code == 303 and page.headers["location"].endswith("/sign-in?next=%2Fnotifications%2Fx%3Fy%3D1")
    part = await api.call("GET", "/", key=None, headers={"X-Notify-Part": "main"})
    assert part.status_code == 401
    signed = await api.http.post("/sign-in", data={"key": api.keys["reader"], "next": "//evil.example/"})
    assert signed.status_code == 303 and signed.headers["location"] == "/"
    assert "HttpOnly" in signed.headers["set-cookie"] and "SameSite=strict" in signed.headers["set-cookie"]
    assert "default-src 'self'" in signed.headers["content-security-policy"]
    api.http.cookies.clear()


@pytest.mark.parametrize("action", ["sign-in", "sign-out"])
async def test_a_form_on_another_site_neither_swaps_nor_clears_the_cookie(
    api: Api, browser: Browser, action: str
) -> None:
    page = await signed_in(browser, api)
    here = str(api.http.base_url).rstrip("/")
    attacker = (
        f'<form method="post" action="{here}/{action}"><input name="key" value="{api.keys["all"]}">'
        "</form><script>document.forms[0].submit()</script>"
    )
    elsewhere = here.replace("127.0.0.1", "localhost") + "/attack"  # another site, on this machine
    await page.route(elsewhere, lambda route: route.fulfill(body=attacker, content_type="text/html"))
    async with page.expect_response(f"**/{action}") as answered:
        await page.goto(elsewhere)
    assert (await answered.value).status == 403
    [cookie] = [c for c in await page.context.cookies() if c["name"] == "notify_key"]
    assert cookie["value"] == api.keys["reader"]


async def test_a_broadcast_shows_its_progress_live_and_links_to_its_notifications(api: Api, browser: Browser) -> None:
    """Its notifications wait for their time: the cancel, while it waits for them to end, stops both."""
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    request = {"entities": ["user-1", "user-2"], "subject": "Later, to both", "body": "B", "send_at": later}
    bid = (await api.call("POST", "/v1/broadcasts", key="sender", json=request)).json()["id"]
    page = await signed_in(browser, api)
    await page.goto(f"/broadcasts/{bid}")
    await expect(page.locator(".facts")).to_contain_text("running")
    await expect(page.locator(".ended")).to_have_text("0 of 2", timeout=30_000)  # once its saga kept its recipients
    await page.evaluate("window.stillThisPage = true")
    cancelled = await api.call("POST", f"/v1/broadcasts/{bid}/cancel", key="sender")
    assert cancelled.json()["stopped"] == 2, cancelled.text
    await expect(page.locator(".facts")).to_contain_text("cancelled", timeout=30_000)
    assert await page.evaluate("window.stillThisPage === true")  # updated in place, not reloaded
    await expect(page.locator(".ended")).to_have_text("2 of 2")
    await expect(page.locator("table.counts")).to_contain_text("cancelled")
    await fits(page)
    await page.get_by_role("link", name=f"{bid}.1").click()
    await expect(page.get_by_role("heading", name="Later, to both")).to_be_visible()
    await expect(page.locator("a.broadcast")).to_have_text(bid)
