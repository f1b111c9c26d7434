"""Webhooks out: what is sent (an event made of a record, `RECORD_EVENTS`), to where (an endpoint's URL, checked
here), signed how (Standard Webhooks' HMAC-SHA256, `sign`), and the dispatcher every worker runs beside intake.

The dispatcher reads the records events are made of, newer than the oldest enabled endpoint, and starts one
`WebhookDelivery` workflow for each (endpoint, record) the endpoint asked for; its workflow id is the webhook id, so
that two dispatchers (two workers) start it once. A record is then marked in the handling store under
`WEBHOOK_CONCERN`, and not looked at again. With no enabled endpoint it reads nothing but the endpoints.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import logging
import socket
from datetime import UTC, datetime
from urllib.parse import urlsplit

from pydantic import ValidationError
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from activities.contract import SEND_BROADCAST_CONCERN, WEBHOOK_CONCERN, webhook_task_queue
from domain import (
    BroadcastRequestedEvent,
    Channel,
    ChannelEvent,
    DirectoryEntry,
    EmailBouncedEvent,
    EmailComplainedEvent,
    EmailFeedbackEvent,
    FailedToSendEmailEvent,
    FailedToSendSlackMessageEvent,
    NotificationView,
    SendEmailOp,
    SendEmailRequestedEvent,
    SendNotificationRequestedEvent,
    SendSlackMessageRequestedEvent,
    SucceededInSendingEmailEvent,
    SucceededInSendingSlackMessageEvent,
)
from domain.webhooks import WebhookChannel, WebhookDelivery, WebhookEvent, WebhookEventData, WebhookEventType
from intake import LOOK_BACK, is_outage
from settings import Settings, one_line
from streams import HandlingStatus, Record, StreamName, StreamStore
from streams.store import unreadable
from streams.webhooks import Endpoint, endpoints
from workflows.webhook import WebhookDeliveryWorkflow

log = logging.getLogger("notify.webhooks")

E = WebhookEventType
RECORD_EVENTS: dict[tuple[StreamName, str], WebhookEventType] = {
    (StreamName.NOTIFICATION_EVENT, "SendNotificationRequestedEvent"): E.REQUESTED,
    (StreamName.NOTIFICATION_EVENT, "SucceededInSendingNotificationEvent"): E.SENT,
    (StreamName.NOTIFICATION_EVENT, "PartiallySentNotificationEvent"): E.PARTIALLY_SENT,
    (StreamName.NOTIFICATION_EVENT, "FailedToSendNotificationEvent"): E.FAILED,
    (StreamName.NOTIFICATION_EVENT, "AudienceOptedOutOfAllChannelsEvent"): E.OPTED_OUT,
    (StreamName.NOTIFICATION_EVENT, "NotificationCancelledEvent"): E.CANCELLED,
    (StreamName.EMAIL_EVENT, "SucceededInSendingEmailEvent"): E.CHANNEL_DELIVERED,
    (StreamName.EMAIL_EVENT, "FailedToSendEmailEvent"): E.CHANNEL_FAILED,
    (StreamName.SLACK_EVENT, "SucceededInSendingSlackMessageEvent"): E.CHANNEL_DELIVERED,
    (StreamName.SLACK_EVENT, "FailedToSendSlackMessageEvent"): E.CHANNEL_FAILED,
    (StreamName.CLIENT_OPERATION, BroadcastRequestedEvent.__name__): E.BROADCAST_COMPLETED,
    (StreamName.EMAIL_EVENT, EmailBouncedEvent.__name__): E.EMAIL_BOUNCED,
    (StreamName.EMAIL_EVENT, EmailComplainedEvent.__name__): E.EMAIL_COMPLAINED,
}
"""Which record (by stream and type) each event is made of: the one place to add a record type."""
STATUSES = {
    E.REQUESTED: "pending",
    E.SENT: "sent",
    E.PARTIALLY_SENT: "partially_sent",
    E.FAILED: "failed",
    E.OPTED_OUT: "opted_out",
    E.CANCELLED: "cancelled",
    E.CHANNEL_DELIVERED: "sending",
    E.CHANNEL_FAILED: "sending",
    E.EMAIL_BOUNCED: "sent",
    E.EMAIL_COMPLAINED: "sent",
}
"""The notification's status each event says."""
CHANNEL_REQUESTS: dict[StreamName, type[SendEmailRequestedEvent] | type[SendSlackMessageRequestedEvent]] = {
    StreamName.EMAIL_EVENT: SendEmailRequestedEvent,
    StreamName.SLACK_EVENT: SendSlackMessageRequestedEvent,
}
CHANNEL_OUTCOMES = {
    SucceededInSendingEmailEvent.__name__: (SucceededInSendingEmailEvent, "succeeded"),
    FailedToSendEmailEvent.__name__: (FailedToSendEmailEvent, "failed"),
    SucceededInSendingSlackMessageEvent.__name__: (SucceededInSendingSlackMessageEvent, "succeeded"),
    FailedToSendSlackMessageEvent.__name__: (FailedToSendSlackMessageEvent, "failed"),
}
FEEDBACK_OUTCOMES = {E.EMAIL_BOUNCED: "bounced", E.EMAIL_COMPLAINED: "complained"}

