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
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.client import Client
from temporalio.exceptions import TemporalError

from api.deps import Parts, parts
from api.problems import Problem, problem
from api.routes import audit, codec, entities, health, notifications, page
from api.telemetry import Measured
from client import UnknownNotification, is_connect_failure, temporal_unreachable
from domain import MAX_REQUEST_BYTES, validation_message
from domain.rules import Location
from settings import Settings, one_line
from streams import StreamStore

log = logging.getLogger("notify.api")
MAX_BODY_BYTES = 2 * MAX_REQUEST_BYTES
"""The largest request body taken (a notification's own limit, 512 KiB as JSON, is checked after: `422`)."""
ROUTERS = (notifications.router, audit.router, entities.router, health.router, page.router, codec.router)


def create_app(store: StreamStore, temporal: Client, settings: Settings) -> FastAPI:
    """The API on this store and Temporal client (`serving` runs it)."""
    app = FastAPIOffline(
        title="notify",
        summary="A durable notification service on Temporal",
        version="1",
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.parts = held = Parts.of(store, temporal, settings)
    app.add_middleware(BodyLimit)
    app.add_middleware(Measured, telemetry=held.telemetry)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", page.static, name="static")
    return app


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


async def _problem(request: Request, error: Problem) -> JSONResponse:
    return problem(error.status, error.detail)


async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
    return problem(422, validation_message(error.errors(), located=_in_request))


def _in_request(location: Location) -> Location:
    """A field of the body or the query, by its name alone."""
    return location[1:] if location[:1] in (("body",), ("query",)) else location


async def _unavailable(request: Request, error: Exception) -> JSONResponse:
    """The streams or a server that cannot be used now (`StoreUnavailable`, Temporal's errors, and its SDK's
    `RuntimeError` when it cannot connect): 503; any other `RuntimeError` is a bug, in the log."""
    if isinstance(error, RuntimeError) and not is_connect_failure(error):
        log.error("%s %s failed", request.method, request.url.path, exc_info=error)
        return problem(500, "the request failed: the server's log says why")
    if is_connect_failure(error):
        error = temporal_unreachable(parts(request).settings.temporal_address, error)
    return problem(503, f"a service the API needs cannot be used now: {one_line(error)}")


async def _http(request: Request, error: HTTPException) -> JSONResponse:
    if isinstance(error.__cause__, Problem):  # a body over the limit, as it streamed in
        return problem(error.__cause__.status, error.__cause__.detail)
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
