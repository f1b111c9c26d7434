"""What the routes depend on, as typed FastAPI dependencies: the app's parts (`Parts`), the notification client, and
the API key a route's scope needs. One check turns a key and a scope into the key's issue or a refusal
(`authorized`); each surface says a refusal its own way: the API as a problem, the web page by sending to its
sign-in, the codec server as a problem with its CORS headers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
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
    temporal: Client
    settings: Settings
    client: NotificationClient
    keys: ApiKeys
    telemetry: Telemetry
    cipher: PayloadCipher | None
    """The codec server's: `NOTIFY_PAYLOAD_KEYS`, if set."""

    @classmethod
    def of(cls, store: StreamStore, temporal: Client, settings: Settings) -> Parts:
        keys = settings.payload_key_list
        return cls(
            store=store,
            temporal=temporal,
            settings=settings,
            client=NotificationClient(store, temporal, settings),
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


def needs(scope: Scope) -> Any:
    """A route's dependency on a bearer key that holds `scope` (refused: a problem, 401 or 403)."""

    async def key(app: AppParts, credentials: Bearer) -> ApiKeyIssued:
        return await authorized(app.keys, None if credentials is None else credentials.credentials, scope)

    return Depends(key)
