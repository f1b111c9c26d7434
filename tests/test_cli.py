"""End to end with the real entry points: `worker.py --dev` (the embedded Temporal dev server and the worker) and
`starter.py` commands, each its own process, against the aiosmtpd mail sink and the local Slack sink."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pty
import re
import shlex
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

import starter
from harness.processes import ROOT, unconfigured_environment
from sinks.mail import MailSink, free_port
from sinks.slack import SlackSink
from tests.cli import DIRECTORY, TEAM, TOKEN, Cli
from tests.service import STORE, scraped

GONE = json.dumps({"id": "gone", "slack": {"workspace": "acme", "channel": "C0GONE"}, "channels": {"slack": "send"}})
"""An entity given inline whose Slack channel the sink does not have: its notifications fail."""

ISSUED_ID = STORE + r"-[0-9]+"
"""A notification id as the streams issue it: the store's identity, then the client-operation stream's number."""


def test_files_attached_go_by_email_whole(directory: Cli, sinks: tuple[MailSink, SlackSink]) -> None:
    mail, slack = sinks
    report, picture = b"%PDF-1.7\n" + bytes(range(256)) * 64, b"\x89PNG\r\n\x1a\n" + bytes(64)
    (directory.data_dir.parent / "report.pdf").write_bytes(report)
    (directory.data_dir.parent / "chart").write_bytes(picture)
    gif = b"GIF89a" + bytes(32)
    (directory.data_dir.parent / "logo.gif").write_bytes(gif)
    sent = directory.run(
        "send", "--entity", "user-1", "--subject", "Monthly report", "--body", "Attached.",
        "--attach", "report.pdf", "--attach", "chart;type=image/png", "--inline", "logo=logo.gif",
        "--html", '<p>Attached.</p><img src="cid:logo">', "--attach-to", "email", "--wait", "--json",
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["status"] == "sent"
    assert "Attached." in [m.text.splitlines()[-1] for m in slack.messages] and not slack.files  # the message, no file
    [message] = [m.message for m in mail.received_by("test@example.com") if m.message["Subject"] == "Monthly report"]
    files = [(p.get_filename(), p.get_content_type(), p.get_content()) for p in message.iter_attachments()]
    assert files == [("report.pdf", "application/pdf", report), ("chart", "image/png", picture)]
    nid = json.loads(sent.stdout)["id"]
    digests = [hashlib.sha256(content).hexdigest() for content in (report, picture, gif)]
    listed = [
        f"+ report.pdf (application/pdf, {len(report):,} bytes, sha256 {digests[0]})",
        f"+ chart (image/png, {len(picture):,} bytes, sha256 {digests[1]})",
        f"+ logo.gif (image/gif, {len(gif):,} bytes, sha256 {digests[2]}, inline as cid:logo)",
    ]
    for args, expected in [
        (("--email", "test@example.com"), listed),
        (("--entity", "user-1"), listed),
        (("--slack-channel", "C0123"), []),  # attached to email alone
    ]:
        lines = directory.run("audit", *args).stdout.splitlines()
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{nid} "))
        under = itertools.takewhile(lambda line: line.startswith(" "), lines[at + 1 :])
        assert [line.strip() for line in under] == expected, args
    [entry] = [e for e in directory.json("audit", "--entity", "user-1") if e["notification_id"] == nid]
    assert [
        (f["filename"], f["media_type"], f["size"], f["sha256"], f.get("content_id")) for f in entry["attachments"]
    ] == [
        ("report.pdf", "application/pdf", len(report), digests[0], None),
        ("chart", "image/png", len(picture), digests[1], None),
        ("logo.gif", "image/gif", len(gif), digests[2], "logo"),
    ]
    html = message.get_body(("related", "html"))
    assert html is not None and html.get_content_type() == "multipart/related"
    [shown, logo] = html.iter_parts()
    assert 'src="cid:logo"' in shown.get_content()
    assert (logo["Content-ID"], logo.get_content_type(), logo.get_content()) == ("<logo>", "image/gif", gif)


def test_send_then_status_events_and_audit(directory: Cli, sinks: tuple[MailSink, SlackSink]) -> None:
    mail, slack = sinks
    sent = directory.run(
        "send", "--entity", "user-1", "--subject", "Deploy finished", "--body", "v1.2 is live.", "--wait", "--json"
    )
    assert sent.returncode == 0, sent.stderr
    nid = json.loads(sent.stdout)["id"]

    status = directory.json("status", nid)
    assert status["status"] == "sent"
    assert {c: (v["address"], v["outcome"]) for c, v in status["channels"].items()} == {
        "email": ("test@example.com", "succeeded"),
        "slack": ("acme/C0123", "succeeded"),
    }
    assert status["outcome"]["attempt"] == "SentOnAllPreparedChannels"

    [message] = [m for m in mail.received_by("test@example.com") if m.message["Subject"] == "Deploy finished"]
    assert message.message["From"] == "alerts@notify.test"
    assert ("chat.postMessage", TOKEN) in slack.calls
    assert any("Deploy finished" in m.text and m.channel == "C0123" for m in slack.messages)

    text = directory.run("status", nid)
    assert text.returncode == 0
    assert text.stdout.splitlines()[0] == f"notification {nid}: sent"

    events = directory.json("events", nid)
    assert {e["stream"] for e in events} >= {"client-operation", "notification-event", "email-event", "slack-event"}
    types = [e["type"] for e in events]
    assert types[0] == "ExecuteOpRequestedEvent" and types[-1] == "NotificationSnapshot"
    assert "SucceededInSendingNotificationEvent" in types

    audit = directory.json("audit", "--email", "test@example.com")
    assert {"notification_id": nid, "subject": "Deploy finished", "outcome": "sent"}.items() <= [
        a for a in audit if a["notification_id"] == nid
    ][0].items()
    assert nid in directory.run("audit", "--entity", "user-1").stdout
    heading, *rows = directory.run("audit", "--slack-channel", "C0123").stdout.splitlines()
    [row] = [row for row in rows if row.startswith(f"{nid} ")]
    assert row.endswith("  sent            Deploy finished")  # the Slack text's first line, without its markup
    assert heading.index("REQUESTED") == row.index(
        status["requested_at"][:10]
    )  # under its heading, however long the id


def test_send_prints_the_id_and_status_follows_it_live(directory: Cli, sinks: tuple[MailSink, SlackSink]) -> None:
    mail, _ = sinks
    mail.data_arrived.clear()
    mail.hold()
    try:
        sent = directory.run("send", "--entity", "user-2", "--subject", "Held", "--body", "Wait for it.")
        assert sent.returncode == 0, sent.stderr
        nid = sent.stdout.strip()
        assert re.fullmatch(ISSUED_ID, nid), nid
        assert mail.data_arrived.wait(60)
        assert directory.json("status", nid)["status"] == "sending"
        elsewhere = {**directory.env, "NOTIFY_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}"}
        lost = subprocess.run(
            [sys.executable, str(ROOT / "starter.py"), "status", nid],
            env=elsewhere,
            cwd=directory.data_dir.parent,
            capture_output=True,
            text=True,
            timeout=60,
        )
        address = elsewhere["NOTIFY_TEMPORAL_ADDRESS"]
        assert (lost.returncode, lost.stderr) == (1, f"error: {unreachable(address)}\n")
    finally:
        mail.release()
    done = directory.json("status", nid, "--wait")
    assert done["status"] == "sent"


def unreachable(address: str) -> str:
    """What a command run outside the repository says of a Temporal it cannot reach: how to start one, as pasted
    there (absolute paths)."""
    worker = shlex.join([sys.executable, str(ROOT / "worker.py"), "--dev", "--sinks"])
    return (
        f"cannot reach Temporal at {address} (connection refused): start it (`{worker}` runs one on the embedded "
        "default), or set NOTIFY_TEMPORAL_ADDRESS to where it runs"
    )


def test_a_request_made_while_temporal_cannot_be_reached_is_accepted_and_started_by_a_worker(
    directory: Cli, sinks: tuple[MailSink, SlackSink]
) -> None:
    mail, _ = sinks
    address = f"127.0.0.1:{free_port()}"
    away = {**directory.env, "NOTIFY_TEMPORAL_ADDRESS": address}

    def run_away(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(ROOT / "starter.py"), *args],
            env=away,
            cwd=directory.data_dir.parent,
            capture_output=True,
            text=True,
            timeout=60,
        )

    before = len(mail.received_by("bob@example.com"))
    result = run_away("send", "--entity", "user-2", "--subject", "While away", "--body", "B")
    assert result.returncode == 0, result.stderr
    nid = result.stdout.strip()
    assert re.fullmatch(ISSUED_ID, nid), result.stdout
    assert result.stderr == (
        f"notification {nid} is accepted; its saga starts when Temporal is back ({unreachable(address)})\n"
    )
    # the worker, which can reach Temporal, starts it: the request needed nothing but its record in the stream
    done = directory.json("status", nid, "--wait")
    assert done["status"] == "sent"
    received = [m for m in mail.received_by("bob@example.com")[before:] if m.message["Subject"] == "While away"]
    assert len(received) == 1
    history = directory.json("events", nid)
    assert [r["type"] for r in history if r["stream"] == "client-operation"] == ["ExecuteOpRequestedEvent"]


def test_send_wait_prints_the_id_at_once_then_the_outcome(directory: Cli) -> None:
    sent = directory.run("send", "--entity", "user-2", "--subject", "Waited", "--body", "B", "--wait")
    assert sent.returncode == 0, sent.stderr
    nid, heading, *_ = sent.stdout.splitlines()
    assert re.fullmatch(ISSUED_ID, nid) and heading == f"notification {nid}: sent"
    # its progress, a plain line per change, went to standard error (standard output is not a terminal here)
    progress = sent.stderr.splitlines()
    assert all(line.startswith(f"{nid}: ") for line in progress), progress
    assert f"{nid}: sent" in progress  # in words: the saga's stage names are for `events`
    assert any(re.fullmatch(rf"{nid}: email +bob@example.com +succeeded \(operation \d+\)", line) for line in progress)


def test_status_watch_on_a_terminal_shows_live_progress_then_the_outcome(directory: Cli) -> None:
    nid = directory.run("send", "--entity", "user-1", "--subject", "Watched", "--body", "B").stdout.strip()
    parent, child = pty.openpty()
    with subprocess.Popen(
        [sys.executable, str(ROOT / "starter.py"), "status", nid, "--watch"],
        env={**directory.env, "COLUMNS": "120", "TERM": "xterm"},
        cwd=directory.data_dir.parent,
        stdout=child,
        stderr=subprocess.PIPE,
    ) as watching:
        os.close(child)
        said = b""
        while chunk := _read(parent):
            said += chunk
        assert watching.wait(60) == 0, watching.stderr
    os.close(parent)
    text = said.decode()
    assert "\x1b[" in text  # drawn and redrawn in place (rich's live display), not a line per change
    assert f"notification {nid}: sent" in text and "succeeded" in text


def _read(fd: int) -> bytes:
    """What the terminal's other end got, until the process closed it."""
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the writer is gone
        return b""


