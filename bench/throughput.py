"""The saga against its ceiling, in one run on one dev server: a bare workflow fanning out two no-op activities
(`bench/bare.py`), then the saga on SQLite streams and, given a PostgreSQL server, on PostgreSQL streams, one after
the other, each at every number of requests in flight asked for; on each backend, the saga of a notification that
carries a file (1 MiB unless said, a distinct one each: `--attachment-mib`, and `--same-file` for one file every
notification names) beside the plain saga, each workload on streams of its own.

Starts a Temporal dev server (as `worker.py --dev` does), and for each measurement the mail and Slack sinks in a
process of their own (their CPU is not the worker's; they keep what they receive, in memory, for that measurement
only) and a fresh worker process: `python -m bench.bare` or `worker.py`.
Clients run a closed loop: each requests one notification (or starts one bare workflow), waits for its outcome, and
requests the next. Prints, per workload and number in flight: completed per second, request-to-outcome latency
percentiles, CPU per notification of the worker process, of the dev server and of the whole machine's share of the
work (worker, dev server, sinks, these clients and the streams' PostgreSQL backends; from /proc, so Linux only), the
worker's resident size before and after, the Temporal history events, workflow tasks and activity tasks per workflow
(from the histories of up to 50 of the workflows each measurement ran), and the saga's ratios to bare; then the
bytes and records each workload's store keeps per notification (the files' contents among them), and what a file
adds to a notification. Writes it all as JSON too.

    .venv/bin/python -m bench.throughput --notifications 300 --in-flight 1 50 \
        [--workers N] [--postgres URL] [--attachment-mib MIB] [--same-file] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, closing
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import psycopg
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from bench.bare import BareFanOut
from bench.services import drop_database, fresh_database, reachable
from client import NotificationClient, attachment
from domain import DirectoryEntry, NotificationStatus, SendNotificationToEntityOp
from domain.rules import MAX_ATTACHMENT_BYTES
from harness.processes import ROOT, WorkerProcess, unconfigured_environment
from settings import Settings
from sinks.mail import free_port
from streams.directory import import_entries
from worker import DEV_SERVER_TUNING, temporal_binary
from workflows import search

ENTITIES = [
    DirectoryEntry.model_validate(
        {
            "id": f"bench-{i}",
            "name": f"Bench {i}",
            "email": f"bench-{i}@example.com",
            "slack": {"workspace": "acme", "channel": f"C{i:04d}"},
            "channels": {"email": "send", "slack": "send"},
        }
    )
    for i in range(100)
]
"""Both channels each, every one in its own Slack channel: Slack's pace (one a second per channel) is taken, as in
production, and never waited for at these rates."""
WARM_UP = 10
"""Notifications each worker handles before it is measured."""
TICK = os.sysconf("SC_CLK_TCK")
HISTORIES = 50
"""Workflows of each measurement whose histories are counted (evenly spread over the run; all, if it ran fewer)."""
MIB = 1024 * 1024
PDF = b"%PDF-1.7\n"
"""How the file a notification carries begins; random bytes follow, as incompressible as a PDF's deflated streams."""


@dataclass(frozen=True)
class Workload:
    """A saga workload: its name in the table, the streams it alone runs on, and the file each notification carries."""

    name: str
    streams_url: str
    file_bytes: int = 0
    """The size of the file each notification carries, by email and to Slack; none if 0."""
    same_file: bool = False
    """Every notification carries the same file (which the store keeps once), not a file of its own."""

    @cached_property
    def content(self) -> bytes:
        """The same file's bytes, made once (not in the measured clients' time)."""
        return PDF + random.Random(25).randbytes(self.file_bytes - len(PDF))

    def file(self, number: int) -> bytes:
        """The file the workload's notification `number` carries: the same each time, or numbered after the PDF's
        header, so that each is a distinct content, as distinct files are (a copy of the same's bytes)."""
        same = self.content
        return same if self.same_file else same[: len(PDF)] + number.to_bytes(8, "big") + same[len(PDF) + 8 :]


@dataclass
class Stored:
    """What a workload's streams keep per notification, over the whole run (its warm-ups too)."""

    records_per_notification: float
    bytes_per_notification: int
    """Tables and indexes, handling and the files' contents included."""
    content_bytes_per_notification: int
    """The files' contents themselves (each distinct content once)."""


