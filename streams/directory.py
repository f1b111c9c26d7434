"""The entity directory, kept as records in the entity-directory stream: the latest record of an entity is who it is
and where it can be reached now, and the earlier ones are who it was and when. Topics, named sets of entities, are
kept there too: the latest `TopicMembership` of a topic and an entity says whether it is a member now."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from domain import (
    Channel,
    ChannelPreference,
    DirectoryEntry,
    PreferenceChanged,
    Tag,
    TagName,
    TopicMembership,
    admitted,
    recipient_email_tag,
    tag,
    utc_now,
)
from streams.store import ReadOnlyStream, StreamName, StreamStore, readable, unreadable

MEMBERSHIP = TopicMembership.__name__
"""The type of a topic's membership records."""


class UnknownEntities(ValueError):
    """Entities the directory does not have, named, cannot join a topic."""

    def __init__(self, entity_ids: Sequence[str]) -> None:
        listed = ", ".join(map(repr, entity_ids[:5])) + (
            f" and {len(entity_ids) - 5} more" if len(entity_ids) > 5 else ""
        )
        super().__init__(f"not in the directory: {listed}")


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


def preferences_kept(entry: DirectoryEntry, current: DirectoryEntry | None) -> DirectoryEntry:
    """`entry`, with the preferences of `current` (the directory's entry for it) when it gives none: an entity
    recorded again (a directory file loaded again, a request that carries it) keeps what it chose, one-click opt-outs
    included."""
    if entry.preferences or current is None or not current.preferences:
        return entry
    return entry.model_copy(update={"preferences": current.preferences})


@dataclass(frozen=True)
class Imported:
    entries: list[DirectoryEntry]
    """Every entry given, as the directory now has it (with the preferences it kept)."""
    recorded: int
    """How many of them were new or changed, and recorded; the others were already there as they are."""

    @property
    def unchanged(self) -> int:
        return len(self.entries) - self.recorded


async def import_entries(
    store: StreamStore, entries: list[DirectoryEntry], topics: Mapping[str, Sequence[str]] | None = None
) -> Imported:
    """Record each entry that is new or changed (one that gives no preferences keeps those recorded:
    `preferences_kept`), each checked against every rule for a new entry (`domain.admitted`) before any is written,
    and make each entity in `topics` a member of exactly the topics it lists there (no other). All in one
    transaction. On PostgreSQL only the owner of the streams writes the directory: `store` is opened as it
    (`Settings.open_streams(as_owner=True)`)."""
    reader = store.reader(StreamName.ENTITY_DIRECTORY)
    kept: list[DirectoryEntry] = []
    changed: list[DirectoryEntry] = []
    for given in entries:
        entry = admitted(DirectoryEntry, given)
        current = await lookup(reader, entry.id)
        kept.append(entry := preferences_kept(entry, current))
        if entry != current:
            changed.append(entry)
    joined: list[tuple[str, BaseModel, list[Tag]]] = []
    for entity_id, named in (topics or {}).items():
        now = {topic for (topic, _), member in (await memberships(reader, _entity(entity_id))).items() if member}
        joined += [_membership(topic, entity_id, True) for topic in sorted(set(named) - now)]
        joined += [_membership(topic, entity_id, False) for topic in sorted(now - set(named))]
    await store.writer(StreamName.ENTITY_DIRECTORY).put_all(
        [*((entry.id, entry, _tags(entry)) for entry in changed), *joined]  # one transaction: all, or none
    )
    return Imported(kept, len(changed))


async def memberships(directory: ReadOnlyStream, *tags: Tag) -> dict[tuple[str, str], bool]:
    """Whether each entity is a member of each topic now, by (topic, entity id), among the membership records with
    all of `tags` (none: every topic's); a record that cannot be read is left out (and logged once)."""
    latest = {}
    for record in await directory.by_tags(*tags, type=MEMBERSHIP):
        if (membership := readable(record, TopicMembership)) is not None:
            latest[membership.topic, membership.entity_id] = membership.member
    return latest


