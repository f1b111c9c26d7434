"""The embedded stream store: one SQLite file, safe for several processes on one machine.

Write-ahead logging lets readers run beside a writer; every write is one `BEGIN IMMEDIATE` transaction, so the
existing-record checks, the unique-id counters and the handling transitions hold across processes. Calls run on one
thread per store, off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from domain import Tag, TagName, utc_now
from streams.store import (
    ALLOWED_TRANSITIONS,
    REQUESTED,
    RESETS,
    UNREADABLE,
    ExistingRecordStrategy,
    HandlingEntry,
    HandlingStatus,
    InvalidHandlingTransition,
    NewRecord,
    NoSuchRecord,
    PutResult,
    Record,
    StoreUnavailable,
    StoreUnusable,
    StreamName,
    StreamStore,
    ViewCounts,
    check_put,
    select_handling,
    select_records,
    select_tagged,
)

T = TypeVar("T")

SCHEMA_VERSION = 5

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    internal_id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    record_id TEXT,
    type TEXT NOT NULL,
    payload TEXT NOT NULL,
    timestamp_utc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_id ON records (stream, record_id);
CREATE TABLE IF NOT EXISTS record_tags (
    internal_id INTEGER NOT NULL REFERENCES records (internal_id) ON DELETE CASCADE,
    stream TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS record_tags_by_value ON record_tags (stream, name, value, internal_id);
CREATE INDEX IF NOT EXISTS record_tags_by_record ON record_tags (internal_id);
CREATE TABLE IF NOT EXISTS unique_ids (
    stream TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS handling (
    entry_id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    internal_record_id INTEGER NOT NULL,
    concern TEXT NOT NULL,
    status TEXT NOT NULL,
    details TEXT NOT NULL,
    timestamp_utc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS handling_by_record ON handling (stream, internal_record_id, concern, entry_id);
CREATE INDEX IF NOT EXISTS views_by_time ON records (timestamp_utc) WHERE stream = 'notification-view';
CREATE INDEX IF NOT EXISTS refusals ON handling (stream, internal_record_id) WHERE status = 'DisabledForRecord';
CREATE TABLE IF NOT EXISTS turns (key TEXT PRIMARY KEY, next_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS identity (value TEXT NOT NULL);
INSERT INTO identity SELECT lower(hex(randomblob(4))) WHERE NOT EXISTS (SELECT 1 FROM identity);
"""


TRANSIENT_ERRORS = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_FULL",
    "SQLITE_CANTOPEN",
    "SQLITE_PROTOCOL",
)
"""SQLite's result codes (extended ones begin with these) for what a later attempt may not meet: the database busy or
locked, the disk failing or full, too many files open. Any other error is a bug or bad data."""


VIEW_COUNTS = f"""
WITH views AS MATERIALIZED (
    SELECT substr(timestamp_utc, 1, 16) AS minute, CASE WHEN json_valid(payload) THEN payload END AS view
    FROM records INDEXED BY views_by_time
    WHERE stream = '{StreamName.NOTIFICATION_VIEW}' AND timestamp_utc >= ?
)
SELECT minute, NULL,
    CASE WHEN json_type(view, '$.status') = 'text' THEN json_extract(view, '$.status')
         ELSE '{UNREADABLE}' END AS status,
    count(*)
FROM views GROUP BY minute, status
UNION ALL
SELECT minute, c.key,
    CASE WHEN c.type <> 'object' THEN '{UNREADABLE}'
         WHEN json_type(c.value, '$.outcome') = 'text' THEN json_extract(c.value, '$.outcome')
         ELSE '{UNREADABLE}' END AS outcome,
    count(*)
FROM views, json_each(views.view, '$.channels') c
WHERE json_type(views.view, '$.channels') = 'object'
GROUP BY minute, c.key, outcome
"""
"""`StreamStore.view_counts`: the views by their partial index by time (named, as pruning does), each payload checked
as JSON once; the minute is the start of the view's time as written (ISO 8601, UTC)."""


TAG_ARRAY = "json_group_array(json_array(name, value))"
"""A record's tags, as one JSON array of [name, value] pairs."""


def _file_identity(path: Path) -> tuple[int, int]:
    found = path.stat()
    return found.st_dev, found.st_ino


