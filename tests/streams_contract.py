"""The contract every stream store backend must pass. A backend's test module subclasses `StreamStoreContract` and
says how to open a store; every test here then runs against that backend."""

from __future__ import annotations

import asyncio
import hashlib
import json
import multiprocessing
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import streams.store
from activities.contract import SEND_BROADCAST_CONCERN
from domain import (
    BroadcastAudience,
    BroadcastKeyClaim,
    BroadcastRecipientRefused,
    BroadcastRecipients,
    BroadcastRequestedEvent,
    SendBroadcastOp,
    Tag,
    TagName,
    recipient_id,
    recipients_record_id,
    tag,
    utc_now,
)
from streams import (
    ExistingRecordStrategy,
    HandlingStatus,
    InvalidHandlingTransition,
    NoSuchRecord,
    ReadOnlyStream,
    Record,
    StreamName,
    StreamStore,
    WriteOnlyStream,
)
from streams.store import ALLOWED_TRANSITIONS, NewRecord, Pruned, ViewCounts

S = ExistingRecordStrategy


class Thing(BaseModel):
    value: int


class Other(BaseModel):
    value: int


PATHS = {
    HandlingStatus.AVAILABLE_BY_DEFAULT: [],
    HandlingStatus.RUNNING: [HandlingStatus.RUNNING],
    HandlingStatus.COMPLETED: [HandlingStatus.RUNNING, HandlingStatus.COMPLETED],
    HandlingStatus.FAILED: [HandlingStatus.RUNNING, HandlingStatus.FAILED],
    HandlingStatus.ARCHIVED_AFTER_FAILURE: [
        HandlingStatus.RUNNING,
        HandlingStatus.FAILED,
        HandlingStatus.ARCHIVED_AFTER_FAILURE,
    ],
    HandlingStatus.AVAILABLE_AFTER_COMPLETION: [
        HandlingStatus.RUNNING,
        HandlingStatus.COMPLETED,
        HandlingStatus.AVAILABLE_AFTER_COMPLETION,
    ],
    HandlingStatus.AVAILABLE_AFTER_FAILURE: [
        HandlingStatus.RUNNING,
        HandlingStatus.FAILED,
        HandlingStatus.AVAILABLE_AFTER_FAILURE,
    ],
    HandlingStatus.AVAILABLE_AFTER_EXTERNAL_CANCELLATION: [
        HandlingStatus.RUNNING,
        HandlingStatus.AVAILABLE_AFTER_EXTERNAL_CANCELLATION,
    ],
    HandlingStatus.AVAILABLE_AFTER_SELF_CANCELLATION: [
        HandlingStatus.RUNNING,
        HandlingStatus.AVAILABLE_AFTER_SELF_CANCELLATION,
    ],
    HandlingStatus.DISABLED_FOR_RECORD: [HandlingStatus.DISABLED_FOR_RECORD],
}
"""A way to bring a record to each status."""


