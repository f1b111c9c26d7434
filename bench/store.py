"""The stream store at size: fill it with N notifications through its batch path, then time what the service asks of
it: a notification's status, the email audit of one address, the Slack audit of one channel, and a notification's
events.

The records are those of one real notification (a saga run once, on a dev server with the local sinks), copied N
times with a new notification id, channel-operation ids, entity, address and Slack channel each: one address and one
channel per ten notifications, so that an audit holds about ten deliveries. Every stream's records are put a thousand
notifications at a time, each stream's batch in one transaction, the streams' batches at once (handling entries are
not copied: the throughput bench measures the whole size of a notification). On PostgreSQL the bench's database
takes the settings docs/operations.md recommends, and is VACUUM ANALYZEd after the fill. Prints the append rate, the
size per notification, and p50/p99 of each lookup. Then it prunes them all (`streams prune`) while a writer puts
another notification's records, a record at a time, and prints how long pruning took and how long the writer waited
for a put meanwhile.

    .venv/bin/python -m bench.store --notifications 1000000 [--postgres URL] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg
from psycopg import sql
from pydantic import SecretStr
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from bench.services import drop_database, fresh_database
from bench.throughput import ENTITIES, percentile, stream_size
from client import NotificationClient
from domain import DirectoryEntry, NotificationStatus, SendNotificationToEntityOp, SlackAddress, Tag, utc_now
from settings import Settings
from sinks.mail import MailSink
from sinks.slack import SlackSink
from streams import Record, StreamStore, open_store
from streams.directory import import_entries
from streams.store import NewRecord, PutResult
from worker import DEV_SERVER_TUNING, running_workers, temporal_binary
from workflows import search

BATCH = 1000
"""Notifications put at a time."""
LOOKUPS = 500
"""Of each kind, at random."""
SAMPLE_ENTITY = ENTITIES[0]
assert SAMPLE_ENTITY.slack is not None
SAMPLE_SLACK: SlackAddress = SAMPLE_ENTITY.slack
POSTGRES_SETTINGS = {"random_page_cost": "1.1", "effective_cache_size": "16GB", "work_mem": "16MB"}
"""The per-database settings docs/operations.md recommends (for a server with 24 GB, as here), set on the bench's
database; `shared_buffers` (a quarter of the memory) is the server's, set where it starts."""


async def sample(
    folder: Path, entity: DirectoryEntry = SAMPLE_ENTITY, subject: str = "Bench", body: str = "A notification."
) -> list[Record]:
    """Every record of one notification of `subject` and `body` to `entity`, as a real saga writes them."""
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(temporal_binary("temporal")),
        dev_server_extra_args=list(DEV_SERVER_TUNING),
        search_attributes=search.KEYS,
    )
    try:
        with MailSink() as mail, SlackSink() as slack:
            settings = Settings(
                _env_file=None,
                data_dir=folder,
                smtp_host=mail.host,
                smtp_port=mail.port,
                slack_api_url=slack.api_url,
                slack_token=SecretStr("xoxb-bench"),
            )
            async with settings.open_streams(create=True) as store, running_workers(env.client, store, settings):
                await import_entries(store, [entity])
                client = NotificationClient(store, env.client, settings)
                op = SendNotificationToEntityOp(entity_id=entity.id, subject=subject, body=body)
                nid = await client.request(op)
                view = await client.result(nid)
                assert view.status == NotificationStatus.SENT, view
                return await client.events(nid)
    finally:
        await env.shutdown()


class Copier:
    """The sample's records, as notification `n` would have them: each payload and tag value a template of the
    sample's, its notification id, entity, address and Slack channel to be filled in (one `str.format` each), and
    each of its tags made once for all its records (replacing the four one after another in each payload, and
    validating a tag for each record that has it, took most of the bench's time)."""

    def __init__(self, records: list[Record], identity: str) -> None:
        self.records = records
        self.nid = next(r.tag("notification-id") for r in records if r.tag("notification-id"))
        self.identity = identity
        swapped = (f'"{self.nid}"', f'"{SAMPLE_ENTITY.id}"', str(SAMPLE_ENTITY.email), f'"{SAMPLE_SLACK.channel}"')

        def template(text: str) -> str:
            text = text.replace("{", "{{").replace("}", "}}")
            for place, old in enumerate(swapped):
                text = text.replace(old, f"{{{place}}}")
            return text

        self.tags = list(dict.fromkeys((t.name, template(f'"{t.value}"')) for r in records for t in r.tags))
        """Each tag of the sample's records once: its name, and a template of its value in quotes."""
        self.templates = [
            (r, template(r.payload), [self.tags.index((t.name, template(f'"{t.value}"'))) for t in r.tags])
            for r in records
        ]
        """Each record, its payload's template, and its tags by their place in `tags`."""

    def copy(self, n: int) -> list[tuple[str, NewRecord]]:
        nid, entity = f"{self.identity}-{n}", f"bench-{n // 10}"
        news = (f'"{nid}"', f'"{entity}"', f"{entity}@example.com", f'"{slack_channel(n)}"')
        tags = [Tag(name=name, value=value.format(*news)[1:-1]) for name, value in self.tags]
        return [
            (
                r.stream,
                NewRecord(
                    record_id=nid if r.record_id == self.nid else str(n) if r.record_id else None,
                    type=r.type,
                    payload=payload.format(*news),
                    tags=[tags[place] for place in places],
                ),
            )
            for r, payload, places in self.templates
        ]


