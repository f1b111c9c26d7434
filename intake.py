"""The client-operation stream's handler: it takes up every request whose handling is still available and starts
its saga, so that a request needs nothing but its record in the stream (the CLI's, the API's, or a producer's
`SELECT notify_request(...)`), and a request made while Temporal could not be reached starts once it can.

Every worker runs one. Starting a saga is idempotent (workflow id = notification id, and Temporal's id policies), so
any number of handlers and requesters may race for a request: one saga runs. The handler looks at the records after
the newest it has seen, less a margin for PostgreSQL's records that commit out of id order; on PostgreSQL it is woken
when records are appended (LISTEN/NOTIFY), on SQLite it polls.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import ValidationError
from temporalio.client import Client

from activities.contract import SEND_NOTIFICATION_CONCERN
from client import is_connect_failure, start_saga
from domain import (
    ExecuteOpRequestedEvent,
    NotificationRequest,
    SendNotificationToEntityOp,
    admitted,
    in_one_line,
    validation_message,
)
from settings import ConfigurationError, Settings, is_unavailable, one_line
from streams import HandlingStatus, InvalidHandlingTransition, Record, StreamName, StreamStore

log = logging.getLogger("notify.intake")

LOOK_BACK = 10_000
"""How far below the newest record seen each look reaches, in internal ids: a record that took an id before the
newest one and committed after it (PostgreSQL, concurrent writers) is still found."""
BATCH = 50
"""Requests taken up at once."""
TAKEN_UP = "its saga is started by the client-operation handler"


class ClientOperationHandler:
    def __init__(self, store: StreamStore, temporal: Client, settings: Settings) -> None:
        self._store = store
        self._temporal = temporal
        self._settings = settings
        self._requests = store.reader(StreamName.CLIENT_OPERATION)
        self._handling = store.handling(StreamName.CLIENT_OPERATION)
        self._waiting = False
        """Whether it is waiting for a service to come back (said once, when it starts and when it ends)."""

    @property
    def poll_seconds(self) -> float:
        return (
            self._settings.intake_poll_seconds
            if not self._store.tells_of_appends
            else self._settings.intake_safety_poll_seconds
        )

    async def run(self) -> None:
        """Take up requests until cancelled."""
        after = 0
        while True:
            try:
                after = await self.take_up(after)
                self._back()
            except Exception as error:
                if not (is_unavailable(error) or is_connect_failure(error)):
                    raise
                self._away(error)
            try:
                await self._requests.wait_for_appends(self.poll_seconds)
            except Exception as error:
                if not is_unavailable(error):
                    raise
                self._away(error)
                await asyncio.sleep(self.poll_seconds)

    async def take_up(self, after: int = 0) -> int:
        """Start the saga of every request after internal id `after` that no saga has taken up; returns where the
        next look starts."""
        newest = await self._requests.newest()
        low = after
        while True:
            batch = await self._requests.unhandled(
                SEND_NOTIFICATION_CONCERN, type=ExecuteOpRequestedEvent.__name__, after=low, limit=BATCH
            )
            await asyncio.gather(*(self._start(record) for record in batch))
            if len(batch) < BATCH:
                break
            low = batch[-1].internal_id
        return max(after, (newest.internal_id if newest else 0) - LOOK_BACK)

    async def _start(self, record: Record) -> None:
        event = record.object(ExecuteOpRequestedEvent)
        try:
            operation = admitted(SendNotificationToEntityOp, event.operation)
        except ValidationError as error:  # a request written by SQL, or under older rules: refused, with the reason
            await self._refuse(record, f"refused: {validation_message(error)}")
            return
        request = NotificationRequest(
            notification_id=event.id, operation=operation, client_operation_record_id=record.internal_id
        )
        try:
            await start_saga(self._temporal, self._store, self._settings, request)
        except ConfigurationError as error:
            await self._refuse(record, str(error))
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
            log.warning("the client-operation handler waits: %s", one_line(error))

    def _back(self) -> None:
        if self._waiting:
            self._waiting = False
            log.warning("the client-operation handler takes up requests again")
