"""The stream store interface: records in named streams, and a handling store beside them.

A backend implements `StreamStore`. Producers and consumers never see the backend itself, only the handles it hands
out: a `WriteOnlyStream` can issue ids and put records and has no way to read; a `ReadOnlyStream` can read and has no
way to write; a `HandlingStore` keeps, per record and concern, an append-only history of handling statuses.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from domain import BroadcastRecipientRefused, BroadcastRequestedEvent, ExecuteOpRequestedEvent, Tag, TagName

M = TypeVar("M", bound=BaseModel)


class StreamName(StrEnum):
    CLIENT_OPERATION = "client-operation"
    INTERNAL_OPERATION = "internal-operation"
    NOTIFICATION_SAGA = "notification-saga"
    NOTIFICATION_EVENT = "notification-event"
    NOTIFICATION_VIEW = "notification-view"
    NOTIFICATION_SNAPSHOT = "notification-snapshot"
    EMAIL_OPERATION = "email-operation"
    EMAIL_EVENT = "email-event"
    SLACK_OPERATION = "slack-operation"
    SLACK_EVENT = "slack-event"
    ENTITY_DIRECTORY = "entity-directory"
    API_KEY = "api-key"
    WEBHOOK = "webhook"
    WEBHOOK_DELIVERY = "webhook-delivery"


class ExistingRecordStrategy(StrEnum):
    """What a put does when records with the same id (and type) are already in the stream."""

    NONE = "None"
    DO_NOT_WRITE_IF_FOUND_BY_ID = "DoNotWriteIfFoundById"
    DO_NOT_WRITE_IF_FOUND_BY_ID_AND_TYPE = "DoNotWriteIfFoundByIdAndType"
    PRUNE_IF_FOUND_BY_ID = "PruneIfFoundById"
    """Write, then keep only the newest `retention` records with that id (views and snapshots)."""


@dataclass(frozen=True)
class Record:
    internal_id: int
    stream: str
    record_id: str | None
    type: str
    payload: str
    """The raw JSON payload, as written; views are read this way and handed on without decoding."""
    tags: tuple[Tag, ...]
    """In order of name, then value."""
    timestamp_utc: datetime

    def object(self, model: builtins.type[M]) -> M:
        return model.model_validate_json(self.payload)

    def json(self) -> dict[str, Any]:
        """The payload as JSON: every record's payload is an object."""
        payload: dict[str, Any] = json.loads(self.payload)
        return payload

    @staticmethod
    def tags_of(pairs: Iterable[Sequence[str]]) -> tuple[Tag, ...]:
        """A record's tags from its [name, value] pairs, in any order."""
        return tuple(Tag(name=n, value=v) for n, v in sorted(map(tuple, pairs)))

    def tag(self, name: str) -> str | None:
        return next((t.value for t in self.tags if t.name == name), None)


log = logging.getLogger("notify.streams")
_told: set[tuple[str, int, datetime]] = set()
"""The records this process has logged as unreadable: by stream, internal id and time (which tell apart the records
of two stores)."""


def unreadable(record: Record, error: Exception) -> str:
    """Why `record` cannot be read, in one line that holds none of its payload; logged as a warning the first time
    this process meets it."""
    if isinstance(error, ValidationError) and (first := error.errors()[0])["type"] == "json_invalid":
        why = f"not JSON ({(first.get('ctx') or {}).get('error', 'invalid')})"
    elif isinstance(error, ValidationError):
        where = ".".join(str(part) for part in first["loc"])
        why = f"not a {error.title} ({f'{where}: ' if where else ''}{first['type']})"
    elif isinstance(error, json.JSONDecodeError):
        why = f"not JSON ({error.msg} at character {error.pos})"
    else:
        why = f"not what a {record.type} holds ({type(error).__name__})"
    said = f"record {record.internal_id} of stream {record.stream} ({record.type}, id {record.record_id})"
    said = f"{said} is unreadable: {why}"
    if (seen := (record.stream, record.internal_id, record.timestamp_utc)) not in _told:
        _told.add(seen)
        log.warning("%s", said)
    return said


def readable(record: Record, model: builtins.type[M]) -> M | None:
    """The record's payload as `model`, or None if it does not parse (logged once: `unreadable`)."""
    try:
        return record.object(model)
    except ValidationError as error:
        unreadable(record, error)
        return None


