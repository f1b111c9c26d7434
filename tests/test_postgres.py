"""PostgreSQL in production shape: migrations and their check, the roles the database enforces, and several workers
sharing the work through one Temporal and one database."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shlex
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import errors, sql
from pydantic import BaseModel
from temporalio.testing import WorkflowEnvironment

import streams.store
from api.app import owner_store
from client import NotificationClient, connect
from domain import DirectoryEntry, ExecuteOpRequestedEvent, SendNotificationToEntityOp, Tag, TagName
from harness.processes import ROOT, start_worker, unconfigured_environment
from intake import TAKEN_UP
from settings import Settings
from sinks.mail import MailSink, free_port
from sinks.slack import SlackSink
from streams import ExistingRecordStrategy as S
from streams import HandlingStatus, StoreUnavailable, StoreUnusable, StreamName, open_store
from streams.directory import import_entries, lookup
from streams.packing import pack
from streams.postgres import MIGRATIONS, SCHEMA_VERSION, AccessUrls, PostgresStreamStore, _classified, migrate
from streams.store import ALLOWED_TRANSITIONS, Pruned
from tests.databases import Databases, role_urls, url_of
from tests.service import Api

ROLES = ("notify_client", "notify_producer", "notify_consumer", "notify_handler")


class Thing(BaseModel):
    value: int


def as_role(url: str, role: str) -> str:
    return url_of(urlsplit(url).path.lstrip("/"), role)


def starter(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**unconfigured_environment(), "NOTIFY_STREAMS_URL": url}
    return subprocess.run(
        [sys.executable, str(ROOT / "starter.py"), *args], env=env, capture_output=True, text=True, timeout=60
    )


# -- migrations ---------------------------------------------------------------------------------------------------


def test_migrate_then_grant_from_the_command_line(postgres: Databases) -> None:
    url = postgres.empty()
    first = starter("db", "migrate", url=url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        *(f"applied {MIGRATIONS[version].name}" for version in sorted(MIGRATIONS)),
        f"the streams schema is at version {SCHEMA_VERSION}",
    ]
    assert first.stdout.splitlines()[:2] == ["applied 0001_streams.sql", "applied 0002_handling.sql"]
    again = starter("db", "migrate", url=url)
    assert again.stdout.splitlines() == [f"the streams schema is at version {SCHEMA_VERSION}"]
    granted = starter("db", "grant", url=url)
    assert granted.returncode == 0, granted.stderr
    with psycopg.connect(url) as db:
        roles = {r[0] for r in db.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'notify_%'")}
        assert set(ROLES) <= roles
        assert db.execute("SELECT count(*) FROM notify_schema_migrations").fetchone() == (len(MIGRATIONS),)


def test_a_worker_refuses_transitions_that_are_not_its_own_until_migrated(postgres: Databases, tmp_path: Path) -> None:
    """The handling transitions' one source is the code: the database's copy is checked, and `db migrate` writes it."""
    url = postgres.empty()
    assert starter("db", "migrate", url=url).returncode == 0
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("INSERT INTO notify_handling_transitions VALUES ('Completed', 'AvailableByDefault')")
    env = {**unconfigured_environment(), "NOTIFY_STREAMS_URL": url}
    run = [sys.executable, str(ROOT / "worker.py")]
    refused = subprocess.run(run, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (refused.returncode, refused.stderr.strip()) == (
        1,
        "error: the streams database's handling transitions are not this version's: run "
        f"`{shlex.join([sys.executable, str(ROOT / 'starter.py'), 'db', 'migrate'])}`",
    )
    assert starter("db", "migrate", url=url).returncode == 0
    with psycopg.connect(url) as db:
        rows = set(db.execute("SELECT to_status, from_status FROM notify_handling_transitions").fetchall())
    assert rows == {(to, from_) for to, froms in ALLOWED_TRANSITIONS.items() for from_ in froms}


def test_a_worker_refuses_a_schema_that_is_behind(postgres: Databases, tmp_path: Path) -> None:
    url = postgres.empty()
    env = {**unconfigured_environment(), "NOTIFY_STREAMS_URL": url}
    result = subprocess.run(
        [sys.executable, str(ROOT / "worker.py")], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    migrate = shlex.join([sys.executable, str(ROOT / "starter.py"), "db", "migrate"])
    assert result.stderr.strip() == (
        f"error: the streams schema is at version 0, this version needs {SCHEMA_VERSION}: run `{migrate}`"
    )


async def test_migration_11_holds_the_notification_id_in_its_column_and_reads_back_the_same(
    postgres: Databases,
) -> None:
    """Records written at schema 10 read back as they were written: the notification-id tag moved from its row to
    the record's column (of a record with two, the lowest; the other stays a row), payloads still text; and so does
    their handling, details still text."""
    url = postgres.empty()
    long = json.dumps({"body": "x" * 300})
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("SET search_path = public, pg_temp")
        db.execute("CREATE TABLE notify_schema_migrations (version integer PRIMARY KEY, name text NOT NULL)")
        for version in range(1, 11):
            db.execute(MIGRATIONS[version].read_text())
            db.execute("INSERT INTO notify_schema_migrations VALUES (%s, %s)", (version, MIGRATIONS[version].name))
        for stream, record_id, payload, tags, strategy in (
            ("notification-event", "n-1", long, [["notification-id", "n-1"], ["entity-id", "e"]], "None"),
            ("notification-view", "n-1", '{"status": "sent"}', [["notification-id", "n-1"]], "PruneIfFoundById"),
            ("email-event", "n-2.1", '{"a": 1}', [["notification-id", "n-3"], ["notification-id", "n-2"]], "None"),
            ("entity-directory", "e", '{"id": "e"}', [["entity-id", "e"]], "DoNotWriteIfFoundById"),
        ):
            db.execute(
                "SELECT * FROM notify_put(%s, %s, 'T', %s, %s, %s, 1)",
                (stream, record_id, payload, json.dumps(tags), strategy),
            )
        db.execute(
            "INSERT INTO notify_handling_transitions VALUES ('Running', 'AvailableByDefault'), ('Failed', 'Running')"
        )
        for status, details in (("Running", "went"), ("Failed", long)):
            db.execute("SELECT * FROM notify_transition('notification-event', 1, 'c', %s, %s)", (status, details))
    assert await migrate(url) == [MIGRATIONS[v].name for v in range(11, SCHEMA_VERSION + 1)]
    with psycopg.connect(url) as db:
        assert db.execute(
            "SELECT stream, notification_id, payload IS NOT NULL, packed IS NULL FROM notify_records"
            " ORDER BY internal_id"
        ).fetchall() == [
            ("notification-event", "n-1", True, True),
            ("notification-view", "n-1", True, True),
            ("email-event", "n-2", True, True),
            ("entity-directory", None, True, True),
        ]
        assert db.execute(
            "SELECT internal_id, value FROM notify_record_tags WHERE name = 'notification-id'"
        ).fetchall() == [(3, "n-3")]
        assert db.execute("SELECT to_regclass('notify_record_ids')").fetchone() == (None,)
    async with open_store(url) as store:
        [event] = await store.read_tagged([StreamName.NOTIFICATION_EVENT], [Tag(name="notification-id", value="n-1")])
        assert event.payload == long
        assert event.tags == (Tag(name="entity-id", value="e"), Tag(name="notification-id", value="n-1"))
        [view] = await store.reader(StreamName.NOTIFICATION_VIEW).by_id("n-1")
        assert view.tags == (Tag(name="notification-id", value="n-1"),)
        [email] = await store.reader(StreamName.EMAIL_EVENT).by_id("n-2.1")
        assert email.tags == (Tag(name="notification-id", value="n-2"), Tag(name="notification-id", value="n-3"))
        [entry] = await store.reader(StreamName.ENTITY_DIRECTORY).by_id("e")
        assert (entry.payload, entry.tags) == ('{"id": "e"}', (Tag(name="entity-id", value="e"),))
        # what was written with a strategy at schema 10 is found by the same strategy now
        again = await store.writer(StreamName.ENTITY_DIRECTORY).put(
            "e", Thing(value=1), strategy=S.DO_NOT_WRITE_IF_FOUND_BY_ID
        )
        assert again.internal_id is None and again.existing_ids == (entry.internal_id,)
        # handling written at schema 10 reads back, and goes on: a record's entries in order, long details packed
        handling = store.handling(StreamName.NOTIFICATION_EVENT)
        await handling.begin(event.internal_id, "c", long)
        assert [(e.status, e.details) for e in await handling.history(event.internal_id)] == [
            ("Running", "went"),
            ("Failed", long),
            ("AvailableAfterFailure", "retrying"),
            ("Running", long),
        ]
    with psycopg.connect(url) as db:
        assert db.execute("SELECT details IS NULL FROM notify_handling ORDER BY entry_id").fetchall() == [
            (False,),
            (False,),
            (False,),
            (True,),
        ]


def _rows_of_every_table(db: psycopg.Connection) -> dict[str, list[str]]:
    """Each table of the streams' schema, its rows as text, in order."""
    tables = [
        name
        for (name,) in db.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' ORDER BY 1"
        )
    ]
    return {
        table: [
            row for (row,) in db.execute(sql.SQL("SELECT t::text FROM {} t ORDER BY 1").format(sql.Identifier(table)))
        ]
        for table in tables
    }