class StreamStoreContract(ABC):
    @abstractmethod
    def open(self, location: Path) -> StreamStore:
        """A store at `location`; opening the same location again opens the same store."""

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[StreamStore]:
        async with self.open(tmp_path) as store:
            yield store

    # -- unique ids ---------------------------------------------------------------------------------------------

    async def test_each_stream_issues_ids_from_its_own_counter(self, store: StreamStore) -> None:
        email, slack = store.writer(StreamName.EMAIL_OPERATION), store.writer(StreamName.SLACK_OPERATION)
        assert [await email.next_unique_id() for _ in range(3)] == [1, 2, 3]
        assert await slack.next_unique_id() == 1
        assert await email.next_unique_id() == 4

    async def test_ids_stay_unique_across_processes(self, tmp_path: Path) -> None:
        async with self.open(tmp_path):
            pass  # created before the processes race
        context = multiprocessing.get_context("spawn")
        with context.Pool(4) as pool:
            batches = pool.starmap(_issue_ids, [(type(self), tmp_path, 25)] * 4)
        issued = [i for batch in batches for i in batch]
        assert sorted(issued) == list(range(1, 101))

    # -- contents -------------------------------------------------------------------------------------------------

    async def test_contents_are_kept_once_by_their_digest_and_read_back_whole(self, store: StreamStore) -> None:
        """What a notification's attachments are: bytes kept once each, by SHA-256, whoever names them."""
        pdf, png = b"%PDF-1.7\n" + bytes(range(256)) * 4096, b"\x89PNG\r\n\x1a\n\x00"
        digests = await store.put_contents("n-1", [pdf, png, pdf, b""])
        assert digests == [hashlib.sha256(c).hexdigest() for c in (pdf, png, pdf, b"")]
        assert await store.put_contents("n-2", [png]) == [digests[1]]
        assert [await store.content(d) for d in digests] == [pdf, png, pdf, b""]
        assert await store.content(hashlib.sha256(b"never put").hexdigest()) is None
        for not_a_digest in ("", "F" * 64, "g" * 64, "a\0" * 32, digests[0][:-1]):
            assert await store.content(not_a_digest) is None
        assert await store.put_contents("n-3", []) == []

    # -- existing-record strategies ---------------------------------------------------------------------------

    async def test_none_always_writes(self, store: StreamStore) -> None:
        writer, reader = store.writer(StreamName.NOTIFICATION_EVENT), store.reader(StreamName.NOTIFICATION_EVENT)
        first = await writer.put("7", Thing(value=1))
        second = await writer.put("7", Thing(value=1))
        assert first.internal_id is not None and second.internal_id is not None
        assert second.internal_id > first.internal_id
        assert [r.object(Thing).value for r in await reader.by_id("7")] == [1, 1]

    async def test_do_not_write_if_found_by_id(self, store: StreamStore) -> None:
        writer, reader = store.writer(StreamName.CLIENT_OPERATION), store.reader(StreamName.CLIENT_OPERATION)
        first = await writer.put("7", Thing(value=1), strategy=S.DO_NOT_WRITE_IF_FOUND_BY_ID)
        again = await writer.put("7", Other(value=2), strategy=S.DO_NOT_WRITE_IF_FOUND_BY_ID)
        assert again.internal_id is None
        assert again.existing_ids == (first.internal_id,)
        assert again.record_internal_id == first.internal_id
        assert [r.type for r in await reader.by_id("7")] == ["Thing"]
        other_id = await writer.put("8", Thing(value=3), strategy=S.DO_NOT_WRITE_IF_FOUND_BY_ID)
        assert other_id.internal_id is not None

    async def test_do_not_write_if_found_by_id_and_type(self, store: StreamStore) -> None:
        writer, reader = store.writer(StreamName.EMAIL_EVENT), store.reader(StreamName.EMAIL_EVENT)
        await writer.put("7", Thing(value=1), strategy=S.DO_NOT_WRITE_IF_FOUND_BY_ID_AND_TYPE)
        other = await writer.put("7", Other(value=2), strategy=S.DO_NOT_WRITE_IF_FOUND_BY_ID_AND_TYPE)
        again = await writer.put("7", Thing(value=3), strategy=S.DO_NOT_WRITE_IF_FOUND_BY_ID_AND_TYPE)
        assert other.internal_id is not None
        assert again.internal_id is None
        assert [(r.type, r.json()["value"]) for r in await reader.by_id("7")] == [("Thing", 1), ("Other", 2)]

    async def test_prune_keeps_the_newest(self, store: StreamStore) -> None:
        writer, reader = store.writer(StreamName.NOTIFICATION_VIEW), store.reader(StreamName.NOTIFICATION_VIEW)
        for value in range(4):
            await writer.put("7", Thing(value=value), strategy=S.PRUNE_IF_FOUND_BY_ID)
        await writer.put("8", Thing(value=9), strategy=S.PRUNE_IF_FOUND_BY_ID)
        assert [r.object(Thing).value for r in await reader.by_id("7")] == [3]
        for value in range(4, 7):
            await writer.put("7", Thing(value=value), strategy=S.PRUNE_IF_FOUND_BY_ID, retention=2)
        assert [r.object(Thing).value for r in await reader.by_id("7")] == [5, 6]
        assert [r.object(Thing).value for r in await reader.by_id("8")] == [9]

    async def test_only_latest_value_streams_are_pruned_and_never_to_nothing(self, store: StreamStore) -> None:
        kept = await store.writer(StreamName.NOTIFICATION_VIEW).put("7", Thing(value=1))
        for stream, retention in ((StreamName.CLIENT_OPERATION, 1), (StreamName.NOTIFICATION_VIEW, 0)):
            with pytest.raises(ValueError, match=f"records of {stream} cannot be pruned to {retention}"):
                await store.writer(stream).put(
                    "7", Thing(value=2), strategy=S.PRUNE_IF_FOUND_BY_ID, retention=retention
                )
        assert [r.internal_id for r in await store.reader(StreamName.NOTIFICATION_VIEW).by_id("7")] == [
            kept.internal_id
        ]
        assert await store.reader(StreamName.CLIENT_OPERATION).by_id("7") == []

    async def test_records_put_together_are_written_all_or_none(self, store: StreamStore) -> None:
        good = NewRecord("1", "Thing", Thing(value=1).model_dump_json())
        refused = NewRecord("2", "Thing", Thing(value=2).model_dump_json(), strategy=S.PRUNE_IF_FOUND_BY_ID)
        with pytest.raises(ValueError, match="cannot be pruned"):
            await store.put(StreamName.ENTITY_DIRECTORY, [good, good, refused])
        assert await store.reader(StreamName.ENTITY_DIRECTORY).by_tags() == []
        written = await store.put(StreamName.ENTITY_DIRECTORY, [good, good])
        assert [r.internal_id for r in await store.reader(StreamName.ENTITY_DIRECTORY).by_tags()] == [
            w.internal_id for w in written
        ]

    async def test_a_reader_sees_records_put_together_all_or_none(self, tmp_path: Path) -> None:
        """Another connection reading while a batch (a directory import, say) is written sees none of it, then all."""
        batch = [NewRecord(str(i), "Thing", Thing(value=i).model_dump_json()) for i in range(300)]
        async with self.open(tmp_path) as writer, self.open(tmp_path) as reader:
            written = asyncio.ensure_future(writer.put(StreamName.ENTITY_DIRECTORY, batch))
            seen = set()
            while not written.done():
                seen.add(len(await reader.reader(StreamName.ENTITY_DIRECTORY).by_tags()))
            await written
            seen.add(len(await reader.reader(StreamName.ENTITY_DIRECTORY).by_tags()))
        assert seen <= {0, 300} and 300 in seen, seen

    async def test_concurrent_writers_write_once(self, tmp_path: Path) -> None:
        """Four processes, started together, each try to write the same twenty ids once."""
        async with self.open(tmp_path):
            pass
        context = multiprocessing.get_context("spawn")
        with context.Manager() as manager, context.Pool(4) as pool:
            start = manager.Barrier(4)
            written = pool.starmap(_put_once, [(type(self), tmp_path, i, start) for i in range(4)])
        assert sum(written) == RACED_IDS
        async with self.open(tmp_path) as store:
            reader = store.reader(StreamName.CLIENT_OPERATION)
            assert [len(await reader.by_id(f"race-{i}")) for i in range(RACED_IDS)] == [1] * RACED_IDS

    # -- reading ------------------------------------------------------------------------------------------------

    async def test_streams_are_separate_and_ordered(self, store: StreamStore) -> None:
        email, slack = store.writer(StreamName.EMAIL_EVENT), store.writer(StreamName.SLACK_EVENT)
        ids = [(await email.put("1", Thing(value=v))).internal_id for v in range(3)]
        await slack.put("1", Thing(value=99))
        records = await store.reader(StreamName.EMAIL_EVENT).by_id("1")
        assert [r.internal_id for r in records] == ids
        assert [r.object(Thing).value for r in records] == [0, 1, 2]
        assert all(r.stream == "email-event" for r in records)
        latest = await store.reader(StreamName.EMAIL_EVENT).latest("1")
        assert latest is not None and latest.object(Thing).value == 2
        assert (await store.reader(StreamName.EMAIL_EVENT).latest("1", type="Other")) is None
        assert (await store.reader(StreamName.EMAIL_EVENT).latest("2")) is None

    async def test_internal_ids_order_records_across_streams(self, store: StreamStore) -> None:
        """What `events` relies on to put a notification's records from every stream in the order written."""
        streams = [StreamName.NOTIFICATION_EVENT, StreamName.EMAIL_EVENT, StreamName.NOTIFICATION_EVENT]
        written = [(await store.writer(s).put("1", Thing(value=i))).internal_id or 0 for i, s in enumerate(streams)]
        assert written == sorted(written) and len(set(written)) == 3 and 0 not in written

    async def test_records_are_found_by_all_their_tags(self, store: StreamStore) -> None:
        writer, reader = store.writer(StreamName.EMAIL_EVENT), store.reader(StreamName.EMAIL_EVENT)
        ada, bob = Tag(name="recipient", value="ada@x.org"), Tag(name="recipient", value="bob@x.org")
        n1 = Tag(name="notification-id", value="1")
        await writer.put("1", Thing(value=1), tags=[ada, n1])
        await writer.put("2", Thing(value=2), tags=[bob, n1])
        await writer.put("3", Other(value=3), tags=[ada])
        assert [r.record_id for r in await reader.by_tags(ada)] == ["1", "3"]
        assert [r.record_id for r in await reader.by_tags(ada, n1)] == ["1"]
        assert [r.record_id for r in await reader.by_tags(ada, type="Other")] == ["3"]
        assert await reader.by_tags(Tag(name="recipient", value="carol@x.org")) == []
        record = (await reader.by_tags(bob))[0]
        assert record.tags == (n1, bob)  # by name, then value
        assert record.tag("notification-id") == "1"
        assert record.timestamp_utc.utcoffset() == timedelta(0)

    async def test_a_record_has_one_notification_id_at_most(self, store: StreamStore) -> None:
        """The notification-id tag is held apart from the others (a column of the record): a record has it once."""
        writer = store.writer(StreamName.EMAIL_EVENT)
        twice = [Tag(name="notification-id", value="1"), Tag(name="notification-id", value="2")]
        with pytest.raises(ValueError, match="one notification-id tag at most"):
            await writer.put("1", Thing(value=1), tags=twice)
        with pytest.raises(ValueError, match="one notification-id tag at most"):
            await store.steps().write([writer.record("1", Thing(value=1), tags=twice)])
        assert await store.reader(StreamName.EMAIL_EVENT).by_id("1") == []

    async def test_payloads_read_back_as_written_however_they_are_kept(self, store: StreamStore) -> None:
        """Long payloads are kept packed where the database does not read them: every one reads back as written,
        in any stream, by any read."""
        n1 = Tag(name="notification-id", value="1")
        long_json = json.dumps({"body": "Your export is ready. " * 40, "to": ["ada@x.org"], "note": "Grüße 🎉\u0301"})
        unlike_any = json.dumps({"noise": [(i * 2654435761) % 2**32 for i in range(60)]})
        payloads = {
            StreamName.EMAIL_EVENT: long_json,
            StreamName.NOTIFICATION_VIEW: long_json,
            StreamName.NOTIFICATION_SNAPSHOT: unlike_any,
            StreamName.SLACK_EVENT: "not JSON, and long enough to be packed: " + "x" * 300,
            StreamName.EMAIL_OPERATION: '{"short":1}',
        }
        for stream, payload in payloads.items():
            await store.put(stream, [NewRecord("1", "T", payload, [n1])])
        found = await store.read_tagged(list(payloads), [n1])
        assert {r.stream: r.payload for r in found} == payloads
        for stream, payload in payloads.items():
            assert [r.payload for r in await store.reader(stream).by_id("1")] == [payload]

    async def test_records_are_found_by_their_tags_across_streams_in_one_read(self, store: StreamStore) -> None:
        """What `events` reads: a notification's records in the streams asked, in the order they were written."""
        n1, n2 = Tag(name="notification-id", value="1"), Tag(name="notification-id", value="2")
        ada = Tag(name="recipient", value="ada@x.org")
        puts = [
            (StreamName.EMAIL_EVENT, [n1, ada]),
            (StreamName.NOTIFICATION_EVENT, [n1]),
            (StreamName.SLACK_EVENT, [n2]),
            (StreamName.EMAIL_EVENT, [n1]),
            (StreamName.EMAIL_OPERATION, [n1]),
        ]
        ids = [(await store.writer(s).put("1", Thing(value=i), tags=t)).internal_id for i, (s, t) in enumerate(puts)]
        asked = [StreamName.EMAIL_EVENT, StreamName.NOTIFICATION_EVENT, StreamName.SLACK_EVENT]
        found = await store.read_tagged(asked, [n1])
        assert [r.internal_id for r in found] == [ids[0], ids[1], ids[3]]
        assert [r.stream for r in found] == ["email-event", "notification-event", "email-event"]
        assert found[0].tags == (n1, ada) and found[0].object(Thing).value == 0
        assert [r.internal_id for r in await store.read_tagged(asked, [n1, ada])] == [ids[0]]
        assert [r.internal_id for r in await store.read_tagged(list(StreamName), [n2])] == [ids[2]]
        assert await store.read_tagged(asked, [Tag(name="notification-id", value="3")]) == []
        assert await store.read_tagged([StreamName.SLACK_OPERATION], [n1]) == []
        assert await store.read_tagged(asked, [Tag(name="notification-id", value="1\0")]) == []
        with pytest.raises(ValueError):
            await store.read_tagged(asked, [])

    async def test_the_newest_records_with_tags_come_first_a_page_at_a_time(self, store: StreamStore) -> None:
        """What the pages of recent notifications read: newest first, so many at a time, below the last one seen."""
        writer, reader = store.writer(StreamName.CLIENT_OPERATION), store.reader(StreamName.CLIENT_OPERATION)
        ada = Tag(name="entity-id", value="ada")
        ids = [(await writer.put(str(i), Thing(value=i), tags=[ada] if i % 2 else [])).internal_id for i in range(6)]
        await writer.put("7", Other(value=7), tags=[ada])
        first = await reader.newest_by_tags(ada, type="Thing", limit=2)
        assert [r.internal_id for r in first] == [ids[5], ids[3]]
        rest = await reader.newest_by_tags(ada, type="Thing", before=first[-1].internal_id, limit=2)
        assert [r.internal_id for r in rest] == [ids[1]]
        assert [r.record_id for r in await reader.newest_by_tags(limit=2)] == ["7", "5"]

    async def test_reads_take_any_id_tag_or_cursor(self, store: StreamStore) -> None:
        """What a URL can carry and no record holds (a NUL, an integer past 64 bits) matches nothing; a cursor past
        64 bits bounds as the largest id does."""
        writer, reader = store.writer(StreamName.CLIENT_OPERATION), store.reader(StreamName.CLIENT_OPERATION)
        ada, nul = Tag(name="entity-id", value="ada"), Tag(name="entity-id", value="a\0da")
        put = await writer.put("1", Thing(value=1), tags=[ada])
        huge = 2**64
        assert await reader.latest("1\0") is None
        assert await reader.by_id("\0") == []
        assert await reader.by_tags(nul) == []
        assert await reader.by_tags(Tag(name="entity\0id", value="ada")) == []
        assert await reader.newest_by_tags(nul, limit=10) == []
        assert await reader.newest_by_tags(ada, type="\0", limit=10) == []
        assert [r.internal_id for r in await reader.newest_by_tags(ada, before=huge, limit=10)] == [put.internal_id]
        assert await reader.newest_by_tags(ada, before=-huge, limit=10) == []
        assert await reader.unhandled("send\0", type="Thing", after=huge) == []
        assert [r.internal_id for r in await reader.unhandled("c", type="Thing", after=-huge)] == [put.internal_id]
        handling = store.handling(StreamName.CLIENT_OPERATION)
        assert await handling.history(huge) == []
        assert await handling.status(put.internal_id or 0, "c\0") == HandlingStatus.AVAILABLE_BY_DEFAULT

    async def test_unhandled_records_are_those_no_handler_took_up(self, store: StreamStore) -> None:
        """What the client-operation handler looks for: records of a type, after an internal id, with no handling
        under a concern (any status under it, or under another concern, does not count)."""
        writer, reader = store.writer(StreamName.CLIENT_OPERATION), store.reader(StreamName.CLIENT_OPERATION)
        handling = store.handling(StreamName.CLIENT_OPERATION)
        assert await reader.newest() is None
        ids = [(await writer.put(str(i), Thing(value=i))).internal_id or 0 for i in range(5)]
        await writer.put("other", Other(value=9))
        await store.writer(StreamName.EMAIL_OPERATION).put("elsewhere", Thing(value=9))
        await handling.transition(ids[0], "start", HandlingStatus.RUNNING)
        await handling.transition(ids[1], "start", HandlingStatus.DISABLED_FOR_RECORD)
        await handling.transition(ids[2], "another concern", HandlingStatus.RUNNING)
        unhandled = await reader.unhandled("start", type="Thing")
        assert [r.internal_id for r in unhandled] == ids[2:]
        assert [r.internal_id for r in await reader.unhandled("start", type="Thing", after=ids[2])] == ids[3:]
        assert [r.internal_id for r in await reader.unhandled("start", type="Thing", limit=1)] == ids[2:3]
        newest = await reader.newest()
        assert newest is not None and newest.record_id == "other"

    async def test_a_reader_waiting_for_operations_is_woken_or_times_out(self, store: StreamStore) -> None:
        reader = store.reader(StreamName.CLIENT_OPERATION)
        await reader.wait_for_operations(0.01)  # the first wait may return at once (a backend starts listening)
        if not store.tells_of_operations:
            started = asyncio.get_running_loop().time()
            await reader.wait_for_operations(0.2)
            assert asyncio.get_running_loop().time() - started >= 0.2  # it can only wait the time out
            return
        waiting = asyncio.create_task(reader.wait_for_operations(60))
        await store.writer(StreamName.CLIENT_OPERATION).put("1", Thing(value=1), type="ExecuteOpRequestedEvent")
        await asyncio.wait_for(waiting, 10)  # woken by the append, long before its time out

    async def test_turns_at_a_resource_are_spaced_and_the_first_is_now(self, store: StreamStore) -> None:
        handling = store.handling(StreamName.SLACK_OPERATION)
        waits = sorted(await asyncio.gather(*(handling.next_turn("acme/C1", 10) for _ in range(3))))
        assert waits[0] == 0  # exactly: a turn that is now sets no timer
        assert [round(w) for w in waits] == [0, 10, 20]  # each from its own now, a moment apart
        assert await handling.next_turn("acme/C2", 10) == 0  # another resource is not queued behind

    async def test_a_store_has_an_identity_of_its_own_for_good(self, tmp_path: Path) -> None:
        for folder in ("a", "b"):
            (tmp_path / folder).mkdir()
        async with self.open(tmp_path / "a") as first:
            identity = await first.identity()
        async with self.open(tmp_path / "a") as again, self.open(tmp_path / "b") as other:
            assert await again.identity() == identity
            assert await other.identity() != identity
        assert len(identity) == 8 and int(identity, 16) >= 0

    async def test_records_survive_reopening(self, tmp_path: Path) -> None:
        async with self.open(tmp_path) as store:
            await store.writer(StreamName.NOTIFICATION_EVENT).put("1", Thing(value=5))
            await store.writer(StreamName.NOTIFICATION_EVENT).next_unique_id()
        async with self.open(tmp_path) as store:
            record = await store.reader(StreamName.NOTIFICATION_EVENT).latest("1")
            assert record is not None and record.object(Thing).value == 5
            assert await store.writer(StreamName.NOTIFICATION_EVENT).next_unique_id() == 2

    # -- access ----------------------------------------------------------------------------------------------------

    async def test_handles_allow_one_direction_only(self, store: StreamStore) -> None:
        writer = store.writer(StreamName.EMAIL_OPERATION)
        reader = store.reader(StreamName.EMAIL_OPERATION)
        assert isinstance(writer, WriteOnlyStream) and not isinstance(writer, ReadOnlyStream)
        assert isinstance(reader, ReadOnlyStream) and not isinstance(reader, WriteOnlyStream)
        for read in ("latest", "by_id", "by_tags", "read"):
            with pytest.raises(AttributeError):
                getattr(writer, read)
        for write in ("put", "next_unique_id"):
            with pytest.raises(AttributeError):
                getattr(reader, write)
        with pytest.raises(AttributeError):
            writer.extra = 1  # type: ignore[attr-defined]

    # -- handling -------------------------------------------------------------------------------------------------

    async def test_handling_follows_the_transitions(self, store: StreamStore) -> None:
        record = (await store.writer(StreamName.EMAIL_OPERATION).put("1", Thing(value=1))).internal_id
        assert record is not None
        handling = store.handling(StreamName.EMAIL_OPERATION)
        assert await handling.status(record, "send-email") == HandlingStatus.AVAILABLE_BY_DEFAULT
        with pytest.raises(InvalidHandlingTransition):
            await handling.transition(record, "send-email", HandlingStatus.COMPLETED)
        await handling.transition(record, "send-email", HandlingStatus.RUNNING)
        with pytest.raises(InvalidHandlingTransition):
            await handling.transition(record, "send-email", HandlingStatus.RUNNING)
        await handling.transition(record, "send-email", HandlingStatus.FAILED, "boom")
        await handling.transition(record, "send-email", HandlingStatus.AVAILABLE_AFTER_FAILURE)
        await handling.transition(record, "send-email", HandlingStatus.RUNNING)
        await handling.transition(record, "send-email", HandlingStatus.COMPLETED, "done")
        with pytest.raises(InvalidHandlingTransition):
            await handling.transition(record, "send-email", HandlingStatus.FAILED)
        history = await handling.history(record, "send-email")
        assert [e.status for e in history] == ["Running", "Failed", "AvailableAfterFailure", "Running", "Completed"]
        assert [e.details for e in history][1::3] == ["boom", "done"]
        assert await handling.status(record, "send-email") == HandlingStatus.COMPLETED
        # concerns are independent, and so are streams
        assert await handling.status(record, "another-concern") == HandlingStatus.AVAILABLE_BY_DEFAULT
        other = store.handling(StreamName.SLACK_OPERATION)
        assert await other.status(record, "send-email") == HandlingStatus.AVAILABLE_BY_DEFAULT

    @pytest.mark.parametrize("to", list(HandlingStatus))
    async def test_every_transition_and_no_other(self, store: StreamStore, to: HandlingStatus) -> None:
        """From each status a record can be in, exactly the moves `ALLOWED_TRANSITIONS` lists are taken."""
        writer, handling = store.writer(StreamName.EMAIL_OPERATION), store.handling(StreamName.EMAIL_OPERATION)
        for current, path in PATHS.items():
            record = (await writer.put(None, Thing(value=1))).internal_id
            assert record is not None
            for status in path:
                await handling.transition(record, "c", status)
            assert await handling.status(record, "c") == current
            if current in ALLOWED_TRANSITIONS.get(to, ()):
                await handling.transition(record, "c", to)
                assert await handling.status(record, "c") == to
            else:
                with pytest.raises(InvalidHandlingTransition, match=f"is {current}, it cannot become {to}"):
                    await handling.transition(record, "c", to)
                assert await handling.status(record, "c") == current

    async def test_handling_needs_a_record_of_its_stream(self, store: StreamStore) -> None:
        record = (await store.writer(StreamName.EMAIL_OPERATION).put("1", Thing(value=1))).internal_id
        assert record is not None
        for stream, internal_id in ((StreamName.EMAIL_OPERATION, record + 1000), (StreamName.SLACK_OPERATION, record)):
            with pytest.raises(NoSuchRecord, match=f"no record {internal_id} in {stream}"):
                await store.handling(stream).transition(internal_id, "c", HandlingStatus.RUNNING)
            assert await store.handling(stream).history(internal_id) == []

    async def test_handlers_taking_up_records_at_once_take_turns(self, tmp_path: Path) -> None:
        """Two stores (two connections) take up the same records at once, over and over: every history stays a
        sequence of allowed transitions, each begin leaving the record `Running`."""
        async with self.open(tmp_path) as first, self.open(tmp_path) as second:
            writer = first.writer(StreamName.EMAIL_OPERATION)
            records = [(await writer.put(None, Thing(value=i))).internal_id or 0 for i in range(5)]
            takers = [s.handling(StreamName.EMAIL_OPERATION) for s in (first, second)]
            for _ in range(4):
                await asyncio.gather(*(h.begin(r, "c") for r in records for h in takers))
                await asyncio.gather(*(takers[0].transition(r, "c", HandlingStatus.FAILED) for r in records))
            for record in records:
                history = [e.status for e in await takers[0].history(record, "c")]
                # per round two begins, the second ending the first, then a failure (and from the second round on,
                # the first begin resets that failure)
                assert len(history) == 4 + 3 * 5, history
                previous = HandlingStatus.AVAILABLE_BY_DEFAULT
                for status in history:
                    assert previous in ALLOWED_TRANSITIONS[status], history
                    previous = status

    async def test_a_step_writes_across_streams_and_handling_stores_at_once(self, store: StreamStore) -> None:
        """A step's moves, puts and take-ups in one write; the same write again (a retried step) writes nothing new:
        its puts defer to the records there, and its moves, no longer allowed, are skipped."""
        request = (await store.writer(StreamName.CLIENT_OPERATION).put("n1", Thing(value=1))).internal_id
        assert request is not None
        events, sagas = store.writer(StreamName.NOTIFICATION_EVENT), store.writer(StreamName.NOTIFICATION_SAGA)
        requests, saga_handling = (
            store.handling(StreamName.CLIENT_OPERATION),
            store.handling(StreamName.NOTIFICATION_SAGA),
        )
        puts = [
            events.record(
                "n1", Thing(value=2), tags=[Tag(name="t", value="n1")], strategy=S.DO_NOT_WRITE_IF_FOUND_BY_ID
            ),
            sagas.record("n1", Other(value=3), strategy=S.DO_NOT_WRITE_IF_FOUND_BY_ID, take_up="saga"),
        ]
        moves = [
            requests.move(request, "send", HandlingStatus.RUNNING),
            requests.move(request, "send-2", HandlingStatus.COMPLETED),
        ]
        first = await store.steps().write(puts, before=moves)
        assert first.moved == [True, False]  # nothing runs under send-2: it cannot complete
        assert all(p.internal_id is not None for p in first.puts)
        saga = first.puts[1].record_internal_id
        assert [(e.status, e.details) for e in await requests.history(request)] == [("Running", "")]
        assert [e.status for e in await saga_handling.history(saga, "saga")] == ["Running"]
        [event] = await store.reader(StreamName.NOTIFICATION_EVENT).by_tags(Tag(name="t", value="n1"))
        assert event.object(Thing).value == 2
        again = await store.steps().write(puts, before=moves)
        assert again.moved == [False, False]
        assert [p.record_internal_id for p in again.puts] == [p.record_internal_id for p in first.puts]
        assert [p.internal_id for p in again.puts] == [None, None]
        assert len(await requests.history(request)) == 1 and len(await saga_handling.history(saga)) == 1
        done = await store.steps().write([], after=[requests.move(request, "send", HandlingStatus.COMPLETED, "sent")])
        assert done.moved == [True]
        assert await requests.status(request, "send") == HandlingStatus.COMPLETED

    async def test_a_step_begins_as_begin_does(self, store: StreamStore) -> None:
        """A step's begin (`HandlingStore.beginning`) takes the record up as `begin` does, and is not made once the
        record is handled: what tells a retried send that its operation was delivered."""
        record = (await store.writer(StreamName.EMAIL_OPERATION).put("1", Thing(value=1))).internal_id
        assert record is not None
        handling, events = store.handling(StreamName.EMAIL_OPERATION), store.writer(StreamName.EMAIL_EVENT)
        requested = events.record("1", Thing(value=2), strategy=S.DO_NOT_WRITE_IF_FOUND_BY_ID)
        first = await store.steps().write([requested], before=[handling.beginning(record, "c", "attempt 1")])
        second = await store.steps().write([requested], before=[handling.beginning(record, "c", "attempt 2")])
        assert (first.moved, second.moved) == ([True], [True])
        assert (first.puts[0].internal_id is None, second.puts[0].internal_id is None) == (False, True)
        await handling.transition(record, "c", HandlingStatus.COMPLETED, "done")
        third = await store.steps().write([], before=[handling.beginning(record, "c", "attempt 3")])
        assert third.moved == [False]
        assert [(e.status, e.details) for e in await handling.history(record, "c")] == [
            ("Running", "attempt 1"),
            ("AvailableAfterExternalCancellation", "the previous attempt did not finish"),
            ("Running", "attempt 2"),
            ("Completed", "done"),
        ]

    async def test_a_step_moving_a_record_that_is_not_there_writes_nothing(self, store: StreamStore) -> None:
        put = store.writer(StreamName.NOTIFICATION_EVENT).record("n1", Thing(value=1))
        missing = store.handling(StreamName.CLIENT_OPERATION).move(12345, "send", HandlingStatus.RUNNING)
        with pytest.raises(NoSuchRecord, match="no record 12345 in client-operation"):
            await store.steps().write([put], before=[missing])
        assert await store.reader(StreamName.NOTIFICATION_EVENT).by_id("n1") == []

    async def test_begin_resumes_a_retried_handler(self, store: StreamStore) -> None:
        record = (await store.writer(StreamName.SLACK_OPERATION).put("1", Thing(value=1))).internal_id
        assert record is not None
        handling = store.handling(StreamName.SLACK_OPERATION)
        assert await handling.begin(record, "c") is None
        assert await handling.begin(record, "c") is None  # the previous attempt was abandoned while running
        await handling.transition(record, "c", HandlingStatus.FAILED, "transient")
        assert await handling.begin(record, "c") is None
        await handling.transition(record, "c", HandlingStatus.COMPLETED, "the outcome")
        before = await handling.history(record, "c")
        done = await handling.begin(record, "c")
        assert done is not None and done.details == "the outcome"
        assert await handling.history(record, "c") == before
        assert [e.status for e in before] == [
            "Running",
            "AvailableAfterExternalCancellation",
            "Running",
            "Failed",
            "AvailableAfterFailure",
            "Running",
            "Completed",
        ]

    # -- counting ----------------------------------------------------------------------------------------------------

    async def test_views_are_counted_by_minute_status_channel_and_outcome(self, store: StreamStore) -> None:
        """What the page's overview shows: the views written since a time, in one query; one that is not JSON, or
        says no status or outcome as text, counts as unreadable and breaks nothing."""

        def view(status: object, **channels: object) -> str:
            return json.dumps(
                {"id": "n", "status": status, "channels": {c: {"outcome": o} for c, o in channels.items()}}
            )

        await store.put(StreamName.NOTIFICATION_VIEW, [NewRecord("early", "NotificationView", view("sent"))])
        await store.writer(StreamName.NOTIFICATION_EVENT).put("n", Thing(value=1))  # no view
        since = await _after_the_last_write(store)
        payloads = {
            "sent": (
                view("sent", email="succeeded", slack="succeeded"),
                "sent",
                [("email", "succeeded"), ("slack", "succeeded")],
            ),
            "failed": (view("failed", email="failed"), "failed", [("email", "failed")]),
            "none": (view("failed"), "failed", []),
            "garbled": ('{"id": "n", "status": "sent", "channels": {', "unreadable", []),
            "nan": ('{"id": "n", "status": "sent", "x": NaN}', "unreadable", []),
            "deep": ("[" * 5000 + "]" * 5000, "unreadable", []),
            "nul": ('{"id": "n\\u0000"}', "unreadable", []),
            "odd": (view(7, email=9, slack="sent"), "unreadable", [("email", "unreadable"), ("slack", "sent")]),
            "flat": ('{"status": "sent", "channels": {"email": "sent"}}', "sent", [("email", "unreadable")]),
            "list": ("[1, 2]", "unreadable", []),
        }
        written = await store.put(
            StreamName.NOTIFICATION_VIEW, [NewRecord(i, "NotificationView", p) for i, (p, _, _) in payloads.items()]
        )
        records = {r.internal_id: r for r in await store.read(StreamName.NOTIFICATION_VIEW)}
        statuses: Counter[tuple[datetime, str]] = Counter()
        channels: Counter[tuple[datetime, str, str]] = Counter()
        for put, (_, status, outcomes) in zip(written, payloads.values(), strict=True):
            minute = records[put.record_internal_id].timestamp_utc.replace(second=0, microsecond=0)
            statuses[minute, status] += 1
            channels.update((minute, channel, outcome) for channel, outcome in outcomes)

        counted = await store.view_counts(since)
        assert counted == ViewCounts(dict(statuses), dict(channels))
        assert all(m.utcoffset() == timedelta(0) for m, _ in counted.statuses)
        assert sum((await store.view_counts(since - timedelta(days=1))).statuses.values()) == len(payloads) + 1
        assert await store.view_counts(since + timedelta(days=1)) == ViewCounts({}, {})

    # -- retention ---------------------------------------------------------------------------------------------------

    async def test_prune_removes_what_ended_before_the_date_and_nothing_else(
        self, store: StreamStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Notifications that ended (a view) or were refused (their request disabled) before the date go, every record
        of each with its tags and handling; one still under way, one that ended after, and records of no notification
        (the directory) stay."""

        async def notification(nid: str, ended: bool = False, refused: bool = False) -> int:
            tags = [Tag(name="notification-id", value=nid), Tag(name="entity-id", value="e-1")]
            request = await store.writer(StreamName.CLIENT_OPERATION).put(
                nid, Thing(value=1), type="ExecuteOpRequestedEvent", tags=tags
            )
            await store.writer(StreamName.NOTIFICATION_EVENT).put(nid, Thing(value=2), tags=tags)
            email = await store.writer(StreamName.EMAIL_OPERATION).put(f"{nid}.1", Thing(value=3), tags=tags)
            await store.handling(StreamName.EMAIL_OPERATION).transition(
                email.record_internal_id, "send-email", HandlingStatus.RUNNING
            )
            if refused:
                await store.handling(StreamName.CLIENT_OPERATION).transition(
                    request.record_internal_id, "send-notification", HandlingStatus.DISABLED_FOR_RECORD, "refused"
                )
            if ended:
                await store.writer(StreamName.NOTIFICATION_VIEW).put(
                    nid, Thing(value=4), tags=tags, strategy=S.PRUNE_IF_FOUND_BY_ID
                )
            return email.record_internal_id

        await store.writer(StreamName.ENTITY_DIRECTORY).put(
            "e-1", Thing(value=0), tags=[Tag(name="entity-id", value="e-1")]
        )
        old_email = await notification("old", ended=True)
        await notification("refused", refused=True)
        shared, olds, orphans = b"%PDF-1.7 shared", b"\x89PNG only the old one's", b"its request never written"
        await store.put_contents("old", [shared, olds])
        await store.put_contents("orphan", [orphans])
        await store.put_contents("running", [shared])  # before its request, as a client puts them
        await notification("running")
        broadcasts = b"a broadcast's, named by its id"
        await store.put_contents("broadcast", [broadcasts])  # its request's record: the id, but no notification's tag
        await store.writer(StreamName.CLIENT_OPERATION).put(
            "broadcast",
            Thing(value=5),
            type="BroadcastRequestedEvent",
            tags=[Tag(name="broadcast-id", value="broadcast")],
        )
        cut = await _after_the_last_write(store)
        await notification("new", ended=True)
        await store.put_contents("new-orphan", [b"put after the cut"])

        assert await store.prune(cut, batch=1) == Pruned(notifications=2, records=4 + 3, contents=1)
        assert await store.content(hashlib.sha256(shared).hexdigest()) == shared  # "running" still names it
        assert await store.content(hashlib.sha256(olds).hexdigest()) is None
        assert await store.content(hashlib.sha256(orphans).hexdigest()) == orphans  # its request may be on its way
        monkeypatch.setattr(streams.store, "ORPHANED_AFTER", timedelta(0))  # as it is an hour later
        assert await store.prune(cut) == Pruned(contents=1)
        assert await store.content(hashlib.sha256(orphans).hexdigest()) is None
        assert await store.content(hashlib.sha256(b"put after the cut").hexdigest()) is not None
        assert await store.content(hashlib.sha256(broadcasts).hexdigest()) == broadcasts

        async def left(nid: str) -> list[str]:
            tag = Tag(name="notification-id", value=nid)
            return [r.stream for s in StreamName for r in await store.read(s, tags=[tag])]

        assert await left("old") == [] and await left("refused") == []
        assert await store.handling_history(StreamName.EMAIL_OPERATION, old_email, None) == []
        assert len(await left("running")) == 3 and len(await left("new")) == 4
        assert [r.record_id for r in await store.read(StreamName.ENTITY_DIRECTORY)] == ["e-1"]
        assert await store.prune(cut) == Pruned()

    async def test_prune_removes_a_broadcast_that_ended_before_the_date_and_nothing_else(
        self, store: StreamStore
    ) -> None:
        """A broadcast that ended (its request's handling `Completed`) before the date goes: its request, key claim,
        snapshot page and refused recipient, with their tags and handling, and the files only it names; its ended
        recipient goes with it, not before. A broadcast still running, and a notification under way, stay."""
        handling = store.handling(StreamName.CLIENT_OPERATION)
        shared, olds, runnings = b"%PDF-1.7 both broadcasts'", b"\x89PNG the old one's", b"the running one's"
        old = await _broadcast(store, "old", [shared, olds])
        await _recipient(store, "old", 1, ended=True)
        running = await _broadcast(store, "running", [shared, runnings])
        await _recipient(store, "running", 1, ended=False)
        await store.writer(StreamName.CLIENT_OPERATION).put(
            "solo", Thing(value=3), type="ExecuteOpRequestedEvent", tags=[tag("notification-id", "solo")]
        )
        ended = await handling.transition(old, SEND_BROADCAST_CONCERN, HandlingStatus.COMPLETED, "all ended")
        written = await _everything(store)

        # ended at the date, not before it: nothing of it goes, not even its recipient whose view is older
        assert await store.prune(ended.timestamp_utc) == Pruned()
        assert await _everything(store) == written

        assert await store.prune(ended.timestamp_utc + timedelta(microseconds=1)) == Pruned(
            notifications=1, broadcasts=1, records=2 + 4, contents=1
        )
        left = await _everything(store)
        assert sorted(written[i].record_id or "" for i in written.keys() - left.keys()) == [
            "idempotency-key:key-of-old",
            "old",
            recipient_id("old", 1),
            recipient_id("old", 1),
            recipient_id("old", 2),
            recipients_record_id("old", 0),
        ]
        assert all(r.tag(TagName.BROADCAST_ID) != "old" for r in left.values())
        assert await store.handling_history(StreamName.CLIENT_OPERATION, old, None) == []
        assert [e.status for e in await handling.history(running)] == [HandlingStatus.RUNNING]
        assert await store.content(hashlib.sha256(olds).hexdigest()) is None
        assert await store.content(hashlib.sha256(shared).hexdigest()) == shared
        assert await store.content(hashlib.sha256(runnings).hexdigest()) == runnings
        assert await store.prune(utc_now()) == Pruned()
        assert len(await _everything(store)) == len(left) == 5 + 1

    async def test_prune_keeps_a_running_broadcasts_notifications_until_it_has_ended(self, store: StreamStore) -> None:
        """A broadcast counts its ended notifications by their views: while it runs, its recipients whose views are
        older than the date stay, every record of them. Once it has ended before the date, one prune removes it and
        all its recipients, a batch at a time; a broadcast's request that ended without its tag goes too (and the
        prune ends), and a notification under way stays."""
        handling = store.handling(StreamName.CLIENT_OPERATION)
        untagged = await store.writer(StreamName.CLIENT_OPERATION).put(
            "untagged", BroadcastRequestedEvent(id="untagged", operation=OP, timestamp_utc=utc_now())
        )
        await handling.transition(untagged.record_internal_id, SEND_BROADCAST_CONCERN, HandlingStatus.RUNNING)
        await handling.transition(untagged.record_internal_id, SEND_BROADCAST_CONCERN, HandlingStatus.COMPLETED)
        long = await _broadcast(store, "long", [])
        await _recipient(store, "long", 1, ended=True)
        await _recipient(store, "long", 3, ended=True)
        other = [tag(TagName.NOTIFICATION_ID, "other")]
        await store.writer(StreamName.CLIENT_OPERATION).put(
            "other", Thing(value=1), type="ExecuteOpRequestedEvent", tags=other
        )
        await store.writer(StreamName.NOTIFICATION_VIEW).put("other", Thing(value=2), tags=other)
        cut = await _after_the_last_write(store)
        await store.writer(StreamName.CLIENT_OPERATION).put(
            "solo", Thing(value=3), type="ExecuteOpRequestedEvent", tags=[tag(TagName.NOTIFICATION_ID, "solo")]
        )
        written = await _everything(store)

        assert await store.prune(cut, batch=1) == Pruned(notifications=1, broadcasts=1, records=2 + 1)
        kept = await _everything(store)
        assert sorted(written[i].record_id or "" for i in written.keys() - kept.keys()) == [
            "other",
            "other",
            "untagged",
        ]
        assert len([r for r in kept.values() if r.tag(TagName.BROADCAST_ID) == "long"]) == 3 + 1 + 2 * 2
        assert [e.status for e in await handling.history(long)] == [HandlingStatus.RUNNING]

        ended = await handling.transition(long, SEND_BROADCAST_CONCERN, HandlingStatus.COMPLETED, "all ended")
        assert await store.prune(ended.timestamp_utc + timedelta(microseconds=1), batch=1) == Pruned(
            notifications=2, broadcasts=1, records=3 + 1 + 2 * 2
        )
        assert [r.record_id for r in (await _everything(store)).values()] == ["solo"]
        assert await store.handling_history(StreamName.CLIENT_OPERATION, long, None) == []


OP = SendBroadcastOp(audience=BroadcastAudience(entity_ids=["e-1", "e-2"]), content={"subject": "S"})


async def _broadcast(store: StreamStore, bid: str, files: list[bytes]) -> int:
    """A broadcast as `BroadcastClient.request` and its saga's first steps write it: its key's claim, its files, its
    request (taken up: the internal id returned), its snapshot, its refused second recipient."""
    operations = store.writer(StreamName.CLIENT_OPERATION)
    key, by_broadcast = f"key-of-{bid}", tag(TagName.BROADCAST_ID, bid)
    by_key = tag(TagName.IDEMPOTENCY_KEY, key)
    claim = BroadcastKeyClaim(idempotency_key=key, broadcast_id=bid, operation=OP)
    await operations.put(f"idempotency-key:{key}", claim, tags=[by_broadcast, by_key])
    await store.put_contents(bid, files)
    request = BroadcastRequestedEvent(id=bid, operation=OP, timestamp_utc=utc_now())
    put = await operations.put(bid, request, tags=[by_broadcast, by_key], strategy=S.DO_NOT_WRITE_IF_FOUND_BY_ID)
    page = BroadcastRecipients(broadcast_id=bid, page=0, entity_ids=["e-1", "e-2"])
    await operations.put(recipients_record_id(bid, 0), page, tags=[by_broadcast])
    await store.handling(StreamName.CLIENT_OPERATION).transition(
        put.record_internal_id, SEND_BROADCAST_CONCERN, HandlingStatus.RUNNING
    )
    second = recipient_id(bid, 2)
    refused = BroadcastRecipientRefused(broadcast_id=bid, notification_id=second, entity_id="e-2", reason="gone")
    await store.writer(StreamName.NOTIFICATION_EVENT).put(
        second, refused, tags=[tag(TagName.NOTIFICATION_ID, second), by_broadcast]
    )
    return put.record_internal_id


async def _recipient(store: StreamStore, bid: str, place: int, *, ended: bool) -> None:
    """The notification of a broadcast's recipient: its request, and (if it `ended`) its view, both tagged with the
    broadcast's id as the service tags them."""
    nid = recipient_id(bid, place)
    tags = [tag(TagName.NOTIFICATION_ID, nid), tag(TagName.BROADCAST_ID, bid)]
    await store.writer(StreamName.CLIENT_OPERATION).put(nid, Thing(value=1), type="ExecuteOpRequestedEvent", tags=tags)
    if ended:
        await store.writer(StreamName.NOTIFICATION_VIEW).put(nid, Thing(value=2), tags=tags)


async def _everything(store: StreamStore) -> dict[int, Record]:
    """Every record of the store, by its internal id."""
    return {r.internal_id: r for s in StreamName for r in await store.read(s)}


def _issue_ids(contract: type[StreamStoreContract], location: Path, count: int) -> list[int]:
    async def issue() -> list[int]:
        async with contract().open(location) as store:
            writer = store.writer(StreamName.CLIENT_OPERATION)
            return [await writer.next_unique_id() for _ in range(count)]

    return asyncio.run(issue())


RACED_IDS = 20


def _put_once(contract: type[StreamStoreContract], location: Path, value: int, start: Any) -> int:
    async def put() -> int:
        async with contract().open(location) as store:
            writer = store.writer(StreamName.CLIENT_OPERATION)
            start.wait()
            written = 0
            for i in range(RACED_IDS):
                result = await writer.put(f"race-{i}", Thing(value=value), strategy=S.DO_NOT_WRITE_IF_FOUND_BY_ID)
                written += result.internal_id is not None
            return written

    return asyncio.run(put())


async def _after_the_last_write(store: StreamStore) -> datetime:
    """A moment after every record written so far, by the store's own clock."""
    newest = [r for s in StreamName for r in await store.read(s, newest_first=True, limit=1)]
    return max(r.timestamp_utc for r in newest) + timedelta(microseconds=1)