@dataclass(frozen=True)
class PutResult:
    internal_id: int | None
    """The new record's internal id, or None when the strategy found an existing record and wrote nothing."""
    existing_ids: tuple[int, ...] = ()

    @property
    def record_internal_id(self) -> int:
        """The record the put stands for: the new one, or the newest existing one it deferred to."""
        if self.internal_id is not None:
            return self.internal_id
        return max(self.existing_ids)


class HandlingStatus(StrEnum):
    AVAILABLE_BY_DEFAULT = "AvailableByDefault"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    ARCHIVED_AFTER_FAILURE = "ArchivedAfterFailure"
    AVAILABLE_AFTER_COMPLETION = "AvailableAfterCompletion"
    AVAILABLE_AFTER_FAILURE = "AvailableAfterFailure"
    AVAILABLE_AFTER_EXTERNAL_CANCELLATION = "AvailableAfterExternalCancellation"
    AVAILABLE_AFTER_SELF_CANCELLATION = "AvailableAfterSelfCancellation"
    DISABLED_FOR_RECORD = "DisabledForRecord"


RESETS = {
    HandlingStatus.FAILED: (HandlingStatus.AVAILABLE_AFTER_FAILURE, "retrying"),
    HandlingStatus.RUNNING: (
        HandlingStatus.AVAILABLE_AFTER_EXTERNAL_CANCELLATION,
        "the previous attempt did not finish",
    ),
}
"""How `begin` ends a previous attempt before it runs again: a failed one is made available, an abandoned running
one cancelled (PostgreSQL's `notify_begin` does the same)."""

_AVAILABLE = frozenset(
    {
        HandlingStatus.AVAILABLE_BY_DEFAULT,
        HandlingStatus.AVAILABLE_AFTER_COMPLETION,
        HandlingStatus.AVAILABLE_AFTER_FAILURE,
        HandlingStatus.AVAILABLE_AFTER_EXTERNAL_CANCELLATION,
        HandlingStatus.AVAILABLE_AFTER_SELF_CANCELLATION,
    }
)

ALLOWED_TRANSITIONS: dict[HandlingStatus, frozenset[HandlingStatus]] = {
    HandlingStatus.RUNNING: _AVAILABLE,
    HandlingStatus.COMPLETED: frozenset({HandlingStatus.RUNNING}),
    HandlingStatus.FAILED: frozenset({HandlingStatus.RUNNING}),
    HandlingStatus.AVAILABLE_AFTER_SELF_CANCELLATION: frozenset({HandlingStatus.RUNNING}),
    HandlingStatus.AVAILABLE_AFTER_EXTERNAL_CANCELLATION: frozenset({HandlingStatus.RUNNING}),
    HandlingStatus.AVAILABLE_AFTER_FAILURE: frozenset({HandlingStatus.FAILED}),
    HandlingStatus.ARCHIVED_AFTER_FAILURE: frozenset({HandlingStatus.FAILED}),
    HandlingStatus.AVAILABLE_AFTER_COMPLETION: frozenset({HandlingStatus.COMPLETED}),
    HandlingStatus.DISABLED_FOR_RECORD: frozenset(HandlingStatus) - {HandlingStatus.DISABLED_FOR_RECORD},
}
"""For each status, the current statuses a record may move to it from (the reference's transitions)."""


def allows(current: HandlingStatus, status: HandlingStatus) -> bool:
    """Whether a record whose handling is `current` may move to `status`."""
    return current in ALLOWED_TRANSITIONS.get(status, ())


class InvalidHandlingTransition(Exception):
    """The record's handling status does not allow that transition."""


class NoSuchRecord(InvalidHandlingTransition):
    """There is no record with that internal id in that stream: nothing to keep handling for."""


PRUNABLE_STREAMS = frozenset({StreamName.NOTIFICATION_VIEW, StreamName.NOTIFICATION_SNAPSHOT})
"""The latest-value streams: only they may keep just their newest records (the others are appended to, only)."""


def check_put(stream: str, strategy: ExistingRecordStrategy, retention: int) -> None:
    """Raise `ValueError` for a put no backend takes (PostgreSQL's `notify_put` says the same in SQL)."""
    if strategy == ExistingRecordStrategy.PRUNE_IF_FOUND_BY_ID and (stream not in PRUNABLE_STREAMS or retention < 1):
        raise ValueError(f"records of {stream} cannot be pruned to {retention}")


@dataclass(frozen=True)
class HandlingEntry:
    entry_id: int
    stream: str
    internal_record_id: int
    concern: str
    status: HandlingStatus
    details: str
    timestamp_utc: datetime


