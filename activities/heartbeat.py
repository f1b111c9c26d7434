"""Heartbeats for an activity that may run long: a worker that died is noticed once its heartbeat timeout has
passed, not its whole timeout."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import ParamSpec, TypeVar

from temporalio import activity

P = ParamSpec("P")
T = TypeVar("T")


@asynccontextmanager
async def heartbeating() -> AsyncIterator[None]:
    """Heartbeat while the attempt runs, so that an attempt whose worker died is retried once its heartbeat timeout
    has passed, rather than its whole timeout."""
    timeout = activity.info().heartbeat_timeout
    if not timeout:
        yield
        return

    async def beat() -> None:
        while True:  # the first a third of the timeout in: an attempt that ends sooner never heartbeats
            await asyncio.sleep(timeout.total_seconds() / 3)
            activity.heartbeat()

    beating = asyncio.create_task(beat())
    try:
        yield
    finally:
        beating.cancel()


def heartbeating_throughout(step: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """`step`, heartbeating while it runs (`heartbeating`)."""

    @functools.wraps(step)
    async def heartbeating_step(*args: P.args, **kwargs: P.kwargs) -> T:
        async with heartbeating():
            return await step(*args, **kwargs)

    return heartbeating_step