def test_a_time_that_has_passed_sends_now_and_says_so(directory: Cli, sinks: tuple[MailSink, SlackSink]) -> None:
    sent = directory.run(
        "send", "--entity", "user-2", "--subject", "Overdue", "--body", "B", "--at", "2020-01-01T09:00:00+01:00"
    )
    assert sent.returncode == 0
    assert sent.stderr == "--at 2020-01-01T09:00:00+01:00 has passed: sending now\n"
    view = directory.json("status", sent.stdout.strip(), "--wait")
    assert (view["status"], view["send_at"]) == ("sent", None)
    assert [m.message["Subject"] for m in sinks[0].received_by("bob@example.com")].count("Overdue") == 1


def test_an_entity_the_directory_lacks_is_refused_up_front_unless_the_request_carries_it(directory: Cli) -> None:
    before = directory.record_count()
    refused = directory.run("send", "--entity", "user-7", "--subject", "Hello", "--body", "B")
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == "error: entity 'user-7' is not in the directory\n"
    partial = json.dumps({"id": "user-7", "channels": {"email": "send"}})
    nowhere = Cli(directory.env | {"NOTIFY_STREAMS_URL": "sqlite:///no/store/here.db"}, directory.data_dir)
    invalid = nowhere.run("send", "--entity-json", partial, "--subject", "Hello", "--body", "B")
    assert (invalid.returncode, invalid.stderr) == (  # said before any store is looked for
        2,
        "error: --entity-json: entity 'user-7' asks for email but has no email address\n",
    )
    invalid = directory.run("send", "--entity-json", partial, "--subject", "Hello", "--body", "B")
    assert (invalid.returncode, invalid.stderr) == (
        2,
        "error: --entity-json: entity 'user-7' asks for email but has no email address\n",
    )
    both = directory.run("send", "--entity", "user-7", "--entity-json", partial, "--subject", "Hello", "--body", "B")
    assert (both.returncode, both.stderr) == (
        2,
        "error: give --entity ID (repeatable), --entity-json ENTRY or --topic NAME (one of them)\n",
    )
    assert directory.record_count() == before  # nothing written

    carried = {"id": "user-7", "email": "seven@example.com", "channels": {"email": "send"}}
    sent = directory.run("send", "--entity-json", json.dumps(carried), "--subject", "Hello", "--body", "B", "--wait")
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.splitlines()[3].split()[:3] == ["email", "seven@example.com", "succeeded"]
    recorded = json.loads(directory.run("directory", "show", "user-7").stdout)
    assert recorded == {**carried, "name": "user-7"}  # recorded first


