"""A request body that carries a notification's content and its files, as `POST /v1/notifications` and
`POST /v1/broadcasts` take it: JSON (its files in base64), or `multipart/form-data` (a `request` part, the same JSON,
and its files as parts). Each route reads its own (`read_request`), so that neither its files nor the body's JSON
text are held twice."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator
from pydantic.json_schema import models_json_schema
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from api.limits import MAX_BODY_BYTES
from api.problems import Problem
from client import attachment
from domain import MAX_ATTACHMENTS, MAX_TAGS, Attachment, Channel, Location, Tag, validation_message


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


FILE_LISTS = ("attachments", "inline")


class ContentIn(BaseModel):
    """What a notification says, and the files it sends: `subject` and `body` (and optionally `html`, `slack_text`),
    or a `template` and its `data`; a route's body adds whom it notifies."""

    model_config = ConfigDict(extra="forbid")
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
    category: str | None = None
    """Its category (`NOTIFY_CATEGORIES_FILE`), which entities' preferences may keep off a channel."""

    @field_validator("tags", mode="before")
    @classmethod
    def _few_tags(cls, tags: Any) -> Any:
        if isinstance(tags, dict) and len(tags) > MAX_TAGS:
            raise ValueError(f"at most {MAX_TAGS} tags, not {len(tags)}")
        return tags

    def content(self, files: list[tuple[Attachment, bytes]]) -> dict[str, Any]:
        """The fields of a request (`SendNotificationToEntityOp`'s names) that it gives, naming `files`."""
        content = {
            "subject": self.subject,
            "body": self.body,
            "html_body": self.html,
            "slack_text": self.slack_text,
            "tags": [Tag(name=n, value=v) for n, v in self.tags.items()],
            "send_at": self.send_at,
            "attachments": [named.model_dump() for named, _ in files],
            "attach_to": self.attach_to,
            "category": self.category,
        }
        return {k: v for k, v in content.items() if v not in (None, [])}


B = TypeVar("B", bound=ContentIn)
FILE_PART = {"type": "string", "format": "binary"}
OCTET_STREAM = "application/octet-stream"


def request_body(model: type[ContentIn]) -> dict[str, Any]:
    """The OpenAPI request body `read_request` reads for `model` (`documented` adds its schema)."""
    asked = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "required": True,
        "content": {
            "application/json": {"schema": asked},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["request"],
                    "properties": {"request": asked, "attachment": {"type": "array", "items": FILE_PART}},
                    "patternProperties": {"^inline:": FILE_PART},
                },
                "encoding": {"request": {"contentType": "application/json"}},
            },
        },
    }


def documented(spec: dict[str, Any], *models: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI document with the schemas of `models` (the bodies `request_body` names, and those they refer to:
    FastAPI adds only those of the bodies it reads)."""
    _, named = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in named["$defs"].items():
        schemas.setdefault(name, schema)
    return spec


async def read_request(request: Request, model: type[B]) -> tuple[B, list[tuple[Attachment, bytes]]]:
    """The request, as `model`, and each file it sends, named (`client.attachment`) with its bytes: from a JSON body,
    or from a `multipart/form-data` body's parts: `request` (the JSON, its files in base64 if any), each `attachment`
    (a file: its name and media type as the part gives them), each `inline:CONTENT_ID` (an image the HTML body
    shows)."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        return await _from_parts(request, model)
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise Problem(422, "Content-Type: must be application/json or multipart/form-data")
    asked = _parsed(model, await request.body())
    return asked, _files(asked)


def _parsed(model: type[B], text: str | bytes, where: str = "") -> B:
    try:
        return model.model_validate_json(text)
    except ValidationError as error:
        first = error.errors()[0]
        if first["type"] == "too_long" and first["loc"][0] in FILE_LISTS:  # counted before its entries are read
            field, count = first["loc"][0], first["ctx"]["actual_length"]
            raise Problem(422, f"{where}{field}: at most {MAX_ATTACHMENTS} files, not {count}") from None
        raise Problem(422, where + validation_message(error)) from None


def _files(asked: ContentIn) -> list[tuple[Attachment, bytes]]:
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


async def _from_parts(request: Request, model: type[B]) -> tuple[B, list[tuple[Attachment, bytes]]]:
    """`read_request` of a `multipart/form-data` body. Starlette keeps a file part of over 1 MiB in a temporary file
    until it is read here; at most `MAX_ATTACHMENTS` files beside the request are parsed."""
    parts = MAX_ATTACHMENTS + 1
    try:
        form = await request.form(max_files=parts, max_fields=parts, max_part_size=MAX_BODY_BYTES)
    except HTTPException as error:  # a body that is not multipart, or has too many parts (Starlette's words)
        raise Problem(422, f"multipart/form-data: {error.detail}") from None
    asked: B | None = None
    files: list[tuple[Attachment, bytes]] = []
    try:
        for name, value in form.multi_items():
            if name == "request":
                if asked is not None:
                    raise Problem(422, "request: give one part of that name")
                asked = _parsed(model, await value.read() if isinstance(value, UploadFile) else value, "request, ")
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
