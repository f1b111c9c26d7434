"""Topics (issue 26): named sets of entities, kept as membership records in the entity-directory stream, written by
the owner of the streams alone; on SQLite and on PostgreSQL (each handle as its own role)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from streams import StreamName, StreamStore
from streams.directory import UnknownEntities, change_members, import_entries, members, topic_sizes
from streams.store import StoreUnusable
from tests.databases import Databases
from tests.service import Api, entity


@pytest.fixture(params=["sqlite", "postgresql"])
def streams_url(request: pytest.FixtureRequest, tmp_path: Path, postgres: Databases) -> str:
    return f"sqlite:///{tmp_path / 'data' / 'streams.db'}" if request.param == "sqlite" else postgres.fresh()


@pytest.fixture
async def directory(owner: StreamStore) -> StreamStore:
    """The owner's store, with three entities in the directory."""
    await import_entries(owner, [entity(id=f"user-{n}") for n in (1, 2, 3)])
    return owner


async def test_members_join_and_leave_and_each_change_is_a_record(directory: StreamStore, store: StreamStore) -> None:
    assert await change_members(directory, "ops", ["user-2", "user-1", "user-1"], member=True) == (2, 0)
    assert await change_members(directory, "ops", ["user-1", "user-3"], member=True) == (1, 1)
    assert await change_members(directory, "ops", ["user-3", "user-9"], member=False) == (1, 1)
    assert await change_members(directory, "oncall", ["user-3"], member=True) == (1, 0)

    reader = store.reader(StreamName.ENTITY_DIRECTORY)  # as a consumer reads them
    assert await members(reader, "ops") == ["user-1", "user-2"]
    assert await members(reader, "nobody") is None
    assert await topic_sizes(reader) == {"oncall": 1, "ops": 2}
    history = [r.json()["member"] for r in await reader.by_id("ops/user-3")]
    assert history == [True, False]
    assert [r.type for r in await reader.by_id("user-1")] == ["DirectoryEntry"]  # its entry, apart


async def test_a_topic_left_empty_is_still_listed(directory: StreamStore) -> None:
    await change_members(directory, "ops", ["user-1"], member=True)
    await change_members(directory, "ops", ["user-1"], member=False)
    reader = directory.reader(StreamName.ENTITY_DIRECTORY)
    assert await members(reader, "ops") == []
    assert await topic_sizes(reader) == {"ops": 0}


async def test_what_cannot_join_is_refused_and_nothing_is_written(directory: StreamStore) -> None:
    with pytest.raises(UnknownEntities, match=r"not in the directory: 'user-8', 'user-9'"):
        await change_members(directory, "ops", ["user-1", "user-8", "user-9"], member=True)
    with pytest.raises(ValidationError, match="topic"):
        await change_members(directory, "a/b", ["user-1"], member=True)
    assert await topic_sizes(directory.reader(StreamName.ENTITY_DIRECTORY)) == {}


async def test_an_import_makes_each_listed_entity_a_member_of_exactly_its_topics(directory: StreamStore) -> None:
    await change_members(directory, "old", ["user-1", "user-2"], member=True)
    entries = [entity(id="user-1"), entity(id="user-2"), entity(id="user-4")]
    topics = {"user-1": ["ops", "plan-pro"], "user-4": ["ops"]}
    imported = await import_entries(directory, entries, topics)
    assert (imported.recorded, imported.unchanged) == (1, 2)

    reader = directory.reader(StreamName.ENTITY_DIRECTORY)
    assert await topic_sizes(reader) == {"old": 1, "ops": 2, "plan-pro": 1}  # user-2 listed none: it keeps its own
    assert await members(reader, "ops") == ["user-1", "user-4"]
    imported = await import_entries(directory, entries, topics)
    assert (imported.recorded, imported.unchanged) == (0, 3)
    assert len(await reader.by_tags(type="TopicMembership")) == 6  # nothing changed: nothing written


@pytest.mark.parametrize("streams_url", ["postgresql"], indirect=True)
async def test_only_the_owner_of_the_streams_writes_topics(directory: StreamStore, store: StreamStore) -> None:
    with pytest.raises(StoreUnusable, match="notify_producer may not write to the stream 'entity-directory'"):
        await change_members(store, "ops", ["user-1"], member=True)


async def test_the_api_makes_members_pages_through_them_and_lists_topics(api: Api) -> None:
    for entity_id in ("user-2", "user-1"):
        put = await api.call("PUT", f"/v1/topics/ops/members/{entity_id}")
        assert put.status_code == 200, put.text
        assert put.json() == {"topic": "ops", "entity_id": entity_id, "member": True}
    first = (await api.call("GET", "/v1/topics/ops", key="reader", params={"limit": 1})).json()
    assert first["members"] == ["user-1"] and first["next_cursor"]
    page = {"limit": 1, "cursor": first["next_cursor"]}
    second = (await api.call("GET", "/v1/topics/ops", key="reader", params=page)).json()
    assert second == {"topic": "ops", "members": ["user-2"], "next_cursor": None}
    assert (await api.call("DELETE", "/v1/topics/ops/members/user-2")).json()["member"] is False
    assert (await api.call("GET", "/v1/topics", key="reader")).json() == [{"topic": "ops", "members": 1}]

    for method, path, key, params, status, said in [
        ("PUT", "/v1/topics/ops/members/user-2", "sender", {}, 403, "admin"),
        ("PUT", "/v1/topics/ops/members/user-9", "all", {}, 422, "not in the directory: 'user-9'"),
        ("GET", "/v1/topics/nope", "reader", {}, 404, "no topic 'nope'"),
        ("GET", "/v1/topics/ops", "reader", {"cursor": "bm9wZQ"}, 422, "cursor: not a cursor this API gave"),
        ("GET", "/v1/topics/ops", "reader", {"limit": 0}, 422, "limit: must be 1 to 1000"),
    ]:
        refused = await api.call(method, path, key=key, params=params)
        assert refused.status_code == status and said in refused.json()["detail"], (path, refused.text)
    assert (await api.call("GET", "/v1/topics/ops", key="reader")).json()["members"] == ["user-1"]
