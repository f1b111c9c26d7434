"""The client side of the subsystem: the connection to Temporal (TLS, API key, the SDK's runtime), and the
notification client, which requests a notification, follows it by id, and asks what was sent to whom.

A request gets its notification id from the client-operation stream, puts the operation there, and starts the saga
with that id as its workflow id. Reads come from the streams, or from the running saga while it has no view yet.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mimetypes
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import PlainSerializer, ValidationError
from temporalio.api.enums.v1 import IndexedValueType, PendingActivityState
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client, WorkflowExecutionDescription, WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.common import Priority, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import FailureError, WorkflowAlreadyStartedError
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.service import RPCError, RPCStatusCode, TLSConfig

import codec
import metrics
from activities.contract import SEND, SEND_NOTIFICATION_CONCERN, broadcast_task_queue
from domain import (
    Attachment,
    BroadcastKeyClaim,
    Channel,
    ChannelOutcome,
    ChannelView,
    DeliveryAuditEntry,
    DirectoryEntry,
    EscalationStatus,
    ExecuteOpRequestedEvent,
    IdempotencyKeyClaim,
    Model,
    NotificationAuditEntry,
    NotificationOutcome,
    NotificationRequest,
    NotificationStatus,
    NotificationView,
    SendNotificationRequestedEvent,
    SendNotificationToEntityOp,
    Tag,
    TagName,
    TemplateUse,
    admitted,
    admitted_idempotency_key,
    recipient_email_tag,
    request_tags,
    tag,
    validation_message,
)
from settings import WORKER_HINT, ConfigurationError, Settings, one_line
from streams import ExistingRecordStrategy, HandlingStatus, Record, StreamName, StreamStore
from streams.directory import entry_or_reason, import_entries, lookup, preferences_kept
from streams.store import unreadable
from streams.suppressions import FEEDBACK, email_feedback
from templating import TemplateError, Templates
from workflows import search
from workflows.notification import NotificationSaga

QUERY_TIMEOUT = timedelta(seconds=5)
UNDECIDED = (NotificationStatus.PENDING, NotificationStatus.SCHEDULED, NotificationStatus.SENDING)
RECENT_SCAN = 500
"""The most requests one page of `recent` looks at."""
SAGA_START_POLL = timedelta(milliseconds=250)
"""How often `result` looks for a saga a worker has yet to start."""
CONTENT = ("subject", "body", "html_body", "slack_text")
"""A request's content: what a template renders."""
log = logging.getLogger("notify.client")


def tls_config(settings: Settings) -> TLSConfig | bool:
    """TLS to Temporal: on when asked for, when a certificate or CA is given, or with an API key (Temporal Cloud)."""
    s = settings
    wanted = (
        s.temporal_tls or s.temporal_api_key or s.temporal_tls_cert or s.temporal_tls_ca or s.temporal_tls_server_name
    )
    if not wanted:
        return False

    def read(path: Path | None) -> bytes | None:
        return path.read_bytes() if path else None

    return TLSConfig(
        server_root_ca_cert=read(s.temporal_tls_ca),
        domain=s.temporal_tls_server_name,
        client_cert=read(s.temporal_tls_cert),
        client_private_key=read(s.temporal_tls_key),
    )


_runtime: Runtime | None = None


def temporal_runtime(metrics_at: str | None = None) -> Runtime:
    """Temporal's runtime for this process: the SDK core's own warnings and errors go to the `temporalio.core`
    logger, like every other log line, instead of straight to standard error; but not its line at every retry of a
    call while Temporal cannot be reached (whoever waits for Temporal says so once). Given `metrics_at` (HOST:PORT)
    by the first call, it serves Prometheus metrics there: the SDK's and the service's own (`metrics`)."""
    global _runtime
    if _runtime is not None:
        if metrics_at is not None:
            raise RuntimeError("Temporal's runtime was made before its metrics were asked for")
        return _runtime
    logging.getLogger("temporalio.core").addFilter(_not_a_retry)
    logging_config = LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
    )
    prometheus = None
    if metrics_at is not None:
        prometheus = PrometheusConfig(
            bind_address=metrics_at,
            counters_total_suffix=True,
            durations_as_seconds=True,
            histogram_bucket_overrides={metrics.NOTIFICATION_SECONDS: metrics.NOTIFICATION_SECONDS_BUCKETS},
        )
    try:
        _runtime = Runtime(telemetry=TelemetryConfig(logging=logging_config, metrics=prometheus))
    except ValueError as error:  # "Failed starting Prometheus exporter: Address already in use (os error 98)"
        raise OSError(
            f"cannot serve metrics on {metrics_at}: {one_line(error).rpartition(': ')[2]} (set NOTIFY_METRICS_PORT)"
        ) from error
    return _runtime


def _not_a_retry(record: logging.LogRecord) -> bool:
    return not record.name.endswith("temporalio_client::retry")


class TemporalUnreachable(ConnectionError):
    """Temporal cannot be reached at its address (nothing answers there, for now)."""


def temporal_unreachable(address: str, error: BaseException) -> TemporalUnreachable:
    """Temporal's "Failed client connect: ... tonic::transport::Error(...)" said in one plain sentence."""
    said = re.search(r'(?:message|error): "([^"]+)"', str(error))
    why = said.group(1).lower() if said else "no answer"
    return TemporalUnreachable(
        f"cannot reach Temporal at {address} ({why}): start it ({WORKER_HINT}), or set NOTIFY_TEMPORAL_ADDRESS to "
        "where it runs"
    )


