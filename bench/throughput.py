"""Throughput and latency of the whole saga on the embedded default.

Starts the Temporal dev server, the mail and Slack sinks and one worker in this process, requests N notifications to
an entity on both channels (C requests at a time), waits for every outcome, and prints: request rate, completed
notifications per second, latency percentiles (requested to completed, from the views), peak memory of this process
(worker, client and sinks), and the CPU this process and the dev server used over the whole run.

    .venv/bin/python -m bench.throughput --notifications 500 --concurrency 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sqlite3
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import psycopg
from pydantic import SecretStr
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from client import NotificationClient
from domain import DirectoryEntry, NotificationStatus, SendNotificationToEntityOp
from settings import Settings
from sinks.mail import MailSink
from sinks.slack import SlackSink
from streams.directory import import_entries
from worker import running_workers, temporal_binary

ENTITY = DirectoryEntry.model_validate(
    {
        "id": "bench",
        "name": "Bench",
        "email": "bench@example.com",
        "slack": {"workspace": "acme", "channel": "C0123"},
        "channels": {"email": "send", "slack": "send"},
    }
)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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


async def bench(
    count: int, concurrency: int, folder: Path, server_db: bool, streams_url: str | None
) -> dict[str, float]:
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(temporal_binary("temporal")),
        dev_server_database_filename=str(folder / "temporal.db") if server_db else None,
        dev_server_startup_timeout=timedelta(seconds=60),
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
                slack_messages_per_second=None,  # one sink channel: Slack's pace would be the whole measurement
                streams_url=streams_url,
            )
            async with settings.open_streams() as store, running_workers(env.client, store, settings):
                await import_entries(store, [ENTITY])
                client = NotificationClient(store, env.client, settings)
                op = SendNotificationToEntityOp(entity_id="bench", subject="Bench", body="A benchmark notification.")
                gate = asyncio.Semaphore(concurrency)

                async def request() -> str:
                    async with gate:
                        return await client.request(op)

                started = time.perf_counter()
                ids = await asyncio.gather(*(request() for _ in range(count)))
                requested = time.perf_counter()
                views = await asyncio.gather(*(client.result(i) for i in ids))
                finished = time.perf_counter()
            assert all(v.status == NotificationStatus.SENT for v in views), "not every notification was sent"
            assert len(mail.messages) == count and len(slack.messages) == count
            records, size = await stream_size(settings.streams_location)
    finally:
        await env.shutdown()
    latencies = [(v.completed_at - v.requested_at).total_seconds() * 1000 for v in views if v.completed_at]
    return {
        "notifications": count,
        "concurrency": concurrency,
        "requests_per_second": round(count / (requested - started), 1),
        "completed_per_second": round(count / (finished - started), 1),
        "latency_ms_p50": round(statistics.median(latencies), 1),
        "latency_ms_p95": round(percentile(latencies, 95), 1),
        "latency_ms_p99": round(percentile(latencies, 99), 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "this_process_cpu_seconds": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 1),
        "stream_records_per_notification": round(records / count, 1),
        "stream_bytes_per_notification": round(size / count),
        "dev_server_cpu_seconds": round(children_cpu_seconds(), 1),  # counted once it has exited
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notifications", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--server-db", action="store_true", help="keep the dev server's state in a SQLite file")
    parser.add_argument("--streams-url", help="a migrated PostgreSQL database to record in (default: SQLite)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        figures = asyncio.run(
            bench(args.notifications, args.concurrency, Path(folder), args.server_db, args.streams_url)
        )
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
