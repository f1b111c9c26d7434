"""Files through the HTTP API (issue 25), for a notification and a broadcast alike: in JSON, in base64; as
`multipart/form-data` parts; where `attach_to` sends them; and every limit refused before anything is written."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from api.limits import MAX_BODY_BYTES, MAX_FILES_BODY_BYTES
from sinks.mail import MailSink
from sinks.slack import SlackSink
from tests.service import Api, eventually

PDF = b"%PDF-1.7\n" + bytes(range(256)) * 1200
PNG = b"\x89PNG\r\n\x1a\n" + bytes(reversed(range(256))) * 40
CSV = b"day,sent\n2026-12-05,3\n"
ASKED = {"entity": "user-1", "subject": "Invoice", "body": "Attached.", "html": '<p>Attached.</p><img src="cid:logo">'}
BROADCAST = {**{k: v for k, v in ASKED.items() if k != "entity"}, "entities": ["user-1", "user-2"]}
ROUTES = pytest.mark.parametrize(("path", "asked"), [("/v1/notifications", ASKED), ("/v1/broadcasts", BROADCAST)])
"""A notification and a broadcast take their files alike."""


def b64(content: bytes) -> str:
    return base64.b64encode(content).decode()


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


async def delivered(api: Api, response: Any) -> None:
    assert response.status_code == 202, response.text
    assert (await api.outcome(response.json()["id"]))["status"] == "sent"


def mailed(mail_sink: MailSink) -> tuple[list[tuple[str | None, str, Any]], list[tuple[str | None, bytes]]]:
    """The one message's attachments (name, media type, bytes), and its inline images (content id, bytes)."""
    [mail] = mail_sink.messages
    files = [
        (p.get_filename(), p.get_content_type(), p.get_payload(decode=True)) for p in mail.message.iter_attachments()
    ]
    related = mail.message.get_body(("related",))
    assert related is not None
    inline = [(p["Content-ID"], p.get_content()) for p in related.iter_parts() if p["Content-ID"]]
    return files, inline


async def test_files_in_json_and_an_inline_image_arrive_byte_for_byte(
    api: Api, mail_sink: MailSink, slack_sink: SlackSink
) -> None:
    body = {
        **ASKED,
        "attachments": [
            {"filename": "invoice.pdf", "content": b64(PDF)},  # its media type from its name
            {"filename": "sent.csv", "content_type": "Text/CSV", "content": base64.urlsafe_b64encode(CSV).decode()},
        ],
        "inline": [{"content_id": "logo", "filename": "logo.png", "content": b64(PNG).rstrip("=")}],
    }
    await delivered(api, await api.call("POST", "/v1/notifications", json=body))
    files, inline = mailed(mail_sink)
    assert files == [("invoice.pdf", "application/pdf", PDF), ("sent.csv", "text/csv", CSV)]
    assert inline == [("<logo>", PNG)]
    assert [(f.name, f.content) for f in slack_sink.files] == [("invoice.pdf", PDF), ("sent.csv", CSV)]


async def test_files_as_multipart_parts_arrive_byte_for_byte_on_the_channels_attach_to_names(
    api: Api, mail_sink: MailSink, slack_sink: SlackSink
) -> None:
    """As `curl -F request=@request.json;type=application/json -F attachment=@invoice.pdf -F inline:logo=@logo.png`
    sends them; a part's `application/octet-stream` (curl's when it knows no better) is the name's media type."""
    request = json.dumps({**ASKED, "attach_to": ["email"]}).encode()
    parts = [
        ("request", ("request.json", request, "application/json")),
        ("attachment", ("invoice.pdf", PDF, "application/octet-stream")),
        ("attachment", ("sent.csv", CSV, "text/plain")),
        ("inline:logo", ("logo.png", PNG, "image/png")),
    ]
    await delivered(api, await api.call("POST", "/v1/notifications", files=parts))
    files, inline = mailed(mail_sink)
    assert files == [("invoice.pdf", "application/pdf", PDF), ("sent.csv", "text/plain", CSV)]
    assert inline == [("<logo>", PNG)]
    assert slack_sink.files == [] and len(slack_sink.messages) == 1  # the message, without the files

    as_field = [("request", (None, json.dumps({**ASKED, "html": None}).encode(), "application/json"))]
    answered = await api.call("POST", "/v1/notifications", files=[*as_field, parts[1]])
    assert answered.status_code == 202, answered.text  # the request as a text part, not a file, as well


