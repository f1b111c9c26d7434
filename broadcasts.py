"""Broadcasts as a door asks for them: request one (its record in the client-operation stream, and its saga), and
read where its notifications are. The broadcast's saga (`workflows.broadcast`) does the rest."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import FailureError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.contract import SEND_BROADCAST_CONCERN, broadcast_task_queue
from client import (
    IdempotencyKeyConflict,
    NotCancellable,
    NotificationClient,
    RequestRefused,
    UnknownNotification,
    checked_idempotency_key,
    named_contents,
)
from domain import (
    BroadcastCounts,
    BroadcastKeyClaim,
    BroadcastRecipientRefused,
    BroadcastRecipients,
    BroadcastRequest,
    BroadcastRequestedEvent,
    BroadcastStopped,
    NotificationStatus,
    SendBroadcastOp,
    SendNotificationToEntityOp,
    TagName,
    admitted,
    recipient_id,
    tag,
    validation_message,
)
from settings import Settings, one_line
from streams import ExistingRecordStrategy, HandlingStatus, Record, StreamName
from streams.directory import members
from workflows.broadcast import BroadcastSaga

log = logging.getLogger("notify.broadcasts")
ENDED_STATUSES = (
    *(NotificationStatus.SENT, NotificationStatus.PARTIALLY_SENT, NotificationStatus.FAILED),
    *(NotificationStatus.OPTED_OUT, NotificationStatus.CANCELLED, "refused"),
)
"""What a broadcast's notification ends as (`refused`: a recipient whose request could not be made)."""
MAX_NOTIFICATIONS_PAGE = 200
"""A broadcast's notifications listed at once at most (each is looked up)."""
CANCELLED = "cancelled: its saga stopped what was not sent"
"""The details of a cancelled broadcast's completed handling."""


