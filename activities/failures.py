"""How a failed activity is retried: what a later attempt may fix is, and a bug or bad data is not.

A step that records fails, at its root, either because a service cannot be used for now (the store's
`StoreUnavailable`, a connection refused, a timeout): then Temporal retries it, for as long as its retry policy
says. Anything else (an invalid handling transition, a record that does not decode, an `assert`) would fail every
attempt alike: it ends the step at once as a non-retryable `StepFailedForGood`, logged with the notification id and
its traceback, so that the saga can end the notification as failed with the reason instead of retrying forever.
"""

from __future__ import annotations

import logging
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from activities.contract import STEP_FAILED_FOR_GOOD

TRANSIENT = (ConnectionError, TimeoutError)
"""What a later attempt may not meet: the store's `StoreUnavailable` and `StoreUnusable` are `ConnectionError`s."""
logger = logging.getLogger("notify.steps")


class FailuresClassified(Interceptor):
    """The worker's interceptor that classifies every activity's failure (see the module's docstring)."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Classifying(next)


class _Classifying(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        try:
            return await super().execute_activity(input)
        except (ApplicationError, *TRANSIENT):
            raise
        except Exception as error:
            info = activity.info()
            logger.exception(
                "notification %s: %s failed for good (a bug or bad data: not retried)",
                info.workflow_id,
                info.activity_type,
            )
            raise ApplicationError(
                f"{info.activity_type} failed for good: {error.__class__.__name__}: {error}",
                type=STEP_FAILED_FOR_GOOD,
                non_retryable=True,
            ) from error
