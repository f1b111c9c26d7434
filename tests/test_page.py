"""The web page, in a real headless Chromium (Debian's `chromium`, driven by Playwright): sign in with a key, find a
notification, search by its address, open its page and see its timeline; a notification under way updates without a
reload. And over plain HTTP: what a page without a usable key does."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.conftest import SLACK_TOKEN
from tests.service import Api

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    assert Path(CHROMIUM).exists(), "the browser test needs Debian's chromium package: apt-get install chromium"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        await launched.close()


async def signed_in(browser: Browser, api: Api, key: str = "reader") -> Page:
    page = await browser.new_page(base_url=str(api.http.base_url))
    await page.goto("/")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await page.get_by_label("API key").fill(api.keys[key])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Recent notifications")).to_be_visible()
    return page


async def sent(api: Api, subject: str, **fields: object) -> str:
    response = await api.call(
        "POST", "/v1/notifications", key="sender", json={"entity": "user-1", "subject": subject, "body": "B", **fields}
    )
    assert response.status_code == 202, response.text
    notification_id: str = response.json()["id"]
    return notification_id


async def test_a_notification_is_found_searched_for_and_its_timeline_shown(
    api: Api, browser: Browser, tmp_path: Path
) -> None:
    nid = await sent(api, "Seen in a browser")
    assert (await api.outcome(nid))["status"] == "sent"
    page = await signed_in(browser, api)
    cookie = next(c for c in await page.context.cookies() if c["name"] == "notify_key")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert await page.evaluate("document.cookie") == ""  # the page's scripts cannot read the key

    row = page.get_by_role("row").filter(has_text=nid)
    await expect(row).to_contain_text("Seen in a browser")
    await expect(row).to_contain_text("sent")
    await expect(row).to_contain_text("email: succeeded")

    await page.get_by_label("Email address or Slack channel").fill("ADA@example.com")
    await page.get_by_role("button", name="Search").click()
    await expect(page.get_by_role("heading", name="Sent to ADA@example.com")).to_be_visible()
    await page.get_by_role("link", name=nid).click()

    await expect(page.get_by_role("heading", name="Seen in a browser")).to_be_visible()
    channels = page.locator("table.channels")
    await expect(channels.get_by_role("row").filter(has_text="ada@example.com")).to_contain_text("succeeded")
    await expect(channels.get_by_role("row").filter(has_text="acme/C0123")).to_contain_text("succeeded")
    timeline = page.locator("table.timeline tbody tr")
    events = (await api.call("GET", f"/v1/notifications/{nid}/events", key="reader")).json()
    await expect(timeline).to_have_count(len(events))
    await expect(timeline.first).to_contain_text("client-operation")
    await expect(page.locator("table.timeline")).to_contain_text("SucceededInSendingEmailEvent")
    assert SLACK_TOKEN not in await page.content()
    shot = tmp_path / "notification.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes().startswith(b"\x89PNG")


async def test_a_notification_under_way_updates_without_a_reload(api: Api, browser: Browser) -> None:
    nid = await sent(api, "Later", send_at=(datetime.now(UTC) + timedelta(seconds=4)).isoformat())
    page = await signed_in(browser, api)
    await page.goto(f"/notifications/{nid}")
    await expect(page.locator(".facts")).to_contain_text("scheduled")
    await page.evaluate("window.stillThisPage = true")
    await expect(page.locator(".facts")).to_contain_text("sent", timeout=30_000)
    assert await page.evaluate("window.stillThisPage === true")  # updated in place, not reloaded
    assert await page.locator("#main").get_attribute("data-live") is None  # and it stopped asking


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
