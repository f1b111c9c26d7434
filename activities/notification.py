"""The notification handlers' steps, as activities: record the request, prepare (get the audience, prepare each
channel, put the saga and its channel operations), tell the internal team, and record how the saga ended. They write
only through write-only handles, read only through read-only ones, and keep handling through the handling stores."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from pydantic import ValidationError
from temporalio import activity

from activities.channel_handler import CannotPrepare, ChannelHandler
from activities.contract import (
    ESCALATION_CONCERN,
    PREPARE_NOTIFICATION,
    PREPARE_TO_SEND_ON_CHANNEL,
    PUT_CHANNEL_OPERATIONS,
    RECORD_ENDED,
    RECORD_ESCALATION_REQUESTED,
    RECORD_OUTCOME,
    RECORD_REQUESTED,
    RECORD_SAGA_ENDED,
    SAGA_CONCERN,
    SEND_NOTIFICATION_CONCERN,
)
from activities.failures import TRANSIENT, KnownCause, failed_for_good
from activities.registry import CHANNEL_HANDLERS
from domain import (
    AttemptToSendNotificationEvent,
    Channel,
    ChannelOperationInstruction,
    ChannelOperationMonitoringInfo,
    ChannelOperationRef,
    ChannelPreference,
    DirectoryEntry,
    EscalationRequested,
    ExecuteOpRequestedEvent,
    FailedNotificationSentToInternalTeamEvent,
    Failure,
    GetAudienceResult,
    NotificationEvent,
    NotificationRequest,
    NotificationSnapshot,
    PreparedEscalation,
    PreparedNotification,
    PreparedSaga,
    PrepareNotificationOp,
    PrepareToSendNotificationEvent,
    PrepareToSendNotificationResult,
    PrepareToSendOnChannelOp,
    PrepareToSendOnChannelResult,
    ProcessSendNotificationSagaOp,
    SagaEnded,
    SagaPolicies,
    SendNotificationRequestedEvent,
    SendNotificationToEntityOp,
    TagName,
    get_delivery_channel_configs,
    notification_tags,
    tag,
    terminal_event_type,
    utc_now,
    validation_message,
)
from settings import Settings
from streams import (
    ExistingRecordStrategy,
    HandlingStatus,
    HandlingStore,
    InvalidHandlingTransition,
    NoSuchRecord,
    StreamName,
    StreamStore,
)
from streams.directory import entry_or_reason

T = TypeVar("T")


async def _run_if_available(handling: HandlingStore, internal_record_id: int, concern: str) -> None:
    """Take the record up, unless a previous attempt of this step did: one conditional write."""
    await _move_if_allowed(handling, internal_record_id, concern, HandlingStatus.RUNNING)


async def _complete_if_running(handling: HandlingStore, internal_record_id: int, concern: str, details: str) -> None:
    """Complete the record's handling, unless a previous attempt of this step did: one conditional write."""
    await _move_if_allowed(handling, internal_record_id, concern, HandlingStatus.COMPLETED, details)


async def _move_if_allowed(
    handling: HandlingStore, internal_record_id: int, concern: str, status: HandlingStatus, details: str = ""
) -> None:
    try:
        await handling.transition(internal_record_id, concern, status, details)
    except NoSuchRecord:
        raise  # bad data: not something a retry, or skipping, would fix
    except InvalidHandlingTransition:
        pass  # the record is past that status already


class RequestNotFound(KnownCause):
    """The saga's request is not in this worker's streams: most likely, its client wrote it to another store."""

    def __init__(self, request: NotificationRequest, settings: Settings) -> None:
        where = (
            "the database NOTIFY_STREAMS_URL names"
            if settings.streams_url
            else settings.default_streams_file.absolute()
        )
        super().__init__(
            f"its request (record {request.client_operation_record_id} of the client-operation stream) is not in "
            f"this worker's streams ({where}): it was requested on another store, by a client run in another folder "
            "or with another NOTIFY_DATA_DIR or NOTIFY_STREAMS_URL than the worker's"
        )


