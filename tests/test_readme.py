"""The README's "Use it", run as a new user would: its worker command, then each of its commands in order, as written,
in a fresh folder holding the repository's `entities.json`, on the embedded default (the dev server, SQLite streams,
the local sinks). And the README stays a front page: short, its links whole, its first session the docs' own."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from harness.processes import ROOT, WorkerProcess, dev_address, launched, unconfigured_environment
from sinks.mail import free_port
from tests.service import STORE, scraped

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


def use_it_works_as_written(folder: Path, env: dict[str, str]) -> None:
    """Run "Use it" in `folder`, as written: its worker, then each command in order; each must succeed, and do what
    the README says it does."""
    shutil.copy(ROOT / "entities.json", folder)
    shutil.copytree(ROOT / "message_templates", folder / "message_templates", dirs_exist_ok=True)
    worker_line, commands = use_it()
    assert worker_line == ".venv/bin/python worker.py --dev --sinks"
    worker = WorkerProcess(launched(argv(worker_line), env, folder)).until_polling()
    try:
        ran = {}
        for command in commands:
            result = subprocess.run(argv(command), env=env, cwd=folder, capture_output=True, text=True, timeout=120)
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
    mails = sorted((folder / ".notify" / "mail").glob("*.eml"))
    assert [m.read_text().count("Subject: Deploy finished") for m in mails] == [1, 0, 0]
    assert "Subject: Welcome to Billing 2.0, Ada" in mails[1].read_text()
    assert "To: user-9 <nine@example.com>" in mails[2].read_text()  # given inline, recorded in the directory first
    posted = (folder / ".notify" / "slack" / "messages.jsonl").read_text().splitlines()
    assert [json.loads(p)["channel"] for p in posted] == ["C0123", "C0123"]
    assert "*Billing* 2.0 is deployed" in json.loads(posted[1])["text"]
    assert re.fullmatch(
        r"nk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}\n", ran["apikey create ci-pipeline --scope send --scope read"]
    )
    assert "Traceback" not in log


def embedded_default() -> dict[str, str]:
    """The environment of a new user's shell, but for ports of its own (the dev server's, the mail sink's)."""
    return {
        **unconfigured_environment(),
        "NOTIFY_TEMPORAL_ADDRESS": dev_address(),
        "NOTIFY_SMTP_PORT": str(free_port()),
    }


def test_use_it_works_as_written(tmp_path: Path) -> None:
    use_it_works_as_written(tmp_path, embedded_default())


