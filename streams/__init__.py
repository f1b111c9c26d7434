"""Streams: where every operation and event of the notification subsystem is recorded."""

from pathlib import Path

from streams.store import (
    ExistingRecordStrategy,
    HandlingEntry,
    HandlingStatus,
    HandlingStore,
    InvalidHandlingTransition,
    NoSuchRecord,
    PutResult,
    ReadOnlyStream,
    Record,
    StoreUnavailable,
    StoreUnusable,
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
    "NoSuchRecord",
    "PutResult",
    "ReadOnlyStream",
    "Record",
    "StoreUnavailable",
    "StoreUnusable",
    "StreamName",
    "StreamStore",
    "WriteOnlyStream",
    "open_store",
    "sqlite_file",
]


def open_store(
    url: str,
    *,
    producer_url: str | None = None,
    consumer_url: str | None = None,
    handler_url: str | None = None,
    pool_size: int = 10,
) -> StreamStore:
    """The store a `NOTIFY_STREAMS_URL` names: `sqlite:///relative/path.db`, `sqlite:////absolute/path.db`, or
    `postgresql://user@host/database`. For PostgreSQL, each kind of handle may connect as its own role."""
    file = sqlite_file(url)
    if file is not None:
        from streams.sqlite import SQLiteStreamStore

        return SQLiteStreamStore(file)
    scheme, sep, _ = url.partition("://")
    if sep and scheme in ("postgresql", "postgres"):
        from streams.postgres import AccessUrls, PostgresStreamStore

        urls = AccessUrls(producer_url or url, consumer_url or url, handler_url or url)
        return PostgresStreamStore(urls, max_connections=pool_size)
    raise StoreUnusable(f"unsupported streams URL {url!r}: expected sqlite:///path/to/streams.db or postgresql://...")


def sqlite_file(url: str) -> Path | None:
    """The file a `sqlite:///path` streams URL names; None for any other URL."""
    scheme, sep, rest = url.partition("://")
    return Path(rest[1:]) if sep and scheme == "sqlite" and rest.startswith("/") and len(rest) > 1 else None
