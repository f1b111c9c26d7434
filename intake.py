"""The client-operation stream's handler: it takes up every request whose handling is still available and starts
its saga, so that a request needs nothing but its record in the stream (the CLI's, the API's, or a producer's
`SELECT notify_request(...)`), and a request made while Temporal could not be reached starts once it can.

Every worker runs one. Starting a saga is idempotent (workflow id = notification id, and Temporal's id policies), so
any number of handlers and requesters may race for a request: one saga runs. The handler looks at the records after
the newest it has seen, less a margin for PostgreSQL's records that commit out of id order; on PostgreSQL it is woken
when a request is appended (LISTEN/NOTIFY), on SQLite it polls.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities.contract import SEND_BROADCAST_CONCERN, SEND_NOTIFICATION_CONCERN
from broadcasts import start_broadcast_saga
from client import is_connect_failure, start_saga
from domain import (
    BroadcastRequestedEvent,
    ExecuteOpRequestedEvent,
    NotificationRequest,
    SendNotificationToEntityOp,
    admitted,
    in_one_line,
    validation_message,
)
from settings import ConfigurationError, Settings, one_line
from streams import HandlingStatus, InvalidHandlingTransition, Record, StreamName, StreamStore

log = logging.getLogger("notify.intake")

LOOK_BACK = 10_000
"""How far below the newest record seen each look reaches, in internal ids: a record that took an id before the
newest one and committed after it (PostgreSQL, concurrent writers) is still found."""
FULL_LOOK = timedelta(minutes=10)
"""How often it looks at every request again, from the first: what committed further out of order than `LOOK_BACK`
is found by then."""
GRACE = timedelta(seconds=2)
"""How long a new request is left to its requester, which starts its saga itself: only then is it taken up here,
so that the handlers of every worker, woken by each request, do not all race its requester."""
BATCH = 50
"""Requests taken up at once."""
TAKEN_UP = "its saga is started by the client-operation handler"


def is_outage(error: BaseException) -> bool:
    """Whether `error` says the store or Temporal cannot be used for now (a later look may succeed)."""
    if isinstance(error, RPCError):
        return error.status in (
            RPCStatusCode.UNAVAILABLE,
            RPCStatusCode.DEADLINE_EXCEEDED,
            RPCStatusCode.RESOURCE_EXHAUSTED,
        )
    return isinstance(error, OSError) or is_connect_failure(error)


class ClientOperationHandler:
    def __init__(self, store: StreamStore, temporal: Client, settings: Settings) -> None:
        self._store = store
        self._temporal = temporal
        self._settings = settings
        self._requests = store.reader(StreamName.CLIENT_OPERATION)
        self._handling = store.handling(StreamName.CLIENT_OPERATION)
        self._waiting = False
        """Whether it is waiting for a service to come back (said once, when it starts and when it ends)."""

    async def run(self) -> None:
        """Take up requests until cancelled. A service that cannot be used is waited for, looking again every
        `NOTIFY_INTAKE_POLL_SECONDS`; a bug is logged, and it goes on."""
        after, full_look_at = 0, 0.0
        loop = asyncio.get_running_loop()
        while True:
            wait = (
                self._settings.intake_safety_poll_seconds
                if self._store.tells_of_operations
                else self._settings.intake_poll_seconds
            )
            try:
                if loop.time() >= full_look_at:
                    after, full_look_at = 0, loop.time() + FULL_LOOK.total_seconds()
                after, young = await self.take_up(after)
                looked = loop.time()
                self._back()
                if young is not None:
                    wait = min(wait, young)
                await self._requests.wait_for_operations(wait)
                # nothing requested since the look is due before GRACE has passed: the requests notified meanwhile
                # are looked at together, once
                await asyncio.sleep(max(0.0, looked + min(wait, GRACE.total_seconds()) - loop.time()))
            except Exception as error:
                if is_outage(error):
                    self._away(error)
                else:
                    log.exception("the client-operation handler failed; it goes on")
                await asyncio.sleep(self._settings.intake_poll_seconds)

    async def take_up(self, after: int = 0) -> tuple[int, float | None]:
        """Start the saga of every request after internal id `after` that no saga has taken up; returns where the
        next look starts, and in how many seconds a request too young to take up now will not be."""
        newest = await self._requests.newest()
        low, young, lowest_young = after, None, None
        now = datetime.now(UTC)
        while True:
            batch = await self._requests.unhandled(
                SEND_NOTIFICATION_CONCERN, type=ExecuteOpRequestedEvent.__name__, after=low, limit=BATCH
            )
            due = [r for r in batch if now - r.timestamp_utc >= GRACE]
            for record in batch:
                if record not in due:
                    lowest_young = min(lowest_young or record.internal_id, record.internal_id)
                    in_seconds = max((record.timestamp_utc + GRACE - now).total_seconds(), 0.05)
                    young = min(young or in_seconds, in_seconds)
            await asyncio.gather(*(self._start(record) for record in due))
            if len(batch) < BATCH:
                break
            low = batch[-1].internal_id
        for record in await self._requests.unhandled(
            SEND_BROADCAST_CONCERN, type=BroadcastRequestedEvent.__name__, after=after, limit=BATCH
        ):
            if now - record.timestamp_utc >= GRACE:  # a young one is its requester's, and a later look's
                await start_broadcast_saga(self._temporal, self._settings, record.record_id or "", record.internal_id)
        next_after = max(after, (newest.internal_id if newest else 0) - LOOK_BACK)
        return (next_after if lowest_young is None else min(next_after, lowest_young - 1)), young

    async def _start(self, record: Record) -> None:
        try:
            event = record.object(ExecuteOpRequestedEvent)
            operation = admitted(SendNotificationToEntityOp, event.operation)
        except ValidationError as error:  # a request written by SQL, or under older rules: refused, with the reason
            await self._refuse(record, f"refused: {validation_message(error)}")
            return
        request = NotificationRequest(
            notification_id=event.id, operation=operation, client_operation_record_id=record.internal_id
        )
        try:
            await start_saga(self._temporal, self._store, self._settings, request)
        except Exception as error:
            if is_outage(error):
                raise  # looked at again once the service is back
            if not isinstance(error, ConfigurationError):
                log.exception("notification %s: its saga cannot be started", event.id)
            await self._refuse(record, f"its saga cannot be started: {one_line(error)}")
            return
        try:
            await self._handling.transition(
                record.internal_id, SEND_NOTIFICATION_CONCERN, HandlingStatus.RUNNING, TAKEN_UP
            )
            log.info("took up notification %s: its saga runs", event.id)
        except InvalidHandlingTransition:
            pass  # the saga took it up first

    async def _refuse(self, record: Record, reason: str) -> None:
        reason = in_one_line(reason)
        try:
            await self._handling.transition(
                record.internal_id, SEND_NOTIFICATION_CONCERN, HandlingStatus.DISABLED_FOR_RECORD, reason
            )
        except InvalidHandlingTransition:
            return  # another handler refused it first
        log.warning("notification %s is not started: %s", record.record_id, reason)

    def _away(self, error: BaseException) -> None:
        if not self._waiting:
            self._waiting = True
            service = "Temporal" if isinstance(error, RPCError) or is_connect_failure(error) else "the stream store"
            log.warning("the client-operation handler waits for %s: %s", service, one_line(error))

    def _back(self) -> None:
        if self._waiting:
            self._waiting = False
            log.warning("the client-operation handler takes up requests again")
