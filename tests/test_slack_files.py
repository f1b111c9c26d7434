"""Files on Slack (issue 25): each uploaded into the entity's channel through Slack's upload flow, with the message as
their comment; the records name them and Slack's ids for them, never their bytes; a retried upload shares them once."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from pydantic import SecretStr
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from temporalio.testing import WorkflowEnvironment

from activities.channel_handler import Delivery, TransientDeliveryError
from activities.slack import SlackHandler
from client import NotificationClient, attachment
from domain import Channel, SendSlackMessageOp
from harness.processes import WorkerProcess, start_worker
from harness.proxy import CuttableProxy
from settings import Settings
from sinks.mail import MailSink
from sinks.slack import ScriptedResponse, SlackSink
from streams import StreamName, StreamStore
from streams.directory import import_entries
from tests.conftest import ON_BOTH_BACKENDS, SLACK_TOKEN
from tests.databases import Databases
from tests.service import Notify, delivered, entity, notifying, operation

PDF = b"%PDF-1.7\n" + bytes(range(256)) * 1200
PNG = b"\x89PNG\r\n\x1a\n" + bytes(reversed(range(256))) * 40
FILES = [attachment("invoice.pdf", PDF), attachment("Übersicht März.png", PNG)]
COMMENT = "*Disk almost full*\nVolume /data is at 91%."
"""The Slack message of `operation()`, which the files are shared with."""
UPLOAD_CALLS = ["files.getUploadURLExternal", "files.getUploadURLExternal", "files.completeUploadExternal"]


async def test_files_arrive_in_the_entitys_channel_and_in_the_mail_and_the_records_name_them(
    notify: Notify, slack_sink: SlackSink, mail_sink: MailSink
) -> None:
    nid = await notify.client.request(operation(attachments=FILES), contents=[PDF, PNG])
    assert (await notify.client.result(nid)).status == "sent"

    shared = [(f.name, f.title, f.content, f.channel, f.initial_comment) for f in slack_sink.files]
    assert shared == [
        ("invoice.pdf", "invoice.pdf", PDF, "C0123", COMMENT),
        ("Übersicht März.png", "Übersicht März.png", PNG, "C0123", COMMENT),
    ]
    [message] = slack_sink.messages  # one message: the comment, sharing both files
    assert (message.channel, message.text, [f["id"] for f in message.files]) == (
        "C0123",
        COMMENT,
        [f.id for f in slack_sink.files],
    )
    assert [m for m, _ in slack_sink.calls] == UPLOAD_CALLS  # never the retired files.upload
    [mail] = mail_sink.messages
    assert [(p.get_filename(), p.get_content()) for p in mail.message.iter_attachments()] == [
        ("invoice.pdf", PDF),
        ("Übersicht März.png", PNG),
    ]

    records = await notify.client.events(nid)
    [slack_op] = [r for r in records if r.stream == StreamName.SLACK_OPERATION]
    assert slack_op.json()["operation"]["attachments"] == [a.model_dump(mode="json") for a in FILES]
    [succeeded] = [r for r in records if r.type == "SucceededInSendingSlackMessageEvent"]
    assert succeeded.json()["response"]["response_json"] == {
        "ok": True,
        "channel": "C0123",
        "files": [{"id": f.id, "title": f.name} for f in slack_sink.files],
    }
    assert all(len(r.payload) < 10_000 for r in records)  # named, never carried


@pytest.mark.parametrize(
    ("attach_to", "on_slack", "by_email"),
    [(None, ["invoice.pdf"], ["invoice.pdf"]), (["email"], [], ["invoice.pdf"]), (["slack"], ["invoice.pdf"], [])],
)
async def test_an_inline_image_goes_with_the_html_of_the_mail_and_files_where_attach_to_says(
    notify: Notify,
    slack_sink: SlackSink,
    mail_sink: MailSink,
    attach_to: list[str] | None,
    on_slack: list[str],
    by_email: list[str],
) -> None:
    logo = attachment("logo.png", PNG, content_id="logo")
    op = operation(attachments=[FILES[0], logo], html_body='<img src="cid:logo">', attach_to=attach_to)
    nid = await notify.client.request(op, contents=[PDF, PNG])
    assert (await notify.client.result(nid)).status == "sent"
    assert [f.name for f in slack_sink.files] == on_slack
    assert [m.text for m in slack_sink.messages] == [COMMENT]  # the message goes, with the files or without
    [mail] = mail_sink.messages
    assert [p.get_filename() for p in mail.message.iter_attachments()] == by_email
    related = mail.message.get_body(("related",))
    assert related is not None and [p["Content-ID"] for p in related.iter_parts()] == [None, "<logo>"]


async def test_an_upload_whose_completion_answer_is_lost_is_retried_and_shares_the_files_once(
    dev_env: WorkflowEnvironment, store: StreamStore, settings: Settings, slack_sink: SlackSink
) -> None:
    """Slack completes the upload and the connection drops before its answer: the retry finds the files' message
    in the channel's history (the dev server's clock is the wall's, as the history's is) and uploads nothing."""
    slack_sink.lost_answers.append("files.completeUploadExternal")
    fast = settings.model_copy(update={"slack_retry_initial_seconds": 0.2, "slack_messages_per_second": None})
    async with notifying(dev_env, store, fast, entity(channels={"slack": "send"})) as notify:
        nid = await notify.client.request(operation(attachments=FILES), contents=[PDF, PNG])
        await notify.client.result(nid)
        view = await notify.client.status(nid)
        events = await notify.types(StreamName.SLACK_EVENT, 1)
        [succeeded] = [r for r in await notify.client.events(nid) if r.type == "SucceededInSendingSlackMessageEvent"]
    assert view["status"] == "sent", view
    assert view["channels"]["slack"]["attempts"] == 2
    assert [(f.name, f.content) for f in slack_sink.files] == [("invoice.pdf", PDF), ("Übersicht März.png", PNG)]
    assert len(slack_sink.messages) == 1
    assert [m for m, _ in slack_sink.calls] == [*UPLOAD_CALLS, "conversations.history"]
    assert events == ["SendSlackMessageRequestedEvent", "SucceededInSendingSlackMessageEvent"]
    said = succeeded.json()["response"]["response_json"]
    assert said["found_in_history"] and said["files"] == [{"id": f.id, "title": f.name} for f in slack_sink.files]


async def test_a_slack_failure_answer_to_the_completion_is_a_failed_slack_outcome(
    notify: Notify, slack_sink: SlackSink, mail_sink: MailSink
) -> None:
    slack_sink.unknown_channels.add("C0123")
    nid = await notify.client.request(operation(attachments=FILES), contents=[PDF, PNG])
    await notify.client.result(nid)
    view = await notify.client.status(nid)
    assert view["status"] == "partially_sent", view
    slack = view["channels"]["slack"]
    assert (slack["outcome"], slack["attempts"], slack["reason"]) == ("failed", 1, "Slack answered channel_not_found")
    assert slack_sink.files == [] and slack_sink.messages == []
    assert len(mail_sink.messages) == 1


@ON_BOTH_BACKENDS
async def test_a_worker_killed_while_slack_holds_the_completions_answer_shares_the_files_once(
    dev_env: WorkflowEnvironment,
    tmp_path: Path,
    slack_sink: SlackSink,
    worker_env: dict[str, str],
    settings: Settings,
    store: StreamStore,
    owner: StreamStore,
    workers: list[WorkerProcess],
) -> None:
    """`worker.py` is killed (SIGKILL) once Slack has shared the files and before it answers; another worker's retry
    finds them in the channel's history. On PostgreSQL, each handle connects as its own role."""
    slack_sink.hold_answers()
    await import_entries(owner, [entity(channels={"slack": "send"})])
    workers.append(start_worker(worker_env, tmp_path))
    client = NotificationClient(store, dev_env.client, settings)
    nid = await client.request(operation(attachments=FILES), contents=[PDF, PNG])
    assert await asyncio.to_thread(slack_sink.posted.wait, 60)
    workers[0].process.kill()
    workers[0].ended()
    slack_sink.release()
    workers.append(start_worker(worker_env, tmp_path))
    view = await asyncio.wait_for(client.result(nid), 120)
    assert view.status == "sent", view
    assert view.channels[Channel.SLACK].attempts == 2
    assert [(f.name, f.content) for f in slack_sink.files] == [("invoice.pdf", PDF), ("Übersicht März.png", PNG)]
    assert len(slack_sink.messages) == 1
    assert [m for m, _ in slack_sink.calls] == [*UPLOAD_CALLS, "conversations.history"]