async def broadcast_sent(api: Api, response: Any) -> str:
    """The broadcast's id, once it has completed with every notification sent."""
    assert response.status_code == 202, response.text
    bid: str = response.json()["id"]

    async def completed() -> bool:
        return bool((await api.call("GET", f"/v1/broadcasts/{bid}")).json()["status"] == "completed")

    await eventually(completed, timeout=60)
    assert (await api.call("GET", f"/v1/broadcasts/{bid}")).json()["counts"] == {"sent": 2}
    return bid


async def test_a_broadcast_takes_files_in_json_and_as_parts_and_each_recipient_gets_them(
    api: Api, mail_sink: MailSink, slack_sink: SlackSink
) -> None:
    """To user-1 (email and Slack) and user-2 (email): the file by each channel, the image by email; then as parts,
    attached to email alone."""
    body = {
        **BROADCAST,
        "attachments": [{"filename": "invoice.pdf", "content": b64(PDF)}],
        "inline": [{"content_id": "logo", "filename": "logo.png", "content": b64(PNG)}],
    }
    await broadcast_sent(api, await api.call("POST", "/v1/broadcasts", key="sender", json=body))
    for mail in mail_sink.messages:
        related = mail.message.get_body(("related",))
        assert related is not None and [p.get_content() for p in related.iter_parts() if p["Content-ID"]] == [PNG]
        assert [(p.get_filename(), p.get_content()) for p in mail.message.iter_attachments()] == [("invoice.pdf", PDF)]
    assert sorted(r for m in mail_sink.messages for r in m.recipients) == ["ada@example.com", "ada@example.com"]
    assert [(f.channel, f.name, f.content) for f in slack_sink.files] == [("C0123", "invoice.pdf", PDF)]

    request = json.dumps({**BROADCAST, "html": None, "attach_to": ["email"]}).encode()
    parts = [("request", ("request.json", request, "application/json")), ("attachment", ("sent.csv", CSV))]
    await broadcast_sent(api, await api.call("POST", "/v1/broadcasts", files=parts))
    attached = [
        [(p.get_filename(), p.get_payload(decode=True)) for p in m.message.iter_attachments()]
        for m in mail_sink.messages
    ]
    assert attached[2:] == [[("sent.csv", CSV)]] * 2
    assert len(slack_sink.files) == 1 and len(slack_sink.messages) == 2  # the message, without the file


@ROUTES
async def test_bad_files_are_422_and_write_nothing(api: Api, path: str, asked: dict[str, Any]) -> None:
    before = await api.records()
    pdf = {"filename": "invoice.pdf", "content": b64(PDF)}
    refused: list[tuple[dict[str, Any], str]] = [
        ({"attachments": [{**pdf, "content": b64(PDF)[:-2] + "!="}]}, "attachments, entry 1, content: Data should be"),
        ({"attachments": [{**pdf, "content": "aGVs bG8="}]}, "attachments, entry 1, content: Data should be valid"),
        ({"attachments": [{**pdf, "filename": "a/b.pdf"}]}, "attachments, entry 1, filename: must be a file's name"),
        ({"attachments": [{**pdf, "content_type": "pdf"}]}, "attachments, entry 1, content_type: must be a media"),
        ({"inline": [{**pdf, "content_id": "<x>"}]}, "inline, entry 1, content_id: must be 1 to 200 of"),
        ({"inline": [pdf]}, "inline, entry 1, content_id: is missing"),
        ({"html": None, "inline": [{**pdf, "content_id": "logo"}]}, "an inline image is shown by an HTML body"),
        ({"attach_to": ["email"], "inline": [{**pdf, "content_id": "logo"}]}, "attach_to: names the channels of"),
        ({"attach_to": ["fax"], "attachments": [pdf]}, "attach_to, entry 1: must be 'email' or 'slack'"),
    ]
    for body, detail in refused:
        answered = await api.call("POST", path, json={**asked, **body})
        assert answered.status_code == 422, (body, answered.text)
        assert answered.json()["detail"].startswith(detail), (body, answered.json())
    for parts, detail in [
        ([("attachment", ("invoice.pdf", PDF))], "request: the part is missing"),
        ([("request", (None, b"{", "application/json"))], "request, Invalid JSON"),
        ([("request", (None, json.dumps(asked))), ("attachment", (None, b"x"))], "attachment: must be a file"),
        ([("request", (None, json.dumps(asked))), ("file", ("a.pdf", PDF))], "'file': not a part this API takes"),
        ([("request", (None, json.dumps(asked))), ("attachment", ("a/", PDF))], "attachment 'a/', filename: must"),
    ]:
        answered = await api.call("POST", path, files=parts)
        assert answered.status_code == 422, (parts, answered.text)
        assert answered.json()["detail"].startswith(detail), (parts, answered.json())
    text = await api.call("POST", path, content=b"{}", headers={"Content-Type": "text/plain"})
    assert text.json()["detail"] == "Content-Type: must be application/json or multipart/form-data"
    assert await api.records() == before
    assert await api.store.content(sha256(PDF)) is None


