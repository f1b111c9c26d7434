"""A broadcast against the same number of single requests, in one run on one dev server (issue 26): on SQLite streams
and, given a PostgreSQL server, on PostgreSQL streams, each with RECIPIENTS entities (email only, to the mail sink)
in a topic, and two workers, as docs/operations.md says to run them beside broadcasts: one for single notifications
(`worker.py --serve notifications`) and one for broadcasts (`nice -n 10 worker.py --serve broadcasts`).

For each backend: a single notification's latency while nothing else runs; RECIPIENTS single requests at 50 in
flight (closed loop: the baseline); then one broadcast to the topic: how long it took to be accepted, until its
saga had requested (and started) every recipient's notification, until every one had ended; a single notification's
latency in the middle of it; the broadcasts' worker's resident size through it; CPU per notification (both workers
and the dev server); the broadcast's largest run's history (events and bytes). Prints each backend's row as it is
measured, then the table, and writes JSON.

    .venv/bin/python -m bench.broadcast --recipients 10000 [--pace N] [--postgres URL] [--json FILE]

With `--pace N` the workers start broadcasts' recipients at N a second (`NOTIFY_BROADCAST_RECIPIENTS_PER_SECOND`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from activities.contract import REQUEST_RECIPIENTS
from bench.services import fresh_database, reachable
from bench.throughput import Bench, aligned, closed_loop, cpu_seconds, resident_mib
from broadcasts import BroadcastClient
from client import NotificationClient
from domain import DirectoryEntry, NotificationStatus, SendNotificationToEntityOp
from harness.processes import ROOT, WorkerProcess
from settings import Settings
from streams.directory import import_entries

IN_FLIGHT = 50
"""The baseline's single requests at once."""
PROBES = 9
"""Single notifications timed, one after the other, idle and during the broadcast."""
BROADCASTS_NICENESS = ("nice", "-n", "10")
"""How the broadcasts' worker is started: behind the other processes for the CPU, as docs/operations.md says."""
SOLO = DirectoryEntry.model_validate({"id": "solo", "email": "solo@example.com", "channels": {"email": "send"}})
"""The entity single notifications go to: not in the topic."""


@dataclass
class Figures:
    backend: str
    recipients: int
    pace: float | None
    """Recipients started a second (`NOTIFY_BROADCAST_RECIPIENTS_PER_SECOND`), or None: as fast as they go."""
    single_idle_ms: float
    singles_s: float
    """The same number of single requests at `IN_FLIGHT`, each waited for."""
    singles_cpu_ms: float
    """Worker and dev server CPU per single notification."""
    accepted_ms: float
    requested_s: float
    """From the request until the saga had requested (and started) the last recipient's notification."""
    ended_s: float
    broadcast_cpu_ms: float
    single_during_ms: float
    worker_rss_mib: tuple[float, float, float]
    """At the broadcast's start, its peak, its end."""
    largest_run_events: int
    largest_run_bytes: int
    runs: int
    single_idle_parts: dict[str, float]
    """Where an idle single notification's milliseconds went (`where_time_went`), medians of the probes."""
    single_during_parts: dict[str, float]

    @property
    def x_singles(self) -> float:
        return self.ended_s / self.singles_s

    @property
    def x_idle(self) -> float:
        return self.single_during_ms / self.single_idle_ms


def recipients_of(count: int) -> list[DirectoryEntry]:
    return [
        DirectoryEntry.model_validate({"id": f"r-{i}", "email": f"r-{i}@example.com", "channels": {"email": "send"}})
        for i in range(count)
    ]