def test_help_names_each_value_and_answers_to_h(directory: Cli) -> None:
    short = directory.run("-h")
    assert short.returncode == 0 and "Commands:" in short.stdout and "send" in short.stdout
    commands = [line.split()[0] for line in short.stdout.split("Commands:\n")[1].splitlines()]
    subcommands = ["directory show", "directory import", "apikey create", "apikey revoke", "topic add", "topic show"]
    for command in commands + subcommands:  # the same commands, in this process: a second each saved
        shown = CliRunner().invoke(starter.app, [*command.split(), "-h"], prog_name="starter.py").output
        assert shown.startswith(f"Usage: starter.py {command} ") and "<" not in shown, shown  # no <str>, <bool>
    send = directory.run("send", "-h").stdout
    for named in ("--entity ID", "--entity-json JSON", "--template NAME", "--tag NAME=VALUE", "--at TIME"):
        assert named in send, send
    assert "Render subject and bodies from NAME.yaml in NOTIFY_TEMPLATES_DIR." in " ".join(send.split())
    cancel = " ".join(directory.run("cancel", "--help").stdout.split())
    assert "Cancel notification ID if it has not finished sending" in cancel


def test_a_command_where_no_worker_keeps_a_store_says_so_and_makes_none(tmp_path: Path) -> None:
    env = {**unconfigured_environment(), "NOTIFY_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}"}
    here = Cli(env, tmp_path / ".notify")
    store = tmp_path / ".notify" / "streams.db"
    for args in (
        ("status", "1"),
        ("send", "--entity", "user-1", "--subject", "S", "--body", "B"),
        ("serve",),
    ):
        result = here.run(*args)
        assert (result.returncode, result.stdout) == (1, ""), (args, result)
        [line] = result.stderr.splitlines()
        assert line.startswith(f"error: no store at {store}: start the worker first (`"), line
        assert line.endswith("` runs one on the embedded default), or set NOTIFY_DATA_DIR to the worker's"), line
    assert not (tmp_path / ".notify").exists()


