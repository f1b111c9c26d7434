"""Notifications: request one (in JSON, its files in base64; or as `multipart/form-data`, its files as parts), list
the recent ones, read one's view and its records, cancel one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator
from pydantic.json_schema import models_json_schema
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from api.deps import AppParts, KeyFirst, Notifications, needs
from api.keys import ApiKeyIssued, Scope
from api.limits import MAX_BODY_BYTES
from api.paging import decode_number, encode_cursor
from api.problems import Problem, problems
from client import (
    Accepted,
    EntityChangeRefused,
    EventRecord,
    IdempotencyKeyConflict,
    NotCancellable,
    RequestRefused,
    attachment,
)
from domain import (
    MAX_ATTACHMENTS,
    MAX_TAGS,
    Attachment,
    Channel,
    DirectoryEntry,
    Location,
    NotificationStatus,
    NotificationView,
    Tag,
    validation_message,
)

MAX_PAGE = 100

router = APIRouter(
    prefix="/v1/notifications", route_class=KeyFirst, tags=["notifications"], responses=problems(401, 403, 422)
)


class FileIn(BaseModel):
    """A file the request sends: its name, its media type (by default, what the name's extension says), and its
    bytes in base64 (the standard or the URL-safe alphabet, padding optional; no spaces or line breaks)."""

    model_config = ConfigDict(extra="forbid", val_json_bytes="base64")
    filename: str
    content_type: str | None = None
    content: Annotated[bytes, WithJsonSchema({"type": "string", "contentEncoding": "base64"})]


class InlineIn(FileIn):
    """An image the HTML body shows as `<img src="cid:CONTENT_ID">`, sent beside it by email."""

    content_id: str


class NotificationIn(BaseModel):
    """A request: `subject` and `body` (and optionally `html`, `slack_text`), or a `template` and its `data`."""

    model_config = ConfigDict(extra="forbid")
    entity: Annotated[
        str | dict[str, Any],
        WithJsonSchema({"anyOf": [{"type": "string"}, {"$ref": "#/components/schemas/DirectoryEntry"}]}),
    ]
    """The id of an entity in the directory, or the entity itself (its directory entry: recorded, or updated,
    before the request), checked as the directory checks an entry."""
    subject: str | None = None
    body: str | None = None
    html: str | None = None
    slack_text: str | None = None
    tags: dict[str, str] = {}
    """At most `MAX_TAGS`, counted before they are read (80,000 would take seconds)."""
    send_at: AwareDatetime | None = None
    template: str | None = None
    data: dict[str, Any] | None = None
    attachments: Annotated[list[FileIn], Field(max_length=MAX_ATTACHMENTS)] = []
    """Files sent with it (in a `multipart/form-data` request, `attachment` parts as well)."""
    inline: Annotated[list[InlineIn], Field(max_length=MAX_ATTACHMENTS)] = []
    """Images its `html` shows (in a `multipart/form-data` request, `inline:CONTENT_ID` parts as well)."""
    attach_to: list[Channel] | None = None
    """The channels its attachments go on; by default, every channel it is sent on (inline images go by email)."""

    @field_validator("tags", mode="before")
    @classmethod
    def _few_tags(cls, tags: Any) -> Any:
        if isinstance(tags, dict) and len(tags) > MAX_TAGS:
            raise ValueError(f"at most {MAX_TAGS} tags, not {len(tags)}")
        return tags


class NotificationPage(BaseModel):
    items: list[NotificationView]
    """Each notification's view, newest first."""
    next_cursor: str | None
    """Pass as `cursor` for the next page; null on the last."""


FILE_PART = {"type": "string", "format": "binary"}
REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/NotificationIn"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["request"],
                "properties": {
                    "request": {"$ref": "#/components/schemas/NotificationIn"},
                    "attachment": {"type": "array", "items": FILE_PART},
                },
                "patternProperties": {"^inline:": FILE_PART},
            },
            "encoding": {"request": {"contentType": "application/json"}},
        },
    },
}
"""The body `read_request` reads: the route reads its own, so that neither its files nor the body's JSON text are
held twice."""
OCTET_STREAM = "application/octet-stream"


def documented(spec: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document with the schemas `REQUEST_BODY` names (FastAPI adds those of the bodies it reads)."""
    _, named = models_json_schema(
        [(NotificationIn, "validation"), (DirectoryEntry, "validation")], ref_template="#/components/schemas/{model}"
    )
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in named["$defs"].items():
        schemas.setdefault(name, schema)
    return spec


async def read_request(request: Request) -> tuple[NotificationIn, list[tuple[Attachment, bytes]]]:
    """The request, and each file it sends, named (`client.attachment`) with its bytes: from a JSON body, or from a
    `multipart/form-data` body's parts: `request` (the JSON, its files in base64 if any), each `attachment` (a file:
    its name and media type as the part gives them), each `inline:CONTENT_ID` (an image the HTML body shows)."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        return await _from_parts(request)
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise Problem(422, "Content-Type: must be application/json or multipart/form-data")
    asked = _parsed(await request.body())
    return asked, _files(asked)


