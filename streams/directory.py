"""The entity directory, kept as records in the entity-directory stream: the latest record of an entity is who it is
and where it can be reached now, and the earlier ones are who it was and when."""

from __future__ import annotations

from domain import DirectoryEntry, Tag, TagName, admitted, recipient_email_tag, tag
from streams.store import ReadOnlyStream, StreamName, StreamStore


async def lookup(directory: ReadOnlyStream, entity_id: str) -> DirectoryEntry | None:
    record = await directory.latest(entity_id)
    return record.object(DirectoryEntry) if record else None


async def import_entries(store: StreamStore, entries: list[DirectoryEntry]) -> tuple[int, int]:
    """Record each entry that is new or changed, each checked against every rule for a new entry
    (`domain.admitted`) before any is written; returns (recorded, unchanged)."""
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