"""Each look reaches `intake.LOOK_BACK` ids below the newest record seen (PostgreSQL's records that commit out of id
order); a full look, the first and every `FULL_LOOK_EVERY` looks, starts at the oldest enabled endpoint."""
FULL_LOOK_EVERY = 600
BATCH = 100


# -- where to, and how it is signed


class UnsafeUrl(ValueError):
    """A URL webhooks are not sent to: one line saying why."""


def check_url(url: str, allow_private: bool) -> None:
    """`UnsafeUrl` unless `url` is http(s) with a host whose every address is public (or `allow_private`)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeUrl(f"{url!r} is not an http:// or https:// URL")
    try:
        parts.port  # noqa: B018 - a port that is not a number raises
    except ValueError as error:
        raise UnsafeUrl(f"{url!r}: {error}") from None
    if allow_private:
        return
    try:
        found = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except socket.gaierror as error:
        raise UnsafeUrl(f"{parts.hostname!r} does not resolve: {error.strerror}") from None
    for *_, address in found:
        ip = ipaddress.ip_address(str(address[0]).split("%")[0])
        if not ip.is_global or ip.is_multicast:
            raise UnsafeUrl(
                f"{parts.hostname!r} resolves to {ip}, a private or reserved address: webhooks go to public "
                "addresses only (NOTIFY_WEBHOOK_ALLOW_PRIVATE=true lets them go there)"
            )


async def checked_url(url: str, allow_private: bool) -> None:
    """`check_url`, its name lookup off the event loop."""
    await asyncio.to_thread(check_url, url, allow_private)


def sign(secret: str, webhook_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` header's value: `v1,` and the base64 of the HMAC-SHA256, keyed with the secret's
    bytes (the base64 after `whsec_`), of `{id}.{timestamp}.{body}`."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def webhook_id(endpoint_id: str, record: Record) -> str:
    """A delivery's id: the endpoint's and the record's (its internal id is unique in the store, and the endpoint's
    id, random, beyond it)."""
    return f"msg_{endpoint_id.removeprefix('wh_')}_{record.internal_id}"


# -- the events


class NotReady(Exception):
    """The record's event cannot be made yet (the notification's view, or the broadcast's end, is not recorded)."""


class NotTold(Exception):
    """The record makes no event: a channel's message to the internal team, about a notification."""