def is_digest(text: str) -> bool:
    """Whether `text` is a SHA-256 digest as the stores name contents: 64 lowercase hex digits."""
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


BIGINT = (-(2**63), 2**63 - 1)
"""The integers both backends hold: an internal id is one of them."""


def _holdable(text: str | None) -> bool:
    """Whether a record, tag or concern of every backend could hold `text`: PostgreSQL's text holds no NUL (its
    driver refuses to send one)."""
    return text is None or "\0" not in text


def _bounded(internal_id: int | None) -> int | None:
    """A bound on internal ids within the integers the backends hold: one beyond them bounds as the nearest does."""
    return None if internal_id is None else min(max(internal_id, BIGINT[0]), BIGINT[1])


def _records_where(records: str, record_tags: str, tag_array: str, payload: str) -> str:
    """A query of records, each with its `payload` columns, its tags as one JSON array (`tag_array` aggregates them)
    and the value of its `HELD_TAG`, up to its WHERE."""
    return (
        f"SELECT internal_id, stream, record_id, type, {payload},"
        f" (SELECT {tag_array} FROM {record_tags} t WHERE t.internal_id = r.internal_id), timestamp_utc,"
        f" notification_id FROM {records} r WHERE "
    )


HELD_TAG = "notification-id"
"""The tag a backend holds in a column of the record (`notification_id`, indexed) rather than as a row of its tags:
every record of a notification has it, and its events are read by it. A record has it once at most."""


def held(tags: Sequence[Tag]) -> tuple[str | None, list[Tag]]:
    """A new record's `HELD_TAG` value, and its other tags; `ValueError` if it has that tag twice."""
    values = [t.value for t in tags if t.name == HELD_TAG]
    if len(values) > 1:
        raise ValueError(f"a record has one {HELD_TAG} tag at most, not {len(values)}")
    return (values[0] if values else None), [t for t in tags if t.name != HELD_TAG]


def tags_with(pairs: Iterable[Sequence[str]], held_value: str | None) -> tuple[Tag, ...]:
    """A read record's tags: its rows' [name, value] pairs and its `HELD_TAG`, in order."""
    return Record.tags_of([*pairs, *([(HELD_TAG, held_value)] if held_value is not None else [])])


Named = Callable[[str], object]
"""How a backend stores a name (of a stream, a type, a tag, a concern): as it is, or as its code."""


def _as_is(name: str) -> object:
    return name


def select_records(
    records: str,
    record_tags: str,
    handling: str,
    mark: str,
    tag_array: str,
    stream: str,
    *,
    record_id: str | None,
    type: str | None,
    tags: Sequence[Tag],
    after: int | None,
    before: int | None,
    unhandled_for: str | None,
    newest_first: bool,
    limit: int | None,
    named: Named = _as_is,
    payload: str = "payload",
) -> tuple[str, list[object]]:
    """The query (with `mark` as its placeholder) and arguments with which an SQL backend reads records: those of
    `stream` that match every filter given, by internal id. A record's tags are its rows in `record_tags`, read as
    one JSON array of [name, value] pairs by the backend's `tag_array` aggregate, and its `HELD_TAG`; `named` is how
    the backend stores a stream's, a type's, a tag's or a concern's name, `payload` the columns a payload is kept
    in."""
    # Given tags and no record id, the tag index finds the records: `coalesce(stream, stream)` keeps a planner
    # without statistics (SQLite's, until it has analysed the file) from reading the whole stream to check each one
    # instead (a function of the column is looked up by no index).
    by_stream = "coalesce(stream, stream)" if tags and record_id is None else "stream"
    query = _records_where(records, record_tags, tag_array, payload)
    texts = [stream, record_id, type, unhandled_for, *(v for t in tags for v in (t.name, t.value))]
    if not all(_holdable(v) for v in texts):
        return query + "1 = 0", []  # what no record holds matches nothing, and is never sent to the database
    after, before = _bounded(after), _bounded(before)
    query += f"{by_stream} = {mark}"
    args: list[object] = [named(stream)]
    for column, value in (("record_id", record_id), ("type", None if type is None else named(type))):
        if value is not None:
            query += f" AND {column} = {mark}"
            args.append(value)
    for bound, internal_id in ((">", after), ("<", before)):
        if internal_id is not None:
            query += f" AND internal_id {bound} {mark}"
            args.append(internal_id)
    if unhandled_for is not None:
        query += (
            f" AND NOT EXISTS (SELECT 1 FROM {handling} h"
            f" WHERE h.stream = r.stream AND h.internal_record_id = r.internal_id AND h.concern = {mark})"
        )
        args.append(named(unhandled_for))
    if tags:
        condition, tagged_args = _tagged(record_tags, mark, f"= {mark}", [named(stream)], tags, named)
        query += " AND " + condition
        args += tagged_args
    query += " ORDER BY internal_id" + (" DESC" if newest_first else "")
    if limit is not None:
        query += f" LIMIT {int(limit)}"
    return query, args


