"""Payloads as a backend stores them: a payload past `PACKED_FROM` bytes is deflated against a preset dictionary of
the service's own payloads (their keys, enumerations and shapes), which shrinks a notification's records to a
fraction; one the database reads as JSON (`UNPACKED_STREAMS`) is kept as written.

A packed payload is bytes: the number of its dictionary, then raw deflate. A dictionary, once released, never
changes: a new one takes the next number, and payloads packed with the old one still read.
`python -m bench.dictionary` makes one from the records of a real saga's notification.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from streams.store import StreamName

DICTIONARIES = {1: Path(__file__).with_name("payloads-1.zdict").read_bytes()}
PACKING = 1
"""The dictionary new payloads are packed with."""
PACKED_FROM = 128
"""Bytes of UTF-8 from which a payload is packed (a shorter one would barely shrink)."""
UNPACKED_STREAMS = frozenset({StreamName.NOTIFICATION_VIEW, StreamName.CLIENT_OPERATION})
"""Streams whose payloads SQL reads: views (their counts by minute) and PostgreSQL's requests (idempotency)."""

_packer = zlib.compressobj(6, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARIES[PACKING])
"""Primed with the dictionary once: each payload is packed by a copy (which spares hashing the dictionary again)."""


def pack(stream: str, payload: str) -> str | bytes:
    """`payload` as stored in `stream`: packed, if it is long enough, outside `UNPACKED_STREAMS`, and shrinks."""
    if len(payload) < PACKED_FROM or stream in UNPACKED_STREAMS:
        return payload
    raw = payload.encode()
    packer = _packer.copy()
    packed = bytes((PACKING,)) + packer.compress(raw) + packer.flush()
    return packed if len(packed) < len(raw) else payload


def unpack(stored: str | bytes) -> str:
    """The payload as written, from what `pack` stored."""
    if isinstance(stored, str):
        return stored
    unpacker = zlib.decompressobj(-15, zdict=DICTIONARIES[stored[0]])
    return (unpacker.decompress(stored[1:]) + unpacker.flush()).decode()