FILES_MESSAGE = SendSlackMessageOp(
    notification_id="n-1", channel_operation_id=1, workspace="acme", channel="C0123", text="T", attachments=FILES
)


async def test_a_file_missing_from_the_store_fails_for_good_saying_which(
    handler: SlackHandler, slack_sink: SlackSink
) -> None:
    delivery = await delivered(handler, FILES_MESSAGE)
    assert isinstance(delivery, Delivery)
    assert delivery.failure == f"attachment 'invoice.pdf' ({FILES[0].sha256}) is not in the stream store"
    assert slack_sink.calls == []


async def test_a_store_that_cannot_be_read_is_an_upload_a_later_attempt_makes(
    postgres: Databases, slack_sink: SlackSink
) -> None:
    """PostgreSQL drops its connections as the attempt reads the files: the attempt fails for a retry, uploading
    nothing; the next one, once the store answers, shares them."""
    url = urlsplit(postgres.fresh())
    proxy = await CuttableProxy(url.hostname or "127.0.0.1", url.port or 5432).start()
    through = urlunsplit(url._replace(netloc=f"{url.username or 'postgres'}@127.0.0.1:{proxy.port}"))
    tokens = {"acme": SecretStr(SLACK_TOKEN)}
    settings = Settings(_env_file=None, streams_url=through, slack_api_url=slack_sink.api_url, slack_tokens=tokens)
    try:
        async with settings.open_streams() as store:
            await store.put_contents(FILES_MESSAGE.notification_id, [PDF, PNG])
            handler = SlackHandler(store, settings)
            try:
                await proxy.cut()
                failed = await delivered(handler, FILES_MESSAGE)
                await proxy.restore()
                sent = await delivered(handler, FILES_MESSAGE, attempt=2)
            finally:
                await handler.close()
    finally:
        await proxy.close()
    assert isinstance(failed, TransientDeliveryError), failed
    assert str(failed).startswith("the stream store cannot be read now")
    assert isinstance(sent, Delivery) and sent.failure is None, sent
    assert [(f.name, f.content) for f in slack_sink.files] == [("invoice.pdf", PDF), ("Übersicht März.png", PNG)]


