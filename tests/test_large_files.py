"""Files at the limits (issue 25), on SQLite and on PostgreSQL: a notification with 20 MiB of files arrives whole on
both channels while its Temporal history stays small and holds none of their bytes; what the issue is done with
(a PDF, a PNG and an inline image, byte for byte, and the audit naming them by hash); and a worker that holds no
more files in memory at once than its budget."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
from collections.abc import Sequence

import pytest
from temporalio.api.history.v1 import History
from temporalio.client import WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from activities.contract import SEND
from client import attachment
from domain import Channel
from settings import Settings
from sinks.mail import MailSink
from sinks.slack import SlackSink
from streams import StreamStore
from tests.databases import Databases
from tests.service import Notify, entity, eventually, notifying, operation
from tests.test_slack_files import FILES, PDF, PNG

MIB = 1024 * 1024
LOGO = b"\x89PNG\r\n\x1a\n" + bytes(range(0, 256, 3)) * 100


@pytest.fixture(params=["sqlite", "postgresql"])
def streams_url(request: pytest.FixtureRequest, streams_url: str) -> str:
    """The conftest's SQLite file, or a fresh PostgreSQL database (to which `settings` connects each kind of handle
    as its own role): every test here runs on both."""
    if request.param == "sqlite":
        return streams_url
    postgres: Databases = request.getfixturevalue("postgres")
    return postgres.fresh()


async def history_of(notify: Notify, notification_id: str) -> WorkflowHistory:
    return await notify.env.client.get_workflow_handle(notification_id).fetch_history()


def serialized(history: WorkflowHistory) -> bytes:
    """The history as Temporal keeps it (protobuf), every payload in it as it is stored."""
    return History(events=history.events).SerializeToString()


def attempt_timeouts(history: WorkflowHistory) -> dict[str, float]:
    """The start-to-close timeout the saga gave each send, by activity name."""
    return {
        e.activity_task_scheduled_event_attributes.activity_type.name: (
            e.activity_task_scheduled_event_attributes.start_to_close_timeout.ToTimedelta().total_seconds()
        )
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    }


def assert_holds_none_of(history: bytes, contents: Sequence[bytes]) -> None:
    """No piece of any content in `history`: as it is, in base64 (a piece at a multiple of 3 bytes in is in the
    base64 of the whole), or in hex."""
    for content in contents:
        piece = content[3000:3048]
        for form in (piece, base64.b64encode(piece), piece.hex().encode()):
            assert form not in history


async def test_the_most_files_a_notification_may_carry_arrive_whole_on_both_channels_and_the_history_stays_small(
    notify: Notify, mail_sink: MailSink, slack_sink: SlackSink
) -> None:
    """25 MiB (the issue asks for 20), incompressible: about 34 MiB as an email."""
    contents = [os.urandom(10 * MIB), os.urandom(10 * MIB), os.urandom(5 * MIB)]
    files = [attachment(f"backup-{i}.bin", content) for i, content in enumerate(contents, 1)]
    nid = await notify.client.request(operation(attachments=files), contents=contents)
    assert (await notify.client.result(nid)).status == "sent"

    [mail] = mail_sink.messages
    assert [p.get_content() for p in mail.message.iter_attachments()] == contents
    assert [f.content for f in slack_sink.files] == contents
    history = await history_of(notify, nid)
    assert len(serialized(history)) < 100_000
    assert_holds_none_of(serialized(history), contents)
    # each attempt is given the time its files take at 500,000 bytes a second: an email's in base64
    base64_lines = sum(-(-len(content) // 57) for content in contents)
    assert attempt_timeouts(history) == {
        SEND[Channel.EMAIL].name: pytest.approx(60 + base64_lines * 78 / 500_000, abs=0.001),
        SEND[Channel.SLACK].name: pytest.approx(60 + 25 * MIB / 500_000, abs=0.001),
    }


async def test_a_pdf_a_png_and_an_inline_image_arrive_byte_for_byte_and_the_audit_names_them_by_hash(
    notify: Notify, mail_sink: MailSink, slack_sink: SlackSink
) -> None:
    logo = attachment("logo.png", LOGO, content_id="logo")
    op = operation(attachments=[*FILES, logo], html_body='<p>Disk almost full</p><img src="cid:logo">')
    nid = await notify.client.request(op, contents=[PDF, PNG, LOGO])
    assert (await notify.client.result(nid)).status == "sent"

    [mail] = mail_sink.messages
    attached = [(p.get_filename(), p.get_content_type(), p.get_content()) for p in mail.message.iter_attachments()]
    assert attached == [("invoice.pdf", "application/pdf", PDF), ("Übersicht März.png", "image/png", PNG)]
    related = mail.message.get_body(("related",))
    assert related is not None
    [_, image] = related.iter_parts()
    assert (image["Content-ID"], image.get_content_type(), image.get_content()) == ("<logo>", "image/png", LOGO)
    assert [(f.name, f.content) for f in slack_sink.files] == [("invoice.pdf", PDF), ("Übersicht März.png", PNG)]
    assert_holds_none_of(serialized(await history_of(notify, nid)), [PDF, PNG, LOGO])
    [audited] = await notify.client.audit_email("ada@example.com")
    assert [(a.filename, a.sha256) for a in audited.attachments] == [
        (name, hashlib.sha256(content).hexdigest())
        for name, content in (("invoice.pdf", PDF), ("Übersicht März.png", PNG), ("logo.png", LOGO))
    ]


async def test_a_worker_holds_no_more_files_than_its_budget_and_a_notification_over_it_goes_alone(
    dev_env: WorkflowEnvironment,
    store: StreamStore,
    settings: Settings,
    mail_sink: MailSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each notification's files are more than the whole budget: the first takes all of it and is sent; the second
    waits for it (the mail server holds the first at DATA meanwhile, with connections to spare), then is sent."""
    first, second = os.urandom(MIB), os.urandom(MIB)
    budget = settings.model_copy(update={"attachment_memory_bytes": MIB // 2})
    caplog.set_level(logging.INFO, "notify.delivery")

    async def waiting() -> bool:
        return "waits for memory for its files (1,048,576 bytes; the worker holds at most 524,288" in caplog.text

    mail_sink.hold()
    async with notifying(dev_env, store, budget, entity(channels={"email": "send"})) as notify:
        sent = [await notify.client.request(operation(attachments=[attachment("first.bin", first)]), contents=[first])]
        assert await asyncio.to_thread(mail_sink.data_arrived.wait, 60)
        mail_sink.data_arrived.clear()
        sent.append(
            await notify.client.request(operation(attachments=[attachment("second.bin", second)]), contents=[second])
        )
        await eventually(waiting)
        assert not mail_sink.data_arrived.is_set()  # the second has not begun its DATA
        mail_sink.release()
        views = [await notify.client.result(nid) for nid in sent]
    assert [v.status for v in views] == ["sent", "sent"]
    assert [[p.get_content() for p in m.message.iter_attachments()] for m in mail_sink.messages] == [[first], [second]]
