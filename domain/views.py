"""What the saga shows and the audit answers: the notification's view, each channel's and the escalation's, and the
audit's entries.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import (
    Field,
)

from domain.model import (
    Attachment,
    Channel,
    NotificationStatus,
)
from domain.rules import (
    Model,
)
from domain.stages import (
    AttemptToSendNotificationOutcome,
    GetAudienceOutcome,
    GetDeliveryChannelConfigsOutcome,
    PrepareToSendNotificationOutcome,
)


class NotificationOutcome(Model):
    """The detailed outcome: each stage's result as far as the saga got, and every failure reason."""

    get_audience: GetAudienceOutcome | None = None
    get_delivery_channel_configs: GetDeliveryChannelConfigsOutcome | None = None
    prepare: PrepareToSendNotificationOutcome | None = None
    attempt: AttemptToSendNotificationOutcome | None = None
    failures: list[str] = Field(default_factory=list)


class ChannelOutcome(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    NOT_PREPARED = "not_prepared"
    OPTED_OUT = "opted_out"
    CANCELLED = "cancelled"
    """Not delivered: the notification was cancelled while it waited for its next attempt."""
    SUPPRESSED = "suppressed"
    """Not sent: its address is on the suppression list (the reason says since when and why)."""


class ChannelFeedback(Model):
    """A bounce or a complaint of an email that was sent, as its `EmailBouncedEvent` or `EmailComplainedEvent` says."""

    kind: Literal["bounced", "complained"]
    provider: str
    permanent: bool
    detail: str
    at: datetime


class ChannelView(Model):
    address: str | None
    outcome: ChannelOutcome
    channel_operation_id: int | None = None
    reason: str | None = None
    fallback: bool = False
    """Sent on because a preferred channel failed."""
    attempts: int | None = None
    """Attempts at delivering so far (while sending, from Temporal) or in all (once it ended)."""
    last_error: str | None = None
    """While retrying: why the last attempt failed."""
    next_attempt_at: datetime | None = None
    """While retrying: when the next attempt starts."""
    feedback: list[ChannelFeedback] = Field(default_factory=list, exclude_if=lambda feedback: not feedback)
    """What a provider said after the send: the email bounced, or its recipient complained (read with the view)."""


class EscalationStatus(StrEnum):
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class EscalationView(Model):
    """How the internal team was told about a notification that did not go out as asked."""

    status: EscalationStatus
    channels: dict[Channel, ChannelView] = Field(default_factory=dict)


class NotificationView(Model):
    """The notification as a UI shows it; also the status a running saga answers queries with."""

    id: str
    status: NotificationStatus
    entity_id: str
    subject: str
    outcome: NotificationOutcome
    channels: dict[Channel, ChannelView] = Field(default_factory=dict)
    escalation: EscalationView | None = None
    requested_at: datetime
    send_at: datetime | None = None
    completed_at: datetime | None = None
    waiting: str | None = None
    """Why a notification that has not started sending waits (for Temporal, for a worker): not a failure."""


class DeliveryAuditEntry(Model):
    """One email or Slack message sent (or attempted) to an address, for `audit`."""

    notification_id: str
    channel: Channel
    channel_operation_id: int
    address: str
    subject: str | None
    outcome: Literal["sent", "failed", "sending", "bounced", "complained", "unreadable"]
    """`bounced`, `complained`: sent, then a provider said so (`reason`: what it said); `unreadable`: a record of the
    message does not parse (`reason` says which)."""
    reason: str | None = None
    requested_at: datetime
    completed_at: datetime | None = None
    attachments: list[Attachment] = Field(default_factory=list)
    """The files the message carried, as its operation names them."""


class NotificationAuditEntry(Model):
    """One notification requested for an entity, for `audit --entity`."""

    notification_id: str
    subject: str
    status: NotificationStatus
    requested_at: datetime
    attachments: list[Attachment] = Field(default_factory=list)
    """The files the request named (an inline image with its `content_id`)."""
