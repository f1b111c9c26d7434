"""The inputs and outputs of the saga's record steps (Temporal payloads), beyond the stages' own results."""

from __future__ import annotations

from pydantic import Field

from domain.events import (
    PrepareToSendNotificationEvent,
    SendFailedNotificationToInternalTeamOp,
)
from domain.model import (
    NotificationRequest,
    SendNotificationToEntityOp,
)
from domain.rules import (
    Model,
)
from domain.stages import (
    AttemptToSendNotificationResult,
    ChannelOperationInstruction,
    ChannelOperationRef,
    SagaPolicies,
)
from domain.views import (
    NotificationView,
)


class NotificationSnapshot(Model):
    """The aggregate at its end: the request, the attempt's result and the view. The prepare stage is its event's
    (in the notification event stream) and each channel operation is its stream's record: a snapshot refers to them
    by the notification id, and does not copy them."""

    notification_id: str
    operation: SendNotificationToEntityOp
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


class PreparedSaga(Model):
    """The saga record and its channel operations' records, as put in their streams: the operations themselves are
    the prepare stage's instructions, not repeated here (`operations`)."""

    saga_record_id: int
    operation_record_ids: list[int]
    """Each channel operation's record, in the order of the prepare stage's instructions."""

    def operations(self, stage: PrepareToSendNotificationEvent) -> list[ChannelOperationRef]:
        """The channel operations to send: the stage's instructions, each with its record."""
        instructions = stage.prepare.instructions() if stage.prepare else []
        return [
            ChannelOperationRef(instruction=i, internal_record_id=record_id)
            for i, record_id in zip(instructions, self.operation_record_ids, strict=True)
        ]


class PrepareNotificationOp(Model):
    """The one prepare step's input: the request, and the policies the saga keeps if it has them already (a
    scheduled saga records its request, and so has its policies, when it is requested)."""

    request: NotificationRequest
    policies: SagaPolicies | None = None


class PreparedNotification(Model):
    """What the one prepare step did: the policies the saga keeps, the prepare stage as recorded, the saga and its
    channel operations as put (None when there is nothing to send), and the seconds each of those (by channel
    operation id) waits for its turn on its channel (Slack's pace; 0 for one whose turn is now)."""

    policies: SagaPolicies
    stage: PrepareToSendNotificationEvent
    saga: PreparedSaga | None
    turn_waits: dict[int, float] = Field(default_factory=dict)