def is_connect_failure(error: BaseException) -> bool:
    """Whether a Temporal call failed because the server cannot be reached (a lazy client fails on first use, a
    connected one when the server has gone)."""
    if isinstance(error, RPCError):
        return error.status == RPCStatusCode.UNAVAILABLE
    return isinstance(error, RuntimeError) and str(error).startswith("Failed client connect")


async def connect(settings: Settings, *, lazy: bool = False) -> Client:
    """A Temporal client for these settings, speaking pydantic models; a lazy one connects on first use."""
    try:
        return await Client.connect(
            settings.temporal_address,
            namespace=settings.temporal_namespace,
            data_converter=codec.data_converter(settings.payload_key_list),
            tls=tls_config(settings),
            api_key=settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None,
            lazy=lazy,
            runtime=temporal_runtime(),
        )
    except RuntimeError as error:
        if is_connect_failure(error):
            raise temporal_unreachable(settings.temporal_address, error) from error
        raise ConnectionError(f"cannot use Temporal at {settings.temporal_address}: {one_line(error)}") from error


async def missing_search_attributes(temporal: Client, namespace: str) -> list[str]:
    """The saga's search attributes (`workflows.search`) the namespace has not registered."""
    listed = await temporal.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
    known = {*listed.custom_attributes, *listed.system_attributes}
    return [key.name for key in search.KEYS if key.name not in known]


async def register_search_attributes(temporal: Client, namespace: str, names: Iterable[str]) -> None:
    """Register these of the saga's search attributes in the namespace (Temporal's operator API)."""
    wanted = set(names)
    await temporal.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=namespace,
            search_attributes={
                key.name: IndexedValueType.ValueType(key.indexed_value_type.value)
                for key in search.KEYS
                if key.name in wanted
            },
        )
    )


BROADCAST_PRIORITY = Priority(priority_key=4)
"""A broadcast's notifications' priority: after the others' (Temporal's default is 3; 1 goes first)."""


