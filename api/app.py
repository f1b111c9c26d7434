"""The HTTP API: request, follow and cancel notifications, ask the audit, keep the directory. JSON in and out;
errors are `application/problem+json` (RFC 9457) with a one-line `detail`. Every route but the health checks needs
`Authorization: Bearer KEY`, a key with the route's scope (`starter.py apikey create`)."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, cast

import uvicorn
from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.client import Client
from temporalio.exceptions import TemporalError

from api import page
from api.codec_server import CodecServer
from api.keys import ApiKeyIssued, ApiKeys
from api.keys import Scope as KeyScope
from api.problems import Problem, problem
from api.telemetry import Measured, Telemetry
from client import (
    Accepted,
    IdempotencyKeyConflict,
    NotCancellable,
    NotificationClient,
    RequestRefused,
    UnknownNotification,
    is_connect_failure,
    record_json,
    temporal_unreachable,
)
from domain import (
    MAX_REQUEST_BYTES,
    DirectoryEntry,
    NotificationStatus,
    Tag,
    admitted,
    validation_message,
)
from domain.rules import Location
from settings import Settings, one_line
from streams import StreamName, StreamStore
from streams.directory import import_entries, lookup

log = logging.getLogger("notify.api")
MAX_BODY_BYTES = 2 * MAX_REQUEST_BYTES
"""The largest request body taken (a notification's own limit, 512 KiB as JSON, is checked after: `422`)."""
MAX_PAGE = 100


class NotificationIn(BaseModel):
    """A request: `subject` and `body` (and optionally `html`, `slack_text`), or a `template` and its `data`."""

    model_config = ConfigDict(extra="forbid")
    entity: str
    subject: str | None = None
    body: str | None = None
    html: str | None = None
    slack_text: str | None = None
    tags: dict[str, str] = {}
    send_at: AwareDatetime | None = None
    template: str | None = None
    data: dict[str, Any] | None = None


class Page(BaseModel):
    items: list[dict[str, Any]]
    """Each notification's view, newest first."""
    next_cursor: str | None
    """Pass as `cursor` for the next page; null on the last."""


class BodyLimit:
    """Refuse a request body over `MAX_BODY_BYTES` with `413`, whether it says its length or streams it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        too_large = problem(413, f"the request body is over {MAX_BODY_BYTES:,} bytes")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            await too_large(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY_BYTES:
                raise Problem(413, f"the request body is over {MAX_BODY_BYTES:,} bytes")
            return message

        await self.app(scope, counted, send)


bearer = HTTPBearer(auto_error=False, description="An API key: `starter.py apikey create NAME --scope ...`")


def needs(scope: KeyScope) -> Callable[..., Awaitable[ApiKeyIssued]]:
    """A dependency that lets through a request whose key holds `scope`."""

    async def authorized(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> ApiKeyIssued:
        if credentials is None:
            raise Problem(401, "an API key is needed: Authorization: Bearer KEY")
        issued = await request.app.state.keys.authenticate(credentials.credentials)
        if issued is None:
            raise Problem(401, "the API key is not valid (unknown, or revoked)")
        if scope not in issued.scopes:
            raise Problem(403, f"the API key {issued.name!r} does not hold the {scope.value!r} scope")
        return cast(ApiKeyIssued, issued)

    return authorized


def _client(request: Request) -> NotificationClient:
    client: NotificationClient = request.app.state.client
    return client


Notifications = Annotated[NotificationClient, Depends(_client)]


def encode_cursor(internal_id: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{internal_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        version, _, value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition(":")
        if version == "v1" and value.isdigit():
            return int(value)
    except (ValueError, UnicodeDecodeError):
        pass
    raise Problem(422, "cursor: not a cursor this API gave")


def _in_request(location: Location) -> Location:
    """A field of the body or the query, by its name alone."""
    return location[1:] if location[:1] in (("body",), ("query",)) else location


def create_app(store: StreamStore, temporal: Client, settings: Settings) -> FastAPI:
    """The API on this store and Temporal client (`serving` runs it)."""
    app = FastAPIOffline(title="notify", summary="A durable notification service on Temporal", version="1")
    app.state.store = store
    app.state.temporal = temporal
    app.state.client = NotificationClient(store, temporal, settings)
    app.state.keys = ApiKeys(store)
    telemetry = Telemetry()
    app.add_middleware(BodyLimit)
    app.add_middleware(Measured, telemetry=telemetry)
    app.add_route("/metrics", telemetry.endpoint, include_in_schema=False)
    codec = CodecServer(settings)
    for operation in ("decode", "encode"):
        app.add_route(f"/codec/{operation}", getattr(codec, operation), methods=["POST"], include_in_schema=False)
        app.add_route(f"/codec/{operation}", codec.preflight, methods=["OPTIONS"], include_in_schema=False)

    @app.exception_handler(Problem)
    async def _problem(request: Request, error: Problem) -> JSONResponse:
        return problem(error.status, error.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return problem(422, validation_message(error.errors(), located=_in_request))

    @app.exception_handler(OSError)  # the streams or a server that cannot be used now (`StoreUnavailable`, ...)
    @app.exception_handler(TemporalError)
    @app.exception_handler(RuntimeError)  # Temporal's SDK, when it cannot connect
    async def _unavailable(request: Request, error: Exception) -> JSONResponse:
        if isinstance(error, RuntimeError) and not is_connect_failure(error):
            log.error("%s %s failed", request.method, request.url.path, exc_info=error)
            return problem(500, "the request failed: the server's log says why")
        if is_connect_failure(error):
            error = temporal_unreachable(settings.temporal_address, error)
        return problem(503, f"a service the API needs cannot be used now: {one_line(error)}")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, error: HTTPException) -> JSONResponse:
        if isinstance(error.__cause__, Problem):  # a body over the limit, as it streamed in
            return problem(error.__cause__.status, error.__cause__.detail)
        return problem(error.status_code, str(error.detail))

    @app.exception_handler(UnknownNotification)
    async def _unknown(request: Request, error: UnknownNotification) -> JSONResponse:
        return problem(404, str(error))

    app.add_exception_handler(page.SignIn, page.sign_in_first)  # type: ignore[arg-type]
    app.include_router(page.router)
    app.mount("/static", page.static, name="static")

    @app.post(
        "/v1/notifications",
        status_code=202,
        response_model=Accepted,
        dependencies=[Depends(needs(KeyScope.SEND))],
        summary="Request a notification",
    )
    async def request_notification(
        body: NotificationIn,
        client: Notifications,
        idempotency_key: Annotated[str | None, Header(description="The same key returns the first id.")] = None,
    ) -> Accepted:
        content = {
            "entity_id": body.entity,
            "subject": body.subject,
            "body": body.body,
            "html_body": body.html,
            "slack_text": body.slack_text,
            "tags": [Tag(name=n, value=v) for n, v in body.tags.items()],
            "send_at": body.send_at,
        }
        try:
            accepted = await client.submit(content, body.template, body.data, idempotency_key)
        except RequestRefused as error:
            status = 409 if isinstance(error, IdempotencyKeyConflict) else 422
            raise Problem(status, error.said(idempotency_key="Idempotency-Key")) from error
        telemetry.requested.inc()
        return accepted

    @app.get(
        "/v1/notifications",
        response_model=Page,
        dependencies=[Depends(needs(KeyScope.READ))],
        summary="Recent notifications",
    )
    async def list_notifications(
        client: Notifications,
        entity: str | None = None,
        status: NotificationStatus | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Page:
        if not 1 <= limit <= MAX_PAGE:
            raise Problem(422, f"limit: must be 1 to {MAX_PAGE}")
        views, last = await client.recent(
            entity_id=entity, status=status, limit=limit, before=None if cursor is None else decode_cursor(cursor)
        )
        return Page(items=views, next_cursor=None if last is None else encode_cursor(last))

    @app.get(
        "/v1/notifications/{notification_id}",
        dependencies=[Depends(needs(KeyScope.READ))],
        summary="A notification's view",
    )
    async def get_notification(notification_id: str, client: Notifications) -> dict[str, Any]:
        return await client.status(notification_id)

    @app.get(
        "/v1/notifications/{notification_id}/events",
        dependencies=[Depends(needs(KeyScope.READ))],
        summary="Its records across the streams",
    )
    async def get_events(notification_id: str, client: Notifications) -> list[dict[str, Any]]:
        return [record_json(r) for r in await client.events(notification_id)]

    @app.post(
        "/v1/notifications/{notification_id}/cancel",
        dependencies=[Depends(needs(KeyScope.SEND))],
        summary="Cancel a notification that has not finished sending",
    )
    async def cancel_notification(notification_id: str, client: Notifications) -> dict[str, Any]:
        try:
            return await client.cancel(notification_id)  # an unknown id is 404 (`_unknown`)
        except NotCancellable as error:
            raise Problem(409, str(error)) from error

    @app.get("/v1/audit/email", dependencies=[Depends(needs(KeyScope.READ))], summary="What was sent to an address")
    async def audit_email(address: str, client: Notifications) -> list[dict[str, Any]]:
        return [e.model_dump(mode="json") for e in await client.audit_email(address)]

    @app.get("/v1/audit/slack", dependencies=[Depends(needs(KeyScope.READ))], summary="What was posted to a channel")
    async def audit_slack(channel: str, client: Notifications) -> list[dict[str, Any]]:
        return [e.model_dump(mode="json") for e in await client.audit_slack(channel)]

    @app.put("/v1/entities/{entity_id}", dependencies=[Depends(needs(KeyScope.ADMIN))], summary="Record an entity")
    async def put_entity(entity_id: str, entry: dict[str, Any], request: Request) -> dict[str, Any]:
        if entry.setdefault("id", entity_id) != entity_id:
            raise Problem(422, f"id: {entry['id']!r} is not the id in the path, {entity_id!r}")
        try:
            recorded = admitted(DirectoryEntry, entry)
        except ValidationError as error:
            raise Problem(422, validation_message(error)) from error
        await import_entries(request.app.state.store, [recorded])
        return recorded.model_dump(mode="json", exclude_none=True)

    @app.get("/v1/entities/{entity_id}", dependencies=[Depends(needs(KeyScope.READ))], summary="An entity")
    async def get_entity(entity_id: str, request: Request) -> dict[str, Any]:
        entry = await lookup(request.app.state.store.reader(StreamName.ENTITY_DIRECTORY), entity_id)
        if entry is None:
            raise Problem(404, f"no entity with id {entity_id!r}")
        return entry.model_dump(mode="json", exclude_none=True)

    @app.get("/healthz", summary="The process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="The streams and Temporal answer")
    async def readyz(request: Request) -> Any:
        try:
            await request.app.state.store.reader(StreamName.CLIENT_OPERATION).newest()
        except Exception as error:
            return problem(503, f"the streams cannot be read: {one_line(error)}")
        try:
            await request.app.state.temporal.service_client.check_health()
        except Exception as error:
            return problem(503, f"Temporal does not answer at {settings.temporal_address}: {one_line(error)}")
        return {"status": "ready"}

    return app


@asynccontextmanager
async def serving(app: FastAPI, host: str, port: int) -> AsyncIterator[str]:
    """Serve `app` on `host`:`port` (0: a free port) until the block ends; yields its URL."""
    listening = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
    except OSError as error:
        listening.close()
        raise OSError(f"cannot serve the API on {host}:{port}: {error.strerror} (set NOTIFY_API_PORT)") from error
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", server_header=False))
    serve = asyncio.create_task(server.serve(sockets=[listening]))
    while not server.started:
        if serve.done():
            serve.result()
            raise OSError(f"the API did not start on {host}:{port}")
        await asyncio.sleep(0.02)
    bound = listening.getsockname()[1]
    try:
        yield f"http://{f'[{host}]' if ':' in host else host}:{bound}"
    finally:
        server.should_exit = True
        await serve
        listening.close()
