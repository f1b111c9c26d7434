"""The webhook endpoints and their deliveries, kept in streams (`domain.webhooks`): an endpoint is the latest record
under its id in the webhook stream (added, or removed), written only by the owner of the streams; a disabled one has
a `WebhookEndpointDisabled` in the webhook-delivery stream, where each delivery's attempts are too, under its
webhook id and tagged with its endpoint (and its notification, so that they go when it is pruned)."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from domain import Tag, TagName, utc_now
from domain.webhooks import (
    WebhookAttempt,
    WebhookDeliverySummary,
    WebhookEndpoint,
    WebhookEndpointAdded,
    WebhookEndpointDisabled,
    WebhookEndpointRemoved,
    WebhookEventType,
)
from streams.store import Record, StreamName, StreamStore, readable

ENDPOINT_TAG = "webhook-endpoint-id"
"""The tag of every record of an endpoint, and of each of its deliveries' attempts."""
ADDED = WebhookEndpointAdded.__name__
ATTEMPT = WebhookAttempt.__name__
DISABLED = WebhookEndpointDisabled.__name__


class UnknownWebhook(LookupError):
    def __init__(self, endpoint_id: str) -> None:
        super().__init__(f"no webhook endpoint {endpoint_id!r}")


@dataclass(frozen=True)
class Endpoint:
    """An endpoint that is there (not removed), as the worker uses it: with its secret and its record's internal id,
    which only records newer than it are sent."""

    added: WebhookEndpointAdded
    internal_id: int
    disabled: WebhookEndpointDisabled | None

    @property
    def shown(self) -> WebhookEndpoint:
        a, d = self.added, self.disabled
        return WebhookEndpoint(
            id=a.id,
            url=a.url,
            events=a.events,
            created_at=a.created_at,
            enabled=d is None,
            disabled_at=None if d is None else d.disabled_at,
            disabled_reason=None if d is None else d.reason,
        )


def new_secret() -> str:
    """A signing secret as Standard Webhooks writes it: `whsec_` and the base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


async def add_endpoint(owner: StreamStore, url: str, events: Sequence[WebhookEventType]) -> WebhookEndpointAdded:
    """Register `url` for `events` (every one if none) with a new secret; `owner` is the owner of the streams."""
    added = WebhookEndpointAdded(
        id=f"wh_{secrets.token_hex(6)}",
        url=url,
        events=sorted(set(events or WebhookEventType)),
        secret=new_secret(),
        created_at=utc_now(),
    )
    await owner.writer(StreamName.WEBHOOK).put(added.id, added, tags=[Tag(name=ENDPOINT_TAG, value=added.id)])
    return added


async def remove_endpoint(owner: StreamStore, endpoint_id: str) -> None:
    """`UnknownWebhook` if there is no such endpoint (or it was removed)."""
    if await endpoint(owner, endpoint_id) is None:
        raise UnknownWebhook(endpoint_id)
    removed = WebhookEndpointRemoved(id=endpoint_id, removed_at=utc_now())
    await owner.writer(StreamName.WEBHOOK).put(endpoint_id, removed, tags=[Tag(name=ENDPOINT_TAG, value=endpoint_id)])


async def endpoints(store: StreamStore) -> list[Endpoint]:
    """Every endpoint that is there, oldest first (with none, one read of the webhook stream)."""
    latest: dict[str, Record] = {}
    for record in await store.reader(StreamName.WEBHOOK).by_tags():
        latest[record.record_id or ""] = record
    found = [
        Endpoint(added, r.internal_id, await _disabled(store, added.id))
        for r in latest.values()
        if r.type == ADDED and (added := readable(r, WebhookEndpointAdded)) is not None
    ]
    return sorted(found, key=lambda e: e.internal_id)


async def endpoint(store: StreamStore, endpoint_id: str) -> Endpoint | None:
    record = await store.reader(StreamName.WEBHOOK).latest(endpoint_id)
    if record is None or record.type != ADDED or (added := readable(record, WebhookEndpointAdded)) is None:
        return None
    return Endpoint(added, record.internal_id, await _disabled(store, endpoint_id))


async def _disabled(store: StreamStore, endpoint_id: str) -> WebhookEndpointDisabled | None:
    """The endpoint's disabling, if it is disabled (under its id: its deliveries' attempts are under theirs)."""
    record = await store.reader(StreamName.WEBHOOK_DELIVERY).latest(endpoint_id, DISABLED)
    return None if record is None else readable(record, WebhookEndpointDisabled)


def disabled_record(endpoint_id: str, reason: str) -> tuple[str, WebhookEndpointDisabled, list[Tag]]:
    """An endpoint's disabling, to put in the webhook-delivery stream (`WriteOnlyStream.put_all`)."""
    disabled = WebhookEndpointDisabled(id=endpoint_id, reason=reason, disabled_at=utc_now())
    return endpoint_id, disabled, [Tag(name=ENDPOINT_TAG, value=endpoint_id)]


def attempt_tags(attempt: WebhookAttempt) -> list[Tag]:
    tags = [Tag(name=ENDPOINT_TAG, value=attempt.endpoint_id)]
    if attempt.notification_id is not None:
        tags.append(Tag(name=TagName.NOTIFICATION_ID, value=attempt.notification_id))
    return tags


async def deliveries(store: StreamStore, endpoint_id: str) -> list[WebhookDeliverySummary]:
    """Each delivery to the endpoint, newest first, as its attempts say."""
    by_id: dict[str, list[WebhookAttempt]] = {}
    for record in await store.reader(StreamName.WEBHOOK_DELIVERY).by_tags(
        Tag(name=ENDPOINT_TAG, value=endpoint_id), type=ATTEMPT
    ):
        if (attempt := readable(record, WebhookAttempt)) is not None:
            by_id.setdefault(attempt.webhook_id, []).append(attempt)
    summaries = []
    for webhook_id, attempts in by_id.items():
        last = attempts[-1]
        summaries.append(
            WebhookDeliverySummary(
                webhook_id=webhook_id,
                event_type=last.event_type,
                notification_id=last.notification_id,
                status=last.status,
                attempts=max(a.attempt for a in attempts),
                http_status=last.http_status,
                error=last.error,
                first_at=attempts[0].at,
                last_at=last.at,
            )
        )
    return sorted(summaries, key=lambda s: s.first_at, reverse=True)