async def measure(
    bench: Bench, temporal: Client, backend: str, url: str, count: int, pace: float | None = None
) -> Figures:
    settings = Settings(_env_file=None, temporal_address=f"127.0.0.1:{bench.port}", task_queue="saga", streams_url=url)
    entities = recipients_of(count)
    async with settings.open_streams(create=True) as store:
        await import_entries(store, [SOLO, *entities], {e.id: ["everyone"] for e in entities})
        sinks = bench.start_sinks()
        env = bench.environment_for(url)
        if pace is not None:
            env["NOTIFY_BROADCAST_RECIPIENTS_PER_SECOND"] = str(pace)
        workers = [
            WorkerProcess(bench.spawn([*before, sys.executable, str(ROOT / "worker.py"), "--serve", serves], env))
            for before, serves in [((), "notifications"), (BROADCASTS_NICENESS, "broadcasts")]
        ]
        broadcasting = workers[1]
        try:
            await asyncio.to_thread(sinks.until_said, "sinks ready")
            for each in workers:
                await asyncio.to_thread(each.until_polling)
            notify = NotificationClient(store, temporal, settings)
            broadcasts = BroadcastClient(notify)

            async def single(entity_id: str = SOLO.id, parts: list[dict[str, float]] | None = None) -> float:
                started = time.perf_counter()
                nid = await notify.request(SendNotificationToEntityOp(entity_id=entity_id, subject="S", body="B"))
                view = await notify.result(nid)
                assert view.status == NotificationStatus.SENT, view
                took = (time.perf_counter() - started) * 1000
                if parts is not None:
                    parts.append(await where_time_went(temporal, nid, took))
                return took

            idle_parts: list[dict[str, float]] = []
            idle = statistics.median([await single(parts=idle_parts) for _ in range(PROBES)])
            pids = [*(w.process.pid for w in workers), bench.server.pid]

            async def one(n: int) -> str:
                await single(entities[n].id)
                return str(n)

            cpu, started = sum(map(cpu_seconds, pids)), time.perf_counter()
            await closed_loop(one, count, IN_FLIGHT)
            singles_s, singles_cpu = time.perf_counter() - started, sum(map(cpu_seconds, pids)) - cpu

            rss = [resident_mib(broadcasting.process.pid)]
            cpu, started, wall = sum(map(cpu_seconds, pids)), time.perf_counter(), time.time()
            bid = await broadcasts.request(
                {"audience": {"topic": "everyone"}, "content": {"subject": "All", "body": "B"}}
            )
            accepted = time.perf_counter() - started
            result = asyncio.create_task(broadcasts.result(bid))
            during: list[float] = []
            during_parts: list[dict[str, float]] = []
            while not result.done():  # the probes from the middle of the time the singles took, a second apart
                rss.append(resident_mib(broadcasting.process.pid))
                if len(during) < PROBES and time.perf_counter() - started >= singles_s / 2:
                    during.append(await single(parts=during_parts))
                await asyncio.wait([result], timeout=1)
            counts = await result
            ended_s, broadcast_cpu = time.perf_counter() - started, sum(map(cpu_seconds, pids)) - cpu
            assert counts.ended == {"sent": count}, counts
            runs = await broadcast_runs(temporal, bid)
        finally:
            for each in workers:
                each.stop()
            sinks.stop()
    requested_at = max(at for _, _, at in runs)  # the last page's step, as its run's history says
    return Figures(
        backend=backend,
        recipients=count,
        pace=pace,
        single_idle_ms=round(idle, 1),
        singles_s=round(singles_s, 2),
        singles_cpu_ms=round(singles_cpu * 1000 / count, 1),
        accepted_ms=round(accepted * 1000, 1),
        requested_s=round(requested_at - wall, 2),
        ended_s=round(ended_s, 2),
        broadcast_cpu_ms=round(broadcast_cpu * 1000 / count, 1),
        single_during_ms=round(statistics.median(during), 1) if during else 0.0,
        worker_rss_mib=(rss[0], max(rss), rss[-1]),
        largest_run_events=max(events for events, _, _ in runs),
        largest_run_bytes=max(size for _, size, _ in runs),
        runs=len(runs),
        single_idle_parts=median_parts(idle_parts),
        single_during_parts=median_parts(during_parts),
    )


PARTS = ("workflow tasks waited", "workflow tasks ran", "activities waited", "activities ran", "outside the saga")


async def where_time_went(temporal: Client, notification_id: str, took_ms: float) -> dict[str, float]:
    """Where a single notification's milliseconds went, by its saga's history: its workflow tasks waiting for a
    worker and running (its local activities, its steps, run inside them), its sends waiting for a worker and running,
    and what the client's request and its wait for the result took outside the saga's history."""
    history = await temporal.get_workflow_handle(notification_id).fetch_history()
    at = {e.event_id: e.event_time.ToMilliseconds() for e in history.events}
    parts = dict.fromkeys(PARTS, 0.0)
    for e in history.events:
        match e.event_type:
            case EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                scheduled = e.workflow_task_started_event_attributes.scheduled_event_id
                parts["workflow tasks waited"] += at[e.event_id] - at[scheduled]
            case EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                started = e.workflow_task_completed_event_attributes.started_event_id
                parts["workflow tasks ran"] += at[e.event_id] - at[started]
            case EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                scheduled = e.activity_task_started_event_attributes.scheduled_event_id
                parts["activities waited"] += at[e.event_id] - at[scheduled]
            case EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                started = e.activity_task_completed_event_attributes.started_event_id
                parts["activities ran"] += at[e.event_id] - at[started]
    saga = history.events[-1].event_time.ToMilliseconds() - history.events[0].event_time.ToMilliseconds()
    parts["outside the saga"] = took_ms - saga
    return parts


