"""The benchmark and the soak, run small so that they cannot rot: nothing here times anything."""

from __future__ import annotations

import hashlib
import json
import smtplib
import subprocess
import sys
import zlib
from pathlib import Path

from bench.broadcast import PARTS
from harness.processes import ROOT, unconfigured_environment
from sinks.mail import MailSink
from streams.packing import DICTIONARIES
from tests.databases import Databases, admin_url


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=unconfigured_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_throughput_bench_measures_bare_and_saga_at_each_number_in_flight(
    postgres: Databases, tmp_path: Path
) -> None:
    """The saga with a file (a small one here, a distinct one each) beside the plain saga, on each backend: the same
    columns, its cost against the plain saga's, and the contents its streams keep."""
    figures = tmp_path / "figures.json"
    run = bench(
        "bench.throughput", "--notifications", "3", "--in-flight", "2", "--workers", "1", "--json", str(figures),
        "--postgres", admin_url(), "--attachment-mib", "0.05",
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(figures.read_text())
    runs = report["runs"]
    sagas = ["saga", "saga + 0.05 MiB file"]
    workloads = [*sagas, *(name.replace("saga", "saga postgres") for name in sagas)]
    assert [(r["workload"], r["in_flight"]) for r in runs] == [("bare", 2), *((w, 2) for w in workloads)]
    assert all(r["workers"] == 1 for r in runs)
    assert all(r["completed_per_second"] > 0 and r["p50_ms"] > 0 and r["worker_cpu_ms"] > 0 for r in runs)
    assert all(r["total_cpu_ms"] > r["worker_cpu_ms"] + r["server_cpu_ms"] for r in runs)
    assert all(len(r["worker_rss_mib"]) == 3 and all(20 < m <= 2000 for m in r["worker_rss_mib"]) for r in runs)
    stored = report["stored"]
    assert list(stored) == workloads
    assert all(s["records_per_notification"] > 10 and s["bytes_per_notification"] > 1000 for s in stored.values())
    file_bytes = round(0.05 * 1024 * 1024)
    for plain, with_file in (workloads[:2], workloads[2:]):
        assert stored[plain]["content_bytes_per_notification"] == 0
        assert stored[with_file]["content_bytes_per_notification"] == file_bytes  # a distinct file each, kept
        # the file's bytes, kept once each, and most of them on top of the plain saga's: sizes grow a page (8 KB) at a
        # time over some twenty tables and indexes, which three notifications do not average out (PostgreSQL)
        added = stored[with_file]["bytes_per_notification"] - stored[plain]["bytes_per_notification"]
        assert added > file_bytes * 3 // 4, (plain, stored)
    bare, *saga_runs = runs
    assert all(r["histories"] == 3 and r["workflow_tasks"] >= 1 for r in runs)
    assert all(r["history_events"] > 3 * r["workflow_tasks"] + 2 * r["activity_tasks"] for r in runs)
    assert bare["activity_tasks"] == 2 and all(s["history_events"] > bare["history_events"] for s in saga_runs)
    lines = run.stdout.splitlines()
    header, *rows = lines[:6]
    assert "x bare done/s" in header and "stored KB/n" in header
    assert [row.strip().split("  ")[0] for row in rows] == ["bare", *workloads]
    assert all(c in header for c in ("events/n", "wf tasks/n", "activities/n", "x bare events", "x bare total CPU"))
    assert "over 3 of each row's 3 workflows' histories" in run.stdout
    assert f"saga + 0.05 MiB file: {stored['saga + 0.05 MiB file']['bytes_per_notification']:,} bytes" in run.stdout
    added = lines.index("what the file adds: against the plain saga on the same backend, at the same number in flight")
    cost_header, *costs = lines[added + 1 : added + 4]
    assert "x saga done/s" in cost_header and "+ worker CPU ms/n" in cost_header and "+ stored KB/n" in cost_header
    assert [row.strip().split("  ")[0] for row in costs] == [w for w in workloads if " + " in w]


def test_the_broadcast_bench_measures_a_broadcast_beside_as_many_single_requests(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    run = bench("bench.broadcast", "--recipients", "25", "--pace", "100", "--json", str(figures))
    assert run.returncode == 0, run.stdout + run.stderr
    [sqlite] = json.loads(figures.read_text())
    assert (sqlite["backend"], sqlite["recipients"], sqlite["pace"], sqlite["runs"]) == ("SQLite", 25, 100, 1)
    assert 0 < sqlite["accepted_ms"] and 0 < sqlite["requested_s"] < sqlite["ended_s"]
    assert sqlite["x_singles"] == sqlite["ended_s"] / sqlite["singles_s"]
    assert sqlite["single_idle_ms"] > 0 and sqlite["single_during_ms"] >= 0
    assert sqlite["broadcast_cpu_ms"] > 0 and sqlite["singles_cpu_ms"] > 0
    assert all(20 < m <= 2000 for m in sqlite["worker_rss_mib"])
    assert 10 < sqlite["largest_run_events"] and 1000 < sqlite["largest_run_bytes"]
    assert "x singles" in run.stdout.splitlines()[0] and run.stdout.splitlines()[1].split()[0] == "SQLite"
    for parts in (sqlite["single_idle_parts"], sqlite["single_during_parts"]):  # where a single's time went
        assert list(parts) == list(PARTS) and parts["workflow tasks ran"] > 0 and parts["activities ran"] > 0
    assert "SQLite: a single's ms" in run.stdout and "outside the saga" in run.stdout


def test_the_throughput_bench_refuses_a_file_over_the_limit_before_it_starts_anything() -> None:
    run = bench("bench.throughput", "--attachment-mib", "11")
    assert run.returncode == 2
    assert "--attachment-mib: 0 (no file), or from 17 bytes to 10 (a file's limit)" in run.stderr.splitlines()[-1]


def test_the_soak_counts_what_it_requested_and_keeps_the_guarantee(tmp_path: Path) -> None:
    """Seed 309 draws a worker kill at 12 s and an outage from 5 s: both within the 13 s, and the outage early and
    short, and a killed worker's work taken up after 2 s, so that the soak does not run on long after its requests."""
    run = bench(
        "bench.soak",
        "--minutes",
        "0.22",
        "--seed",
        "309",
        "--recovery-seconds",
        "2",
        "--outage-seconds",
        "2",
        "4",
        "--folder",
        str(tmp_path / "soak"),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    figures = json.loads((tmp_path / "soak" / "soak.json").read_text())
    assert figures["requested"] == figures["accepted"] == figures["terminal"] > 50
    assert figures["kills"] == 1 and sum(figures["outages"].values()) == 1
    assert figures["lost"] == [] and figures["duplicate_slack_posts"] == 0 and figures["kept"] is True
    assert "guarantee kept" in run.stdout


def test_the_soak_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "streams.db").write_text("")
    run = bench("bench.soak", "--minutes", "0.1", "--folder", str(tmp_path))
    assert run.returncode == 2
    assert f"{tmp_path} is not empty" in run.stderr.splitlines()[-1]


def test_the_store_bench_fills_copies_of_a_real_notification_and_times_each_lookup(tmp_path: Path) -> None:
    figures = tmp_path / "store.json"
    run = bench("bench.store", "--notifications", "30", "--json", str(figures))
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(figures.read_text())
    assert report["notifications"] == 30 and report["records"] == 30 * report["records_per_notification"]
    assert report["records_per_notification"] > 10 and report["append_records_per_second"] > 0
    assert set(report["lookups"]) == {"status", "email audit", "slack audit", "events"}
    assert all(0 < t["p50_ms"] <= t["p99_ms"] for t in report["lookups"].values())
    assert "email audit   p50" in run.stdout and "slack audit   p50" in run.stdout
    pruned = report["prune"]
    assert (pruned["notifications"], pruned["records"]) == (30, report["records"])
    assert pruned["writer_puts"] > 0 and 0 < pruned["writer_put_p50_ms"] <= pruned["writer_put_max_ms"]


def test_the_mail_sink_tells_a_message_whose_client_read_the_answer_from_one_whose_client_went_away() -> None:
    """The soak counts an email as in the window when its client never said QUIT after it."""
    with MailSink() as sink:
        for n, quits in enumerate((True, False)):
            client = smtplib.SMTP(sink.host, sink.port)
            client.sendmail("a@notify.test", [f"b{n}@example.com"], f"Subject: {n}\n\nbody\n")
            client.quit() if quits else client.close()
        assert len(sink.messages) == 2 and sink.acknowledged == {0}


def test_the_dictionary_is_made_from_a_real_notification_and_packs_one(tmp_path: Path) -> None:
    """`bench.dictionary` makes a dictionary of a real saga's payloads, none of a bench's values, that packs another
    notification's payloads to a fraction; it never overwrites one."""
    target = tmp_path / "payloads-9.zdict"
    run = bench("bench.dictionary", str(target))
    assert run.returncode == 0, run.stdout + run.stderr
    made = target.read_bytes()
    assert 2_000 < len(made) <= 16_384 and b'"channel_outcomes"' in made and b"bench-" not in made
    payload = json.dumps({"notification_id": "x-1", "attempt": {"channel_outcomes": [{"channel": "email"}] * 3}})
    packer = zlib.compressobj(zdict=made)
    assert len(packer.compress(payload.encode()) + packer.flush()) < len(payload) / 3
    again = bench("bench.dictionary", str(target))
    assert again.returncode == 2 and "exists" in again.stderr and target.read_bytes() == made


def test_a_released_dictionary_never_changes() -> None:
    """Every payload packed with dictionary 1 names it: were its bytes to change, those payloads would unpack wrong
    (a new dictionary takes a new number; `bench.dictionary`)."""
    assert hashlib.sha256(DICTIONARIES[1]).hexdigest() == (
        "75d98f723a4735e5a0519cb92e700c693693c4332af8f38408d2d1804f3f3561"
    )
