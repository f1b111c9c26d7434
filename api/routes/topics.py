"""Topics: named sets of entities. Make an entity a member or no longer one (the `admin` scope, as the directory),
read a topic's members a page at a time, list the topics."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ValidationError

from api.deps import AppParts, KeyFirst, needs
from api.keys import Scope
from api.paging import decode_cursor, encode_cursor
from api.problems import Problem, problems
from domain import TopicMembership, validation_message
from streams import StreamName
from streams.directory import UnknownEntities, change_members, members, topic_sizes

MAX_PAGE = 1000

router = APIRouter(prefix="/v1/topics", route_class=KeyFirst, tags=["topics"], responses=problems(401, 403, 422))


class TopicPage(BaseModel):
    topic: str
    members: list[str]
    """Entity ids, in order."""
    next_cursor: str | None
    """Pass as `cursor` for the next page; null on the last."""


class TopicSize(BaseModel):
    topic: str
    members: int
    """How many entities are members now (a topic whose members all left has 0)."""


@router.put(
    "/{topic}/members/{entity_id}", dependencies=[needs(Scope.ADMIN)], summary="Make an entity a member of a topic"
)
async def add_member(topic: str, entity_id: str, app: AppParts) -> TopicMembership:
    """The topic is made if it is new; the entity must be in the directory (`422` if not)."""
    return await _changed(app, topic, entity_id, member=True)


@router.delete(
    "/{topic}/members/{entity_id}", dependencies=[needs(Scope.ADMIN)], summary="Take an entity out of a topic"
)
async def remove_member(topic: str, entity_id: str, app: AppParts) -> TopicMembership:
    return await _changed(app, topic, entity_id, member=False)


async def _changed(app: AppParts, topic: str, entity_id: str, member: bool) -> TopicMembership:
    try:
        await change_members(app.owner, topic, [entity_id], member)  # only the owner of the streams writes them
    except ValidationError as error:
        raise Problem(422, validation_message(error)) from error
    except UnknownEntities as error:
        raise Problem(422, str(error)) from error
    return TopicMembership(topic=topic, entity_id=entity_id, member=member)


@router.get("/{topic}", dependencies=[needs(Scope.READ)], responses=problems(404), summary="A topic's members")
async def get_topic(topic: str, app: AppParts, limit: int = 100, cursor: str | None = None) -> TopicPage:
    if not 1 <= limit <= MAX_PAGE:
        raise Problem(422, f"limit: must be 1 to {MAX_PAGE}")
    after = None if cursor is None else decode_cursor(cursor)
    found = await members(app.store.reader(StreamName.ENTITY_DIRECTORY), topic)
    if found is None:
        raise Problem(404, f"no topic {topic!r}")
    page = [m for m in found if after is None or m > after][: limit + 1]
    last = page[limit - 1] if len(page) > limit else None
    return TopicPage(topic=topic, members=page[:limit], next_cursor=None if last is None else encode_cursor(last))


@router.get("", dependencies=[needs(Scope.READ)], summary="Every topic")
async def list_topics(app: AppParts) -> list[TopicSize]:
    sizes = await topic_sizes(app.store.reader(StreamName.ENTITY_DIRECTORY))
    return [TopicSize(topic=name, members=size) for name, size in sizes.items()]
