"""The notification saga: one workflow per notification, its workflow id the notification id.

A scheduled saga records the request (and reads the worker's policies) and waits until the notification's time.
Then one step (`PREPARE_NOTIFICATION`) records the request if it is not yet, gets the audience and its delivery
channel configs, prepares each channel, records the prepare stage with the saga and its channel operations, and
takes each Slack message's turn. The saga sends on every prepared channel at once (each after its turn, with its
deadline and retry policy, on its channel's task queue) and falls back to the entity's fallback channel if a
preferred one failed. It ends in one step that records the outcome, the view and the snapshot (`RECORD_ENDED`), or,
when the outcome calls for telling the internal team, records the outcome, tells the team, then records the rest.
Until it starts sending it can be cancelled. Its search attributes are set when it is started (`client.start_saga`)
and upserted once, as it ends (`search.at_end`): one event of its history, not one per status. The code here only
decides; activities do all the I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, FailureError, RetryState
from temporalio.workflow import ActivityCancellationType, ActivityHandle

with workflow.unsafe.imports_passed_through():
    import metrics
    from activities.contract import (
        PREPARE_NOTIFICATION,
        PREPARE_TO_SEND_ON_CHANNEL,
        PUT_CHANNEL_OPERATIONS,
        RECORD_ENDED,
        RECORD_ESCALATION_REQUESTED,
        RECORD_NOT_SENT,
        RECORD_OUTCOME,
        RECORD_REQUESTED,
        RECORD_SAGA_ENDED,
        SEND,
        STEP_FAILED_FOR_GOOD,
        WAIT_FOR_SLACK_TURN,
        Activity,
        channel_task_queue,
    )
    from domain import (
        CONFIGS_OUTCOMES,
        AttemptToSendNotificationResult,
        Channel,
        ChannelOperation,
        ChannelOperationFailure,
        ChannelOperationOutcome,
        ChannelOperationOutcomeInfo,
        ChannelOperationRef,
        ChannelOutcome,
        ChannelPolicy,
        ChannelPreference,
        DirectoryEntry,
        EscalationRequested,
        EscalationStatus,
        EscalationView,
        Failure,
        NotificationOutcome,
        NotificationRequest,
        NotificationSnapshot,
        NotificationStatus,
        NotificationView,
        PrepareNotificationOp,
        PrepareToSendNotificationEvent,
        PrepareToSendNotificationOutcome,
        PrepareToSendOnChannelOp,
        PrepareToSendOnChannelResult,
        SagaEnded,
        SagaPolicies,
        SendFailedNotificationToInternalTeamOp,
        SendNotificationToEntityOp,
    )
    from workflows import search
    from workflows.view import (
        ChannelChange,
        changed_channels,
        escalation,
        final_status,
        first_status,
        not_prepared,
        reasons,
        with_outcome,
        with_prepare_stage,
    )

I = TypeVar("I")  # noqa: E741 - an activity's input, beside O for its result
O = TypeVar("O")  # noqa: E741

STEP_TIMEOUT = timedelta(seconds=30)
"""How long one attempt at a step (a local activity) may take."""
STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30), maximum_attempts=10
)
"""Steps whose failure is a reported failure of their stage (preparing a fallback's or the internal team's channel)."""
RECORD_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
"""Steps that record what happened: retried, while the store cannot be used, until it takes the record (a step
that fails in a way no retry fixes ends the saga instead: `activities.failures`)."""
CANCELLED = "cancelled before it was delivered"


@workflow.defn(name="NotificationSaga")
class NotificationSaga:
    @workflow.init
    def __init__(self, request: NotificationRequest) -> None:
        op = request.operation
        self._view = NotificationView(
            id=request.notification_id,
            status=first_status(op, workflow.now()),
            entity_id=op.entity_id,
            subject=op.subject,
            outcome=NotificationOutcome(),
            requested_at=workflow.now(),
            send_at=op.send_at,
        )
        self._cancel_requested = False
        self._sent = False
        """Whether every send (the fallback's too) has ended: then it is too late to cancel."""
        self._sends: dict[tuple[Channel, int], ActivityHandle[ChannelOperationOutcomeInfo]] = {}
        """The sends under way, by channel and channel-operation id: a cancel stops their retries."""
        self._cancelled_sends: set[tuple[Channel, int]] = set()
        self._policies: SagaPolicies | None = None
        self._turn_waits: dict[int, float] = {}
        """Seconds each channel operation (by id) waits for its turn, as taken while preparing."""

    @workflow.query(name="status")
    def status(self) -> NotificationView:
        return self._view

    @workflow.update(name="cancel")
    def cancel(self) -> None:
        """Cancel the notification, until every send has ended: what waits for its time is not sent, what waits for
        a retry is not tried again, and an attempt under way is waited for (what it delivered stays delivered)."""
        self._cancel_requested = True
        for send in self._sends.values():
            send.cancel()

    @cancel.validator
    def _cancellable(self) -> None:
        if self._cancel_requested:
            raise ValueError(f"notification {self._view.id} is being cancelled already")
        if self._sent:
            raise ValueError(f"notification {self._view.id} has finished sending: too late to cancel")

    @workflow.run
    async def run(self, request: NotificationRequest) -> NotificationView:
        try:
            return await self._saga(request)
        except (ActivityError, ApplicationError) as error:  # a local activity's failure may come unwrapped
            bug = _failed_for_good(error)
            if bug is None:
                raise
            # A step hit a bug or bad data, which no retry fixes: the saga ends here, with the reason, in its result
            # (the store may not take the record of it). What was delivered stays delivered: the status says so,
            # and a channel still pending or sending counts as not delivered.
            self._add_outcome(failures=[Failure(reason=bug.message)])
            self._ended()
            return self._view

    async def _saga(self, request: NotificationRequest) -> NotificationView:
        nid, operation = request.notification_id, request.operation
        if operation.send_at is not None or self._cancel_requested:
            self._policies = await self._record(RECORD_REQUESTED, request)
        if operation.send_at is not None:
            wait = max(operation.send_at - workflow.now(), timedelta(0))
            try:
                await workflow.wait_condition(lambda: self._cancel_requested, timeout=wait)
            except TimeoutError:
                pass
        if self._cancel_requested:
            return await self._end(request)
        self._update(status=NotificationStatus.PENDING)

        prepared = await self._record(
            PREPARE_NOTIFICATION, PrepareNotificationOp(request=request, policies=self._policies)
        )
        self._policies, stage, saga = prepared.policies, prepared.stage, prepared.saga
        self._turn_waits = prepared.turn_waits
        self._view = with_prepare_stage(self._view, stage)
        outcomes = await self._send_all(saga.operations(stage)) if saga else []
        audience = stage.get_audience.audience
        if audience is not None and not _stopped_by_policy(stage) and not self._cancel_requested:
            outcomes += await self._fall_back(nid, operation, audience, outcomes)
        self._sent = True
        if not outcomes:
            return await self._end(request)
        attempt = AttemptToSendNotificationResult(channel_outcomes=outcomes)
        self._add_outcome(
            attempt=attempt.outcome,
            failures=[Failure(reason=f"{o.channel}: {o.reason}", channel=o.channel) for o in outcomes if o.reason],
        )
        return await self._end(request, attempt, saga.saga_record_id if saga else None)

    # -- stages -----------------------------------------------------------------------------------------------

    async def _prepare_channel(
        self, nid: str, operation: SendNotificationToEntityOp, audience: DirectoryEntry, channel: Channel
    ) -> PrepareToSendOnChannelResult:
        return await self._step(
            PREPARE_TO_SEND_ON_CHANNEL,
            PrepareToSendOnChannelOp(notification_id=nid, operation=operation, audience=audience, channel=channel),
            on_error=lambda reason: PrepareToSendOnChannelResult(
                channel=channel, instructions=[], failures=[Failure(reason=reason)]
            ),
        )

    async def _send_all(
        self, refs: Sequence[ChannelOperationRef], audience: DirectoryEntry | None = None, fallback: bool = False
    ) -> list[ChannelOperationOutcomeInfo]:
        self._update(status=NotificationStatus.SENDING)
        self._set_channels(
            {
                ref.instruction.operation.delivery_channel: ChannelChange(ChannelOutcome.SENDING, None, ref)
                for ref in refs
            },
            audience,
            fallback,
        )
        ended = await asyncio.gather(*(self._send_shown(ref) for ref in refs), return_exceptions=True)
        failed = [e for e in ended if isinstance(e, BaseException)]
        if failed:  # every send has ended (no message goes out after the saga does), then the first failure counts
            raise failed[0]
        return [o for o in ended if not isinstance(o, BaseException)]

    async def _send_shown(self, ref: ChannelOperationRef) -> ChannelOperationOutcomeInfo:
        """`_send`, and the channel's view as soon as it has ended."""
        outcome = await self._send(ref)
        cancelled = (outcome.channel, outcome.channel_operation_id) in self._cancelled_sends
        self._set_channels({outcome.channel: ChannelChange.ended(outcome, cancelled)})
        return outcome

    async def _send(self, ref: ChannelOperationRef) -> ChannelOperationOutcomeInfo:
        """Send on the operation's channel; if that fails for good, have the channel's handler record it."""
        assert self._policies is not None
        channel = ref.instruction.operation.delivery_channel
        policy = self._policies.channels[channel]
        deadline = timedelta(seconds=policy.deadline_seconds)
        key = (channel, ref.instruction.operation.channel_operation_id)
        wait = timedelta(seconds=await self._turn(ref))
        if wait > timedelta(0):  # a durable timer: the wait counts against no deadline
            try:
                await workflow.wait_condition(lambda: self._cancel_requested and not self._sent, timeout=wait)
            except TimeoutError:
                pass
        if self._cancel_requested and not self._sent:  # cancelled before this send began
            self._cancelled_sends.add(key)
            return await self._record(
                RECORD_NOT_SENT[channel], ChannelOperationFailure(operation=ref, reason=CANCELLED)
            )
        attempt_timeout = policy.attempt_timeout_seconds + _transfer_seconds(ref.instruction.operation, policy)
        send: ActivityHandle[ChannelOperationOutcomeInfo] = workflow.start_activity(
            SEND[channel].name,
            ref,
            result_type=SEND[channel].result,
            task_queue=channel_task_queue(workflow.info().task_queue, channel),
            schedule_to_close_timeout=deadline,
            start_to_close_timeout=min(timedelta(seconds=attempt_timeout), deadline),
            heartbeat_timeout=timedelta(seconds=policy.heartbeat_timeout_seconds),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=policy.initial_retry_seconds),
                backoff_coefficient=2.0,
                maximum_interval=timedelta(seconds=policy.maximum_retry_seconds),
            ),
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        self._sends[key] = send
        try:
            return await send
        except ActivityError as error:
            last = error.cause.details if isinstance(error.cause, ApplicationError) else ()
            cancelled = self._cancel_requested and (  # not tried again because of the cancel
                isinstance(error.cause, CancelledError) or error.retry_state == RetryState.CANCEL_REQUESTED
            )
            if cancelled:
                self._cancelled_sends.add(key)
            failure = ChannelOperationFailure(
                operation=ref,
                reason=CANCELLED if cancelled else _reason(error, deadline),
                last_response=last[0] if last and isinstance(last[0], dict) else None,
            )
            return await self._record(RECORD_NOT_SENT[channel], failure)
        finally:
            del self._sends[key]

    async def _turn(self, ref: ChannelOperationRef) -> float:
        """The seconds the operation waits for its turn on its channel: as taken while preparing, or taken now (a
        Slack message of a fallback or of an escalation); only Slack is paced per saga."""
        seconds = self._turn_waits.get(ref.instruction.operation.channel_operation_id)
        if seconds is not None:
            return seconds
        if ref.instruction.operation.delivery_channel == Channel.SLACK:
            return await self._record(WAIT_FOR_SLACK_TURN, ref)
        return 0.0

    async def _fall_back(
        self,
        nid: str,
        operation: SendNotificationToEntityOp,
        audience: DirectoryEntry,
        outcomes: list[ChannelOperationOutcomeInfo],
    ) -> list[ChannelOperationOutcomeInfo]:
        """Deliver on the entity's fallback channel when a preferred one failed, or could not be used or prepared."""
        fallback = audience.fallback
        failed = any(o.outcome == ChannelOperationOutcome.FAILED for o in outcomes) or any(
            c.outcome in (ChannelOutcome.NOT_PREPARED, ChannelOutcome.SUPPRESSED) for c in self._view.channels.values()
        )
        if fallback is None or not failed:
            return []
        result = await self._prepare_channel(nid, operation, audience, fallback)
        if not result.prepared:
            reason = reasons(result.failures)
            self._set_channels({fallback: ChannelChange(not_prepared(result), reason)}, audience, fallback=True)
            self._add_outcome(failures=[Failure(reason=f"{fallback} (fallback): {reason}")])
            return []
        refs = await self._record(PUT_CHANNEL_OPERATIONS, result.instructions)
        return await self._send_all(refs, audience, fallback=True)

    def _ended(self) -> None:
        """The view's final status and completion time, in the search attributes and counted in the metrics (`metrics`;
        not again on replay)."""
        self._update(status=final_status(self._view.channels, self._cancel_requested), completed_at=workflow.now())
        workflow.upsert_search_attributes(search.at_end(self._view))
        took = (workflow.now() - self._view.requested_at).total_seconds()
        metrics.notification_ended(workflow.metric_meter(), self._view.status, max(took, 0.0))

    async def _end(
        self,
        request: NotificationRequest,
        attempt: AttemptToSendNotificationResult | None = None,
        saga_record_id: int | None = None,
    ) -> NotificationView:
        self._ended()
        snapshot = NotificationSnapshot(
            notification_id=request.notification_id,
            operation=request.operation,
            attempt=attempt,
            view=self._view,
        )
        ended = SagaEnded(
            snapshot=snapshot,
            client_operation_record_id=request.client_operation_record_id,
            saga_record_id=saga_record_id,
        )
        assert self._policies is not None
        team = self._policies.internal_team
        if team is None or self._view.status not in self._policies.escalate_on:
            await self._record(RECORD_ENDED, ended)
            return self._view
        await self._record(RECORD_OUTCOME, snapshot)
        internal_operation_record_id = await self._escalate(team)
        snapshot = snapshot.model_copy(update={"view": self._view})
        await self._record(
            RECORD_SAGA_ENDED,
            ended.model_copy(
                update={"snapshot": snapshot, "internal_operation_record_id": internal_operation_record_id}
            ),
        )
        return self._view

    async def _escalate(self, team: DirectoryEntry) -> int:
        """Tell the internal team, on its channels, that the notification ended as the policy escalates. Whatever
        happens to that is recorded; it is never escalated itself."""
        view, status = self._view, self._view.status
        metrics.escalated(workflow.metric_meter())
        subject, body = escalation(view)
        operation = SendNotificationToEntityOp(entity_id=team.id, subject=subject, body=body)
        channels = [c for c, p in team.channels.items() if p == ChannelPreference.SEND]
        results = await asyncio.gather(*(self._prepare_channel(view.id, operation, team, c) for c in channels))
        told = changed_channels(
            {},
            {
                r.channel: ChannelChange(ChannelOutcome.SENDING if r.prepared else not_prepared(r), reasons(r.failures))
                for r in results
            },
            team,
        )
        self._update(escalation=EscalationView(status=EscalationStatus.SENDING, channels=told))
        prepared = await self._record(
            RECORD_ESCALATION_REQUESTED,
            EscalationRequested(
                operation=SendFailedNotificationToInternalTeamOp(
                    notification_id=view.id, status=status, failures=view.outcome.failures
                ),
                instructions=[i for r in results for i in r.instructions],
            ),
        )
        outcomes = await asyncio.gather(*(self._send(ref) for ref in prepared.operations))
        told = changed_channels(told, {o.channel: ChannelChange.ended(o) for o in outcomes})
        sent = any(o.outcome == ChannelOperationOutcome.SUCCEEDED for o in outcomes)
        self._update(
            escalation=EscalationView(status=EscalationStatus.SENT if sent else EscalationStatus.FAILED, channels=told)
        )
        return prepared.internal_operation_record_id

    # -- the view ------------------------------------------------------------------------------------------------

    def _update(self, **fields: Any) -> None:
        self._view = self._view.model_copy(update=fields)

    def _set_channels(
        self,
        changes: dict[Channel, ChannelChange],
        audience: DirectoryEntry | None = None,
        fallback: bool = False,
    ) -> None:
        self._update(channels=changed_channels(self._view.channels, changes, audience, fallback))

    def _add_outcome(self, failures: Sequence[Failure] = (), **stages: Any) -> None:
        self._view = with_outcome(self._view, failures, **stages)

    # -- running the handlers' steps ---------------------------------------------------------------------------

    async def _step(self, activity: Activity[I, O], arg: I, on_error: Callable[[str], O]) -> O:
        """A step as a local activity; one that failed every attempt becomes a reported failure of its stage."""
        try:
            return await self._local(activity, arg, STEP_RETRY)
        except (ActivityError, ApplicationError) as error:  # a local activity's failure may come unwrapped
            return on_error(_reason(error))

    async def _record(self, activity: Activity[I, O], arg: I) -> O:
        """A step that records, as a local activity retried until it has."""
        return await self._local(activity, arg, RECORD_RETRY)

    async def _local(self, activity: Activity[I, O], arg: I, retry: RetryPolicy) -> O:
        result: O = await workflow.execute_local_activity(
            activity.name, arg, result_type=activity.result, start_to_close_timeout=STEP_TIMEOUT, retry_policy=retry
        )
        return result