def test_run_it_then_use_it(tmp_path: Path) -> None:
    """As a new user would: the demo (its main job, then the requests it prints with the key it prints, then Ctrl-C),
    a command before any worker ran (it says there is no store, and makes none), then "Use it" as written: the demo
    kept its data apart, so that its ids are not the README's."""
    env = {
        **embedded_default(),
        "NOTIFY_API_PORT": str(free_port()),
        "NOTIFY_TEMPLATES_DIR": str(ROOT / "message_templates"),
        "NOTIFY_METRICS_PORT": str(free_port()),
    }
    run_it = (ROOT / "README.md").read_text().split("\n## Run it\n", 1)[1]
    demo_line = re.findall(r"```sh\n(.*?)```", run_it, re.S)[0].split("&&")[-1].strip()
    assert demo_line == ".venv/bin/python starter.py demo"
    demo = launched(argv(demo_line), env, tmp_path)
    try:
        assert demo.stdout is not None
        lines = []
        for line in demo.stdout:  # it prints how to try the API, then serves until interrupted
            lines.append(line)
            if line.startswith("Ctrl-C stops everything"):
                break
        said = "".join(lines)
        assert re.search(f"^notification {STORE}-1: sent$", said, re.MULTILINE), said
        url = re.search(r"^API at (http://\S+) ", said, re.MULTILINE)
        key = re.search(r"^API key 'demo' \(send, read, admin\): (\S+)$", said, re.MULTILINE)
        assert url and key, said
        curls = [shlex.split(line) for line in said.splitlines() if line.startswith("  curl ")]
        assert len(curls) == 3, said
        with httpx.Client() as http:
            answers = [http.send(curl_request(http, curl)) for curl in curls]
        assert [a.status_code for a in answers] == [202, 200, 200], [a.text for a in answers]
        assert all(a.text.endswith("}\n") or a.text.endswith("]\n") for a in answers)  # a terminal's next line
        nid = answers[0].json()["id"]
        with httpx.Client(base_url=url.group(1), headers={"Authorization": f"Bearer {key.group(1)}"}) as http:
            templated = http.post(
                "/v1/notifications",
                json={"entity": "user-1", "template": "welcome", "data": {"service": "Billing", "version": "2"}},
            )
            assert templated.status_code == 202, templated.text
            for notification_id in (nid, templated.json()["id"]):
                deadline = time.monotonic() + 60
                while (status := http.get(f"/v1/notifications/{notification_id}").json()["status"]) != "sent":
                    assert status in ("pending", "sending") and time.monotonic() < deadline, status
                    time.sleep(0.1)
            audit = http.get("/v1/audit/email", params={"address": "test@example.com"}).json()
            assert {a["notification_id"] for a in audit} == {f"{nid.rpartition('-')[0]}-{i}" for i in (1, 2, 3)}
            assert http.get("/docs").status_code == 200
        metrics = scraped(f"http://127.0.0.1:{env['NOTIFY_METRICS_PORT']}/metrics")
        assert sum(v for (name, labels), v in metrics.items() if name == "notify_notifications_total") >= 1
        page = re.search(r"^Web page at (http://\S+) ", said, re.MULTILINE)
        assert page and page.group(1).startswith(url.group(1)), said
        with httpx.Client(base_url=url.group(1)) as browser:  # signs in with the key, as the page asks
            assert browser.post("/sign-in", data={"key": key.group(1)}).status_code == 303
            shown = browser.get(page.group(1))
            assert shown.status_code == 200 and "Hello from notify" in shown.text, shown.text
        demo.send_signal(signal.SIGINT)
        assert demo.wait(60) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
    kept = tmp_path / ".notify" / "demo"
    subjects = sorted(
        line.partition(": ")[2]
        for m in (kept / "mail").glob("*.eml")
        for line in m.read_text().splitlines()
        if line.startswith("Subject: ")
    )
    assert subjects == ["Hello from notify", "Hello over HTTP", "Welcome to Billing 2, Ada"]
    posted_texts = [json.loads(p)["text"] for p in (kept / "slack" / "messages.jsonl").read_text().splitlines()]
    assert any("*Billing* 2 is deployed" in text for text in posted_texts), posted_texts

    no_store = subprocess.run(
        argv(".venv/bin/python starter.py status 1"), env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert no_store.returncode == 1 and no_store.stdout == "", no_store
    assert no_store.stderr.startswith(
        f"error: no store at {tmp_path / '.notify' / 'streams.db'}: start the worker first"
    )
    assert len(no_store.stderr.splitlines()) == 1 and not (tmp_path / ".notify" / "streams.db").exists()

    use_it_works_as_written(tmp_path, env)


def curl_request(http: httpx.Client, curl: list[str]) -> httpx.Request:
    """The request a `curl -s [-X METHOD] URL [-H HEADER]... [-d DATA]` line makes."""
    assert curl[:2] == ["curl", "-s"], curl
    method, url, headers, data = "GET", "", {}, None
    words = iter(curl[2:])
    for word in words:
        if word == "-X":
            method = next(words)
        elif word == "-H":
            name, _, value = next(words).partition(": ")
            headers[name] = value
        elif word == "-d":
            data = next(words)
            method = "POST" if method == "GET" else method
        else:
            url = word
    return http.build_request(method, url, headers=headers, content=data)
