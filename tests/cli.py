"""The command line as its tests run it: `starter.py` in a process of its own, against the worker a module's
`cli` fixture starts (tests/conftest.py), with the sample directory."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.processes import ROOT

TOKEN = "xoxb-acme-cli-token"
DIRECTORY = [
    {
        "id": "user-1",
        "name": "Ada",
        "email": "test@example.com",
        "slack": {"workspace": "acme", "channel": "C0123"},
        "channels": {"email": "send", "slack": "send"},
    },
    {"id": "user-2", "name": "Bob", "email": "bob@example.com", "channels": {"email": "send"}},
    {"id": "user-3", "name": "Cy", "slack": {"workspace": "acme", "channel": "C0456"}, "channels": {"slack": "send"}},
]
TEAM = "oncall@ops.test"


@dataclass
class Cli:
    env: dict[str, str]
    data_dir: Path

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(ROOT / "starter.py"), *args],
            env=self.env,
            cwd=self.data_dir.parent,
            capture_output=True,
            text=True,
            input=input,
            timeout=120,
        )

    def json(self, *args: str) -> Any:
        result = self.run(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def record_count(self) -> int:
        path = Path(self.env["NOTIFY_STREAMS_URL"].removeprefix("sqlite:///"))
        if not path.exists():
            return 0
        with sqlite3.connect(path) as db:
            return int(db.execute("SELECT count(*) FROM records").fetchone()[0])
