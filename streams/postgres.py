"""The shared stream store: PostgreSQL, for many workers on many machines (psycopg 3, pooled).

Each kind of handle uses its own connection, which can log in as its own role (`grants.sql`): a `WriteOnlyStream`
the producer's, a `ReadOnlyStream` the consumer's, a `HandlingStore` the handler's; the database then refuses the
other direction. Writes go through functions in the schema (`migrations/`), so the existing-record checks, the
unique-id counters and the handling transitions hold under concurrent writers in any number of processes.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import postgres, sql
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.rows import tuple_row
from psycopg.types import TypeInfo
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from activities.contract import SEND_BROADCAST_CONCERN
from commands import command
from domain import Tag
from streams.packing import pack, packable, unpack
from streams.store import (
    ALLOWED_TRANSITIONS,
    BROADCAST_REQUESTED,
    BROADCAST_TAG,
    RECIPIENT_REFUSED,
    REQUESTED,
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
    held,
    is_digest,
    select_handling,
    select_records,
    select_tagged,
    tags_with,
)

MIGRATIONS = {int(path.name.split("_")[0]): path for path in (Path(__file__).parent / "migrations").glob("*.sql")}
"""Each migration by its version, the number its file name starts with."""
SCHEMA_VERSION = max(MIGRATIONS)
GRANTS = Path(__file__).parent / "grants.sql"
MIGRATION_LOCK = 7_303_101  # an advisory lock key: one migrator at a time
CONTENTS_LOCK = 7_303_102
"""An advisory lock key: puts of contents share it (`notify_put_contents`), pruning them holds it alone, so that no
content is removed as a put names it."""
LISTEN_CONNECT_TIMEOUT = 10


class SchemaMismatch(StoreUnusable):
    pass


@asynccontextmanager
async def _using(pool: AsyncConnectionPool) -> AsyncIterator[psycopg.AsyncConnection]:
    """A connection of `pool`. What it raises is classified: a connection lost or refused, or none to be had in
    time, is `StoreUnavailable`; the schema's own refusals are named; any other error is a bug or bad data."""
    try:
        async with pool.connection() as db:
            yield db
    except PoolTimeout as error:
        raise StoreUnavailable(f"the streams database cannot be used now: {error}") from error
    except psycopg.Error as error:
        classified = _classified(error)
        if classified is error:
            raise
        raise classified from error


TRANSIENT_SQLSTATES = ("08", "40", "53", "57", "25006", "25P03", "55P03")
"""SQLSTATEs (classes, or codes) of what a later attempt may not meet: a connection lost or refused, a serialization
failure or deadlock, resources short, an operator's intervention (a shutdown, a cancelled statement), a standby
that is read-only after a failover, a session timed out, a lock not had in time."""
UNUSABLE_SQLSTATES = ("42501", "42883", "42P01")
"""Privileges missing, or a function or table missing: the database is not yet as this version needs (`db migrate`,
`db grant`); retried, and said in one line."""


def _first_line(error: BaseException) -> str:
    return next(iter(str(error).strip().splitlines()), repr(error))


def _classified(error: psycopg.Error) -> Exception:
    """What `error` means to the store's callers."""
    state, said = error.sqlstate or "", _first_line(error)
    if state == "NT001":
        return InvalidHandlingTransition(said)
    if state == "NT003":
        return NoSuchRecord(said)
    if state == "NT002":
        return ValueError(said)
    if (isinstance(error, psycopg.OperationalError) and not state) or state.startswith(TRANSIENT_SQLSTATES):
        return StoreUnavailable(f"the streams database cannot be used now: {said}")
    if state.startswith(UNUSABLE_SQLSTATES):
        return StoreUnusable(
            f"the streams database cannot be used as it is: {said} (run `{command('starter.py', 'db', 'migrate')}` "
            "and `db grant`?)"
        )
    return error


@dataclass(frozen=True)
class AccessUrls:
    """Where each kind of handle connects; one URL can serve all three."""

    producer: str
    consumer: str
    handler: str


BROADCAST_ENDED = f"""
h.concern = '{SEND_BROADCAST_CONCERN}' AND h.status = '{HandlingStatus.COMPLETED}' AND h.timestamp_utc < %(before)s
AND h.stream = '{StreamName.CLIENT_OPERATION}' AND NOT EXISTS (
    SELECT 1 FROM notify_handling l WHERE l.internal_record_id = h.internal_record_id AND l.concern = h.concern
    AND l.stream = h.stream AND l.entry_id > h.entry_id
)"""
"""The handling entry `h` of a broadcast's request that ended the broadcast before the date: its request's latest
entry under the concern `send-broadcast`, `Completed`."""