BASE64_LINE = (57, 78)
"""How base64 carries a file in an email: each 57 bytes as a line of 76 characters and its CRLF."""


def _transfer_seconds(operation: ChannelOperation, policy: ChannelPolicy) -> float:
    """The time the operation's files take to carry at the policy's slowest rate, as they go: an email's in base64,
    Slack's as they are. An attempt is given it beyond its timeout."""
    sizes = [a.size for a in operation.attachments]
    if operation.delivery_channel == Channel.EMAIL:
        read, written = BASE64_LINE
        sizes = [-(-size // read) * written for size in sizes]
    return sum(sizes) / policy.transfer_bytes_per_second


def _failed_for_good(error: BaseException | None) -> ApplicationError | None:
    """The failure, in `error` or among its causes, of a step that no retry fixes, if there is one."""
    while isinstance(error, FailureError):
        if isinstance(error, ApplicationError) and error.type == STEP_FAILED_FOR_GOOD:
            return error
        error = error.cause
    return None


def _stopped_by_policy(stage: PrepareToSendNotificationEvent) -> bool:
    """Whether a failure policy stopped every channel: then not even the fallback is tried."""
    configs, prepare = stage.get_delivery_channel_configs, stage.prepare
    if configs is not None and configs.outcome == CONFIGS_OUTCOMES.despite_failures:
        return True
    forced = PrepareToSendNotificationOutcome.COULD_NOT_PREPARE_BECAUSE_ONE_FORCED_ALL_TO_BE_DISCARDED
    return prepare is not None and prepare.outcome == forced


def _reason(error: ActivityError | ApplicationError, deadline: timedelta | None = None) -> str:
    cause = error.cause if isinstance(error, ActivityError) else error
    if isinstance(cause, ApplicationError) and cause.type and cause.type != STEP_FAILED_FOR_GOOD:
        said = f"{cause.type}: {cause.message}"
    else:
        said = str(cause)
    if deadline is not None and isinstance(error, ActivityError) and error.retry_state == RetryState.TIMEOUT:
        last = cause.message if isinstance(cause, FailureError) else said
        return f"no outcome within the {deadline.total_seconds():g} s deadline (the last attempt: {last})"
    return said
