"""Cursors: where the next page of a list starts, as the API gives it to a client to pass back."""

from __future__ import annotations

import base64

from api.problems import Problem


def encode_cursor(after: str | int) -> str:
    """A cursor for the page after `after` (an internal id, an entity id)."""
    return base64.urlsafe_b64encode(f"v1:{after}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """What `encode_cursor` was given; `422` for a cursor the API did not give."""
    try:
        version, _, value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition(":")
        if version == "v1" and value:
            return value
    except (ValueError, UnicodeDecodeError):
        pass
    raise Problem(422, "cursor: not a cursor this API gave")


def decode_number(cursor: str) -> int:
    """The number `encode_cursor` was given (an internal id, a place); `422` for a cursor the API did not give."""
    if not (value := decode_cursor(cursor)).isdigit():
        raise Problem(422, "cursor: not a cursor this API gave")
    return int(value)
