"""The saga's search attributes, so that the Temporal Web UI and
`temporal workflow list --query "NotifyEntity='user-1'"` find a notification's saga. A saga is started with its
entity and its first status (`at_start`: `scheduled` or `pending`) and upserts its final status and its channels once,
as it ends (`at_end`): a running saga's `NotifyStatus` is its status when it started (its `status` query and its
view follow every step), an ended saga's is its outcome. Each upsert is an event of the saga's history and a
visibility write on the server (an action on Temporal Cloud), which is why there is one, not one per status.
They are registered in the namespace by `worker.py --dev` (on the dev server it starts) and by
`starter.py temporal setup` (on a cluster). Search attributes are not encrypted: an entity id, a status and channel
names only, never an address."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from temporalio.common import (
    SearchAttributeIndexedValueType,
    SearchAttributeKey,
    SearchAttributePair,
    SearchAttributeUpdate,
    TypedSearchAttributes,
)

from domain import NotificationRequest, NotificationView
from workflows.view import first_status

ENTITY = SearchAttributeKey.for_keyword("NotifyEntity")
STATUS = SearchAttributeKey.for_keyword("NotifyStatus")
CHANNELS = SearchAttributeKey.for_keyword_list("NotifyChannels")
KEYS: tuple[SearchAttributeKey[Any], ...] = (ENTITY, STATUS, CHANNELS)


def at_start(request: NotificationRequest, now: datetime) -> TypedSearchAttributes:
    """What a saga is started with: its entity and its first status (it has no channel yet)."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(ENTITY, request.operation.entity_id),
            SearchAttributePair(STATUS, first_status(request.operation, now).value),
        ]
    )


def at_end(view: NotificationView) -> list[SearchAttributeUpdate[Any]]:
    """What a saga upserts as it ends: its final status and the channels it had."""
    return [STATUS.value_set(view.status.value), CHANNELS.value_set(sorted(c.value for c in view.channels))]


_CLI_TYPES = {
    SearchAttributeIndexedValueType.KEYWORD: "Keyword",
    SearchAttributeIndexedValueType.KEYWORD_LIST: "KeywordList",
}
DEV_SERVER_ARGS = tuple(
    arg for key in KEYS for arg in ("--search-attribute", f"{key.name}={_CLI_TYPES[key.indexed_value_type]}")
)
"""`temporal server start-dev` options that register them."""
