"""The README's "Use it", run as a new user would: its worker command, then each of its commands in order, as written,
in a fresh folder holding the repository's `entities.json`, on the embedded default (the dev server, SQLite streams,
the local sinks). And the README stays a front page: short, its links whole, its first session the docs' own."""

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

README_MOST_BYTES = 12 * 1024
"""The README is the front page: what it is, how to run and use it, and links into `docs/` for everything else."""


def first_two_sh_blocks(section: str) -> tuple[str, str]:
    worker, commands = re.findall(r"```sh\n(.*?)```", section, re.S)[:2]
    return worker, commands


def use_it() -> tuple[str, list[str]]:
    """The worker command and the commands after it, from the README's "Use it" section."""
    section = (ROOT / "README.md").read_text().split("\n## Use it\n", 1)[1].split("\n## ", 1)[0]
    worker, commands = first_two_sh_blocks(section)
    return worker.strip(), [line for line in commands.splitlines() if line.strip()]


def test_the_readme_is_short() -> None:
    assert len((ROOT / "README.md").read_bytes()) <= README_MOST_BYTES


def test_every_relative_link_in_the_readme_points_at_a_file() -> None:
    targets = re.findall(r"\]\(([^)\s]+)\)", (ROOT / "README.md").read_text())
    relative = [t.split("#", 1)[0] for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]
    assert "docs/index.md" in relative and "docs/notification-page.png" in relative
    assert [path for path in relative if not (ROOT / path).is_file()] == []


def test_the_first_session_in_the_docs_is_the_readmes() -> None:
    readme = (ROOT / "README.md").read_text().split("\n## Use it\n", 1)[1]
    docs = (ROOT / "docs" / "cli.md").read_text().split("\n## A first session\n", 1)[1]
    assert first_two_sh_blocks(docs) == first_two_sh_blocks(readme)


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