def select_tagged(
    records: str,
    record_tags: str,
    mark: str,
    tag_array: str,
    streams: Sequence[str],
    tags: Sequence[Tag],
    named: Named = _as_is,
    payload: str = "payload",
) -> tuple[str, list[object]]:
    """The query and arguments with which an SQL backend reads the records of any of `streams` that have all of
    `tags`, by internal id, in one statement: the tag index (or the `HELD_TAG`'s) is looked up in each stream, and
    each record found read once (as `select_records` reads them)."""
    if not tags:
        raise ValueError("records are read across streams by their tags: give at least one")
    query = _records_where(records, record_tags, tag_array, payload)
    texts = [*streams, *(v for t in tags for v in (t.name, t.value))]
    if not streams or not all(_holdable(v) for v in texts):
        return query + "1 = 0", []
    in_streams = f"IN ({', '.join([mark] * len(streams))})"
    condition, args = _tagged(record_tags, mark, in_streams, [named(s) for s in streams], tags, named)
    return query + condition + " ORDER BY internal_id", args


def _tagged(
    record_tags: str, mark: str, in_streams: str, streams: list[object], tags: Sequence[Tag], named: Named
) -> tuple[str, list[object]]:
    """The condition, and its arguments, that a record `r` has all of `tags`. With the `HELD_TAG`, the records are
    found by its column's index, in the streams `in_streams` compares with, and each other tag is checked on the
    record's own tag rows; without it, the records with the first tag are found by the tag index. A tag that most
    records have (a Slack workspace) is then never read in full, whatever plan the database makes without knowing
    the values (PostgreSQL's generic plan for a prepared statement merged with every row of it)."""
    first = next((t for t in tags if t.name == HELD_TAG), tags[0])
    if first.name == HELD_TAG:
        found = f"notification_id = {mark} AND stream {in_streams}"
        args: list[object] = [first.value, *streams]
    else:
        found = (
            f"internal_id IN (SELECT internal_id FROM {record_tags}"
            f" WHERE stream {in_streams} AND name = {mark} AND value = {mark})"
        )
        args = [*streams, named(first.name), first.value]
    conditions = [found]
    for other in tags:
        if other is first:
            continue
        if other.name == HELD_TAG:
            conditions.append(f"notification_id = {mark}")
            args.append(other.value)
        else:
            conditions.append(
                f"EXISTS (SELECT 1 FROM {record_tags} o WHERE o.internal_id = r.internal_id AND o.name = {mark}"
                f" AND o.value = {mark})"
            )
            args += [named(other.name), other.value]
    return " AND ".join(conditions), args


def select_handling(
    handling: str,
    mark: str,
    stream: str,
    internal_record_id: int,
    concern: str | None,
    latest: bool = False,
    named: Named = _as_is,
    details: str = "details",
) -> tuple[str, list[object]]:
    """The query and arguments with which an SQL backend reads a record's handling history, oldest first (or only
    its latest entry); `details` is the columns an entry's details are kept in."""
    query = f"SELECT entry_id, stream, internal_record_id, concern, status, {details}, timestamp_utc FROM {handling}"
    if not (_holdable(stream) and _holdable(concern) and _bounded(internal_record_id) == internal_record_id):
        return query + " WHERE 1 = 0", []
    query += f" WHERE stream = {mark} AND internal_record_id = {mark}"
    args: list[object] = [named(stream), internal_record_id]
    if concern is not None:
        query += f" AND concern = {mark}"
        args.append(named(concern))
    return query + (" ORDER BY entry_id DESC LIMIT 1" if latest else " ORDER BY entry_id"), args