def slack_channel(n: int) -> str:
    """Notification `n`'s Slack channel: one per ten notifications, as the addresses."""
    return f"C{n // 10:07d}"


async def fill(store: StreamStore, copier: Copier, count: int) -> float:
    """Put `count` notifications; the seconds it took. Each batch's streams are put at once (on a pool, their own
    transactions), while the next batch is copied. Python's cyclic garbage collector is paused meanwhile: the copies
    hold no cycles, and it traversed each batch's objects again and again (half the bench's CPU, at 100,000 on
    PostgreSQL: 30 us a record with it, 15 without; 29,000 records/s and 52,000)."""
    started = time.perf_counter()
    putting: asyncio.Future[list[list[PutResult]]] | None = None
    gc.disable()
    try:
        for first in range(1, count + 1, BATCH):
            by_stream: dict[str, list[NewRecord]] = defaultdict(list)
            for n in range(first, min(first + BATCH, count + 1)):
                for stream, record in copier.copy(n):
                    by_stream[stream].append(record)
            if putting is not None:
                await putting
            putting = asyncio.gather(*(store.put(stream, records) for stream, records in by_stream.items()))
            await asyncio.sleep(0)  # the puts are sent before the next batch is copied
        if putting is not None:
            await putting
    finally:
        gc.enable()
    return time.perf_counter() - started


async def timed(lookup: Callable[[int], Awaitable[object]], count: int) -> dict[str, float]:
    seconds = []
    for n in random.sample(range(1, count + 1), min(LOOKUPS, count)):
        started = time.perf_counter()
        await lookup(n)
        seconds.append(time.perf_counter() - started)
    ms = [s * 1000 for s in seconds]
    return {"p50_ms": round(statistics.median(ms), 2), "p99_ms": round(percentile(ms, 99), 2)}


async def pruned_while_writing(store: StreamStore, copier: Copier, count: int) -> dict[str, float]:
    """Prune every notification put so far while a writer puts more (one record at a time, each put timed)."""
    cutoff = utc_now()
    puts: list[float] = []
    stop = asyncio.Event()

    async def writing() -> None:
        n = count
        while not stop.is_set():
            n += 1
            for stream, record in copier.copy(n):
                started = time.perf_counter()
                await store.put(stream, [record])
                puts.append(time.perf_counter() - started)
            await asyncio.sleep(0.01)

    writer = asyncio.create_task(writing())
    started = time.perf_counter()
    pruned = await store.prune(cutoff)
    seconds = time.perf_counter() - started
    stop.set()
    await writer
    ms = [p * 1000 for p in puts]
    return {
        "notifications": pruned.notifications,
        "records": pruned.records,
        "seconds": round(seconds, 1),
        "records_per_second": round(pruned.records / seconds),
        "writer_puts": len(ms),
        "writer_put_p50_ms": round(statistics.median(ms), 2),
        "writer_put_max_ms": round(max(ms), 2),
    }


async def tuned(url: str) -> None:
    """The streams' database with the planner settings docs/operations.md recommends (`ALTER DATABASE`: every new
    connection to it takes them)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
        name = (await (await db.execute("SELECT current_database()")).fetchone())[0]  # type: ignore[index]
        for setting, value in POSTGRES_SETTINGS.items():
            await db.execute(
                sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                    sql.Identifier(name), sql.Identifier(setting), sql.Literal(value)
                )
            )


async def server_cpu(url: str) -> dict[int, float]:
    """The CPU seconds used so far by each server process serving the database, by process id, where the server runs
    on this machine and /proc says (otherwise none)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
        cursor = await db.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        pids = [row[0] for row in await cursor.fetchall()]
    used = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime and stime
    return used