@pytest.mark.parametrize("method", ["files.getUploadURLExternal", "files.completeUploadExternal"])
@pytest.mark.parametrize(
    ("answer", "transient", "reason"),
    [
        (
            ScriptedResponse(status=503, body="upstream connect error"),
            True,
            "Slack answered HTTP 503: upstream connect error",
        ),
        (ScriptedResponse(body={"ok": False, "error": "ratelimited"}), True, "Slack answered ratelimited"),
        (ScriptedResponse(body={"ok": False, "error": "invalid_arguments"}), False, "Slack answered invalid_arguments"),
    ],
)
async def test_every_answer_to_the_upload_flow_is_classified_as_a_message_posts_is(
    handler: SlackHandler,
    local_store: StreamStore,
    slack_sink: SlackSink,
    method: str,
    answer: ScriptedResponse,
    transient: bool,
    reason: str,
) -> None:
    await local_store.put_contents("n-1", [PDF, PNG])
    slack_sink.script_responses(dataclasses.replace(answer, method=method))
    outcome = await delivered(handler, FILES_MESSAGE)
    delivery = outcome.delivery if isinstance(outcome, TransientDeliveryError) else outcome
    assert isinstance(outcome, TransientDeliveryError) == transient
    assert delivery.failure == reason
    assert slack_sink.files == [] and slack_sink.messages == []


async def test_the_sink_answers_the_upload_flow_as_slack_does(slack_sink: SlackSink) -> None:
    client = AsyncWebClient(token=SLACK_TOKEN, base_url=slack_sink.api_url)
    stranger = AsyncWebClient(token="xoxb-someone-else", base_url=slack_sink.api_url)

    async def error(call: Awaitable[object]) -> str:
        with pytest.raises(SlackApiError) as raised:
            await call
        return str(raised.value.response["error"])

    assert await error(stranger.files_getUploadURLExternal(filename="a.txt", length=1)) == "invalid_auth"
    assert await error(client.api_call("files.getUploadURLExternal", params={"filename": "a.txt"})) == (
        "invalid_arguments"
    )
    assert await error(client.files_completeUploadExternal(files=[{"id": "F404"}], channel_id="C1")) == (
        "file_not_found"
    )
    sent = await client.files_upload_v2(
        file_uploads=[{"filename": "a.txt", "content": b"one"}, {"filename": "b.bin", "content": b"\x00two"}],
        channel="C1",
        initial_comment="files",
    )
    assert [f["title"] for f in sent["files"]] == ["a.txt", "b.bin"]
    assert [(f.name, f.content, f.channel, f.initial_comment) for f in slack_sink.files] == [
        ("a.txt", b"one", "C1", "files"),
        ("b.bin", b"\x00two", "C1", "files"),
    ]
    history = await client.conversations_history(channel="C1")
    [message] = history["messages"]
    assert (message["text"], [f["name"] for f in message["files"]]) == ("files", ["a.txt", "b.bin"])
    assert await error(client.files_completeUploadExternal(files=[{"id": sent["files"][0]["id"]}])) == (
        "file_not_found"  # completed already
    )