async def start_broadcast_saga(
    temporal: Client, settings: Settings, broadcast_id: str, client_operation_record_id: int
) -> None:
    """Start the saga of the broadcast whose request is the client-operation stream's record
    `client_operation_record_id` (workflow id: the broadcast id), or find it started: however many callers race (the
    requester, the handlers of every worker), one saga runs per broadcast."""
    request = BroadcastRequest(
        broadcast_id=broadcast_id,
        client_operation_record_id=client_operation_record_id,
        heartbeat_timeout_seconds=settings.heartbeat_timeout_seconds,
    )
    try:
        await temporal.start_workflow(
            BroadcastSaga.run,
            request,
            id=request.broadcast_id,
            task_queue=broadcast_task_queue(settings.task_queue),
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
    except WorkflowAlreadyStartedError:
        pass  # it ran, and has ended


def checked_status(status: str, given_as: str = "status") -> None:
    """Refuse (`RequestRefused`) a status, given as `given_as`, that no broadcast's notification ends with."""
    if status not in ENDED_STATUSES:
        raise RequestRefused(
            f"{given_as}: {status!r} is not a status a notification ends with ({', '.join(ENDED_STATUSES)})"
        )


class UnknownBroadcast(LookupError):
    def __init__(self, broadcast_id: str) -> None:
        super().__init__(f"no broadcast with id {broadcast_id!r}")


@dataclass
class Tally:
    """A broadcast's ended notifications as one client counted them: each one's status, by notification id, from
    its views up to internal id `after`; and its recipients (0 until its snapshot is kept)."""

    after: int = 0
    statuses: dict[str, str] = field(default_factory=dict)
    recipients: int = 0


TALLIES = 8
"""Broadcasts a client keeps its counts of (those it counted most recently): one status per notification each."""


class BroadcastClient:
    """Broadcasts through the notification client's store and Temporal."""

    def __init__(self, notifications: NotificationClient) -> None:
        self._tallies: dict[str, Tally] = {}
        self._notifications = notifications
        self._store = notifications.store
        self._temporal = notifications.temporal
        self._settings = notifications.settings
        self._requests = self._store.reader(StreamName.CLIENT_OPERATION)

    async def request(
        self,
        operation: SendBroadcastOp | dict[str, Any],
        idempotency_key: str | None = None,
        contents: Sequence[bytes] = (),
    ) -> str:
        """Request a broadcast and start its saga; its id. `contents` are the files its content's `attachments` name
        (`client.attachment`), kept once under its id, before its record: each recipient's request names them.
        Repeated with the same idempotency key (and the same files), the first request's id, and nothing more is
        written or started. `RequestRefused` says what is wrong (an unknown topic, a content its first recipient's
        request would refuse, files not those it names, a key used for another request), and nothing is written."""
        checked_idempotency_key(idempotency_key)
        try:
            op = admitted(SendBroadcastOp, operation)
        except ValidationError as error:
            raise RequestRefused(validation_message(error)) from error
        audience = op.audience
        if audience.topic is not None:
            found = await members(self._store.reader(StreamName.ENTITY_DIRECTORY), audience.topic)
            if found is None:
                raise RequestRefused(f"no topic {audience.topic!r}")
            first = found[0] if found else None
        else:
            first = audience.entity_ids[0] if audience.entity_ids else None
        if first is not None:  # its content, as the first recipient's request would be checked
            await self.compose(op, first)
        given = named_contents(op.attachments, contents)
        tags = [tag(TagName.BROADCAST_ID, broadcast_id := await self._claim(idempotency_key, op))]
        if given:
            await self._store.put_contents(broadcast_id, given)
        put = await self._store.writer(StreamName.CLIENT_OPERATION).put(
            broadcast_id,
            BroadcastRequestedEvent(id=broadcast_id, operation=op, timestamp_utc=datetime.now(UTC)),
            tags=tags if idempotency_key is None else [*tags, tag(TagName.IDEMPOTENCY_KEY, idempotency_key)],
            strategy=ExistingRecordStrategy.DO_NOT_WRITE_IF_FOUND_BY_ID,  # a repeated request's is there
        )
        try:
            await start_broadcast_saga(self._temporal, self._settings, broadcast_id, put.record_internal_id)
        except Exception as error:  # the request is recorded, and so accepted: a worker's handler starts its saga
            log.warning("broadcast %s is accepted; its saga is not started yet (%s)", broadcast_id, one_line(error))
        return broadcast_id

    async def compose(
        self, operation: SendBroadcastOp, entity_id: str, broadcast_id: str | None = None
    ) -> tuple[SendNotificationToEntityOp, list[bytes]]:
        """The request of the broadcast's recipient `entity_id`, checked as any request is (`RequestRefused`), and
        the contents of the files its template names for that recipient (after the broadcast's own)."""
        content = {**operation.content, "entity_id": entity_id, "broadcast_id": broadcast_id}
        return await self._notifications.compose(content, operation.template, operation.data)

    async def record(self, broadcast_id: str) -> Record:
        """The broadcast's request, as the client-operation stream keeps it (`UnknownBroadcast` if it has none)."""
        record = await self._requests.latest(broadcast_id, type=BroadcastRequestedEvent.__name__)
        if record is None:
            raise UnknownBroadcast(broadcast_id)
        return record

    async def pages(self, broadcast_id: str) -> list[BroadcastRecipients]:
        """The broadcast's snapshot, page after page (none until its saga has kept it)."""
        by_broadcast = tag(TagName.BROADCAST_ID, broadcast_id)
        records = await self._requests.by_tags(by_broadcast, type=BroadcastRecipients.__name__)
        return sorted((r.object(BroadcastRecipients) for r in records), key=lambda p: p.page)

    async def refused(self, broadcast_id: str) -> list[BroadcastRecipientRefused]:
        """Its recipients whose request could not be made."""
        records = await self._store.reader(StreamName.NOTIFICATION_EVENT).by_tags(
            tag(TagName.BROADCAST_ID, broadcast_id), type=BroadcastRecipientRefused.__name__
        )
        return [r.object(BroadcastRecipientRefused) for r in records]

    async def _claim(self, key: str | None, operation: SendBroadcastOp) -> str:
        """A new broadcast id; with a key, the id the key is claimed for: the first request's (`IdempotencyKeyConflict`
        if that was another request), or a new one this request claims."""
        if key is None:
            return await self._notifications.new_id()

        def claim(broadcast_id: str) -> BroadcastKeyClaim:
            return BroadcastKeyClaim(idempotency_key=key, broadcast_id=broadcast_id, operation=operation)

        first = await self._notifications.claim_key(key, BroadcastKeyClaim, claim, TagName.BROADCAST_ID)
        if isinstance(first, str):
            return first
        if first.operation != operation:
            raise IdempotencyKeyConflict(
                key, f"was already used by broadcast {first.broadcast_id} with a different request"
            )
        return first.broadcast_id

    async def result(self, broadcast_id: str) -> BroadcastCounts:
        """Wait for the broadcast's saga to end: where its notifications ended."""
        return await self._temporal.get_workflow_handle_for(BroadcastSaga.run, broadcast_id).result()

    async def cancel(self, broadcast_id: str) -> BroadcastStopped:
        """Stop the broadcast: it requests no more recipients, and each of its notifications not sent yet is
        cancelled (one under way is waited for); what that stopped. `NotCancellable` once it has ended."""
        broadcast_id = await self._notifications.full_id(broadcast_id)
        await self.record(broadcast_id)  # an unknown id raises UnknownBroadcast
        handle = self._temporal.get_workflow_handle_for(BroadcastSaga.run, broadcast_id)
        try:
            stopped: BroadcastStopped = await handle.execute_update("cancel", result_type=BroadcastStopped)
            return stopped
        except WorkflowUpdateFailedError as error:
            cause = error.cause
            raise NotCancellable(cause.message if isinstance(cause, FailureError) else str(cause)) from error
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND:
                raise
            raise NotCancellable(f"broadcast {broadcast_id} has ended: nothing changed") from error

    async def counts(self, broadcast_id: str) -> BroadcastCounts:
        """Where the broadcast's notifications are: its recipients (none until its saga has kept them), and how many
        ended, by status. What this client counted before is kept (`Tally`): a count reads only the views recorded
        since the last, so that a broadcast's saga, which counts again and again, reads each view once while its
        notifications end; a count that finds none reads them all again, which finds a view whose internal id was
        taken before the last one counted but whose write was seen after it (PostgreSQL's concurrent writers)."""
        tally = self._tallies.pop(broadcast_id, None) or Tally()
        self._tallies[broadcast_id] = tally  # the most recently counted last: the first is forgotten first
        while len(self._tallies) > TALLIES:
            del self._tallies[next(iter(self._tallies))]
        views = await self._views(broadcast_id, after=tally.after)
        if not views and tally.after:
            views = await self._views(broadcast_id)
        for view in views:
            tally.statuses[view.record_id or ""] = _status_of(view.payload)  # a view recorded again counts once
            tally.after = max(tally.after, view.internal_id)
        ended = dict(Counter(tally.statuses.values()))
        if refused := await self.refused(broadcast_id):
            ended["refused"] = len(refused)
        if not tally.recipients:  # the snapshot is kept in one write: once there, it is all there
            tally.recipients = sum(len(p.entity_ids) for p in await self.pages(broadcast_id))
        return BroadcastCounts(recipients=tally.recipients, ended=ended)

    async def _views(self, broadcast_id: str, after: int = 0) -> list[Record]:
        """The recorded views of its notifications that have ended (those after internal id `after`)."""
        views = self._store.reader(StreamName.NOTIFICATION_VIEW)
        return await views.by_tags(tag(TagName.BROADCAST_ID, broadcast_id), after=after)

    async def notifications(
        self, broadcast_id: str, *, status: str | None = None, after: int = 0, limit: int = 50
    ) -> tuple[list[dict[str, Any]], int | None]:
        """A page of the broadcast's notifications in the order of its recipients, after the `after`th: each
        `{"id", "entity_id", "status"}` (`refused`, or `not requested` yet, for a recipient without one); with
        `status`, only the ended ones with that status (or `refused`). Where the next page starts (None on the last).
        `UnknownBroadcast` for an id that is not a broadcast's; `RequestRefused` for a status no notification ends
        with."""
        if status is not None:
            checked_status(status)
        broadcast_id = await self._notifications.full_id(broadcast_id)
        await self.record(broadcast_id)  # an unknown id raises UnknownBroadcast
        entities = [entity for page in await self.pages(broadcast_id) for entity in page.entity_ids]
        refused = {r.notification_id for r in await self.refused(broadcast_id)}
        if status is None:
            places = list(range(after + 1, min(len(entities), after + limit) + 1))
        else:
            views = await self._views(broadcast_id)
            ended = {v.record_id for v in views if _status_of(v.payload) == status} | (
                refused if status == "refused" else set()
            )
            places = [n for n in range(after + 1, len(entities) + 1) if recipient_id(broadcast_id, n) in ended]
            places = places[: limit + 1]
        items = []
        for n in places[:limit]:
            nid = recipient_id(broadcast_id, n)
            if status is not None:
                shown = status  # what its view (or its refusal) said above
            elif nid in refused:
                shown = "refused"
            else:
                try:
                    shown = (await self._notifications.status(nid))["status"]
                except UnknownNotification:
                    shown = "not requested"
            items.append({"id": nid, "entity_id": entities[n - 1], "status": shown})
        more = len(places) > limit if status is not None else bool(places) and places[-1] < len(entities)
        return items, (places[limit - 1] if more else None)

    async def status(self, broadcast_id: str) -> dict[str, Any]:
        """`{"id", "broadcast": true, "status", "recipients", "left", "counts"}`: `running` until every notification
        has ended, then `completed`. `UnknownBroadcast` for an id that is not a broadcast's."""
        broadcast_id = await self._notifications.full_id(broadcast_id)
        record = await self.record(broadcast_id)
        history = await self._store.handling(StreamName.CLIENT_OPERATION).history(
            record.internal_id, SEND_BROADCAST_CONCERN
        )
        status = "running"
        if history and history[-1].status == HandlingStatus.COMPLETED:
            status = "cancelled" if history[-1].details == CANCELLED else "completed"
        counts = await self.counts(broadcast_id)
        return {
            "id": broadcast_id,
            "broadcast": True,
            "status": status,
            "recipients": counts.recipients,
            "left": counts.left,
            "counts": counts.ended,
        }


def _status_of(view: str) -> str:
    """A recorded view's status (`unreadable` if it does not say one)."""
    try:
        return str(json.loads(view)["status"])
    except (ValueError, KeyError, TypeError):
        return "unreadable"