@dataclass(frozen=True)
class NewRecord:
    """A record to put, as a backend takes it."""

    record_id: str | None
    type: str
    payload: str
    tags: Sequence[Tag] = ()
    strategy: ExistingRecordStrategy = ExistingRecordStrategy.NONE
    retention: int = 1
    take_up: str | None = None
    """A concern under which the record the put stands for is taken up (`Running`) in the same write, if its handling
    allows it (`StreamStore.write`)."""


@dataclass(frozen=True)
class Put:
    """A record to put in a stream, as part of a step's writes (`WriteOnlyStream.record`, `StreamStore.write`)."""

    stream: str
    record: NewRecord


@dataclass(frozen=True)
class Move:
    """A handling transition, as part of a step's writes (`HandlingStore.move`, `StreamStore.write`): made if the
    record's status allows it, skipped if not."""

    stream: str
    internal_record_id: int
    concern: str
    status: HandlingStatus
    details: str = ""
    begin: bool = False
    """A take-up as `StreamStore.begin` makes it (to `Running`, a previous attempt ended first), made unless the
    record's handling has completed."""


@dataclass(frozen=True)
class Written:
    """What `StreamStore.write` did: each put's result, and whether each move, `before` then `after`, was made (or
    skipped: the record's status did not allow it)."""

    puts: list[PutResult]
    moved: list[bool]


REQUESTED = ExecuteOpRequestedEvent.__name__
"""The type of an operation's record in an operation stream."""
BROADCAST_REQUESTED = BroadcastRequestedEvent.__name__
"""The type of a broadcast's request in the client-operation stream: its record id is the broadcast's id."""
RECIPIENT_REFUSED = BroadcastRecipientRefused.__name__
"""The type of a broadcast's refused recipient in the notification-event stream: a notification that never has a
view."""
BROADCAST_TAG = TagName.BROADCAST_ID.value
"""The tag by which a broadcast's own records (its request, its snapshot's pages, its key's claim) and its refused
recipients name it."""


ORPHANED_AFTER = timedelta(hours=1)
"""How old the contents of a notification that has no record must be for prune to take them as orphans: a client
puts a request's contents just before its record."""


CONTENTS_BATCH = 20
"""Contents removed in one transaction: up to 200 MiB of pages freed while writers wait."""


@dataclass
class Pruned:
    """What `StreamStore.prune` removed."""

    notifications: int = 0
    broadcasts: int = 0
    """Broadcasts that ended: their own records and their refused recipients' (their notifications are counted as
    any notification is)."""
    records: int = 0
    contents: int = 0
    """Contents no remaining notification names (`StreamStore.put_contents`)."""


UNREADABLE = "unreadable"
"""What `view_counts` counts a view's status, or a channel's outcome, as when the view does not say it: its payload
is not JSON, or that field is not text."""


@dataclass(frozen=True)
class ViewCounts:
    """The notifications that ended since a time, as their views count them (`StreamStore.view_counts`): by the
    minute their view was written (UTC) and their status, and their channels by that minute, the channel and its
    outcome. A count that is 0 is not there."""

    statuses: dict[tuple[datetime, str], int]
    channels: dict[tuple[datetime, str, str], int]

    @classmethod
    def of(cls, rows: Iterable[Sequence[Any]]) -> ViewCounts:
        """From the rows of a backend's query: (minute as `YYYY-MM-DDTHH:MM`, channel or NULL for the status, status
        or outcome, count)."""
        statuses: dict[tuple[datetime, str], int] = {}
        channels: dict[tuple[datetime, str, str], int] = {}
        for minute, channel, value, count in rows:
            at = datetime.fromisoformat(minute).replace(tzinfo=UTC)
            if channel is None:
                statuses[at, value] = int(count)
            else:
                channels[at, channel, value] = int(count)
        return cls(statuses, channels)


class StoreUnusable(ConnectionError):
    """The store cannot be used as it was opened: what to do about it, in one line."""


class StoreUnavailable(ConnectionError):
    """The store cannot be used for now (a connection lost or refused, a database locked): a later attempt may
    succeed. Every other error of a backend is a bug or bad data, which no retry fixes."""


