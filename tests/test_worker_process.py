"""The worker as a process, against what can go wrong around it: its dev server's life tied to its own, the address
already taken, and its SQLite store file deleted, replaced or made read-only while it runs."""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from harness.processes import ROOT, launch_worker, launched, start_worker, unconfigured_environment
from sinks.mail import free_port
from streams import open_store
from worker import temporal_binary
from workflows import search


def environment(**settings: str) -> dict[str, str]:
    return {
        **unconfigured_environment(),
        **{f"NOTIFY_{name.upper()}": value for name, value in settings.items()},
    }


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def exits_within(pidfd: int, seconds: float) -> bool:
    """Whether the process exits within `seconds`, told by Linux through its pidfd (no polling)."""
    try:
        return bool(select.select([pidfd], [], [], seconds)[0])
    finally:
        os.close(pidfd)


def test_a_killed_dev_worker_takes_its_dev_server_with_it(tmp_path: Path) -> None:
    env = environment(temporal_address=f"127.0.0.1:{free_port()}", data_dir=str(tmp_path / "data"))
    first = start_worker(env, tmp_path, "--dev")
    [server] = children(first.process.pid)
    assert os.getpgid(server) != os.getpgid(first.process.pid)  # a Ctrl-C at the terminal reaches the worker alone
    pidfd = os.pidfd_open(server)
    first.process.kill()
    first.ended()
    assert exits_within(pidfd, 30), "the dev server outlived its worker"
    second = start_worker(env, tmp_path, "--dev")  # the address is free again, and the workflows are kept
    said = second.stop()
    assert second.returncode == 0, said
    assert any(line.startswith("Temporal dev server on") for line in second.lines)


def taken_port(offset: int) -> socket.socket:
    """A listening socket on a port whose `offset` below is free."""
    while True:
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        if offset:
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port - offset))
                except OSError:
                    taken.close()
                    continue
        taken.listen()
        return taken


@pytest.mark.parametrize("offset", [0, 1000], ids=["its own port", "its Web UI's port"])
def test_a_dev_worker_on_a_taken_address_says_so(tmp_path: Path, offset: int) -> None:
    with taken_port(offset) as taken:
        port = taken.getsockname()[1]
        address = f"127.0.0.1:{port - offset}"
        result = subprocess.run(
            [sys.executable, str(ROOT / "worker.py"), "--dev"],
            env=environment(temporal_address=address, data_dir=str(tmp_path / "data")),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(f"error: something already listens on 127.0.0.1:{port}")


@pytest.fixture
def immutable() -> Iterator[Callable[[Path], None]]:
    """`chattr +i`: a file even root cannot open for writing (as on a read-only mount); undone afterwards."""
    made: list[Path] = []

    def make(path: Path) -> None:
        subprocess.run(["chattr", "+i", str(path)], check=True)
        made.append(path)

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize("change", ["deleted", "replaced", "read-only"])
def test_the_worker_stops_in_one_line_when_its_store_file_changes_under_it(
    dev_env: WorkflowEnvironment, tmp_path: Path, change: str, immutable: Callable[[Path], None]
) -> None:
    store = tmp_path / "data" / "streams.db"
    env = environment(
        temporal_address=dev_env.client.service_client.config.target_host,
        data_dir=str(tmp_path / "data"),
        task_queue=f"store-{change}",
    )
    worker = start_worker(env, tmp_path)
    if change == "deleted":
        store.unlink()
    elif change == "replaced":
        sqlite3.connect(tmp_path / "other.db").close()
        shutil.move(tmp_path / "other.db", store)
    else:
        immutable(store)
    output = worker.ended()
    assert worker.returncode == 1, output
    said = {
        "deleted": (
            f"error: the streams store {store} was deleted while in use: restore it (or start afresh) and restart"
        ),
        "replaced": f"error: the streams store {store} was replaced while in use: restart to use the new one",
        "read-only": f"error: the streams store {store} is read-only: make it writable and restart",
    }[change]
    assert output.splitlines()[-1] == said
    assert "Traceback" not in output
    if change == "read-only":  # and a worker started on it says so at once
        result = subprocess.run(
            [sys.executable, str(ROOT / "worker.py")], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert (result.returncode, result.stderr.splitlines()[-1]) == (1, said)


async def test_a_worker_started_before_temporal_waits_for_it(tmp_path: Path) -> None:
    port = free_port()
    env = environment(temporal_address=f"127.0.0.1:{port}", data_dir=str(tmp_path / "data"))
    worker = launch_worker(env, tmp_path)
    try:
        waiting = worker.until_said("waiting for Temporal: ")
        assert waiting.startswith(f"waiting for Temporal: cannot reach Temporal at 127.0.0.1:{port} (")
        temporal = await WorkflowEnvironment.start_local(
            port=port,
            dev_server_existing_path=str(temporal_binary("temporal")),
            dev_server_startup_timeout=timedelta(seconds=60),
            search_attributes=search.KEYS,
        )
        try:
            await asyncio.to_thread(worker.until_polling)
        finally:
            said = worker.stop()
            await temporal.shutdown()
    finally:
        if worker.process.poll() is None:
            worker.process.kill()
    assert worker.returncode == 0, said
    assert said.count("waiting for Temporal: ") == 1 and "Temporal can be used: going on" in said
    assert "Traceback" not in said


def test_a_worker_started_before_its_database_waits_for_it(tmp_path: Path) -> None:
    env = environment(streams_url=f"postgresql://notify@127.0.0.1:{free_port()}/notify")
    worker = launch_worker(env, tmp_path)
    said = worker.until_said("waiting for the streams: ")
    assert "connection refused" in said.lower() or "connect" in said.lower(), said
    output = worker.stop()
    assert worker.returncode == 0, output
    assert output.count("waiting for the streams: ") == 1 and "Traceback" not in output


async def test_serve_stops_in_one_line_when_its_store_file_is_replaced(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """As the worker does: a server answering 503 for ever, with nothing in its log, would help nobody."""
    store = tmp_path / "data" / "streams.db"
    async with open_store(f"sqlite:///{store}"):
        pass  # the store, as a worker made it
    env = environment(
        temporal_address=dev_env.client.service_client.config.target_host,
        data_dir=str(tmp_path / "data"),
        api_port=str(free_port()),
    )
    serve = launched([sys.executable, str(ROOT / "starter.py"), "serve"], env, tmp_path)
    try:
        assert serve.stdout is not None
        assert "API at http://" in serve.stdout.readline()
        sqlite3.connect(tmp_path / "other.db").close()
        shutil.move(tmp_path / "other.db", store)
        assert serve.wait(30) == 1
    finally:
        serve.kill()
    output = serve.stdout.read()
    assert output.splitlines() == [
        f"error: the streams store {store} was replaced while in use: restart to use the new one"
    ], output


def test_a_demo_where_a_worker_holds_a_port_says_so_at_once(tmp_path: Path) -> None:
    with taken_port(0) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, str(ROOT / "starter.py"), "demo", "--no-serve"],
            env=environment(temporal_address=f"127.0.0.1:{free_port()}", smtp_host="127.0.0.1", smtp_port=str(port)),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert (result.returncode, result.stdout, result.stderr) == (
        1,
        "",
        f"error: something already listens on 127.0.0.1:{port}, where the local mail sink would listen (a worker "
        "started with --dev or --sinks, or a demo, still running?): stop it, or set NOTIFY_SMTP_PORT to a free port\n",
    )
    assert not (tmp_path / ".notify").exists()
