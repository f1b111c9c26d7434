"""How a failed activity is retried: what a later attempt may fix is, and a bug or bad data is not.

A step that records fails, at its root, either because a service cannot be used for now (the store's
`StoreUnavailable`, a connection refused, a timeout): then Temporal retries it, for as long as its retry policy
says, and the worker logs one line when the steps begin to fail and one when they succeed again, not a traceback per
attempt. Anything else (an invalid handling transition, a record that does not decode, an `assert`) would fail every
attempt alike: it ends the step at once as a non-retryable `StepFailedForGood`, logged with the notification id and
its traceback, so that the saga can end the notification as failed with the reason instead of retrying forever.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from activities.contract import STEP_FAILED_FOR_GOOD
from settings import one_line

TRANSIENT = (ConnectionError, TimeoutError)
"""What a later attempt may not meet: the store's `StoreUnavailable` and `StoreUnusable` are `ConnectionError`s."""
logger = logging.getLogger("notify.steps")


class Outage:
    """What a worker logs of a service's transient failures: one line when its calls begin to fail, one when it
    answers again (with how many failed between), and each failure at debug level only, so that an outage of a mail
    server, of Slack or of the stream store is two lines in the log, not one per attempt."""

    def __init__(self, service: str, log: logging.Logger, calls: str = "sends") -> None:
        self.service = service
        self.calls = calls
        self.failures = 0
        self._log = log

    def failed(self, attempt: str, reason: str) -> None:
        self.failures += 1
        if self.failures == 1:
            self._log.warning(
                "%s: %s fail, and are retried until it answers (%s failed: %s)",
                self.service,
                self.calls,
                attempt,
                reason,
            )
        else:
            self._log.debug("%s failed, to be retried: %s", attempt, reason)

    def answered(self) -> None:
        if self.failures:
            self._log.warning("%s answers again, after %d failed attempt(s)", self.service, self.failures)
            self.failures = 0


class KnownCause(Exception):
    """A step's failure that no retry fixes, whose cause is known and said in words by its message: the reason, and
    one log line without a traceback."""


def failed_for_good(step: str, notification_id: str | None, error: BaseException) -> str:
    """Log a step's failure that no retry fixes (a bug or bad data) with its traceback, and return it as a reason;
    a `KnownCause` in one line, as it says it."""
    if isinstance(error, KnownCause):
        logger.error("notification %s: %s", notification_id, error)
        return str(error)
    logger.error(
        "notification %s: %s failed for good (a bug or bad data: not retried)", notification_id, step, exc_info=error
    )
    return f"{step} failed for good: {error.__class__.__name__}: {error}"


class FailuresClassified(Interceptor):
    """The worker's interceptor that classifies every activity's failure (see the module's docstring)."""

    def __init__(self) -> None:
        self._outage = Outage("the stream store", logger, calls="steps")

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Classifying(next, self._outage)


class _Classifying(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, outage: Outage) -> None:
        super().__init__(next)
        self._outage = outage

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        try:
            done = await super().execute_activity(input)
        except ApplicationError:
            raise
        except asyncio.CancelledError as error:
            details = activity.cancellation_details()
            if details is None or not (details.timed_out or details.not_found):
                raise  # cancelled on request, or the worker stops: Temporal's to report as such
            # the server has let this attempt go (it ran out of time): nobody waits for its traceback either
            raise ApplicationError(
                "the attempt ran out of time", type="AttemptTimedOut", category=ApplicationErrorCategory.BENIGN
            ) from error
        except TRANSIENT as error:
            info = activity.info()
            self._outage.failed(f"{info.activity_type} of notification {info.workflow_id}", one_line(error))
            # benign: the SDK logs it at debug level, without its traceback
            raise ApplicationError(
                one_line(error), type=error.__class__.__name__, category=ApplicationErrorCategory.BENIGN
            ) from error
        except Exception as error:
            info = activity.info()
            reason = failed_for_good(info.activity_type, info.workflow_id, error)
            raise ApplicationError(reason, type=STEP_FAILED_FOR_GOOD, non_retryable=True) from error
        self._outage.answered()
        return done