PRUNE = f"""
WITH notifications AS (
    (
        SELECT v.record_id AS id FROM notify_records v
        WHERE v.stream = '{StreamName.NOTIFICATION_VIEW}' AND v.timestamp_utc < %(before)s AND v.record_id IS NOT NULL
        -- not a view of a broadcast whose request is there and has not ended before the date: the broadcast counts
        -- its notifications by their views. OFFSET 0 keeps this a lookup for each view (its tags by the index of
        -- records, its broadcast's request by the index of ids); made a join, the planner, which takes a broadcast
        -- for having a view or two, would read every view of every running broadcast for each batch.
        AND NOT EXISTS (
            SELECT 1 FROM notify_record_tags t
            JOIN notify_records b ON b.stream = '{StreamName.CLIENT_OPERATION}' AND b.record_id = t.value
            WHERE t.internal_id = v.internal_id AND t.stream = v.stream AND t.name = '{BROADCAST_TAG}'
            AND b.type = '{BROADCAST_REQUESTED}'
            AND NOT EXISTS (
                SELECT 1 FROM notify_handling h WHERE h.internal_record_id = b.internal_id AND {BROADCAST_ENDED}
            )
            OFFSET 0
        )
        ORDER BY v.timestamp_utc LIMIT %(limit)s
    ) UNION ALL (
        SELECT r.record_id FROM notify_handling h JOIN notify_records r ON r.internal_id = h.internal_record_id
        WHERE h.stream = '{StreamName.CLIENT_OPERATION}' AND h.status = '{HandlingStatus.DISABLED_FOR_RECORD}'
        AND r.type = '{REQUESTED}'
        AND r.timestamp_utc < %(before)s
        LIMIT %(limit)s
    )
    LIMIT %(limit)s
), broadcasts AS (
    SELECT r.internal_id, r.stream, r.record_id AS id
    FROM notify_handling h JOIN notify_records r ON r.internal_id = h.internal_record_id
    WHERE {BROADCAST_ENDED} AND r.type = '{BROADCAST_REQUESTED}' AND r.record_id IS NOT NULL
    LIMIT %(limit)s
), ended AS (
    SELECT id FROM notifications
    UNION ALL
    SELECT r.notification_id FROM notify_record_tags t JOIN notify_records r ON r.internal_id = t.internal_id
    WHERE t.stream = '{StreamName.NOTIFICATION_EVENT}' AND t.name = '{BROADCAST_TAG}'
    AND t.value = ANY(ARRAY(SELECT id FROM broadcasts)) AND r.type = '{RECIPIENT_REFUSED}'
    AND r.notification_id IS NOT NULL
), pruned AS (
    SELECT r.internal_id, r.stream FROM notify_records r
    WHERE r.notification_id = ANY(ARRAY(SELECT id FROM ended)) AND r.stream = ANY(%(streams)s)
    UNION
    SELECT internal_id, stream FROM broadcasts
    UNION
    SELECT r.internal_id, r.stream FROM notify_record_tags t JOIN notify_records r ON r.internal_id = t.internal_id
    WHERE t.stream = '{StreamName.CLIENT_OPERATION}' AND t.name = '{BROADCAST_TAG}'
    AND t.value = ANY(ARRAY(SELECT id FROM broadcasts)) AND r.notification_id IS NULL
), handling AS (
    DELETE FROM notify_handling h USING pruned p WHERE h.stream = p.stream AND h.internal_record_id = p.internal_id
), content_refs AS (
    DELETE FROM notify_content_refs c
    WHERE c.notification_id = ANY(ARRAY(SELECT id FROM ended UNION ALL SELECT id FROM broadcasts))
), records AS (
    DELETE FROM notify_records r USING pruned p WHERE r.internal_id = p.internal_id RETURNING 1
)
SELECT (SELECT count(*) FROM notifications), (SELECT count(*) FROM broadcasts), (SELECT count(*) FROM records)
"""
"""Prune one batch of notifications and one of broadcasts (`StreamStore.prune`): the notifications' records, found by
their notification id (but those of a broadcast that has not ended before the date), and the broadcasts' (found by the
partial index of their ends, migration 0014): their request, their other records tagged with their id and of no
notification, and their refused recipients' records; with their tags (a trigger deletes them), their handling and the
names of their contents."""