@dataclass
class Figures:
    workload: str
    in_flight: int
    workers: int
    notifications: int
    completed_per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    worker_cpu_ms: float
    """Per notification, all worker processes together."""
    server_cpu_ms: float
    """Per notification."""
    total_cpu_ms: float
    """Per notification, every process the measurement ran on the machine: the workers, the dev server, the sinks
    (the SMTP server and Slack), the clients (this process) and, for PostgreSQL streams, the streams' database's
    backends. On a machine the measurement keeps busy, completed per second follows it."""
    worker_rss_mib: tuple[float, float, float]
    """The (first) worker's resident size when the measurement began (after the warm-up), a tenth of the way through
    (its caches warm), and when it ended."""
    histories: int
    """Workflows whose histories the next three figures are the mean over."""
    history_events: float
    """Events in a workflow's history (one notification's, or one bare workflow's)."""
    workflow_tasks: float
    """Workflow tasks a workflow took (its WorkflowTaskScheduled events)."""
    activity_tasks: float
    """Activity tasks a workflow scheduled (its ActivityTaskScheduled events; local activities are markers)."""


@dataclass
class History:
    """What the server kept and dispatched for some workflows, per workflow."""

    workflows: int
    events: float
    workflow_tasks: float
    activity_tasks: float


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def resident_mib(pid: int) -> float:
    """A process's resident size now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise LookupError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User and system CPU a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


async def backends(url: str) -> dict[int, float]:
    """The CPU seconds each PostgreSQL backend serving the database `url` names has used so far, by process id."""
    async with await psycopg.AsyncConnection.connect(url) as db:
        cursor = await db.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        pids = [row[0] for row in await cursor.fetchall()]
    used = {}
    for pid in pids:
        try:
            used[pid] = cpu_seconds(pid)
        except FileNotFoundError:  # ended since
            pass
    return used


async def closed_loop(
    one: Callable[[int], Awaitable[str]], count: int, in_flight: int, done: Callable[[int], None] = lambda n: None
) -> dict[str, float]:
    """`count` calls of `one`, `in_flight` at a time, each client starting the next when its last ends; the seconds
    each took, by the id of the workflow it ran. `done` is told how many have ended, as each ends."""
    latencies: dict[str, float] = {}
    numbers = iter(range(count))

    async def client() -> None:
        for n in numbers:
            started = time.perf_counter()
            workflow_id = await one(n)
            latencies[workflow_id] = time.perf_counter() - started
            done(len(latencies))

    await asyncio.gather(*(client() for _ in range(in_flight)))
    return latencies


async def history(temporal: Client, workflow_ids: list[str]) -> History:
    """Events, workflow tasks and activity tasks per workflow, over up to `HISTORIES` of these (ended) workflows,
    evenly spread."""
    taken = min(HISTORIES, len(workflow_ids))
    sample = [workflow_ids[i * len(workflow_ids) // taken] for i in range(taken)]
    histories = await asyncio.gather(*(temporal.get_workflow_handle(w).fetch_history() for w in sample))
    events = [event.event_type for h in histories for event in h.events]

    def per_workflow(count: int) -> float:
        return round(count / len(histories), 1)

    return History(
        workflows=len(histories),
        events=per_workflow(len(events)),
        workflow_tasks=per_workflow(events.count(EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED)),
        activity_tasks=per_workflow(events.count(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)),
    )


class Bench:
    def __init__(self, folder: Path, postgres: str | None, profile: Path | None = None) -> None:
        self.folder = folder
        self.postgres = postgres
        self.profile = profile
        self.port = free_port()
        self.processes: list[subprocess.Popen[str]] = []
        self.saga_counts: Counter[str] = Counter()
        """Notifications requested on each store, by its URL."""
        self.databases: list[str] = []
        """The PostgreSQL databases made for the run, dropped at its end."""
        self.server = self.spawn(
            [str(temporal_binary("temporal")), "server", "start-dev", "--headless", "--ip", "127.0.0.1"]
            + ["--port", str(self.port), "--log-level", "error", *DEV_SERVER_TUNING, *search.DEV_SERVER_ARGS]
        )
        self.mail_port, self.slack_port = 0, 0
        """Where the sinks of the measurement under way listen."""

    def spawn(self, command: list[str], environment: dict[str, str] | None = None) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            command,
            cwd=self.folder,
            env=(environment or unconfigured_environment()) | {"PYTHONPATH": str(ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.processes.append(process)
        return process

    def start_sinks(self) -> WorkerProcess:
        """The mail and Slack sinks, in a process of their own, for one measurement."""
        self.mail_port, self.slack_port = free_port(), free_port()
        command = ["-m", "sinks", "--mail-port", str(self.mail_port), "--slack-port", str(self.slack_port)]
        return WorkerProcess(self.spawn([sys.executable, *command]))

    async def run(
        self, count: int, in_flight: list[int], workers: int, file_bytes: int, same_file: bool
    ) -> tuple[list[Figures], dict[str, Stored]]:
        settings = Settings(_env_file=None, temporal_address=f"127.0.0.1:{self.port}", task_queue="saga")
        temporal = await reachable(settings)
        workloads = await self.workloads(file_bytes, same_file)
        figures = []
        for flight in in_flight:
            figures.append(await self.measure(temporal, "bare", self.bare(temporal, flight), count, flight, workers))
            for workload in workloads:
                async with self.saga(temporal, workload) as one:
                    figures.append(
                        await self.measure(temporal, workload.name, one, count, flight, workers, workload.streams_url)
                    )
        stored = {}
        for workload in workloads:
            records, size = await stream_size(workload.streams_url)
            contents, requested = await content_size(workload.streams_url), self.saga_counts[workload.streams_url]
            stored[workload.name] = Stored(
                round(records / requested, 1), round(size / requested), round(contents / requested)
            )
        return figures, stored

    async def workloads(self, file_bytes: int, same_file: bool) -> list[Workload]:
        """The saga's workloads, each on streams of its own: on SQLite, then on PostgreSQL if given; on each, the
        plain saga, then with a distinct file per notification, then with the same file, as asked for."""
        mib = f"{file_bytes / MIB:.3g} MiB"
        files = [("", 0, False)]
        if file_bytes:
            files.append((f" + {mib} file", file_bytes, False))
            if same_file:
                files.append((f" + same {mib} file", file_bytes, True))
        workloads = [
            Workload(f"saga{suffix}", f"sqlite:///{self.folder / f'streams-{i}.db'}", size, same)
            for i, (suffix, size, same) in enumerate(files)
        ]
        if self.postgres is not None:
            for suffix, size, same in files:
                self.databases.append(await fresh_database(self.postgres))
                workloads.append(Workload(f"saga postgres{suffix}", self.databases[-1], size, same))
        return workloads

    def environment_for(self, streams_url: str | None) -> dict[str, str]:
        """A worker's environment: the dev server's address; and, for a saga worker, its streams and the sinks."""
        temporal = {"NOTIFY_TEMPORAL_ADDRESS": f"127.0.0.1:{self.port}"}
        if streams_url is None:
            return unconfigured_environment() | temporal
        return (
            unconfigured_environment()
            | temporal
            | {
                "NOTIFY_TASK_QUEUE": "saga",
                "NOTIFY_STREAMS_URL": streams_url,
                "NOTIFY_DATA_DIR": str(self.folder),
                "NOTIFY_SMTP_HOST": "127.0.0.1",
                "NOTIFY_SMTP_PORT": str(self.mail_port),
                "NOTIFY_EMAIL_FROM": "bench@notify.test",
                "NOTIFY_SLACK_API_URL": f"http://127.0.0.1:{self.slack_port}/api/",
                "NOTIFY_SLACK_TOKENS": json.dumps({"acme": "xoxb-bench"}),
            }
        )

    def bare(self, temporal: Client, run: int) -> Callable[[int], Awaitable[str]]:
        async def one(n: int) -> str:
            workflow_id = f"bare-{run}-{uuid.uuid4()}"
            await temporal.execute_workflow(BareFanOut.run, n, id=workflow_id, task_queue="bare")
            return workflow_id

        return one

    @asynccontextmanager
    async def saga(self, temporal: Client, workload: Workload) -> AsyncIterator[Callable[[int], Awaitable[str]]]:
        """Requests of the workload's notifications on its streams, each waited for until it is sent."""
        url = workload.streams_url
        settings = Settings(
            _env_file=None, temporal_address=f"127.0.0.1:{self.port}", task_queue="saga", streams_url=url
        )
        if workload.file_bytes:
            workload.file(0)  # its bytes made before the clients are measured
        async with settings.open_streams(create=True) as store:
            await import_entries(store, ENTITIES)
            notify = NotificationClient(store, temporal, settings)

            async def one(n: int) -> str:
                number = self.saga_counts[url]
                entity = ENTITIES[number % len(ENTITIES)]
                self.saga_counts[url] += 1
                files = [workload.file(number)] if workload.file_bytes else []
                name = "report.pdf" if workload.same_file else f"report-{number}.pdf"
                op = SendNotificationToEntityOp(
                    entity_id=entity.id,
                    subject="Bench",
                    body=f"Benchmark notification {n}.",
                    attachments=[attachment(name, file) for file in files],
                )
                notification_id = await notify.request(op, contents=files)  # its saga's workflow id
                view = await notify.result(notification_id)
                assert view.status == NotificationStatus.SENT, view
                return notification_id

            yield one

    async def measure(
        self,
        temporal: Client,
        workload: str,
        one: Callable[[int], Awaitable[str]],
        count: int,
        in_flight: int,
        workers: int,
        streams_url: str | None = None,
    ) -> Figures:
        """One workload's measurement: bare's, or the saga's on the streams `streams_url` names."""
        bare = [sys.executable, "-m", "bench.bare"]
        command = bare if streams_url is None else [sys.executable, str(ROOT / "worker.py")]
        database = streams_url if streams_url is not None and not streams_url.startswith("sqlite") else None
        sinks = self.start_sinks()  # beside the workers, which connect to them only once they send
        started_workers = [
            WorkerProcess(self.spawn(command, self.environment_for(streams_url))) for _ in range(workers)
        ]
        worker = started_workers[0]
        pids = [w.process.pid for w in started_workers]
        try:
            await asyncio.to_thread(sinks.until_said, "sinks ready")
            for w in started_workers:
                await asyncio.to_thread(w.until_polling)
            await closed_loop(one, WARM_UP, min(in_flight, WARM_UP))
            spy = self.profiling(worker.process.pid, f"{workload}-{in_flight}")
            worker_cpu, server_cpu = sum(map(cpu_seconds, pids)), cpu_seconds(self.server.pid)
            others = cpu_seconds(sinks.process.pid) + time.process_time()
            database_before = await backends(database) if database else {}
            rss = [resident_mib(worker.process.pid)]

            def tenth(done: int) -> None:
                if done == max(1, count // 10):
                    rss.append(resident_mib(worker.process.pid))

            started = time.perf_counter()
            latencies = await closed_loop(one, count, in_flight, tenth)
            elapsed = time.perf_counter() - started
            worker_cpu = sum(map(cpu_seconds, pids)) - worker_cpu
            server_cpu = cpu_seconds(self.server.pid) - server_cpu
            others = cpu_seconds(sinks.process.pid) + time.process_time() - others
            if database:  # a backend that ended meanwhile is not counted; one that began, from its start
                others += sum(cpu - database_before.get(pid, 0.0) for pid, cpu in (await backends(database)).items())
            worker_rss = (rss[0], rss[1], resident_mib(worker.process.pid))
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
        finally:
            for w in started_workers:
                w.stop()
            sinks.stop()
        ms = [latency * 1000 for latency in latencies.values()]
        kept = await history(temporal, list(latencies))
        return Figures(
            workload=workload,
            in_flight=in_flight,
            workers=workers,
            notifications=count,
            completed_per_second=round(count / elapsed, 1),
            p50_ms=round(statistics.median(ms), 1),
            p95_ms=round(percentile(ms, 95), 1),
            p99_ms=round(percentile(ms, 99), 1),
            worker_cpu_ms=round(worker_cpu * 1000 / count, 1),
            server_cpu_ms=round(server_cpu * 1000 / count, 1),
            total_cpu_ms=round((worker_cpu + server_cpu + others) * 1000 / count, 1),
            worker_rss_mib=worker_rss,
            histories=kept.workflows,
            history_events=kept.events,
            workflow_tasks=kept.workflow_tasks,
            activity_tasks=kept.activity_tasks,
        )

    def profiling(self, pid: int, name: str) -> subprocess.Popen[bytes] | None:
        """py-spy sampling the worker (its stacks, collapsed, in the profile folder), if asked for."""
        if self.profile is None:
            return None
        self.profile.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--nonblocking"]
            + ["--format", "raw", "--output", str(self.profile / f"{name}.txt")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def close(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        if self.postgres is not None:
            for url in self.databases:
                await drop_database(self.postgres, url)


async def stream_size(url: str) -> tuple[int, int]:
    """Records in the streams, and bytes they take (tables and indexes, handling included)."""
    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            records = db.execute("SELECT count(*) FROM records").fetchone()[0]
        return records, path.stat().st_size
    async with await psycopg.AsyncConnection.connect(url) as db:
        cursor = await db.execute(
            "SELECT (SELECT count(*) FROM notify_records), sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c"
            " WHERE c.relname LIKE 'notify_%' AND c.relkind = 'r'"
        )
        records, size = await cursor.fetchone()  # type: ignore[misc]
    return records, size


async def content_size(url: str) -> int:
    """Bytes of the files' contents the streams keep, each distinct content once (their bytes alone)."""
    if url.startswith("sqlite"):
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
            return int(db.execute("SELECT coalesce(sum(length(content)), 0) FROM contents").fetchone()[0])
    async with await psycopg.AsyncConnection.connect(url) as db:
        cursor = await db.execute("SELECT coalesce(sum(octet_length(content)), 0)::bigint FROM notify_contents")
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


def aligned(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]


def table(figures: list[Figures], stored: dict[str, Stored]) -> str:
    bare = {f.in_flight: f for f in figures if f.workload == "bare"}
    rows: list[tuple[str, ...]] = [
        ("workload", "in flight", "workers", "done/s", "p50 ms", "p95 ms", "p99 ms", "worker CPU ms/n",
         "server CPU ms/n", "total CPU ms/n", "worker RSS MiB (start, 10%, end)", "events/n", "wf tasks/n",
         "activities/n", "stored KB/n", "x bare done/s", "x bare p50", "x bare worker CPU", "x bare server CPU",
         "x bare total CPU", "x bare events"),
    ]  # fmt: skip
    for f in figures:
        base = bare[f.in_flight]
        ratios = (
            ("",) * 6
            if f.workload == "bare"
            else tuple(
                f"{mine / theirs:.2f}"
                for mine, theirs in (
                    (f.completed_per_second, base.completed_per_second),
                    (f.p50_ms, base.p50_ms),
                    (f.worker_cpu_ms, base.worker_cpu_ms),
                    (f.server_cpu_ms, base.server_cpu_ms),
                    (f.total_cpu_ms, base.total_cpu_ms),
                    (f.history_events, base.history_events),
                )
            )
        )
        kept = f"{stored[f.workload].bytes_per_notification / 1000:,.1f}" if f.workload in stored else ""
        rows.append(
            (f.workload, str(f.in_flight), str(f.workers), f"{f.completed_per_second:g}", f"{f.p50_ms:g}",
             f"{f.p95_ms:g}", f"{f.p99_ms:g}", f"{f.worker_cpu_ms:g}", f"{f.server_cpu_ms:g}", f"{f.total_cpu_ms:g}",
             "{:g}, {:g}, {:g}".format(*f.worker_rss_mib), f"{f.history_events:g}", f"{f.workflow_tasks:g}",
             f"{f.activity_tasks:g}", kept, *ratios)
        )  # fmt: skip
    lines = aligned(rows)
    first = figures[0]
    lines.append(
        "events/n, wf tasks/n, activities/n: Temporal history events, workflow tasks and activity tasks per workflow"
        f" (a notification's saga, a bare workflow), over {first.histories} of each row's {first.notifications}"
        " workflows' histories, evenly spread; total CPU: the workers, the dev server, the sinks, the clients and the"
        " streams' PostgreSQL backends; stored: what the workload's streams keep per notification over the run"
    )
    for workload, its in stored.items():
        lines.append(
            f"{workload}: {its.bytes_per_notification:,} bytes stored per notification"
            f" ({its.content_bytes_per_notification:,} of them files' contents), {its.records_per_notification:g}"
            " records"
        )
    costs = file_costs(figures, stored)
    if costs:
        lines += ["", "what the file adds: against the plain saga on the same backend, at the same number in flight"]
        lines += aligned(costs)
    return "\n".join(lines)


def file_costs(figures: list[Figures], stored: dict[str, Stored]) -> list[tuple[str, ...]]:
    """A row for each workload with a file: its figures against the plain saga's on the same backend (the workload's
    name up to its " + "), at the same number in flight; none if no workload carried one."""
    plain = {(f.workload, f.in_flight): f for f in figures}
    rows: list[tuple[str, ...]] = [
        ("workload", "in flight", "x saga done/s", "x saga p50", "x saga worker CPU", "x saga server CPU",
         "x saga total CPU", "+ worker CPU ms/n", "+ server CPU ms/n", "+ total CPU ms/n", "+ stored KB/n"),
    ]  # fmt: skip
    for f in figures:
        saga, _, file = f.workload.partition(" + ")
        if not file:
            continue
        base = plain[(saga, f.in_flight)]
        added_kb = (stored[f.workload].bytes_per_notification - stored[saga].bytes_per_notification) / 1000
        rows.append(
            (f.workload, str(f.in_flight),
             *(f"{mine / theirs:.2f}" for mine, theirs in (
                 (f.completed_per_second, base.completed_per_second), (f.p50_ms, base.p50_ms),
                 (f.worker_cpu_ms, base.worker_cpu_ms), (f.server_cpu_ms, base.server_cpu_ms),
                 (f.total_cpu_ms, base.total_cpu_ms))),
             *(f"{mine - theirs:+.1f}" for mine, theirs in (
                 (f.worker_cpu_ms, base.worker_cpu_ms), (f.server_cpu_ms, base.server_cpu_ms),
                 (f.total_cpu_ms, base.total_cpu_ms))),
             f"{added_kb:+,.1f}")
        )  # fmt: skip
    return rows if len(rows) > 1 else []


async def bench(
    count: int,
    in_flight: list[int],
    workers: int,
    postgres: str | None,
    file_bytes: int = MIB,
    same_file: bool = False,
    profile: Path | None = None,
) -> tuple[list[Figures], dict[str, Stored]]:
    with tempfile.TemporaryDirectory(prefix="notify-bench-") as folder:
        run = Bench(Path(folder), postgres, profile)
        try:
            return await run.run(count, in_flight, workers, file_bytes, same_file)
        finally:
            await run.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notifications", type=int, default=300, help="measured per workload and number in flight")
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 50], help="requests in flight at a time")
    parser.add_argument(
        "--postgres", metavar="URL", help="a PostgreSQL server to make streams on, for the saga on PostgreSQL too"
    )
    parser.add_argument("--json", type=Path, help="where to write the figures (default: only printed)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes, for the bare workflow and the saga")
    parser.add_argument(
        "--attachment-mib",
        type=float,
        default=1,
        metavar="MIB",
        help="the size of the file each notification of the saga with a file carries (a distinct file each;"
        " default 1 MiB, at most 10); 0: no such workload",
    )
    parser.add_argument(
        "--same-file", action="store_true", help="the saga with the same file in every notification too"
    )
    parser.add_argument(
        "--profile", type=Path, metavar="FOLDER", help="sample each measured worker with py-spy (collapsed stacks)"
    )
    args = parser.parse_args()
    file_bytes = round(args.attachment_mib * MIB)
    if file_bytes != 0 and not len(PDF) + 8 <= file_bytes <= MAX_ATTACHMENT_BYTES:
        parser.error(f"--attachment-mib: 0 (no file), or from {len(PDF) + 8} bytes to 10 (a file's limit)")
    if args.same_file and file_bytes == 0:
        parser.error("--same-file: the saga with a file is left out (--attachment-mib 0)")
    figures, stored = asyncio.run(
        bench(args.notifications, args.in_flight, args.workers, args.postgres, file_bytes, args.same_file, args.profile)
    )
    print(table(figures, stored))
    report = {"runs": [asdict(f) for f in figures], "stored": {w: asdict(s) for w, s in stored.items()}}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