def median_parts(measured: list[dict[str, float]]) -> dict[str, float]:
    """Each part's median over the probes."""
    return {part: round(statistics.median(m[part] for m in measured), 1) for part in PARTS} if measured else {}


async def broadcast_runs(temporal: Client, broadcast_id: str) -> list[tuple[int, int, float]]:
    """Each run of the broadcast's saga: its events, its history's bytes, and when (epoch seconds) its last page's
    step completed (0 if none did)."""
    runs = []
    async for execution in temporal.list_workflows(f"WorkflowId = '{broadcast_id}'"):
        history = await temporal.get_workflow_handle(broadcast_id, run_id=execution.run_id).fetch_history()
        steps = {
            e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        }
        pages = [
            e.event_time.ToDatetime(tzinfo=UTC).timestamp()
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
            and steps[e.activity_task_completed_event_attributes.scheduled_event_id] == REQUEST_RECIPIENTS.name
        ]
        runs.append((len(history.events), len(history.to_json()), max(pages, default=0.0)))
    return runs


def table(figures: list[Figures]) -> str:
    rows: list[tuple[str, ...]] = [
        ("backend", "recipients", "pace/s", "accepted ms", "requested s", "ended s", "singles s", "x singles",
         "single idle ms", "single during ms", "x idle", "CPU ms/n broadcast", "CPU ms/n singles",
         "worker RSS MiB (start, peak, end)", "runs", "largest run events", "largest run KB"),
    ]  # fmt: skip
    for f in figures:
        rows.append(
            (f.backend, str(f.recipients), "-" if f.pace is None else f"{f.pace:g}", f"{f.accepted_ms:g}",
             f"{f.requested_s:g}", f"{f.ended_s:g}", f"{f.singles_s:g}", f"{f.x_singles:.2f}", f"{f.single_idle_ms:g}",
             f"{f.single_during_ms:g}", f"{f.x_idle:.2f}", f"{f.broadcast_cpu_ms:g}", f"{f.singles_cpu_ms:g}",
             ", ".join(f"{m:g}" for m in f.worker_rss_mib), str(f.runs), str(f.largest_run_events),
             f"{f.largest_run_bytes / 1000:.1f}")
        )  # fmt: skip
    return "\n".join(aligned(rows))


def parts_table(figures: Figures) -> str:
    """Where a single notification's time went, idle and during the broadcast (ms, medians)."""
    rows: list[tuple[str, ...]] = [(f"{figures.backend}: a single's ms", *PARTS)]
    for when, parts in (("idle", figures.single_idle_parts), ("during", figures.single_during_parts)):
        rows.append((when, *(f"{parts.get(p, 0):g}" for p in PARTS)))
    return "\n".join(aligned(rows))


async def bench(recipients: int, pace: float | None, postgres: str | None, output: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="notify-broadcast-") as folder:
        run = Bench(Path(folder), postgres)
        try:
            settings = Settings(_env_file=None, temporal_address=f"127.0.0.1:{run.port}", task_queue="saga")
            temporal = await reachable(settings)
            stores = [("SQLite", f"sqlite:///{Path(folder) / 'streams.db'}")]
            if postgres is not None:
                run.databases.append(await fresh_database(postgres))
                stores.append(("PostgreSQL", run.databases[-1]))
            figures = []
            for backend, url in stores:  # each backend's figures as soon as they are measured: a run takes long
                figures.append(await measure(run, temporal, backend, url, recipients, pace))
                print(table(figures[-1:]), flush=True)
                print(parts_table(figures[-1]), flush=True)
        finally:
            await run.close()
    if len(figures) > 1:
        print(table(figures))
    if output is not None:
        output.write_text(json.dumps([asdict(f) | {"x_singles": f.x_singles, "x_idle": f.x_idle} for f in figures]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=10_000, help="entities in the topic (default 10,000)")
    parser.add_argument("--pace", type=float, metavar="N", help="recipients started a second (default: no pace)")
    parser.add_argument("--postgres", metavar="URL", help="also on a fresh database of this PostgreSQL server")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the figures as JSON too")
    arguments = parser.parse_args()
    if arguments.recipients < 1:
        parser.error("--recipients: at least 1")
    if arguments.pace is not None and arguments.pace <= 0:
        parser.error("--pace: more than 0")
    asyncio.run(bench(arguments.recipients, arguments.pace, arguments.postgres, arguments.json))


if __name__ == "__main__":
    main()