PRUNE_CONTENT_REFS = f"""
DELETE FROM notify_content_refs c WHERE c.timestamp_utc < %(before)s
AND NOT EXISTS (SELECT 1 FROM notify_records r WHERE r.notification_id = c.notification_id)
AND NOT EXISTS (
    SELECT 1 FROM notify_records r WHERE r.stream = '{StreamName.CLIENT_OPERATION}' AND r.record_id = c.notification_id
)
"""
"""Forget the contents' names of requests with no record (a request never written): neither a notification's
record (by the records' notification-id index) nor a broadcast's, whose contents its id names (by the index of
ids)."""
PRUNE_CONTENTS = """
DELETE FROM notify_contents WHERE sha256 IN (
    SELECT c.sha256 FROM notify_contents c
    WHERE NOT EXISTS (SELECT 1 FROM notify_content_refs r WHERE r.sha256 = c.sha256) LIMIT %(limit)s
)
"""
"""Remove the contents no notification names: a statement of its own, which sees the names the one before removed."""


VIEW_COUNTS = f"""
WITH views AS MATERIALIZED (
    SELECT to_char(timestamp_utc AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI') AS minute,
        CASE WHEN internal_id = ANY(%(unreadable)s) THEN NULL ELSE payload::jsonb END AS view
    FROM notify_records
    WHERE stream = '{StreamName.NOTIFICATION_VIEW}' AND timestamp_utc >= %(since)s
)
SELECT minute, NULL,
    CASE WHEN jsonb_typeof(view -> 'status') = 'string' THEN view ->> 'status'
         ELSE '{UNREADABLE}' END AS status,
    count(*)
FROM views GROUP BY minute, status
UNION ALL
SELECT minute, c.key,
    CASE WHEN jsonb_typeof(c.value -> 'outcome') = 'string' THEN c.value ->> 'outcome'
         ELSE '{UNREADABLE}' END AS outcome,
    count(*)
FROM views, jsonb_each(CASE WHEN jsonb_typeof(view -> 'channels') = 'object' THEN view -> 'channels' END) c
GROUP BY minute, c.key, outcome
"""
"""`StreamStore.view_counts`: the views by their partial index by time, each payload read as JSON once, but those
known not to parse (`unreadable`, internal ids)."""
PAYLOAD = "payload, packed"
"""The columns a record's payload is in: one of them, text as written or packed (`streams.packing`)."""

VIEW_PAYLOADS = f"""
SELECT internal_id, payload FROM notify_records
WHERE stream = '{StreamName.NOTIFICATION_VIEW}' AND timestamp_utc >= %(since)s
"""


_ARRAY = struct.Struct(">iiIii")
_EMPTY_ARRAY = struct.Struct(">iiI")
_INT4 = struct.Struct(">i")
_INT8 = struct.Struct(">q")
_NULL = _INT4.pack(-1)
_TEXT, _INTEGER, _BIGINT, _BYTEA = (postgres.types[name] for name in ("text", "int4", "int8", "bytea"))


def _array(oid: int, items: Sequence[bytes | None]) -> bytes:
    """A one-dimensional array of the type `oid` in PostgreSQL's binary form, from its elements' binary forms: built
    in one go, where psycopg builds a list's array an element at a time (most of a batch's time in the client)."""
    if not items:
        return _EMPTY_ARRAY.pack(0, 0, oid)
    parts = [_ARRAY.pack(1, int(None in items), oid, len(items), 1)]
    for item in items:
        parts += (_NULL,) if item is None else (_INT4.pack(len(item)), item)
    return b"".join(parts)


class _Texts(list[str | None]):
    """A text[] argument, sent in binary."""


class _Integers(list[int]):
    """An integer[] argument, sent in binary."""


class _Bigints(list[int]):
    """A bigint[] argument, sent in binary."""


class _Blobs(list[bytes | None]):
    """A bytea[] argument, sent in binary."""


def _dumped_in_binary(arrays: type[list[Any]], element_type: TypeInfo, element: Callable[[Any], bytes]) -> None:
    """Have psycopg send a list of the class `arrays` as an array of `element_type`, each element as `element` makes
    it in binary (a null as a null)."""

    class ArrayDumper(Dumper):
        format = Format.BINARY
        oid = element_type.array_oid

        def dump(self, obj: list[Any]) -> bytes:
            return _array(element_type.oid, [None if item is None else element(item) for item in obj])

    psycopg.adapters.register_dumper(arrays, ArrayDumper)