async def start_saga(temporal: Client, store: StreamStore, settings: Settings, request: NotificationRequest) -> None:
    """Start the request's saga (workflow id: the notification id) with its first search attributes, or find it
    started: however many callers race (the requester, the handlers of every worker), one saga runs per
    notification. A broadcast's notification runs on the broadcasts' task queue (`broadcast_task_queue`), and goes
    behind the others where they share one, its channel's (`BROADCAST_PRIORITY`, which its steps and sends inherit),
    so that a large broadcast does not hold back the notifications requested beside it."""
    try:
        await temporal.start_workflow(
            NotificationSaga.run,
            request,
            id=request.notification_id,
            task_queue=broadcast_task_queue(settings.task_queue)
            if request.operation.broadcast_id
            else settings.task_queue,
            search_attributes=search.at_start(request, datetime.now(UTC)),
            priority=BROADCAST_PRIORITY if request.operation.broadcast_id else Priority.default,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
    except WorkflowAlreadyStartedError as error:  # it ran, and has ended
        handling = store.handling(StreamName.CLIENT_OPERATION)
        status = await handling.status(request.client_operation_record_id, SEND_NOTIFICATION_CONCERN)
        if status == HandlingStatus.AVAILABLE_BY_DEFAULT:  # no saga of ours took the operation up: not ours
            raise ConfigurationError(
                f"Temporal already has a workflow {request.notification_id!r} that the streams know nothing of: "
                "NOTIFY_STREAMS_URL and the Temporal namespace must be kept (and reset) together"
            ) from error


class Accepted(Model):
    """A request taken: the notification's id, and its status (`scheduled` when it waits for its time)."""

    id: str
    status: NotificationStatus


class UnknownNotification(LookupError):
    def __init__(self, notification_id: str) -> None:
        super().__init__(f"no notification with id {notification_id!r}")


class NotCancellable(Exception):
    """The notification has finished sending (or delivered everything before the cancel took effect): nothing was
    stopped."""


class RequestRefused(ValueError):
    """A request not taken as given, and nothing written: why, in one line. `field` names what is at fault when it
    is not the request's content (its `idempotency_key`): each door names it its own way (`said`)."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.field = field

    def said(self, **names: str) -> str:
        """In one line, the field at fault named as the door names it (`idempotency_key="--idempotency-key"`)."""
        return f"{names.get(self.field, self.field)}: {self}" if self.field else str(self)


class EntityChangeRefused(RequestRefused):
    """A request carries an entity the directory has otherwise, from a door that may not change the directory."""

    def __init__(self, entity_id: str) -> None:
        super().__init__(
            f"entity {entity_id!r} is in the directory as another entry: changing it takes a key with the 'admin' "
            "scope (or give its id alone)"
        )


CLAIMED_BY = {
    IdempotencyKeyClaim.__name__: "a notification's request",
    BroadcastKeyClaim.__name__: "a broadcast's request",
}
"""What claimed an idempotency key, by its claim's record type."""
C = TypeVar("C", IdempotencyKeyClaim, BroadcastKeyClaim)


class IdempotencyKeyConflict(RequestRefused):
    """The key was used for another request, or for one its claim cannot tell (`why`)."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"idempotency key {key!r} {why}")


def checked_idempotency_key(key: str | None) -> None:
    """Refuse (`RequestRefused`) an idempotency key no request may carry, before anything is opened or written."""
    if key is not None:
        try:
            admitted_idempotency_key(key)
        except ValidationError as error:
            raise RequestRefused(validation_message(error), field="idempotency_key") from error


def named_contents(attachments: Sequence[Attachment], contents: Sequence[bytes]) -> list[bytes]:
    """`contents`, each once, if they are the files `attachments` name, each whole (by SHA-256 and size):
    `RequestRefused` otherwise. What a request keeps (`StreamStore.put_contents`) before its record."""
    given = {hashlib.sha256(c).hexdigest(): c for c in contents}
    if set(given) != {a.sha256 for a in attachments} or any(len(given[a.sha256]) != a.size for a in attachments):
        raise RequestRefused("attachments: the files given are not those the request names")
    return list(given.values())


class NotificationClient:
    def __init__(
        self, store: StreamStore, temporal: Client, settings: Settings, *, owner: StreamStore | None = None
    ) -> None:
        """`owner`: the store as the owner of the streams, which alone writes the directory, for requests that carry
        their entity inline (`submit`)."""
        self._store = store
        self._owner = owner
        self._temporal = temporal
        self._settings = settings
        self._client_operations = store.writer(StreamName.CLIENT_OPERATION)
        self._identity: str | None = None
        self._templates = Templates(settings.templates_dir)

    @property
    def store(self) -> StreamStore:
        return self._store

    @property
    def temporal(self) -> Client:
        return self._temporal

    @property
    def settings(self) -> Settings:
        return self._settings

    async def full_id(self, notification_id: str) -> str:
        """`notification_id` as issued: a bare number is one this store issued (`7` is `3f9a1c2e-7`, and `7.12`, the
        12th recipient of broadcast 7, `3f9a1c2e-7.12`)."""
        bare = re.fullmatch(r"\d+(\.\d+)?", notification_id)
        return f"{await self._store_identity()}-{notification_id}" if bare else notification_id

    async def new_id(self) -> str:
        """A new notification id: the store's identity and the client-operation stream's next number, so that it is
        unique in a Temporal namespace other deployments share, and after the store is reset."""
        return f"{await self._store_identity()}-{await self._client_operations.next_unique_id()}"

    async def _store_identity(self) -> str:
        if self._identity is None:
            self._identity = await self._store.identity()
        return self._identity

    async def compose(
        self,
        content: dict[str, Any],
        template: str | None = None,
        data: Mapping[str, Any] | None = None,
        entity: DirectoryEntry | None = None,
    ) -> tuple[SendNotificationToEntityOp, list[bytes]]:
        """The operation a request asks for, checked against every rule for a new request, to an entity in the
        directory, or to `entity`, the one it carries, and the contents of the files its template names. `content`
        holds its fields (`entity_id`, `subject`, `body`, `html_body`, `slack_text`, `tags`, `send_at`,
        `attachments`, `attach_to`, `category`); with `template`, the subject and bodies are rendered from it, with
        `data` and the entity, and may not be given, and the files it names are attached after the request's own.
        `RequestRefused` says what is wrong; nothing is written."""
        self.check_category(content.get("category"))
        try:
            return await self._composed(content, template, data, entity)
        except ValidationError as error:
            raise RequestRefused(validation_message(error)) from error
        except TemplateError as error:
            raise RequestRefused(str(error)) from error

    async def _composed(
        self,
        content: dict[str, Any],
        template: str | None,
        data: Mapping[str, Any] | None,
        entity: DirectoryEntry | None,
    ) -> tuple[SendNotificationToEntityOp, list[bytes]]:
        if template is None:
            if data is not None:
                raise TemplateError("data is rendered by a template: name one")
            operation = admitted(SendNotificationToEntityOp, content)
            await self._entity(operation.entity_id, entity)
            return operation, []
        given = [name for name in CONTENT if content.get(name) is not None]
        if given:
            raise TemplateError(f"template {template!r}: {given[0]} is rendered by the template, and cannot be given")
        entry = await self._entity(str(content.get("entity_id")), entity)
        rendered = await asyncio.to_thread(  # off the event loop: a rendering may take up to its time limit
            self._templates.render, template, data or {}, entry.model_dump(mode="json", exclude_none=True)
        )
        files = [attachment(f.filename, f.content, f.content_type, f.content_id) for f in rendered.files]
        category = content.get("category") or rendered.category
        self.check_category(category)
        operation = admitted(
            SendNotificationToEntityOp,
            {
                **content,
                "subject": rendered.subject,
                "body": rendered.text,
                "html_body": rendered.html,
                "slack_text": rendered.slack,
                "template": TemplateUse(name=rendered.name, sha256=rendered.sha256, locale=rendered.locale),
                "category": category,
                "attachments": [*content.get("attachments", []), *files],
            },
        )
        return operation, [f.content for f in rendered.files]

    async def _entity(self, entity_id: str, given: DirectoryEntry | None) -> DirectoryEntry:
        """The entity a request is for: the one it carries, or the directory's (`RequestRefused` when it has none, or
        one that cannot be read)."""
        if given is not None:
            return given
        entry = await entry_or_reason(self._store.reader(StreamName.ENTITY_DIRECTORY), entity_id)
        if isinstance(entry, str):
            raise RequestRefused(entry)
        return entry

    async def submit(
        self,
        content: Mapping[str, Any],
        template: str | None = None,
        data: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        entity: Mapping[str, Any] | None = None,
        *,
        may_change_entity: bool = True,
        contents: Sequence[bytes] = (),
    ) -> Accepted:
        """Request a notification as a door (the CLI, the API) asks for one: its content, or a template and its data
        (`compose`; fields given as None are not given), at most once per idempotency key (`request`), to an entity
        in the directory or to `entity`, given inline (its directory entry: recorded, or updated, first; changing an
        entry already there only if `may_change_entity`), with `contents`, the files its `attachments` name
        (`attachment`). Its id, and its status: for a repeated request, its status now. `RequestRefused` says what is
        wrong, and nothing is written."""
        checked_idempotency_key(idempotency_key)
        inline = None
        if entity is not None:
            try:
                inline = admitted(DirectoryEntry, entity)
            except ValidationError as error:
                raise RequestRefused(validation_message(error), field="entity") from error
            content = {**content, "entity_id": inline.id}
            if not may_change_entity:
                directory = self._store.reader(StreamName.ENTITY_DIRECTORY)
                current = await lookup(directory, inline.id)
                if current is not None and current != preferences_kept(inline, current):
                    raise EntityChangeRefused(inline.id)
        operation, rendered = await self.compose(
            {k: v for k, v in content.items() if v is not None}, template, data, inline
        )
        notification_id, repeated = await self._requested(operation, idempotency_key, inline, [*contents, *rendered])
        scheduled = operation.send_at is not None and operation.send_at > datetime.now(UTC)
        status = NotificationStatus.SCHEDULED if scheduled else NotificationStatus.PENDING
        if repeated:  # its status now, not at the first request; as at first while Temporal cannot say
            try:
                status = (await self.status(notification_id))["status"]
            except (RPCError, RuntimeError) as error:
                if not is_connect_failure(error):
                    raise
        return Accepted(id=notification_id, status=status)

    def check_category(self, category: str | None) -> None:
        """`RequestRefused` for a category `NOTIFY_CATEGORIES_FILE` does not configure."""
        if category is not None and category not in (configured := self._settings.categories()):
            known = ", ".join(configured) or "none: NOTIFY_CATEGORIES_FILE is not set"
            raise RequestRefused(f"{category!r} is not a configured category ({known})", field="category")

    async def request(
        self,
        operation: SendNotificationToEntityOp,
        idempotency_key: str | None = None,
        contents: Sequence[bytes] = (),
    ) -> str:
        """Request a notification and return its id; `contents` are the files its `attachments` name, each once
        (`attachment`). Repeating a request with the same idempotency key returns the first request's id and sends
        nothing more. Both are checked against every rule for a new request (`domain.admitted`) before anything is
        written: a `pydantic.ValidationError` says what is wrong."""
        return (await self._requested(operation, idempotency_key, None, contents))[0]

    async def _requested(
        self,
        operation: SendNotificationToEntityOp,
        idempotency_key: str | None,
        entity: DirectoryEntry | None,
        contents: Sequence[bytes],
    ) -> tuple[str, bool]:
        """`request`'s id, and whether the request repeats one already recorded (by its idempotency key). `entity`,
        given inline, is recorded in the directory before a request that is new, once its key is claimed: a request
        refused, or repeated, changes nothing there. The contents are kept before the request that names them."""
        operation = admitted(SendNotificationToEntityOp, operation)
        self.check_category(operation.category)
        given = named_contents(operation.attachments, contents)
        key_tags = []
        if idempotency_key is None:
            notification_id = await self.new_id()
        else:
            notification_id = await self._claim(admitted_idempotency_key(idempotency_key), operation)
            key_tags.append(tag(TagName.IDEMPOTENCY_KEY, idempotency_key))
        if entity is not None and (
            idempotency_key is None
            or await self._store.reader(StreamName.CLIENT_OPERATION).latest(notification_id) is None
        ):
            if self._owner is None:
                raise RuntimeError("a client without the owner's store cannot record an entity given inline")
            await import_entries(self._owner, [entity])
        if given:
            await self._store.put_contents(notification_id, given)
        put = await self._client_operations.put(
            notification_id,
            ExecuteOpRequestedEvent(id=notification_id, operation=operation, timestamp_utc=datetime.now(UTC)),
            tags=[*request_tags(notification_id, operation), *key_tags],
            strategy=ExistingRecordStrategy.DO_NOT_WRITE_IF_FOUND_BY_ID,
        )
        repeated = put.internal_id is None
        if repeated and await self._taken_up(put.record_internal_id):
            return notification_id, True  # a repeated request whose saga has run, or runs: nothing more to start
        request = NotificationRequest(
            notification_id=notification_id, operation=operation, client_operation_record_id=put.record_internal_id
        )
        try:
            await start_saga(self._temporal, self._store, self._settings, request)
        except Exception as error:  # the request is recorded, and so accepted: a worker's handler starts its saga
            if is_connect_failure(error):
                said = "its saga starts when Temporal is back"
                error = temporal_unreachable(self._settings.temporal_address, error)
            else:
                said = "its saga is not started yet; a worker's handler starts it"
            log.warning("notification %s is accepted; %s (%s)", notification_id, said, one_line(error))
        return notification_id, repeated

    async def _taken_up(self, client_operation_record_id: int) -> bool:
        """Whether a saga has taken up the client's operation: then it must not be started again, even once Temporal
        has forgotten it (after the namespace's retention)."""
        handling = self._store.handling(StreamName.CLIENT_OPERATION)
        status = await handling.status(client_operation_record_id, SEND_NOTIFICATION_CONCERN)
        return status != HandlingStatus.AVAILABLE_BY_DEFAULT

    async def _claim(self, key: str, operation: SendNotificationToEntityOp) -> str:
        """The notification id the key is claimed for: the first request's, or a new one that this request claims."""

        def claim(notification_id: str) -> IdempotencyKeyClaim:
            return IdempotencyKeyClaim(idempotency_key=key, notification_id=notification_id, operation=operation)

        first = await self.claim_key(key, IdempotencyKeyClaim, claim, TagName.NOTIFICATION_ID)
        if isinstance(first, str):
            return first
        if _as_compared(first.operation) != _as_compared(operation):
            raise IdempotencyKeyConflict(
                key, f"was already used by notification {first.notification_id} with a different request"
            )
        return first.notification_id

    async def claim_key(self, key: str, kind: type[C], claim: Callable[[str], C], id_tag: TagName) -> str | C:
        """A new id that this request claims the key for (its claim, `claim` of the id, tagged with the id under
        `id_tag`); or the claim of the request that claimed the key first, of `kind` (`IdempotencyKeyConflict` if it
        is another kind's, or cannot be read). Only requests that race for a new key each take an id, of which one is
        used."""
        record_id = f"idempotency-key:{key}"
        claims = self._store.reader(StreamName.CLIENT_OPERATION)
        existing = await claims.latest(record_id)
        if existing is None:
            new_id = await self.new_id()
            put = await self._client_operations.put(
                record_id,
                claim(new_id),
                tags=[tag(id_tag, new_id), tag(TagName.IDEMPOTENCY_KEY, key)],
                strategy=ExistingRecordStrategy.DO_NOT_WRITE_IF_FOUND_BY_ID,
            )
            if put.internal_id is not None:
                return new_id
            existing = await claims.latest(record_id)  # another request claimed it first
            assert existing is not None
        if existing.type != kind.__name__:
            raise IdempotencyKeyConflict(key, f"was already used by {CLAIMED_BY.get(existing.type, 'another request')}")
        try:
            return existing.object(kind)
        except ValidationError as error:  # the key is taken, by a request nobody can tell
            said = unreadable(existing, error)
            raise IdempotencyKeyConflict(key, f"is claimed by a record that cannot be read ({said})") from error

    async def cancel(self, notification_id: str) -> dict[str, Any]:
        """Cancel a notification that has not finished sending, wait for its saga to stop, and return its view:
        what it delivered meanwhile stays delivered (an attempt under way is waited for). `NotCancellable` when it
        had finished sending, or when every attempt under way delivered after all."""
        notification_id = await self.full_id(notification_id)
        await self.status(notification_id)  # an unknown id raises UnknownNotification
        handle = self._temporal.get_workflow_handle_for(NotificationSaga.run, notification_id)
        try:
            await handle.execute_update(NotificationSaga.cancel, rpc_timeout=QUERY_TIMEOUT)
        except WorkflowUpdateFailedError as error:
            cause = error.cause
            raise NotCancellable(cause.message if isinstance(cause, FailureError) else str(cause)) from error
        except RPCError as error:
            if error.status == RPCStatusCode.DEADLINE_EXCEEDED:
                raise NotCancellable(
                    f"no worker answered for notification {notification_id} within "
                    f"{QUERY_TIMEOUT.total_seconds():g} s: nothing changed (is a worker running?)"
                ) from error
            if error.status != RPCStatusCode.NOT_FOUND:
                raise
            status = await self.status(notification_id)
            raise NotCancellable(f"notification {notification_id} is {status['status']}: nothing changed") from error
        await handle.result()
        view = await self.status(notification_id)
        if view["status"] != NotificationStatus.CANCELLED:  # every attempt under way delivered: nothing was stopped
            raise NotCancellable(f"notification {notification_id} was {view['status']} before the cancel took effect")
        return view

    async def result(self, notification_id: str) -> NotificationView:
        """Wait for the saga to end and return its view; for a request whose saga has not started yet, wait for a
        worker to start it (or to refuse it: then the view says why)."""
        notification_id = await self.full_id(notification_id)
        handle = self._temporal.get_workflow_handle_for(NotificationSaga.run, notification_id)
        while True:
            try:
                return await handle.result()
            except RPCError as error:
                if error.status != RPCStatusCode.NOT_FOUND:
                    raise
            view = await self.status(notification_id)  # the saga may have started since: then it is waited for
            if view["status"] not in UNDECIDED:  # its recorded view, or refused (no saga, and never one)
                return NotificationView.model_validate(view)
            await asyncio.sleep(SAGA_START_POLL.total_seconds())

    async def status(self, notification_id: str) -> dict[str, Any]:
        """The view as JSON: the recorded one once the saga has ended, the running saga's own before."""
        notification_id = await self.full_id(notification_id)
        views = self._store.reader(StreamName.NOTIFICATION_VIEW)
        record = await views.latest(notification_id)
        if record is not None:
            return await self._recorded_view(record)
        requested = await self._store.reader(StreamName.CLIENT_OPERATION).latest(notification_id)
        if requested is None or requested.type != ExecuteOpRequestedEvent.__name__:  # an idempotency key's claim
            raise UnknownNotification(notification_id)
        handle = self._temporal.get_workflow_handle_for(NotificationSaga.run, notification_id)
        try:
            description = await handle.describe()
            running = description.status
        except (RPCError, RuntimeError) as error:
            if isinstance(error, RPCError) and error.status == RPCStatusCode.NOT_FOUND:
                running = None
            elif is_connect_failure(error) and not await self._taken_up(requested.internal_id):
                return _from_request(
                    requested, NotificationStatus.PENDING, "its saga starts when Temporal can be reached again"
                )
            else:
                raise  # where its saga is, only Temporal can say
        if running == WorkflowExecutionStatus.RUNNING:
            try:
                view = await handle.query(NotificationSaga.status, rpc_timeout=QUERY_TIMEOUT)
                return _with_attempts(view, description).model_dump(mode="json")
            except RPCError as error:
                if error.status != RPCStatusCode.DEADLINE_EXCEEDED:
                    raise
                status, failure = NotificationStatus.PENDING, "its saga is running, and no worker answered for it"
        else:
            record = await views.latest(notification_id)  # the saga may have ended since the first look
            if record is not None:
                return await self._recorded_view(record)
            if running == WorkflowExecutionStatus.COMPLETED:  # ended, and the store did not take its view: its own
                return (await handle.result()).model_dump(mode="json")
            if running is None:
                handling = self._store.handling(StreamName.CLIENT_OPERATION)
                latest = (await handling.history(requested.internal_id, SEND_NOTIFICATION_CONCERN))[-1:]
                if latest and latest[0].status == HandlingStatus.DISABLED_FOR_RECORD:
                    return _from_request(requested, NotificationStatus.FAILED, latest[0].details)
                return _from_request(
                    requested, NotificationStatus.PENDING, "its saga has not started yet: a worker starts it"
                )
            status, failure = NotificationStatus.FAILED, f"its saga ended {running.name} without a view"
        return _from_request(requested, status, failure)

    async def _recorded_view(self, record: Record) -> dict[str, Any]:
        """The view a record holds, as JSON; or, if it does not parse as one, a view that says so, of the entity
        the notification's request names (a view carries no entity tag)."""
        try:
            NotificationView.model_validate_json(record.payload)
        except ValidationError as error:
            requested = await self._store.reader(StreamName.CLIENT_OPERATION).latest(record.record_id or "")
            return _unreadable_view(record, error, requested.tag(TagName.ENTITY_ID) if requested else None)
        view = record.json()
        email = view.get("channels", {}).get(Channel.EMAIL)
        if email and email.get("outcome") == ChannelOutcome.SUCCEEDED and email.get("channel_operation_id"):
            said = await email_feedback(self._store.reader(StreamName.EMAIL_EVENT), email["channel_operation_id"])
            if said:  # after the send: a bounce, a complaint
                email["feedback"] = [f.model_dump(mode="json") for f in said]
        return view

    async def recent(
        self, *, entity_id: str | None, status: NotificationStatus | None, limit: int, before: int | None
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Up to `limit` views of the newest requests (of an entity, with a status), requested before the request
        with internal id `before`; and where the next page starts (None on the last). A page looks at most
        `RECENT_SCAN` requests, so that a rare status does not read the whole stream in one call: it may come back
        short, with a cursor to go on."""
        requests = self._store.reader(StreamName.CLIENT_OPERATION)
        tags = [] if entity_id is None else [tag(TagName.ENTITY_ID, entity_id)]
        views: list[dict[str, Any]] = []
        looked = 0
        while looked < RECENT_SCAN:
            batch = await requests.newest_by_tags(
                *tags, type=ExecuteOpRequestedEvent.__name__, before=before, limit=limit
            )
            batch_views = await asyncio.gather(*(self.status(r.record_id or "") for r in batch))
            for record, view in zip(batch, batch_views, strict=True):
                looked += 1
                before = record.internal_id
                if status is None or view["status"] == status:
                    views.append(view)
                    if len(views) == limit:
                        return views, before
            if len(batch) < limit:
                return views, None
        return views, before

    async def events(self, notification_id: str) -> list[Record]:
        """Every record of the notification, across all its streams, in the order they were written."""
        notification_id = await self.full_id(notification_id)
        streams = [s for s in StreamName if s != StreamName.WEBHOOK_DELIVERY]  # the endpoints' business: admin's
        records = await self._store.read_tagged(streams, [tag(TagName.NOTIFICATION_ID, notification_id)])
        if not records:
            raise UnknownNotification(notification_id)
        return records

    async def audit_email(self, address: str) -> list[DeliveryAuditEntry]:
        records = await self._store.reader(StreamName.EMAIL_EVENT).by_tags(recipient_email_tag(address))
        return _deliveries(Channel.EMAIL, address, records)

    async def audit_slack(self, channel: str) -> list[DeliveryAuditEntry]:
        """Slack messages to a channel, given as `CHANNEL` or `WORKSPACE/CHANNEL`."""
        workspace, _, channel_id = channel.rpartition("/")
        tags = [tag(TagName.SLACK_CHANNEL, channel_id)]
        if workspace:
            tags.append(tag(TagName.SLACK_WORKSPACE, workspace))
        records = await self._store.reader(StreamName.SLACK_EVENT).by_tags(*tags)
        return _deliveries(Channel.SLACK, channel, records)

    async def audit_entity(self, entity_id: str) -> list[NotificationAuditEntry]:
        """The notifications requested for an entity, each with its status now and the files it named."""
        requested = await self._store.reader(StreamName.NOTIFICATION_EVENT).by_tags(
            tag(TagName.ENTITY_ID, entity_id), type="SendNotificationRequestedEvent"
        )
        entries = []
        for record in requested:
            nid = record.record_id
            assert nid is not None
            status = (await self.status(nid))["status"]
            try:
                operation = SendNotificationRequestedEvent.model_validate_json(record.payload).operation
                subject, files = operation.subject, operation.attachments
            except ValidationError as error:
                unreadable(record, error)
                subject, status, files = "", NotificationStatus.UNREADABLE, []
            entries.append(
                NotificationAuditEntry(
                    notification_id=nid,
                    subject=subject,
                    status=status,
                    requested_at=record.timestamp_utc,
                    attachments=files,
                )
            )
        return entries


def attachment(
    filename: str, content: bytes, media_type: str | None = None, content_id: str | None = None
) -> Attachment:
    """How a request names a file it sends (`SendNotificationToEntityOp.attachments`): by name, media type (by
    default, what the name's extension says), size and SHA-256; with a content id, an image its HTML body shows."""
    guessed = mimetypes.guess_type(filename, strict=False)[0] or ""
    if guessed.startswith(("message/", "multipart/")) or not guessed:  # a file, not a part of the message's own
        guessed = "application/octet-stream"
    return admitted(
        Attachment,
        {
            "filename": filename,
            "media_type": (media_type or guessed).lower(),
            "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
            "content_id": content_id,
        },
    )


def file_summary(file: Attachment) -> str:
    """A file in one line, as the audit lists it under its message or notification: name, media type, size, SHA-256,
    and for an inline image, the content id its HTML shows it by."""
    inline = f", inline as cid:{file.content_id}" if file.content_id else ""
    return f"{file.filename} ({file.media_type}, {file.size:,} bytes, sha256 {file.sha256}{inline})"


def _as_compared(operation: SendNotificationToEntityOp) -> SendNotificationToEntityOp:
    """An operation as a repeated request is compared to the first: its tags in any order (SQL's `notify_request`
    sorts them by name)."""
    return operation.model_copy(update={"tags": sorted(operation.tags, key=lambda t: (t.name, t.value))})


class EventRecord(Model):
    """A record of a notification, as `events` shows it (and the API): where it is, what it is, its tags and its
    payload; for a payload that does not parse, `{"unreadable": WHY}`."""

    internal_id: int
    stream: StreamName
    record_id: str | None
    type: str
    timestamp_utc: Annotated[datetime, PlainSerializer(datetime.isoformat, return_type=str)]
    tags: list[Tag]
    payload: dict[str, Any]

    @classmethod
    def of(cls, record: Record) -> EventRecord:
        return cls(
            internal_id=record.internal_id,
            stream=StreamName(record.stream),
            record_id=record.record_id,
            type=record.type,
            timestamp_utc=record.timestamp_utc,
            tags=list(record.tags),
            payload=_payload(record),
        )


def _payload(record: Record) -> dict[str, Any]:
    try:
        payload = record.json()
        if isinstance(payload, dict):
            return payload
        error: Exception = TypeError(f"a JSON {type(payload).__name__}, not an object")
    except ValueError as decoding:
        error = decoding
    return {"unreadable": unreadable(record, error)}


def _unreadable_view(record: Record, error: Exception, entity_id: str | None = None) -> dict[str, Any]:
    """A view that says `record` does not parse, of the entity its tags name (a request's) or `entity_id`."""
    return NotificationView(
        id=record.tag(TagName.NOTIFICATION_ID) or record.record_id or "",
        status=NotificationStatus.UNREADABLE,
        entity_id=record.tag(TagName.ENTITY_ID) or entity_id or "",
        subject="",
        outcome=NotificationOutcome(failures=[unreadable(record, error)]),
        requested_at=record.timestamp_utc,
    ).model_dump(mode="json")


def _from_request(requested: Record, status: NotificationStatus, why: str) -> dict[str, Any]:
    """The view of a notification that has no view of its saga's (not started, not answering): its request, and why
    it waits (`pending`) or failed."""
    try:
        event = requested.object(ExecuteOpRequestedEvent)
    except ValidationError as error:
        return _unreadable_view(requested, error)
    operation = event.operation
    assert isinstance(operation, SendNotificationToEntityOp)
    return NotificationView(
        id=event.id,
        status=status,
        entity_id=operation.entity_id,
        subject=operation.subject,
        outcome=NotificationOutcome(failures=[] if status == NotificationStatus.PENDING else [why]),
        requested_at=requested.timestamp_utc,
        send_at=operation.send_at,
        waiting=why if status == NotificationStatus.PENDING else None,
    ).model_dump(mode="json")


def _with_attempts(view: NotificationView, description: WorkflowExecutionDescription) -> NotificationView:
    """The running saga's view, with the attempts, last error and next attempt of each channel it is sending on, as
    Temporal has them (at most one send per channel runs at a time: the entity's, its fallback's, or the team's)."""
    pending: dict[Channel, dict[str, Any]] = {}
    for activity in description.raw_description.pending_activities:
        channel = next((c for c, send in SEND.items() if send.name == activity.activity_type.name), None)
        if channel is None:
            continue
        waiting = activity.state in (
            PendingActivityState.PENDING_ACTIVITY_STATE_SCHEDULED,
            PendingActivityState.PENDING_ACTIVITY_STATE_PAUSED,
        )  # for its next attempt; otherwise that attempt runs (or is being cancelled or paused while it runs)
        pending[channel] = {
            "attempts": activity.attempt - 1 if waiting else activity.attempt,
            "last_error": activity.last_failure.message if activity.HasField("last_failure") else None,
            "next_attempt_at": activity.next_attempt_schedule_time.ToDatetime(UTC)
            if activity.HasField("next_attempt_schedule_time")
            else None,
        }

    def live(channels: dict[Channel, ChannelView]) -> dict[Channel, ChannelView]:
        return {
            c: v.model_copy(update=pending[c]) if c in pending and v.outcome == ChannelOutcome.SENDING else v
            for c, v in channels.items()
        }

    escalation = view.escalation
    if escalation is not None and escalation.status == EscalationStatus.SENDING:
        return view.model_copy(
            update={"escalation": escalation.model_copy(update={"channels": live(escalation.channels)})}
        )
    return view.model_copy(update={"channels": live(view.channels)})


def _deliveries(channel: Channel, address: str, records: Iterable[Record]) -> list[DeliveryAuditEntry]:
    """One entry per channel operation, from its requested event and its outcome event, if any: `bounced` or
    `complained` with what the provider said, when an email that was sent came back so."""
    by_operation: dict[str, list[Record]] = {}
    for record in records:
        by_operation.setdefault(record.record_id or "", []).append(record)
    entries = []
    for operation_id, group in by_operation.items():
        requested = next((r for r in group if r.type.endswith("RequestedEvent")), None)
        if requested is None:
            continue
        ended = next((r for r in reversed(group) if r is not requested and r.type not in FEEDBACK), None)
        entry = _delivery(channel, address, int(operation_id), requested, ended)
        said = next((r for r in reversed(group) if r.type in FEEDBACK), None)
        if said is not None and entry.outcome == "sent":
            entry = entry.model_copy(update={"outcome": FEEDBACK[said.type], "reason": said.json().get("detail")})
        entries.append(entry)
    return entries


def _delivery(
    channel: Channel, address: str, operation_id: int, requested: Record, ended: Record | None
) -> DeliveryAuditEntry:
    """A channel operation's entry, from its requested event and its outcome event (or `unreadable`, saying which
    of them does not parse)."""
    reading = requested
    try:
        op = requested.json()["operation"]
        notification_id, subject = (
            op["notification_id"],
            op.get("subject") or _first_line(op["text"]),
        )
        attachments = [Attachment.model_validate(a) for a in op.get("attachments", [])]
        reading = ended or requested
        reason = ended.json()["response"].get("error") if ended else None
        outcome = "sending" if ended is None else "failed" if ended.type.startswith("Failed") else "sent"
    except (ValueError, LookupError, TypeError, AttributeError) as error:
        notification_id = requested.tag(TagName.NOTIFICATION_ID) or ""
        subject, reason, outcome = None, unreadable(reading, error), "unreadable"
        attachments = []
    return DeliveryAuditEntry(
        notification_id=notification_id,
        channel=channel,
        channel_operation_id=operation_id,
        address=address,
        subject=subject,
        outcome=outcome,
        reason=reason,
        requested_at=requested.timestamp_utc,
        completed_at=ended.timestamp_utc if ended else None,
        attachments=attachments,
    )


_SLACK_LINK = re.compile(r"<([^<>|]*)(?:\|([^<>]*))?>")
_SLACK_MARK = re.compile(r"(?<![\w*_~`])([*_~`])(?=\S)((?:(?!\1).)+?)(?<=\S)\1(?![\w*_~`])")
"""A marked span: the mark, then text up to the same mark's next (and no further: linear however many marks)."""


def _first_line(slack_text: str) -> str:
    """What names a Slack message in a list: its text's first line, plain, at most 120 characters."""
    return _slack_plain(slack_text.partition("\n")[0][:500])[:120]


def _slack_plain(text: str) -> str:
    """Slack's markup (`mrkdwn`) as plain text, as a line that names a message shows it: `*bold*`, `_italic_`,
    `~struck~` and `code` without their marks, `<URL|label>` as its label, `<@U123>` and `<!here>` as named, and
    `&lt;` `&gt;` `&amp;` as the characters they stand for."""
    text = _SLACK_LINK.sub(lambda m: m.group(2) or m.group(1).lstrip("!@#"), text).replace("```", "")
    for _ in range(3):  # marks nest: *_both_*
        text = _SLACK_MARK.sub(r"\2", text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
