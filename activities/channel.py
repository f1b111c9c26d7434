"""What every channel's handler does around delivering one operation.

A handler takes up the operation's record (the handling store says whether an earlier attempt already finished it),
records the request in its concern's event stream, delivers, and records success or failure there, tagged like the
operation. A permanent failure is an outcome, recorded and returned. A transient one is raised so that Temporal
retries it, unless this was the last attempt the retry policy allows: then it too is recorded as the outcome.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from domain import (
    ChannelEvent,
    ChannelOperation,
    ChannelOperationOutcome,
    ChannelOperationOutcomeInfo,
    ChannelOperationRef,
)
from streams import ExistingRecordStrategy, HandlingStatus, StreamName, StreamStore


@dataclass
class Delivery:
    """How one delivery ended: the channel's response, and the reason when it failed."""

    response: BaseModel
    failure: str | None = None


class TransientDeliveryError(Exception):
    """Delivery failed in a way that a later attempt may not; `delivery` is the outcome if no attempt is left."""

    def __init__(self, delivery: Delivery, retry_after: float | None = None) -> None:
        super().__init__(delivery.failure)
        self.delivery = delivery
        self.retry_after = retry_after


class ChannelHandler(ABC):
    concern: str
    operation_stream: StreamName
    event_stream: StreamName
    requested_event: type[ChannelEvent]
    succeeded_event: type[ChannelEvent]
    failed_event: type[ChannelEvent]

    def __init__(self, store: StreamStore) -> None:
        self._handling = store.handling(self.operation_stream)
        self._events = store.writer(self.event_stream)

    @abstractmethod
    async def deliver(self, operation: ChannelOperation) -> Delivery:
        """Deliver, returning the outcome; raise `TransientDeliveryError` for what a retry may fix."""

    async def handle(self, ref: ChannelOperationRef) -> ChannelOperationOutcomeInfo:
        operation, tags = ref.instruction.operation, ref.instruction.tags
        op_id = operation.channel_operation_id
        handled = await self._handling.begin(ref.internal_record_id, self.concern)
        if handled is not None:
            return ChannelOperationOutcomeInfo.model_validate_json(handled.details)
        await self._events.put(
            op_id,
            self._event(self.requested_event, operation, operation=operation),
            tags=tags,
            strategy=ExistingRecordStrategy.DO_NOT_WRITE_IF_FOUND_BY_ID,
        )
        try:
            delivery = await self.deliver(operation)
        except TransientDeliveryError as error:
            if not _last_attempt():
                await self._handling.transition(ref.internal_record_id, self.concern, HandlingStatus.FAILED, str(error))
                raise ApplicationError(
                    str(error),
                    type="TransientDeliveryError",
                    next_retry_delay=None if error.retry_after is None else timedelta(seconds=error.retry_after),
                ) from error
            delivery = error.delivery
        except BaseException as error:
            await self._handling.transition(ref.internal_record_id, self.concern, HandlingStatus.FAILED, repr(error))
            raise
        event_type = self.failed_event if delivery.failure else self.succeeded_event
        await self._events.put(
            op_id,
            self._event(event_type, operation, response=delivery.response),
            tags=tags,
            strategy=ExistingRecordStrategy.DO_NOT_WRITE_IF_FOUND_BY_ID_AND_TYPE,
        )
        outcome = ChannelOperationOutcomeInfo(
            channel=operation.delivery_channel,
            channel_operation_id=op_id,
            event_type=event_type.__name__,
            outcome=ChannelOperationOutcome.FAILED if delivery.failure else ChannelOperationOutcome.SUCCEEDED,
            reason=delivery.failure,
        )
        await self._handling.transition(
            ref.internal_record_id, self.concern, HandlingStatus.COMPLETED, outcome.model_dump_json()
        )
        return outcome

    @staticmethod
    def _event(event_type: type[ChannelEvent], of: ChannelOperation, **fields: object) -> ChannelEvent:
        return event_type(
            channel_operation_id=of.channel_operation_id,
            notification_id=of.notification_id,
            timestamp_utc=datetime.now(UTC),
            **fields,
        )


def _last_attempt() -> bool:
    info = activity.info()
    maximum = info.retry_policy.maximum_attempts if info.retry_policy else 0
    return maximum > 0 and info.attempt >= maximum