class StreamStore(ABC):
    """A backend. Only the handles it returns are given to producers, consumers and handlers."""

    tells_of_operations = False
    """Whether `wait_for_operations` returns as soon as an operation is requested (otherwise a reader polls)."""

    def writer(self, stream: StreamName) -> WriteOnlyStream:
        return WriteOnlyStream(self, stream)

    def reader(self, stream: StreamName) -> ReadOnlyStream:
        return ReadOnlyStream(self, stream)

    def handling(self, stream: StreamName) -> HandlingStore:
        return HandlingStore(self, stream)

    def steps(self) -> StepWriter:
        return StepWriter(self)

    @abstractmethod
    async def next_unique_id(self, stream: str) -> int: ...

    @abstractmethod
    async def identity(self) -> str:
        """A random name the store was given when it was made. The ids it issues carry it, so that they are unique
        beyond it: in a Temporal namespace that several deployments share, and after a store is reset."""

    @abstractmethod
    async def put(self, stream: str, records: Sequence[NewRecord]) -> list[PutResult]:
        """Put `records` in `stream`, in order and in one transaction: all of them, or none."""

    @abstractmethod
    async def write(self, puts: Sequence[Put], before: Sequence[Move] = (), after: Sequence[Move] = ()) -> Written:
        """A step's writes across streams and handling stores, in this order: the moves `before` the puts (a step
        taking its records up), the puts, the put records' take-ups, and the moves `after` them (a step completing
        its records, once what it records is there). A move its record's status does not allow is skipped (an
        earlier attempt of the step made it); a begin (`Move.begin`) is skipped only when the record was handled,
        and raises `InvalidHandlingTransition` from a status it cannot begin from; a move of a record that is not
        there raises `NoSuchRecord`, where it would be allowed. All in one transaction where the backend can;
        PostgreSQL with its producer and handler on different roles takes one per part, in that order, so that a
        failure part of the way leaves its earlier parts made and its later ones not: a retried step finds them so."""

    @abstractmethod
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
        """Records matching every given filter, by internal id: all of `tags`, an internal id above `after` and
        below `before`, and no handling yet under the concern `unhandled_for`."""

    @abstractmethod
    async def read_tagged(self, streams: Sequence[str], tags: Sequence[Tag]) -> list[Record]:
        """The records of any of `streams` that have all of `tags` (at least one), by internal id: one read across
        the streams (a notification's records, by its notification-id tag)."""

    async def wait_for_operations(self, stream: str, timeout: float) -> None:
        """Return when operations may have been requested in `stream` (records of type `ExecuteOpRequestedEvent`
        appended), or after `timeout` seconds; a backend that cannot tell (`tells_of_operations` false) waits the
        timeout out."""
        await asyncio.sleep(timeout)

    @abstractmethod
    async def handling_history(
        self, stream: str, internal_record_id: int, concern: str | None
    ) -> list[HandlingEntry]: ...

    @abstractmethod
    async def begin(self, stream: str, internal_record_id: int, concern: str, details: str) -> HandlingEntry | None:
        """`HandlingStore.begin`, as one atomic step."""

    @abstractmethod
    async def transition(
        self, stream: str, internal_record_id: int, concern: str, status: HandlingStatus, details: str
    ) -> HandlingEntry:
        """Append `status` if the current status allows it (`ALLOWED_TRANSITIONS`), atomically; otherwise raise
        `InvalidHandlingTransition`."""

    @abstractmethod
    async def next_turn(self, key: str, every: float) -> float:
        """Reserve the next turn of `key`, `every` seconds after the turn reserved before it and not before now, and
        return the seconds until it (0: it is now), by the store's clock. One atomic step, across processes: what
        paces a shared resource (a Slack channel) for every worker."""

    @abstractmethod
    async def view_counts(self, since: datetime) -> ViewCounts:
        """The views of the notification-view stream written at or after `since`, counted in one aggregate query by
        minute and status and by minute, channel and outcome (through the stream's partial index by time); a view
        that does not parse counts as `UNREADABLE`, and so does a status or outcome that is not text."""

    async def prune(self, before: datetime, batch: int = 100) -> Pruned:
        """Remove every record of the notifications that ended, or were refused, before `before` (their view's or
        their refused request's time), across all streams, with their tags and handling; and of the broadcasts that
        ended before it (the time their request's handling became `Completed` under the concern `send-broadcast`), their
        own records (their request, and those tagged with their id of no notification: snapshot pages, key claim) and
        their refused recipients' records, with the names of their contents. `batch` notifications and `batch`
        broadcasts to a transaction, so that a writer waits for one batch at most; batches go on while either finds
        something. A notification or broadcast still under way, and records of neither (the directory, API keys), are
        kept; so are the names of their contents. So is a notification whose view names a broadcast (`BROADCAST_TAG`)
        whose request is there and did not end before `before`: the broadcast counts its ended notifications by their
        views. Once the broadcast has ended before `before`, its notifications go as any other, in the same run. Then
        the contents that nobody names any more, and those put before `before`, and `ORPHANED_AFTER` ago, for a
        notification that has no record (its request never written); a broadcast's, named by its id, are kept while
        its request is (a record of that id in the client-operation stream)."""
        pruned = Pruned()
        while True:
            notifications, broadcasts, records = await self._prune_batch(before, batch)
            if not (notifications or broadcasts):
                orphaned: datetime | None = min(before, datetime.now(UTC) - ORPHANED_AFTER)
                while contents := await self._prune_contents(orphaned, CONTENTS_BATCH):
                    pruned.contents += contents
                    orphaned = None  # the first batch forgot them
                return pruned
            pruned.notifications += notifications
            pruned.broadcasts += broadcasts
            pruned.records += records

    @abstractmethod
    async def _prune_batch(self, before: datetime, limit: int) -> tuple[int, int, int]:
        """Remove up to `limit` notifications' and up to `limit` broadcasts' records (see `prune`) in one
        transaction: how many notifications, broadcasts and records."""

    @abstractmethod
    async def _prune_contents(self, orphaned: datetime | None, limit: int) -> int:
        """Forget the contents' names of notifications that have no record, put before `orphaned` (a request never
        written; None: an earlier batch did), and remove up to `limit` contents no notification names, in one
        transaction: how many."""

    @abstractmethod
    async def put_contents(self, notification_id: str, contents: Sequence[bytes]) -> list[str]:
        """Keep each of `contents` once, by its SHA-256, as content `notification_id` names, in one transaction:
        their digests (hex), in order. A notification's records refer to its contents by digest; they are kept
        until no notification left names them (`prune`)."""

    @abstractmethod
    async def content(self, sha256: str) -> bytes | None:
        """The content kept under `sha256` (hex), or None."""

    async def open(self) -> None:  # noqa: B027 - a backend that connects on construction has nothing to do here
        """Connect, and check the schema is the one this version knows."""

    async def check(self) -> None:  # noqa: B027 - a server-backed store has nothing to watch here
        """Raise `StoreUnusable` if the store can no longer be used as it was opened (its file gone, say)."""

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> StreamStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class WriteOnlyStream:
    """A producer's handle: issue ids, put records. It cannot read."""

    __slots__ = ("_store", "name")

    def __init__(self, store: StreamStore, name: StreamName) -> None:
        self._store = store
        self.name = name

    async def next_unique_id(self) -> int:
        """The next id from this stream's own counter."""
        return await self._store.next_unique_id(self.name)

    async def put(
        self,
        record_id: str | int | None,
        obj: BaseModel,
        *,
        type: str | None = None,
        tags: Iterable[Tag] = (),
        strategy: ExistingRecordStrategy = ExistingRecordStrategy.NONE,
        retention: int = 1,
    ) -> PutResult:
        """Put `obj` as a record; its type is the model's class name unless `type` names it."""
        put = self.record(record_id, obj, type=type, tags=tags, strategy=strategy, retention=retention)
        [result] = await self._store.put(self.name, [put.record])
        return result

    def record(
        self,
        record_id: str | int | None,
        obj: BaseModel,
        *,
        type: str | None = None,
        tags: Iterable[Tag] = (),
        strategy: ExistingRecordStrategy = ExistingRecordStrategy.NONE,
        retention: int = 1,
        take_up: str | None = None,
    ) -> Put:
        """`obj` as a record to put in this stream with a step's other writes (`StepWriter.write`)."""
        record = NewRecord(
            None if record_id is None else str(record_id),
            type or obj.__class__.__name__,
            obj.model_dump_json(),
            list(tags),
            strategy,
            retention,
            take_up,
        )
        return Put(self.name, record)

    async def put_all(self, records: Sequence[tuple[str | int | None, BaseModel, Iterable[Tag]]]) -> list[PutResult]:
        """Put each (record id, object, tags), all or none: a reader sees every one of them or none."""
        new = [
            NewRecord(None if i is None else str(i), obj.__class__.__name__, obj.model_dump_json(), list(tags))
            for i, obj, tags in records
        ]
        return await self._store.put(self.name, new)


