"""The saga's search attributes, kept current as it goes, so that the Temporal Web UI and
`temporal workflow list --query "NotifyEntity='user-1'"` find a notification's saga. They are registered in the
namespace by `worker.py --dev` (on the dev server it starts) and by `starter.py temporal setup` (on a cluster).
Search attributes are not encrypted: an entity id, a status and channel names only, never an address."""

from __future__ import annotations

from typing import Any

from temporalio.common import SearchAttributeIndexedValueType, SearchAttributeKey

ENTITY = SearchAttributeKey.for_keyword("NotifyEntity")
STATUS = SearchAttributeKey.for_keyword("NotifyStatus")
CHANNELS = SearchAttributeKey.for_keyword_list("NotifyChannels")
KEYS: tuple[SearchAttributeKey[Any], ...] = (ENTITY, STATUS, CHANNELS)

_CLI_TYPES = {
    SearchAttributeIndexedValueType.KEYWORD: "Keyword",
    SearchAttributeIndexedValueType.KEYWORD_LIST: "KeywordList",
}
DEV_SERVER_ARGS = tuple(
    arg for key in KEYS for arg in ("--search-attribute", f"{key.name}={_CLI_TYPES[key.indexed_value_type]}")
)
"""`temporal server start-dev` options that register them."""
