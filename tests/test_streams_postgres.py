from pathlib import Path

import pytest

from streams import StreamStore, open_store
from tests.databases import Databases
from tests.streams_contract import StreamStoreContract


class TestPostgresStreamStore(StreamStoreContract):
    @pytest.fixture(autouse=True)
    def _databases(self, postgres: Databases) -> None:
        self.databases = postgres

    def open(self, location: Path) -> StreamStore:
        """One database per location, made the first time, named in a file there for other processes."""
        named = location / "postgres-url"
        if not named.exists():
            named.write_text(self.databases.fresh())
        return open_store(named.read_text())