class NotificationActivities:
    def __init__(
        self, store: StreamStore, settings: Settings, handlers: Mapping[Channel, ChannelHandler[Any, Any]]
    ) -> None:
        self._settings = settings
        self._handlers = handlers
        self._directory = store.reader(StreamName.ENTITY_DIRECTORY)
        self._client_operation_handling = store.handling(StreamName.CLIENT_OPERATION)
        self._saga_handling = store.handling(StreamName.NOTIFICATION_SAGA)
        self._internal_operation_handling = store.handling(StreamName.INTERNAL_OPERATION)
        self._internal_operations = store.writer(StreamName.INTERNAL_OPERATION)
        self._events = store.writer(StreamName.NOTIFICATION_EVENT)
        self._recorded_events = store.reader(StreamName.NOTIFICATION_EVENT)
        self._sagas = store.writer(StreamName.NOTIFICATION_SAGA)
        self._views = store.writer(StreamName.NOTIFICATION_VIEW)
        self._snapshots = store.writer(StreamName.NOTIFICATION_SNAPSHOT)
        self._channel_operations = {c: store.writer(h.operation_stream) for c, h in CHANNEL_HANDLERS.items()}

    @activity.defn(name=PREPARE_NOTIFICATION.name)
    async def prepare_notification(self, op: PrepareNotificationOp) -> PreparedNotification:
        """Every step up to sending, in one: record the request (unless the saga has, being scheduled), run the
        prepare stage, record how it ended with the saga and its channel operations, and take each operation's turn
        on its channel. A retry after the stage was recorded goes on from the recorded stage (the same channel
        operations), and each write is idempotent. Getting the audience or preparing a channel that fails in a way
        no retry fixes is a reported failure of its stage, as when each was a step of its own; the store being
        unavailable fails the whole step, to be retried."""
        request = op.request
        nid, operation = request.notification_id, request.operation
        policies = op.policies or await self.record_requested(request)
        records = await self._recorded_events.by_id(nid)
        recorded = next((r for r in records if r.type in PrepareToSendNotificationEvent.RECORD_TYPES), None)
        if recorded is not None:
            stage = recorded.object(PrepareToSendNotificationEvent)
        else:
            stage = await self._prepare_stage(nid, operation, policies)
        saga = await self._record_prepared(stage, operation)
        waits = {
            ref.instruction.operation.channel_operation_id: await self._handlers[
                ref.instruction.operation.delivery_channel
            ].turn(ref)
            for ref in (saga.operations if saga else [])
        }
        return PreparedNotification(policies=policies, stage=stage, saga=saga, turn_waits=waits)

    async def _prepare_stage(
        self, nid: str, operation: SendNotificationToEntityOp, policies: SagaPolicies
    ) -> PrepareToSendNotificationEvent:
        """The prepare stage: get the audience; if it can be used, its delivery channel configs; if those can be
        used, prepare every channel it is to be sent on, all at once, and apply the cannot-prepare action."""
        timestamp = utc_now()
        audience = await _or_reported(
            "GetAudience",
            nid,
            self._get_audience(operation),
            lambda reason: GetAudienceResult(audience=None, failures=[Failure(reason=reason)]),
        )
        stage = PrepareToSendNotificationEvent(notification_id=nid, timestamp_utc=timestamp, get_audience=audience)
        if not audience.usable:
            return stage
        assert audience.audience is not None
        entry = audience.audience
        configs = get_delivery_channel_configs(entry, policies)
        stage = stage.model_copy(update={"get_delivery_channel_configs": configs})
        if not configs.usable:
            return stage
        to_send_on = [c.channel for c in configs.configs if c.action == ChannelPreference.SEND]
        results = await asyncio.gather(*(self._prepare_channel(nid, operation, entry, c) for c in to_send_on))
        prepare = PrepareToSendNotificationResult.of(list(results), policies.cannot_prepare_action)
        return stage.model_copy(update={"prepare": prepare})

    async def _get_audience(self, operation: SendNotificationToEntityOp) -> GetAudienceResult:
        """The entity as the directory has it now; an unknown entity, or an entry that cannot be read, is a reported
        failure, not an error."""
        entry = await entry_or_reason(self._directory, operation.entity_id)
        if isinstance(entry, str):
            return GetAudienceResult(audience=None, failures=[Failure(reason=entry)])
        return GetAudienceResult(audience=entry)

    async def _prepare_channel(
        self, nid: str, operation: SendNotificationToEntityOp, audience: DirectoryEntry, channel: Channel
    ) -> PrepareToSendOnChannelResult:
        return await _or_reported(
            PREPARE_TO_SEND_ON_CHANNEL.name,
            nid,
            self.prepare_to_send_on_channel(
                PrepareToSendOnChannelOp(notification_id=nid, operation=operation, audience=audience, channel=channel)
            ),
            lambda reason: PrepareToSendOnChannelResult(
                channel=channel, instructions=[], failures=[Failure(reason=reason)]
            ),
        )

    @activity.defn(name=RECORD_REQUESTED.name)
    async def record_requested(self, request: NotificationRequest) -> SagaPolicies:
        """Take up the client's operation and create the aggregate with `SendNotificationRequestedEvent`. Returns
        the worker's policies, which the saga keeps for the rest of its life."""
        try:
            await _run_if_available(
                self._client_operation_handling, request.client_operation_record_id, SEND_NOTIFICATION_CONCERN
            )
        except NoSuchRecord as error:
            raise RequestNotFound(request, self._settings) from error
        event = SendNotificationRequestedEvent(
            notification_id=request.notification_id, timestamp_utc=utc_now(), operation=request.operation
        )
        await self._events.put(
            request.notification_id,
            event,
            tags=notification_tags(request.notification_id, request.operation),
            strategy=ExistingRecordStrategy.DO_NOT_WRITE_IF_FOUND_BY_ID,
        )
        return self._settings.saga_policies()

    @activity.defn(name=PREPARE_TO_SEND_ON_CHANNEL.name)
    async def prepare_to_send_on_channel(self, op: PrepareToSendOnChannelOp) -> PrepareToSendOnChannelResult:
        """Compose the channel's operation, with a channel-operation id issued by the channel's operation stream;
        or report why it cannot be composed."""
        handler = CHANNEL_HANDLERS[op.channel]
        try:
            channel_operation_id = await self._channel_operations[op.channel].next_unique_id()
            operation, recipient_tags = handler.compose(op, channel_operation_id, self._settings)
        except (CannotPrepare, ValidationError) as error:  # a request or an entry that today's rules refuse
            said = str(error) if isinstance(error, CannotPrepare) else validation_message(error)
            return PrepareToSendOnChannelResult(
                channel=op.channel, instructions=[], failures=[Failure(reason=f"{op.channel}: cannot be sent: {said}")]
            )
        instruction = ChannelOperationInstruction(
            operation=operation,
            monitoring_info=ChannelOperationMonitoringInfo(
                channel_operation_id=channel_operation_id,
                succeeded_event_type=handler.succeeded_event.__name__,
                failed_event_type=handler.failed_event.__name__,
            ),
            tags=[tag(TagName.NOTIFICATION_ID, op.notification_id), *recipient_tags],
        )
        return PrepareToSendOnChannelResult(channel=op.channel, instructions=[instruction])

    async def _record_prepared(
        self, event: PrepareToSendNotificationEvent, operation: SendNotificationToEntityOp
    ) -> PreparedSaga | None:
        """Record how preparing ended; if there is something to send, put the saga first, then each channel's
        operation. Returns the saga and the operations' records, or None when there is nothing to send."""
        nid = event.notification_id
        tags = notification_tags(nid, operation)
        await self._record_event(event, operation)
        if event.prepare is None or not event.prepare.channels_to_send_on:
            return None
        instructions = event.prepare.instructions()
        saga_op = ProcessSendNotificationSagaOp(
            notification_id=nid,
            channel_operations={
                c: [i.monitoring_info for i in instructions if i.operation.delivery_channel == c]
                for c in event.prepare.channels_to_send_on
            },
        )
        saga = await self._sagas.put(
            nid,
            ExecuteOpRequestedEvent(id=nid, operation=saga_op, timestamp_utc=event.timestamp_utc),
            tags=tags,
            strategy=ExistingRecordStrategy.DO_NOT_WRITE_IF_FOUND_BY_ID,
        )
        await _run_if_available(self._saga_handling, saga.record_internal_id, SAGA_CONCERN)
        operations = await self._put_channel_operations(instructions)
        return PreparedSaga(saga_record_id=saga.record_internal_id, operations=operations)

    @activity.defn(name=PUT_CHANNEL_OPERATIONS.name)
    async def put_channel_operations(
        self, instructions: list[ChannelOperationInstruction]
    ) -> list[ChannelOperationRef]:
        """Put more channel operations of a saga that runs (a fallback) in their streams."""
        return await self._put_channel_operations(instructions)

    async def _record_event(self, event: NotificationEvent, operation: SendNotificationToEntityOp) -> None:
        """Put a stage's event once (by id and type), tagged like every record of the notification."""
        nid = event.notification_id
        await self._events.put(
            nid,
            event,
            type=event.record_type,
            tags=notification_tags(nid, operation),
            strategy=ExistingRecordStrategy.DO_NOT_WRITE_IF_FOUND_BY_ID_AND_TYPE,
        )

    async def _put_channel_operations(
        self, instructions: list[ChannelOperationInstruction]
    ) -> list[ChannelOperationRef]:
        refs = []
        for instruction in instructions:
            channel_operation_id = instruction.monitoring_info.channel_operation_id
            put = await self._channel_operations[instruction.operation.delivery_channel].put(
                channel_operation_id,
                ExecuteOpRequestedEvent(
                    id=str(channel_operation_id), operation=instruction.operation, timestamp_utc=utc_now()
                ),
                tags=instruction.tags,
                strategy=ExistingRecordStrategy.DO_NOT_WRITE_IF_FOUND_BY_ID,
            )
            refs.append(ChannelOperationRef(instruction=instruction, internal_record_id=put.record_internal_id))
        return refs

    @activity.defn(name=RECORD_OUTCOME.name)
    async def record_outcome(self, snapshot: NotificationSnapshot) -> None:
        """Record the attempt stage (if the saga got that far) and the event that ends the notification."""
        nid, view = snapshot.notification_id, snapshot.view
        timestamp = view.completed_at
        assert timestamp is not None, "a saga records its outcome once it has ended"
        if snapshot.attempt is not None:
            attempt = AttemptToSendNotificationEvent(
                notification_id=nid, timestamp_utc=timestamp, attempt=snapshot.attempt
            )
            await self._record_event(attempt, snapshot.operation)
        terminal = terminal_event_type(view.status)
        if terminal is not None:
            await self._record_event(
                terminal(notification_id=nid, timestamp_utc=timestamp, failures=view.outcome.failures),
                snapshot.operation,
            )

    @activity.defn(name=RECORD_ENDED.name)
    async def record_ended(self, ended: SagaEnded) -> None:
        """`record_outcome` and `record_saga_ended` in one step, for a saga that told nobody."""
        await self.record_outcome(ended.snapshot)
        await self.record_saga_ended(ended)

    @activity.defn(name=RECORD_ESCALATION_REQUESTED.name)
    async def record_escalation_requested(self, requested: EscalationRequested) -> PreparedEscalation:
        """Put the operation to tell the internal team in the internal operation stream, take it up, and put the
        channel operations that will tell them in their streams."""
        op = requested.operation
        put = await self._internal_operations.put(
            op.notification_id,
            ExecuteOpRequestedEvent(id=op.notification_id, operation=op, timestamp_utc=utc_now()),
            tags=[tag(TagName.NOTIFICATION_ID, op.notification_id)],
            strategy=ExistingRecordStrategy.DO_NOT_WRITE_IF_FOUND_BY_ID,
        )
        await _run_if_available(self._internal_operation_handling, put.record_internal_id, ESCALATION_CONCERN)
        operations = await self._put_channel_operations(requested.instructions)
        return PreparedEscalation(internal_operation_record_id=put.record_internal_id, operations=operations)

    @activity.defn(name=RECORD_SAGA_ENDED.name)
    async def record_saga_ended(self, ended: SagaEnded) -> None:
        """Record how telling the internal team went (if it was told), write the view and the snapshot, and
        complete the handling of the saga, of the client's operation and of the internal operation."""
        snapshot = ended.snapshot
        nid, view = snapshot.notification_id, snapshot.view
        tags = notification_tags(nid, snapshot.operation)
        if view.escalation is not None:
            told = FailedNotificationSentToInternalTeamEvent(
                notification_id=nid, timestamp_utc=view.completed_at, escalation=view.escalation
            )
            await self._record_event(told, snapshot.operation)
        await self._views.put(nid, view, tags=tags, strategy=ExistingRecordStrategy.PRUNE_IF_FOUND_BY_ID)
        await self._snapshots.put(nid, snapshot, tags=tags, strategy=ExistingRecordStrategy.PRUNE_IF_FOUND_BY_ID)
        if ended.saga_record_id is not None:
            await _complete_if_running(self._saga_handling, ended.saga_record_id, SAGA_CONCERN, view.status)
        if ended.internal_operation_record_id is not None:
            assert view.escalation is not None
            await _complete_if_running(
                self._internal_operation_handling,
                ended.internal_operation_record_id,
                ESCALATION_CONCERN,
                view.escalation.status,
            )
        await _complete_if_running(
            self._client_operation_handling, ended.client_operation_record_id, SEND_NOTIFICATION_CONCERN, view.status
        )


async def _or_reported(step: str, nid: str, running: Awaitable[T], failed: Callable[[str], T]) -> T:
    """A part of the prepare step whose failure, unless a retry may fix it, is a reported failure of its stage, named
    by the part (`step`), as `activities.failures` names a step's."""
    try:
        return await running
    except TRANSIENT:
        raise
    except Exception as error:
        return failed(failed_for_good(step, nid, error))
