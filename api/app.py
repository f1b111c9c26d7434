"""The HTTP API: request, follow and cancel notifications, ask the audit, keep the directory (`api.routes`). JSON in
and out; errors are `application/problem+json` (RFC 9457) with a one-line `detail`. Every route but the health checks
needs `Authorization: Bearer KEY`, a key with the route's scope (`starter.py apikey create`). The same server serves
the web page, its metrics and the codec server."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException
from temporalio.client import Client
from temporalio.exceptions import TemporalError

from api.bodies import documented
from api.deps import Parts, parts
from api.limits import DEFAULT_LIMITS, MAX_BODY_BYTES, Limits, RequestLimits, protocol
from api.problems import JsonAnswer, Problem, problem
from api.routes import (
    audit,
    broadcasts,
    codec,
    entities,
    health,
    inbound,
    notifications,
    page,
    preferences_page,
    suppressions,
    topics,
    unsubscribe,
    webhooks,
)
from api.telemetry import Measured
from client import UnknownNotification, is_connect_failure, temporal_unreachable
from domain import DirectoryEntry, Location, validation_message
from settings import Settings, one_line
from streams import StreamStore

log = logging.getLogger("notify.api")
__all__ = ["MAX_BODY_BYTES", "create_app", "owner_store", "serving"]
ROUTERS = (
    notifications.router,
    broadcasts.router,
    audit.router,
    entities.router,
    topics.router,
    suppressions.router,
    inbound.router,
    unsubscribe.router,
    preferences_page.router,
    webhooks.router,
    health.router,
    page.router,
    codec.router,
)


def create_app(
    store: StreamStore,
    temporal: Client,
    settings: Settings,
    limits: Limits = DEFAULT_LIMITS,
    *,
    owner: StreamStore | None = None,
) -> FastAPI:
    """The API on this store and Temporal client (`serving` runs it, within `limits`); the directory is written
    through `owner`, the store as the owner of the streams (`owner_store`; by default `store`)."""
    app = FastAPIOffline(
        title="notify",
        summary="A durable notification service on Temporal",
        version="1",
        exception_handlers=EXCEPTION_HANDLERS,
        default_response_class=JsonAnswer,
        redirect_slashes=False,  # its redirect would name the host the request's `Host` header gave
    )
    app.state.parts = held = Parts.of(store, temporal, settings, owner or store)
    app.state.limits = limits
    app.add_middleware(RequestLimits, limits=limits)
    app.add_middleware(Measured, telemetry=held.telemetry)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", page.static, name="static")
    # made once, and kept: with the bodies that routes read themselves
    documented(app.openapi(), notifications.NotificationIn, broadcasts.BroadcastIn, DirectoryEntry)
    return app


async def _problem(request: Request, error: Problem) -> JSONResponse:
    return problem(error.status, error.detail, error.headers)


async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
    return problem(422, validation_message(error.errors(), located=_in_request))


def _in_request(location: Location) -> Location:
    """A field of the body or the query, by its name alone."""
    return location[1:] if location[:1] in (("body",), ("query",)) else location


async def _unavailable(request: Request, error: Exception) -> JSONResponse:
    """The streams or a server that cannot be used now (`StoreUnavailable`, Temporal's errors, and its SDK's
    `RuntimeError` when it cannot connect): 503, and why in the log (it names paths and addresses); any other
    `RuntimeError` is a bug, in the log."""
    if isinstance(error, RuntimeError) and not is_connect_failure(error):
        log.error("%s %s failed", request.method, request.url.path, exc_info=error)
        return problem(500, "the request failed: the server's log says why")
    if is_connect_failure(error):
        error = temporal_unreachable(parts(request).settings.temporal_address, error)
    log.warning("%s %s: 503: %s", request.method, request.url.path, one_line(error))
    return problem(503, "a service the API needs cannot be used now: the server's log says why")


async def _http(request: Request, error: HTTPException) -> JSONResponse:
    if isinstance(error.__cause__, Problem):  # a body over the limit, as it streamed in
        return problem(error.__cause__.status, error.__cause__.detail, error.__cause__.headers)
    return problem(error.status_code, str(error.detail))


async def _unknown(request: Request, error: UnknownNotification) -> JSONResponse:
    return problem(404, str(error))


EXCEPTION_HANDLERS: dict[Any, Any] = {
    Problem: _problem,
    RequestValidationError: _invalid,
    OSError: _unavailable,
    TemporalError: _unavailable,
    RuntimeError: _unavailable,
    HTTPException: _http,
    UnknownNotification: _unknown,
    page.SignIn: page.sign_in_first,
}


@asynccontextmanager
async def owner_store(settings: Settings, store: StreamStore) -> AsyncIterator[StreamStore]:
    """The store as the owner of the streams, for what only it writes (the directory, the API keys): `store` itself
    when each of its handles connects with `NOTIFY_STREAMS_URL` (no role URLs, as on SQLite); otherwise one opened
    with it, until the block ends."""
    if settings.streams_producer_url is None:
        yield store
        return
    async with settings.open_streams(as_owner=True) as owner:
        yield owner


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
    limits: Limits = app.state.limits
    config = uvicorn.Config(
        app,
        http=protocol(limits),
        log_level="warning",
        lifespan="off",
        server_header=False,
        limit_concurrency=limits.connections,
        timeout_keep_alive=limits.keep_alive_seconds,
    )
    server = uvicorn.Server(config)
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
