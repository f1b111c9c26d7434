"""Hostile input, round 2: records that do not parse are shown as unreadable by every reader; templates are bounded in
time and size; what the service cannot represent or read back is refused at the door, in one line."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import ValidationError
from temporalio.testing import WorkflowEnvironment

import starter
from client import EventRecord, IdempotencyKeyConflict, NotificationClient, RequestRefused, UnknownNotification
from domain import (
    DirectoryEntry,
    NotificationOutcome,
    NotificationStatus,
    NotificationView,
    SendNotificationToEntityOp,
    admitted,
    recipient_email_tag,
    tag,
    validation_message,
)
from domain.model import TagName
from harness.processes import ROOT, unconfigured_environment
from settings import Settings
from streams import StreamName, StreamStore
from streams.directory import entry_or_why, import_entries, lookup
from templating import RENDER_SECONDS, TemplateError, Templates
from tests.databases import Databases
from tests.service import entity, operation
from tests.streams_contract import Thing

SECRET = "PAYLOAD-SECRET-7f3a"
"""Text inside an unreadable payload, which no log line nor message may repeat."""


@pytest.fixture(params=["sqlite", "postgres"])
def streams_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that reads the store runs on both backends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'streams.db'}"
    databases: Databases = request.getfixturevalue("postgres")
    return databases.fresh()


def corrupt(streams_url: str, internal_id: int, payload: str) -> None:
    """Overwrite a record's payload with text, as the owner of the store could (or an old version's bug)."""
    if streams_url.startswith("sqlite"):
        with sqlite3.connect(streams_url.removeprefix("sqlite:///")) as db:
            db.execute("UPDATE records SET payload = ? WHERE internal_id = ?", (payload, internal_id))
    else:
        with psycopg.connect(streams_url, autocommit=True) as db:
            db.execute(
                "UPDATE notify_records SET payload = %s, packed = NULL WHERE internal_id = %s", (payload, internal_id)
            )


async def put_view(store: StreamStore, notification_id: str, entity_id: str = "user-1") -> int:
    view = NotificationView(
        id=notification_id,
        status=NotificationStatus.SENT,
        entity_id=entity_id,
        subject="S",
        outcome=NotificationOutcome(),
        requested_at=datetime.now(UTC),
    )
    put = await store.writer(StreamName.NOTIFICATION_VIEW).put(
        notification_id,
        view,
        tags=[tag(TagName.NOTIFICATION_ID, notification_id)],  # as the saga tags a view: its entity is its request's
    )
    assert put.internal_id is not None
    return put.internal_id


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "notify.streams" and r.levelno == logging.WARNING]


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (f'{{"id": "{SECRET}", "status": "bogus"', "not JSON"),  # cut short
        (f'{{"id": "n-1", "status": "{SECRET}"}}', "not a NotificationView"),  # its model refuses it
    ],
)
async def test_a_view_that_does_not_parse_is_shown_as_unreadable_and_logged_once(
    store: StreamStore,
    streams_url: str,
    dev_env: WorkflowEnvironment,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
    payload: str,
    why: str,
) -> None:
    client = NotificationClient(store, dev_env.client, settings)
    readable, nid = [await client.request(operation()) for _ in range(2)]
    await put_view(store, readable)
    internal_id = await put_view(store, nid)
    corrupt(streams_url, internal_id, payload.replace("n-1", nid))
    caplog.set_level(logging.WARNING, logger="notify.streams")

    view = await client.status(nid)
    assert NotificationView.model_validate(view).status == NotificationStatus.UNREADABLE  # what the API answers
    assert (view["id"], view["entity_id"]) == (nid, "user-1")
    [failure] = view["outcome"]["failures"]
    assert f"record {internal_id} of stream notification-view (NotificationView, id {nid}) is unreadable: {why}" in (
        failure
    )
    listed, _ = await client.recent(entity_id=None, status=None, limit=10, before=None)
    assert [(v["id"], v["status"]) for v in listed] == [(nid, "unreadable"), (readable, "sent")]
    await client.status(nid)

    assert warnings_of(caplog) == [failure]  # once per record in a process, however often it is read
    assert SECRET not in failure and all(SECRET not in r.getMessage() for r in caplog.records)


async def test_events_and_the_audit_show_an_unreadable_record_as_such(
    store: StreamStore, streams_url: str, dev_env: WorkflowEnvironment, settings: Settings
) -> None:
    client = NotificationClient(store, dev_env.client, settings)
    internal_id = await put_view(store, "n-2")
    corrupt(streams_url, internal_id, f"[{SECRET}")
    address = "ada@example.com"
    email = await store.writer(StreamName.EMAIL_EVENT).put(
        "7",
        entity(id="user-1"),
        type="SendEmailRequestedEvent",
        tags=[tag(TagName.NOTIFICATION_ID, "n-2"), recipient_email_tag(address)],
    )
    assert email.internal_id is not None
    corrupt(streams_url, email.internal_id, f'{{"operation": "{SECRET}"}}')

    records = await client.events("n-2")
    shown = [EventRecord.of(r).model_dump(mode="json") for r in records]
    assert [(e["stream"], e["type"]) for e in shown] == [
        ("notification-view", "NotificationView"),
        ("email-event", "SendEmailRequestedEvent"),
    ]
    assert shown[0]["payload"] == {
        "unreadable": f"record {internal_id} of stream notification-view (NotificationView, id n-2) is unreadable: "
        "not JSON (Expecting value at character 1)"
    }
    assert shown[1]["payload"] == {"operation": SECRET}  # JSON: `events` shows it as recorded

    [delivery] = await client.audit_email(address)
    assert (delivery.notification_id, delivery.outcome, delivery.subject) == ("n-2", "unreadable", None)
    assert delivery.reason is not None and f"record {email.internal_id} of stream email-event" in delivery.reason
    assert SECRET not in delivery.reason


async def test_an_idempotency_keys_claim_that_does_not_parse_is_a_conflict_said_in_one_line(
    store: StreamStore,
    streams_url: str,
    dev_env: WorkflowEnvironment,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = NotificationClient(store, dev_env.client, settings)
    await client.request(operation(), "k-1")
    claim = await store.reader(StreamName.CLIENT_OPERATION).latest("idempotency-key:k-1")
    assert claim is not None
    corrupt(streams_url, claim.internal_id, f'{{"idempotency_key": "{SECRET}"')
    caplog.set_level(logging.WARNING, logger="notify.streams")

    for _ in range(2):
        with pytest.raises(IdempotencyKeyConflict) as refused:
            await client.request(operation(), "k-1")
    refusal = "idempotency key 'k-1' is claimed by a record that cannot be read ("
    assert str(refused.value).startswith(refusal) and str(refused.value).endswith(")")
    said = str(refused.value).removeprefix(refusal)[:-1]
    assert said.startswith(
        f"record {claim.internal_id} of stream client-operation (IdempotencyKeyClaim, id idempotency-key:k-1) is"
        " unreadable: not JSON (EOF while parsing"
    )
    assert warnings_of(caplog) == [said] and SECRET not in caplog.text


async def test_a_directory_entry_that_does_not_parse_is_no_entry_and_said_in_one_line(
    store: StreamStore,
    owner: StreamStore,
    streams_url: str,
    dev_env: WorkflowEnvironment,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await import_entries(owner, [entity(id="user-1")])
    recorded = await store.reader(StreamName.ENTITY_DIRECTORY).latest("user-1")
    assert recorded is not None
    corrupt(streams_url, recorded.internal_id, f'{{"id": "user-1", "email": "{SECRET}"}}')
    caplog.set_level(logging.WARNING, logger="notify.streams")
    said = (
        f"record {recorded.internal_id} of stream entity-directory (DirectoryEntry, id user-1) is unreadable:"
        " not a DirectoryEntry (channels: missing)"
    )

    assert await entry_or_why(store.reader(StreamName.ENTITY_DIRECTORY), "user-1") == said
    assert await lookup(store.reader(StreamName.ENTITY_DIRECTORY), "user-1") is None
    client = NotificationClient(
        store, dev_env.client, settings.model_copy(update={"templates_dir": ROOT / "message_templates"})
    )
    with pytest.raises(RequestRefused) as refused:
        await client.compose({"entity_id": "user-1"}, "welcome", {})
    assert str(refused.value) == f"entity 'user-1' has a directory entry that cannot be read: {said}"
    assert warnings_of(caplog) == [said] and SECRET not in caplog.text

    shown = subprocess.run(
        [sys.executable, str(ROOT / "starter.py"), "directory", "show", "user-1"],
        env={**unconfigured_environment(), "NOTIFY_STREAMS_URL": streams_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (shown.returncode, shown.stdout) == (1, "")
    # the record logged as unreadable (as by every reader), then the refusal
    assert shown.stderr.splitlines() == [said, f"error: cannot read the entry of entity 'user-1': {said}"]


async def test_an_idempotency_keys_record_is_no_notification(
    store: StreamStore, owner: StreamStore, dev_env: WorkflowEnvironment, settings: Settings
) -> None:
    await import_entries(owner, [entity(id="user-1")])
    client = NotificationClient(store, dev_env.client, settings)
    notification_id = await client.request(SendNotificationToEntityOp(entity_id="user-1", subject="S", body="B"), "k-1")

    for read in (client.status, client.cancel, client.events):
        with pytest.raises(UnknownNotification, match="no notification with id 'idempotency-key:k-1'"):
            await read("idempotency-key:k-1")
    assert notification_id in {r.record_id for r in await client.events(notification_id)}  # no query: no worker


def request(**fields: Any) -> dict[str, Any]:
    return {"entity_id": "user-1", "subject": "S", "body": "B", **fields}


@pytest.mark.parametrize(
    ("given", "said"),
    [
        (request(send_at="9999-06-01T00:00:00Z"), "send_at: must be in the years 1970 to 9998 (UTC)"),
        (request(send_at="0001-01-01T00:00:00+01:00"), "send_at: must be in the years 1970 to 9998 (UTC)"),
        (request(send_at="1969-12-31T23:59:59Z"), "send_at: must be in the years 1970 to 9998 (UTC)"),
        (request(body="B\ud800"), "body: is not valid Unicode: a lone surrogate (U+D800) at 1"),
        (request(entity_id="\udc80"), "entity_id: is not valid Unicode"),
        (request(tags=[{"name": "t", "value": "\ud800"}]), "tags, entry 1, value: is not valid Unicode"),
    ],
)
def test_a_request_the_service_cannot_represent_is_refused_in_one_line(given: dict[str, Any], said: str) -> None:
    with pytest.raises(ValidationError) as refused:
        admitted(SendNotificationToEntityOp, given)
    assert validation_message(refused.value).startswith(said)


def test_the_send_window_holds_its_bounds() -> None:
    for moment in ("1970-01-01T00:00:00Z", "9998-12-31T23:59:59Z"):
        assert admitted(SendNotificationToEntityOp, request(send_at=moment)).send_at is not None


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ({"id": "a/b"}, "id: must not contain '/'"),
        ({"slack": {"workspace": "acme", "channel": "C1/x"}}, "slack.channel: must not contain '/'"),
        ({"slack": {"workspace": "acme", "channel": "C1\ud800"}}, "slack.channel: is not valid Unicode"),
    ],
)
def test_a_directory_entry_that_cannot_be_read_back_is_refused(given: dict[str, Any], said: str) -> None:
    entry = {"id": "a", "name": "A", "channels": {}} | given
    with pytest.raises(ValidationError) as refused:
        admitted(DirectoryEntry, entry)
    assert validation_message(refused.value).startswith(said)


def test_refusals_never_show_pydantics_internals() -> None:
    errors = [
        {
            "type": "value_error",
            "loc": ("body", "function-after[_fits_in_a_payload(), SendNotificationToEntityOp]"),
            "msg": "Value error, too big\nFor further information visit https://errors.pydantic.dev/2/v/value_error",
        }
    ]
    assert validation_message(errors) == "body: too big"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("streams", "prune", "--before", "0001-01-01"), "--before 0001-01-01: must be in the years 1970 to 9998"),
        (("streams", "prune", "--older-than", "999999"), "--older-than 999999: a number of days from 0 to"),
    ],
)
def test_prune_bounds_are_one_line_exit_2(tmp_path: Path, args: tuple[str, ...], said: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "starter.py"), *args],
        env=unconfigured_environment(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(f"error: {said}") and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00", "9999-12-31T23:00:00-05:00", "1969-01-01T00:00:00Z"])
def test_send_at_a_time_outside_the_window_is_exit_2(moment: str) -> None:
    with pytest.raises(starter.CliError) as refused:
        starter.parse_time(moment)
    assert refused.value.code == 2
    assert str(refused.value) == f"--at {moment}: must be in the years 1970 to 9998 (UTC)"


@pytest.mark.parametrize(("suffix", "nested"), [(".json", "[" * 100_000), (".yaml", "- " * 100_000 + "x")])
def test_a_directory_file_nested_too_deeply_is_exit_2(tmp_path: Path, suffix: str, nested: str) -> None:
    file = tmp_path / f"entities{suffix}"
    file.write_text(nested)
    with pytest.raises(starter.CliError) as refused:
        starter.read_directory(file)
    assert refused.value.code == 2
    assert str(refused.value) == f"{file}: nested too deeply (a directory file is a list of entities)"


def write(folder: Path, name: str, text: str) -> None:
    (folder / f"{name}.yaml").write_text(f"subject: s\ntext: {text}\n")


def test_a_template_that_loops_too_long_is_stopped_at_its_time_limit(tmp_path: Path) -> None:
    write(tmp_path, "loops", '"{% for i in data.n %}{% for j in data.n %}{% endfor %}{% endfor %}done"')
    templates = Templates(tmp_path, seconds=0.2)
    started = time.monotonic()
    with pytest.raises(TemplateError) as stopped:
        templates.render("loops", {"n": list(range(7000))}, {})
    assert time.monotonic() - started < 1.0  # the whole loop takes seconds
    assert str(stopped.value) == "template 'loops', text: stopped: it ran longer than 0.2 s"
    assert templates.render("loops", {"n": list(range(10))}, {}).text == "done"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('"{% for i in data.n %}{% for j in data.n %}{{ i }}{% endfor %}{% endfor %}"', "the output is over 256 KiB"),
        ("\"{{ 'x' * 100000000 }}\"", "a value is longer than 524,288"),
        ('"{{ 10 ** 100000000 }}"', "a power is over 4096 bits"),
        (
            "\"{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}\"",
            "a value is longer than 524,288",
        ),
    ],
)
def test_a_template_that_makes_too_much_is_stopped(tmp_path: Path, text: str, said: str) -> None:
    write(tmp_path, "big", text)
    with pytest.raises(TemplateError) as stopped:
        Templates(tmp_path).render("big", {"n": list(range(7000))}, {})
    assert str(stopped.value) == f"template 'big', text: stopped: {said}"


def test_data_is_looked_up_as_keys_before_methods(tmp_path: Path) -> None:
    write(tmp_path, "keys", '"{{ data.items }} {{ data.values }} {{ data.keys() | list }}"')
    rendered = Templates(tmp_path).render("keys", {"items": "3 books", "values": "v"}, {})
    assert rendered.text == "3 books v ['items', 'values']"


def test_an_unknown_template_is_named_and_nothing_more(tmp_path: Path) -> None:
    write(tmp_path, "welcome", "t")
    with pytest.raises(TemplateError) as unknown:
        Templates(tmp_path).render("welcom", {}, {})
    assert str(unknown.value) == "template 'welcom': no such template"


async def test_a_long_rendering_leaves_the_event_loop_free_and_is_refused_in_one_line(
    store: StreamStore,
    owner: StreamStore,
    dev_env: WorkflowEnvironment,
    settings: Settings,
    tmp_path: Path,
) -> None:
    settings = settings.model_copy(update={"templates_dir": tmp_path})
    write(tmp_path, "loops", '"{% for i in data.n %}{% for j in data.n %}{% endfor %}{% endfor %}"')
    await import_entries(owner, [entity(id="user-1")])
    client = NotificationClient(store, dev_env.client, settings)
    submitted = asyncio.create_task(client.submit({"entity_id": "user-1"}, "loops", {"n": list(range(20_000))}))
    ticks = []
    while not submitted.done():  # the loop answers on time while the template renders
        started = time.monotonic()
        await asyncio.sleep(0.01)
        ticks.append(time.monotonic() - started)
    with pytest.raises(RequestRefused) as refused:
        await submitted
    assert str(refused.value) == f"template 'loops', text: stopped: it ran longer than {RENDER_SECONDS:g} s"
    assert len(ticks) > 20 and max(ticks) < 0.5, ticks


@pytest.mark.parametrize(
    "packed",
    [b"\x09" + b"x" * 40, b"\x01not deflate at all", b"\x01" + zlib.compress(b"{}" * 50)[2:40]],
    ids=["unknown dictionary", "not deflate", "cut short"],
)
async def test_a_packed_payload_that_does_not_unpack_is_an_unreadable_record_not_a_failed_read(
    store: StreamStore, streams_url: str, packed: bytes
) -> None:
    """Bytes in place of a packed payload (an owner's mistake, a later version's dictionary) make that one record
    unreadable; its neighbours, and the read, are unharmed."""
    writer = store.writer(StreamName.EMAIL_EVENT)
    nid = tag(TagName.NOTIFICATION_ID, "n-1")
    bad = await writer.put("1", Thing(value=1), tags=[nid])
    await writer.put("2", Thing(value=2), tags=[nid])
    assert bad.internal_id is not None
    if streams_url.startswith("sqlite"):
        with sqlite3.connect(streams_url.removeprefix("sqlite:///")) as db:
            db.execute("UPDATE records SET payload = ? WHERE internal_id = ?", (packed, bad.internal_id))
    else:
        with psycopg.connect(streams_url, autocommit=True) as db:
            db.execute(
                "UPDATE notify_records SET payload = NULL, packed = %s WHERE internal_id = %s",
                (packed, bad.internal_id),
            )
    first, second = await store.read_tagged([StreamName.EMAIL_EVENT], [nid])
    assert second.object(Thing) == Thing(value=2)
    with pytest.raises(ValidationError):
        first.object(Thing)
    assert "packed" in first.payload and "{" not in first.payload