def test_audit_heads_its_columns_and_says_when_nothing_was_sent(directory: Cli) -> None:
    sent = directory.json("send", "--entity", "user-2", "--subject", "Audited", "--body", "B", "--wait")
    heading, *rows = directory.run("audit", "--email", "bob@example.com").stdout.splitlines()
    assert heading.split() == ["ID", "REQUESTED", "OUTCOME", "SUBJECT"]
    assert [row.split()[2:] for row in rows if row.split()[0] == sent["id"]] == [["sent", "Audited"]]
    for args, said in [
        (("--slack-channel", "C0999"), "no Slack message was sent to C0999"),
        (("--email", "nobody@example.com"), "no email was sent to nobody@example.com"),
        (("--entity", "user-9"), "no notification was requested for entity user-9"),
    ]:
        result = directory.run("audit", *args)
        assert (result.returncode, result.stdout) == (0, said + "\n")
    events = directory.run("events", sent["id"]).stdout.splitlines()
    assert events[0].split() == ["RECORD", "TIME", "STREAM", "RECORD", "ID", "TYPE"]


def test_help_says_what_wait_exits_with_as_the_readme_does(directory: Cli) -> None:
    readme = " ".join((ROOT / "README.md").read_text().split())
    for command in ("send", "status"):
        shown = " ".join(directory.run(command, "--help").stdout.replace("│", " ").split())
        assert "exit 1 if it failed, was partially sent or was cancelled (opted out is not a failure)" in shown
    assert "exit 1 if it failed, was partially sent or was cancelled (opted out is not a failure)" in readme


