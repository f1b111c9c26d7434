"""The broadcast saga: one workflow per broadcast, its workflow id the broadcast id.

It keeps the broadcast's recipients (its snapshot: a topic's members when it starts), then requests their
notifications a page at a time, each with a saga of its own, never more than `WINDOW` of them under way at once, so
that a large broadcast neither floods Temporal's queue nor holds back the notifications requested beside it. It goes
on as a new run (continue-as-new) every `STEPS_PER_RUN` steps, so that its history stays small however many
recipients it has, and ends once every notification has ended. The code here only decides; activities do the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.contract import (
        CANCEL_RECIPIENTS,
        COUNT_RECIPIENTS,
        RECORD_BROADCAST_ENDED,
        REQUEST_RECIPIENTS,
        SNAPSHOT_AUDIENCE,
        Activity,
    )
    from domain import RECIPIENTS_PAGE, BroadcastCounts, BroadcastPage, BroadcastRequest, BroadcastStopped

I = TypeVar("I")  # noqa: E741 - a step's input, beside O for its result
O = TypeVar("O")  # noqa: E741

STEP_TIMEOUT = timedelta(minutes=2)
"""How long one attempt at a step may take (a look, a page's requests and sagas: a few seconds)."""
PAGE_TIMEOUT = timedelta(hours=1)
"""How long one attempt at a page's step may take: at a pace (`NOTIFY_BROADCAST_RECIPIENTS_PER_SECOND`, shared by
every broadcast) its sagas' starts wait for their turns; its heartbeat says whether its worker is alive."""
STEP_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
"""Every step is retried until it succeeds: each finds what an earlier attempt wrote."""
WINDOW = 200
"""Notifications under way at most (requested, not ended): a page is requested only while there is room for all."""
STEPS_PER_RUN = 500
"""Steps (a page, a look) in one run before it goes on as a new one: a few thousand events at most."""
LOOK_EVERY = (timedelta(seconds=1), timedelta(seconds=10))
"""How often it looks at its notifications while it waits for them: never sooner than the first after the last
look, nor later than the second."""


@workflow.defn(name="BroadcastSaga")
class BroadcastSaga:
    def __init__(self) -> None:
        self._counts: BroadcastCounts | None = None
        self._steps = 0
        self._cancel_requested = False
        self._stopped: BroadcastStopped | None = None
        self._ended = False
        self._heartbeat_timeout = timedelta()

    @workflow.query(name="counts")
    def counts(self) -> BroadcastCounts | None:
        """Where its notifications were when it last looked."""
        return self._counts

    @workflow.update(name="cancel")
    async def cancel(self) -> BroadcastStopped:
        """Stop the broadcast: no more recipients are requested, and each of its notifications not sent yet is
        cancelled; what that stopped, once it has."""
        self._cancel_requested = True
        await workflow.wait_condition(lambda: self._stopped is not None)
        assert self._stopped is not None
        return self._stopped

    @cancel.validator
    def _cancellable(self) -> None:
        broadcast = f"broadcast {workflow.info().workflow_id}"
        if self._cancel_requested or self._stopped is not None:
            raise ApplicationError(f"{broadcast} is cancelled already: nothing changed")
        if self._ended:
            raise ApplicationError(f"{broadcast} has ended: nothing changed")

    @workflow.run
    async def run(self, request: BroadcastRequest) -> BroadcastCounts:
        self._heartbeat_timeout = timedelta(seconds=request.heartbeat_timeout_seconds)
        if request.snapshot is None:
            snapshot = await self._step(SNAPSHOT_AUDIENCE, request)
            request = request.model_copy(update={"snapshot": snapshot})
        assert request.snapshot is not None
        self._stopped = request.stopped
        while request.next_page < request.snapshot.pages and not self._cancelled:
            self._new_run_if_due(request)
            await self._under(request, WINDOW - RECIPIENTS_PAGE + 1)
            if self._cancelled:
                break
            page = BroadcastPage(broadcast_id=request.broadcast_id, page=request.next_page)
            requested = await self._step(REQUEST_RECIPIENTS, page, PAGE_TIMEOUT)
            request = request.model_copy(
                update={"next_page": request.next_page + 1, "requested": request.requested + requested}
            )
        while True:  # until every notification has ended; a cancel meanwhile goes first
            if self._cancel_pending:
                self._stopped = await self._step(CANCEL_RECIPIENTS, request)
                request = request.model_copy(update={"stopped": self._stopped})
            counts = await self._under(request, 1)
            if not self._cancel_pending:
                break
        self._ended = True
        await self._step(RECORD_BROADCAST_ENDED, request)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return counts

    @property
    def _cancelled(self) -> bool:
        return self._cancel_requested or self._stopped is not None

    @property
    def _cancel_pending(self) -> bool:
        """A cancel was asked for, and has not stopped anything yet."""
        return self._cancel_requested and self._stopped is None

    async def _under(self, request: BroadcastRequest, under_way: int) -> BroadcastCounts:
        """Wait until fewer than `under_way` of its notifications requested so far are under way. It looks again
        once as many as must still end would have ended at the pace they ended since its last look; while none
        ended, after twice as long as the last time (within `LOOK_EVERY`)."""
        wait, last = LOOK_EVERY[0], None
        while True:
            self._new_run_if_due(request)
            self._counts = counts = await self._step(COUNT_RECIPIENTS, request)
            to_end = request.requested - counts.ended_requested - under_way + 1
            if to_end <= 0 or self._cancel_pending:  # a cancel goes first
                return counts
            now = workflow.now()
            if last is not None:
                since, ended = last
                pace = (counts.ended_requested - ended) / max((now - since).total_seconds(), 0.001)
                wait = timedelta(seconds=to_end / pace) if pace else wait * 2
                wait = min(max(wait, LOOK_EVERY[0]), LOOK_EVERY[1])
            last = (now, counts.ended_requested)
            with contextlib.suppress(asyncio.TimeoutError):  # the look after `wait`, or at once on a cancel
                await workflow.wait_condition(lambda: self._cancel_pending, timeout=wait)

    def _new_run_if_due(self, request: BroadcastRequest) -> None:
        """Go on as a new run once this one has taken `STEPS_PER_RUN` steps: what it carries on is all in `request`
        (its snapshot, the next page, how many were requested)."""
        if self._steps >= STEPS_PER_RUN and not self._cancel_pending:
            workflow.continue_as_new(request)  # a cancel under way is not carried on: it ends in this run

    async def _step(self, step: Activity[I, O], arg: I, timeout: timedelta = STEP_TIMEOUT) -> O:
        """A step, as an activity retried until it succeeds, each attempt within `timeout`."""
        self._steps += 1
        result: O = await workflow.execute_activity(
            step.name,
            arg,
            result_type=step.result,
            start_to_close_timeout=timeout,
            heartbeat_timeout=self._heartbeat_timeout,  # each step heartbeats: a worker that died is noticed
            retry_policy=STEP_RETRY,
        )
        return result
