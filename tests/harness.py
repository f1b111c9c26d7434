"""What the saga tests share: a sample entity and operation, and a running worker with a client."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from client import NotificationClient
from domain import DirectoryEntry, SendNotificationToEntityOp
from settings import Settings
from streams import StreamName, StreamStore
from streams.directory import import_entries
from worker import running_workers

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

    async def send(self, op: SendNotificationToEntityOp | None = None) -> tuple[str, dict]:
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
    """Workers for `settings` on `env`, with these entities (by default the sample one) in the directory."""
    await import_entries(store, list(entities) or [entity()])
    async with running(env, store, settings) as notify:
        yield notify


ROOT = Path(__file__).resolve().parent.parent


def start_worker(env: dict[str, str], cwd: Path, *args: str) -> tuple[subprocess.Popen[str], list[str]]:
    """A `worker.py` process (with `args`), once it says it polls, and what it said until then."""
    return until_polling(
        subprocess.Popen(
            [sys.executable, str(ROOT / "worker.py"), *args],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    )


def until_polling(worker: subprocess.Popen[str]) -> tuple[subprocess.Popen[str], list[str]]:
    """The worker, once it says it polls (no sleeping: its output is the event), and what it said until then."""
    assert worker.stdout is not None
    seen = []
    for line in worker.stdout:
        seen.append(line)
        if line.startswith("worker polling"):
            return worker, seen
    pytest.fail(f"worker.py exited {worker.wait()}: {''.join(seen)}")
