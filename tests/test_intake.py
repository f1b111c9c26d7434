"""Requests through the client-operation stream alone: a request made while the Temporal server is stopped is
accepted, says so, and is delivered once, by the handler of the worker that starts with the server."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from harness.processes import ROOT, dev_address, start_worker, unconfigured_environment
from sinks.mail import free_port
from streams import StreamName, open_store


async def test_a_request_made_while_temporal_is_stopped_is_delivered_once_it_starts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {
        **unconfigured_environment(),
        "NOTIFY_TEMPORAL_ADDRESS": dev_address(),
        "NOTIFY_DATA_DIR": str(data),
        "NOTIFY_SMTP_PORT": str(free_port()),
    }

    def starter(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(ROOT / "starter.py"), *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    async with open_store(f"sqlite:///{data / 'streams.db'}"):
        pass  # the store, as a worker that ran before made it
    assert starter("directory", "import", str(ROOT / "entities.json")).returncode == 0
    sent = starter("send", "--entity", "user-1", "--subject", "Sent while stopped", "--body", "B")
    assert sent.returncode == 0, sent.stderr
    nid = sent.stdout.strip()
    assert sent.stderr.startswith(f"notification {nid} is accepted; its saga starts when Temporal is back (cannot ")
    assert len(sent.stderr.splitlines()) == 1
    pending = starter("status", nid, "--json")
    assert pending.returncode == 0, pending.stderr
    view = json.loads(pending.stdout)
    assert (view["status"], view["waiting"], view["outcome"]["failures"]) == (
        "pending",
        "its saga starts when Temporal can be reached again",
        [],
    )

    worker = start_worker(env, tmp_path, "--dev", "--sinks")
    up = datetime.now(UTC)
    try:
        done = starter("status", nid, "--wait", "--json")
    finally:
        said = worker.stop()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "sent"
    assert f"took up notification {nid}: its saga runs" in said
    assert len(list((data / "mail").glob("*.eml"))) == 1
    assert len((data / "slack" / "messages.jsonl").read_text().splitlines()) == 1

    async with open_store(f"sqlite:///{data / 'streams.db'}") as store:
        request = await store.reader(StreamName.CLIENT_OPERATION).latest(nid)
        assert request is not None
        history = await store.handling(StreamName.CLIENT_OPERATION).history(request.internal_id)
    assert [(e.status, e.details) for e in history] == [
        ("Running", "its saga is started by the client-operation handler"),
        ("Completed", "sent"),
    ]
    # started at once: within 5 s of the worker (and its Temporal) being up
    assert (history[0].timestamp_utc - up).total_seconds() < 5