class ReadOnlyStream:
    """A consumer's handle: read records. It cannot write."""

    __slots__ = ("_store", "name")

    def __init__(self, store: StreamStore, name: StreamName) -> None:
        self._store = store
        self.name = name

    async def latest(self, record_id: str | int, type: str | None = None) -> Record | None:
        records = await self._store.read(self.name, record_id=str(record_id), type=type, newest_first=True, limit=1)
        return records[0] if records else None

    async def by_id(self, record_id: str | int) -> list[Record]:
        return await self._store.read(self.name, record_id=str(record_id))

    async def by_tags(self, *tags: Tag, type: str | None = None, after: int = 0) -> list[Record]:
        """The records with all of `tags` (of `type`), after internal id `after`, oldest first."""
        return await self._store.read(self.name, tags=tags, type=type, after=after or None)

    async def newest_by_tags(
        self, *tags: Tag, type: str | None = None, before: int | None = None, limit: int
    ) -> list[Record]:
        """Up to `limit` records with all of `tags`, newest first, below internal id `before` (for paging)."""
        return await self._store.read(self.name, tags=tags, type=type, before=before, newest_first=True, limit=limit)

    async def newest(self) -> Record | None:
        records = await self._store.read(self.name, newest_first=True, limit=1)
        return records[0] if records else None

    async def unhandled(self, concern: str, *, type: str, after: int = 0, limit: int = 100) -> list[Record]:
        """Records of `type` after internal id `after`, oldest first, that no handler has taken up under `concern`
        (their handling is still available by default)."""
        return await self._store.read(self.name, type=type, after=after, unhandled_for=concern, limit=limit)

    async def wait_for_operations(self, timeout: float) -> None:
        """Return when operations may have been requested, or after `timeout` seconds
        (`StreamStore.wait_for_operations`)."""
        await self._store.wait_for_operations(self.name, timeout)