def _parsed(text: str | bytes, where: str = "") -> NotificationIn:
    try:
        return NotificationIn.model_validate_json(text)
    except ValidationError as error:
        first = error.errors()[0]
        if first["type"] == "too_long":  # a list of files, counted before its entries are read
            field, count = first["loc"][0], first["ctx"]["actual_length"]
            raise Problem(422, f"{where}{field}: at most {MAX_ATTACHMENTS} files, not {count}") from None
        raise Problem(422, where + validation_message(error)) from None


def _files(asked: NotificationIn) -> list[tuple[Attachment, bytes]]:
    return [
        (_named(f"attachments, entry {i}", file.filename, file.content, file.content_type), file.content)
        for i, file in enumerate(asked.attachments, 1)
    ] + [
        (_named(f"inline, entry {i}", file.filename, file.content, file.content_type, file.content_id), file.content)
        for i, file in enumerate(asked.inline, 1)
    ]


def _named(
    where: str, filename: str, content: bytes, media_type: str | None, content_id: str | None = None
) -> Attachment:
    try:
        return attachment(filename, content, media_type, content_id)
    except ValidationError as error:
        raise Problem(422, f"{where}, {validation_message(error, located=_as_sent)}") from None


def _as_sent(location: Location) -> Location:
    """An attachment's field by the name the request gives it."""
    return tuple("content_type" if part == "media_type" else part for part in location)


async def _from_parts(request: Request) -> tuple[NotificationIn, list[tuple[Attachment, bytes]]]:
    """`read_request` of a `multipart/form-data` body. Starlette keeps a file part of over 1 MiB in a temporary file
    until it is read here; at most `MAX_ATTACHMENTS` files beside the request are parsed."""
    parts = MAX_ATTACHMENTS + 1
    try:
        form = await request.form(max_files=parts, max_fields=parts, max_part_size=MAX_BODY_BYTES)
    except HTTPException as error:  # a body that is not multipart, or has too many parts (Starlette's words)
        raise Problem(422, f"multipart/form-data: {error.detail}") from None
    asked: NotificationIn | None = None
    files: list[tuple[Attachment, bytes]] = []
    try:
        for name, value in form.multi_items():
            if name == "request":
                if asked is not None:
                    raise Problem(422, "request: give one part of that name")
                asked = _parsed(await value.read() if isinstance(value, UploadFile) else value, "request, ")
                files[:0] = _files(asked)
            elif name == "attachment" or name.startswith("inline:"):
                if not isinstance(value, UploadFile):
                    raise Problem(422, f"{name}: must be a file (curl -F '{name}=@PATH')")
                said = None if value.content_type in (None, OCTET_STREAM) else value.content_type
                content_id = name.removeprefix("inline:") if name != "attachment" else None
                content = await value.read()
                where = f"{name} {value.filename!r}"
                files.append((_named(where, value.filename or "", content, said, content_id), content))
            else:
                raise Problem(422, f"{name!r}: not a part this API takes (request, attachment, inline:CONTENT_ID)")
    finally:
        await form.close()
    if asked is None:
        raise Problem(422, "request: the part is missing (curl -F 'request=@request.json;type=application/json')")
    return asked, files


@router.post(
    "",
    status_code=202,
    responses=problems(409, 413),
    summary="Request a notification",
    openapi_extra={"requestBody": REQUEST_BODY},
)
async def request_notification(
    request: Request,
    app: AppParts,
    key: Annotated[ApiKeyIssued, needs(Scope.SEND)],
    idempotency_key: Annotated[str | None, Header(description="The same key returns the first id.")] = None,
) -> Accepted:
    """An entity given inline that the directory has otherwise is changed there only with the `admin` scope (403).
    The body is JSON, or `multipart/form-data` with a `request` part (the same JSON) and its files as parts."""
    body, files = await read_request(request)
    inline = None if isinstance(body.entity, str) else body.entity
    content = {
        "entity_id": body.entity if isinstance(body.entity, str) else None,
        "subject": body.subject,
        "body": body.body,
        "html_body": body.html,
        "slack_text": body.slack_text,
        "tags": [Tag(name=n, value=v) for n, v in body.tags.items()],
        "send_at": body.send_at,
        "attachments": [named.model_dump() for named, _ in files],
        "attach_to": body.attach_to,
    }
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
