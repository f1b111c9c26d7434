"""The notification saga: one workflow per notification, its workflow id the notification id.

It records the request, gets the audience and its delivery channel configs, prepares each channel, records the
prepare outcome with the saga and channel operations, sends on every prepared channel at once, waits for every
outcome, and records how it ended. The code here only decides; activities do all the I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities import CHANNEL_HANDLERS
    from activities.notification import NotificationActivities
    from domain import (
        AttemptToSendNotificationResult,
        CannotPrepareToSendOnChannelAction,
        Channel,
        ChannelOperationFailure,
        ChannelOperationOutcome,
        ChannelOperationOutcomeInfo,
        ChannelOperationRef,
        ChannelOutcome,
        ChannelPreference,
        ChannelView,
        DirectoryEntry,
        Failure,
        GetAudienceResult,
        NotificationOutcome,
        NotificationRequest,
        NotificationSnapshot,
        NotificationStatus,
        NotificationView,
        PrepareStageEnded,
        PrepareToSendNotificationEvent,
        PrepareToSendNotificationResult,
        PrepareToSendOnChannelOp,
        PrepareToSendOnChannelResult,
        SagaEnded,
        get_delivery_channel_configs,
    )

T = TypeVar("T")

STORE_ACTIVITY = dict(
    start_to_close_timeout=timedelta(seconds=30),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30), maximum_attempts=10
    ),
)
"""Steps whose failure is a reported failure of their stage (getting the audience, preparing a channel)."""
RECORD_ACTIVITY = dict(
    start_to_close_timeout=timedelta(seconds=30),
    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)),
)
"""Steps that record what happened: retried until the store takes the record, however long that is."""
CHANNEL_ACTIVITY = dict(
    start_to_close_timeout=timedelta(seconds=60),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=60), maximum_attempts=5
    ),
)


@workflow.defn(name="NotificationSaga")
class NotificationSaga:
    @workflow.init
    def __init__(self, request: NotificationRequest) -> None:
        self._view = NotificationView(
            id=request.notification_id,
            status=NotificationStatus.PENDING,
            entity_id=request.operation.entity_id,
            subject=request.operation.subject,
            outcome=NotificationOutcome(),
            requested_at=workflow.now(),
        )

    @workflow.query(name="status")
    def status(self) -> NotificationView:
        return self._view

    @workflow.run
    async def run(self, request: NotificationRequest) -> NotificationView:
        nid, operation = request.notification_id, request.operation
        await self._store(NotificationActivities.record_requested, request)

        audience = await self._store(
            NotificationActivities.get_audience,
            operation,
            on_error=lambda reason: GetAudienceResult(audience=None, failures=[Failure(reason=reason)]),
        )
        prepare_stage = PrepareToSendNotificationEvent(
            notification_id=nid, timestamp_utc=workflow.now(), get_audience=audience
        )
        self._update_outcome(get_audience=audience.outcome, failures=audience.failures)
        if audience.usable:
            assert audience.audience is not None
            prepare_stage = await self._prepare(nid, request, audience.audience, prepare_stage)

        prepared = await self._store(
            NotificationActivities.record_prepared, PrepareStageEnded(operation=operation, event=prepare_stage)
        )
        if prepared is None:
            return await self._end(request, prepare_stage, None, None)

        self._set_channels(
            {
                ref.instruction.operation.delivery_channel: (ChannelOutcome.SENDING, None, ref)
                for ref in prepared.operations
            }
        )
        self._view = self._view.model_copy(update={"status": NotificationStatus.SENDING})
        outcomes = await asyncio.gather(*(self._send(ref) for ref in prepared.operations))
        attempt = AttemptToSendNotificationResult(channel_outcomes=list(outcomes))
        self._set_channels(
            {
                o.channel: (
                    ChannelOutcome.SUCCEEDED
                    if o.outcome == ChannelOperationOutcome.SUCCEEDED
                    else ChannelOutcome.FAILED,
                    o.reason,
                    None,
                )
                for o in outcomes
            }
        )
        self._update_outcome(
            attempt=attempt.outcome, failures=[Failure(reason=f"{o.channel}: {o.reason}") for o in outcomes if o.reason]
        )
        return await self._end(request, prepare_stage, attempt, prepared.saga_record_id)

    async def _prepare(
        self,
        nid: str,
        request: NotificationRequest,
        audience: DirectoryEntry,
        stage: PrepareToSendNotificationEvent,
    ) -> PrepareToSendNotificationEvent:
        configs = get_delivery_channel_configs(audience)
        self._set_channels(
            {
                c.channel: (
                    ChannelOutcome.PENDING if c.action == ChannelPreference.SEND else ChannelOutcome.OPTED_OUT,
                    None,
                    None,
                )
                for c in configs.configs
            },
            audience,
        )
        self._update_outcome(get_delivery_channel_configs=configs.outcome, failures=configs.failures)
        stage = stage.model_copy(update={"get_delivery_channel_configs": configs})
        if not configs.usable:
            return stage

        to_send_on = [c.channel for c in configs.configs if c.action == ChannelPreference.SEND]
        results = await asyncio.gather(
            *(
                self._store(
                    NotificationActivities.prepare_to_send_on_channel,
                    PrepareToSendOnChannelOp(
                        notification_id=nid, operation=request.operation, audience=audience, channel=c
                    ),
                    on_error=lambda reason, c=c: PrepareToSendOnChannelResult(
                        channel=c, instructions=[], failures=[Failure(reason=reason)]
                    ),
                )
                for c in to_send_on
            )
        )
        prepare = PrepareToSendNotificationResult.of(
            list(results), CannotPrepareToSendOnChannelAction.CONTINUE_AND_ATTEMPT_PREPARING_TO_SEND_ON_NEXT_CHANNEL
        )
        self._set_channels(
            {
                r.channel: (ChannelOutcome.NOT_PREPARED, "; ".join(f.reason for f in r.failures) or None, None)
                for r in results
                if r.channel not in prepare.channels_to_send_on
            }
        )
        self._update_outcome(prepare=prepare.outcome, failures=[f for r in results for f in r.failures])
        return stage.model_copy(update={"prepare": prepare})

    async def _send(self, ref: ChannelOperationRef) -> ChannelOperationOutcomeInfo:
        """Send on the operation's channel; if that fails for good, have the channel's handler record it."""
        handler = CHANNEL_HANDLERS[ref.instruction.operation.delivery_channel]
        try:
            return await workflow.execute_activity_method(handler.send, ref, **CHANNEL_ACTIVITY)  # type: ignore[arg-type]
        except ActivityError as error:
            failure = ChannelOperationFailure(operation=ref, reason=_reason(error))
            return await workflow.execute_local_activity_method(
                handler.record_not_sent,
                failure,
                **RECORD_ACTIVITY,  # type: ignore[arg-type]
            )

    async def _end(
        self,
        request: NotificationRequest,
        prepare_stage: PrepareToSendNotificationEvent,
        attempt: AttemptToSendNotificationResult | None,
        saga_record_id: int | None,
    ) -> NotificationView:
        self._view = self._view.model_copy(update={"status": self._final_status(), "completed_at": workflow.now()})
        snapshot = NotificationSnapshot(
            notification_id=request.notification_id,
            operation=request.operation,
            prepare=prepare_stage,
            attempt=attempt,
            view=self._view,
        )
        await self._store(
            NotificationActivities.record_saga_ended,
            SagaEnded(
                snapshot=snapshot,
                client_operation_record_id=request.client_operation_record_id,
                saga_record_id=saga_record_id,
            ),
        )
        return self._view

    def _final_status(self) -> NotificationStatus:
        outcomes = [c.outcome for c in self._view.channels.values() if c.outcome != ChannelOutcome.OPTED_OUT]
        if self._view.channels and not outcomes:
            return NotificationStatus.OPTED_OUT
        if outcomes and all(o == ChannelOutcome.SUCCEEDED for o in outcomes):
            return NotificationStatus.SENT
        if ChannelOutcome.SUCCEEDED in outcomes:
            return NotificationStatus.PARTIALLY_SENT
        return NotificationStatus.FAILED

    def _set_channels(
        self,
        changes: dict[Channel, tuple[ChannelOutcome, str | None, ChannelOperationRef | None]],
        audience: DirectoryEntry | None = None,
    ) -> None:
        channels = dict(self._view.channels)
        for channel, (outcome, reason, ref) in changes.items():
            current = channels.get(channel) or ChannelView(
                address=CHANNEL_HANDLERS[channel].address(audience) if audience else None, outcome=outcome
            )
            update: dict[str, Any] = {"outcome": outcome, "reason": reason}
            if ref is not None:
                update["channel_operation_id"] = ref.instruction.operation.channel_operation_id
            channels[channel] = current.model_copy(update=update)
        self._view = self._view.model_copy(update={"channels": channels})

    def _update_outcome(self, failures: list[Failure] = [], **stages: Any) -> None:  # noqa: B006 - never mutated
        outcome = self._view.outcome
        self._view = self._view.model_copy(
            update={
                "outcome": outcome.model_copy(
                    update={**stages, "failures": [*outcome.failures, *(f.reason for f in failures)]}
                )
            }
        )

    async def _store(
        self,
        activity: Callable[[Any, Any], Awaitable[T]],
        arg: Any,
        on_error: Callable[[str], T] | None = None,
    ) -> T:
        """Run one of the notification handlers' steps as a local activity. Where `on_error` is given, a step that
        failed every attempt becomes a reported failure of its stage; a step that records is retried until it has."""
        if on_error is None:
            return await workflow.execute_local_activity_method(activity, arg, **RECORD_ACTIVITY)  # type: ignore[arg-type]
        try:
            return await workflow.execute_local_activity_method(activity, arg, **STORE_ACTIVITY)  # type: ignore[arg-type]
        except ActivityError as error:
            return on_error(_reason(error))


def _reason(error: ActivityError) -> str:
    cause = error.cause
    return f"{cause.__class__.__name__}: {cause}" if cause else str(error)