MIGRATIONS_WRITE = {"notify_schema_migrations", "notify_handling_transitions", "notify_stream_writers"}
"""The tables whose rows a migration writes: the migrations' own list, the transitions `db migrate` writes again, and
the streams each role writes (a new stream's writers)."""


def _kept(before: dict[str, list[str]], after: dict[str, list[str]]) -> set[str]:
    """Check that a migration kept every row of every table but those it writes (`MIGRATIONS_WRITE`), and took no
    stream from a role; the tables it kept."""
    unchanged = set(before) - MIGRATIONS_WRITE
    assert {table: after[table] for table in unchanged} == {table: before[table] for table in unchanged}
    assert set(before["notify_stream_writers"]) <= set(after["notify_stream_writers"])
    return unchanged


async def test_migration_12_keeps_everything_and_adds_the_contents(postgres: Databases) -> None:
    """A store at schema 11, with records of every kind, their tags, handling, ids and turns, is migrated to 12: every
    row of every table is as it was (but those the migrations write: `_kept`), the roles read and write as before, and
    contents are put and read."""
    url = postgres.empty()
    long = json.dumps({"body": "x" * 300})
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("SET search_path = public, pg_temp")
        db.execute("CREATE TABLE notify_schema_migrations (version integer PRIMARY KEY, name text NOT NULL)")
        for version in range(1, 12):
            db.execute(MIGRATIONS[version].read_text())
            db.execute("INSERT INTO notify_schema_migrations VALUES (%s, %s)", (version, MIGRATIONS[version].name))
        db.execute(
            "INSERT INTO notify_handling_transitions VALUES ('Running', 'AvailableByDefault'), ('Failed', 'Running')"
        )
        db.execute(
            "SELECT notify_put_batch('notification-event', ARRAY['n-1', 'n-1'], ARRAY['T', 'U'], ARRAY[%s, NULL],"
            " ARRAY[1], ARRAY['entity-id'], ARRAY['e'], ARRAY['n-1', 'n-1'], ARRAY[NULL, %s]::bytea[])",
            (long, pack(long)),
        )
        db.execute(
            "SELECT * FROM notify_put('notification-view', 'n-1', 'V', '{}', '[]', 'PruneIfFoundById', 1, 'n-1')"
        )
        db.execute("SELECT * FROM notify_put('entity-directory', 'e', 'D', '{}', '[]', 'DoNotWriteIfFoundById', 1)")
        for status, details in (("Running", "went"), ("Failed", long)):
            db.execute("SELECT * FROM notify_transition('notification-event', 1, 'c', %s, %s)", (status, details))
        db.execute("SELECT notify_next_unique_id('email-operation')")
        db.execute("SELECT notify_next_turn('k', 1)")
        before = _rows_of_every_table(db)
    assert await migrate(url) == [MIGRATIONS[v].name for v in range(12, SCHEMA_VERSION + 1)]
    with psycopg.connect(url) as db:
        after = _rows_of_every_table(db)
    unchanged = _kept(before, after)
    assert {"notify_records", "notify_record_tags", "notify_handling", "notify_unique_ids", "notify_turns"} <= unchanged
    assert set(after) - set(before) == {"notify_contents", "notify_content_refs"}
    assert set(after["notify_schema_migrations"]) == {
        *before["notify_schema_migrations"],
        *(f"({v},{MIGRATIONS[v].name})" for v in range(12, SCHEMA_VERSION + 1)),
    }
    urls = AccessUrls(*(as_role(url, f"notify_{role}") for role in ("producer", "consumer", "handler")))
    async with PostgresStreamStore(urls) as store:
        [event, packed] = await store.read_tagged(
            [StreamName.NOTIFICATION_EVENT], [Tag(name="notification-id", value="n-1")]
        )
        assert (event.payload, event.tags) == (
            long,
            (Tag(name="entity-id", value="e"), Tag(name="notification-id", value="n-1")),
        )
        assert packed.payload == long
        assert [e.status for e in await store.handling(StreamName.NOTIFICATION_EVENT).history(event.internal_id)] == [
            "Running",
            "Failed",
        ]
        assert await store.writer(StreamName.EMAIL_OPERATION).next_unique_id() == 2
        [digest] = await store.put_contents("n-1", [b"attached"])
        assert await store.content(digest) == b"attached"


def test_sqlite_is_not_migrated_by_hand(tmp_path: Path) -> None:
    result = starter("db", "migrate", url=f"sqlite:///{tmp_path / 'streams.db'}")
    assert result.returncode == 2
    assert "only PostgreSQL is migrated and granted this way" in result.stderr


# -- roles --------------------------------------------------------------------------------------------------------


@pytest.fixture
def database(postgres: Databases) -> str:
    return postgres.fresh()


@pytest.fixture
def streams_url(database: str) -> str:
    """The conftest's `settings`, `store` and `api` on this module's database, each handle as its own role."""
    return database


