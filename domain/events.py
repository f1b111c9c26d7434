"""What the streams record: the channels' responses and events, the notification's events (its terminal ones hold
its view), and the client's operation as it is put in an operation stream.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import (
    Field,
)

from domain.model import (
    NotificationStatus,
    SendNotificationToEntityOp,
)
from domain.rules import (
    Model,
)
from domain.stages import (
    AttemptToSendNotificationResult,
    GetAudienceResult,
    GetDeliveryChannelConfigsResult,
    PrepareToSendNotificationOutcome,
    PrepareToSendNotificationResult,
    ProcessSendNotificationSagaOp,
    SendEmailOp,
    SendSlackMessageOp,
)
from domain.views import (
    EscalationStatus,
    EscalationView,
)


class SendEmailResult(StrEnum):
    SUCCESS = "Success"
    FAILED_TO_CONNECT_TO_SERVER = "FailedToConnectToServer"
    FAILED_TO_AUTHENTICATE_WITH_SERVER = "FailedToAuthenticateWithServer"
    FAILED_TO_SEND_EMAIL_TO_SERVER = "FailedToSendEmailToServer"


class SendEmailResponse(Model):
    result: SendEmailResult
    message_id: str
    server_response: str | None = None
    error: str | None = None
    communication_log: list[str] = Field(default_factory=list)
    """The SMTP exchange, credentials left out."""


class SendSlackMessageResult(StrEnum):
    SUCCEEDED = "Succeeded"
    FAILED_WITH_EXCEPTION_WHEN_SENDING = "FailedWithExceptionWhenSending"
    FAILED_WITH_SLACK_RETURNING_ERROR = "FailedWithSlackReturningError"


class SendSlackMessageResponse(Model):
    result: SendSlackMessageResult
    response_json: dict[str, Any] | None = None
    error: str | None = None


class ChannelEvent(Model):
    channel_operation_id: int
    notification_id: str
    timestamp_utc: datetime


class SendEmailRequestedEvent(ChannelEvent):
    operation: SendEmailOp


class SucceededInSendingEmailEvent(ChannelEvent):
    response: SendEmailResponse


class FailedToSendEmailEvent(ChannelEvent):
    response: SendEmailResponse


class SendSlackMessageRequestedEvent(ChannelEvent):
    operation: SendSlackMessageOp


class SucceededInSendingSlackMessageEvent(ChannelEvent):
    response: SendSlackMessageResponse


class FailedToSendSlackMessageEvent(ChannelEvent):
    response: SendSlackMessageResponse


class NotificationEvent(Model):
    notification_id: str
    timestamp_utc: datetime

    @property
    def record_type(self) -> str:
        """The type it is recorded as: its class name, unless its outcome names it."""
        return self.__class__.__name__


class SendNotificationRequestedEvent(NotificationEvent):
    """Creates the notification aggregate."""

    operation: SendNotificationToEntityOp


class PrepareToSendNotificationEvent(NotificationEvent):
    """The prepare stage. Its record type names how it ended, as the reference's event names do."""

    get_audience: GetAudienceResult
    get_delivery_channel_configs: GetDeliveryChannelConfigsResult | None = None
    prepare: PrepareToSendNotificationResult | None = None

    RECORD_TYPES: ClassVar[frozenset[str]] = frozenset(
        {
            "CouldNotGetOrUseAudienceEvent",
            "CouldNotGetOrUseDeliveryChannelConfigsEvent",
            "CouldNotPrepareToSendOnAnyChannelEvent",
            *(f"{o.value}Event" for o in PrepareToSendNotificationOutcome if not o.value.startswith("CouldNot")),
        }
    )
    """Every `record_type` the stage may be recorded as."""

    @property
    def record_type(self) -> str:
        if not self.get_audience.usable:
            return "CouldNotGetOrUseAudienceEvent"
        if self.get_delivery_channel_configs is None or not self.get_delivery_channel_configs.usable:
            return "CouldNotGetOrUseDeliveryChannelConfigsEvent"
        assert self.prepare is not None
        outcome = self.prepare.outcome
        if outcome in (
            PrepareToSendNotificationOutcome.COULD_NOT_PREPARE_DESPITE_ATTEMPTING_ALL,
            PrepareToSendNotificationOutcome.COULD_NOT_PREPARE_BECAUSE_ONE_FORCED_ALL_TO_BE_DISCARDED,
        ):
            return "CouldNotPrepareToSendOnAnyChannelEvent"
        return f"{outcome.value}Event"


class AttemptToSendNotificationEvent(NotificationEvent):
    """The attempt stage: SentOnAllPreparedChannelsEvent, SentOnSomePreparedChannelsEvent or
    CouldNotSendOnAnyPreparedChannelEvent, by its outcome."""

    attempt: AttemptToSendNotificationResult

    @property
    def record_type(self) -> str:
        return f"{self.attempt.outcome.value}Event"


class NotificationEndedEvent(NotificationEvent):
    """What every terminal event holds: every failure reason the notification met (as its view's outcome has them).
    The stage events before it hold each stage's result, and its view (in the view stream) the rest."""

    failures: list[str] = Field(default_factory=list)


class SucceededInSendingNotificationEvent(NotificationEndedEvent):
    """Terminal: sent on every prepared channel."""


class PartiallySentNotificationEvent(NotificationEndedEvent):
    """Terminal: sent on some of the entity's channels and not on others (which failed, or could not be used or
    prepared); the view says which, and the failures why."""


class FailedToSendNotificationEvent(NotificationEndedEvent):
    """Terminal: sent on none of the entity's channels; the stages say how far it got, and the failures why."""


class NotificationCancelledEvent(NotificationEndedEvent):
    """Terminal: cancelled before anything was sent."""


def terminal_event_type(status: NotificationStatus) -> type[NotificationEndedEvent] | None:
    """The event that ends a notification's stream, or None when the prepare stage's `AudienceOptedOutOfAllChannels`
    event already ended it (there was nothing to send)."""
    if status == NotificationStatus.OPTED_OUT:
        return None
    ended: dict[NotificationStatus, type[NotificationEndedEvent]] = {
        NotificationStatus.CANCELLED: NotificationCancelledEvent,
        NotificationStatus.SENT: SucceededInSendingNotificationEvent,
        NotificationStatus.PARTIALLY_SENT: PartiallySentNotificationEvent,
    }
    return ended.get(status, FailedToSendNotificationEvent)


class SendFailedNotificationToInternalTeamOp(Model):
    """Put in the internal operation stream when a notification failed: tell the internal team."""

    notification_id: str
    status: NotificationStatus
    failures: list[str]


class FailedNotificationSentToInternalTeamEvent(NotificationEvent):
    """The internal team was told (`CouldNotSendFailedNotificationToInternalTeamEvent` when that failed too)."""

    escalation: EscalationView

    @property
    def record_type(self) -> str:
        if self.escalation.status == EscalationStatus.SENT:
            return "FailedNotificationSentToInternalTeamEvent"
        return "CouldNotSendFailedNotificationToInternalTeamEvent"


class IdempotencyKeyClaim(Model):
    """Put in the client-operation stream under the key: the first request with a key claims it for its id."""

    idempotency_key: str
    notification_id: str
    operation: SendNotificationToEntityOp


class ExecuteOpRequestedEvent(Model):
    """How an operation is put in an operation stream: the op, its id and when it was requested."""

    id: str
    operation: (
        SendNotificationToEntityOp
        | SendEmailOp
        | SendSlackMessageOp
        | ProcessSendNotificationSagaOp
        | SendFailedNotificationToInternalTeamOp
    )
    timestamp_utc: datetime
