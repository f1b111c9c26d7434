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
    Category,
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
    broadcast_tags,
    get_delivery_channel_configs,
    notification_tags,
    request_tags,
    tag,
    terminal_event_type,
    utc_now,
    validation_message,
)
from settings import Settings
from streams import (
    ExistingRecordStrategy,
    HandlingStatus,
    NoSuchRecord,
    StreamName,
    StreamStore,
)
from streams.directory import entry_or_reason
from streams.store import Move, Put, PutResult
from streams.suppressions import suppression

T = TypeVar("T")


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
        self._email_events = store.reader(StreamName.EMAIL_EVENT)
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
        self._steps = store.steps()

    @activity.defn(name=PREPARE_NOTIFICATION.name)
    async def prepare_notification(self, op: PrepareNotificationOp) -> PreparedNotification:
        """Every step up to sending, in one: run the prepare stage (or, on a retry after it was recorded, take the
        recorded stage: the same channel operations), then record in one write the request (unless the saga has,
        being scheduled), how the stage ended, the saga and its channel operations; and take each operation's turn on
        its channel. Each write is idempotent. Getting the audience or preparing a channel that fails in a way no
        retry fixes is a reported failure of its stage, as when each was a step of its own; the store being
        unavailable fails the whole step, to be retried."""
        request = op.request
        nid, operation = request.notification_id, request.operation
        policies = op.policies or self._settings.saga_policies()
        taken, requested = ([], []) if op.policies else self._requested(request)
        records = await self._recorded_events.by_id(nid)
        recorded = next((r for r in records if r.type in PrepareToSendNotificationEvent.RECORD_TYPES), None)
        if recorded is not None:
            stage = recorded.object(PrepareToSendNotificationEvent)
        else:
            stage = await self._prepare_stage(nid, operation, policies)
        saga = await self._record_prepared(request, stage, taken, requested)
        waits = {
            ref.instruction.operation.channel_operation_id: await self._handlers[
                ref.instruction.operation.delivery_channel
            ].turn(ref)
            for ref in (saga.operations(stage) if saga else [])
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
        category = None
        if operation.category is not None:  # one configured since the request: its opt-outs still hold
            category = self._settings.categories().get(operation.category) or Category(name=operation.category)
        configs = get_delivery_channel_configs(entry, policies, category)
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
        await self._write(request, *self._requested(request))
        return self._settings.saga_policies()

    def _requested(self, request: NotificationRequest) -> tuple[list[Move], list[Put]]:
        """The take-up of the client's operation, and the event that creates the aggregate."""
        move = self._client_operation_handling.move(
            request.client_operation_record_id, SEND_NOTIFICATION_CONCERN, HandlingStatus.RUNNING
        )
        event = SendNotificationRequestedEvent(
            notification_id=request.notification_id, timestamp_utc=utc_now(), operation=request.operation
        )
        put = self._events.record(
            request.notification_id,
            event,
            tags=request_tags(request.notification_id, request.operation),
            strategy=ExistingRecordStrategy.DO_NOT_WRITE_IF_FOUND_BY_ID,
        )
        return [move], [put]

    async def _write(self, request: NotificationRequest, taken: list[Move], puts: list[Put]) -> list[PutResult]:
        """A step's writes (`StreamStore.write`), the moves `taken` before the puts; a request this store does not
        have is `RequestNotFound`."""
        try:
            return (await self._steps.write(puts, before=taken)).puts
        except NoSuchRecord as error:
            raise RequestNotFound(request, self._settings) from error

    @activity.defn(name=PREPARE_TO_SEND_ON_CHANNEL.name)
    async def prepare_to_send_on_channel(self, op: PrepareToSendOnChannelOp) -> PrepareToSendOnChannelResult:
        """Compose the channel's operation, with a channel-operation id issued by the channel's operation stream;
        or report why it cannot be composed, or that its address is suppressed."""
        handler = CHANNEL_HANDLERS[op.channel]
        if op.channel == Channel.EMAIL and op.audience.email is not None:
            held = await suppression(self._email_events, op.audience.email)
            if held is not None:
                failure = Failure(reason=f"email: not sent: {held.said()}", channel=Channel.EMAIL)
                return PrepareToSendOnChannelResult(
                    channel=op.channel, instructions=[], failures=[failure], suppressed=True
                )
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
        self,
        request: NotificationRequest,
        event: PrepareToSendNotificationEvent,
        taken: list[Move],
        puts: list[Put],
    ) -> PreparedSaga | None:
        """Record how preparing ended, with `taken` and `puts` (the request's, unless the saga recorded it); if there is
        something to send, the saga (taken up) and each channel's operation too: one write. Returns the saga and the
        operations' records, or None when there is nothing to send."""
        nid, operation = event.notification_id, request.operation
        puts = [*puts, self._event(event, operation)]
        if event.prepare is None or not event.prepare.channels_to_send_on:
            await self._write(request, taken, puts)
            return None
        instructions = event.prepare.instructions()
        saga_op = ProcessSendNotificationSagaOp(
            notification_id=nid,
            channel_operations={
                c: [i.monitoring_info for i in instructions if i.operation.delivery_channel == c]
                for c in event.prepare.channels_to_send_on
            },
        )
        saga = self._sagas.record(
            nid,
            ExecuteOpRequestedEvent(id=nid, operation=saga_op, timestamp_utc=event.timestamp_utc),
            tags=notification_tags(nid, operation),
            strategy=ExistingRecordStrategy.DO_NOT_WRITE_IF_FOUND_BY_ID,
            take_up=SAGA_CONCERN,
        )
        operations = self._channel_operation_puts(instructions)
        written = await self._write(request, taken, [*puts, saga, *operations])
        saga_put, operation_puts = written[len(puts)], written[len(puts) + 1 :]
        return PreparedSaga(
            saga_record_id=saga_put.record_internal_id,
            operation_record_ids=[put.record_internal_id for put in operation_puts],
        )

    @activity.defn(name=PUT_CHANNEL_OPERATIONS.name)
    async def put_channel_operations(
        self, instructions: list[ChannelOperationInstruction]
    ) -> list[ChannelOperationRef]:
        """Put more channel operations of a saga that runs (a fallback) in their streams."""
        written = await self._steps.write(self._channel_operation_puts(instructions))
        return _refs(instructions, written.puts)

    def _event(self, event: NotificationEvent, operation: SendNotificationToEntityOp) -> Put:
        """A stage's event, put once (by id and type), tagged like every record of the notification."""
        nid = event.notification_id
        return self._events.record(
            nid,
            event,
            type=event.record_type,
            tags=notification_tags(nid, operation),
            strategy=ExistingRecordStrategy.DO_NOT_WRITE_IF_FOUND_BY_ID_AND_TYPE,
        )

    def _channel_operation_puts(self, instructions: list[ChannelOperationInstruction]) -> list[Put]:
        return [
            self._channel_operations[i.operation.delivery_channel].record(
                i.monitoring_info.channel_operation_id,
                ExecuteOpRequestedEvent(
                    id=str(i.monitoring_info.channel_operation_id), operation=i.operation, timestamp_utc=utc_now()
                ),
                tags=i.tags,
                strategy=ExistingRecordStrategy.DO_NOT_WRITE_IF_FOUND_BY_ID,
            )
            for i in instructions
        ]

    @activity.defn(name=RECORD_OUTCOME.name)
    async def record_outcome(self, snapshot: NotificationSnapshot) -> None:
        """Record the attempt stage (if the saga got that far) and the event that ends the notification."""
        await self._steps.write(self._outcome(snapshot))

    def _outcome(self, snapshot: NotificationSnapshot) -> list[Put]:
        nid, view = snapshot.notification_id, snapshot.view
        timestamp = view.completed_at
        assert timestamp is not None, "a saga records its outcome once it has ended"
        puts = []
        if snapshot.attempt is not None:
            attempt = AttemptToSendNotificationEvent(
                notification_id=nid, timestamp_utc=timestamp, attempt=snapshot.attempt
            )
            puts.append(self._event(attempt, snapshot.operation))
        terminal = terminal_event_type(view.status)
        if terminal is not None:
            puts.append(
                self._event(
                    terminal(notification_id=nid, timestamp_utc=timestamp, failures=view.outcome.failures),
                    snapshot.operation,
                )
            )
        return puts

    @activity.defn(name=RECORD_ENDED.name)
    async def record_ended(self, ended: SagaEnded) -> None:
        """`record_outcome` and `record_saga_ended` in one step (one write), for a saga that told nobody."""
        await self._steps.write(
            [*self._outcome(ended.snapshot), *self._saga_ended(ended)], after=self._completions(ended)
        )

    @activity.defn(name=RECORD_ESCALATION_REQUESTED.name)
    async def record_escalation_requested(self, requested: EscalationRequested) -> PreparedEscalation:
        """Put the operation to tell the internal team in the internal operation stream, take it up, and put the
        channel operations that will tell them in their streams: one write."""
        op = requested.operation
        internal = self._internal_operations.record(
            op.notification_id,
            ExecuteOpRequestedEvent(id=op.notification_id, operation=op, timestamp_utc=utc_now()),
            tags=[tag(TagName.NOTIFICATION_ID, op.notification_id)],
            strategy=ExistingRecordStrategy.DO_NOT_WRITE_IF_FOUND_BY_ID,
            take_up=ESCALATION_CONCERN,
        )
        operations = self._channel_operation_puts(requested.instructions)
        written = (await self._steps.write([internal, *operations])).puts
        return PreparedEscalation(
            internal_operation_record_id=written[0].record_internal_id,
            operations=_refs(requested.instructions, written[1:]),
        )

    @activity.defn(name=RECORD_SAGA_ENDED.name)
    async def record_saga_ended(self, ended: SagaEnded) -> None:
        """Record how telling the internal team went (if it was told), write the view and the snapshot, and
        complete the handling of the saga, of the client's operation and of the internal operation: one write."""
        await self._steps.write(self._saga_ended(ended), after=self._completions(ended))

    def _saga_ended(self, ended: SagaEnded) -> list[Put]:
        snapshot = ended.snapshot
        nid, view = snapshot.notification_id, snapshot.view
        tags = notification_tags(nid, snapshot.operation)
        puts = []
        if view.escalation is not None:
            told = FailedNotificationSentToInternalTeamEvent(
                notification_id=nid, timestamp_utc=view.completed_at, escalation=view.escalation
            )
            puts.append(self._event(told, snapshot.operation))
        view_tags = [*tags, *broadcast_tags(snapshot.operation)]  # a broadcast counts its notifications' views
        puts.append(self._views.record(nid, view, tags=view_tags, strategy=ExistingRecordStrategy.PRUNE_IF_FOUND_BY_ID))
        puts.append(
            self._snapshots.record(nid, snapshot, tags=tags, strategy=ExistingRecordStrategy.PRUNE_IF_FOUND_BY_ID)
        )
        return puts

    def _completions(self, ended: SagaEnded) -> list[Move]:
        """The completion of the handling of the saga, of the internal operation and of the client's operation, each
        if it is running (an earlier attempt of the step may have completed it)."""
        view = ended.snapshot.view
        moves = []
        if ended.saga_record_id is not None:
            moves.append(
                self._saga_handling.move(ended.saga_record_id, SAGA_CONCERN, HandlingStatus.COMPLETED, view.status)
            )
        if ended.internal_operation_record_id is not None:
            assert view.escalation is not None
            moves.append(
                self._internal_operation_handling.move(
                    ended.internal_operation_record_id,
                    ESCALATION_CONCERN,
                    HandlingStatus.COMPLETED,
                    view.escalation.status,
                )
            )
        moves.append(
            self._client_operation_handling.move(
                ended.client_operation_record_id, SEND_NOTIFICATION_CONCERN, HandlingStatus.COMPLETED, view.status
            )
        )
        return moves


def _refs(instructions: list[ChannelOperationInstruction], puts: list[PutResult]) -> list[ChannelOperationRef]:
    """Each channel operation's instruction with the record it was put as."""
    return [
        ChannelOperationRef(instruction=i, internal_record_id=put.record_internal_id)
        for i, put in zip(instructions, puts, strict=True)
    ]


async def _or_reported(step: str, nid: str, running: Awaitable[T], failed: Callable[[str], T]) -> T:
    """A part of the prepare step whose failure, unless a retry may fix it, is a reported failure of its stage, named
    by the part (`step`), as `activities.failures` names a step's."""
    try:
        return await running
    except TRANSIENT:
        raise
    except Exception as error:
        return failed(failed_for_good(step, nid, error))
