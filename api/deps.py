"""What the routes depend on, as typed FastAPI dependencies: the app's parts (`Parts`), the notification client, and
the API key a route's scope needs. One check turns a key and a scope into the key's issue or a refusal
(`authorized`); each surface says a refusal its own way: the API as a problem, the web page by sending to its
sign-in, the codec server as a problem with its CORS headers."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection
from starlette.responses import Response
from temporalio.client import Client

from api.keys import ApiKeyIssued, ApiKeys, Scope
from api.problems import Problem
from api.telemetry import Telemetry
from client import NotificationClient
from codec import PayloadCipher
from settings import Settings
from streams import StreamStore


@dataclass(frozen=True)
class Parts:
    """What the routes work with, made once for an app (`create_app`)."""

    store: StreamStore
    owner: StreamStore
    """The store as the owner of the streams (`NOTIFY_STREAMS_URL`), which alone writes the directory: `store`
    itself when no handle connects as a role of its own."""
    temporal: Client
    settings: Settings
    client: NotificationClient
    keys: ApiKeys
    telemetry: Telemetry
    cipher: PayloadCipher | None
    """The codec server's: `NOTIFY_PAYLOAD_KEYS`, if set."""

    @classmethod
    def of(cls, store: StreamStore, temporal: Client, settings: Settings, owner: StreamStore) -> Parts:
        keys = settings.payload_key_list
        return cls(
            store=store,
            owner=owner,
            temporal=temporal,
            settings=settings,
            client=NotificationClient(store, temporal, settings, owner=owner),
            keys=ApiKeys(store),
            telemetry=Telemetry(),
            cipher=PayloadCipher(keys) if keys else None,
        )


def parts(request: Request) -> Parts:
    held: Parts = request.app.state.parts
    return held


AppParts = Annotated[Parts, Depends(parts)]


def notification_client(request: Request) -> NotificationClient:
    return parts(request).client


Notifications = Annotated[NotificationClient, Depends(notification_client)]


class KeyRefused(Problem):
    """A key that does not let a request through: 401 (none, or not one held now) or 403 (without the scope)."""


BEARER = "Authorization: Bearer KEY"


async def authorized(keys: ApiKeys, key: str | None, scope: Scope, asked: str = BEARER) -> ApiKeyIssued:
    """The issue of `key`, if it is held now and holds `scope`; `KeyRefused` otherwise (`asked`: how a request gives
    a key, told to one that gave none)."""
    if not key:
        raise KeyRefused(401, f"an API key is needed: {asked}")
    issued = await keys.authenticate(key)
    if issued is None:
        raise KeyRefused(401, "the API key is not valid (unknown, or revoked)")
    if scope not in issued.scopes:
        raise KeyRefused(403, f"the API key {issued.name!r} does not hold the {scope.value!r} scope")
    return issued


bearer = HTTPBearer(auto_error=False, description="An API key: `starter.py apikey create NAME --scope ...`")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def bearer_key(request: HTTPConnection) -> str | None:
    """The key of `Authorization: Bearer KEY` (the scheme in any case, as `bearer` reads it), if given."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    return (key.strip() or None) if scheme.lower() == "bearer" else None


async def checked(request: HTTPConnection, scope: Scope) -> ApiKeyIssued:
    """`authorized` for the request's bearer key, asked once a request (`KeyFirst`, then the route's dependency)."""
    held: tuple[Scope, ApiKeyIssued] | None = getattr(request.state, "key", None)
    if held is None or held[0] != scope:
        held = scope, await authorized(request.app.state.parts.keys, bearer_key(request), scope)
        request.state.key = held
    return held[1]


@dataclass(frozen=True)
class Needs:
    """A route's dependency on a bearer key that holds `scope` (refused: a problem, 401 or 403)."""

    scope: Scope

    async def __call__(self, request: Request, credentials: Bearer) -> ApiKeyIssued:
        """(`credentials`: for the OpenAPI description; `checked` reads the same header.)"""
        return await checked(request, self.scope)


def needs(scope: Scope) -> Any:
    return Depends(Needs(scope))


class KeyFirst(APIRoute):
    """A route that checks the key it needs from the request's headers before it reads the body: a request without
    a usable key is answered 401 or 403 at once, its body unread (the server drops the rest as it comes, for at
    most `Limits.headers_seconds`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        scopes = [d.call.scope for d in self.dependant.dependencies if isinstance(d.call, Needs)]

        async def first_the_key(request: Request) -> Response:
            for scope in scopes:
                await checked(request, scope)  # refused: `KeyRefused`, a problem
            return await handle(request)

        return first_the_key
