import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from domain import Tag
from streams import StreamName, StreamStore, open_store
from streams.sqlite import AT_ONCE_RECORDS, CHECKPOINT_EVERY, SCHEMA_VERSION
from streams.store import NewRecord, Pruned
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
            "CREATE TABLE handling (entry_id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL,"
            " internal_record_id INTEGER NOT NULL, concern TEXT NOT NULL, status TEXT NOT NULL, details TEXT NOT NULL,"
            " timestamp_utc TEXT NOT NULL);"
            "PRAGMA user_version=4;"
        )
    db.close()
    async with open_store(f"sqlite:///{path}") as store:
        [record] = await store.reader(StreamName.EMAIL_EVENT).by_tags(Tag(name="recipient", value="a@x.org"))
        assert (record.record_id, record.tags) == ("7", (Tag(name="recipient", value="a@x.org"),))
    with sqlite3.connect(path) as db:
        assert "tags" not in {row[1] for row in db.execute("PRAGMA table_info(records)")}
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert [row[2] for row in db.execute("PRAGMA index_info(records_by_id)")] == ["stream", "record_id"]
    db.close()


async def test_a_file_of_schema_5_keeps_its_records_their_tags_handling_times_and_ids(tmp_path: Path) -> None:
    """Schema 5 held names and times as text and the notification-id as a tag row; opening such a file gives names
    their codes, times their microseconds and the notification id its column, and every read answers the same."""
    path = tmp_path / "streams.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE records (internal_id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, record_id TEXT,"
            " type TEXT NOT NULL, payload TEXT NOT NULL, timestamp_utc TEXT NOT NULL);"
            "CREATE INDEX records_by_id ON records (stream, record_id);"
            "CREATE TABLE record_tags (internal_id INTEGER NOT NULL REFERENCES records (internal_id) ON DELETE CASCADE,"
            " stream TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL);"
            "CREATE INDEX record_tags_by_value ON record_tags (stream, name, value, internal_id);"
            "CREATE TABLE handling (entry_id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL,"
            " internal_record_id INTEGER NOT NULL, concern TEXT NOT NULL, status TEXT NOT NULL, details TEXT NOT NULL,"
            " timestamp_utc TEXT NOT NULL);"
            "CREATE INDEX views_by_time ON records (timestamp_utc) WHERE stream = 'notification-view';"
            "INSERT INTO records VALUES (7, 'email-event', '3', 'Sent', '{\"to\": \"a@x.org\"}',"
            " '2026-11-01T10:20:30.000042+00:00');"
            "INSERT INTO records VALUES (8, 'notification-view', 'n-1', 'NotificationView', '{}',"
            " '2026-11-01T10:20:31+00:00');"
            "INSERT INTO record_tags VALUES (7, 'email-event', 'notification-id', 'n-1');"
            "INSERT INTO record_tags VALUES (7, 'email-event', 'recipient', 'a@x.org');"
            "INSERT INTO record_tags VALUES (8, 'notification-view', 'notification-id', 'n-1');"
            "INSERT INTO handling VALUES (4, 'email-event', 7, 'send', 'Running', 'attempt 1',"
            " '2026-11-01T10:20:30.5+00:00');"
            "INSERT INTO handling VALUES (5, 'email-operation', 9, 'send', 'Failed', 'its record gone', '2026-11-01');"
            "INSERT INTO record_tags VALUES (99, 'email-event', 'recipient', 'gone@x.org');"
            "UPDATE sqlite_sequence SET seq = 20 WHERE name = 'records';"
            "PRAGMA user_version=5;"
        )
    db.close()
    async with open_store(f"sqlite:///{path}") as store:
        n1, ada = Tag(name="notification-id", value="n-1"), Tag(name="recipient", value="a@x.org")
        [sent, view] = await store.read_tagged(list(StreamName), [n1])
        assert (sent.internal_id, sent.stream, sent.type, sent.tags) == (7, "email-event", "Sent", (n1, ada))
        assert sent.payload == '{"to": "a@x.org"}'
        assert sent.timestamp_utc == datetime(2026, 11, 1, 10, 20, 30, 42, tzinfo=UTC)
        assert (view.internal_id, view.timestamp_utc) == (8, datetime(2026, 11, 1, 10, 20, 31, tzinfo=UTC))
        assert [r.internal_id for r in await store.reader(StreamName.EMAIL_EVENT).by_tags(ada, n1)] == [7]
        [entry] = await store.handling(StreamName.EMAIL_EVENT).history(7)
        assert (entry.entry_id, entry.concern, entry.status, entry.details) == (4, "send", "Running", "attempt 1")
        assert entry.timestamp_utc == datetime(2026, 11, 1, 10, 20, 30, 500000, tzinfo=UTC)
        assert (await store.writer(StreamName.EMAIL_EVENT).put("4", Thing(value=4))).internal_id == 21
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM record_tags").fetchone() == (1,)  # ids in columns, no orphan
        assert db.execute("SELECT count(*) FROM handling").fetchone() == (2,)  # every entry, its record's or not
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert not {"records_5", "record_tags_5", "handling_5"} & tables
    db.close()


async def test_a_file_of_schema_7_gains_the_index_of_the_broadcasts_ends(tmp_path: Path) -> None:
    """Schema 7 had no index of the broadcasts' ends, which prune names: opening such a file makes it, by the codes the
    file gave the concern and the status."""
    path = tmp_path / "streams.db"
    async with open_store(f"sqlite:///{path}") as store:
        await store.writer(StreamName.CLIENT_OPERATION).put("n-1", Thing(value=1))
    with sqlite3.connect(path) as db:
        db.executescript("DROP INDEX broadcasts_ended; PRAGMA user_version=7;")
    db.close()
    async with open_store(f"sqlite:///{path}") as store:
        assert await store.prune(datetime.now(UTC)) == Pruned()  # its query names the index
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        [(made,)] = db.execute("SELECT sql FROM sqlite_master WHERE name = 'broadcasts_ended'").fetchall()
        codes = dict(db.execute("SELECT name, code FROM names").fetchall())
    db.close()
    assert made.endswith(f"WHERE concern = {codes['send-broadcast']} AND status = {codes['Completed']}")


async def test_a_step_that_finds_the_file_busy_waits_for_it_on_the_store_thread(tmp_path: Path) -> None:
    """A step's write runs at once on the caller's thread; when another process holds the file's write lock, it
    goes to the store's thread and waits there for it, instead of failing or blocking the event loop."""
    async with open_store(f"sqlite:///{tmp_path / 'streams.db'}") as store:
        await store.writer(StreamName.EMAIL_EVENT).put("a", Thing(value=0))
        other = sqlite3.connect(tmp_path / "streams.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        writing = asyncio.ensure_future(store.writer(StreamName.EMAIL_EVENT).put("1", Thing(value=1)))
        await asyncio.sleep(0)  # the put's first step: refused at once, it now waits on the store's thread
        assert not writing.done()
        other.execute(
            "INSERT INTO records (stream, record_id, type, payload, timestamp_utc)"
            " SELECT stream, '0', type, payload, timestamp_utc FROM records WHERE record_id = 'a'"
        )
        other.execute("COMMIT")
        put = await writing
        assert [r.record_id for r in await store.reader(StreamName.EMAIL_EVENT).by_tags()] == ["a", "0", "1"]
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
