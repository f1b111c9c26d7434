"""API keys, kept as records in the api-key stream: a key is issued to a name with scopes, and revoked by name. Only
a key's SHA-256 is recorded; the key itself is shown once, when it is made."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime
from enum import StrEnum

from domain import Identifier, Model, Tag, admitted, utc_now
from streams import Record, StreamName, StreamStore


class Scope(StrEnum):
    SEND = "send"
    """Request and cancel notifications."""
    READ = "read"
    """Every GET: views, events, the audit, the directory."""
    ADMIN = "admin"
    """Change the directory."""


class ApiKeyIssued(Model):
    name: Identifier
    key_id: str
    sha256: str
    scopes: list[Scope]
    issued_at: datetime


class ApiKeyRevoked(Model):
    name: str
    key_id: str
    revoked_at: datetime


KEY_ID_TAG = "api-key-id"
KEY = re.compile(r"nk_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")


class KeyNameTaken(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"an API key named {name!r} exists: revoke it first")


class UnknownKey(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no API key named {name!r}")


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    def __init__(self, store: StreamStore) -> None:
        self._writer = store.writer(StreamName.API_KEY)
        self._reader = store.reader(StreamName.API_KEY)

    async def create(self, name: str, scopes: list[Scope]) -> str:
        """Issue a key to `name` (a name has one key at a time) and return it: it is not kept, only its hash."""
        if not scopes:
            raise ValueError("give at least one scope")
        if await self.active(name) is not None:
            raise KeyNameTaken(name)
        key_id = secrets.token_hex(6)
        key = f"nk_{key_id}_{secrets.token_urlsafe(32)}"
        issued = admitted(
            ApiKeyIssued,
            dict(name=name, key_id=key_id, sha256=_digest(key), scopes=sorted(set(scopes)), issued_at=utc_now()),
        )
        await self._writer.put(name, issued, tags=[Tag(name=KEY_ID_TAG, value=key_id)])
        return key

    async def revoke(self, name: str) -> None:
        issued = await self.active(name)
        if issued is None:
            raise UnknownKey(name)
        revoked = ApiKeyRevoked(name=name, key_id=issued.key_id, revoked_at=utc_now())
        await self._writer.put(name, revoked, tags=[Tag(name=KEY_ID_TAG, value=issued.key_id)])

    async def active(self, name: str) -> ApiKeyIssued | None:
        """The key `name` holds now, if it holds one."""
        return _issued(await self._reader.latest(name))

    async def listed(self) -> list[ApiKeyIssued]:
        """The keys held now, by name."""
        latest: dict[str, Record] = {}
        for record in await self._reader.by_tags():
            latest[record.record_id or ""] = record
        return sorted((i for r in latest.values() if (i := _issued(r)) is not None), key=lambda i: i.name)

    async def authenticate(self, key: str) -> ApiKeyIssued | None:
        """The key's issue, if `key` is one held now (compared in constant time); None otherwise."""
        match = KEY.fullmatch(key)
        if match is None:
            return None
        found = await self._reader.by_tags(Tag(name=KEY_ID_TAG, value=match.group(1)), type=ApiKeyIssued.__name__)
        if not found:
            return None
        issued = await self.active(found[0].record_id or "")
        if issued is None or issued.key_id != match.group(1):
            return None  # revoked, or the name holds another key now
        return issued if hmac.compare_digest(issued.sha256, _digest(key)) else None


def _issued(record: Record | None) -> ApiKeyIssued | None:
    if record is None or record.type != ApiKeyIssued.__name__:
        return None
    return record.object(ApiKeyIssued)
