"""What the saga tests share: a sample entity and operation, and a running worker with a client."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from api.keys import ApiKeys
from client import NotificationClient
from domain import DirectoryEntry, SendNotificationToEntityOp
from settings import Settings
from streams import StreamName, StreamStore
from streams.directory import import_entries
from worker import running_workers, temporal_binary
from workflows import search

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


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    """Wait until `check` holds, looking again whenever the event loop is free; fail after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


def unconfigured_environment() -> dict[str, str]:
    """This process's environment without any `NOTIFY_` setting: what a child process is then given is all it has."""
    return {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}


def launch_worker(env: dict[str, str], cwd: Path, *args: str) -> WorkerProcess:
    """A `worker.py` process (with `args`), as soon as it is started."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "worker.py"), *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return WorkerProcess(process)


def temporal_server(port: int, database: Path) -> subprocess.Popen[bytes]:
    """A Temporal dev server on `port`, keeping its workflows in `database` (so that it can be restarted on them)."""
    return subprocess.Popen(
        [str(temporal_binary("temporal")), "server", "start-dev", "--headless", "--ip", "127.0.0.1"]
        + ["--port", str(port), "--db-filename", str(database), "--log-level", "error", *search.DEV_SERVER_ARGS],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def start_worker(env: dict[str, str], cwd: Path, *args: str) -> WorkerProcess:
    """A `worker.py` process (with `args`), once it says it polls."""
    return launch_worker(env, cwd, *args).until_polling()


def said(line: str) -> str:
    """What an output line says: the line, or its message when it is a JSON log line (`NOTIFY_LOG_FORMAT=json`)."""
    if line.startswith("{"):
        try:
            return str(json.loads(line)["message"]) + "\n"
        except (ValueError, KeyError):
            pass
    return line


class WorkerProcess:
    """A worker process whose output (standard error folded in) a thread reads as it comes, so that the worker never
    blocks on a full pipe, and the test can read what it said at any time."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._said = threading.Condition()
        self._polling = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._said:
                self.lines.append(line)
                self._said.notify_all()
            if said(line).startswith("worker polling"):
                self._polling.set()
        self._polling.set()  # it ended: nothing more will come
        with self._said:
            self._said.notify_all()

    def until_polling(self, timeout: float = 120) -> WorkerProcess:
        """This worker, once it says it polls (its output is the event: no sleeping)."""
        self._polling.wait(timeout)
        if not any(said(line).startswith("worker polling") for line in self.lines):
            pytest.fail(f"worker.py did not poll (exit code {self.process.poll()}): {self.output}")
        return self

    def until_said(self, start: str, timeout: float = 60) -> str:
        """The first line it says that begins with `start`, once it has said it."""
        with self._said:
            found = self._said.wait_for(
                lambda: any(said(line).startswith(start) for line in self.lines) or self.process.poll() is not None,
                timeout,
            )
            first = next((said(line) for line in self.lines if said(line).startswith(start)), None)
        if not found or first is None:
            pytest.fail(f"worker.py did not say {start!r} (exit code {self.process.poll()}): {self.output}")
        return first

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def ended(self, timeout: float = 60) -> str:
        """Everything it said, once it has exited by itself."""
        self.process.wait(timeout)
        self._reader.join(timeout)
        return self.output

    def stop(self, timeout: float = 60) -> str:
        """Everything it said, once SIGTERM (if it still runs) has ended it."""
        if self.process.poll() is None:
            self.process.terminate()
        return self.ended(timeout)


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
            view = (await self.call("GET", f"/v1/notifications/{notification_id}")).json()
            if view["status"] not in ("pending", "scheduled", "sending"):
                return view
            assert asyncio.get_running_loop().time() < deadline, view
            await asyncio.sleep(0.1)

    async def records(self) -> int:
        return sum([len(await self.store.reader(s).by_tags()) for s in StreamName if s != StreamName.API_KEY])