async def test_a_producer_appends_and_cannot_read(database: str) -> None:
    async with open_store(as_role(database, "notify_producer")) as store:
        writer = store.writer(StreamName.EMAIL_EVENT)
        assert await writer.next_unique_id() == 1
        put = await writer.put("1", Thing(value=1))
        assert put.internal_id is not None
        with pytest.raises(StoreUnusable, match="permission denied"):
            await store.reader(StreamName.EMAIL_EVENT).by_id("1")
        with pytest.raises(StoreUnusable, match="permission denied"):
            await store.handling(StreamName.EMAIL_EVENT).transition(put.internal_id, "c", HandlingStatus.RUNNING)
    with psycopg.connect(as_role(database, "notify_producer")) as db:
        for statement in (
            "INSERT INTO notify_records (stream, type, payload) VALUES ('email-event', 'T', '{}')",
            "UPDATE notify_unique_ids SET last_id = 0",
            "DELETE FROM notify_records",
            "SELECT payload FROM notify_records",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                db.execute(statement)
            db.rollback()


async def test_a_consumer_reads_and_cannot_write(database: str) -> None:
    async with open_store(database) as admin:
        put = await admin.writer(StreamName.NOTIFICATION_EVENT).put("1", Thing(value=7))
        assert put.internal_id is not None
    async with open_store(as_role(database, "notify_consumer")) as store:
        record = await store.reader(StreamName.NOTIFICATION_EVENT).latest("1")
        assert record is not None and record.object(Thing).value == 7
        assert await store.handling(StreamName.NOTIFICATION_EVENT).status(put.internal_id, "c") == "AvailableByDefault"
        with pytest.raises(StoreUnusable, match="permission denied"):
            await store.writer(StreamName.NOTIFICATION_EVENT).put("2", Thing(value=8))
        with pytest.raises(StoreUnusable, match="permission denied"):
            await store.writer(StreamName.NOTIFICATION_EVENT).next_unique_id()
        with pytest.raises(StoreUnusable, match="permission denied"):
            await store.handling(StreamName.NOTIFICATION_EVENT).transition(put.internal_id, "c", HandlingStatus.RUNNING)
    with psycopg.connect(as_role(database, "notify_consumer")) as db:
        for statement in (
            "UPDATE notify_records SET payload = '{}'",
            "DELETE FROM notify_records",
            "INSERT INTO notify_handling (stream, internal_record_id, concern, status, details)"
            " VALUES ('s', 1, 'c', 'Completed', '')",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                db.execute(statement)
            db.rollback()


async def test_only_a_handler_keeps_handling_and_it_cannot_touch_records(database: str) -> None:
    async with open_store(database) as admin:
        put = await admin.writer(StreamName.EMAIL_OPERATION).put("1", Thing(value=1))
        assert put.internal_id is not None
    async with open_store(as_role(database, "notify_handler")) as store:
        handling = store.handling(StreamName.EMAIL_OPERATION)
        await handling.transition(put.internal_id, "send-email", HandlingStatus.RUNNING)
        await handling.transition(put.internal_id, "send-email", HandlingStatus.COMPLETED, "done")
        assert [e.status for e in await handling.history(put.internal_id)] == ["Running", "Completed"]
        with pytest.raises(StoreUnusable, match="permission denied"):
            await store.reader(StreamName.EMAIL_OPERATION).by_id("1")
        with pytest.raises(StoreUnusable, match="permission denied"):
            await store.writer(StreamName.EMAIL_OPERATION).put("2", Thing(value=2))
    with psycopg.connect(as_role(database, "notify_handler")) as db:
        for statement in (
            "UPDATE notify_handling SET status = 'Running'",
            "DELETE FROM notify_handling",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                db.execute(statement)
            db.rollback()


async def test_a_producer_puts_contents_and_cannot_read_them_nor_write_their_tables(database: str) -> None:
    """Contents go in through notify_put_contents alone, which files each under the digest it computes itself: a
    producer holds no table of them, and cannot read back what it put; a consumer and a handler read them."""
    pdf = b"%PDF-1.7\n" + bytes(range(256)) * 64
    digest = hashlib.sha256(pdf).hexdigest()
    async with open_store(as_role(database, "notify_producer")) as store:
        assert await store.put_contents("n-1", [pdf, pdf]) == [digest, digest]
        with pytest.raises(StoreUnusable, match="permission denied"):
            await store.content(digest)
    with psycopg.connect(as_role(database, "notify_producer"), autocommit=True) as db:
        for statement in (
            f"INSERT INTO notify_contents VALUES ('{'0' * 64}', '\\x00')",
            f"INSERT INTO notify_content_refs (notification_id, sha256) VALUES ('n-2', '{digest}')",
            f"UPDATE notify_contents SET content = '\\x00' WHERE sha256 = '{digest}'",
            "DELETE FROM notify_content_refs",
            "SELECT content FROM notify_contents",
            "SELECT notification_id FROM notify_content_refs",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                db.execute(statement)
        with pytest.raises(psycopg.Error, match="none of them null") as refused:
            db.execute("SELECT notify_put_contents('n-1', ARRAY[NULL]::bytea[])")
        assert refused.value.sqlstate == "NT002"
    for role in ("notify_consumer", "notify_handler"):
        async with open_store(as_role(database, role)) as store:
            assert await store.content(digest) == pdf
            with pytest.raises(StoreUnusable, match="permission denied"):
                await store.put_contents("n-2", [b"not theirs to put"])
        with psycopg.connect(as_role(database, role), autocommit=True) as db:
            for statement in (
                f"INSERT INTO notify_contents VALUES ('{'0' * 64}', '\\x00')",
                "DELETE FROM notify_contents",
                "SELECT notification_id FROM notify_content_refs",
            ):
                with pytest.raises(errors.InsufficientPrivilege):
                    db.execute(statement)
    with psycopg.connect(database) as db:
        assert db.execute("SELECT notification_id, sha256 FROM notify_content_refs").fetchall() == [("n-1", digest)]
        assert db.execute("SELECT count(*) FROM notify_contents").fetchone() == (1,)


async def test_a_prune_waits_for_a_put_that_names_a_content_it_would_remove(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put that names a content already there, under way as a prune looks for contents no notification names: the
    prune waits for it (`CONTENTS_LOCK`), and then sees the name; it never removes what a put has just named."""
    monkeypatch.setattr(streams.store, "ORPHANED_AFTER", timedelta(0))  # the first name an orphan at once
    async with open_store(database) as owner:
        [digest] = await owner.put_contents("never-requested", [b"shared"])
        with psycopg.connect(database, autocommit=True) as watcher:
            cut = watcher.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
            with psycopg.connect(as_role(database, "notify_producer")) as putter:  # its transaction left open
                putter.execute("SELECT notify_put_contents('requested-now', ARRAY[%s]::bytea[])", (b"shared",))
                pruning = asyncio.create_task(owner.prune(cut))
                waiting = False
                for _ in range(100):
                    await asyncio.sleep(0.05)
                    waiting = watcher.execute(
                        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted)"
                    ).fetchone() == (True,)
                    if waiting:
                        break
                assert waiting and not pruning.done()
                putter.commit()
                assert await pruning == Pruned(contents=0)
        assert await owner.content(digest) == b"shared"
    with psycopg.connect(database) as db:
        assert db.execute("SELECT notification_id FROM notify_content_refs").fetchall() == [("requested-now",)]


async def test_a_record_holds_its_notification_id_in_a_column_and_a_long_payload_packed(database: str) -> None:
    """As the rows hold them: the notification-id tag in the record's column (no tag row), a long payload packed
    unless SQL reads it as JSON (a view); a tag row of that name is refused, whoever writes it."""
    nid = Tag(name="notification-id", value="n-1")
    long = Thing(value=10**300)  # 300 digits
    tags = [nid, Tag(name="entity-id", value="e")]
    async with open_store(as_role(database, "notify_producer")) as store:  # notify_put_batch, then notify_put_all
        await store.writer(StreamName.NOTIFICATION_EVENT).put("n-1", long, tags=tags)
        await store.writer(StreamName.NOTIFICATION_VIEW).put("n-1", long, tags=tags, strategy=S.PRUNE_IF_FOUND_BY_ID)
        with pytest.raises(ValueError, match="one notification-id tag at most"):
            await store.writer(StreamName.EMAIL_EVENT).put("n-1.2", Thing(value=2), tags=[nid, nid])
    async with open_store(database) as store:  # notify_write
        await store.steps().write([store.writer(StreamName.EMAIL_EVENT).record("n-1.1", Thing(value=1), tags=[nid])])
    with psycopg.connect(database) as db:
        rows = db.execute(
            "SELECT stream, notification_id, payload IS NULL, packed IS NULL,"
            " (SELECT array_agg(t.name) FROM notify_record_tags t WHERE t.internal_id = r.internal_id)"
            " FROM notify_records r ORDER BY internal_id"
        ).fetchall()
        assert rows == [
            ("notification-event", "n-1", True, False, ["entity-id"]),
            ("notification-view", "n-1", False, True, ["entity-id"]),
            ("email-event", "n-1", False, True, None),
        ]
    with psycopg.connect(as_role(database, "notify_producer"), autocommit=True) as db:
        with pytest.raises(errors.CheckViolation, match="notify_record_tags_not_held"):
            db.execute(
                "SELECT * FROM notify_put('email-event', '2', 'T', '{}', '[[\"notification-id\", \"n\"]]', 'None', 1)"
            )
        with pytest.raises(errors.CheckViolation, match="notify_records_read_by_sql_unpacked"):
            db.execute("SELECT * FROM notify_put('notification-view', '2', 'T', NULL, '[]', 'None', 1, 'n', '\\x01')")
    async with open_store(database) as store:
        records = await store.read_tagged([StreamName.NOTIFICATION_EVENT, StreamName.NOTIFICATION_VIEW], [nid])
        assert [(r.object(Thing), r.tags) for r in records] == [(long, (tags[1], tags[0]))] * 2


async def test_long_details_are_packed_and_read_back(database: str) -> None:
    """A handling entry's details from Python are packed when long, by every function that writes them; what SQL
    writes itself ('retrying'), and short details, stay text."""
    long = "x" * 200 + " the outcome"
    async with open_store(database) as owner:
        put = await owner.writer(StreamName.EMAIL_OPERATION).put("1", Thing(value=1))
        other = await owner.writer(StreamName.EMAIL_OPERATION).put("2", Thing(value=2))
    assert put.internal_id is not None and other.internal_id is not None
    async with open_store(as_role(database, "notify_handler")) as store:
        handling = store.handling(StreamName.EMAIL_OPERATION)
        assert await handling.begin(put.internal_id, "c", long) is None  # notify_begin
        failed = await handling.transition(put.internal_id, "c", HandlingStatus.FAILED, long)  # notify_transition
        assert failed.details == long
        await handling.begin(put.internal_id, "c", "short")  # 'retrying', then Running
    urls = AccessUrls(*(as_role(database, f"notify_{role}") for role in ("producer", "consumer", "handler")))
    async with PostgresStreamStore(urls) as store:  # notify_move_all, on the handler's connection
        handling = store.handling(StreamName.EMAIL_OPERATION)
        await store.steps().write([], after=[handling.move(put.internal_id, "c", HandlingStatus.COMPLETED, long)])
        completed = await handling.begin(put.internal_id, "c")
        assert completed is not None and completed.details == long
    async with open_store(database) as owner:  # notify_write, one role
        handling = owner.handling(StreamName.EMAIL_OPERATION)
        await owner.steps().write([], before=[handling.beginning(other.internal_id, "c", long)])
        history = await handling.history(put.internal_id, "c")
        assert [(e.status, e.details) for e in history] == [
            ("Running", long),
            ("Failed", long),
            ("AvailableAfterFailure", "retrying"),
            ("Running", "short"),
            ("Completed", long),
        ]
        assert [e.details for e in await handling.history(other.internal_id)] == [long]
    with psycopg.connect(database) as db:
        assert db.execute(
            "SELECT details, details_packed IS NOT NULL FROM notify_handling ORDER BY entry_id"
        ).fetchall() == [(None, True), (None, True), ("retrying", False), ("short", False), (None, True), (None, True)]
        with pytest.raises(errors.CheckViolation, match="notify_handling_details_or_packed"):
            db.execute(
                "SELECT * FROM notify_transition('email-operation', %s, 'd', 'Running', 'a', '\\x01')",
                (put.internal_id,),
            )


def test_puts_of_the_same_ids_in_any_order_take_their_turns_in_one_order(database: str) -> None:
    """notify_put_all locks every id it puts with a strategy before it puts any, in the order of their keys: a call
    that puts ids in another order then never holds one that the other call waits for while waiting for another."""
    with psycopg.connect(database, autocommit=True) as owner:
        keys: dict[str, int] = dict(
            owner.execute("SELECT i, notify_id_key('email-event', i) FROM unnest(ARRAY['1', '2']) i").fetchall()
        )
        ids = sorted(keys, key=keys.__getitem__, reverse=True)  # the record with the larger key first
        with psycopg.connect(database) as holder, psycopg.connect(as_role(database, "notify_producer")) as putter:
            holder.execute("SELECT pg_advisory_xact_lock(%s)", (keys[ids[0]],))
            pid = putter.info.backend_pid
            put = threading.Thread(
                target=putter.execute,
                args=(
                    "SELECT notify_put_all(ARRAY['email-event', 'email-event'], %s, ARRAY['T', 'T'],"
                    " ARRAY['{}', '{}'], ARRAY['[]', '[]']::jsonb[],"
                    " ARRAY['DoNotWriteIfFoundById', 'DoNotWriteIfFoundByIdAndType'], ARRAY[1, 1],"
                    " ARRAY[NULL, NULL]::text[], ARRAY[NULL, NULL]::bytea[])",
                    (ids,),
                ),
            )
            put.start()
            locks: list[tuple[bool, int]] = []
            for _ in range(100):
                locks = owner.execute(
                    "SELECT granted, (classid::bigint << 32) | objid::bigint FROM pg_locks"
                    " WHERE locktype = 'advisory' AND pid = %s ORDER BY granted",
                    (pid,),
                ).fetchall()
                if locks and not locks[0][0]:  # waiting
                    break
                time.sleep(0.05)
            holder.commit()
            put.join(10)
            putter.commit()
    # it waits for the first record's id, holding the second's, whose key comes first
    assert locks == [(False, keys[ids[0]]), (True, keys[ids[1]])]
    with psycopg.connect(database) as db:
        assert db.execute("SELECT record_id FROM notify_records ORDER BY internal_id").fetchall() == [(i,) for i in ids]


async def test_the_functions_do_no_more_than_their_names_say(database: str) -> None:
    async with open_store(database) as admin:
        kept = await admin.writer(StreamName.CLIENT_OPERATION).put("42", Thing(value=42))
        assert kept.internal_id is not None
    async with open_store(as_role(database, "notify_producer")) as producer:
        writer = producer.writer(StreamName.CLIENT_OPERATION)
        for retention in (0, 1):  # a producer appends: it cannot prune a stream that keeps everything
            with pytest.raises(ValueError, match="cannot be pruned"):
                await writer.put("42", Thing(value=0), strategy=S.PRUNE_IF_FOUND_BY_ID, retention=retention)
        view = producer.writer(StreamName.NOTIFICATION_VIEW)
        with pytest.raises(ValueError, match="cannot be pruned to 0"):
            await view.put("42", Thing(value=0), strategy=S.PRUNE_IF_FOUND_BY_ID, retention=0)
    with psycopg.connect(as_role(database, "notify_producer"), autocommit=True) as db:
        with pytest.raises(psycopg.Error, match="unknown existing-record strategy"):
            db.execute("SELECT * FROM notify_put('client-operation', '42', 'T', '{}', '[]', 'Prune', 0)")
        with pytest.raises(errors.InsufficientPrivilege):  # no temporary table can stand in for one of ours
            db.execute("CREATE TEMPORARY TABLE notify_records (stream text, record_id text)")
    with psycopg.connect(as_role(database, "notify_handler"), autocommit=True) as db:
        refusals = (
            ("Completed", kept.internal_id, "NT001"),
            ("Bogus", kept.internal_id, "NT001"),
            ("Running", 999_999, "NT003"),
        )
        for status, record, sqlstate in refusals:
            with pytest.raises(psycopg.Error) as refused:
                db.execute("SELECT * FROM notify_transition('client-operation', %s, 'c', %s, '')", (record, status))
            assert refused.value.sqlstate == sqlstate
    async with open_store(database) as admin:
        assert [r.internal_id for r in await admin.reader(StreamName.CLIENT_OPERATION).by_id("42")] == [
            kept.internal_id
        ]
        assert await admin.handling(StreamName.CLIENT_OPERATION).history(kept.internal_id) == []


async def test_a_schema_of_its_own(postgres: Databases) -> None:
    """The streams in a schema other than public: the roles find them there."""
    url = postgres.empty()
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("CREATE SCHEMA notify")
    owner = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3Dnotify"
    assert starter("db", "migrate", url=owner).returncode == 0
    assert starter("db", "grant", url=owner).returncode == 0
    with psycopg.connect(url) as db:
        assert db.execute("SELECT to_regclass('notify.notify_records') IS NOT NULL").fetchone() == (True,)
        assert db.execute("SELECT to_regclass('public.notify_records')").fetchone() == (None,)
    async with open_store(
        url,
        producer_url=as_role(url, "notify_producer"),
        consumer_url=as_role(url, "notify_consumer"),
        handler_url=as_role(url, "notify_handler"),
    ) as store:
        put = await store.writer(StreamName.EMAIL_EVENT).put("1", Thing(value=1))
        assert put.internal_id is not None
        assert (await store.reader(StreamName.EMAIL_EVENT).latest("1")) is not None
        await store.handling(StreamName.EMAIL_EVENT).transition(put.internal_id, "c", HandlingStatus.RUNNING)
        # a step's writes, each on its role's connection
        written = await store.steps().write(
            [store.writer(StreamName.NOTIFICATION_SAGA).record("n", Thing(value=2), take_up="saga")],
            after=[store.handling(StreamName.EMAIL_EVENT).move(put.internal_id, "c", HandlingStatus.COMPLETED, "done")],
        )
        assert written.moved == [True]
        saga = written.puts[0].record_internal_id
        assert await store.handling(StreamName.NOTIFICATION_SAGA).status(saga, "saga") == HandlingStatus.RUNNING
        # puts that fail (the producer may not write the directory) leave the moves before them made, and those
        # after them not: a step's completion never comes before what it records
        handling = store.handling(StreamName.NOTIFICATION_SAGA)
        with pytest.raises(StoreUnusable):
            await store.steps().write(
                [store.writer(StreamName.ENTITY_DIRECTORY).record("e", Thing(value=3))],
                before=[handling.move(saga, "other", HandlingStatus.RUNNING)],
                after=[handling.move(saga, "saga", HandlingStatus.COMPLETED, "done")],
            )
        assert await handling.status(saga, "other") == HandlingStatus.RUNNING
        assert await handling.status(saga, "saga") == HandlingStatus.RUNNING


async def test_the_api_requests_reads_and_lists_with_each_handle_as_its_own_role(api: Api) -> None:
    """The API on PostgreSQL as deployed: the client's records as notify_producer, the views, audit and pages as
    notify_consumer, keys checked as notify_consumer (issued by the owner), sagas handled as notify_handler."""
    ids = []
    for who in ("user-1", "user-2", "user-2"):
        sent = await api.call("POST", "/v1/notifications", json={"entity": who, "subject": "By role", "body": "B"})
        assert sent.status_code == 202, sent.text
        ids.append(sent.json()["id"])
    views = [await api.outcome(nid) for nid in ids]
    assert [v["status"] for v in views] == ["sent"] * 3
    events = (await api.call("GET", f"/v1/notifications/{ids[0]}/events", key="reader")).json()
    assert events[0]["type"] == "ExecuteOpRequestedEvent" and events[-1]["type"] == "NotificationSnapshot"
    emailed = (await api.call("GET", "/v1/audit/email", params={"address": "ada@example.com"}, key="reader")).json()
    assert sorted(a["notification_id"] for a in emailed) == sorted(ids)  # both entities have Ada's address
    posted = (await api.call("GET", "/v1/audit/slack", params={"channel": "acme/C0123"}, key="reader")).json()
    assert [a["notification_id"] for a in posted] == [ids[0]]
    page = (await api.call("GET", "/v1/notifications", params={"entity": "user-2", "limit": 1}, key="reader")).json()
    assert [v["id"] for v in page["items"]] == [ids[2]] and page["next_cursor"] is not None
    assert (await api.call("GET", "/v1/notifications", key="sender")).status_code == 403
    assert (await api.call("GET", "/v1/notifications", key="not-a-key")).status_code == 401


async def test_the_api_records_an_entity_as_the_owner_of_the_streams(api: Api) -> None:
    """PUT /v1/entities on a deployment of roles: the directory is written as the owner, which alone may."""
    entry = {"name": "Grace", "email": "grace@example.com", "channels": {"email": "send"}}
    put = await api.call("PUT", "/v1/entities/user-3", json=entry)
    assert put.status_code == 200, put.text
    recorded = await lookup(api.store.reader(StreamName.ENTITY_DIRECTORY), "user-3")  # read as notify_consumer
    assert recorded is not None and recorded.model_dump(mode="json", exclude_none=True) == {"id": "user-3", **entry}


# -- several workers ----------------------------------------------------------------------------------------------

ENTITY = DirectoryEntry.model_validate(
    {
        "id": "ops",
        "name": "Ops",
        "email": "ops@example.com",
        "slack": {"workspace": "acme", "channel": "C0123"},
        "channels": {"email": "send", "slack": "send"},
    }
)


@pytest.fixture
def sinks() -> Iterator[tuple[MailSink, SlackSink]]:
    with MailSink() as mail, SlackSink() as slack:
        yield mail, slack


@pytest.fixture
def worker_env(dev_env: WorkflowEnvironment, database: str, sinks: tuple[MailSink, SlackSink]) -> dict[str, str]:
    """What `worker.py` processes sharing one Temporal and one database, each handle as its own role, are given."""
    mail, slack = sinks
    return {
        **unconfigured_environment(),
        "NOTIFY_TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "NOTIFY_TASK_QUEUE": task_queue(database),
        "NOTIFY_STREAMS_URL": database,
        **{f"NOTIFY_{name.upper()}": url for name, url in role_urls(database).items()},
        "NOTIFY_SMTP_HOST": mail.host,
        "NOTIFY_SMTP_PORT": str(mail.port),
        "NOTIFY_SLACK_API_URL": slack.api_url,
        "NOTIFY_SLACK_TOKEN": "xoxb-shared",
        "NOTIFY_SLACK_MESSAGES_PER_SECOND": "100",
        "NOTIFY_STICKY_QUEUE_TIMEOUT_SECONDS": "1",  # a killed worker's sagas go on after a second, not ten
    }


def task_queue(database: str) -> str:
    """The workers' and client's queue on the session's dev server: one per test, as each test has its database."""
    return f"shared-{urlsplit(database).path.lstrip('/')}"


def client_settings(database: str) -> Settings:
    return Settings(_env_file=None, task_queue=task_queue(database), streams_url=database, **role_urls(database))


def request_by_sql(database: str, entity_id: str, subject: str = "Shared", **more: str) -> str:
    """A request as an outside producer makes it, holding nothing but notify_client: one SQL call, no Temporal."""
    names = ["entity_id", "subject", "body", *more]
    call = ", ".join(f"{name} => %s" for name in names)
    with psycopg.connect(as_role(database, "notify_client"), autocommit=True) as db:
        row = db.execute(
            f"SELECT notify_request({call})", [entity_id, subject, "Two workers, one saga each.", *more.values()]
        ).fetchone()
    assert row is not None
    return str(row[0])


async def test_a_saga_outlives_its_worker(
    dev_env: WorkflowEnvironment,
    database: str,
    worker_env: dict[str, str],
    sinks: tuple[MailSink, SlackSink],
    tmp_path: Path,
) -> None:
    """The worker that started a scheduled saga is killed; another finishes it, and nothing is lost or sent twice."""
    mail, slack = sinks
    first = start_worker(worker_env, tmp_path)
    second = None
    try:
        settings = client_settings(database)
        async with settings.open_streams() as store, owner_store(settings, store) as owner:
            await import_entries(owner, [ENTITY])
            client = NotificationClient(store, dev_env.client, settings)
            at = datetime.now(UTC) + timedelta(seconds=3)
            nid = await client.request(
                SendNotificationToEntityOp(entity_id="ops", subject="Later", body="B", send_at=at)
            )
            assert (await client.status(nid))["status"] == "scheduled"  # the first worker answered
            first.process.kill()  # no graceful shutdown
            first.ended(timeout=30)
            second = start_worker(worker_env, tmp_path)
            view = await client.result(nid)
            events = [r.type for r in await client.events(nid)]
    finally:
        for worker in (first, second):
            if worker is not None:
                worker.stop()
    assert view.status == "sent" and view.completed_at is not None and view.completed_at >= at
    assert len(mail.messages) == 1 and len(slack.messages) == 1
    assert events.count("SendNotificationRequestedEvent") == 1
    assert events.count("SendEmailRequestedEvent") == events.count("SucceededInSendingEmailEvent") == 1


async def test_two_workers_share_the_work_with_nothing_lost_or_doubled(
    dev_env: WorkflowEnvironment,
    database: str,
    worker_env: dict[str, str],
    sinks: tuple[MailSink, SlackSink],
    tmp_path: Path,
) -> None:
    mail, slack = sinks
    workers = [start_worker(worker_env, tmp_path) for _ in range(2)]
    try:
        settings = client_settings(database)
        async with settings.open_streams() as store, owner_store(settings, store) as owner:
            await import_entries(owner, [ENTITY])
            client = NotificationClient(store, dev_env.client, settings)
            op = SendNotificationToEntityOp(entity_id="ops", subject="Shared", body="Two workers, one saga each.")
            # half start their sagas themselves, racing both workers' handlers; half are records in the stream alone
            requested = await asyncio.gather(
                *(
                    client.request(op) if i % 2 else asyncio.to_thread(request_by_sql, database, "ops")
                    for i in range(24)
                )
            )
            ids = list(requested)
            views = [await client.result(i) for i in ids]  # a saga not started yet is waited for
            assert [v.status for v in views] == ["sent"] * 24
            requests = await store.reader(StreamName.CLIENT_OPERATION).by_tags()
            takers = [
                [
                    e
                    for e in await store.handling(StreamName.CLIENT_OPERATION).history(r.internal_id)
                    if e.status == "Running"
                ]
                for r in requests
            ]
            email_events = await store.reader(StreamName.EMAIL_EVENT).by_tags()
            operations = await store.reader(StreamName.EMAIL_OPERATION).by_tags()
            histories = [
                await store.handling(StreamName.EMAIL_OPERATION).history(record.internal_id) for record in operations
            ]
            handled_by = {e.details.rpartition("by worker ")[2] for h in histories for e in h if e.status == "Running"}
    finally:
        outputs = [worker.stop() for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    assert len(mail.messages) == 24 and len(slack.messages) == 24
    assert len({m.message["Message-ID"] for m in mail.messages}) == 24
    assert Counter(e.type for e in email_events) == {"SendEmailRequestedEvent": 24, "SucceededInSendingEmailEvent": 24}
    assert len({e.record_id for e in email_events}) == 24
    assert len(handled_by) == 2, handled_by  # both workers delivered some
    assert [len(t) for t in takers] == [1] * 24  # each request taken up once: by its saga, or by one handler
    assert len(operations) == 24
    assert all([e.status for e in h][-2:] == ["Running", "Completed"] for h in histories)
    identity = ids[0].rpartition("-")[0]
    assert sorted(ids, key=lambda i: int(i.rpartition("-")[2])) == [f"{identity}-{i}" for i in range(1, 25)]


@pytest.mark.parametrize(
    ("error", "seen_as"),
    [
        (errors.AdminShutdown, StoreUnavailable),  # the server going down
        (errors.SerializationFailure, StoreUnavailable),
        (errors.ReadOnlySqlTransaction, StoreUnavailable),  # a standby, after a failover
        (errors.IdleInTransactionSessionTimeout, StoreUnavailable),
        (errors.TooManyConnections, StoreUnavailable),
        (errors.InsufficientPrivilege, StoreUnusable),  # a `db grant` missed
        (errors.UndefinedFunction, StoreUnusable),  # a `db migrate` missed
        (errors.ProgramLimitExceeded, errors.ProgramLimitExceeded),  # bad data: no retry fixes it
        (errors.UniqueViolation, errors.UniqueViolation),
    ],
)
def test_database_errors_are_classified_for_retry(error: type[psycopg.Error], seen_as: type[Exception]) -> None:
    """What a later attempt may not meet is `StoreUnavailable` (retried), a database not yet as this version needs
    is `StoreUnusable` (retried, and said in one line), and anything else goes on as it is (a bug or bad data)."""
    assert type(_classified(error("said"))) is seen_as


async def test_plain_sql_as_the_producer_role_requests_a_notification(
    dev_env: WorkflowEnvironment,
    database: str,
    worker_env: dict[str, str],
    sinks: tuple[MailSink, SlackSink],
    tmp_path: Path,
) -> None:
    """`SELECT notify_request(...)` as notify_client writes what the client writes; a worker's handler, woken by
    the database, starts its saga; keys are kept as the client keeps them; the service's rules refuse what they
    refuse, with the reason in the status."""
    mail, slack = sinks
    worker = start_worker(worker_env, tmp_path)
    try:
        settings = client_settings(database)
        async with settings.open_streams() as store, owner_store(settings, store) as owner:
            await import_entries(owner, [ENTITY])
            client = NotificationClient(store, dev_env.client, settings)
            nid = await asyncio.to_thread(request_by_sql, database, "ops", "From SQL", tags='{"team": "db"}')
            view = (await client.result(nid)).model_dump(mode="json")
            by_client = await client.request(
                SendNotificationToEntityOp(
                    entity_id="ops",
                    subject="From SQL",
                    body="Two workers, one saga each.",
                    tags=[Tag(name="team", value="db")],
                )
            )
            records = {i: await store.reader(StreamName.CLIENT_OPERATION).latest(i) for i in (nid, by_client)}
            [taken] = [
                e
                for e in await store.handling(StreamName.CLIENT_OPERATION).history(records[nid].internal_id)  # type: ignore[union-attr]
                if e.status == "Running"
            ]

            again = await asyncio.to_thread(request_by_sql, database, "ops", "Keyed", idempotency_key="k-1")
            assert await asyncio.to_thread(request_by_sql, database, "ops", "Keyed", idempotency_key="k-1") == again
            with pytest.raises(psycopg.Error, match=f"idempotency key 'k-1' was already used by notification {again}"):
                await asyncio.to_thread(request_by_sql, database, "ops", "Not the same", idempotency_key="k-1")
            # the Python client honours a key claimed in SQL, and takes no new id for it
            keyed = SendNotificationToEntityOp(entity_id="ops", subject="Keyed", body="Two workers, one saga each.")
            assert await client.request(keyed, idempotency_key="k-1") == again

            # a record no request reads back as: refused, and the handler goes on with the next
            with psycopg.connect(as_role(database, "notify_producer"), autocommit=True) as db:
                db.execute(
                    "SELECT notify_put('client-operation', 'junk-1', 'ExecuteOpRequestedEvent', '{\"id\": 1}',"
                    " '[]', 'None', 1)"
                )
            refused = await asyncio.to_thread(request_by_sql, database, "ops", "Bad\r\nBcc: x@example.com")
            refused_view = (await client.result(refused)).model_dump(mode="json")
            await client.result(again)
    finally:
        said = worker.stop()
    assert view["status"] == "sent", view
    assert [m.message["Subject"] for m in mail.messages].count("From SQL") == 2
    assert [m.message["Subject"] for m in mail.messages].count("Keyed") == 1
    assert taken.details in (TAKEN_UP, "")  # the handler took it up, or the saga it started did, first: once
    sql_record, client_record = records[nid], records[by_client]
    assert sql_record is not None and client_record is not None
    assert (
        sql_record.object(ExecuteOpRequestedEvent).operation == client_record.object(ExecuteOpRequestedEvent).operation
    )
    assert {t.name: t.value for t in sql_record.tags} == {
        **{t.name: t.value for t in client_record.tags},
        "notification-id": nid,
    }
    assert refused_view["status"] == "failed"
    [reason] = refused_view["outcome"]["failures"]
    assert reason.startswith("refused: subject: must be a single line of text"), reason
    assert "Bad" not in [m.message["Subject"] for m in mail.messages]
    assert f"notification {refused} is not started: refused: subject" in said
    assert "notification junk-1 is not started: refused: " in said
    assert "Traceback" not in said


@pytest.fixture
async def ops_in_directory(database: str) -> None:
    """The directory holds the entity `ops`: notify_request refuses an entity it does not have."""
    async with open_store(database) as owner:
        await import_entries(owner, [ENTITY])


@pytest.mark.usefixtures("ops_in_directory")
def test_notify_request_refuses_what_would_forge_the_audit_or_not_read_back(database: str) -> None:
    with psycopg.connect(as_role(database, "notify_client"), autocommit=True) as db:
        with pytest.raises(
            psycopg.Error, match="^notify_request: entity 'nobody' is not in the directory\n"
        ) as refused:
            db.execute("SELECT notify_request('nobody', 'S', 'B')")
        assert refused.value.sqlstate == "NT005"
        for extra, said in [
            *(
                (f'tags => \'{{"{name.upper()}": "forged"}}\'', "tag names notification-id, entity-id")
                for name in TagName  # every one the service writes, in any case
            ),
            ("tags => '{\"a\": 1}'", "tags must be a JSON object of names and text values"),
            ("tags => '" + json.dumps({f"t{i}": "v" for i in range(51)}) + "'", "at most 50 tags"),
            ("tags => '" + json.dumps({"t": "v" * 2001}) + "'", "a value at most 2,000 bytes"),
            ("tags => '" + json.dumps({"t" * 201: "v"}) + "'", "a tag name must be 1 to 200 characters"),
            *(
                (f"send_at => '{at}'", r"send_at must be in the years 1970 to 9998 \(UTC\)")
                for at in ("infinity", "-infinity", "0044-03-15 12:00+00 BC", "1969-12-31 23:59:59+00", "9999-01-01")
            ),
            ("idempotency_key => ''", "idempotency_key must be 1 to 200 characters"),
            (f"idempotency_key => '{'k' * 201}'", "idempotency_key must be 1 to 200 characters"),
        ]:
            with pytest.raises(psycopg.Error, match=said) as refused:
                db.execute(f"SELECT notify_request('ops', 'S', 'B', {extra})")
            assert refused.value.sqlstate == "NT002"
        for entity_id in ("", "e" * 201, "e" * 3000):  # past the tag index's limit, the database's own error
            with pytest.raises(psycopg.Error, match="entity_id must be 1 to 200 characters") as refused:
                db.execute("SELECT notify_request(%s, 'S', 'B')", (entity_id,))
            assert refused.value.sqlstate == "NT002"
        with pytest.raises(psycopg.Error, match="over 512 KiB"):
            db.execute("SELECT notify_request('ops', 'S', repeat('x', 600000))")
    with psycopg.connect(database) as db:
        assert db.execute("SELECT stream, count(*) FROM notify_records GROUP BY stream").fetchall() == [
            ("entity-directory", 1)
        ]


@pytest.mark.usefixtures("ops_in_directory")
async def test_notify_request_writes_times_that_read_back_whatever_the_session_time_zone(database: str) -> None:
    """Monrovia's offset was -00:44:30 until 1972: no offset of seconds reaches a record, which reads back."""
    with psycopg.connect(as_role(database, "notify_client"), autocommit=True) as db:
        db.execute("SET TIME ZONE 'Africa/Monrovia'")
        row = db.execute(
            "SELECT notify_request('ops', 'S', 'B', send_at => '1971-01-01 00:00-00:43:08', idempotency_key => 'k')"
        ).fetchone()
        assert row is not None
        assert (
            db.execute(
                "SELECT notify_request('ops', 'S', 'B', send_at => '1971-01-01 00:43:08+00', idempotency_key => 'k')"
            ).fetchone()
            == row
        )
    async with open_store(database) as owner:
        record = await owner.reader(StreamName.CLIENT_OPERATION).latest(row[0])
    assert record is not None
    operation = record.object(ExecuteOpRequestedEvent).operation
    assert isinstance(operation, SendNotificationToEntityOp) and operation.send_at is not None
    assert operation.send_at == datetime(1971, 1, 1, 0, 43, 8, tzinfo=UTC)
    assert operation.send_at.utcoffset() == timedelta(0)


@pytest.mark.usefixtures("ops_in_directory")
async def test_a_client_requests_notifications_and_can_do_nothing_else(database: str) -> None:
    """notify_client, the role outside producers use: notify_request, and no other function or table."""
    with psycopg.connect(database) as db:
        functions = db.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace"
            " AND p.proname LIKE 'notify%%'"
        ).fetchall()
        tables = db.execute(
            "SELECT c.oid::regclass::text FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace"
            " AND c.relkind IN ('r', 'v', 'S')"
        ).fetchall()
        executable = [
            f
            for (f,) in functions
            if db.execute("SELECT has_function_privilege('notify_client', %s, 'EXECUTE')", (f,)).fetchone() == (True,)
        ]
        readable = [
            t
            for (t,) in tables
            if db.execute(
                "SELECT has_table_privilege('notify_client', %s, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')", (t,)
            ).fetchone()
            == (True,)
        ]
    assert len(functions) > 8 and len(tables) > 8
    assert executable == ["notify_request(text,text,text,text,text,jsonb,timestamp with time zone,text,jsonb,text[])"]
    assert readable == []
    with psycopg.connect(as_role(database, "notify_client"), autocommit=True) as db:
        assert db.execute("SELECT notify_request('ops', 'S', 'B')").fetchone() is not None
        for statement in (
            "SELECT * FROM notify_put('entity-directory', 'user-1', 'DirectoryEntry', '{}', '[]', 'None', 1)",
            "SELECT * FROM notify_append('email-event', '1', 'T', '{}', '[]', 'None', 1, NULL, NULL)",
            "SELECT notify_next_unique_id('client-operation')",
            "SELECT * FROM notify_transition('client-operation', 1, 'c', 'Running', '')",
            "SELECT * FROM notify_begin('client-operation', 1, 'c', '')",
            "SELECT notify_next_turn('k', 1)",
            "SELECT value FROM notify_identity",
            "SELECT payload FROM notify_records",
            "SELECT * FROM notify_schema_migrations",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                db.execute(statement)


@pytest.mark.parametrize("role", ["notify_producer", "notify_consumer", "notify_handler"])
async def test_each_service_role_puts_only_in_the_streams_its_processes_write(database: str, role: str) -> None:
    """notify_producer in the service's streams but the directory, the API keys and the webhook endpoints; the
    reader and the handler nowhere. A refusal is the same whatever the stream holds: it tells no key's name."""
    async with open_store(database) as owner:
        await owner.writer(StreamName.API_KEY).put("reader", Thing(value=1))  # only the owner issues keys
    owners = {StreamName.API_KEY, StreamName.ENTITY_DIRECTORY, StreamName.WEBHOOK}
    allowed = {s for s in StreamName if s not in owners} if role == "notify_producer" else set()
    async with open_store(as_role(database, role)) as store:
        for stream in StreamName:
            if stream in allowed:
                put = await store.writer(stream).put("reader", Thing(value=2))
                assert put.internal_id is not None
            else:
                with pytest.raises(StoreUnusable, match="may not write|permission denied"):
                    await store.writer(stream).put("reader", Thing(value=2))
    refusals = set()
    with psycopg.connect(as_role(database, role), autocommit=True) as db:
        for name in ("reader", "nobody"):
            for strategy in ("None", "DoNotWriteIfFoundById"):
                with pytest.raises(errors.InsufficientPrivilege) as refused:
                    db.execute(f"SELECT * FROM notify_put('api-key', '{name}', 'T', '{{}}', '[]', '{strategy}', 1)")
                refusals.add(refused.value.diag.message_primary)
        with pytest.raises(errors.InsufficientPrivilege):
            db.execute("SELECT * FROM notify_put('no-such-stream', '1', 'T', '{}', '[]', 'None', 1)")
    assert len(refusals) == 1 and "reader" not in refusals.pop()  # type: ignore[operator]
    async with open_store(database) as owner:
        assert [r.object(Thing).value for r in await owner.reader(StreamName.API_KEY).by_id("reader")] == [1]
        assert await owner.reader(StreamName.API_KEY).by_id("nobody") == []


async def test_only_the_owner_writes_the_directory(database: str) -> None:
    """The directory is administered: notify_producer, the service's own writer, is refused it."""
    with psycopg.connect(as_role(database, "notify_producer"), autocommit=True) as db:
        with pytest.raises(errors.InsufficientPrivilege, match="may not write to the stream 'entity-directory'"):
            db.execute("SELECT * FROM notify_put('entity-directory', 'ops', 'DirectoryEntry', '{}', '[]', 'None', 1)")
    async with open_store(database) as owner:
        imported = await import_entries(owner, [ENTITY])
        assert (imported.recorded, imported.unchanged) == (1, 0)
        assert await lookup(owner.reader(StreamName.ENTITY_DIRECTORY), "ops") == ENTITY


@pytest.mark.usefixtures("ops_in_directory")
async def test_an_idempotency_key_is_one_request_whichever_door_claimed_it(database: str) -> None:
    """Tags in another order are the same request, in SQL as in Python."""
    settings = client_settings(database)
    async with settings.open_streams() as store:
        client = NotificationClient(
            store,
            await connect(settings.model_copy(update={"temporal_address": f"127.0.0.1:{free_port()}"}), lazy=True),
            settings,
        )
        op = SendNotificationToEntityOp(
            entity_id="ops", subject="Keyed", body="B", tags=[Tag(name="b", value="2"), Tag(name="a", value="1")]
        )
        first = await client.request(op, idempotency_key="k-2")
        with psycopg.connect(as_role(database, "notify_client"), autocommit=True) as db:
            row = db.execute(
                "SELECT notify_request('ops', 'Keyed', 'B', tags => '{\"a\": \"1\", \"b\": \"2\"}',"
                " idempotency_key => 'k-2')"
            ).fetchone()
        assert row == (first,)
        by_sql = await asyncio.to_thread(request_by_sql, database, "ops", "Other", idempotency_key="k-3")
        assert (
            await client.request(
                SendNotificationToEntityOp(entity_id="ops", subject="Other", body="Two workers, one saga each."),
                idempotency_key="k-3",
            )
            == by_sql
        )
