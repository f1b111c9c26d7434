"""The entity directory, kept as records in the entity-directory stream: the latest record of an entity is who it is
and where it can be reached now, and the earlier ones are who it was and when."""

from __future__ import annotations

from pydantic import ValidationError

from domain import DirectoryEntry, Tag, TagName, admitted, recipient_email_tag, tag
from streams.store import ReadOnlyStream, StreamName, StreamStore, unreadable


async def entry_or_why(directory: ReadOnlyStream, entity_id: str) -> DirectoryEntry | str | None:
    """The entity's latest entry; if it does not parse, why, in one line (logged once, as every reader logs an
    unreadable record: `streams.store.unreadable`); None if the directory has no entry for it."""
    record = await directory.latest(entity_id)
    if record is None:
        return None
    try:
        return record.object(DirectoryEntry)
    except ValidationError as error:
        return unreadable(record, error)


async def entry_or_reason(directory: ReadOnlyStream, entity_id: str) -> DirectoryEntry | str:
    """The entity's latest entry, or why no notification can go to it, in words: it is not in the directory, or its
    entry cannot be read (which record, and why)."""
    entry = await entry_or_why(directory, entity_id)
    if entry is None:
        return f"entity {entity_id!r} is not in the directory"
    if isinstance(entry, str):
        return f"entity {entity_id!r} has a directory entry that cannot be read: {entry}"
    return entry


async def lookup(directory: ReadOnlyStream, entity_id: str) -> DirectoryEntry | None:
    """The entity's latest entry; an entry that cannot be read is no entry."""
    entry = await entry_or_why(directory, entity_id)
    return entry if isinstance(entry, DirectoryEntry) else None


async def import_entries(store: StreamStore, entries: list[DirectoryEntry]) -> tuple[int, int]:
    """Record each entry that is new or changed, each checked against every rule for a new entry
    (`domain.admitted`) before any is written; returns (recorded, unchanged). On PostgreSQL only the owner of the
    streams writes the directory: `store` is opened as it (`Settings.open_streams(as_owner=True)`)."""
    entries = [admitted(DirectoryEntry, entry) for entry in entries]
    reader = store.reader(StreamName.ENTITY_DIRECTORY)
    changed = [entry for entry in entries if await lookup(reader, entry.id) != entry]
    await store.writer(StreamName.ENTITY_DIRECTORY).put_all(
        [(entry.id, entry, _tags(entry)) for entry in changed]  # one transaction: every entry, or none
    )
    return len(changed), len(entries) - len(changed)


def _tags(entry: DirectoryEntry) -> list[Tag]:
    tags = [tag(TagName.ENTITY_ID, entry.id)]
    if entry.email:
        tags.append(recipient_email_tag(entry.email))
    return tags
