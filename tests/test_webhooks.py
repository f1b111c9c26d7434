"""Webhooks out: real receivers on loopback, which check every signature by Standard Webhooks' algorithm (written
here from the specification, not taken from the service), told how notifications went by a worker that delivers
through Temporal; retries with the same webhook id, disabling, the URL checks, the CLI and the API's scope."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from pydantic import SecretStr
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from activities.contract import WEBHOOK_CONCERN
from domain import TagName, tag
from harness.processes import ROOT, unconfigured_environment
from settings import Settings
from sinks.mail import MailSink
from streams import HandlingStatus, StreamName
from tests.conftest import ON_BOTH_BACKENDS
from tests.service import Api, eventually
from tests.test_inbound import SIGNING_KEY, mailgun_body, mailgun_failed
from webhooks import UnsafeUrl, WebhookDispatcher, check_url, sign
from worker import WORKFLOW_RUNNER
from workflows.webhook import WebhookDeliveryWorkflow

TOLERANCE = 5 * 60
"""Seconds a timestamp may be off, as the specification's verifiers allow."""


def verified(secret: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The body, once its signature is checked as the Standard Webhooks specification says: HMAC-SHA256 keyed with the
    base64-decoded secret after `whsec_`, of `{id}.{timestamp}.{body}`, base64, one of the space-separated `v1,`
    signatures; the timestamp within the tolerance."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    given = [s.split(",", 1)[1] for s in headers["webhook-signature"].split(" ") if s.startswith("v1,")]
    assert any(hmac.compare_digest(expected, g) for g in given), headers
    assert abs(time.time() - int(headers["webhook-timestamp"])) < TOLERANCE
    found: dict[str, Any] = json.loads(body)
    return found


@dataclass
class Receiver:
    """An endpoint on loopback: it answers `status` (then 200 once `healthy`) and keeps every request, verified."""

    url: str = ""
    secret: str = ""
    status: int = 200
    received: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    """(webhook id, the status answered, the body) of each request."""

    async def handle(self, request: web.Request) -> web.Response:
        body = verified(self.secret, {k.lower(): v for k, v in request.headers.items()}, await request.read())
        self.received.append((request.headers["webhook-id"], self.status, body))
        return web.Response(status=self.status)

    def taken(self) -> list[dict[str, Any]]:
        return [body for _, status, body in self.received if 200 <= status < 300]

    def types(self) -> list[str]:
        return sorted(body["type"] for body in self.taken())


@pytest_asyncio.fixture
async def receivers() -> AsyncIterator[list[Receiver]]:
    """Three receivers, on paths of one server."""
    found = [Receiver() for _ in range(3)]
    app = web.Application()
    for i, receiver in enumerate(found):
        app.router.add_post(f"/hooks/{i}", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    for i, receiver in enumerate(found):
        receiver.url = f"http://127.0.0.1:{port}/hooks/{i}"
    yield found
    await runner.cleanup()


RETRY_WINDOW = 8
"""Seconds a delivery is tried for here (a day by default)."""


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Receivers on loopback, retries quick (a delivery is given up on after `RETRY_WINDOW` seconds), and an internal
    team."""
    return settings.model_copy(
        update={
            "webhook_allow_private": True,
            "webhook_retry_initial_seconds": 0.2,
            "webhook_retry_hours": RETRY_WINDOW / 3600,
            "internal_team_email": "team@example.com",
            "mailgun_signing_key": SecretStr(SIGNING_KEY),
        }
    )


async def added(api: Api, receiver: Receiver, events: list[str] | None = None) -> str:
    answer = await api.call("POST", "/v1/webhooks", json={"url": receiver.url, "events": events or []})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["secret"].startswith("whsec_") and 24 <= len(base64.b64decode(body["secret"][6:])) <= 32
    receiver.secret = body["secret"]
    webhook_id: str = body["id"]
    return webhook_id


async def sent(api: Api) -> str:
    answer = await api.call("POST", "/v1/notifications", json={"entity": "user-1", "subject": "Disk", "body": "91%"})
    assert answer.status_code in (200, 201, 202), answer.text
    nid: str = answer.json()["id"]
    await api.outcome(nid)
    return nid


def test_signing_matches_the_specifications_test_vector() -> None:
    """The published vector of the standard-webhooks libraries."""
    signature = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, '{"test": 2432232314}'
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "http:///hook",
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.7/hook",
        "http://172.16.0.1/hook",
        "http://169.254.169.254/latest",
        "http://[::1]/hook",
        "http://[fd00::1]/hook",
        "http://0.0.0.0/hook",
    ],
)
def test_only_public_http_addresses_take_webhooks(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        check_url(url, allow_private=False)


def test_private_addresses_take_webhooks_when_the_setting_says_so() -> None:
    check_url("http://127.0.0.1:8000/hook", allow_private=True)
    with pytest.raises(UnsafeUrl):
        check_url("file:///etc/passwd", allow_private=True)


@ON_BOTH_BACKENDS
async def test_a_notification_is_told_to_each_endpoint_signed_and_without_its_content(
    api: Api, receivers: list[Receiver], settings: Settings
) -> None:
    everything, only_sent, _ = receivers
    every_id = await added(api, everything)
    sent_id = await added(api, only_sent, ["notification.sent"])
    nid = await sent(api)

    async def told() -> bool:
        return len(everything.taken()) == 4 and len(only_sent.taken()) == 1

    await eventually(told)
    assert everything.types() == [
        "channel.delivered",
        "channel.delivered",
        "notification.requested",
        "notification.sent",
    ]
    assert only_sent.types() == ["notification.sent"]
    for body in everything.taken():
        assert set(body) == {"type", "timestamp", "data"}
        assert body["data"]["notification_id"] == nid and body["data"]["entity_id"] == "user-1"
        assert "Disk" not in json.dumps(body) and "91%" not in json.dumps(body)  # no subject, no body
    [done] = only_sent.taken()
    assert done["data"]["status"] == "sent"
    assert done["data"]["channels"] == {
        "email": {"outcome": "succeeded", "address": "ada@example.com", "reason": None},
        "slack": {"outcome": "succeeded", "address": "acme/C0123", "reason": None},
    }
    delivered = {b["data"]["channels"].get("email", {}).get("address") for b in everything.taken()}
    assert "ada@example.com" in delivered
    assert len({webhook_id for webhook_id, _, _ in everything.received}) == 4  # one id per event

    async def recorded() -> bool:  # each attempt's record is written once its answer is in
        listed = (await api.call("GET", f"/v1/webhooks/{every_id}/deliveries")).json()
        return sorted(d["status"] for d in listed) == ["delivered"] * 4

    await eventually(recorded)
    listed = (await api.call("GET", f"/v1/webhooks/{every_id}/deliveries")).json()
    assert {d["http_status"] for d in listed} == {200} and {d["attempts"] for d in listed} == {1}
    endpoints = {e["id"]: e for e in (await api.call("GET", "/v1/webhooks")).json()}
    assert endpoints[sent_id]["enabled"] and endpoints[sent_id]["events"] == ["notification.sent"]
    assert "secret" not in endpoints[sent_id]

    assert (await api.call("DELETE", f"/v1/webhooks/{sent_id}")).status_code == 204
    assert (await api.call("DELETE", f"/v1/webhooks/{sent_id}")).status_code == 404
    await sent(api)
    await eventually(lambda: _async(len(everything.taken()) == 8))
    assert len(only_sent.taken()) == 1  # removed: told nothing more


async def test_a_channel_that_failed_is_told_with_its_reason_and_the_internal_teams_message_is_not(
    api: Api, receivers: list[Receiver], mail_sink: MailSink
) -> None:
    receiver = receivers[0]
    mail_sink.rejected_recipients["ada@example.com"] = "550 5.1.1 mailbox unavailable"
    await added(api, receiver)
    nid = await sent(api)
    await eventually(lambda: _async(len(receiver.taken()) == 4))
    assert receiver.types() == [
        "channel.delivered",
        "channel.failed",
        "notification.partially_sent",
        "notification.requested",
    ]
    [failed] = [b["data"] for b in receiver.taken() if b["type"] == "channel.failed"]
    assert failed["channels"]["email"]["address"] == "ada@example.com"
    assert "550 5.1.1" in failed["channels"]["email"]["reason"]
    [ended] = [b["data"] for b in receiver.taken() if b["type"] == "notification.partially_sent"]
    assert ended["status"] == "partially_sent" and ended["channels"]["email"]["outcome"] == "failed"
    assert ended["channels"]["slack"]["outcome"] == "succeeded"

    # the internal team was told by email: that message's record was looked at, and made no event
    [told] = [
        r
        for r in await api.store.reader(StreamName.EMAIL_EVENT).by_tags(tag(TagName.NOTIFICATION_ID, nid))
        if r.type == "SucceededInSendingEmailEvent"
    ]
    handling = api.store.handling(StreamName.EMAIL_EVENT)

    async def looked_at() -> bool:
        return await handling.status(told.internal_id, WEBHOOK_CONCERN) == HandlingStatus.COMPLETED

    await eventually(looked_at)
    [*_, completed] = await handling.history(told.internal_id, WEBHOOK_CONCERN)
    assert completed.details == "channel.delivered: 0 deliveries started"
    assert "team@example.com" not in json.dumps(receiver.received)


async def test_a_broadcast_is_told_once_its_notifications_have_ended(api: Api, receivers: list[Receiver]) -> None:
    receiver = receivers[0]
    await added(api, receiver, ["broadcast.completed", "notification.sent"])
    body = {"entities": ["user-1", "user-2"], "subject": "S", "body": "B"}
    answer = await api.call("POST", "/v1/broadcasts", key="sender", json=body)
    assert answer.status_code == 202, answer.text
    bid = answer.json()["id"]
    await eventually(lambda: _async(len(receiver.taken()) == 3), timeout=60)
    assert receiver.types() == ["broadcast.completed", "notification.sent", "notification.sent"]
    [done] = [b["data"] for b in receiver.taken() if b["type"] == "broadcast.completed"]
    assert (done["broadcast_id"], done["status"], done["notification_id"]) == (bid, "completed", None)
    sent_ids = {b["data"]["notification_id"] for b in receiver.taken() if b["type"] == "notification.sent"}
    assert sent_ids == {f"{bid}.1", f"{bid}.2"}


async def test_a_providers_bounce_is_told_as_email_bounced(
    api: Api, receivers: list[Receiver], mail_sink: MailSink
) -> None:
    receiver = receivers[0]
    await added(api, receiver, ["email.bounced"])
    nid = await sent(api)
    [mail] = [m for m in mail_sink.messages if m.recipients == ("ada@example.com",)]
    failed = mailgun_failed("permanent", 550, "5.1.1 The email account that you tried to reach does not exist.")
    failed["recipient"] = "ada@example.com"
    failed["message"]["headers"]["message-id"] = mail.message["Message-ID"].strip("<>")
    answer = await api.call("POST", "/v1/inbound/mailgun", key=None, content=mailgun_body(failed))
    assert answer.json()["matched"] == [nid]
    await eventually(lambda: _async(len(receiver.taken()) == 1), timeout=60)
    [told] = receiver.taken()
    assert (told["type"], told["data"]["notification_id"], told["data"]["status"]) == ("email.bounced", nid, "sent")
    assert told["data"]["channels"] == {
        "email": {
            "outcome": "bounced",
            "address": "ada@example.com",
            "reason": "550 5.1.1 The email account that you tried to reach does not exist.",
        }
    }


@ON_BOTH_BACKENDS
async def test_two_dispatchers_start_each_delivery_once(
    api: Api, receivers: list[Receiver], settings: Settings, dev_env: WorkflowEnvironment
) -> None:
    """A second worker's dispatcher beside the first: each event is delivered once all the same."""
    receiver = receivers[0]
    await added(api, receiver)
    second = asyncio.create_task(WebhookDispatcher(api.store, dev_env.client, settings).run())
    try:
        await sent(api)
        await sent(api)
        await eventually(lambda: _async(len(receiver.taken()) == 8))
    finally:
        second.cancel()
    assert len(receiver.received) == 8 and len({i for i, _, _ in receiver.received}) == 8


async def _async(value: bool) -> bool:
    """`value`, as the check `eventually` awaits (a lambda's condition is looked at again each time)."""
    return value


async def test_a_receiver_that_fails_for_a_while_gets_each_event_once_it_is_back_with_the_same_id(
    api: Api, receivers: list[Receiver]
) -> None:
    flaky = receivers[0]
    flaky.status = 503
    webhook_id = await added(api, flaky)
    await sent(api)

    async def each_refused() -> bool:
        return len({i for i, status, _ in flaky.received if status == 503}) == 4

    await eventually(each_refused)
    flaky.status = 200
    await eventually(lambda: _async(len(flaky.taken()) == 4))
    refused = {i for i, status, _ in flaky.received if status == 503}
    taken = {i for i, status, _ in flaky.received if status == 200}
    assert refused == taken  # each event retried under its webhook id, and taken once
    assert len([i for i, status, _ in flaky.received if status == 200]) == 4
    listed = (await api.call("GET", f"/v1/webhooks/{webhook_id}/deliveries")).json()
    assert {d["status"] for d in listed} == {"delivered"} and min(d["attempts"] for d in listed) >= 2


async def test_an_endpoint_gone_is_disabled_at_once_and_one_failing_for_the_retry_window_after_it(
    api: Api, receivers: list[Receiver], settings: Settings, dev_env: WorkflowEnvironment
) -> None:
    gone, failing, _ = receivers
    gone.status, failing.status = 410, 500
    gone_id = await added(api, gone, ["notification.requested"])
    failing_id = await added(api, failing, ["notification.requested"])
    await sent(api)

    async def state(webhook_id: str) -> dict[str, Any]:
        found: dict[str, Any] = {e["id"]: e for e in (await api.call("GET", "/v1/webhooks")).json()}[webhook_id]
        return found

    async def disabled(webhook_id: str) -> bool:
        return not (await state(webhook_id))["enabled"]

    await eventually(lambda: disabled(gone_id), timeout=10)
    assert (await state(gone_id))["disabled_reason"] == "the endpoint answered 410 Gone"
    assert len(gone.received) == 1  # never retried
    assert not await disabled(failing_id)
    await eventually(lambda: disabled(failing_id), timeout=60)
    window = f"{RETRY_WINDOW / 3600:g} hours"
    assert (await state(failing_id))["disabled_reason"] == f"deliveries failed for {window} (last: HTTP 500)"
    assert len({i for i, _, _ in failing.received}) == 1 and len(failing.received) >= 3  # one delivery, retried
    [delivery] = (await api.call("GET", f"/v1/webhooks/{failing_id}/deliveries")).json()
    assert (delivery["status"], delivery["http_status"]) == ("failed", 500)

    result = _cli(settings, "webhook", "list")
    assert result.returncode == 0, result.stderr
    assert f"{gone_id}  {gone.url}  notification.requested  disabled since " in result.stdout
    assert "the endpoint answered 410 Gone" in result.stdout
    assert (await api.http.post("/sign-in", data={"key": api.keys["reader"], "next": "/"})).status_code == 303
    overview = (await api.http.get("/")).text
    api.http.cookies.clear()
    assert f"Webhook endpoint {gone_id} is disabled since " in overview and "410 Gone" in overview

    # the delivery's history replays, and holds no secret
    [(webhook_id, _, _)] = failing.received[:1]
    history = await dev_env.client.get_workflow_handle(webhook_id).fetch_history()
    recorded = b"".join(event.SerializeToString() for event in history.events)  # payloads as their bytes
    assert failing_id.encode() in recorded and failing.secret.encode() not in recorded
    await Replayer(
        workflows=[WebhookDeliveryWorkflow], workflow_runner=WORKFLOW_RUNNER, data_converter=pydantic_data_converter
    ).replay_workflow(history)


async def test_the_cli_adds_lists_follows_and_removes_endpoints(
    api: Api, receivers: list[Receiver], settings: Settings
) -> None:
    receiver = receivers[0]
    result = _cli(settings, "webhook", "add", receiver.url, "--events", "notification.sent,channel.failed", "--json")
    assert result.returncode == 0, result.stderr
    added = json.loads(result.stdout)
    assert set(added) == {"id", "url", "events", "secret"} and added["events"] == [
        "channel.failed",
        "notification.sent",
    ]
    receiver.secret = added["secret"]
    await sent(api)
    await eventually(lambda: _async(receiver.types() == ["notification.sent"]))

    listed = _cli(settings, "webhook", "list")
    assert f"{added['id']}  {receiver.url}  channel.failed,notification.sent  enabled" in listed.stdout
    assert added["secret"] not in listed.stdout

    async def recorded() -> bool:
        return bool(json.loads(_cli(settings, "webhook", "deliveries", added["id"], "--json").stdout))

    await eventually(recorded)
    [delivery] = json.loads(_cli(settings, "webhook", "deliveries", added["id"], "--json").stdout)
    assert (delivery["event_type"], delivery["status"], delivery["attempts"]) == ("notification.sent", "delivered", 1)
    assert delivery["webhook_id"] == receiver.received[0][0]

    assert _cli(settings, "webhook", "remove", added["id"]).stdout == f"removed webhook {added['id']}\n"
    gone = _cli(settings, "webhook", "remove", added["id"])
    assert (gone.returncode, gone.stderr) == (1, f"error: no webhook endpoint {added['id']!r}\n")
    assert "no webhooks" in _cli(settings, "webhook", "list").stdout

    refused = _cli(settings, "webhook", "add", "http://127.0.0.1:9/hook", private=False)
    assert refused.returncode == 2 and "private or reserved address" in refused.stderr
    wrong = _cli(settings, "webhook", "add", receiver.url, "--events", "notification.lost")
    assert wrong.returncode == 2 and "--events" in wrong.stderr


async def test_webhooks_need_the_admin_scope(api: Api, receivers: list[Receiver]) -> None:
    for key in ("reader", "sender"):
        assert (await api.call("GET", "/v1/webhooks", key=key)).status_code == 403
        posted = await api.call("POST", "/v1/webhooks", key=key, json={"url": receivers[0].url})
        assert posted.status_code == 403
    assert (await api.call("GET", "/v1/webhooks", key=None)).status_code == 401
    assert (await api.call("GET", "/v1/webhooks")).json() == []


def _cli(settings: Settings, *args: str, private: bool = True) -> subprocess.CompletedProcess[str]:
    """`starter.py` on the test's store."""
    env = {
        **unconfigured_environment(),
        "NOTIFY_STREAMS_URL": settings.streams_location,
        "NOTIFY_DATA_DIR": str(settings.data_dir),
        "NOTIFY_WEBHOOK_ALLOW_PRIVATE": "true" if private else "false",
    }
    return subprocess.run(
        [sys.executable, str(ROOT / "starter.py"), *args], env=env, capture_output=True, text=True, timeout=60
    )
