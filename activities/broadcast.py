"""A broadcast's steps: keep its recipients (its snapshot), request each recipient's notification a page at a time
and start its saga, count where its notifications are, and record that it has ended. Each step may run again (a
retry, a worker killed): what it wrote before is found, never written twice."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime

from temporalio import activity
from temporalio.client import Client

from activities.contract import (
    CANCEL_RECIPIENTS,
    COUNT_RECIPIENTS,
    RECORD_BROADCAST_ENDED,
    REQUEST_RECIPIENTS,
    SEND_BROADCAST_CONCERN,
    SNAPSHOT_AUDIENCE,
)
from activities.heartbeat import heartbeating_throughout
from broadcasts import CANCELLED, BroadcastClient
from client import NotCancellable, NotificationClient, RequestRefused, UnknownNotification, start_saga
from domain import (
    RECIPIENTS_PAGE,
    BroadcastCounts,
    BroadcastPage,
    BroadcastRecipientRefused,
    BroadcastRecipients,
    BroadcastRequest,
    BroadcastRequestedEvent,
    BroadcastSnapshot,
    BroadcastStopped,
    ExecuteOpRequestedEvent,
    NotificationRequest,
    SendNotificationToEntityOp,
    TagName,
    in_one_line,
    recipient_id,
    recipients_record_id,
    request_tags,
    tag,
)
from settings import Settings
from streams import ExistingRecordStrategy, HandlingStatus, InvalidHandlingTransition, StreamName, StreamStore
from streams.directory import members

STARTS_AT_ONCE = 16
"""Sagas a page's step starts at once (a pace's turn at a time)."""
PACE = "broadcasts"
"""The key of the turns broadcasts take to start their recipients' sagas at a pace."""