_dumped_in_binary(_Texts, _TEXT, str.encode)
_dumped_in_binary(_Integers, _INTEGER, _INT4.pack)
_dumped_in_binary(_Bigints, _BIGINT, _INT8.pack)
_dumped_in_binary(_Blobs, _BYTEA, bytes)

TAG_ARRAY = "coalesce(jsonb_agg(jsonb_build_array(name, value)), '[]')"
"""A record's tags, as one JSON array of [name, value] pairs."""


class PostgresStreamStore(StreamStore):
    tells_of_operations = True

    def __init__(self, urls: AccessUrls, max_connections: int = 10) -> None:
        pools: dict[str, AsyncConnectionPool] = {}
        for url in dict.fromkeys((urls.producer, urls.consumer, urls.handler)):
            pools[url] = AsyncConnectionPool(
                url,
                min_size=1,
                max_size=max_connections,
                open=False,
                # JIT compiles a statement the planner thinks costly, as any is on a table not analyzed yet (after
                # a bulk load or a restore): milliseconds spent on each of the store's short statements, for nothing
                # (pruning a million notifications went from hours to minutes without it)
                kwargs={"autocommit": True, "options": "-c timezone=UTC -c jit=off"},
            )
        self._pools = pools
        self._producer, self._consumer, self._handler = (pools[u] for u in (urls.producer, urls.consumer, urls.handler))
        self._listen_url = urls.consumer
        self._listening: asyncio.Task[None] | None = None
        self._listener_made = asyncio.Lock()
        self._requested: dict[str, asyncio.Event] = {}

    async def open(self) -> None:
        try:
            for url, pool in self._pools.items():
                # one plain connection first: a wrong URL or role fails at once, with the server's own words
                async with await psycopg.AsyncConnection.connect(url, connect_timeout=10):
                    pass
                await pool.open(wait=True, timeout=30)
            version = await schema_version(self._consumer)
            transitions = await _recorded_transitions(self._consumer) if version == SCHEMA_VERSION else None
        except BaseException as error:
            await self.close()
            said = _first_line(error)
            if isinstance(error, psycopg.OperationalError | PoolTimeout):
                raise StoreUnavailable(said) from error
            if isinstance(error, psycopg.Error):  # a wrong role, a missing schema: not usable as it was opened
                raise StoreUnusable(said) from error
            raise
        if version != SCHEMA_VERSION:
            await self.close()
            raise SchemaMismatch(
                f"the streams schema is at version {version}, this version needs {SCHEMA_VERSION}: "
                + (
                    f"run `{command('starter.py', 'db', 'migrate')}`"
                    if version < SCHEMA_VERSION
                    else "upgrade this worker"
                )
            )
        if transitions != _transitions():
            await self.close()
            raise SchemaMismatch(
                "the streams database's handling transitions are not this version's: run "
                f"`{command('starter.py', 'db', 'migrate')}`"
            )

    async def close(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            await asyncio.gather(self._listening, return_exceptions=True)
        for pool in self._pools.values():
            await pool.close()

    async def wait_for_operations(self, stream: str, timeout: float) -> None:
        """Woken by LISTEN notify_requested, on a connection of its own (a session of its own: not through a pooler
        in transaction mode). When that connection is (re)made, it returns at once: what was requested while nobody
        listened is for the caller to look for."""
        requested = self._requested.setdefault(stream, asyncio.Event())
        async with self._listener_made:
            if self._listening is None or self._listening.done():
                listening: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._listening = asyncio.create_task(self._listen(listening))
                try:
                    await asyncio.wait_for(listening, LISTEN_CONNECT_TIMEOUT)
                except (psycopg.Error, TimeoutError) as error:
                    self._listening.cancel()
                    raise StoreUnavailable(
                        f"the streams database cannot be listened to now: {_first_line(error)}"
                    ) from error
                return
        try:
            await asyncio.wait_for(requested.wait(), timeout)
        except TimeoutError:
            pass
        requested.clear()

    async def _listen(self, listening: asyncio.Future[None]) -> None:
        try:
            async with await psycopg.AsyncConnection.connect(  # keepalives: a server gone is found out in ~25 s
                self._listen_url,
                autocommit=True,
                connect_timeout=LISTEN_CONNECT_TIMEOUT,
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
            ) as db:
                await db.execute("LISTEN notify_requested")
                listening.set_result(None)
                async for notice in db.notifies():
                    self._requested.setdefault(notice.payload, asyncio.Event()).set()
        except psycopg.Error as error:
            if not listening.done():
                listening.set_exception(error)
        for requested in self._requested.values():  # the connection is lost: every waiter looks again
            requested.set()

    async def next_unique_id(self, stream: str) -> int:
        async with _using(self._producer) as db:
            row = await (await db.execute("SELECT notify_next_unique_id(%s)", (stream,))).fetchone()
        assert row is not None
        return int(row[0])

    async def next_turn(self, key: str, every: float) -> float:
        async with _using(self._handler) as db:
            # the turn is taken (in FROM) before the clock is read again: a turn that is now waits 0
            row = await (
                await db.execute(
                    "SELECT greatest(0, extract(epoch FROM turn - clock_timestamp()))::float8"
                    " FROM notify_next_turn(%s, %s) AS turn",
                    (key, every),
                )
            ).fetchone()
        assert row is not None
        wait: float = row[0]
        return wait

    async def identity(self) -> str:
        async with _using(self._producer) as db:
            row = await (await db.execute("SELECT value FROM notify_identity")).fetchone()
        assert row is not None
        return str(row[0])

    async def put(self, stream: str, records: Sequence[NewRecord]) -> list[PutResult]:
        if not records:
            return []
        if all(new.strategy == ExistingRecordStrategy.NONE and new.take_up is None for new in records):
            return await self._append_all(stream, records)
        put_arrays = _put_arrays([Put(stream, record) for record in records])
        async with _using(self._producer) as db:
            return await _put_all(db, put_arrays)

    async def write(self, puts: Sequence[Put], before: Sequence[Move] = (), after: Sequence[Move] = ()) -> Written:
        put_arrays = _put_arrays(puts)  # a put no store takes is refused before any part is written
        if self._producer is self._handler:  # one role: one statement
            async with _using(self._producer) as db:
                cursor = await db.execute(
                    f"SELECT notify_write({MOVE_ARRAYS}, {PUT_ARRAYS}, %b, {MOVE_ARRAYS})",
                    (
                        *_move_arrays(before),
                        *put_arrays,
                        _Texts(p.record.take_up for p in puts),
                        *_move_arrays(after),
                    ),
                )
                row = await cursor.fetchone()
            assert row is not None
            return Written([_put_result(put) for put in row[0]["puts"]], row[0]["moved"])
        moved = []
        if before:
            async with _using(self._handler) as db:
                moved = await _move_all(db, before)
        results: list[PutResult] = []
        if puts:
            async with _using(self._producer) as db:
                results = await _put_all(db, put_arrays)
        if later := [*_take_ups(puts, results), *after]:
            async with _using(self._handler) as db:
                moved += (await _move_all(db, later))[len(later) - len(after) :]
        return Written(results, moved)

    async def _append_all(self, stream: str, records: Sequence[NewRecord]) -> list[PutResult]:
        """Records that all append, in one statement (`notify_put_batch`), their arrays sent in binary: no function
        call per record, nor text to parse."""
        rows = [_Row.of(stream, new) for new in records]
        tagged = [(n, t) for n, row in enumerate(rows, 1) for t in row.tags]
        async with _using(self._producer) as db:
            cursor = await db.execute(
                "SELECT notify_put_batch(%b, %b, %b, %b, %b, %b, %b, %b, %b)",
                (
                    stream,
                    _Texts(new.record_id for new in records),
                    _Texts(new.type for new in records),
                    _Texts(row.payload for row in rows),
                    _Integers(n for n, _ in tagged),
                    _Texts(t.name for _, t in tagged),
                    _Texts(t.value for _, t in tagged),
                    _Texts(row.notification_id for row in rows),
                    _Blobs(row.packed for row in rows),
                ),
            )
            row = await cursor.fetchone()
        assert row is not None
        return [PutResult(internal_id) for internal_id in row[0]]

    async def _prune_batch(self, before: datetime, limit: int) -> tuple[int, int, int]:
        """One statement as the owner (as the schema's functions run): the roles may neither read nor delete."""
        async with _using(self._producer) as db:
            streams = [s.value for s in StreamName]
            cursor = await db.execute(PRUNE, {"before": before, "limit": limit, "streams": streams})
            row = await cursor.fetchone()
        assert row is not None
        return row[0], row[1], row[2]

    async def _prune_contents(self, orphaned: datetime | None, limit: int) -> int:
        """As the owner, as `_prune_batch` is; one transaction holding `CONTENTS_LOCK` alone."""
        async with _using(self._producer) as db, db.transaction():
            await db.execute("SELECT pg_advisory_xact_lock(%s)", (CONTENTS_LOCK,))
            if orphaned is not None:
                await db.execute(PRUNE_CONTENT_REFS, {"before": orphaned})
            return (await db.execute(PRUNE_CONTENTS, {"limit": limit})).rowcount

    async def put_contents(self, notification_id: str, contents: Sequence[bytes]) -> list[str]:
        """One call of `notify_put_contents`, which computes the digests; the contents sent as a binary bytea[]."""
        if not contents:
            return []
        async with _using(self._producer) as db:
            cursor = await db.execute("SELECT notify_put_contents(%s, %b)", (notification_id, _Blobs(contents)))
            row = await cursor.fetchone()
        assert row is not None
        return list(row[0])

    async def content(self, sha256: str) -> bytes | None:
        if not is_digest(sha256):
            return None
        async with _using(self._consumer) as db:
            # in binary: a bytea in text is hex, twice its size on the wire
            cursor = await db.execute("SELECT content FROM notify_contents WHERE sha256 = %s", (sha256,), binary=True)
            row = await cursor.fetchone()
        return None if row is None else bytes(row[0])

    async def view_counts(self, since: datetime) -> ViewCounts:
        """PostgreSQL before 16 cannot test whether a text is JSON without failing the statement: only when a view in
        the window does not parse are the window's payloads read here, to leave out those that do not."""
        unreadable: list[int] = []
        async with _using(self._consumer) as db:
            try:
                cursor = await db.execute(VIEW_COUNTS, {"since": since, "unreadable": unreadable})
            except (psycopg.DataError, psycopg.errors.ProgramLimitExceeded):  # class 22: not JSON, or not jsonb's
                payloads = await (await db.execute(VIEW_PAYLOADS, {"since": since})).fetchall()
                unreadable = [internal_id for internal_id, payload in payloads if not _jsonb_reads(payload)]
                cursor = await db.execute(VIEW_COUNTS, {"since": since, "unreadable": unreadable})
            return ViewCounts.of(await cursor.fetchall())

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
        query, args = select_records(
            "notify_records",
            "notify_record_tags",
            "notify_handling",
            "%s",
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
            payload=PAYLOAD,
        )
        return await self._records(query, args)

    async def read_tagged(self, streams: Sequence[str], tags: Sequence[Tag]) -> list[Record]:
        return await self._records(
            *select_tagged("notify_records", "notify_record_tags", "%s", TAG_ARRAY, streams, tags, payload=PAYLOAD)
        )

    async def _records(self, query: str, args: list[object]) -> list[Record]:
        async with _using(self._consumer) as db:
            rows = await (await db.execute(query, args)).fetchall()
        return [
            Record(r[0], r[1], r[2], r[3], unpack(r[5] if r[4] is None else r[4]), tags_with(r[6], r[8]), r[7])
            for r in rows
        ]

    async def handling_history(self, stream: str, internal_record_id: int, concern: str | None) -> list[HandlingEntry]:
        query, args = select_handling("notify_handling", "%s", stream, internal_record_id, concern, details=DETAILS)
        async with _using(self._consumer) as db:
            rows = await (await db.execute(query, args)).fetchall()
        return [_entry(r) for r in rows]

    async def begin(self, stream: str, internal_record_id: int, concern: str, details: str) -> HandlingEntry | None:
        async with _using(self._handler) as db:
            cursor = await db.execute(
                f"SELECT {ENTRY} FROM notify_begin(%s, %s, %s, %s, %s)",
                (stream, internal_record_id, concern, *_text_or_packed(details)),
            )
            r = await cursor.fetchone()
        return None if r is None else _entry(r)

    async def transition(
        self, stream: str, internal_record_id: int, concern: str, status: HandlingStatus, details: str
    ) -> HandlingEntry:
        async with _using(self._handler) as db:
            cursor = await db.execute(
                f"SELECT {ENTRY} FROM notify_transition(%s, %s, %s, %s, %s, %s)",
                (stream, internal_record_id, concern, status.value, *_text_or_packed(details)),
            )
            r = await cursor.fetchone()
        assert r is not None
        return _entry(r)


DETAILS = "details, details_packed"
"""The columns a handling entry's details are in: one of them, text as written or packed (`streams.packing`)."""
ENTRY = f"entry_id, stream, internal_record_id, concern, status, {DETAILS}, timestamp_utc"
"""A handling entry's columns, as `select_handling` reads them and `_entry` takes them."""


def _entry(row: Sequence[Any]) -> HandlingEntry:
    details = unpack(row[6] if row[5] is None else row[5])
    return HandlingEntry(row[0], row[1], row[2], row[3], HandlingStatus(row[4]), details, row[7])


MOVE_ARRAYS = "%b, %b, %b, %b, %b, %b, %b::boolean[]"
"""The moves' parameters of `notify_move_all` and `notify_write`: one array per field, sent in binary."""
PUT_ARRAYS = "%b, %b, %b, %b, %b::jsonb[], %b, %b, %b, %b"
"""The puts' parameters of `notify_put_all` and `notify_write`: one array per field, sent in binary."""


def _move_arrays(moves: Sequence[Move]) -> tuple[list[Any], ...]:
    details = [_text_or_packed(m.details) for m in moves]
    return (
        _Texts(m.stream for m in moves),
        _Bigints(m.internal_record_id for m in moves),
        _Texts(m.concern for m in moves),
        _Texts(m.status.value for m in moves),
        _Texts(text for text, _ in details),
        _Blobs(packed for _, packed in details),
        _Texts("t" if m.begin else "f" for m in moves),
    )


def _put_arrays(puts: Sequence[Put]) -> tuple[list[Any], ...]:
    rows = [_Row.of(p.stream, p.record) for p in puts]
    return (
        _Texts(p.stream for p in puts),
        _Texts(p.record.record_id for p in puts),
        _Texts(p.record.type for p in puts),
        _Texts(row.payload for row in rows),
        _Texts(json.dumps([[t.name, t.value] for t in row.tags]) for row in rows),
        _Texts(p.record.strategy.value for p in puts),
        _Integers(p.record.retention for p in puts),
        _Texts(row.notification_id for row in rows),
        _Blobs(row.packed for row in rows),
    )


@dataclass(frozen=True)
class _Row:
    """What a new record's row holds beyond its id and type: its `HELD_TAG` in a column of its own, its other tags as
    rows, and its payload as text or packed (one of the two)."""

    notification_id: str | None
    tags: list[Tag]
    payload: str | None
    packed: bytes | None

    @classmethod
    def of(cls, stream: str, new: NewRecord) -> _Row:
        notification_id, tags = held(new.tags)
        if packable(stream, new.type):
            return cls(notification_id, tags, *_text_or_packed(new.payload))
        return cls(notification_id, tags, new.payload, None)


def _text_or_packed(text: str) -> tuple[str | None, bytes | None]:
    """`text` as a row holds it (a payload, a handling entry's details): in its text column, or packed
    (`streams.packing.pack`) in its bytea column."""
    stored = pack(text)
    return (None, stored) if isinstance(stored, bytes) else (stored, None)


def _put_result(result: list[Any]) -> PutResult:
    """A put's result as `notify_put_all` gives it: [internal id or null, [existing ids]]."""
    return PutResult(result[0], tuple(result[1] or ()))


async def _put_all(db: psycopg.AsyncConnection, put_arrays: tuple[list[Any], ...]) -> list[PutResult]:
    """Put each record in its stream, in order, in one statement (`notify_put_all`), from `_put_arrays`."""
    cursor = await db.execute(f"SELECT notify_put_all({PUT_ARRAYS})", put_arrays)
    row = await cursor.fetchone()
    assert row is not None
    return [_put_result(put) for put in row[0]]


async def _move_all(db: psycopg.AsyncConnection, moves: Sequence[Move]) -> list[bool]:
    """Make each move its record's status allows, in order, in one statement (`notify_move_all`): whether each was
    made (a begin is made unless the record was handled)."""
    cursor = await db.execute(f"SELECT notify_move_all({MOVE_ARRAYS})", _move_arrays(moves))
    row = await cursor.fetchone()
    assert row is not None
    return list(row[0])


def _take_ups(puts: Sequence[Put], results: Sequence[PutResult]) -> list[Move]:
    """The moves that take up the put records that name a concern."""
    return [
        Move(put.stream, result.record_internal_id, put.record.take_up, HandlingStatus.RUNNING)
        for put, result in zip(puts, results, strict=True)
        if put.record.take_up is not None
    ]


def _jsonb_reads(payload: str) -> bool:
    """Whether PostgreSQL reads `payload` as jsonb: it is JSON, without NaN or Infinity, a number past a double's
    exponents, a NUL or a lone surrogate (which Python's reader takes), nested less deeply than Python recurses. A
    payload it would read is sometimes said not to (a text holding the six characters `\\u0000`, a number of
    thousands of digits): it is then counted as unreadable, and never sent to the cast."""
    try:
        decoded = json.loads(payload, parse_constant=_no_constant, parse_float=_double)
        written = json.dumps(decoded, ensure_ascii=False)
        written.encode()
    except (ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        return False
    return "\\u0000" not in written


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _double(text: str) -> float:
    value = float(text)
    _, _, exponent = text.lower().partition("e")
    if not math.isfinite(value) or abs(int(exponent or 0)) > 308:
        raise ValueError(f"{text[:20]} is past a double")
    return value


def _transitions() -> set[tuple[str, str]]:
    return {(to.value, from_.value) for to, froms in ALLOWED_TRANSITIONS.items() for from_ in froms}


async def _recorded_transitions(pool: AsyncConnectionPool) -> set[tuple[str, str]]:
    async with pool.connection() as db:
        rows = await (await db.execute("SELECT to_status, from_status FROM notify_handling_transitions")).fetchall()
    return {(r[0], r[1]) for r in rows}


async def schema_version(pool: AsyncConnectionPool) -> int:
    async with pool.connection() as db:
        cursor = await db.execute("SELECT to_regclass('notify_schema_migrations') IS NOT NULL")
        exists = await cursor.fetchone()
        if not (exists and exists[0]):
            return 0
        row = await (await db.execute("SELECT coalesce(max(version), 0) FROM notify_schema_migrations")).fetchone()
    assert row is not None
    return int(row[0])


@asynccontextmanager
async def _administering(url: str) -> AsyncIterator[psycopg.AsyncConnection]:
    """A connection for migrating and granting; what the server refuses is said in its own words, in one line."""
    try:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True, row_factory=tuple_row) as db:
            yield db
    except psycopg.Error as error:
        said = _first_line(error)
        unavailable = isinstance(error, psycopg.OperationalError)
        raise (StoreUnavailable if unavailable else StoreUnusable)(said) from error


async def migrate(url: str) -> list[str]:
    """Apply the migrations the database has not had and write the handling transitions, in one transaction (so that
    no worker ever sees a schema without its transitions), then the roles' grants again if the roles were made
    already; returns the migrations' names."""
    applied = []
    async with _administering(url) as db:
        await db.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        # what the functions made here will search: this schema, and a caller's temporary tables last of all
        schema = (await (await db.execute("SELECT current_schema()")).fetchone())[0]  # type: ignore[index]
        await db.execute(sql.SQL("SET search_path = {}, pg_temp").format(sql.Identifier(schema)))
        await db.execute(
            "CREATE TABLE IF NOT EXISTS notify_schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        row = await (await db.execute("SELECT coalesce(max(version), 0) FROM notify_schema_migrations")).fetchone()
        current = row[0]  # type: ignore[index]
        async with db.transaction():
            for version, path in sorted(MIGRATIONS.items()):
                if version <= current:
                    continue
                await db.execute(path.read_text())
                await db.execute(
                    "INSERT INTO notify_schema_migrations (version, name) VALUES (%s, %s)", (version, path.name)
                )
                applied.append(path.name)
            # the transitions' one source is `ALLOWED_TRANSITIONS`: written on every run
            await db.execute("DELETE FROM notify_handling_transitions")
            async with db.cursor() as cursor:
                await cursor.executemany(
                    "INSERT INTO notify_handling_transitions (to_status, from_status) VALUES (%s, %s)",
                    sorted(_transitions()),
                )
        await db.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        granted = await (await db.execute("SELECT 1 FROM pg_roles WHERE rolname = 'notify_producer'")).fetchone()
    if granted:  # again on every run: a grant that failed once is made good by the next
        await grant(url)
    return applied


async def grant(url: str) -> None:
    """Create the producer, consumer and handler roles if missing, and grant each what it may do here."""
    async with _administering(url) as db:
        row = await (await db.execute("SELECT current_database(), current_schema()")).fetchone()
        await db.execute(grants(*row))  # type: ignore[misc]


def grants(database: str, schema: str) -> sql.Composed:
    """grants.sql, for this database and the schema the streams are in."""
    return sql.SQL(GRANTS.read_text()).format(database=sql.Identifier(database), schema=sql.Identifier(schema))
