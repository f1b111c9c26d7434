"""The README's "Use it", run as a new user would: its worker command, then each of its commands in order, as written,
in a fresh folder holding the repository's `entities.json`, on the embedded default (the dev server, SQLite streams,
the local sinks)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from harness.processes import ROOT, WorkerProcess, unconfigured_environment
from sinks.mail import free_port


def use_it() -> tuple[str, list[str]]:
    """The worker command and the commands after it, from the README's "Use it" section."""
    section = (ROOT / "README.md").read_text().split("\n## Use it\n", 1)[1].split("\n## ", 1)[0]
    worker, commands = re.findall(r"```sh\n(.*?)```", section, re.S)[:2]
    return worker.strip(), [line for line in commands.splitlines() if line.strip()]


def argv(line: str) -> list[str]:
    python, script, *args = shlex.split(line, comments=True)
    assert python == ".venv/bin/python", line
    return [sys.executable, str(ROOT / script), *args]


def test_use_it_works_as_written(tmp_path: Path) -> None:
    shutil.copy(ROOT / "entities.json", tmp_path)
    shutil.copytree(ROOT / "message_templates", tmp_path / "message_templates")
    env = {
        **unconfigured_environment(),
        "NOTIFY_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        "NOTIFY_SMTP_PORT": str(free_port()),
    }
    worker_line, commands = use_it()
    assert worker_line == ".venv/bin/python worker.py --dev --sinks"
    worker = WorkerProcess(
        subprocess.Popen(
            argv(worker_line), env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    ).until_polling()
    try:
        ran = {}
        for command in commands:
            result = subprocess.run(argv(command), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
            ran[command.split("#")[0].split("starter.py ", 1)[1].strip()] = result.stdout
    finally:
        log = worker.stop()
    assert worker.returncode == 0, log

    assert ran["directory import entities.json"] == "recorded 3 entities, 0 unchanged\n"
    status = json.loads(ran["status 1 --json"])
    assert status["status"] == "sent", (status["outcome"], status["channels"], log[-3000:])
    assert {c: (v["address"], v["outcome"]) for c, v in status["channels"].items()} == {
        "email": ("test@example.com", "succeeded"),
        "slack": ("acme/C0123", "succeeded"),
    }
    assert re.match(r"notification [0-9a-f]{8}-2: cancelled\n", ran["cancel 2"]), ran["cancel 2"]
    assert "Deploy finished" in ran["audit --email test@example.com"]
    assert "Deploy finished" in ran["audit --slack-channel acme/C0123"]
    assert "Maintenance" in ran["audit --entity user-1"]
    mails = sorted((tmp_path / ".notify" / "mail").glob("*.eml"))
    assert [m.read_text().count("Subject: Deploy finished") for m in mails] == [1, 0]
    assert "Subject: Welcome to Billing 2.0, Ada" in mails[1].read_text()
    posted = (tmp_path / ".notify" / "slack" / "messages.jsonl").read_text().splitlines()
    assert [json.loads(p)["channel"] for p in posted] == ["C0123", "C0123"]
    assert "*Billing* 2.0 is deployed" in json.loads(posted[1])["text"]
    assert re.fullmatch(
        r"nk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}\n", ran["apikey create ci-pipeline --scope send --scope read"]
    )
    assert "Traceback" not in log
