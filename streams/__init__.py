"""Streams: where every operation and event of the notification subsystem is recorded."""

from pathlib import Path

from streams.store import (
    ExistingRecordStrategy,
    HandlingEntry,
    HandlingStatus,
    HandlingStore,
    InvalidHandlingTransition,
    PutResult,
    ReadOnlyStream,
    Record,
    StreamName,
    StreamStore,
    WriteOnlyStream,
)

__all__ = [
    "ExistingRecordStrategy",
    "HandlingEntry",
    "HandlingStatus",
    "HandlingStore",
    "InvalidHandlingTransition",
    "PutResult",
    "ReadOnlyStream",
    "Record",
    "StreamName",
    "StreamStore",
    "WriteOnlyStream",
    "open_store",
]


def open_store(url: str) -> StreamStore:
    """Open the store a `NOTIFY_STREAMS_URL` names: `sqlite:///relative/path.db` or `sqlite:////absolute/path.db`."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme == "sqlite" and rest.startswith("/") and len(rest) > 1:
        from streams.sqlite import SQLiteStreamStore

        return SQLiteStreamStore(Path(rest[1:]))
    raise ValueError(f"unsupported streams URL {url!r}: expected sqlite:///path/to/streams.db")
