"""Files a notification sends (issue 25): kept once in the stream store by SHA-256, named by the records and the
saga's payloads, read by the email handler and attached to the message."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from client import NotificationClient, RequestRefused, attachment
from domain import MAX_ATTACHMENT_BYTES, Attachment, SendNotificationToEntityOp, admitted
from settings import Settings
from sinks.mail import MailSink
from streams import StreamName
from tests.service import Notify, operation

PDF = b"%PDF-1.7\n" + bytes(range(256)) * 1200
PNG = b"\x89PNG\r\n\x1a\n" + bytes(reversed(range(256))) * 40


async def test_files_arrive_whole_and_the_records_name_them_without_their_bytes(
    notify: Notify, mail_sink: MailSink
) -> None:
    files = [attachment("invoice.pdf", PDF), attachment("Übersicht März.png", PNG)]
    nid = await notify.client.request(operation(attachments=files), contents=[PDF, PNG])
    assert (await notify.client.result(nid)).status == "sent"

    [mail] = mail_sink.messages
    message = mail.message
    assert message.get_content_type() == "multipart/mixed"
    parts = [(p.get_filename(), p.get_content_type(), p.get_content()) for p in message.iter_attachments()]
    assert parts == [("invoice.pdf", "application/pdf", PDF), ("Übersicht März.png", "image/png", PNG)]
    assert "filename*=utf-8''%C3%9Cbersicht%20M%C3%A4rz.png" in mail.data.decode()  # RFC 2231
    body = message.get_body(("plain",))
    assert body is not None and body.get_content().strip() == "Volume /data is at 91%."

    records = await notify.client.events(nid)
    [sent] = [r for r in records if r.stream == StreamName.EMAIL_OPERATION]
    assert sent.json()["operation"]["attachments"] == [a.model_dump(mode="json") for a in files]
    assert all(len(r.payload) < 10_000 for r in records)  # named, never carried
    [audited] = await notify.client.audit_email("ada@example.com")
    assert audited.attachments == files
    history = await notify.env.client.get_workflow_handle(nid).fetch_history()
    assert len(history.to_json()) < 60_000 < len(PDF)


async def test_a_template_attaches_the_files_it_names_after_the_requests_own(
    notify: Notify, settings: Settings, mail_sink: MailSink, tmp_path: Path
) -> None:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "terms.pdf").write_bytes(PDF)
    (folder / "logo.png").write_bytes(PNG)
    (folder / "invoice.yaml").write_text(
        "subject: Invoice {{ data.number }}\ntext: Attached.\nhtml: <img src='cid:logo'>\n"
        "attachments: [{path: terms.pdf, filename: Terms.pdf}]\ninline: [{content_id: logo, path: logo.png}]\n"
    )
    client = NotificationClient(notify.store, notify.env.client, settings.model_copy(update={"templates_dir": folder}))
    invoice = b"%PDF-1.7 invoice 7"
    content = {"entity_id": "user-1", "attachments": [attachment("invoice-7.pdf", invoice)]}
    accepted = await client.submit(content, "invoice", {"number": 7}, contents=[invoice])
    assert (await notify.client.result(accepted.id)).status == "sent"

    [mail] = mail_sink.messages
    assert mail.message["Subject"] == "Invoice 7"
    parts = [(p.get_filename(), p.get_content()) for p in mail.message.iter_attachments()]
    assert parts == [("invoice-7.pdf", invoice), ("Terms.pdf", PDF)]
    related = mail.message.get_body(("related",))
    assert related is not None and [(p["Content-ID"], p.get_content()) for p in related.iter_parts()][1] == (
        "<logo>",
        PNG,
    )
    [requested] = [r for r in await notify.client.events(accepted.id) if r.stream == StreamName.CLIENT_OPERATION]
    named = [(a["filename"], a["sha256"]) for a in requested.json()["operation"]["attachments"]]
    assert named == [
        (n, hashlib.sha256(c).hexdigest())
        for n, c in [("invoice-7.pdf", invoice), ("Terms.pdf", PDF), ("logo.png", PNG)]
    ]


async def test_contents_that_are_not_the_ones_named_are_refused_and_nothing_is_written(notify: Notify) -> None:
    files = [attachment("invoice.pdf", PDF)]
    undersized = [*files, attachment("copy.pdf", PDF).model_copy(update={"size": 0})]  # the same bytes, said smaller
    for named, contents in ((files, []), (files, [PNG]), (files, [PDF, PNG]), (undersized, [PDF])):
        with pytest.raises(RequestRefused, match="the files given are not those the request names"):
            await notify.client.request(operation(attachments=named), contents=contents)
    assert await notify.store.read(StreamName.CLIENT_OPERATION) == []
    assert await notify.store.content(hashlib.sha256(PDF).hexdigest()) is None


@pytest.mark.parametrize(
    ("attachments", "said"),
    [
        ([attachment(f"f{i}.txt", b"x") for i in range(21)], "at most 20 attachments, not 21"),
        (
            [{**attachment(f"f{i}.bin", b"").model_dump(), "size": MAX_ATTACHMENT_BYTES} for i in range(3)],
            "the attachments are 31,457,280 bytes in all; at most 26,214,400 (25 MiB)",
        ),
        (
            [{**attachment("big.bin", b"").model_dump(), "size": MAX_ATTACHMENT_BYTES + 1}],
            "a file may be at most 10,485,760 (10 MiB)",
        ),
        ([{**attachment("passwd", b"x").model_dump(), "filename": "../etc/passwd"}], "without / or \\"),
        (
            [attachment("a.png", b"a", content_id="logo"), attachment("b.png", b"b", content_id="logo")],
            "each inline image has a content id of its own",
        ),
        ([attachment("a.png", b"a", content_id="logo")], "an inline image is shown by an HTML body: give one"),
        (
            [{**attachment("a.eml", b"x").model_dump(), "media_type": "message/rfc822"}],
            "is a part of a message, not a file: send it as application/octet-stream",
        ),
        (
            [{**attachment("a.pdf", b"x").model_dump(), "media_type": "not a type"}],
            "must be a media type in lower case",
        ),
    ],
)
def test_a_request_past_the_limits_is_refused_saying_which(attachments: list[object], said: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(said)):
        admitted(SendNotificationToEntityOp, operation(attachments=attachments))


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"attach_to": []}, "attach_to: name each channel once, at least one"),
        ({"attach_to": ["email", "email"]}, "attach_to: name each channel once, at least one"),
        ({"attach_to": ["fax"]}, "Input should be 'email' or 'slack'"),
        ({"attach_to": ["slack"], "attachments": []}, "this request attaches none"),
        (
            {"attach_to": ["slack"], "attachments": [attachment("a.png", b"a", content_id="a")], "html_body": "<p>"},
            "this request attaches none",  # an inline image is the HTML body's, on email only
        ),
    ],
)
def test_attach_to_names_channels_for_files_that_are_attached(changes: dict[str, object], said: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(said)):
        admitted(
            SendNotificationToEntityOp, {**operation(attachments=[attachment("a.pdf", b"a")]).model_dump(), **changes}
        )


def test_a_file_is_named_by_its_extension_but_never_as_a_part_of_the_message() -> None:
    assert attachment("report.pdf", b"").media_type == "application/pdf"
    assert attachment("saved.eml", b"").media_type == "application/octet-stream"  # not message/rfc822
    assert attachment("notes", b"").media_type == "application/octet-stream"


def test_an_inline_image_needs_an_html_body_that_is_not_empty() -> None:
    with pytest.raises(ValidationError, match="an inline image is shown by an HTML body"):
        admitted(
            SendNotificationToEntityOp, operation(attachments=[attachment("a.png", b"a", content_id="x")], html_body="")
        )


def test_a_file_named_under_other_rules_still_reads_back() -> None:
    """Today's rules are checked on admission only: a record, or a saga's input, written under others reads back."""
    recorded = {**attachment("a.bin", b"x").model_dump(), "media_type": "Odd", "size": 10**9, "content_id": "a b"}
    assert Attachment.model_validate(recorded).size == 10**9
    with pytest.raises(ValidationError):
        admitted(Attachment, recorded)
