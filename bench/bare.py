"""The ceiling the saga is measured against: a bare workflow that fans out two no-op activities, each on a task queue
of its own, run by workers set up as `worker.py` sets up the saga's (the same client, data converter and Temporal
runtime; one worker for the workflow, one per channel queue), the workflow in Temporal's sandbox, as Temporal runs
one by default (the saga runs outside it: `worker.WORKFLOW_RUNNER`).

    python -m bench.bare --task-queue bare   # a worker for it, on NOTIFY_TEMPORAL_ADDRESS, until SIGTERM
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

with workflow.unsafe.imports_passed_through():  # as the saga's module does: the sandbox imports them once
    from activities.contract import channel_task_queue
    from client import connect
    from domain import Channel
    from settings import load_settings

SANDBOX = SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_all_modules())
"""Temporal's sandbox, as a workflow runs by default, with modules passed through (as the saga's would be)."""
ATTEMPT = timedelta(seconds=60)


@activity.defn(name="BareSendEmail")
async def send_email(n: int) -> int:
    return n


@activity.defn(name="BareSendSlackMessage")
async def send_slack_message(n: int) -> int:
    return n


@workflow.defn(name="BareFanOut")
class BareFanOut:
    @workflow.run
    async def run(self, n: int) -> int:
        queue = workflow.info().task_queue
        sends = [
            workflow.execute_activity(
                send, n, task_queue=channel_task_queue(queue, channel), start_to_close_timeout=ATTEMPT
            )
            for send, channel in ((send_email, Channel.EMAIL), (send_slack_message, Channel.SLACK))
        ]
        return sum(await asyncio.gather(*sends))


@contextlib.asynccontextmanager
async def bare_workers(client: Client, task_queue: str) -> AsyncIterator[None]:
    workers = [
        Worker(client, task_queue=task_queue, workflows=[BareFanOut], workflow_runner=SANDBOX),
        Worker(client, task_queue=channel_task_queue(task_queue, Channel.EMAIL), activities=[send_email]),
        Worker(client, task_queue=channel_task_queue(task_queue, Channel.SLACK), activities=[send_slack_message]),
    ]
    async with contextlib.AsyncExitStack() as stack:
        for worker in workers:
            await stack.enter_async_context(worker)
        yield


async def serve(task_queue: str) -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    settings = load_settings()
    async with bare_workers(await connect(settings), task_queue):
        print(f"worker polling task queue {task_queue!r} on {settings.temporal_address}", flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run a worker for the bare fan-out workflow.")
    parser.add_argument("--task-queue", default="bare")
    from bench import bare  # the workflow from its module, not from __main__: the sandbox imports it by name

    asyncio.run(bare.serve(parser.parse_args().task_queue))


if __name__ == "__main__":
    main()