class SQLiteStreamStore(StreamStore):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"streams-{self.path.name}")
        self._db = self._executor.submit(self._connect).result()
        self._file = _file_identity(self.path)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreUnusable(f"{self.path} has stream schema {version}; this version knows up to {SCHEMA_VERSION}")
        if version < SCHEMA_VERSION:
            with _transaction(db):
                if 0 < version < 5:
                    # a record's tags were kept twice, in its row as JSON too (the tag rows serve); and its id's index
                    # held its type as well (an id has a handful of records: they are told apart by reading them)
                    db.execute("ALTER TABLE records DROP COLUMN tags")
                    db.execute("DROP INDEX records_by_id")
                for statement in SCHEMA.split(";"):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        return db

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn` on the store's thread, on the file the store opened and no other."""
        self._check_file()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as error:
            name = getattr(error, "sqlite_errorname", "")
            if name.startswith("SQLITE_READONLY"):
                self._check_file()  # to SQLite a file deleted or replaced under it is read-only: say which it was
                raise self._read_only() from error
            if name.startswith(TRANSIENT_ERRORS):
                raise StoreUnavailable(f"the streams store {self.path} cannot be used now: {error}") from error
            raise

    async def check(self) -> None:
        self._check_file()
        # access(2), not a test open: closing any descriptor of the file would drop this process's SQLite locks
        if not os.access(self.path, os.W_OK):
            raise self._read_only()

    def _read_only(self) -> StoreUnusable:
        return StoreUnusable(f"the streams store {self.path} is read-only: make it writable and restart")

    def _check_file(self) -> None:
        """A file deleted or replaced under an open store would split the records silently: refuse instead."""
        try:
            found = _file_identity(self.path)
        except FileNotFoundError:
            raise StoreUnusable(
                f"the streams store {self.path} was deleted while in use: restore it (or start afresh) and restart"
            ) from None
        if found != self._file:
            raise StoreUnusable(f"the streams store {self.path} was replaced while in use: restart to use the new one")

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._db.close)
        self._executor.shutdown()

    # -- unique ids -------------------------------------------------------------------------------------------

    async def next_unique_id(self, stream: str) -> int:
        return await self._run(self._next_unique_id, stream)

    def _next_unique_id(self, stream: str) -> int:
        with _transaction(self._db):
            row = self._db.execute(
                "INSERT INTO unique_ids (stream, last_id) VALUES (?, 1) "
                "ON CONFLICT (stream) DO UPDATE SET last_id = last_id + 1 RETURNING last_id",
                (stream,),
            ).fetchone()
        return int(row[0])

    async def next_turn(self, key: str, every: float) -> float:
        return await self._run(self._next_turn, key, every)

    def _next_turn(self, key: str, every: float) -> float:
        with _transaction(self._db):
            now = time.time()
            row = self._db.execute("SELECT next_at FROM turns WHERE key = ?", (key,)).fetchone()
            turn = max(now, row[0] if row else 0.0)
            self._db.execute(
                "INSERT INTO turns (key, next_at) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET next_at = excluded.next_at",
                (key, turn + every),
            )
        return turn - now

    async def identity(self) -> str:
        return await self._run(lambda: str(self._db.execute("SELECT value FROM identity").fetchone()[0]))

    # -- records ----------------------------------------------------------------------------------------------

    async def put(self, stream: str, records: Sequence[NewRecord]) -> list[PutResult]:
        return await self._run(self._put_all, stream, records)

    def _put_all(self, stream: str, records: Sequence[NewRecord]) -> list[PutResult]:
        with _transaction(self._db):
            return [self._put(stream, record) for record in records]

    def _put(self, stream: str, new: NewRecord) -> PutResult:
        """One record, inside the caller's transaction."""
        check_put(stream, new.strategy, new.retention)
        db = self._db
        existing: tuple[int, ...] = ()
        if new.strategy != ExistingRecordStrategy.NONE and new.record_id is not None:
            sql = "SELECT internal_id FROM records WHERE stream = ? AND record_id = ?"
            args: tuple[object, ...] = (stream, new.record_id)
            if new.strategy == ExistingRecordStrategy.DO_NOT_WRITE_IF_FOUND_BY_ID_AND_TYPE:
                sql += " AND type = ?"
                args += (new.type,)
            existing = tuple(r[0] for r in db.execute(sql + " ORDER BY internal_id", args))
            if existing and new.strategy != ExistingRecordStrategy.PRUNE_IF_FOUND_BY_ID:
                return PutResult(None, existing)
        internal_id = db.execute(
            "INSERT INTO records (stream, record_id, type, payload, timestamp_utc) "
            "VALUES (?, ?, ?, ?, ?) RETURNING internal_id",
            (stream, new.record_id, new.type, new.payload, utc_now().isoformat()),
        ).fetchone()[0]
        db.executemany(
            "INSERT INTO record_tags (internal_id, stream, name, value) VALUES (?, ?, ?, ?)",
            [(internal_id, stream, t.name, t.value) for t in new.tags],
        )
        if new.strategy == ExistingRecordStrategy.PRUNE_IF_FOUND_BY_ID and existing:
            db.execute(
                "DELETE FROM records WHERE stream = ? AND record_id = ? AND internal_id NOT IN "
                "(SELECT internal_id FROM records WHERE stream = ? AND record_id = ? "
                "ORDER BY internal_id DESC LIMIT ?)",
                (stream, new.record_id, stream, new.record_id, new.retention),
            )
        return PutResult(internal_id, existing)

    async def _prune_batch(self, before: datetime, limit: int) -> tuple[int, int]:
        return await self._run(self._prune, before.isoformat(), limit)

    def _prune(self, before: str, limit: int) -> tuple[int, int]:
        db = self._db
        with _transaction(db):
            db.execute("CREATE TEMP TABLE IF NOT EXISTS pruned_notifications (id TEXT PRIMARY KEY)")
            db.execute("CREATE TEMP TABLE IF NOT EXISTS pruned_records (internal_id INTEGER PRIMARY KEY, stream TEXT)")
            db.execute("DELETE FROM pruned_notifications")
            db.execute("DELETE FROM pruned_records")
            # The views by time, through their partial index, named: SQLite's planner, without statistics, would
            # rather read every view by the index of ids and sort them, for each batch (hours at a million).
            notifications = db.execute(
                "INSERT OR IGNORE INTO pruned_notifications SELECT * FROM ("
                " SELECT * FROM (SELECT record_id FROM records INDEXED BY views_by_time"
                f" WHERE stream = '{StreamName.NOTIFICATION_VIEW}' AND timestamp_utc < ?"
                " AND record_id IS NOT NULL ORDER BY timestamp_utc LIMIT ?)"
                " UNION ALL SELECT r.record_id FROM handling h JOIN records r ON r.internal_id = h.internal_record_id"
                " WHERE h.stream = ? AND h.status = 'DisabledForRecord' AND r.type = ? AND r.timestamp_utc < ?"
                ") LIMIT ?",
                (
                    before,
                    limit,
                    StreamName.CLIENT_OPERATION,
                    REQUESTED,
                    before,
                    limit,
                ),
            ).rowcount
            if not notifications:
                return 0, 0
            for stream in StreamName:
                db.execute(
                    "INSERT OR IGNORE INTO pruned_records SELECT internal_id, stream FROM record_tags"
                    " WHERE stream = ? AND name = ? AND value IN (SELECT id FROM pruned_notifications)",
                    (stream, TagName.NOTIFICATION_ID),
                )
            db.execute(
                "DELETE FROM handling"
                " WHERE (stream, internal_record_id) IN (SELECT stream, internal_id FROM pruned_records)"
            )
            records = db.execute(
                "DELETE FROM records WHERE internal_id IN (SELECT internal_id FROM pruned_records)"
            ).rowcount
        return notifications, records

    async def view_counts(self, since: datetime) -> ViewCounts:
        since_text = since.astimezone(UTC).isoformat()
        return ViewCounts.of(await self._run(lambda: self._db.execute(VIEW_COUNTS, (since_text,)).fetchall()))

    async def read(
        self,
        stream: str,
        *,
        record_id: str | None = None,
        type: str | None = None,
        tags: Sequence[Tag] = (),
        after: int | None = None,
        before: int | None = None,
        unhandled_for: str | None = None,
        newest_first: bool = False,
        limit: int | None = None,
    ) -> list[Record]:
        sql, args = select_records(
            "records",
            "record_tags",
            "handling",
            "?",
            TAG_ARRAY,
            stream,
            record_id=record_id,
            type=type,
            tags=tags,
            after=after,
            before=before,
            unhandled_for=unhandled_for,
            newest_first=newest_first,
            limit=limit,
        )
        return await self._records(sql, args)

    async def read_tagged(self, streams: Sequence[str], tags: Sequence[Tag]) -> list[Record]:
        return await self._records(*select_tagged("records", "record_tags", "?", TAG_ARRAY, streams, tags))

    async def _records(self, sql: str, args: list[object]) -> list[Record]:
        rows = await self._run(lambda: self._db.execute(sql, args).fetchall())
        return [
            Record(
                internal_id=r[0],
                stream=r[1],
                record_id=r[2],
                type=r[3],
                payload=r[4],
                tags=Record.tags_of(json.loads(r[5])),
                timestamp_utc=datetime.fromisoformat(r[6]),
            )
            for r in rows
        ]

    # -- handling ---------------------------------------------------------------------------------------------

    async def handling_history(self, stream: str, internal_record_id: int, concern: str | None) -> list[HandlingEntry]:
        return await self._run(self._handling_history, stream, internal_record_id, concern)

    def _handling_history(self, stream: str, internal_record_id: int, concern: str | None) -> list[HandlingEntry]:
        query, args = select_handling("handling", "?", stream, internal_record_id, concern)
        return [_entry(r) for r in self._db.execute(query, args)]

    async def begin(self, stream: str, internal_record_id: int, concern: str, details: str) -> HandlingEntry | None:
        return await self._run(self._begin, stream, internal_record_id, concern, details)

    def _begin(self, stream: str, internal_record_id: int, concern: str, details: str) -> HandlingEntry | None:
        with _transaction(self._db):
            latest = self._latest(stream, internal_record_id, concern)
            current = latest.status if latest else HandlingStatus.AVAILABLE_BY_DEFAULT
            if current == HandlingStatus.COMPLETED:
                return latest
            if current in RESETS:
                current = self._append(stream, internal_record_id, concern, current, *RESETS[current]).status
            self._append(stream, internal_record_id, concern, current, HandlingStatus.RUNNING, details)
        return None

    async def transition(
        self, stream: str, internal_record_id: int, concern: str, status: HandlingStatus, details: str
    ) -> HandlingEntry:
        return await self._run(self._transition, stream, internal_record_id, concern, status, details)

    def _transition(
        self, stream: str, internal_record_id: int, concern: str, status: HandlingStatus, details: str
    ) -> HandlingEntry:
        with _transaction(self._db):
            latest = self._latest(stream, internal_record_id, concern)
            current = latest.status if latest else HandlingStatus.AVAILABLE_BY_DEFAULT
            return self._append(stream, internal_record_id, concern, current, status, details)

    def _latest(self, stream: str, internal_record_id: int, concern: str) -> HandlingEntry | None:
        """The record's latest handling entry under `concern`, inside the caller's transaction; the record must be
        in `stream`."""
        db = self._db
        if not db.execute(
            "SELECT 1 FROM records WHERE internal_id = ? AND stream = ?", (internal_record_id, stream)
        ).fetchone():
            raise NoSuchRecord(f"no record {internal_record_id} in {stream}")
        query, args = select_handling("handling", "?", stream, internal_record_id, concern, latest=True)
        row = db.execute(query, args).fetchone()
        return None if row is None else _entry(row)

    def _append(
        self,
        stream: str,
        internal_record_id: int,
        concern: str,
        current: HandlingStatus,
        status: HandlingStatus,
        details: str,
    ) -> HandlingEntry:
        """Append `status` if `current` (the record's status, as read in the caller's transaction) allows it."""
        if current not in ALLOWED_TRANSITIONS.get(status, ()):
            raise InvalidHandlingTransition(
                f"record {internal_record_id} of {stream} under concern {concern!r} is {current}, "
                f"it cannot become {status}"
            )
        timestamp = utc_now().isoformat()
        entry_id = self._db.execute(
            "INSERT INTO handling (stream, internal_record_id, concern, status, details, timestamp_utc) "
            "VALUES (?, ?, ?, ?, ?, ?) RETURNING entry_id",
            (stream, internal_record_id, concern, status.value, details, timestamp),
        ).fetchone()[0]
        return HandlingEntry(
            entry_id, stream, internal_record_id, concern, status, details, datetime.fromisoformat(timestamp)
        )


def _entry(row: Sequence[Any]) -> HandlingEntry:
    return HandlingEntry(row[0], row[1], row[2], row[3], HandlingStatus(row[4]), row[5], datetime.fromisoformat(row[6]))


class _transaction:
    """`BEGIN IMMEDIATE` ... `COMMIT`, or `ROLLBACK` on error: the write lock is taken before anything is read."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
