"""The inputs and outputs of the saga's record steps (Temporal payloads), beyond the stages' own results."""

from __future__ import annotations

from domain.events import (
    PrepareToSendNotificationEvent,
    SendFailedNotificationToInternalTeamOp,
)
from domain.model import (
    SendNotificationToEntityOp,
)
from domain.rules import (
    Model,
)
from domain.stages import (
    AttemptToSendNotificationResult,
    ChannelOperationInstruction,
    ChannelOperationRef,
)
from domain.views import (
    NotificationView,
)


class NotificationSnapshot(Model):
    """The aggregate at its end: the request and every stage's full result."""

    notification_id: str
    operation: SendNotificationToEntityOp
    prepare: PrepareToSendNotificationEvent | None
    attempt: AttemptToSendNotificationResult | None
    view: NotificationView


class SagaEnded(Model):
    """What the saga records when it ends, written together by one activity: the escalation event (if it told the
    internal team), the view and the snapshot; and the handling of its records completed."""

    snapshot: NotificationSnapshot
    client_operation_record_id: int
    saga_record_id: int | None = None
    internal_operation_record_id: int | None = None


class EscalationRequested(Model):
    """The internal operation to tell the internal team, and the channel operations that will."""

    operation: SendFailedNotificationToInternalTeamOp
    instructions: list[ChannelOperationInstruction]


class PreparedEscalation(Model):
    internal_operation_record_id: int
    operations: list[ChannelOperationRef]


class PrepareStageEnded(Model):
    """How preparing ended, for the notification of this operation."""

    operation: SendNotificationToEntityOp
    event: PrepareToSendNotificationEvent


class PreparedSaga(Model):
    """The saga record and its channel operations, as put in their streams."""

    saga_record_id: int
    operations: list[ChannelOperationRef]
