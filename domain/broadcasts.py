"""A broadcast: one request that notifies many entities (a topic's members, or those it names), each with a
notification of its own that names the broadcast; its saga requests them a page at a time."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field, TypeAdapter, ValidationError, ValidationInfo, field_validator, model_validator

from domain.model import Attachment
from domain.rules import Model, Segment, _admitting, validation_message

MAX_BROADCAST_ENTITIES = 10_000
"""Entities a request may name itself; a topic may have any number of members."""
RECIPIENTS_PAGE = 100
"""Recipients kept in one record of the broadcast's snapshot, and requested in one step of its saga."""
BROADCAST_CONTENT = frozenset(
    {"subject", "body", "html_body", "slack_text", "tags", "send_at", "attachments", "attach_to", "category"}
)
"""What a broadcast's content may hold: what a single request holds but its entity (each recipient's)."""


_FILES = TypeAdapter(list[Attachment])


class BroadcastAudience(Model):
    """Who a broadcast notifies: the members of `topic` when it starts, or the entities it names."""

    topic: Segment | None = None
    entity_ids: list[Segment] | None = None

    @field_validator("entity_ids")
    @classmethod
    def _each_once(cls, entity_ids: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if _admitting(info) and entity_ids is not None:
            if not 1 <= len(entity_ids) <= MAX_BROADCAST_ENTITIES:
                raise ValueError(f"name 1 to {MAX_BROADCAST_ENTITIES:,} entities, not {len(entity_ids):,}")
            if len(set(entity_ids)) != len(entity_ids):
                raise ValueError("each entity once")
        return entity_ids

    @model_validator(mode="after")
    def _one_of(self) -> BroadcastAudience:
        if (self.topic is None) == (self.entity_ids is None):
            raise ValueError("a broadcast goes to a topic or to entities: one of them")
        return self


class SendBroadcastOp(Model):
    """A client's request: notify each entity of the audience with this content (rendered for each from `template`
    and `data`, when it names one)."""

    audience: BroadcastAudience
    content: dict[str, Any] = Field(default_factory=dict)
    """The fields of each recipient's request but its entity: `subject`, `body`, `html_body`, `slack_text`, `tags`,
    `send_at`, `attachments`, `attach_to` (`BROADCAST_CONTENT`), checked as each recipient's request is. Its files'
    contents are kept once, under the broadcast's id; each recipient's request names the same files."""
    template: str | None = None
    data: dict[str, Any] | None = None

    @field_validator("content")
    @classmethod
    def _content_of_a_request(cls, content: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if _admitting(info) and (other := sorted(set(content) - BROADCAST_CONTENT)):
            raise ValueError(f"{', '.join(other)}: not what a broadcast's content holds")
        if _admitting(info):
            try:
                _FILES.validate_python(content.get("attachments", []), context=info.context)
            except ValidationError as error:
                raise ValueError(f"attachments, {validation_message(error)}") from None
        return content

    @property
    def attachments(self) -> list[Attachment]:
        """The files its content names (each recipient's, before those its template names)."""
        return _FILES.validate_python(self.content.get("attachments", []))


class BroadcastRequestedEvent(Model):
    """How a broadcast is put in the client-operation stream: its id, the op, and when it was requested."""

    id: str
    operation: SendBroadcastOp
    timestamp_utc: datetime


class BroadcastRecipients(Model):
    """One page of a broadcast's recipients, as its snapshot holds them (the topic's members when it started)."""

    broadcast_id: str
    page: int
    entity_ids: list[str]


class BroadcastSnapshot(Model):
    """How many recipients a broadcast has, and in how many pages of `RECIPIENTS_PAGE`."""

    recipients: int
    pages: int


class BroadcastStopped(Model):
    """What a broadcast's cancel stopped: its notifications cancelled before they were sent, and its recipients it
    had not requested yet (neither gets anything)."""

    cancelled: int
    not_requested: int

    @property
    def stopped(self) -> int:
        return self.cancelled + self.not_requested


class BroadcastRequest(Model):
    """The broadcast saga's input: the broadcast's id and its record's internal id in the client-operation stream;
    carried on to a new run (continue-as-new): its snapshot, the next page to request, and how many notifications
    it has requested."""

    broadcast_id: str
    client_operation_record_id: int
    heartbeat_timeout_seconds: float = Field(gt=0)
    """How long a step may go without a heartbeat (its worker died) before it is retried
    (`NOTIFY_HEARTBEAT_TIMEOUT_SECONDS`)."""
    snapshot: BroadcastSnapshot | None = None
    next_page: int = 0
    requested: int = 0
    stopped: BroadcastStopped | None = None
    """Once it is cancelled: what the cancel stopped."""


class BroadcastPage(Model):
    """A page of a broadcast's recipients to request (`REQUEST_RECIPIENTS`)."""

    broadcast_id: str
    page: int


class BroadcastCounts(Model):
    """Where a broadcast's notifications are: its recipients (none until its saga has kept them), and how many ended,
    by status (`refused`: a recipient whose request could not be made, as an entity that left the directory)."""

    recipients: int
    ended: dict[str, int] = Field(default_factory=dict)
    """By status (`NotificationStatus`, or `refused`)."""

    @property
    def left(self) -> int:
        """Recipients whose notification has not ended (or not been requested yet)."""
        return self.recipients - sum(self.ended.values())

    @property
    def ended_requested(self) -> int:
        """Notifications requested that have ended (a refused recipient was not requested)."""
        return sum(n for status, n in self.ended.items() if status != "refused")


def recipients_record_id(broadcast_id: str, page: int) -> str:
    """The record id of a page of a broadcast's snapshot (`BroadcastRecipients`)."""
    return f"{broadcast_id}/recipients/{page}"


def recipient_id(broadcast_id: str, index: int) -> str:
    """The notification id of a broadcast's recipient, by its place in the snapshot (from 1): the same on every
    retry, so that a recipient is requested once."""
    return f"{broadcast_id}.{index}"


class BroadcastRecipientRefused(Model):
    """A recipient whose request could not be made (an entity that left the directory, content its template could
    not render for it): it gets no notification, and its broadcast counts it as `refused`."""

    broadcast_id: str
    notification_id: str
    entity_id: str
    reason: str


class BroadcastKeyClaim(Model):
    """Put in the client-operation stream under the key (as a notification's `IdempotencyKeyClaim`, whose keys are
    the same ones): the first broadcast with a key claims it for its id."""

    idempotency_key: str
    broadcast_id: str
    operation: SendBroadcastOp
