"""What every channel's handler does: compose its operation, and deliver it exactly once as far as it can tell.

A handler takes up the operation's record in the handling store, records the request in its concern's event stream,
delivers, and records success or failure there, tagged like the operation. Each subclass (one per delivery channel)
says how to compose and deliver, with the channel's own operation and response types (`ChannelHandler[Op,
Response]`); `activities.registry.CHANNEL_HANDLERS` lists them.

- A permanent failure (and anything unexpected while delivering) is an outcome: recorded and returned.
- A transient failure is raised, with the channel's response, so that Temporal retries it until the operation's
  deadline; then the saga has the handler record it as the outcome (`give_up`), with that last response.
- An attempt never outlives its timeout or the operation's deadline, so nothing runs beside a retry that replaces
  it, or beside the record that the saga gave up.
- A retry that finds the operation handled, or its outcome recorded by an attempt that died before it could say so
  in the handling store, returns that outcome and delivers nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import ClassVar, Generic, NoReturn, TypeVar

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

import metrics
from activities.failures import Outage
from activities.heartbeat import heartbeating
from domain import (
    Channel,
    ChannelEvent,
    ChannelOperation,
    ChannelOperationFailure,
    ChannelOperationOutcome,
    ChannelOperationOutcomeInfo,
    ChannelOperationRef,
    PrepareToSendOnChannelOp,
    SendNotificationToEntityOp,
    Tag,
    in_one_line,
    utc_now,
)
from settings import Settings
from streams import (
    ExistingRecordStrategy,
    HandlingEntry,
    HandlingStatus,
    InvalidHandlingTransition,
    StoreUnavailable,
    StreamName,
    StreamStore,
)
from streams.store import Put

WORKER = f"{os.getpid()}@{socket.gethostname()}"
"""This process, as the handling history names it."""
RECORD_WAIT_FIRST, RECORD_WAIT_MOST = 0.5, 5.0
"""Seconds between tries at recording a delivery's outcome while the store cannot be used: from the first, doubling
up to the most."""
ATTEMPT_MARGIN = timedelta(seconds=5)
"""How long before its start-to-close timeout an attempt gives up, to record that it did."""
logger = logging.getLogger("notify.delivery")
"""One line per failed attempt and per failed delivery; a traceback only for what is a bug."""


@dataclass
class Delivery:
    """How one delivery ended: the channel's response, the reason when it failed, and what else its outcome's record
    writes with it (the suppression of an address that a mail server refused for good)."""

    response: BaseModel
    failure: str | None = None
    also_put: list[Put] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.failure is not None:
            self.failure = in_one_line(self.failure)


class FileBudget:
    """How many bytes of files a worker's attempts hold in memory at once, at most: an attempt takes its files' share
    before it reads them and gives it back once it has delivered them, first come, first served. An attempt whose
    files are more than the whole budget takes all of it, and so waits for the others and runs alone."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._free = total
        self._turn = asyncio.Lock()
        """Held by the attempt waiting for its share: the others wait behind it, in order."""
        self._freed = asyncio.Event()

    def would_wait(self, size: int) -> bool:
        return size > 0 and (self._turn.locked() or self._free < min(size, self.total))

    @asynccontextmanager
    async def held(self, size: int) -> AsyncIterator[None]:
        """`size` bytes of the budget (all of it, if that is less), held until the block ends."""
        share = min(size, self.total)
        if share > 0:
            async with self._turn:
                while self._free < share:
                    self._freed.clear()
                    await self._freed.wait()
                self._free -= share
        try:
            yield
        finally:
            self._free += share
            self._freed.set()


def opt_out_of(request: SendNotificationToEntityOp, settings: Settings) -> str | None:
    """The category a channel's message lets its recipient opt out of: the request's, when it may be opted out of;
    None otherwise."""
    category = settings.categories().get(request.category) if request.category else None
    return category.name if category and category.opt_out else None


class CannotPrepare(Exception):
    """The channel cannot carry this notification (say, a Slack message over Slack's length limit)."""


