"""Today's rules apply to what is new, at every door (the CLI, the client, the directory import, the settings);
what was recorded under older rules, in a record or in a saga's history, still reads back."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from client import NotificationClient, RequestRefused
from domain import NotificationRequest, SendNotificationToEntityOp, admitted
from settings import Settings
from streams import StreamName, StreamStore
from streams.directory import import_entries, lookup
from tests.service import entity

OLDER_REQUEST = {
    "entity_id": "user-1",
    "subject": "Invoice\x0bdue",
    "body": "B",
    "tags": [{"name": "entity-id", "value": "1"}, *({"name": f"t{i}", "value": "v"} for i in range(60))],
}
"""A request as older rules took it: a vertical tab in the subject, a reserved tag name, 61 tags."""


def test_a_saga_input_recorded_under_older_rules_still_decodes() -> None:
    request = {"notification_id": "1", "operation": OLDER_REQUEST, "client_operation_record_id": 1}
    converter = pydantic_data_converter.payload_converter
    [decoded] = converter.from_payloads(converter.to_payloads([request]), [NotificationRequest])
    assert decoded.operation.subject == "Invoice\x0bdue" and len(decoded.operation.tags) == 61
    with pytest.raises(ValidationError) as refused:
        admitted(NotificationRequest, request)
    said = str(refused.value)
    assert all(s in said for s in ("single line", "at most 50 tags")), said


async def test_a_directory_record_written_under_older_rules_still_reads_back(store: StreamStore) -> None:
    older = entity(id="ada", email="ada(at work)@example.com")  # built without today's rules
    await store.writer(StreamName.ENTITY_DIRECTORY).put("ada", older)
    assert await lookup(store.reader(StreamName.ENTITY_DIRECTORY), "ada") == older
    with pytest.raises(ValidationError, match="not an email address"):
        await import_entries(store, [older])


async def test_the_client_checks_every_request_and_key_before_writing(
    store: StreamStore, time_skipping_env: WorkflowEnvironment, settings: Settings
) -> None:
    """The client is the door the HTTP API and every Python caller use: the CLI's checks are its checks."""
    await import_entries(store, [entity(id="user-1")])
    client = NotificationClient(store, time_skipping_env.client, settings)
    before = len(await store.read(StreamName.CLIENT_OPERATION))
    with pytest.raises(ValidationError, match="NUL"):
        await client.request(
            SendNotificationToEntityOp.model_validate(
                OLDER_REQUEST | {"subject": "S", "tags": [{"name": "t", "value": "x\0"}]}
            )
        )
    with pytest.raises(ValidationError, match="must not be empty or contain spaces"):
        await client.request(SendNotificationToEntityOp(entity_id="user-1", subject="S", body="B"), "a key")
    content = {"entity_id": "user-1", "subject": "S", "body": "B", "html_body": None}
    with pytest.raises(RequestRefused) as refused:  # the one request path the CLI and the API take
        await client.submit(content, idempotency_key="a key")
    assert refused.value.said(idempotency_key="--idempotency-key") == (
        "--idempotency-key: must not be empty or contain spaces or control characters"
    )
    wrong: list[tuple[dict[str, Any], str]] = [
        ({"subject": "Two\nlines"}, "subject: must be a single line of text"),
        ({"tags": [{"name": "entity-id", "value": "x"}]}, "tags: 'entity-id': reserved"),
    ]
    for changes, said in wrong:
        with pytest.raises(RequestRefused, match=said):
            await client.submit(content | changes)
    with pytest.raises(RequestRefused, match="data is rendered by a template: name one"):
        await client.submit(content, data={})
    assert len(await store.read(StreamName.CLIENT_OPERATION)) == before