MIB = 1024 * 1024
BIG = bytes(range(256)) * (10 * MIB // 256)
"""10 MiB: a file at the limit."""


@pytest.mark.parametrize(
    ("files", "multipart", "detail"),
    [
        ([CSV] * 21, False, "attachments: at most 20 files, not 21"),
        ([CSV] * 21, True, "attachments: at most 20 attachments, not 21"),
        ([BIG + b"!"], False, "attachments, entry 1, size: is 10,485,761 bytes; a file may be at most 10,485,760"),
        ([BIG + b"!"], True, "attachment 'f1.bin', size: is 10,485,761 bytes; a file may be at most 10,485,760"),
        ([BIG, BIG[1:], CSV * 300_000], True, "attachments: the attachments are 27,"),
        ([BIG, BIG, BIG[: 5 * MIB] + b"!"], False, "attachments: the attachments are 26,214,401 bytes in all; at most"),
    ],
    ids=["count-json", "count-multipart", "size-json", "size-multipart", "total-multipart", "total-json"],
)
@ROUTES
async def test_files_over_a_limit_are_422_with_it_named_and_nothing_is_written(
    api: Api, files: list[bytes], multipart: bool, detail: str, path: str, asked: dict[str, Any]
) -> None:
    before = await api.records()
    named = [(f"f{i}.bin", content) for i, content in enumerate(files, 1)]
    if multipart:
        parts = [("attachment", (name, content)) for name, content in named]
        answered = await api.call("POST", path, files=[("request", (None, json.dumps(asked))), *parts])
    else:
        body = {**asked, "attachments": [{"filename": name, "content": b64(content)} for name, content in named]}
        answered = await api.call("POST", path, json=body)
    assert answered.status_code == 422 and answered.json()["detail"].startswith(detail), answered.text[:500]
    assert await api.records() == before
    assert [await api.store.content(sha256(content)) for content in set(files)] == [None] * len(set(files))


@pytest.mark.parametrize(
    ("method", "path", "largest"),
    [
        ("POST", "/v1/notifications", MAX_FILES_BODY_BYTES),
        ("POST", "/v1/broadcasts", MAX_FILES_BODY_BYTES),
        ("PUT", "/v1/entities/user-3", MAX_BODY_BYTES),
    ],
)
async def test_a_body_over_its_routes_limit_is_413_as_it_streams(
    api: Api, method: str, path: str, largest: int
) -> None:
    """Without a Content-Length, counted as it comes (with one: tests/test_hostile_http.py)."""

    async def streamed() -> AsyncIterator[bytes]:
        yield b'{"entity": "user-1", "subject": "S", "body": "'
        for _ in range(largest // MIB + 1):
            yield b"A" * MIB
        yield b'"}'

    answered = await api.call(method, path, content=streamed(), headers={"Content-Type": "application/json"})
    assert answered.status_code == 413
    assert answered.json()["detail"] == f"the request body is over {largest:,} bytes"


async def test_openapi_describes_both_bodies(api: Api) -> None:
    spec = (await api.call("GET", "/openapi.json", key=None)).json()
    schemas = spec["components"]["schemas"]
    for path, model in [("/v1/notifications", "NotificationIn"), ("/v1/broadcasts", "BroadcastIn")]:
        body = spec["paths"][path]["post"]["requestBody"]["content"]
        asked = {"$ref": f"#/components/schemas/{model}"}
        assert body["application/json"]["schema"] == body["multipart/form-data"]["schema"]["properties"]["request"]
        assert body["application/json"]["schema"] == asked
        assert {"attachments", "inline", "attach_to"} <= set(schemas[model]["properties"])
    assert set(schemas["InlineIn"]["properties"]) == {"content_id", "filename", "content_type", "content"}