class TransientDeliveryError(Exception):
    """Delivery failed in a way that a later attempt may not; `delivery` is the outcome if no attempt is left."""

    def __init__(self, delivery: Delivery, retry_after: float | None = None) -> None:
        super().__init__(delivery.failure)
        self.delivery = delivery
        self.retry_after = retry_after


Op = TypeVar("Op", bound=ChannelOperation)
"""A channel's operation."""
Response = TypeVar("Response", bound=BaseModel)
"""A channel's response, as its events record it."""


class ChannelHandler(ABC, Generic[Op, Response]):
    """The handler of one channel's operations (`Op`), which records that channel's responses (`Response`)."""

    channel: ClassVar[Channel]
    concern: ClassVar[str]
    operation_stream: ClassVar[StreamName]
    event_stream: ClassVar[StreamName]
    requested_event: ClassVar[type[ChannelEvent]]
    succeeded_event: ClassVar[type[ChannelEvent]]
    failed_event: ClassVar[type[ChannelEvent]]
    operation_type: type[Op]
    response_type: type[Response]

    def __init__(self, store: StreamStore, settings: Settings, files: FileBudget | None = None) -> None:
        """`files`: the worker's budget for files in memory, shared by its channels' handlers (by default one of
        this handler's own, of `NOTIFY_ATTACHMENT_MEMORY_BYTES`)."""
        self._settings = settings
        self._files = files or FileBudget(settings.attachment_memory_bytes)
        self._outage = Outage(self.channel, logger)
        self._handling = store.handling(self.operation_stream)
        self._events = store.writer(self.event_stream)
        self._outcomes = store.reader(self.event_stream)
        self._steps = store.steps()
        self._content = store.content

    # -- what each channel says ---------------------------------------------------------------------------------

    @abstractmethod
    async def send(self, ref: ChannelOperationRef) -> ChannelOperationOutcomeInfo:
        """The channel's send activity: `handle`, under the channel's activity name."""

    @abstractmethod
    async def record_not_sent(self, failure: ChannelOperationFailure) -> ChannelOperationOutcomeInfo:
        """The channel's activity for an operation the saga gave up on: `give_up`, under the channel's name."""

    @staticmethod
    @abstractmethod
    def compose(
        op: PrepareToSendOnChannelOp, channel_operation_id: int, settings: Settings
    ) -> tuple[ChannelOperation, list[Tag]]:
        """The channel's operation for this notification, and the tags that name its recipient; raises
        `CannotPrepare` when the channel cannot carry it."""

    @abstractmethod
    async def deliver(self, operation: Op) -> Delivery:
        """Deliver, returning the outcome; raise `TransientDeliveryError` for what a retry may fix."""

    @asynccontextmanager
    async def files(self, operation: Op) -> AsyncIterator[list[bytes] | Delivery]:
        """The bytes of the files `operation` names (`contents`), read once the worker's budget for files in memory
        has room for them, and held until the block ends."""
        size = sum(a.size for a in operation.attachments)
        if self._files.would_wait(size):
            logger.info(
                "%s waits for memory for its files (%s bytes; the worker holds at most %s at once)",
                _attempt_name(operation),
                f"{size:,}",
                f"{self._files.total:,}",
            )
        async with self._files.held(size):
            yield await self.contents(operation)

    async def contents(self, operation: Op) -> list[bytes] | Delivery:
        """The bytes of the files `operation` names, from the stream store; or, when one is not there, the delivery
        that failed for good saying which. A store that cannot be read now is a delivery a later attempt may make."""
        try:
            contents = [await self._content(a.sha256) for a in operation.attachments]
        except StoreUnavailable as error:
            reason = f"the stream store cannot be read now: {error}"
            raise TransientDeliveryError(Delivery(self.failed_response(operation, reason), reason)) from error
        found = []
        for attachment, content in zip(operation.attachments, contents, strict=True):
            if content is None:
                reason = f"attachment {attachment.filename!r} ({attachment.sha256}) is not in the stream store"
                return Delivery(self.failed_response(operation, reason), reason)
            found.append(content)
        return found

    @abstractmethod
    def failed_response(self, operation: Op, reason: str) -> Response:
        """The channel's response for a delivery that failed for `reason` before the channel answered."""

    async def turn(self, ref: ChannelOperationRef) -> float:
        """Seconds the operation waits for its turn before it is sent: none, unless the channel is paced per
        recipient (Slack is, per Slack channel)."""
        return 0.0

    # -- what every channel does ------------------------------------------------------------------------------

    def operation(self, ref: ChannelOperationRef) -> Op:
        """The channel's operation that `ref` holds."""
        operation = ref.instruction.operation
        if not isinstance(operation, self.operation_type):
            raise TypeError(f"the {self.channel} handler was given a {operation.delivery_channel} operation")
        return operation

    async def handle(self, ref: ChannelOperationRef) -> ChannelOperationOutcomeInfo:
        """Deliver the operation once, heartbeating all along: while the attempt waits for the store it is alive, and
        no retry takes the operation over beside it; only a dead worker's attempt is retried early."""
        async with heartbeating():
            return await self._handle(ref)

    async def _handle(self, ref: ChannelOperationRef) -> ChannelOperationOutcomeInfo:
        operation = self.operation(ref)
        info = activity.info()
        attempt = f"attempt {info.attempt}, by worker {WORKER}"
        requested = self._events.record(
            operation.channel_operation_id,
            self._event(self.requested_event, operation, operation=operation),
            tags=ref.instruction.tags,
            strategy=ExistingRecordStrategy.DO_NOT_WRITE_IF_FOUND_BY_ID,
        )
        begun = await self._steps.write(
            [requested], before=[self._handling.beginning(ref.internal_record_id, self.concern, attempt)]
        )
        if not begun.moved[0]:  # handled already
            handled = await self._handling.history(ref.internal_record_id, self.concern)
            return ChannelOperationOutcomeInfo.model_validate_json(handled[-1].details)
        # an earlier attempt's records are there: it may have recorded the outcome, and died before it could
        # complete its handling
        recorded = None if begun.puts[0].internal_id is not None else await self._recorded_outcome(operation)
        if recorded is not None:
            history = await self._handling.history(ref.internal_record_id, self.concern)
            recorded = recorded.model_copy(update={"attempts": _attempts(history)})
            await self._complete(ref, recorded)
            return recorded
        budget = _attempt_budget()
        try:
            if budget is not None and budget <= 0:
                reason = "no time left before the deadline"
                raise TransientDeliveryError(Delivery(self.failed_response(operation, reason), reason))
            delivery = await _to_the_end(asyncio.wait_for(self.deliver(operation), budget))
        except TransientDeliveryError as error:
            await self._retry(ref, error.delivery, error.retry_after)
        except TimeoutError:
            reason = f"no answer within {budget:.1f} s"
            await self._retry(ref, Delivery(self.failed_response(operation, reason), reason))
        except Exception as error:  # unforeseen, and so not something a retry would fix
            reason = f"{error.__class__.__name__}: {error}"
            logger.exception("%s: a bug while delivering; recorded as failed", _attempt_name(operation))
            delivery = Delivery(self.failed_response(operation, reason), reason)
        except BaseException as error:  # cancelled: say so in the handling history, if the store still can
            try:
                await self._handling.transition(
                    ref.internal_record_id, self.concern, HandlingStatus.FAILED, repr(error)
                )
            except Exception:
                logger.exception("%s: could not record that the attempt ended", _attempt_name(operation))
            raise
        return await self._recorded_when_it_can(ref, delivery)

    async def _recorded_when_it_can(self, ref: ChannelOperationRef, delivery: Delivery) -> ChannelOperationOutcomeInfo:
        """Record how the delivery ended, waiting for the store while it cannot be used: what was delivered is never
        delivered again because its record could not be written (only an attempt that dies, or runs out of time,
        before it is written leaves that to a retry)."""
        wait = RECORD_WAIT_FIRST
        while True:
            try:
                return await self._record(ref, delivery)
            except StoreUnavailable as error:
                logger.debug("%s: waiting to record the outcome: %s", _attempt_name(ref.instruction.operation), error)
                await asyncio.sleep(wait)
                wait = min(wait * 2, RECORD_WAIT_MOST)

    async def give_up(self, failure: ChannelOperationFailure) -> ChannelOperationOutcomeInfo:
        """The saga gave up on the operation (its deadline passed, or every attempt failed): record it as failed,
        unless an attempt recorded an outcome after all, and archive its handling."""
        ref, operation = failure.operation, self.operation(failure.operation)
        history = await self._handling.history(ref.internal_record_id, self.concern)
        status = history[-1].status if history else HandlingStatus.AVAILABLE_BY_DEFAULT
        attempts = _attempts(history)
        recorded = await self._recorded_outcome(operation)
        if recorded is not None:  # an attempt recorded it and died before it could complete its handling
            recorded = recorded.model_copy(update={"attempts": attempts})
            if status == HandlingStatus.RUNNING:
                await self._complete(ref, recorded)
            return recorded
        last = failure.last_response
        response = (
            self.response_type.model_validate({**last, "error": failure.reason})
            if last
            else self.failed_response(operation, failure.reason)
        )
        delivery = Delivery(response, failure.reason)
        put, outcome = self._outcome_record(ref, delivery, attempts)
        # once the outcome is recorded, a running attempt's handling fails, then a failed one is archived with the
        # outcome: the moves its status allows
        await self._steps.write(
            [put],
            after=[
                self._handling.move(ref.internal_record_id, self.concern, HandlingStatus.FAILED, failure.reason),
                self._handling.move(
                    ref.internal_record_id,
                    self.concern,
                    HandlingStatus.ARCHIVED_AFTER_FAILURE,
                    outcome.model_dump_json(),
                ),
            ],
        )
        self._count(delivery)
        logger.warning(
            "%s failed for good after %d attempt(s): %s", _operation_name(operation), attempts, failure.reason
        )
        return outcome

    async def _retry(self, ref: ChannelOperationRef, delivery: Delivery, retry_after: float | None = None) -> NoReturn:
        """Fail this attempt for Temporal to retry, with the channel's response for whoever records the outcome.
        The SDK logs a benign failure at debug level without a traceback: the one line here says it all."""
        reason = delivery.failure or "transient failure"
        await self._handling.transition(ref.internal_record_id, self.concern, HandlingStatus.FAILED, reason)
        metrics.channel_sent(activity.metric_meter(), self.channel, "retried")
        self._outage.failed(_attempt_name(ref.instruction.operation), reason)
        raise ApplicationError(
            reason,
            delivery.response.model_dump(mode="json"),
            type="TransientDeliveryError",
            next_retry_delay=None if retry_after is None else timedelta(seconds=retry_after),
            category=ApplicationErrorCategory.BENIGN,
        )

    async def _record(self, ref: ChannelOperationRef, delivery: Delivery) -> ChannelOperationOutcomeInfo:
        """Record the delivery's outcome and complete the operation's handling with it, in one write."""
        self._outage.answered()
        put, outcome = self._outcome_record(ref, delivery, activity.info().attempt)
        await self._complete(ref, outcome, [put, *delivery.also_put])
        self._count(delivery)
        if delivery.failure:
            logger.warning("%s failed for good: %s", _attempt_name(ref.instruction.operation), delivery.failure)
        return outcome

    def _outcome_record(
        self, ref: ChannelOperationRef, delivery: Delivery, attempts: int | None
    ) -> tuple[Put, ChannelOperationOutcomeInfo]:
        """The event that records the delivery's outcome, and the outcome."""
        operation = ref.instruction.operation
        event_type = self.failed_event if delivery.failure else self.succeeded_event
        put = self._events.record(
            operation.channel_operation_id,
            self._event(event_type, operation, response=delivery.response),
            tags=ref.instruction.tags,
            strategy=ExistingRecordStrategy.DO_NOT_WRITE_IF_FOUND_BY_ID_AND_TYPE,
        )
        return put, self._outcome(operation, event_type, delivery.failure, attempts)

    def _count(self, delivery: Delivery) -> None:
        """Count a delivery's outcome in the metrics, once it is recorded."""
        metrics.channel_sent(activity.metric_meter(), self.channel, "failed" if delivery.failure else "succeeded")

    async def _complete(
        self, ref: ChannelOperationRef, outcome: ChannelOperationOutcomeInfo, puts: Sequence[Put] = ()
    ) -> None:
        """Write `puts`, then complete the operation's handling with `outcome`, in one write. A completion made
        already (by a retry of this write, which had committed before its answer was lost) is taken; any other status
        is `InvalidHandlingTransition`."""
        written = await self._steps.write(
            puts,
            after=[
                self._handling.move(
                    ref.internal_record_id, self.concern, HandlingStatus.COMPLETED, outcome.model_dump_json()
                )
            ],
        )
        if not written.moved[0]:
            status = await self._handling.status(ref.internal_record_id, self.concern)
            if status != HandlingStatus.COMPLETED:
                raise InvalidHandlingTransition(
                    f"{_operation_name(ref.instruction.operation)} is {status}: its outcome cannot complete it"
                )

    async def _recorded_outcome(self, operation: ChannelOperation) -> ChannelOperationOutcomeInfo | None:
        """The outcome already in the event stream, if any; failure wins over success, as in the reference."""
        records = await self._outcomes.by_id(operation.channel_operation_id)
        for event_type in (self.failed_event, self.succeeded_event):
            record = next((r for r in records if r.type == event_type.__name__), None)
            if record is not None:
                return self._outcome(operation, event_type, record.json()["response"].get("error"))
        return None

    def _outcome(
        self,
        operation: ChannelOperation,
        event_type: type[ChannelEvent],
        failure: str | None,
        attempts: int | None = None,
    ) -> ChannelOperationOutcomeInfo:
        failed = event_type is self.failed_event
        return ChannelOperationOutcomeInfo(
            channel=self.channel,
            channel_operation_id=operation.channel_operation_id,
            event_type=event_type.__name__,
            outcome=ChannelOperationOutcome.FAILED if failed else ChannelOperationOutcome.SUCCEEDED,
            reason=(failure or "failed") if failed else None,
            attempts=attempts,
        )

    @staticmethod
    def _event(event_type: type[ChannelEvent], of: ChannelOperation, **fields: object) -> ChannelEvent:
        return event_type(
            channel_operation_id=of.channel_operation_id,
            notification_id=of.notification_id,
            timestamp_utc=utc_now(),
            **fields,
        )