def test_a_failed_notification_exits_non_zero_and_the_team_is_told(
    directory: Cli, sinks: tuple[MailSink, SlackSink]
) -> None:
    result = directory.run("send", "--entity-json", GONE, "--subject", "Lost", "--body", "B", "--wait", "--json")
    assert result.returncode == 1
    view = json.loads(result.stdout)
    assert (view["status"], view["escalation"]["status"]) == ("failed", "sent")
    subjects = [m.message["Subject"] for m in sinks[0].received_by(TEAM)]
    assert subjects.count(f"Notification {view['id']} failed: Lost") == 1
    text = directory.run("status", view["id"]).stdout
    team_operation = view["escalation"]["channels"]["email"]["channel_operation_id"]
    assert f"  internal team: sent\n    email  {TEAM:<30} succeeded (operation {team_operation})\n" in text


def test_schedule_then_cancel(directory: Cli, sinks: tuple[MailSink, SlackSink]) -> None:
    at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    nid = directory.json("send", "--entity", "user-2", "--subject", "Later", "--body", "In an hour.", "--at", at)["id"]
    assert directory.json("status", nid)["status"] == "scheduled"
    cancelled = directory.json("cancel", nid)
    assert cancelled["status"] == "cancelled"
    again = directory.run("cancel", nid)
    assert again.returncode == 1
    assert again.stderr.strip() == f"error: notification {nid} is cancelled: nothing changed"
    assert not any(m.message["Subject"] == "Later" for m in sinks[0].messages)
    events = [e["type"] for e in directory.json("events", nid)]
    assert "NotificationCancelledEvent" in events and "SendEmailRequestedEvent" not in events


def test_slack_sends_keep_to_the_rate_limit(directory: Cli, sinks: tuple[MailSink, SlackSink]) -> None:
    """Four messages at once to a Slack channel, with NOTIFY_SLACK_MESSAGES_PER_SECOND=1."""
    sends = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "starter.py"), "send", "--entity", "user-3", "--subject", f"Paced {i}"]
            + ["--body", "Paced.", "--wait"],
            env=directory.env,
            cwd=directory.data_dir.parent,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    assert [send.wait(timeout=120) for send in sends] == [0, 0, 0, 0]
    times = sorted(float(m.ts) for m in sinks[1].messages if m.channel == "C0456")
    assert len(times) == 4
    assert times[-1] - times[0] >= 1.5  # paced: 2 s or more (a burst of two, then one a second); unpaced: 0.2 s


