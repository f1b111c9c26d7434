"""The embedded stream store: one SQLite file, safe for several processes on one machine.

Write-ahead logging lets readers run beside a writer; every write is one `BEGIN IMMEDIATE` transaction, so the
existing-record checks, the unique-id counters and the handling transitions hold across processes. Calls run on one
thread per store, off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from activities.contract import SEND_BROADCAST_CONCERN
from domain import Tag, utc_now
from streams.packing import pack, packable, unpack
from streams.store import (
    BROADCAST_REQUESTED,
    BROADCAST_TAG,
    HELD_TAG,
    RECIPIENT_REFUSED,
    REQUESTED,
    RESETS,
    UNREADABLE,
    ExistingRecordStrategy,
    HandlingEntry,
    HandlingStatus,
    InvalidHandlingTransition,
    Move,
    NewRecord,
    NoSuchRecord,
    Put,
    PutResult,
    Record,
    StoreUnavailable,
    StoreUnusable,
    StreamName,
    StreamStore,
    ViewCounts,
    Written,
    allows,
    check_put,
    held,
    is_digest,
    log,
    select_handling,
    select_records,
    select_tagged,
    tags_with,
)

T = TypeVar("T")

SCHEMA_VERSION = 8
WAIT_SECONDS = 30
"""How long a call on the store's thread waits for another process's write to end."""
CHECKPOINT_EVERY = 500
"""Calls made on the caller's thread between two checkpoints of the write-ahead log."""
AT_ONCE_RECORDS = 20
"""The most records a put makes on the caller's thread (a batch, a directory import, goes to the store's)."""

