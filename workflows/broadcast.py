"""The broadcast saga: one workflow per broadcast, its workflow id the broadcast id.

It keeps the broadcast's recipients (its snapshot: a topic's members when it starts), then requests their
notifications a page at a time, each with a saga of its own, never more than `WINDOW` of them under way at once, so
that a large broadcast neither floods Temporal's queue nor holds back the notifications requested beside it. It goes
on as a new run (continue-as-new) every `STEPS_PER_RUN` steps, so that its history stays small however many
recipients it has, and ends once every notification has ended. The code here only decides; activities do the I/O.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.contract import (
        COUNT_RECIPIENTS,
        RECORD_BROADCAST_ENDED,
        REQUEST_RECIPIENTS,
        SNAPSHOT_AUDIENCE,
        Activity,
    )
    from domain import RECIPIENTS_PAGE, BroadcastCounts, BroadcastPage, BroadcastRequest

I = TypeVar("I")  # noqa: E741 - a step's input, beside O for its result
O = TypeVar("O")  # noqa: E741

STEP_TIMEOUT = timedelta(minutes=2)
"""How long one attempt at a step may take (a page's requests and sagas: a few seconds)."""
HEARTBEAT_TIMEOUT = timedelta(seconds=30)
"""A page's step heartbeats as it starts sagas: a worker that died is noticed after this."""
STEP_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
"""Every step is retried until it succeeds: each finds what an earlier attempt wrote."""
WINDOW = 1_000
"""Notifications under way at most (requested, not ended): a page is requested only while there is room for all."""
STEPS_PER_RUN = 500
"""Steps (a page, a look) in one run before it goes on as a new one: a few thousand events at most."""
LOOK_EVERY = (timedelta(seconds=1), timedelta(seconds=10))
"""How often it looks at its notifications while it waits for them: from the first, growing to the second."""


@workflow.defn(name="BroadcastSaga")
class BroadcastSaga:
    def __init__(self) -> None:
        self._counts: BroadcastCounts | None = None
        self._steps = 0

    @workflow.query(name="counts")
    def counts(self) -> BroadcastCounts | None:
        """Where its notifications were when it last looked."""
        return self._counts

    @workflow.run
    async def run(self, request: BroadcastRequest) -> BroadcastCounts:
        if request.snapshot is None:
            snapshot = await self._step(SNAPSHOT_AUDIENCE, request)
            request = request.model_copy(update={"snapshot": snapshot})
        assert request.snapshot is not None
        while request.next_page < request.snapshot.pages:
            self._new_run_if_due(request)
            await self._under(request, WINDOW - RECIPIENTS_PAGE + 1)
            page = BroadcastPage(broadcast_id=request.broadcast_id, page=request.next_page)
            requested = await self._step(REQUEST_RECIPIENTS, page)
            request = request.model_copy(
                update={"next_page": request.next_page + 1, "requested": request.requested + requested}
            )
        counts = await self._under(request, 1)
        await self._step(RECORD_BROADCAST_ENDED, request)
        return counts

    async def _under(self, request: BroadcastRequest, under_way: int) -> BroadcastCounts:
        """Wait until fewer than `under_way` of its notifications requested so far are under way."""
        wait = LOOK_EVERY[0]
        while True:
            self._new_run_if_due(request)
            self._counts = await self._step(COUNT_RECIPIENTS, request)
            if request.requested - self._counts.ended_requested < under_way:
                return self._counts
            await workflow.sleep(wait)
            wait = min(wait * 2, LOOK_EVERY[1])

    def _new_run_if_due(self, request: BroadcastRequest) -> None:
        """Go on as a new run once this one has taken `STEPS_PER_RUN` steps: what it carries on is all in `request`
        (its snapshot, the next page, how many were requested)."""
        if self._steps >= STEPS_PER_RUN:
            workflow.continue_as_new(request)

    async def _step(self, step: Activity[I, O], arg: I) -> O:
        """A step, as an activity retried until it succeeds."""
        self._steps += 1
        result: O = await workflow.execute_activity(
            step.name,
            arg,
            result_type=step.result,
            start_to_close_timeout=STEP_TIMEOUT,
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=STEP_RETRY,
        )
        return result