class HandlingStore:
    """The handling management store beside one stream: per record and concern, an append-only status history."""

    __slots__ = ("_store", "stream")

    def __init__(self, store: StreamStore, stream: StreamName) -> None:
        self._store = store
        self.stream = stream

    async def history(self, internal_record_id: int, concern: str | None = None) -> list[HandlingEntry]:
        return await self._store.handling_history(self.stream, internal_record_id, concern)

    async def status(self, internal_record_id: int, concern: str) -> HandlingStatus:
        history = await self.history(internal_record_id, concern)
        return history[-1].status if history else HandlingStatus.AVAILABLE_BY_DEFAULT

    async def transition(
        self, internal_record_id: int, concern: str, status: HandlingStatus, details: str = ""
    ) -> HandlingEntry:
        return await self._store.transition(self.stream, internal_record_id, concern, status, details)

    def move(self, internal_record_id: int, concern: str, status: HandlingStatus, details: str = "") -> Move:
        """A transition to make with a step's other writes (`StepWriter.write`), if the record's status allows it."""
        return Move(self.stream, internal_record_id, concern, status, details)

    def beginning(self, internal_record_id: int, concern: str, details: str = "") -> Move:
        """`begin`, to make with a step's other writes (`StepWriter.write`): moved unless the record was handled."""
        return Move(self.stream, internal_record_id, concern, HandlingStatus.RUNNING, details, begin=True)

    async def next_turn(self, key: str, every: float) -> float:
        """`StreamStore.next_turn`: a handler's turn at a resource it shares with every other handler."""
        return await self._store.next_turn(key, every)

    async def begin(self, internal_record_id: int, concern: str, details: str = "") -> HandlingEntry | None:
        """Start handling a record. A retried handler finds the previous attempt's status: a `Failed` one is reset,
        an abandoned `Running` one is cancelled, and then it runs again. Returns the `Completed` entry instead, and
        writes nothing, when the record was already handled, so that a handler never does its work twice. It is one
        atomic step of the backend: concurrent takers take turns (`RESETS` says how a previous attempt is ended)."""
        return await self._store.begin(self.stream, internal_record_id, concern, details)


class StepWriter:
    """A handler's handle for the writes of one step across streams and handling stores, made at once: records built
    by write-only handles (`WriteOnlyStream.record`) and moves by handling stores (`HandlingStore.move`)."""

    __slots__ = ("_store",)

    def __init__(self, store: StreamStore) -> None:
        self._store = store

    async def write(self, puts: Sequence[Put], before: Sequence[Move] = (), after: Sequence[Move] = ()) -> Written:
        """`StreamStore.write`: the moves `before`, the puts, their take-ups, the moves `after`."""
        return await self._store.write(puts, before, after)
