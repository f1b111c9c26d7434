"""The inputs and outputs of the saga's record steps (Temporal payloads), beyond the stages' own results, and the
prepare stage as one piece that both the saga (one step per part, in sagas from before `fewer-steps`) and the one
prepare step run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime

from pydantic import Field

from domain.events import (
    PrepareToSendNotificationEvent,
    SendFailedNotificationToInternalTeamOp,
)
from domain.model import (
    Channel,
    ChannelPreference,
    DirectoryEntry,
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
    GetAudienceResult,
    PrepareToSendNotificationResult,
    PrepareToSendOnChannelResult,
    SagaPolicies,
    get_delivery_channel_configs,
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


class PrepareStageEnded(Model):
    """How preparing ended, for the notification of this operation."""

    operation: SendNotificationToEntityOp
    event: PrepareToSendNotificationEvent


class PreparedSaga(Model):
    """The saga record and its channel operations, as put in their streams."""

    saga_record_id: int
    operations: list[ChannelOperationRef]


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


async def prepare_stage(
    notification_id: str,
    timestamp: datetime,
    policies: SagaPolicies,
    get_audience: Callable[[], Awaitable[GetAudienceResult]],
    prepare_on: Callable[[DirectoryEntry, Channel], Awaitable[PrepareToSendOnChannelResult]],
) -> PrepareToSendNotificationEvent:
    """The prepare stage: get the audience; if it can be used, its delivery channel configs; if those can be used,
    prepare every channel it is to be sent on, all at once, and apply the cannot-prepare action."""
    audience = await get_audience()
    stage = PrepareToSendNotificationEvent(
        notification_id=notification_id, timestamp_utc=timestamp, get_audience=audience
    )
    if not audience.usable:
        return stage
    assert audience.audience is not None
    entry = audience.audience
    configs = get_delivery_channel_configs(entry, policies)
    stage = stage.model_copy(update={"get_delivery_channel_configs": configs})
    if not configs.usable:
        return stage
    to_send_on = [c.channel for c in configs.configs if c.action == ChannelPreference.SEND]
    results = await asyncio.gather(*(prepare_on(entry, channel) for channel in to_send_on))
    prepare = PrepareToSendNotificationResult.of(list(results), policies.cannot_prepare_action)
    return stage.model_copy(update={"prepare": prepare})
