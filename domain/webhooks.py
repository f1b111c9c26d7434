"""Webhooks out: the endpoints a service registers to be told how its notifications went, the events sent to them
(Standard Webhooks' body, `{"type", "timestamp", "data"}`), and the records of each delivery.

An endpoint is a `WebhookEndpointAdded` record in the webhook stream (its secret with it, which only the owner of
the streams writes) until a `WebhookEndpointRemoved`; a worker that gave up on it writes a `WebhookEndpointDisabled`
in the webhook-delivery stream, beside each delivery's `WebhookAttempt` records.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from domain.rules import Model


class WebhookEventType(StrEnum):
    REQUESTED = "notification.requested"
    SENT = "notification.sent"
    PARTIALLY_SENT = "notification.partially_sent"
    FAILED = "notification.failed"
    OPTED_OUT = "notification.opted_out"
    CANCELLED = "notification.cancelled"
    CHANNEL_DELIVERED = "channel.delivered"
    CHANNEL_FAILED = "channel.failed"
    EMAIL_BOUNCED = "email.bounced"
    EMAIL_COMPLAINED = "email.complained"
    BROADCAST_COMPLETED = "broadcast.completed"


class WebhookEndpointAdded(Model):
    id: str
    url: str
    events: list[WebhookEventType]
    secret: str
    """`whsec_` and the base64 of the signing key: shown once, when the endpoint is added."""
    created_at: datetime


class WebhookEndpointRemoved(Model):
    id: str
    removed_at: datetime


class WebhookEndpointDisabled(Model):
    id: str
    reason: str
    disabled_at: datetime


class WebhookEndpoint(Model):
    """An endpoint as `webhook list` shows it: never its secret."""

    id: str
    url: str
    events: list[WebhookEventType]
    created_at: datetime
    enabled: bool
    disabled_at: datetime | None = None
    disabled_reason: str | None = None


class WebhookChannel(Model):
    """A channel's outcome, as an event tells it: where it went and how, never what."""

    outcome: str
    address: str | None = None
    reason: str | None = None


class WebhookEventData(Model):
    notification_id: str | None = None
    entity_id: str | None = None
    broadcast_id: str | None = None
    status: str
    """The notification's status the event says (`pending` when requested, `sending` for a channel's event), or the
    broadcast's (`completed`, `cancelled`)."""
    channels: dict[str, WebhookChannel] = Field(default_factory=dict)
    time: datetime


class WebhookEvent(Model):
    """The body of a webhook, Standard Webhooks' shape."""

    type: WebhookEventType
    timestamp: datetime
    data: WebhookEventData


class WebhookDelivery(Model):
    """A delivery workflow's input: which endpoint, which record, and the event (never the secret)."""

    webhook_id: str
    endpoint_id: str
    stream: str
    internal_record_id: int
    event: WebhookEvent
    retry_initial_seconds: float = Field(gt=0)
    retry_hours: float = Field(gt=0)


class DeliveryStatus(StrEnum):
    DELIVERED = "delivered"
    RETRYING = "retrying"
    FAILED = "failed"


class WebhookAttempt(Model):
    """One attempt at a delivery, in the webhook-delivery stream under its webhook id."""

    webhook_id: str
    endpoint_id: str
    event_type: WebhookEventType
    notification_id: str | None = None
    attempt: int
    status: DeliveryStatus
    http_status: int | None = None
    error: str | None = None
    at: datetime


class WebhookDeliverySummary(Model):
    """A delivery as `webhook deliveries` shows it: its latest attempt's status."""

    webhook_id: str
    event_type: WebhookEventType
    notification_id: str | None = None
    status: DeliveryStatus
    attempts: int
    http_status: int | None = None
    error: str | None = None
    first_at: datetime
    last_at: datetime
