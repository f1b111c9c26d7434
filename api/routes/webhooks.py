"""Webhooks out: register an endpoint to be told how notifications went, list the endpoints (enabled, or disabled
since when and why), remove one, and follow its deliveries. Every route needs the `admin` scope: an endpoint's
events name entities and addresses."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import AppParts, KeyFirst, needs
from api.keys import Scope
from api.problems import Problem, problems
from domain.webhooks import WebhookDeliverySummary, WebhookEndpoint, WebhookEventType
from streams.webhooks import UnknownWebhook, add_endpoint, deliveries, endpoint, endpoints, remove_endpoint
from webhooks import UnsafeUrl, checked_url

router = APIRouter(
    prefix="/v1/webhooks",
    route_class=KeyFirst,
    tags=["webhooks"],
    dependencies=[needs(Scope.ADMIN)],
    responses=problems(401, 403),
)


class WebhookIn(BaseModel):
    url: str = Field(max_length=2000)
    events: list[WebhookEventType] = Field(default_factory=list)
    """The events to send (none given: every one)."""


class WebhookAdded(BaseModel):
    id: str
    url: str
    events: list[WebhookEventType]
    secret: str
    """The signing secret (`whsec_...`), shown this once."""


@router.post("", status_code=201, responses=problems(422), summary="Register a webhook endpoint")
async def add_webhook(body: WebhookIn, app: AppParts) -> WebhookAdded:
    """Only http(s) URLs whose host resolves to public addresses (unless `NOTIFY_WEBHOOK_ALLOW_PRIVATE`)."""
    try:
        await checked_url(body.url, app.settings.webhook_allow_private)
    except UnsafeUrl as error:
        raise Problem(422, f"url: {error}") from error
    added = await add_endpoint(app.owner, body.url, body.events)  # only the owner of the streams writes them
    return WebhookAdded(id=added.id, url=added.url, events=added.events, secret=added.secret)


@router.get("", summary="Every webhook endpoint")
async def list_webhooks(app: AppParts) -> list[WebhookEndpoint]:
    return [e.shown for e in await endpoints(app.store)]


@router.delete("/{webhook_id}", status_code=204, responses=problems(404), summary="Remove a webhook endpoint")
async def remove_webhook(webhook_id: str, app: AppParts) -> None:
    """Nothing more is sent to it, retries included."""
    try:
        await remove_endpoint(app.owner, webhook_id)
    except UnknownWebhook as error:
        raise Problem(404, str(error)) from error


@router.get("/{webhook_id}/deliveries", responses=problems(404), summary="A webhook endpoint's deliveries")
async def list_deliveries(webhook_id: str, app: AppParts) -> list[WebhookDeliverySummary]:
    """Newest first: each with its status (`delivered`, `retrying`, `failed`), attempts and last answer."""
    if await endpoint(app.store, webhook_id) is None:
        raise Problem(404, str(UnknownWebhook(webhook_id)))
    return await deliveries(app.store, webhook_id)