async def event_of(
    store: StreamStore, record: Record, event_type: WebhookEventType, team: DirectoryEntry | None = None
) -> WebhookEvent:
    """The event `record` makes: `NotReady` if what it tells is not all recorded yet, `NotTold` if it is a message to
    the internal `team` (`Settings.saga_policies`); `ValidationError` if the record does not parse."""
    now = datetime.now(UTC)
    if event_type == E.BROADCAST_COMPLETED:
        return WebhookEvent(type=event_type, timestamp=now, data=await _broadcast_data(store, record))
    nid = record.json()["notification_id"]
    requested = await store.reader(StreamName.NOTIFICATION_EVENT).latest(nid, SendNotificationRequestedEvent.__name__)
    entity_id = None if requested is None else requested.object(SendNotificationRequestedEvent).operation.entity_id
    data = WebhookEventData(
        notification_id=nid, entity_id=entity_id, status=STATUSES[event_type], time=record.timestamp_utc
    )
    if event_type in FEEDBACK_OUTCOMES:  # after the send: what the provider said, of the address it said it of
        said = record.object(EmailFeedbackEvent)
        channel = WebhookChannel(outcome=FEEDBACK_OUTCOMES[event_type], address=said.address, reason=said.detail)
        data = data.model_copy(update={"channels": {str(Channel.EMAIL): channel}})
    elif record.type in CHANNEL_OUTCOMES:
        channels = await _channel(store, record)
        if team is not None and entity_id != team.id:
            if any(c.address is not None and c.address == team.address(Channel(n)) for n, c in channels.items()):
                raise NotTold(f"notification {nid}: the internal team's message")
        data = data.model_copy(update={"channels": channels})
    elif event_type != E.REQUESTED:
        view = await store.reader(StreamName.NOTIFICATION_VIEW).latest(nid)
        if view is None:
            raise NotReady(f"notification {nid} has no view yet")
        shown = view.object(NotificationView)
        channels = {
            str(c): WebhookChannel(outcome=v.outcome, address=v.address, reason=v.reason)
            for c, v in shown.channels.items()
        }
        data = data.model_copy(update={"status": shown.status, "channels": channels})
    return WebhookEvent(type=event_type, timestamp=now, data=data)


async def _channel(store: StreamStore, record: Record) -> dict[str, WebhookChannel]:
    model, outcome = CHANNEL_OUTCOMES[record.type]
    event: ChannelEvent = record.object(model)
    stream = StreamName(record.stream)
    requested = await store.reader(stream).latest(event.channel_operation_id, CHANNEL_REQUESTS[stream].__name__)
    address = None
    if requested is not None:
        operation = requested.object(CHANNEL_REQUESTS[stream]).operation
        address = (
            ", ".join(m.address for m in operation.to)
            if isinstance(operation, SendEmailOp)
            else f"{operation.workspace}/{operation.channel}"
        )
    reason = getattr(getattr(event, "response", None), "error", None) if outcome == "failed" else None
    channel = Channel.EMAIL if stream == StreamName.EMAIL_EVENT else Channel.SLACK
    return {str(channel): WebhookChannel(outcome=outcome, address=address, reason=reason)}


async def _broadcast_data(store: StreamStore, record: Record) -> WebhookEventData:
    history = await store.handling(StreamName.CLIENT_OPERATION).history(record.internal_id, SEND_BROADCAST_CONCERN)
    if not history or history[-1].status != HandlingStatus.COMPLETED:
        raise NotReady(f"broadcast {record.record_id} has not ended")
    ended = history[-1]
    status = "completed" if ended.details.startswith("every notification") else "cancelled"
    return WebhookEventData(broadcast_id=record.record_id, status=status, time=ended.timestamp_utc)


# -- the dispatcher