async def vacuumed(url: str) -> float:
    """VACUUM ANALYZE the streams after the fill, as an operator does after a bulk load (autovacuum does it in time,
    where it is on): the seconds it took."""
    started = time.perf_counter()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
        await db.execute("VACUUM (ANALYZE) notify_records, notify_record_tags")
    return time.perf_counter() - started


async def bench(count: int, postgres: str | None, folder: Path) -> dict[str, object]:
    records = await sample(folder / "sample")
    url = f"sqlite:///{folder / 'streams.db'}" if postgres is None else await fresh_database(postgres)
    vacuum = 0.0
    try:
        if postgres is not None:
            await tuned(url)
        async with open_store(url) as store:
            copier = Copier(records, await store.identity())
            cpu, before = time.process_time(), await server_cpu(url) if postgres else {}
            seconds = await fill(store, copier, count)
            cpu = time.process_time() - cpu
            after = await server_cpu(url) if postgres else {}
            server = sum(used - before.get(pid, 0.0) for pid, used in after.items())
            if postgres is not None:
                vacuum = await vacuumed(url)
            client = NotificationClient(store, None, Settings(_env_file=None))  # type: ignore[arg-type]

            async def status(n: int) -> None:
                assert (await client.status(f"{copier.identity}-{n}"))["status"] == "sent"

            async def email_audit(n: int) -> None:
                assert await client.audit_email(f"bench-{n // 10}@example.com")

            async def slack_audit(n: int) -> None:
                assert await client.audit_slack(f"{SAMPLE_SLACK.workspace}/{slack_channel(n)}")

            async def events(n: int) -> None:
                assert len(await client.events(f"{copier.identity}-{n}")) == len(records)

            lookups = {"status": await timed(status, count), "email audit": await timed(email_audit, count)}
            lookups["slack audit"] = await timed(slack_audit, count)
            lookups["events"] = await timed(events, count)
            stored, size = await stream_size(url)
            prune = await pruned_while_writing(store, copier, count)
    finally:
        if postgres is not None:
            await drop_database(postgres, url)
    return {
        "backend": "postgresql" if postgres else "sqlite",
        "notifications": count,
        "records_per_notification": len(records),
        "append_records_per_second": round(count * len(records) / seconds),
        "append_client_cpu_us_per_record": round(cpu / (count * len(records)) * 1e6, 1),
        "append_server_cpu_us_per_record": round(server / (count * len(records)) * 1e6, 1),
        "vacuum_analyze_seconds": round(vacuum, 1),
        "settings": POSTGRES_SETTINGS if postgres else {},
        "append_notifications_per_second": round(count / seconds),
        "bytes_per_notification": round(size / count),
        "records": stored,
        "lookups": lookups,
        "prune": prune,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notifications", type=int, default=100_000)
    parser.add_argument("--postgres", metavar="URL", help="a PostgreSQL server to make the streams' database on")
    parser.add_argument("--json", type=Path, help="where to write the figures (default: only printed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="notify-store-bench-") as folder:
        figures = asyncio.run(bench(args.notifications, args.postgres, Path(folder)))
    lookups: dict[str, dict[str, float]] = figures["lookups"]  # type: ignore[assignment]
    print(
        f"{figures['backend']}: {figures['notifications']:,} notifications, {figures['records_per_notification']} "
        f"records each; appended {figures['append_records_per_second']:,} records/s "
        f"({figures['append_notifications_per_second']:,} notifications/s, "
        f"{figures['append_client_cpu_us_per_record']} us of the bench's CPU"
        + (f" and {figures['append_server_cpu_us_per_record']} us of the server's" if figures["settings"] else "")
        + " a record); "
        f"{figures['bytes_per_notification']:,} bytes per notification"
    )
    if figures["settings"]:
        print(
            f"VACUUM ANALYZE took {figures['vacuum_analyze_seconds']} s; the database's settings: {figures['settings']}"
        )
    for name, times in lookups.items():
        print(f"  {name:<13} p50 {times['p50_ms']:>7.2f} ms   p99 {times['p99_ms']:>7.2f} ms")
    prune: dict[str, float] = figures["prune"]  # type: ignore[assignment]
    print(
        f"pruned {prune['notifications']:,} notifications ({prune['records']:,} records) in {prune['seconds']} s,"
        f" {prune['records_per_second']:,} records/s; meanwhile {prune['writer_puts']} puts waited"
        f" p50 {prune['writer_put_p50_ms']} ms, at most {prune['writer_put_max_ms']} ms"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
