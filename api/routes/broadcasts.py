"""Broadcasts: request one (a topic's members, or the entities it names, each notified with a notification of its
own), and read where its notifications are."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, Field

from api.bodies import ContentIn, read_request, request_body
from api.deps import KeyFirst, Notifications, needs
from api.keys import Scope
from api.paging import decode_number, encode_cursor
from api.problems import Problem, problems
from broadcasts import MAX_NOTIFICATIONS_PAGE, BroadcastClient, UnknownBroadcast
from client import IdempotencyKeyConflict, NotCancellable, RequestRefused
from domain import MAX_BROADCAST_ENTITIES

router = APIRouter(
    prefix="/v1/broadcasts", route_class=KeyFirst, tags=["broadcasts"], responses=problems(401, 403, 422)
)


class BroadcastIn(ContentIn):
    """A broadcast: to a `topic`'s members or to `entities` (one of them), with `subject` and `body` (and optionally
    `html`, `slack_text`), or a `template` and its `data`, rendered for each recipient; its files are each
    recipient's."""

    topic: str | None = None
    entities: list[str] | None = Field(default=None, max_length=MAX_BROADCAST_ENTITIES)


class BroadcastStatus(BaseModel):
    id: str
    broadcast: bool = True
    status: str
    """`running` until every notification has ended, then `completed`."""
    recipients: int
    left: int
    """Recipients whose notification has not ended (or not been requested yet)."""
    counts: dict[str, int]
    """Ended notifications by status (`sent`, `failed`, ..., and `refused`: a recipient whose request could not be
    made)."""


@router.post(
    "",
    status_code=202,
    dependencies=[needs(Scope.SEND)],
    responses=problems(409, 413),
    summary="Request a broadcast",
    openapi_extra={"requestBody": request_body(BroadcastIn)},
)
async def request_broadcast(
    request: Request,
    client: Notifications,
    idempotency_key: Annotated[str | None, Header(description="The same key returns the first id.")] = None,
) -> BroadcastStatus:
    """The body is JSON, or `multipart/form-data` with a `request` part (the same JSON) and its files as parts, as
    for a notification; each recipient's notification sends the files, kept once for the broadcast."""
    body, files = await read_request(request, BroadcastIn)
    operation = {
        "audience": {"topic": body.topic, "entity_ids": body.entities},
        "content": body.content(files),
        "template": body.template,
        "data": body.data,
    }
    broadcasts = BroadcastClient(client)
    try:
        broadcast_id = await broadcasts.request(operation, idempotency_key, [raw for _, raw in files])
    except RequestRefused as error:
        status = 409 if isinstance(error, IdempotencyKeyConflict) else 422
        raise Problem(status, error.said(idempotency_key="Idempotency-Key")) from error
    return BroadcastStatus.model_validate(await broadcasts.status(broadcast_id))


@router.get("/{broadcast_id}", dependencies=[needs(Scope.READ)], responses=problems(404), summary="A broadcast")
async def get_broadcast(broadcast_id: str, client: Notifications) -> BroadcastStatus:
    try:
        return BroadcastStatus.model_validate(await BroadcastClient(client).status(broadcast_id))
    except UnknownBroadcast as error:
        raise Problem(404, str(error)) from error


class BroadcastNotification(BaseModel):
    id: str
    entity_id: str
    status: str
    """Its status now; `refused` (no request could be made), or `not requested` yet."""


class BroadcastNotificationPage(BaseModel):
    items: list[BroadcastNotification]
    """In the order of its recipients."""
    next_cursor: str | None
    """Pass as `cursor` for the next page; null on the last."""


@router.get(
    "/{broadcast_id}/notifications",
    dependencies=[needs(Scope.READ)],
    responses=problems(404),
    summary="A page of a broadcast's notifications",
)
async def get_broadcast_notifications(
    broadcast_id: str, client: Notifications, status: str | None = None, limit: int = 50, cursor: str | None = None
) -> BroadcastNotificationPage:
    """With `status`, only the ended ones with that status (`sent`, `failed`, `partially_sent`, `opted_out`,
    `cancelled`), or the recipients `refused`."""
    if not 1 <= limit <= MAX_NOTIFICATIONS_PAGE:
        raise Problem(422, f"limit: must be 1 to {MAX_NOTIFICATIONS_PAGE}")
    after = 0 if cursor is None else decode_number(cursor)
    try:
        items, last = await BroadcastClient(client).notifications(broadcast_id, status=status, after=after, limit=limit)
    except UnknownBroadcast as error:
        raise Problem(404, str(error)) from error
    except RequestRefused as error:
        raise Problem(422, str(error)) from error
    return BroadcastNotificationPage.model_validate(
        {"items": items, "next_cursor": None if last is None else encode_cursor(last)}
    )


class BroadcastCancelled(BroadcastStatus):
    stopped: int
    """Its notifications cancelled before they were sent, and its recipients not requested yet."""


@router.post(
    "/{broadcast_id}/cancel",
    dependencies=[needs(Scope.SEND)],
    responses=problems(404, 409),
    summary="Cancel a broadcast that has not ended",
)
async def cancel_broadcast(broadcast_id: str, client: Notifications) -> BroadcastCancelled:
    """It requests no more recipients, and each of its notifications not sent yet is cancelled (one under way is
    waited for); `409` once every notification of it has ended."""
    broadcasts = BroadcastClient(client)
    try:
        stopped = await broadcasts.cancel(broadcast_id)
    except UnknownBroadcast as error:
        raise Problem(404, str(error)) from error
    except NotCancellable as error:
        raise Problem(409, str(error)) from error
    return BroadcastCancelled.model_validate({**await broadcasts.status(broadcast_id), "stopped": stopped.stopped})
