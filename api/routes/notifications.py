"""Notifications: request one (in JSON, its files in base64; or as `multipart/form-data`, its files as parts), list
the recent ones, read one's view and its records, cancel one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, WithJsonSchema

from api.bodies import ContentIn, read_request, request_body
from api.deps import AppParts, KeyFirst, Notifications, needs
from api.keys import ApiKeyIssued, Scope
from api.paging import decode_number, encode_cursor
from api.problems import Problem, problems
from client import Accepted, EntityChangeRefused, EventRecord, IdempotencyKeyConflict, NotCancellable, RequestRefused
from domain import NotificationStatus, NotificationView

MAX_PAGE = 100

router = APIRouter(
    prefix="/v1/notifications", route_class=KeyFirst, tags=["notifications"], responses=problems(401, 403, 422)
)


class NotificationIn(ContentIn):
    """A request: to an `entity`, `subject` and `body` (and optionally `html`, `slack_text`), or a `template` and its
    `data`."""

    entity: Annotated[
        str | dict[str, Any],
        WithJsonSchema({"anyOf": [{"type": "string"}, {"$ref": "#/components/schemas/DirectoryEntry"}]}),
    ]
    """The id of an entity in the directory, or the entity itself (its directory entry: recorded, or updated,
    before the request), checked as the directory checks an entry."""


class NotificationPage(BaseModel):
    items: list[NotificationView]
    """Each notification's view, newest first."""
    next_cursor: str | None
    """Pass as `cursor` for the next page; null on the last."""


@router.post(
    "",
    status_code=202,
    responses=problems(409, 413),
    summary="Request a notification",
    openapi_extra={"requestBody": request_body(NotificationIn)},
)
async def request_notification(
    request: Request,
    app: AppParts,
    key: Annotated[ApiKeyIssued, needs(Scope.SEND)],
    idempotency_key: Annotated[str | None, Header(description="The same key returns the first id.")] = None,
) -> Accepted:
    """An entity given inline that the directory has otherwise is changed there only with the `admin` scope (403).
    The body is JSON, or `multipart/form-data` with a `request` part (the same JSON) and its files as parts."""
    body, files = await read_request(request, NotificationIn)
    inline = None if isinstance(body.entity, str) else body.entity
    content = {**body.content(files), "entity_id": body.entity if isinstance(body.entity, str) else None}
    try:
        accepted = await app.client.submit(
            content,
            body.template,
            body.data,
            idempotency_key,
            inline,
            may_change_entity=Scope.ADMIN in key.scopes,
            contents=[raw for _, raw in files],
        )
    except RequestRefused as error:
        status = (
            409 if isinstance(error, IdempotencyKeyConflict) else 403 if isinstance(error, EntityChangeRefused) else 422
        )
        raise Problem(status, error.said(idempotency_key="Idempotency-Key")) from error
    app.telemetry.requested.inc()
    return accepted


@router.get("", dependencies=[needs(Scope.READ)], summary="Recent notifications")
async def list_notifications(
    client: Notifications,
    entity: str | None = None,
    status: NotificationStatus | None = None,
    limit: int = 20,
    cursor: str | None = None,
) -> NotificationPage:
    if not 1 <= limit <= MAX_PAGE:
        raise Problem(422, f"limit: must be 1 to {MAX_PAGE}")
    views, last = await client.recent(
        entity_id=entity, status=status, limit=limit, before=None if cursor is None else decode_number(cursor)
    )
    return NotificationPage.model_validate(
        {"items": views, "next_cursor": None if last is None else encode_cursor(last)}
    )


@router.get(
    "/{notification_id}", dependencies=[needs(Scope.READ)], responses=problems(404), summary="A notification's view"
)
async def get_notification(notification_id: str, client: Notifications) -> NotificationView:
    return NotificationView.model_validate(await client.status(notification_id))


@router.get(
    "/{notification_id}/events",
    dependencies=[needs(Scope.READ)],
    responses=problems(404),
    summary="Its records across the streams",
)
async def get_events(notification_id: str, client: Notifications) -> list[EventRecord]:
    return [EventRecord.of(r) for r in await client.events(notification_id)]


@router.post(
    "/{notification_id}/cancel",
    dependencies=[needs(Scope.SEND)],
    responses=problems(404, 409),
    summary="Cancel a notification that has not finished sending",
)
async def cancel_notification(notification_id: str, client: Notifications) -> NotificationView:
    try:
        return NotificationView.model_validate(await client.cancel(notification_id))  # unknown: 404 (the app's)
    except NotCancellable as error:
        raise Problem(409, str(error)) from error
