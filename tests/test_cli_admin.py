"""The command line end to end, continued (tests/test_cli.py): logs, configuration, Temporal's search attributes, API
keys, templates, topics and broadcasts, retention; in a process of its own beside test_cli's, with a worker of its
own."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from harness.processes import ROOT, dev_address, launch_worker, start_worker, unconfigured_environment
from sinks.mail import MailSink, free_port
from sinks.slack import SlackSink
from tests.cli import DIRECTORY, TOKEN, Cli
from worker import temporal_binary


def test_json_logs_are_one_object_per_line_with_the_notification_id_and_no_secret(tmp_path: Path) -> None:
    secret = "xoxb-not-the-right-token"
    with MailSink() as mail, SlackSink(tokens={TOKEN}) as slack:
        env = {
            **unconfigured_environment(),
            "NOTIFY_LOG_FORMAT": "json",
            "NOTIFY_TEMPORAL_ADDRESS": dev_address(),
            "NOTIFY_DATA_DIR": str(tmp_path / "data"),
            "NOTIFY_SMTP_HOST": mail.host,
            "NOTIFY_SMTP_PORT": str(mail.port),
            "NOTIFY_SLACK_API_URL": slack.api_url,
            "NOTIFY_SLACK_TOKENS": json.dumps({"acme": secret}),  # Slack refuses it: the send fails for good
        }
        worker = start_worker(env, tmp_path, "--dev")
        cli = Cli(env, tmp_path / "data")
        (tmp_path / "directory.json").write_text(json.dumps(DIRECTORY[:1]))
        assert cli.run("directory", "import", str(tmp_path / "directory.json")).returncode == 0
        result = cli.run("send", "--entity", "user-1", "--subject", "Logged", "--body", "B", "--wait", "--json")
        said = worker.stop()
    view = json.loads(result.stdout)
    assert view["status"] == "partially_sent", view
    lines = [json.loads(line) for line in said.splitlines()]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    failed = [line for line in lines if line["level"] == "WARNING" and "failed for good" in line["message"]]
    assert failed and all(line.get("notification_id") == view["id"] for line in failed), failed
    assert any(line["message"].startswith("worker polling") for line in lines)
    assert secret not in said


def test_sagas_are_found_by_entity_once_temporal_setup_registered_the_search_attributes(tmp_path: Path) -> None:
    """On a cluster (here a dev server started without them) a worker refuses a namespace that lacks the search
    attributes; `temporal setup` registers them; then `temporal workflow list --query` finds a saga by entity."""
    port = free_port()
    temporal = str(temporal_binary("temporal"))
    server = subprocess.Popen(
        [temporal, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with MailSink() as mail, SlackSink(tokens={TOKEN}) as slack:
            env = {
                **unconfigured_environment(),
                "NOTIFY_TEMPORAL_ADDRESS": f"127.0.0.1:{port}",
                "NOTIFY_DATA_DIR": str(tmp_path / "data"),
                "NOTIFY_SMTP_HOST": mail.host,
                "NOTIFY_SMTP_PORT": str(mail.port),
                "NOTIFY_SLACK_API_URL": slack.api_url,
                "NOTIFY_SLACK_TOKENS": json.dumps({"acme": TOKEN}),
            }
            refused = launch_worker(env, tmp_path).ended(120)
            assert refused.splitlines()[-1] == (
                "error: Temporal's namespace 'default' lacks the search attributes NotifyEntity, NotifyStatus, "
                f"NotifyChannels: run `{shlex.join([sys.executable, str(ROOT / 'starter.py'), 'temporal', 'setup'])}` "
                "once for the namespace"
            ), refused
            cli = Cli(env, tmp_path / "data")
            setup = cli.run("temporal", "setup")
            assert setup.stdout == (
                "registered the search attributes NotifyEntity, NotifyStatus, NotifyChannels in namespace 'default'\n"
            ), setup.stderr
            again = cli.run("temporal", "setup")
            assert again.stdout.endswith("are in namespace 'default' already\n"), again.stderr
            worker = start_worker(env, tmp_path)
            try:
                (tmp_path / "directory.json").write_text(json.dumps(DIRECTORY))
                assert cli.run("directory", "import", str(tmp_path / "directory.json")).returncode == 0
                sent = cli.json("send", "--entity", "user-1", "--subject", "Found", "--body", "B", "--wait")
                cli.json("send", "--entity", "user-2", "--subject", "Not this one", "--body", "B", "--wait")
                query = "NotifyEntity='user-1' AND NotifyStatus='sent' AND NotifyChannels='slack'"
                deadline = time.monotonic() + 30  # Temporal's visibility store catches up with the saga shortly
                while True:
                    found = subprocess.run(
                        [temporal, "workflow", "list", "--address", f"127.0.0.1:{port}", "--output", "json"]
                        + ["--query", query],
                        capture_output=True,
                        text=True,
                        timeout=60,
                    )
                    if found.returncode != 0 or found.stdout.strip() not in ("", "[]") or time.monotonic() > deadline:
                        break
            finally:
                worker.stop()
    finally:
        server.terminate()
        server.wait(30)
    assert found.returncode == 0, found.stderr
    assert [w["execution"]["workflowId"] for w in json.loads(found.stdout)] == [sent["id"]]


@pytest.mark.parametrize(
    ("script", "setting", "value", "message"),
    [
        ("worker.py", "NOTIFY_SMTP_PORT", "smtp", "NOTIFY_SMTP_PORT: Input should be a valid integer"),
        (
            "starter.py",
            "NOTIFY_SMTP_SECURITY",
            "ssl",
            "NOTIFY_SMTP_SECURITY: must be 'none', 'starttls' or 'tls'",
        ),
        ("starter.py", "NOTIFY_SLACK_TOKENS", "{acme", "NOTIFY_SLACK_TOKENS: malformed JSON"),
        (
            "worker.py",
            "NOTIFY_TASK_QUEUE",
            "notify-broadcasts",
            "NOTIFY_TASK_QUEUE: must not end in '-broadcasts': broadcasts' task queue is <queue>-broadcasts",
        ),
        (
            "worker.py",
            "NOTIFY_PAYLOAD_KEYS",
            "k1:c2hvcnQ=",
            "NOTIFY_PAYLOAD_KEYS: key 'k1' is 5 bytes; AES-256 takes 32 (openssl rand -base64 32)",
        ),
    ],
)
def test_bad_configuration_is_one_line_exit_2(
    tmp_path: Path, script: str, setting: str, value: str, message: str
) -> None:
    env = {**unconfigured_environment(), setting: value}
    args = ["status", "1"] if script == "starter.py" else []
    result = subprocess.run(
        [sys.executable, str(ROOT / script), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {message}")
    assert not (tmp_path / ".notify").exists()


def test_api_keys_are_made_listed_and_revoked(cli: Cli) -> None:
    made = cli.json("apikey", "create", "billing", "--scope", "send", "--scope", "read")
    assert made["name"] == "billing" and made["scopes"] == ["read", "send"]
    assert re.fullmatch(r"nk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", made["key"])
    listed = cli.json("apikey", "list")
    assert [(k["name"], k["scopes"]) for k in listed if k["name"] == "billing"] == [("billing", ["read", "send"])]
    assert made["key"] not in cli.run("apikey", "list").stdout
    again = cli.run("apikey", "create", "billing", "--scope", "read")
    assert (again.returncode, again.stderr) == (2, "error: an API key named 'billing' exists: revoke it first\n")
    for args, said in [
        (("apikey", "create", "x"), "error: give at least one --scope (send, read, admin)\n"),
        (
            ("apikey", "create", "x", "--scope", "write"),
            "error: --scope: 'write' is not a valid Scope (send, read or admin)\n",
        ),
        (("apikey", "create", "two words", "--scope", "read"), None),
    ]:
        result = cli.run(*args)
        assert result.returncode == 2 and "\n" not in result.stderr.rstrip("\n"), result.stderr
        assert said is None or result.stderr == said, result.stderr
    assert cli.run("apikey", "revoke", "billing").stdout == "revoked API key 'billing'\n"
    assert "billing" not in [k["name"] for k in cli.json("apikey", "list")]
    gone = cli.run("apikey", "revoke", "billing")
    assert (gone.returncode, gone.stderr) == (1, "error: no API key named 'billing'\n")


def test_a_template_that_cannot_render_is_exit_2_and_writes_nothing(directory: Cli) -> None:
    templated = Cli({**directory.env, "NOTIFY_TEMPLATES_DIR": str(ROOT / "message_templates")}, directory.data_dir)
    before = templated.record_count()
    for args, said in [
        (("--template", "nope"), "error: template 'nope': no such template\n"),
        (
            ("--template", "welcome", "--data", '{"service": "Billing"}'),
            "error: template 'welcome', subject: data.version is undefined",
        ),
        (("--template", "welcome", "--data", "[1]"), "error: --data: must be a JSON object"),
        (("--template", "welcome", "--data", "{oops"), "error: --data: malformed JSON: "),
        (
            ("--template", "welcome", "--subject", "S", "--data", "{}"),
            "error: template 'welcome': subject is rendered by the template",
        ),
        (("--data", "{}", "--subject", "S", "--body", "B"), "error: data is rendered by a template: name one"),
    ]:
        result = templated.run("send", "--entity", "user-1", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith(said) and result.stderr.count("\n") == 1, (args, result.stderr)
    assert templated.record_count() == before


def test_topics_are_made_shown_listed_and_given_by_the_directory_file(directory: Cli, tmp_path: Path) -> None:
    added = directory.run("topic", "add", "ops", "user-2", "user-1", "user-1")
    assert (added.returncode, added.stdout) == (0, "topic 'ops': 2 added, 0 members already\n"), added.stderr
    removed = directory.run("topic", "remove", "ops", "user-2", "user-3")
    assert removed.stdout == "topic 'ops': 1 removed, 1 not members\n"
    assert directory.run("topic", "show", "ops").stdout == "user-1\n"
    file = tmp_path / "entities.json"
    file.write_text(json.dumps([{**DIRECTORY[1], "topics": ["ops", "plan-pro"]}]))
    assert directory.run("directory", "import", str(file)).returncode == 0
    assert directory.json("topic", "show", "ops") == {"topic": "ops", "members": ["user-1", "user-2"]}
    assert directory.json("topic", "list") == [{"topic": "ops", "members": 2}, {"topic": "plan-pro", "members": 1}]
    assert "plan-pro                         1 member\n" in directory.run("topic", "list").stdout
    for args, said in [
        (("topic", "add", "ops", "user-9"), "error: not in the directory: 'user-9'"),
        (("topic", "add", "a/b", "user-1"), "error: topic: must not contain '/'"),
        (("topic", "show", "nope"), "error: no topic 'nope'"),
    ]:
        refused = directory.run(*args)
        assert refused.returncode == (1 if args[1] == "show" else 2), (args, refused.stderr)
        assert refused.stderr.startswith(said) and refused.stderr.count("\n") == 1, (args, refused.stderr)
    assert directory.json("topic", "show", "ops")["members"] == ["user-1", "user-2"]  # nothing half-written


def test_a_broadcast_notifies_each_member_of_a_topic_and_status_counts_them(
    directory: Cli, sinks: tuple[MailSink, SlackSink]
) -> None:
    mail, _ = sinks
    assert directory.run("topic", "add", "team", "user-1", "user-2").returncode == 0
    sent = directory.run("send", "--topic", "team", "--subject", "All hands", "--body", "At 3.", "--wait", "--json")
    assert sent.returncode == 0, sent.stderr
    shown = json.loads(sent.stdout)
    assert (shown["broadcast"], shown["status"], shown["recipients"], shown["left"]) == (True, "completed", 2, 0)
    assert shown["counts"] == {"sent": 2}
    assert directory.json("status", shown["id"]) == shown
    to = sorted(r for m in mail.messages if m.message["Subject"] == "All hands" for r in m.recipients)
    assert to == ["bob@example.com", "test@example.com"]

    named = directory.run(
        "send", "--entity", "user-1", "--entity", "nobody", "--subject", "Two", "--body", "B", "--wait"
    )
    assert named.returncode == 1, named.stderr  # one was refused: the directory has no 'nobody'
    bid, *progress = named.stdout.splitlines()
    assert progress[-1] == f"broadcast {bid}: completed, 2 of 2 ended (refused 1, sent 1)"
    page = directory.run("status", bid, "--notifications", "--limit", "1")
    assert page.stdout.splitlines()[1:] == [
        f"{'ID':<{len(bid) + 2}}  ENTITY  STATUS",
        f"{bid}.1  user-1  sent",
        "more: --after 1",
    ], page.stdout
    rest = directory.json("status", bid, "--notifications", "--after", "1")
    assert rest["notifications"] == [{"id": f"{bid}.2", "entity_id": "nobody", "status": "refused"}]
    assert rest["next_after"] is None
    assert directory.json("status", bid, "--only", "refused")["notifications"] == rest["notifications"]
    for args, said in [
        ((bid, "--only", "snt"), "error: --only: 'snt' is not a status a notification ends with (sent, "),
        ((shown["id"] + ".1", "--notifications"), f"error: {shown['id']}.1 is not a broadcast's id"),
    ]:
        refused = directory.run("status", *args)
        assert refused.returncode == 2 and refused.stderr.startswith(said), (args, refused.stderr)
    for args, said in [
        (("--topic", "team", "--entity", "user-1"), "error: give --entity ID (repeatable), --entity-json ENTRY or"),
        (("--topic", "nope"), "error: no topic 'nope'"),
        (("--topic", "team", "--attach", "x.pdf"), "error: --attach x.pdf: No such file or directory"),
    ]:
        refused = directory.run("send", *args, "--subject", "S", "--body", "B")
        assert refused.returncode == 2 and refused.stderr.startswith(said), (args, refused.stderr)


def test_a_broadcast_sends_its_files_to_each_member_of_a_topic(
    directory: Cli, sinks: tuple[MailSink, SlackSink]
) -> None:
    """user-1 by email and Slack, user-2 by email: the file on each channel, the image by email."""
    mail, slack = sinks
    minutes, logo = b"%PDF-1.7 minutes " + bytes(range(256)), b"\x89PNG\r\n\x1a\n broadcast logo"
    (directory.data_dir.parent / "minutes.pdf").write_bytes(minutes)
    (directory.data_dir.parent / "team-logo.png").write_bytes(logo)
    assert directory.run("topic", "add", "files", "user-1", "user-2").returncode == 0
    sent = directory.run(
        "send", "--topic", "files", "--subject", "Minutes", "--body", "Attached.", "--attach", "minutes.pdf",
        "--inline", "logo=team-logo.png", "--html", '<img src="cid:logo">', "--wait", "--json",
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["counts"] == {"sent": 2}
    mailed = [m.message for m in mail.messages if m.message["Subject"] == "Minutes"]
    assert sorted(r for m in mail.messages if m.message["Subject"] == "Minutes" for r in m.recipients) == [
        "bob@example.com",
        "test@example.com",
    ]
    for message in mailed:
        assert [(p.get_filename(), p.get_content()) for p in message.iter_attachments()] == [("minutes.pdf", minutes)]
        related = message.get_body(("related",))
        assert related is not None and [p.get_content() for p in related.iter_parts() if p["Content-ID"]] == [logo]
    assert [(f.channel, f.content) for f in slack.files if f.name == "minutes.pdf"] == [("C0123", minutes)]


def test_prune_removes_what_ended_before_the_date_and_the_audit_forgets_it(directory: Cli) -> None:
    """Last in the module: it prunes every notification the tests before it sent."""
    sent = directory.run("send", "--entity", "user-2", "--subject", "Old news", "--body", "Gone.", "--wait", "--json")
    assert sent.returncode == 0, sent.stderr
    nid = json.loads(sent.stdout)["id"]
    assert nid in directory.run("audit", "--email", "bob@example.com").stdout
    stored = directory.record_count()

    pruned = directory.json("streams", "prune", "--before", datetime.now(UTC).isoformat())
    assert pruned["notifications"] >= 1 and pruned["records"] >= 10
    assert pruned["broadcasts"] == 3  # those the tests before it sent, each ended
    assert pruned["contents"] == 2  # the files test_a_broadcast_sends_its_files_to_each_member_of_a_topic sent
    assert directory.record_count() == stored - pruned["records"]
    missing = directory.run("status", nid)
    assert missing.returncode == 1 and "no notification with id" in missing.stderr
    assert nid not in directory.run("audit", "--email", "bob@example.com").stdout
    assert json.loads(directory.run("directory", "show", "user-2").stdout)["email"] == "bob@example.com"  # it stays
    again = directory.json("streams", "prune", "--older-than", "0")
    assert (again["notifications"], again["records"]) == (0, 0)