def _attempts(history: list[HandlingEntry]) -> int:
    """How many attempts a handling history shows: each began by taking the operation up."""
    return sum(1 for entry in history if entry.status == HandlingStatus.RUNNING)


def _operation_name(operation: ChannelOperation) -> str:
    """Which notification and channel operation a log line is about."""
    return f"notification {operation.notification_id}: {operation.delivery_channel} {operation.channel_operation_id}"


def _attempt_name(operation: ChannelOperation) -> str:
    """Which notification, channel operation and attempt of the running send a log line is about."""
    return f"{_operation_name(operation)} attempt {activity.info().attempt}"


async def _to_the_end(delivering: Awaitable[Delivery]) -> Delivery:
    """The attempt's delivery, awaited to its end (its time budget) even when the attempt is cancelled meanwhile
    (the notification was cancelled, the worker stops): a message half-sent is finished and recorded, not
    abandoned; the cancel then stops the retries."""
    task = asyncio.ensure_future(delivering)
    while True:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            this = asyncio.current_task()
            assert this is not None
            this.uncancel()


def _attempt_budget() -> float | None:
    """Seconds this attempt may take: what is left of its timeout and of the operation's deadline, less a margin to
    record that it ran out."""
    info = activity.info()
    left = [info.start_to_close_timeout.total_seconds()] if info.start_to_close_timeout else []
    if info.schedule_to_close_timeout:
        deadline = info.scheduled_time + info.schedule_to_close_timeout
        left.append((deadline - datetime.now(UTC)).total_seconds())
    if not left:
        return None
    available = min(left)
    return available - min(ATTEMPT_MARGIN.total_seconds(), available / 4)
