import asyncio
import sqlite3
from pathlib import Path

from domain import Tag
from streams import StreamName, StreamStore, open_store
from streams.sqlite import AT_ONCE_RECORDS, CHECKPOINT_EVERY
from streams.store import NewRecord
from tests.streams_contract import StreamStoreContract, Thing


class TestSQLiteStreamStore(StreamStoreContract):
    def open(self, location: Path) -> StreamStore:
        return open_store(f"sqlite:///{location / 'streams.db'}")


async def test_a_file_of_schema_4_keeps_its_records_and_their_tags_once(tmp_path: Path) -> None:
    """Schema 4 kept a record's tags twice, as rows and as a JSON column, and its type in the index by id; opening
    such a file drops the column and makes the index anew."""
    path = tmp_path / "streams.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE records (internal_id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, record_id TEXT,"
            " type TEXT NOT NULL, payload TEXT NOT NULL, tags TEXT NOT NULL, timestamp_utc TEXT NOT NULL);"
            "CREATE INDEX records_by_id ON records (stream, record_id, type);"
            "CREATE TABLE record_tags (internal_id INTEGER NOT NULL REFERENCES records (internal_id) ON DELETE CASCADE,"
            " stream TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL);"
            "INSERT INTO records VALUES (1, 'email-event', '7', 'Sent', '{}', '[[\"recipient\", \"a@x.org\"]]',"
            " '2026-11-01T00:00:00+00:00');"
            "INSERT INTO record_tags VALUES (1, 'email-event', 'recipient', 'a@x.org');"
            "PRAGMA user_version=4;"
        )
    db.close()
    async with open_store(f"sqlite:///{path}") as store:
        [record] = await store.reader(StreamName.EMAIL_EVENT).by_tags(Tag(name="recipient", value="a@x.org"))
        assert (record.record_id, record.tags) == ("7", (Tag(name="recipient", value="a@x.org"),))
    with sqlite3.connect(path) as db:
        assert "tags" not in {row[1] for row in db.execute("PRAGMA table_info(records)")}
        assert db.execute("PRAGMA user_version").fetchone() == (5,)
        assert [row[2] for row in db.execute("PRAGMA index_info(records_by_id)")] == ["stream", "record_id"]
    db.close()


async def test_a_step_that_finds_the_file_busy_waits_for_it_on_the_store_thread(tmp_path: Path) -> None:
    """A step's write runs at once on the caller's thread; when another process holds the file's write lock, it
    goes to the store's thread and waits there for it, instead of failing or blocking the event loop."""
    async with open_store(f"sqlite:///{tmp_path / 'streams.db'}") as store:
        other = sqlite3.connect(tmp_path / "streams.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        writing = asyncio.ensure_future(store.writer(StreamName.EMAIL_EVENT).put("1", Thing(value=1)))
        await asyncio.sleep(0)  # the put's first step: refused at once, it now waits on the store's thread
        assert not writing.done()
        other.execute(
            "INSERT INTO records (stream, record_id, type, payload, timestamp_utc)"
            " VALUES ('email-event', '0', 'Thing', '{\"value\": 0}', '2026-01-01T00:00:00+00:00')"
        )
        other.execute("COMMIT")
        put = await writing
        assert [r.record_id for r in await store.reader(StreamName.EMAIL_EVENT).by_tags()] == ["0", "1"]
        assert put.internal_id is not None
        other.close()


async def test_writes_on_both_threads_go_on_past_a_checkpoint(tmp_path: Path) -> None:
    """The store's thread checkpoints the log every `CHECKPOINT_EVERY` calls made at once; its own writes (a batch)
    go on after it."""
    async with open_store(f"sqlite:///{tmp_path / 'streams.db'}") as store:
        writer = store.writer(StreamName.EMAIL_OPERATION)
        issued = [await writer.next_unique_id() for _ in range(CHECKPOINT_EVERY + 1)]
        batch = [NewRecord(str(i), "Thing", Thing(value=i).model_dump_json()) for i in range(AT_ONCE_RECORDS + 1)]
        put = await store.put(StreamName.EMAIL_OPERATION, batch)
        assert issued[-1] == CHECKPOINT_EVERY + 1 and len(put) == AT_ONCE_RECORDS + 1
        assert await writer.next_unique_id() == CHECKPOINT_EVERY + 2