def test_idempotency_key_returns_the_same_id_and_sends_once(directory: Cli, sinks: tuple[MailSink, SlackSink]) -> None:
    args = ("send", "--entity", "user-2", "--subject", "Once", "--body", "Only once.", "--idempotency-key", "k-1")
    first, again = directory.json(*args), directory.json(*args)
    assert again == first
    waited = directory.json(*args, "--wait")  # a repeat with --wait waits for the first request's outcome
    assert (waited["id"], waited["status"]) == (first["id"], "sent")
    assert [m.message["Subject"] for m in sinks[0].received_by("bob@example.com")].count("Once") == 1
    after = directory.json("send", "--entity", "user-2", "--subject", "Next", "--body", "B", "--wait")
    assert int(after["id"].rpartition("-")[2]) == int(first["id"].rpartition("-")[2]) + 1  # the repeats took no id


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--subject", "", "--body", "B"), "subject: must not be empty"),
        (
            ("--subject", "Line\r\nBcc: x@y.z", "--body", "B"),
            "subject: must be a single line of text (no line breaks or control characters, encoded or not)",
        ),
        (("--subject", "S", "--body", ""), "body: must not be empty"),
        (("--subject", "S", "--body", " "), "body: must not be empty"),
        (("--subject", "S" * 999, "--body", "B"), "subject: is longer than 998 characters"),
        (
            ("--subject", "S", "--body", "B", "--at", "tomorrow"),
            "--at 'tomorrow': expected an ISO 8601 time such as 2026-12-01T09:00:00+01:00",
        ),
        (("--subject", "S", "--body", "@-"), "body: is over 256 KiB"),
        (("--subject", "S", "--body", "B", "--tag", "novalue"), "--tag 'novalue': expected NAME=VALUE"),
        (
            ("--subject", "S", "--body", "B", "--attach", "missing.pdf"),
            "--attach missing.pdf: No such file or directory",
        ),
        (("--subject", "S", "--body", "B", "--inline", "small.txt"), "--inline 'small.txt': expected CID=PATH"),
        (("--subject", "S", "--body", "B", "--attach", "/dev/zero"), "--attach /dev/zero: not a regular file"),
        (
            ("--subject", "S", "--body", "B", "--inline", "logo=small.txt"),
            "an inline image is shown by an HTML body: give one",
        ),
        (
            ("--subject", "S", "--body", "B", "--attach", "large.bin"),
            "--attach large.bin: 10,485,761 bytes; a file may be at most 10,485,760",
        ),
        (
            ("--subject", "S", "--body", "B", "--attach", "small.txt;type=not a type"),
            "--attach small.txt;type=not a type: media_type: must be a media type in lower case",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(directory: Cli, args: tuple[str, ...], message: str) -> None:
    before = directory.record_count()
    with open(directory.data_dir.parent / "large.bin", "wb") as large:
        large.truncate(10 * 1024 * 1024 + 1)  # sparse: never read
    (directory.data_dir.parent / "small.txt").write_text("x")
    result = directory.run("send", "--entity", "user-1", *args, input="x" * (256 * 1024 + 1))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {message}"), line
    assert directory.record_count() == before


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("--tag", "recipient-email-address=ceo@corp.example"), "", "'recipient-email-address': reserved"),
        (("--tag", "Notification-Id=1"), "", "'Notification-Id': reserved"),
        (tuple(a for i in range(51) for a in ("--tag", f"t{i}=v")), "", "tags: at most 50 tags, not 51"),
        (("--body", "@-"), "\x01" * 200_000, "the request is 1,2"),
        (("--body", "@large.txt", "--html", "@large.txt"), "", "the request is"),
        (("--subject", "=?utf-8?q?Invoice=0D=0AReply-To:_attacker@evil.example?="), "", "must be a single line"),
        (("--idempotency-key", "k" * 201), "", "--idempotency-key: is longer than 200 characters"),
        (("--tag", "a\nb=v"), "", "tags, entry 1, name: must be a single line of text"),
        (("--tag", "a=" + "é" * 1001), "", "tags, entry 1, value: is over 2,000 bytes of UTF-8"),
    ],
)
def test_hostile_requests_are_refused_before_anything_is_written(
    directory: Cli, args: tuple[str, ...], stdin: str, message: str
) -> None:
    before = directory.record_count()
    base = {"--subject": "S", "--body": "B"}
    for name in ("--subject", "--body"):
        if name in args:
            base.pop(name)
    (directory.data_dir.parent / "large.txt").write_text("\x01" * 50_000)  # each within 512 KiB as JSON, not both
    result = directory.run("send", "--entity", "user-1", *(a for kv in base.items() for a in kv), *args, input=stdin)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and message in line, line
    assert directory.record_count() == before


def test_a_bad_idempotency_key_is_refused_before_the_store_is_opened(tmp_path: Path) -> None:
    """Neither a store nobody uses made, nor an unreachable database's error in place of what is wrong."""
    for streams in (f"sqlite:///{tmp_path / 'data' / 'streams.db'}", "postgresql://nobody@127.0.0.1:1/none"):
        env = {**unconfigured_environment(), "NOTIFY_DATA_DIR": str(tmp_path / "data"), "NOTIFY_STREAMS_URL": streams}
        result = Cli(env, tmp_path / "data").run(
            "send", "--entity", "user-1", "--subject", "S", "--body", "B", "--idempotency-key", "k" * 201
        )
        assert (result.returncode, result.stderr) == (2, "error: --idempotency-key: is longer than 200 characters\n")
    assert not (tmp_path / "data").exists()