class WebhookDispatcher:
    """Every worker's: starts the deliveries of each record's event to each enabled endpoint that asked for it."""

    def __init__(self, store: StreamStore, temporal: Client, settings: Settings) -> None:
        self._store = store
        self._temporal = temporal
        self._settings = settings
        self._handling = {stream: store.handling(stream) for stream, _ in RECORD_EVENTS}
        self._team = settings.saga_policies().internal_team
        self._after: dict[StreamName, int] = {}
        self._pending: dict[tuple[str, int], tuple[Record, WebhookEventType]] = {}
        """The records whose event was not ready (a notification's view, a broadcast's end not recorded yet)."""
        self._looks = 0
        self._waiting = False

    async def run(self) -> None:
        """Dispatch until cancelled, looking every `NOTIFY_INTAKE_POLL_SECONDS`; an outage is waited for, a bug
        logged, and it goes on."""
        while True:
            try:
                await self.dispatch()
                if self._waiting:
                    self._waiting = False
                    log.warning("the webhook dispatcher dispatches again")
            except Exception as error:
                if not is_outage(error):
                    log.exception("the webhook dispatcher failed; it goes on")
                elif not self._waiting:
                    self._waiting = True
                    log.warning("the webhook dispatcher waits for the store or Temporal: %s", one_line(error))
            await asyncio.sleep(self._settings.intake_poll_seconds)

    async def dispatch(self) -> None:
        """One look: first at the records that were not ready at the last, then at each stream's records since the
        last look (less `LOOK_BACK`), or since the oldest enabled endpoint on a full look."""
        enabled = await self._enabled()
        if not enabled:
            self._after.clear()
            self._pending.clear()
            return
        self._looks += 1
        full = self._looks % FULL_LOOK_EVERY == 1
        oldest = enabled[0].internal_id
        for key, (record, event_type) in list(self._pending.items()):
            if await self._dispatch(record, event_type, enabled):
                del self._pending[key]
        for stream in dict.fromkeys(s for s, _ in RECORD_EVENTS):
            newest = await self._store.reader(stream).newest()
            await self._dispatch_stream(stream, oldest if full else max(oldest, self._after.get(stream, 0)))
            self._after[stream] = (newest.internal_id if newest else 0) - LOOK_BACK

    async def _enabled(self) -> list[Endpoint]:
        return [e for e in await endpoints(self._store) if e.disabled is None]

    async def _dispatch_stream(self, stream: StreamName, start: int) -> None:
        """Dispatch each record of `stream` after `start` that makes an event; one not ready yet is kept, to look at
        again first (after a restart, a full look finds it)."""
        for (source, record_type), event_type in RECORD_EVENTS.items():
            if source != stream:
                continue
            after = start
            while True:
                batch = await self._store.reader(stream).unhandled(
                    WEBHOOK_CONCERN, type=record_type, after=after, limit=BATCH
                )
                enabled = await self._enabled() if batch else []  # read after the records
                for record in batch:
                    if not await self._dispatch(record, event_type, enabled):
                        self._pending[record.stream, record.internal_id] = (record, event_type)
                if len(batch) < BATCH:
                    break
                after = batch[-1].internal_id

    async def _dispatch(self, record: Record, event_type: WebhookEventType, enabled: list[Endpoint]) -> bool:
        """Start the record's deliveries and mark it; False when it is not ready yet."""
        wanted = [e for e in enabled if e.internal_id < record.internal_id and event_type in e.added.events]
        if wanted:
            try:
                event = await event_of(self._store, record, event_type, self._team)
            except NotReady:
                return False
            except NotTold:
                wanted = []
            except ValidationError as error:
                unreadable(record, error)  # logged once, without its payload
                wanted = []
            except (KeyError, TypeError, ValueError) as error:  # a record not as written (its JSON): told to nobody
                log.warning("no webhook for record %s of %s: %r", record.internal_id, record.stream, error)
                wanted = []
            for endpoint in wanted:
                await self._start(endpoint, record, event)
        handling = self._handling[StreamName(record.stream)]
        said = f"{event_type}: {len(wanted)} deliver{'y' if len(wanted) == 1 else 'ies'} started"
        await self._store.write(
            [],
            after=[
                handling.move(record.internal_id, WEBHOOK_CONCERN, HandlingStatus.RUNNING, said),
                handling.move(record.internal_id, WEBHOOK_CONCERN, HandlingStatus.COMPLETED, said),
            ],
        )
        return True

    async def _start(self, endpoint: Endpoint, record: Record, event: WebhookEvent) -> None:
        delivery = WebhookDelivery(
            webhook_id=webhook_id(endpoint.added.id, record),
            endpoint_id=endpoint.added.id,
            stream=record.stream,
            internal_record_id=record.internal_id,
            event=event,
            retry_initial_seconds=self._settings.webhook_retry_initial_seconds,
            retry_hours=self._settings.webhook_retry_hours,
        )
        try:
            await self._temporal.start_workflow(
                WebhookDeliveryWorkflow.run,
                delivery,
                id=delivery.webhook_id,
                task_queue=webhook_task_queue(self._settings.task_queue),
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            )
        except WorkflowAlreadyStartedError:
            pass  # another worker's dispatcher started it