VIEWS = 1
REFUSED = 2
FIXED_NAMES = {VIEWS: StreamName.NOTIFICATION_VIEW, REFUSED: HandlingStatus.DISABLED_FOR_RECORD}
"""The names whose codes every file has from the start, for the partial indexes that name them; any other name (a
stream, a type, a tag, a concern, a status) takes the next code when it is first written. Never renumbered."""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS names (code INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS records (
    internal_id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream INTEGER NOT NULL,
    record_id TEXT,
    type INTEGER NOT NULL,
    notification_id TEXT,
    payload NOT NULL,
    timestamp_utc INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_id ON records (stream, record_id);
CREATE INDEX IF NOT EXISTS records_by_notification ON records (notification_id) WHERE notification_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS record_tags (
    internal_id INTEGER NOT NULL REFERENCES records (internal_id) ON DELETE CASCADE,
    stream INTEGER NOT NULL,
    name INTEGER NOT NULL,
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
    stream INTEGER NOT NULL,
    internal_record_id INTEGER NOT NULL,
    concern INTEGER NOT NULL,
    status INTEGER NOT NULL,
    details TEXT NOT NULL,
    timestamp_utc INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS handling_by_record ON handling (stream, internal_record_id, concern, entry_id);
CREATE INDEX IF NOT EXISTS views_by_time ON records (timestamp_utc) WHERE stream = {VIEWS};
CREATE INDEX IF NOT EXISTS refusals ON handling (stream, internal_record_id) WHERE status = {REFUSED};
CREATE TABLE IF NOT EXISTS contents (sha256 TEXT PRIMARY KEY, content BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS content_refs (
    notification_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    timestamp_utc INTEGER NOT NULL,
    PRIMARY KEY (notification_id, sha256)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS content_refs_by_content ON content_refs (sha256);
CREATE TABLE IF NOT EXISTS turns (key TEXT PRIMARY KEY, next_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS identity (value TEXT NOT NULL);
INSERT INTO identity SELECT lower(hex(randomblob(4))) WHERE NOT EXISTS (SELECT 1 FROM identity);
INSERT OR IGNORE INTO names (code, name) VALUES {", ".join(f"({c}, '{n}')" for c, n in FIXED_NAMES.items())};
"""
"""Schema 6: a stream's, a type's, a tag's, a concern's and a status's name is kept once, in `names`, and rows hold
its code; times are microseconds since the epoch (UTC); a record's notification-id tag is its `notification_id`
(`streams.store.HELD_TAG`); a payload, and a handling entry's details, are TEXT as written or a BLOB packed
(`streams.packing`). Schema 7: contents, each kept once by its SHA-256, and which notifications name them. Schema 8:
the broadcasts' ends (`BROADCASTS_ENDED`)."""

BROADCASTS_ENDED = (
    "CREATE INDEX IF NOT EXISTS broadcasts_ended ON handling (timestamp_utc)"
    " WHERE concern = {concern} AND status = {completed}"
)
"""The handling entries that end broadcasts (their request `Completed` under `SEND_BROADCAST_CONCERN`), by time,
for pruning: a partial index naming the codes the file gave those names, which it makes when it makes the index."""

MICROSECONDS = "1000000"
US_OF_TEXT = (
    f"(unixepoch(substr({{0}}, 1, 19)) * {MICROSECONDS}"
    " + CASE WHEN substr({0}, 20, 1) = '.'"
    " THEN CAST(substr(substr({0}, 21, instr(substr({0}, 21), '+') - 1) || '00000', 1, 6) AS INTEGER) ELSE 0 END)"
)
"""Microseconds since the epoch of an ISO 8601 time in UTC as schema 5 wrote it (`2026-12-05T21:14:34.470013+00:00`)."""

FROM_SCHEMA_5 = f"""
ALTER TABLE records RENAME TO records_5;
ALTER TABLE record_tags RENAME TO record_tags_5;
ALTER TABLE handling RENAME TO handling_5;
DROP INDEX IF EXISTS records_by_id;
DROP INDEX IF EXISTS record_tags_by_value;
DROP INDEX IF EXISTS record_tags_by_record;
DROP INDEX IF EXISTS handling_by_record;
DROP INDEX IF EXISTS views_by_time;
DROP INDEX IF EXISTS refusals;
{SCHEMA}
INSERT OR IGNORE INTO names (name)
    SELECT stream FROM records_5 UNION SELECT type FROM records_5 UNION SELECT name FROM record_tags_5
    UNION SELECT stream FROM handling_5 UNION SELECT concern FROM handling_5 UNION SELECT status FROM handling_5;
INSERT INTO records
    SELECT r.internal_id, s.code, r.record_id, t.code,
        (SELECT min(g.value) FROM record_tags_5 g WHERE g.internal_id = r.internal_id AND g.name = 'notification-id'),
        r.payload, {US_OF_TEXT.format("r.timestamp_utc")}
    FROM records_5 r JOIN names s ON s.name = r.stream JOIN names t ON t.name = r.type;
INSERT INTO record_tags
    SELECT g.internal_id, s.code, n.code, g.value
    FROM record_tags_5 g JOIN records r ON r.internal_id = g.internal_id
    JOIN names s ON s.name = g.stream JOIN names n ON n.name = g.name
    WHERE NOT (g.name = 'notification-id'
               AND g.value IS (SELECT notification_id FROM records WHERE internal_id = g.internal_id));
INSERT INTO handling
    SELECT h.entry_id, s.code, h.internal_record_id, c.code, t.code, h.details, {US_OF_TEXT.format("h.timestamp_utc")}
    FROM handling_5 h JOIN names s ON s.name = h.stream JOIN names c ON c.name = h.concern
    JOIN names t ON t.name = h.status;
INSERT INTO sqlite_sequence (name, seq) SELECT 'records', 0
    WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'records');
UPDATE sqlite_sequence SET seq = max(seq, coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'records_5'), 0))
    WHERE name = 'records';
INSERT INTO sqlite_sequence (name, seq) SELECT 'handling', 0
    WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'handling');
UPDATE sqlite_sequence SET seq = max(seq, coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'handling_5'), 0))
    WHERE name = 'handling';
DROP TABLE record_tags_5;
DROP TABLE handling_5;
DROP TABLE records_5
"""
"""Schema 5's rows in schema 6's tables, their ids (and the counters beyond them) kept, but tag rows of no record;
payloads stay as written."""

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
    SELECT strftime('%Y-%m-%dT%H:%M', timestamp_utc / {MICROSECONDS}, 'unixepoch') AS minute,
        CASE WHEN json_valid(payload) THEN payload END AS view
    FROM records INDEXED BY views_by_time
    WHERE stream = {VIEWS} AND timestamp_utc >= ?
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
as JSON once (a view is never packed); the minute is the start of the view's time (ISO 8601, UTC)."""


TAG_ARRAY = "json_group_array(json_array(name, value))"
"""A record's tags, as one JSON array of [name, value] pairs."""


def _file_identity(path: str) -> tuple[int, int]:
    found = os.stat(path)
    return found.st_dev, found.st_ino


class SQLiteStreamStore(StreamStore):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._path = str(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"streams-{self.path.name}")
        self._waiting = self._executor.submit(self._connect, WAIT_SECONDS).result()
        self._store_thread = self._executor.submit(threading.get_ident).result()
        self._at_once = self._connect(WAIT_SECONDS)
        self._at_once.execute("PRAGMA busy_timeout=0")
        self._at_once.execute("PRAGMA wal_autocheckpoint=0")  # the store's thread checkpoints (`_called_at_once`)
        self._caller_thread: int | None = None
        self._calls_at_once = 0
        self._checkpoint: asyncio.Future[object] | None = None
        self._file = _file_identity(self._path)
        self._codes: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._learn(self._waiting.execute("SELECT code, name FROM names"))
        self._executor.submit(self._intern, HandlingStatus).result()  # every status a handling write may hold

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection of the thread running the call: the store's thread waits for the database up to
        `WAIT_SECONDS`; the caller's never waits (`_run`)."""
        return self._waiting if threading.get_ident() == self._store_thread else self._at_once

    def _connect(self, wait: float) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=wait)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreUnusable(f"{self.path} has stream schema {version}; this version knows up to {SCHEMA_VERSION}")
        if version < SCHEMA_VERSION:
            with _transaction(db):
                # another process may have made or migrated the file while this one waited for it
                if (version := db.execute("PRAGMA user_version").fetchone()[0]) < SCHEMA_VERSION:
                    _migrate(db, version)
        return db

    async def _run(self, fn: Callable[..., T], *args: object, at_once: bool = False) -> T:
        """Run `fn` on the file the store opened and no other: on the store's thread; or, for a short call
        (`at_once`: a step's writes, a read by id), on the caller's thread (the first to call, the event loop's)
        without waiting, which saves the hop between threads, and on the store's thread when the database is busy."""
        self._check_file()
        try:
            if at_once and self._caller_thread in (None, threading.get_ident()):
                self._caller_thread = threading.get_ident()
                try:
                    done = fn(*args)
                    self._called_at_once()
                    return done
                except sqlite3.OperationalError as error:
                    if not getattr(error, "sqlite_errorname", "").startswith("SQLITE_BUSY"):
                        raise
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
            found = _file_identity(self._path)
        except FileNotFoundError:
            raise StoreUnusable(
                f"the streams store {self.path} was deleted while in use: restore it (or start afresh) and restart"
            ) from None
        if found != self._file:
            raise StoreUnusable(f"the streams store {self.path} was replaced while in use: restart to use the new one")

    def _called_at_once(self) -> None:
        """Count a call made on the caller's thread; every `CHECKPOINT_EVERY`, checkpoint the log on the store's
        thread (the caller's connection does not: a checkpoint writes and syncs the file, which takes a while)."""
        self._calls_at_once += 1
        if self._calls_at_once % CHECKPOINT_EVERY == 0 and (self._checkpoint is None or self._checkpoint.done()):
            checkpoint = lambda: self._waiting.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # noqa: E731
            self._checkpoint = asyncio.get_running_loop().run_in_executor(self._executor, checkpoint)
            self._checkpoint.add_done_callback(_checkpointed)

    async def close(self) -> None:
        self._at_once.close()
        await asyncio.get_running_loop().run_in_executor(self._executor, self._waiting.close)
        self._executor.shutdown()

    # -- names -----------------------------------------------------------------------------------------------------

    def _learn(self, rows: Iterable[tuple[int, str]]) -> None:
        """Add names and their codes to what this process knows: a code, once given, never changes, so that what
        either thread learns only adds to it."""
        for code, name in rows:
            self._names[code] = name
            self._codes[name] = code

    def _code(self, name: str) -> int:
        """The code rows hold `name` as; 0, which no name has, when no row holds it."""
        if name not in self._codes:
            self._learn(self._db.execute("SELECT code, name FROM names WHERE name = ?", (name,)))
        return self._codes.get(name, 0)

    def _name(self, code: int) -> str:
        if code not in self._names:
            self._learn(self._db.execute("SELECT code, name FROM names WHERE code = ?", (code,)))
        return self._names[code]

    def _intern(self, names: Iterable[str]) -> None:
        """Give each of `names` that has none a code, in a transaction of its own before the write that holds it:
        a code is known to this process only once it is in the file. A name is a row for good (a client's tag names
        among them): the names a store meets are few beside its records."""
        missing = list({name for name in names if name not in self._codes})
        if missing:
            with _transaction(self._db):
                self._db.executemany("INSERT OR IGNORE INTO names (name) VALUES (?)", [(n,) for n in missing])
            marks = ", ".join("?" * len(missing))
            self._learn(self._db.execute(f"SELECT code, name FROM names WHERE name IN ({marks})", missing))

    # -- unique ids -------------------------------------------------------------------------------------------

    async def next_unique_id(self, stream: str) -> int:
        return await self._run(self._next_unique_id, stream, at_once=True)

    def _next_unique_id(self, stream: str) -> int:
        with _transaction(self._db):
            row = self._db.execute(
                "INSERT INTO unique_ids (stream, last_id) VALUES (?, 1) "
                "ON CONFLICT (stream) DO UPDATE SET last_id = last_id + 1 RETURNING last_id",
                (stream,),
            ).fetchone()
        return int(row[0])

    async def next_turn(self, key: str, every: float) -> float:
        return await self._run(self._next_turn, key, every, at_once=True)

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
        return await self._run(self._put_all, stream, records, at_once=len(records) <= AT_ONCE_RECORDS)

    def _put_all(self, stream: str, records: Sequence[NewRecord]) -> list[PutResult]:
        self._intern([stream, *(n for r in records for n in _names(r))])
        with _transaction(self._db):
            return [self._put(stream, record) for record in records]

    async def write(self, puts: Sequence[Put], before: Sequence[Move] = (), after: Sequence[Move] = ()) -> Written:
        return await self._run(self._write, puts, before, after, at_once=True)

    def _write(self, puts: Sequence[Put], before: Sequence[Move], after: Sequence[Move]) -> Written:
        names = [n for p in puts for n in (p.stream, *_names(p.record), *filter(None, [p.record.take_up]))]
        self._intern([*names, *(n for m in (*before, *after) for n in (m.stream, m.concern))])
        with _transaction(self._db):
            moved = [self._move(m) for m in before]
            results = [self._put(p.stream, p.record) for p in puts]
            for put, result in zip(puts, results, strict=True):
                if put.record.take_up is not None:
                    self._moved(put.stream, result.record_internal_id, put.record.take_up, HandlingStatus.RUNNING, "")
            moved += [self._move(m) for m in after]
        return Written(results, moved)

    def _move(self, move: Move) -> bool:
        """Make the move if the record's handling allows it, inside the caller's transaction: whether it did."""
        if move.begin:
            return self._begun(move.stream, move.internal_record_id, move.concern, move.details) is None
        return self._moved(move.stream, move.internal_record_id, move.concern, move.status, move.details)

    def _moved(self, stream: str, internal_record_id: int, concern: str, status: HandlingStatus, details: str) -> bool:
        query, args = select_handling("handling", "?", stream, internal_record_id, concern, True, self._code)
        row = self._db.execute(query, args).fetchone()
        current = HandlingStatus(self._name(row[4])) if row else HandlingStatus.AVAILABLE_BY_DEFAULT
        if not allows(current, status):
            return False
        if row is None:  # no handling yet: the record must be there
            self._latest(stream, internal_record_id, concern)
        self._append(stream, internal_record_id, concern, current, status, details)
        return True

    def _put(self, stream: str, new: NewRecord) -> PutResult:
        """One record, inside the caller's transaction (its names interned before it)."""
        check_put(stream, new.strategy, new.retention)
        notification_id, tags = held(new.tags)
        db, code = self._db, self._codes[stream]
        existing: tuple[int, ...] = ()
        if new.strategy != ExistingRecordStrategy.NONE and new.record_id is not None:
            sql = "SELECT internal_id FROM records WHERE stream = ? AND record_id = ?"
            args: tuple[object, ...] = (code, new.record_id)
            if new.strategy == ExistingRecordStrategy.DO_NOT_WRITE_IF_FOUND_BY_ID_AND_TYPE:
                sql += " AND type = ?"
                args += (self._codes[new.type],)
            existing = tuple(r[0] for r in db.execute(sql + " ORDER BY internal_id", args))
            if existing and new.strategy != ExistingRecordStrategy.PRUNE_IF_FOUND_BY_ID:
                return PutResult(None, existing)
        internal_id = db.execute(
            "INSERT INTO records (stream, record_id, type, notification_id, payload, timestamp_utc) "
            "VALUES (?, ?, ?, ?, ?, ?) RETURNING internal_id",
            (code, new.record_id, self._codes[new.type], notification_id, _payload(stream, new), _now()),
        ).fetchone()[0]
        db.executemany(
            "INSERT INTO record_tags (internal_id, stream, name, value) VALUES (?, ?, ?, ?)",
            [(internal_id, code, self._codes[t.name], t.value) for t in tags],
        )
        if new.strategy == ExistingRecordStrategy.PRUNE_IF_FOUND_BY_ID and existing:
            db.execute(
                "DELETE FROM records WHERE stream = ? AND record_id = ? AND internal_id NOT IN "
                "(SELECT internal_id FROM records WHERE stream = ? AND record_id = ? "
                "ORDER BY internal_id DESC LIMIT ?)",
                (code, new.record_id, code, new.record_id, new.retention),
            )
        return PutResult(internal_id, existing)

    async def _prune_batch(self, before: datetime, limit: int) -> tuple[int, int, int]:
        return await self._run(self._prune, _microseconds(before), limit)

    def _prune(self, before: int, limit: int) -> tuple[int, int, int]:
        db, code = self._db, self._code
        with _transaction(db):
            db.execute("CREATE TEMP TABLE IF NOT EXISTS pruned_notifications (id TEXT PRIMARY KEY)")
            db.execute("CREATE TEMP TABLE IF NOT EXISTS pruned_broadcasts (internal_id INTEGER PRIMARY KEY, id TEXT)")
            db.execute("CREATE TEMP TABLE IF NOT EXISTS pruned_records (internal_id INTEGER PRIMARY KEY, stream)")
            for table in ("pruned_notifications", "pruned_broadcasts", "pruned_records"):
                db.execute(f"DELETE FROM {table}")
            names = {
                "before": before,
                "limit": limit,
                "operations": code(StreamName.CLIENT_OPERATION),
                "requested": code(REQUESTED),
                "broadcast_requested": code(BROADCAST_REQUESTED),
                "broadcast_tag": code(BROADCAST_TAG),
                "events": code(StreamName.NOTIFICATION_EVENT),
                "recipient_refused": code(RECIPIENT_REFUSED),
            }
            # A broadcast's request `h` ended before the date: its latest entry under the concern is `Completed`.
            ended = (
                f"h.concern = {code(SEND_BROADCAST_CONCERN)} AND h.status = {code(HandlingStatus.COMPLETED)}"
                " AND h.timestamp_utc < :before AND h.stream = :operations"
                " AND NOT EXISTS (SELECT 1 FROM handling l WHERE l.stream = h.stream"
                " AND l.internal_record_id = h.internal_record_id AND l.concern = h.concern"
                " AND l.entry_id > h.entry_id)"
            )
            # The views by time, through their partial index, named: SQLite's planner, without statistics, would
            # rather read every view by the index of ids and sort them, for each batch (hours at a million). A view
            # of a broadcast whose request is there and has not ended before the date stays: the broadcast counts
            # its notifications by their views. The view's tags are read by its id, through the index named (the
            # planner would rather read every view's broadcast tag by the index of values), then its broadcast's
            # request by the index of ids and that request's handling by its own.
            notifications = db.execute(
                "INSERT OR IGNORE INTO pruned_notifications SELECT * FROM ("
                " SELECT * FROM (SELECT v.record_id FROM records v INDEXED BY views_by_time"
                f" WHERE v.stream = {VIEWS} AND v.timestamp_utc < :before AND v.record_id IS NOT NULL"
                " AND NOT EXISTS (SELECT 1 FROM record_tags t INDEXED BY record_tags_by_record JOIN records b"
                " ON b.stream = :operations AND b.record_id = t.value"
                f" WHERE t.internal_id = v.internal_id AND t.stream = {VIEWS} AND t.name = :broadcast_tag"
                " AND b.type = :broadcast_requested"
                " AND NOT EXISTS (SELECT 1 FROM handling h INDEXED BY handling_by_record"
                f" WHERE h.internal_record_id = b.internal_id AND {ended}))"
                " ORDER BY v.timestamp_utc LIMIT :limit)"
                " UNION ALL SELECT r.record_id FROM handling h JOIN records r ON r.internal_id = h.internal_record_id"
                f" WHERE h.stream = :operations AND h.status = {REFUSED} AND r.type = :requested"
                " AND r.timestamp_utc < :before"
                ") LIMIT :limit",
                names,
            ).rowcount
            # The broadcasts that ended before the date, by the partial index of their ends; their requests go by
            # their internal ids (as their other records go by their tag).
            broadcasts = db.execute(
                "INSERT OR IGNORE INTO pruned_broadcasts SELECT r.internal_id, r.record_id"
                " FROM handling h INDEXED BY broadcasts_ended JOIN records r ON r.internal_id = h.internal_record_id"
                f" WHERE {ended} AND r.type = :broadcast_requested AND r.record_id IS NOT NULL LIMIT :limit",
                names,
            ).rowcount
            if not (notifications or broadcasts):
                return 0, 0, 0
            by_broadcast = (
                " FROM record_tags t JOIN records r ON r.internal_id = t.internal_id"
                " WHERE t.name = :broadcast_tag AND t.value IN (SELECT id FROM pruned_broadcasts)"
            )
            db.execute(  # their refused recipients: notifications of no view
                f"INSERT OR IGNORE INTO pruned_notifications SELECT r.notification_id{by_broadcast}"
                " AND t.stream = :events AND r.type = :recipient_refused AND r.notification_id IS NOT NULL",
                names,
            )
            db.execute(  # their own records: their requests, and the records of no notification tagged with their ids
                "INSERT OR IGNORE INTO pruned_records SELECT internal_id, :operations FROM pruned_broadcasts"
                f" UNION SELECT r.internal_id, r.stream{by_broadcast}"
                " AND t.stream = :operations AND r.notification_id IS NULL",
                names,
            )
            db.execute(
                "INSERT OR IGNORE INTO pruned_records SELECT internal_id, stream FROM records"
                " WHERE notification_id IN (SELECT id FROM pruned_notifications)"
            )
            db.execute(
                "DELETE FROM content_refs WHERE notification_id IN"
                " (SELECT id FROM pruned_notifications UNION ALL SELECT id FROM pruned_broadcasts)"
            )
            db.execute(
                "DELETE FROM handling"
                " WHERE (stream, internal_record_id) IN (SELECT stream, internal_id FROM pruned_records)"
            )
            records = db.execute(
                "DELETE FROM records WHERE internal_id IN (SELECT internal_id FROM pruned_records)"
            ).rowcount
        return notifications, broadcasts, records

    async def _prune_contents(self, orphaned: datetime | None, limit: int) -> int:
        return await self._run(self._pruned_contents, None if orphaned is None else _microseconds(orphaned), limit)

    def _pruned_contents(self, orphaned: int | None, limit: int) -> int:
        db = self._db
        with _transaction(db):
            if orphaned is not None:
                db.execute(  # a request's record: a notification's (tagged with its id) or a broadcast's (by its id)
                    "DELETE FROM content_refs WHERE timestamp_utc < ?"
                    " AND NOT EXISTS (SELECT 1 FROM records r WHERE r.notification_id = content_refs.notification_id)"
                    " AND NOT EXISTS (SELECT 1 FROM records r"
                    " WHERE r.stream = ? AND r.record_id = content_refs.notification_id)",
                    (orphaned, self._code(StreamName.CLIENT_OPERATION)),
                )
            return db.execute(
                "DELETE FROM contents WHERE sha256 IN (SELECT c.sha256 FROM contents c"
                " WHERE NOT EXISTS (SELECT 1 FROM content_refs r WHERE r.sha256 = c.sha256) LIMIT ?)",
                (limit,),
            ).rowcount

    async def put_contents(self, notification_id: str, contents: Sequence[bytes]) -> list[str]:
        return await self._run(self._put_contents, notification_id, contents)

    def _put_contents(self, notification_id: str, contents: Sequence[bytes]) -> list[str]:
        digests = [hashlib.sha256(content).hexdigest() for content in contents]
        with _transaction(self._db):
            self._db.executemany(
                "INSERT OR IGNORE INTO contents (sha256, content) VALUES (?, ?)", zip(digests, contents, strict=True)
            )
            now = _now()
            self._db.executemany(
                "INSERT OR IGNORE INTO content_refs VALUES (?, ?, ?)", [(notification_id, d, now) for d in digests]
            )
        return digests

    async def content(self, sha256: str) -> bytes | None:
        if not is_digest(sha256):
            return None
        row = await self._run(
            lambda: self._db.execute("SELECT content FROM contents WHERE sha256 = ?", (sha256,)).fetchone()
        )
        return None if row is None else bytes(row[0])

    async def view_counts(self, since: datetime) -> ViewCounts:
        since_us = _microseconds(since)
        return ViewCounts.of(await self._run(lambda: self._db.execute(VIEW_COUNTS, (since_us,)).fetchall()))

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
            named=self._code,
        )
        return await self._records(sql, args, at_once=record_id is not None)

    async def read_tagged(self, streams: Sequence[str], tags: Sequence[Tag]) -> list[Record]:
        return await self._records(*select_tagged("records", "record_tags", "?", TAG_ARRAY, streams, tags, self._code))

    async def _records(self, sql: str, args: list[object], at_once: bool = False) -> list[Record]:
        rows = await self._run(lambda: self._db.execute(sql, args).fetchall(), at_once=at_once)
        name = self._name
        return [
            Record(
                internal_id=r[0],
                stream=name(r[1]),
                record_id=r[2],
                type=name(r[3]),
                payload=unpack(r[4]),
                tags=tags_with(((name(n), v) for n, v in json.loads(r[5])), r[7]),
                timestamp_utc=_time(r[6]),
            )
            for r in rows
        ]

    # -- handling ---------------------------------------------------------------------------------------------

    async def handling_history(self, stream: str, internal_record_id: int, concern: str | None) -> list[HandlingEntry]:
        return await self._run(self._handling_history, stream, internal_record_id, concern, at_once=True)

    def _handling_history(self, stream: str, internal_record_id: int, concern: str | None) -> list[HandlingEntry]:
        query, args = select_handling("handling", "?", stream, internal_record_id, concern, named=self._code)
        return [self._entry(r) for r in self._db.execute(query, args)]

    async def begin(self, stream: str, internal_record_id: int, concern: str, details: str) -> HandlingEntry | None:
        return await self._run(self._begin, stream, internal_record_id, concern, details, at_once=True)

    def _begin(self, stream: str, internal_record_id: int, concern: str, details: str) -> HandlingEntry | None:
        self._intern([stream, concern])
        with _transaction(self._db):
            return self._begun(stream, internal_record_id, concern, details)

    def _begun(self, stream: str, internal_record_id: int, concern: str, details: str) -> HandlingEntry | None:
        """`begin`, inside the caller's transaction."""
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
        return await self._run(self._transition, stream, internal_record_id, concern, status, details, at_once=True)

    def _transition(
        self, stream: str, internal_record_id: int, concern: str, status: HandlingStatus, details: str
    ) -> HandlingEntry:
        self._intern([stream, concern])
        with _transaction(self._db):
            latest = self._latest(stream, internal_record_id, concern)
            current = latest.status if latest else HandlingStatus.AVAILABLE_BY_DEFAULT
            return self._append(stream, internal_record_id, concern, current, status, details)

    def _latest(self, stream: str, internal_record_id: int, concern: str) -> HandlingEntry | None:
        """The record's latest handling entry under `concern`, inside the caller's transaction; the record must be
        in `stream`."""
        db = self._db
        if not db.execute(
            "SELECT 1 FROM records WHERE internal_id = ? AND stream = ?", (internal_record_id, self._code(stream))
        ).fetchone():
            raise NoSuchRecord(f"no record {internal_record_id} in {stream}")
        query, args = select_handling("handling", "?", stream, internal_record_id, concern, True, self._code)
        row = db.execute(query, args).fetchone()
        return None if row is None else self._entry(row)

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
        if not allows(current, status):
            raise InvalidHandlingTransition(
                f"record {internal_record_id} of {stream} under concern {concern!r} is {current}, "
                f"it cannot become {status}"
            )
        timestamp = _now()
        entry_id = self._db.execute(
            "INSERT INTO handling (stream, internal_record_id, concern, status, details, timestamp_utc) "
            "VALUES (?, ?, ?, ?, ?, ?) RETURNING entry_id",
            (
                self._codes[stream],
                internal_record_id,
                self._codes[concern],
                self._codes[status],
                pack(details),
                timestamp,
            ),
        ).fetchone()[0]
        return HandlingEntry(entry_id, stream, internal_record_id, concern, status, details, _time(timestamp))

    def _entry(self, row: Sequence[Any]) -> HandlingEntry:
        name = self._name
        return HandlingEntry(
            row[0], name(row[1]), row[2], name(row[3]), HandlingStatus(name(row[4])), unpack(row[5]), _time(row[6])
        )


def _migrate(db: sqlite3.Connection, version: int) -> None:
    """Make the schema (version 0: a new file) or bring it to `SCHEMA_VERSION`, in the caller's transaction."""
    if 0 < version < 5:
        # a record's tags were kept twice, in its row as JSON too (the tag rows serve)
        db.execute("ALTER TABLE records DROP COLUMN tags")
    for statement in (FROM_SCHEMA_5 if 0 < version < 6 else SCHEMA).split(";"):
        db.execute(statement)
    ended = (SEND_BROADCAST_CONCERN, HandlingStatus.COMPLETED)
    db.executemany("INSERT OR IGNORE INTO names (name) VALUES (?)", [(name,) for name in ended])
    codes = dict(db.execute("SELECT name, code FROM names WHERE name IN (?, ?)", ended).fetchall())
    db.execute(
        BROADCASTS_ENDED.format(concern=codes[SEND_BROADCAST_CONCERN], completed=codes[HandlingStatus.COMPLETED])
    )
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _checkpointed(done: asyncio.Future[object]) -> None:
    """A checkpoint that failed (another process checkpointing, the file busy) is left to the next."""
    if not done.cancelled() and done.exception() is not None:
        log.debug("checkpoint of the streams' log left to the next: %s", done.exception())


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _now() -> int:
    """Now, as rows hold times: microseconds since the epoch."""
    return _microseconds(utc_now())


def _microseconds(at: datetime) -> int:
    return (at - EPOCH) // timedelta(microseconds=1)


def _time(microseconds: int) -> datetime:
    return EPOCH + timedelta(microseconds=microseconds)


def _payload(stream: str, record: NewRecord) -> str | bytes:
    return pack(record.payload) if packable(stream, record.type) else record.payload


def _names(record: NewRecord) -> list[str]:
    """The names a record's row and its tag rows hold as codes."""
    return [record.type, *(t.name for t in record.tags if t.name != HELD_TAG)]


class _transaction:
    """`BEGIN IMMEDIATE` ... `COMMIT`, or `ROLLBACK` on error (a `COMMIT` that fails included, so that the connection
    is never left in a transaction): the write lock is taken before anything is read."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        try:
            if exc_type is None:
                self.db.execute("COMMIT")
        finally:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
