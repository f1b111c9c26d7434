"""The service's processes as the tests and the benchmarks run them: a `worker.py` whose output is read as it comes,
and a Temporal dev server that can be stopped and restarted on its database."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

from sinks.mail import free_port
from worker import DEV_SERVER_TUNING, UI_PORT_OFFSET, temporal_binary
from workflows import search

ROOT = Path(__file__).resolve().parent.parent


def unconfigured_environment() -> dict[str, str]:
    """This process's environment without any `NOTIFY_` setting: what a child process is then given is all it has."""
    return {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}


def dev_address() -> str:
    """A Temporal address for `worker.py --dev` on this machine: a free port whose Web UI's port is free too (a port
    that is free alone may have its UI's taken, which the worker refuses)."""
    while True:
        port = free_port()
        if port + UI_PORT_OFFSET <= 65535 and _bindable(port + UI_PORT_OFFSET):
            return f"127.0.0.1:{port}"


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def launched(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """A process started from `cwd`, its standard output and error together, to read as text."""
    return subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def launch_worker(env: dict[str, str], cwd: Path, *args: str) -> WorkerProcess:
    """A `worker.py` process (with `args`), as soon as it is started."""
    return WorkerProcess(launched([sys.executable, str(ROOT / "worker.py"), *args], env, cwd))


def temporal_server(port: int, database: Path) -> subprocess.Popen[bytes]:
    """A Temporal dev server on `port`, keeping its workflows in `database` (so that it can be restarted on them)."""
    return subprocess.Popen(
        [str(temporal_binary("temporal")), "server", "start-dev", "--headless", "--ip", "127.0.0.1"]
        + ["--port", str(port), "--db-filename", str(database), "--log-level", "error", *DEV_SERVER_TUNING]
        + list(search.DEV_SERVER_ARGS),
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
            raise AssertionError(f"worker.py did not poll (exit code {self.process.poll()}): {self.output}")
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
            raise AssertionError(f"worker.py did not say {start!r} (exit code {self.process.poll()}): {self.output}")
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
