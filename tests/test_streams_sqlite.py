from pathlib import Path

from streams import StreamStore, open_store
from tests.streams_contract import StreamStoreContract


class TestSQLiteStreamStore(StreamStoreContract):
    def open(self, location: Path) -> StreamStore:
        return open_store(f"sqlite:///{location / 'streams.db'}")
