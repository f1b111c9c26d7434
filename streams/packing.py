"""Payloads as a backend stores them: a payload past `PACKED_FROM` bytes is deflated against a preset dictionary of
the service's own payloads (their keys, enumerations and shapes), which shrinks a notification's records to a
fraction; one the database reads as JSON (`packable`) is kept as written. Long handling details are packed the same
way.

A packed payload is bytes: the number of its dictionary, then raw deflate. A dictionary, once released, never
changes: a new one takes the next number, and payloads packed with the old one still read.
`python -m bench.dictionary` makes one from the records of a real saga's notification.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from domain import IdempotencyKeyClaim
from streams.store import StreamName

DICTIONARIES = {1: Path(__file__).with_name("payloads-1.zdict").read_bytes()}
PACKING = 1
"""The dictionary new payloads are packed with."""
PACKED_FROM = 128
"""Characters from which a payload is packed (a shorter one would barely shrink)."""
CLAIM = IdempotencyKeyClaim.__name__
MOST_UNPACKED = 16 * 1024 * 1024
"""The most bytes a packed payload unpacks to: far more than a request can make (512 KiB of it, rendered for two
channels), far less than a few kilobytes of crafted deflate could claim."""

_packer = zlib.compressobj(6, zlib.DEFLATED, -14, 4, zlib.Z_DEFAULT_STRATEGY, DICTIONARIES[PACKING])
"""Primed with the dictionary once: each payload is packed by a copy (which spares hashing the dictionary again). A
16 KB window holds the dictionary and any payload worth packing, and a small hash table is as good for them as a
large one: the copy is a third smaller and faster (7.5 us a payload here, not 11), the output the same."""


def packable(stream: str, type: str) -> bool:
    """Whether a record's payload may be packed: not the ones SQL reads, views (their counts by minute) and
    idempotency keys' claims (PostgreSQL's `notify_request`)."""
    return stream != StreamName.NOTIFICATION_VIEW and type != CLAIM


def pack(text: str) -> str | bytes:
    """`text` as stored: packed, if it is long enough and shrinks."""
    if len(text) < PACKED_FROM:
        return text
    raw = text.encode()
    packer = _packer.copy()
    packed = bytes((PACKING,)) + packer.compress(raw) + packer.flush()
    return packed if len(packed) < len(raw) else text


def unpack(stored: str | bytes) -> str:
    """The text as written, from what `pack` stored. Bytes that do not unpack whole (a dictionary this version does
    not know, a stream cut short or not deflate at all, more than `MOST_UNPACKED` bytes) give a text that says so
    and is not JSON, so that the record reads as unreadable (`streams.store.unreadable`) instead of failing the read
    of every record beside it."""
    if isinstance(stored, str):
        return stored
    dictionary = DICTIONARIES.get(stored[0]) if stored else None
    if dictionary is None:
        return f"packed with dictionary {stored[0] if stored else None}, which this version does not have"
    unpacker = zlib.decompressobj(-15, zdict=dictionary)  # any window up to deflate's largest
    try:
        raw = unpacker.decompress(stored[1:], MOST_UNPACKED + 1)
        if not unpacker.eof or unpacker.unused_data or len(raw) > MOST_UNPACKED:
            return "packed, but cut short, too long or followed by more"
        return raw.decode()
    except (zlib.error, UnicodeDecodeError) as error:
        return f"packed, but does not unpack ({error})"