def test_bad_directory_files(directory: Cli) -> None:
    folder = directory.data_dir.parent
    before = directory.record_count()
    cases = {
        "malformed.json": ('[{"id": "x",', "malformed JSON"),
        "invalid.json": (json.dumps([{**DIRECTORY[1], "id": "user-3", "email": "not-an-address"}]), "email"),
        "partly.json": (
            json.dumps([{**DIRECTORY[1], "id": "user-4"}, {"id": "user-5"}]),
            "entry 2, channels: is missing",
        ),
        "no-email.yaml": ("- id: user-6\n  name: Dee\n  channels: {email: send}\n", "asks for email"),
        "nul.json": (json.dumps([{**DIRECTORY[1], "id": "user\u0000-8"}]), "entry 1, id: must not be empty or contain"),
        "utf8-address.json": (json.dumps([{**DIRECTORY[1], "email": "bjørn@example.com"}]), "not an ASCII address"),
        "broken-name.json": (json.dumps([{**DIRECTORY[1], "name": "Bob\u2028Bcc: x@y.z"}]), "must be a single line"),
    }
    for name, (content, expected) in cases.items():
        (folder / name).write_text(content)
        result = directory.run("directory", "import", str(folder / name))
        assert result.returncode == 2, name
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("error: ") and expected in line, line
    (folder / "latin1.json").write_bytes(
        json.dumps([{**DIRECTORY[1], "name": "Zoë"}], ensure_ascii=False).encode("latin-1")
    )
    result = directory.run("directory", "import", str(folder / "latin1.json"))
    assert (result.returncode, result.stderr) == (
        2,
        f"error: {folder / 'latin1.json'}: not UTF-8 text (byte 29 cannot be decoded)\n",
    )
    assert directory.record_count() == before
    assert directory.run("directory", "show", "user-4").returncode == 1


def test_directory_yaml_import_and_show(directory: Cli) -> None:
    folder = directory.data_dir.parent
    (folder / "more.yaml").write_text(
        "- id: user-7\n  name: Eve\n  email: eve@example.com\n  channels: {email: send}\n"
    )
    assert (
        directory.run("directory", "import", str(folder / "more.yaml")).stdout.strip()
        == "recorded 1 entities, 0 unchanged"
    )
    shown = json.loads(directory.run("directory", "show", "user-7").stdout)
    assert shown == {"id": "user-7", "name": "Eve", "email": "eve@example.com", "channels": {"email": "send"}}


def test_unknown_ids_are_one_line_exit_1(directory: Cli) -> None:
    for args in (("status", "424242"), ("events", "424242")):
        result = directory.run(*args)
        assert result.returncode == 1
        assert re.fullmatch(f"error: no notification with id '{STORE}-424242'", result.stderr.strip())


def test_the_worker_serves_the_sdks_metrics_and_the_services_own(directory: Cli) -> None:
    url = f"http://127.0.0.1:{directory.env['NOTIFY_METRICS_PORT']}/metrics"
    before = scraped(url)
    assert directory.run("send", "--entity", "user-1", "--subject", "Counted", "--body", "B", "--wait").returncode == 0
    assert directory.run("send", "--entity-json", GONE, "--subject", "Counted", "--body", "B", "--wait").returncode == 1
    after = scraped(url)

    def moved(name: str, **labels: str) -> float:
        """How much the samples of `name` with these labels (and any others: task queue, ...) grew, summed."""

        def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
            return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))

        return total(after) - total(before)

    assert moved("notify_notifications_total", status="sent") == 1
    assert moved("notify_notifications_total", status="failed") == 1
    assert moved("notify_escalations_total") == 1
    assert moved("notify_channel_sends_total", channel="email", result="succeeded") == 2  # Ada, and the team
    assert moved("notify_channel_sends_total", channel="slack", result="succeeded") == 1
    assert moved("notify_notification_seconds_count") == 2
    assert moved("notify_notification_seconds_bucket", le="+Inf") == 2
    assert any(name.startswith("temporal_") for name, _ in after)  # the SDK's own, on the same endpoint
