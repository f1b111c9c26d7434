"""The service as the tests run it: a sample entity and operation, a running worker with a client (`notifying`), and
the HTTP API with its keys (`Api`)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.channel_handler import ChannelHandler, Delivery, TransientDeliveryError
from api.app import owner_store
from api.keys import ApiKeys
from client import NotificationClient
from domain import ChannelOperation, DirectoryEntry, SendNotificationToEntityOp
from settings import Settings
from streams import StreamName, StreamStore
from streams.directory import import_entries
from worker import running_workers

STORE = r"[0-9a-f]{8}"
"""A store's identity, which the notification ids it issues begin with."""

ADA = {
    "id": "user-1",
    "name": "Ada",
    "email": "ada@example.com",
    "slack": {"workspace": "acme", "channel": "C0123"},
    "channels": {"email": "send", "slack": "send"},
}


def entity(**changes: object) -> DirectoryEntry:
    return DirectoryEntry.model_validate({**ADA, **changes})


def operation(entity_id: str = "user-1", **changes: object) -> SendNotificationToEntityOp:
    return SendNotificationToEntityOp.model_validate(
        {"entity_id": entity_id, "subject": "Disk almost full", "body": "Volume /data is at 91%.", **changes}
    )


@dataclass
class Notify:
    client: NotificationClient
    store: StreamStore
    env: WorkflowEnvironment

    async def send(self, op: SendNotificationToEntityOp | None = None) -> tuple[str, dict[str, Any]]:
        notification_id = await self.client.request(op or operation())
        await self.client.result(notification_id)
        return notification_id, await self.client.status(notification_id)

    async def types(self, stream: StreamName, record_id: str | int) -> list[str]:
        return [r.type for r in await self.store.reader(stream).by_id(record_id)]


@asynccontextmanager
async def running(env: WorkflowEnvironment, store: StreamStore, settings: Settings) -> AsyncIterator[Notify]:
    async with running_workers(env.client, store, settings):
        yield Notify(NotificationClient(store, env.client, settings), store, env)


@asynccontextmanager
async def notifying(
    env: WorkflowEnvironment, store: StreamStore, settings: Settings, *entities: DirectoryEntry
) -> AsyncIterator[Notify]:
    """Workers for `settings` on `env`, with these entities (by default the sample one) in the directory (written as
    the owner of the streams, which alone writes it)."""
    async with owner_store(settings, store) as owner:
        await import_entries(owner, list(entities) or [entity()])
    async with running(env, store, settings) as notify:
        yield notify


async def delivered(
    handler: ChannelHandler[Any, Any], operation: ChannelOperation, attempt: int = 1
) -> Delivery | TransientDeliveryError:
    """The handler's delivery of `operation` by this attempt, as an activity, or the transient failure it raised for
    a retry."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=attempt)
    try:
        return await env.run(handler.deliver, operation)
    except TransientDeliveryError as error:
        return error


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    """Wait until `check` holds, looking again whenever the event loop is free; fail after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


@dataclass
class Api:
    """The HTTP API on a real server (the `api` fixture), with keys by name: `all`, `sender`, `reader`."""

    http: httpx.AsyncClient
    keys: dict[str, str]
    store: StreamStore
    issuer: ApiKeys

    async def call(self, method: str, path: str, key: str | None = "all", **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if key is not None:
            headers["Authorization"] = f"Bearer {self.keys.get(key, key)}"
        return await self.http.request(method, path, headers=headers, **kwargs)

    async def outcome(self, notification_id: str, timeout: float = 60) -> dict[str, Any]:
        """The view once the notification has ended (the API has no long poll: it is asked again)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            view: dict[str, Any] = (await self.call("GET", f"/v1/notifications/{notification_id}")).json()
            if view["status"] not in ("pending", "scheduled", "sending"):
                return view
            assert asyncio.get_running_loop().time() < deadline, view
            await asyncio.sleep(0.1)

    async def records(self) -> int:
        return sum([len(await self.store.reader(s).by_tags()) for s in StreamName if s != StreamName.API_KEY])


def scraped(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on a Prometheus endpoint, by name and labels."""
    text = httpx.get(url).raise_for_status().text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