class BroadcastActivities:
    def __init__(self, store: StreamStore, temporal: Client, settings: Settings) -> None:
        self._store = store
        self._temporal = temporal
        self._settings = settings
        self._client = NotificationClient(store, temporal, settings)
        self._broadcasts = BroadcastClient(self._client)
        self._requests = store.reader(StreamName.CLIENT_OPERATION)
        self._handling = store.handling(StreamName.CLIENT_OPERATION)

    @activity.defn(name=SNAPSHOT_AUDIENCE.name)
    @heartbeating_throughout
    async def snapshot_audience(self, request: BroadcastRequest) -> BroadcastSnapshot:
        """The broadcast's recipients, kept in its snapshot a page at a time, all in one write: the topic's members
        now, or the entities it names. The broadcast's request is taken up (`Running`)."""
        bid = request.broadcast_id
        kept = await self._broadcasts.pages(bid)
        if kept:
            return BroadcastSnapshot(recipients=sum(len(p.entity_ids) for p in kept), pages=len(kept))
        audience = (await self._broadcast(bid)).operation.audience
        if audience.topic is not None:
            entity_ids = await members(self._store.reader(StreamName.ENTITY_DIRECTORY), audience.topic) or []
        else:
            entity_ids = list(audience.entity_ids or [])
        pages = [entity_ids[i : i + RECIPIENTS_PAGE] for i in range(0, len(entity_ids), RECIPIENTS_PAGE)]
        writer = self._store.writer(StreamName.CLIENT_OPERATION)
        await self._store.put(
            StreamName.CLIENT_OPERATION,
            [
                writer.record(
                    recipients_record_id(bid, n),
                    BroadcastRecipients(broadcast_id=bid, page=n, entity_ids=page),
                    tags=[tag(TagName.BROADCAST_ID, bid)],
                    strategy=ExistingRecordStrategy.DO_NOT_WRITE_IF_FOUND_BY_ID,
                ).record
                for n, page in enumerate(pages)
            ],
        )
        try:
            await self._handling.transition(
                request.client_operation_record_id, SEND_BROADCAST_CONCERN, HandlingStatus.RUNNING, "its saga runs"
            )
        except InvalidHandlingTransition:
            pass  # taken up by an earlier attempt
        return BroadcastSnapshot(recipients=len(entity_ids), pages=len(pages))

    @activity.defn(name=REQUEST_RECIPIENTS.name)
    @heartbeating_throughout
    async def request_recipients(self, page: BroadcastPage) -> int:
        """Request the notification of each recipient of the page (its id by its place in the snapshot), in one
        write, and start each one's saga; a recipient whose request cannot be made is recorded as refused. The files
        its template names for the page's recipients are kept first, each once, under the broadcast's id. Run again,
        it finds what it wrote (and the sagas it started) and writes (and starts) nothing twice. How many were
        requested."""
        bid = page.broadcast_id
        op = (await self._broadcast(bid)).operation
        kept = await self._requests.latest(recipients_record_id(bid, page.page))
        assert kept is not None, f"broadcast {bid} has no page {page.page}"
        recipients = kept.object(BroadcastRecipients)
        first = page.page * RECIPIENTS_PAGE + 1
        requests: list[NotificationRequest] = []
        refused: list[BroadcastRecipientRefused] = []
        files: dict[str, bytes] = {}
        retried = activity.info().attempt > 1
        for n, entity in enumerate(recipients.entity_ids):
            nid = recipient_id(bid, first + n)
            if retried and (found := await self._requests.latest(nid, type=ExecuteOpRequestedEvent.__name__)):
                operation = found.object(ExecuteOpRequestedEvent).operation  # as written, whatever changed since
                assert isinstance(operation, SendNotificationToEntityOp)
                requests.append(
                    NotificationRequest(notification_id=nid, operation=operation, client_operation_record_id=0)
                )
                continue
            try:
                operation, rendered = await self._broadcasts.compose(op, entity, bid)
            except RequestRefused as error:
                refused.append(
                    BroadcastRecipientRefused(
                        broadcast_id=bid, notification_id=nid, entity_id=entity, reason=in_one_line(str(error))
                    )
                )
                continue
            files.update((hashlib.sha256(content).hexdigest(), content) for content in rendered)
            requests.append(NotificationRequest(notification_id=nid, operation=operation, client_operation_record_id=0))
        if files:
            await self._store.put_contents(bid, list(files.values()))
        now = datetime.now(UTC)
        requested = self._store.writer(StreamName.CLIENT_OPERATION)
        written = await self._store.put(
            StreamName.CLIENT_OPERATION,
            [
                requested.record(
                    r.notification_id,
                    ExecuteOpRequestedEvent(id=r.notification_id, operation=r.operation, timestamp_utc=now),
                    tags=request_tags(r.notification_id, r.operation),
                    strategy=ExistingRecordStrategy.DO_NOT_WRITE_IF_FOUND_BY_ID,
                ).record
                for r in requests
            ],
        )
        events = self._store.writer(StreamName.NOTIFICATION_EVENT)
        await self._store.put(
            StreamName.NOTIFICATION_EVENT,
            [
                events.record(
                    r.notification_id,
                    r,
                    tags=[tag(TagName.NOTIFICATION_ID, r.notification_id), tag(TagName.BROADCAST_ID, bid)],
                    strategy=ExistingRecordStrategy.DO_NOT_WRITE_IF_FOUND_BY_ID,
                ).record
                for r in refused
            ],
        )
        taken_up = [
            r.model_copy(update={"client_operation_record_id": put.record_internal_id})
            for r, put in zip(requests, written, strict=True)
        ]
        at_once = asyncio.Semaphore(STARTS_AT_ONCE)

        async def start(request: NotificationRequest) -> None:
            async with at_once:
                await start_saga(self._temporal, self._store, self._settings, request)

        pace = self._settings.broadcast_recipients_per_second
        if pace is None or retried:  # a retry's starts are mostly of sagas started before: it takes no turns
            await asyncio.gather(*(start(r) for r in taken_up))
            return len(requests)
        for first in range(0, len(taken_up), STARTS_AT_ONCE):  # a turn for each `STARTS_AT_ONCE` starts
            starts = taken_up[first : first + STARTS_AT_ONCE]
            await asyncio.sleep(await self._handling.next_turn(PACE, len(starts) / pace))
            await asyncio.gather(*(start(r) for r in starts))
        return len(requests)

    @activity.defn(name=COUNT_RECIPIENTS.name)
    @heartbeating_throughout
    async def count_recipients(self, request: BroadcastRequest) -> BroadcastCounts:
        """Where the broadcast's notifications are: its recipients, and how many ended, by status."""
        return await self._broadcasts.counts(request.broadcast_id)

    @activity.defn(name=CANCEL_RECIPIENTS.name)
    @heartbeating_throughout
    async def cancel_recipients(self, request: BroadcastRequest) -> BroadcastStopped:
        """Cancel each notification the broadcast requested that has not ended (those already sending go on), a few
        at once, heartbeating; how many it stopped, and how many recipients it had not requested."""
        bid = request.broadcast_id
        by_broadcast = tag(TagName.BROADCAST_ID, bid)
        requested = await self._requests.by_tags(by_broadcast, type=ExecuteOpRequestedEvent.__name__)
        ended = {r.record_id for r in await self._store.reader(StreamName.NOTIFICATION_VIEW).by_tags(by_broadcast)}
        at_once = asyncio.Semaphore(STARTS_AT_ONCE)

        async def cancelled(notification_id: str) -> bool:
            async with at_once:
                try:
                    await self._client.cancel(notification_id)
                except (NotCancellable, UnknownNotification):
                    return False  # it was sent (or is being), or its saga has not started: it ends as it may
                return True

        stopped = await asyncio.gather(*(cancelled(r.record_id or "") for r in requested if r.record_id not in ended))
        pages = await self._broadcasts.pages(bid)
        not_requested = sum(len(p.entity_ids) for p in pages[request.next_page :])
        return BroadcastStopped(cancelled=sum(stopped), not_requested=not_requested)

    @activity.defn(name=RECORD_BROADCAST_ENDED.name)
    @heartbeating_throughout
    async def record_broadcast_ended(self, request: BroadcastRequest) -> None:
        try:
            await self._handling.transition(
                request.client_operation_record_id,
                SEND_BROADCAST_CONCERN,
                HandlingStatus.COMPLETED,
                "every notification has ended" if request.stopped is None else CANCELLED,
            )
        except InvalidHandlingTransition:
            pass  # an earlier attempt recorded it

    async def _broadcast(self, broadcast_id: str) -> BroadcastRequestedEvent:
        return (await self._broadcasts.record(broadcast_id)).object(BroadcastRequestedEvent)