async def members(directory: ReadOnlyStream, topic: str) -> list[str] | None:
    """The ids of a topic's members now, in order; None for a topic no entity was ever a member of."""
    now = await memberships(directory, tag(TagName.TOPIC_NAME, topic))
    return None if not now else sorted(entity for (_, entity), member in now.items() if member)


async def topic_sizes(directory: ReadOnlyStream) -> dict[str, int]:
    """Every topic any entity was ever a member of, by name in order, with how many members it has now."""
    sizes: dict[str, int] = {}
    for (topic, _), member in (await memberships(directory)).items():
        sizes[topic] = sizes.get(topic, 0) + member
    return dict(sorted(sizes.items()))


async def change_members(store: StreamStore, topic: str, entity_ids: Sequence[str], member: bool) -> tuple[int, int]:
    """Make each entity a member of `topic` (or no longer one), checked before any is written; returns (changed,
    unchanged). An entity joins only if the directory has it (`UnknownEntities`); one leaves whether or not it has."""
    changes = {e: _membership(topic, e, member) for e in entity_ids}
    directory = store.reader(StreamName.ENTITY_DIRECTORY)
    if member and (unknown := [e for e in changes if await directory.latest(e) is None]):
        raise UnknownEntities(unknown)
    now = await memberships(directory, tag(TagName.TOPIC_NAME, topic))
    changed = [change for e, change in changes.items() if now.get((topic, e), False) != member]
    await store.writer(StreamName.ENTITY_DIRECTORY).put_all(changed)
    return len(changed), len(changes) - len(changed)


def _membership(topic: str, entity_id: str, member: bool) -> tuple[str, BaseModel, list[Tag]]:
    """A membership record, checked against every rule: its id, the topic's and the entity's (neither holds a `/`),
    and its tags."""
    record = admitted(TopicMembership, {"topic": topic, "entity_id": entity_id, "member": member})
    return f"{topic}/{entity_id}", record, [tag(TagName.TOPIC_NAME, topic), tag(TagName.ENTITY_ID, entity_id)]


def _entity(entity_id: str) -> Tag:
    return tag(TagName.ENTITY_ID, entity_id)


def _tags(entry: DirectoryEntry) -> list[Tag]:
    tags = [tag(TagName.ENTITY_ID, entry.id)]
    if entry.email:
        tags.append(recipient_email_tag(entry.email))
    return tags


OPERATOR = "operator"
"""Who a change made with an admin key, or on the command line, is recorded as made by."""


async def change_preferences(
    store: StreamStore,
    entity_id: str,
    preferences: Mapping[str, Mapping[Channel, ChannelPreference]],
    by: str,
) -> DirectoryEntry | None:
    """Set the entity's preferences given (per category, per channel; the others stay): its new entry and a
    `PreferenceChanged` for each one that changed, in one write (none when nothing did); None for an entity the
    directory does not have. Only the owner of the streams writes the directory (`store` as it)."""
    entry = await lookup(store.reader(StreamName.ENTITY_DIRECTORY), entity_id)
    if entry is None:
        return None
    now = {name: dict(channels) for name, channels in entry.preferences.items()}
    changes = []
    for category, channels in preferences.items():
        for channel, preference in channels.items():
            if now.get(category, {}).get(channel) != preference:
                now.setdefault(category, {})[channel] = preference
                said = {"category": category, "channel": channel, "preference": preference, "by": by}
                change = admitted(PreferenceChanged, {"entity_id": entity_id, **said, "timestamp_utc": utc_now()})
                changes.append((f"{entity_id}/preferences", change, [_entity(entity_id)]))
    if not changes:
        return entry
    changed = admitted(DirectoryEntry, entry.model_copy(update={"preferences": now}).model_dump())
    await store.writer(StreamName.ENTITY_DIRECTORY).put_all([(entity_id, changed, _tags(changed)), *changes])
    return changed
