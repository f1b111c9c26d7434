"""The entity directory: record an entity, read one, set its preferences."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import ValidationError

from api.deps import AppParts, KeyFirst, needs
from api.keys import Scope
from api.problems import Problem, problems
from domain import Channel, ChannelPreference, DirectoryEntry, admitted, validation_message
from streams import StreamName
from streams.directory import OPERATOR, change_preferences, import_entries, lookup

router = APIRouter(prefix="/v1/entities", route_class=KeyFirst, tags=["directory"], responses=problems(401, 403, 422))


@router.put(
    "/{entity_id}",
    dependencies=[needs(Scope.ADMIN)],
    response_model_exclude_none=True,
    summary="Record an entity",
)
async def put_entity(entity_id: str, entry: dict[str, Any], app: AppParts) -> DirectoryEntry:
    if entry.setdefault("id", entity_id) != entity_id:
        raise Problem(422, f"id: {entry['id']!r} is not the id in the path, {entity_id!r}")
    try:
        recorded = admitted(DirectoryEntry, entry)
    except ValidationError as error:
        raise Problem(422, validation_message(error)) from error
    imported = await import_entries(app.owner, [recorded])  # only the owner of the streams writes the directory
    return imported.entries[0]


@router.put(
    "/{entity_id}/preferences",
    dependencies=[needs(Scope.ADMIN)],
    response_model_exclude_none=True,
    responses=problems(404),
    summary="Set an entity's preferences",
)
async def put_preferences(
    entity_id: str, preferences: dict[str, dict[Channel, ChannelPreference]], app: AppParts
) -> DirectoryEntry:
    """Per category, per channel, `send` or `opted-out`: those given are set, the others stay. `422` for a
    category `NOTIFY_CATEGORIES_FILE` does not configure."""
    categories = app.settings.categories()
    if unknown := sorted(set(preferences) - set(categories)):
        raise Problem(422, f"not a configured category: {', '.join(map(repr, unknown))}")
    fixed = [
        n for n, chs in preferences.items() if not categories[n].opt_out and ChannelPreference.OPTED_OUT in chs.values()
    ]
    if fixed:
        raise Problem(422, f"may not be opted out of: {', '.join(map(repr, sorted(fixed)))}")
    try:
        changed = await change_preferences(app.owner, entity_id, preferences, OPERATOR)
    except ValidationError as error:
        raise Problem(422, validation_message(error)) from error
    if changed is None:
        raise Problem(404, f"no entity with id {entity_id!r}")
    return changed


@router.get(
    "/{entity_id}",
    dependencies=[needs(Scope.READ)],
    response_model_exclude_none=True,
    responses=problems(404),
    summary="An entity",
)
async def get_entity(entity_id: str, app: AppParts) -> DirectoryEntry:
    entry = await lookup(app.store.reader(StreamName.ENTITY_DIRECTORY), entity_id)
    if entry is None:
        raise Problem(404, f"no entity with id {entity_id!r}")
    return entry
