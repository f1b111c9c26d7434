"""What a channel's server answers is read for what it holds, never for the shape it should have.

A Slack answer that is not Slack's JSON (a proxy's plain-text 503, an HTML error page, a body cut short) is classified
by its HTTP status first (a 5xx or a 429 is retried, any other 4xx fails for good), then by Slack's error code when
the body is Slack's JSON; what is recorded says the status and the start of the text. An SMTP reply is classified by
its code (a 4xx is retried, a 5xx is not), and one that is not SMTP at all is retried, with what it said.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from temporalio.testing import WorkflowEnvironment

from activities.channel_handler import Delivery, TransientDeliveryError
from activities.email import REUSED, EmailHandler
from activities.slack import SlackHandler
from domain import SendEmailOp, SendSlackMessageOp
from settings import Settings
from sinks.mail import MailSink, free_port
from sinks.slack import ScriptedResponse, SlackSink
from streams import StreamName, StreamStore
from tests import service
from tests.service import entity, eventually, notifying

ENVOY_503 = "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
"""What an Envoy proxy answers, as `text/plain`, when Slack behind it cannot be reached."""
SLACK_CALLS = ("chat.postMessage", "conversations.history")
"""Every Slack Web API method the Slack channel calls."""


async def slack_handling(store: StreamStore) -> list[tuple[str, str | None]]:
    record = await store.reader(StreamName.SLACK_OPERATION).latest(1)
    assert record is not None
    history = await store.handling(StreamName.SLACK_OPERATION).history(record.internal_id, "send-slack-message")
    return [(e.status, e.details) for e in history]


async def test_a_proxy_answering_plain_text_503_to_each_slack_call_is_retried_until_slack_posts_once(
    time_skipping_env: WorkflowEnvironment, store: StreamStore, settings: Settings, slack_sink: SlackSink
) -> None:
    """The first post, a retry's look for it in the channel's history, and the next post are each answered by the
    proxy; then Slack is back, and the message is posted once."""
    slack_sink.script_responses(
        *(ScriptedResponse(status=503, body=ENVOY_503, method=m) for m in (*SLACK_CALLS, "chat.postMessage"))
    )
    async with notifying(time_skipping_env, store, settings, entity(channels={"slack": "send"})) as notify:
        nid, view = await notify.send()
    assert view["status"] == "sent", view
    assert view["channels"]["slack"]["attempts"] == 4
    assert [m for m, _ in slack_sink.calls] == [
        "chat.postMessage",  # the proxy's 503
        "conversations.history",  # the proxy's 503
        "conversations.history",
        "chat.postMessage",  # the proxy's 503
        "conversations.history",
        "chat.postMessage",
    ]
    [posted] = slack_sink.messages
    assert (posted.metadata or {})["event_payload"] == {"notification_id": nid, "channel_operation_id": 1}
    failed = [details for status, details in await slack_handling(store) if status == "Failed"]
    assert failed == [f"Slack answered HTTP 503: {ENVOY_503}"] * 3
    assert await notify.types(StreamName.SLACK_EVENT, 1) == [
        "SendSlackMessageRequestedEvent",
        "SucceededInSendingSlackMessageEvent",
    ]


async def test_a_proxy_answering_plain_text_403_fails_the_post_for_good_and_says_why(
    time_skipping_env: WorkflowEnvironment, store: StreamStore, settings: Settings, slack_sink: SlackSink
) -> None:
    slack_sink.script_responses(ScriptedResponse(status=403, body="Access denied by proxy policy\n"))
    async with notifying(time_skipping_env, store, settings, entity(channels={"slack": "send"})) as notify:
        _, view = await notify.send()
    assert view["status"] == "failed", view
    slack = view["channels"]["slack"]
    assert (slack["outcome"], slack["attempts"]) == ("failed", 1)
    assert slack["reason"] == "Slack answered HTTP 403: Access denied by proxy policy"
    assert [m for m, _ in slack_sink.calls] == ["chat.postMessage"] and slack_sink.messages == []
    failed = await store.reader(StreamName.SLACK_EVENT).latest(1)
    assert failed is not None and failed.type == "FailedToSendSlackMessageEvent"
    assert failed.json()["response"]["response_json"] == {"status": 403, "text": "Access denied by proxy policy"}


MESSAGE = SendSlackMessageOp(notification_id="n-1", channel_operation_id=1, workspace="acme", channel="C0123", text="T")
EMAIL = SendEmailOp.model_validate(
    {
        "notification_id": "n-1",
        "channel_operation_id": 1,
        "sender": {"address": "alerts@notify.test"},
        "to": [{"address": "ada@example.com"}],
        "subject": "S",
        "text_body": "B",
    }
)
HTML = {"Content-Type": "text/html"}
JSON = {"Content-Type": "application/json"}


async def delivered(handler: SlackHandler | EmailHandler, attempt: int = 1) -> Delivery | TransientDeliveryError:
    """The delivery of the handler's sample message by this attempt, or the transient failure it raised for a
    retry."""
    return await service.delivered(handler, EMAIL if isinstance(handler, EmailHandler) else MESSAGE, attempt)


@pytest.mark.parametrize("method", SLACK_CALLS)
@pytest.mark.parametrize(
    ("answer", "transient", "reason", "response_json"),
    [
        (
            ScriptedResponse(status=502, body="<html><body>502 Bad Gateway</body></html>", headers=HTML),
            True,
            "Slack answered HTTP 502",  # slack_sdk reads no body that is neither JSON nor plain text
            {"status": 502, "text": ""},
        ),
        (
            ScriptedResponse(status=500, body='{"ok": fal', headers=JSON),
            True,
            'Slack answered HTTP 500: {"ok": fal',
            {"status": 500, "text": '{"ok": fal'},
        ),
        (
            ScriptedResponse(status=429, body="Too Many Requests", headers={"Retry-After": "7"}),
            True,
            "Slack answered HTTP 429: Too Many Requests",
            {"status": 429, "text": "Too Many Requests"},
        ),
        (
            ScriptedResponse(status=404, body="no route", headers=JSON),
            False,
            "Slack answered HTTP 404: no route",
            {"status": 404, "text": "no route"},
        ),
        (
            ScriptedResponse(status=400, body={"ok": False, "error": "internal_error"}),
            False,  # the status first: a 4xx is for good, whatever its body says
            "Slack answered internal_error",
            {"ok": False, "error": "internal_error"},
        ),
        (
            ScriptedResponse(status=200, body={"ok": False, "error": "service_unavailable"}),
            True,  # then Slack's error code
            "Slack answered service_unavailable",
            {"ok": False, "error": "service_unavailable"},
        ),
        (
            ScriptedResponse(status=200, body="OK"),  # plain text: something between answered, not Slack
            True,
            "Slack answered HTTP 200: an answer that is not Slack's JSON",
            {"status": 200, "text": "an answer that is not Slack's JSON"},
        ),
        (
            ScriptedResponse(status=200, body="[1]", headers=JSON),  # JSON, but not Slack's object
            True,
            "Slack answered HTTP 200: an answer that is not Slack's JSON",
            {"status": 200, "text": "an answer that is not Slack's JSON"},
        ),
        (
            ScriptedResponse(status=200, body="[]", headers=JSON),  # an empty body, as slack_sdk reads it
            True,
            "Slack answered HTTP 200",
            {"status": 200, "text": ""},
        ),
    ],
)
async def test_every_answer_to_every_slack_call_is_classified_by_its_status_then_its_body(
    handler: SlackHandler,
    slack_sink: SlackSink,
    method: str,
    answer: ScriptedResponse,
    transient: bool,
    reason: str,
    response_json: dict[str, Any],
) -> None:
    slack_sink.script_responses(dataclasses.replace(answer, method=method))
    outcome = await delivered(handler, attempt=2)  # a retry looks in the history before it posts
    delivery = outcome.delivery if isinstance(outcome, TransientDeliveryError) else outcome
    assert isinstance(outcome, TransientDeliveryError) == transient
    assert delivery.failure == reason
    assert delivery.response.model_dump()["response_json"] == response_json
    if isinstance(outcome, TransientDeliveryError):
        assert outcome.retry_after == (7 if answer.status == 429 else None)
    called = ["conversations.history", "chat.postMessage"]  # in the order a retry calls them
    assert [m for m, _ in slack_sink.calls] == called[: called.index(method) + 1]
    assert slack_sink.messages == []


async def test_a_token_that_may_not_read_the_history_posts(handler: SlackHandler, slack_sink: SlackSink) -> None:
    """Slack's `missing_scope`, read from its JSON as before: the retry posts, and says so in the log."""
    slack_sink.history_forbidden = True
    outcome = await delivered(handler, attempt=2)
    assert isinstance(outcome, Delivery) and outcome.failure is None
    assert [m for m, _ in slack_sink.calls] == ["conversations.history", "chat.postMessage"]
    assert len(slack_sink.messages) == 1


def email_handler(store: StreamStore, port: int, **settings: object) -> EmailHandler:
    smtp = {"smtp_host": "127.0.0.1", "smtp_port": port, **settings}
    return EmailHandler(store, Settings(_env_file=None).model_copy(update=smtp))


@asynccontextmanager
async def answering(said: bytes) -> AsyncIterator[int]:
    """A server on loopback that answers whoever connects with `said` and hangs up; yields its port."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(said)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", free_port())
    async with server:
        yield server.sockets[0].getsockname()[1]


async def test_an_answer_on_the_smtp_port_that_is_not_smtp_is_retried_and_says_what_it_was(
    local_store: StreamStore,
) -> None:
    """A proxy (or any other service) answering where the mail server should: no reply code to classify by, so a
    later attempt may meet the mail server; the reason quotes the line it sent."""
    async with answering(
        f"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\r\n{ENVOY_503}".encode()
    ) as port:
        outcome = await delivered(email_handler(local_store, port))
    assert isinstance(outcome, TransientDeliveryError)
    assert outcome.delivery.failure == "Malformed SMTP response line: HTTP/1.1 503 Service Unavailable"
    response = outcome.delivery.response.model_dump()
    assert response["result"] == "FailedToSendEmailToServer"
    assert response["communication_log"] == ["S: Malformed SMTP response line: HTTP/1.1 503 Service Unavailable"]


async def test_a_login_the_server_cannot_check_for_now_is_retried(local_store: StreamStore, tmp_path: Path) -> None:
    """A `454` to AUTH is temporary (the server's credential store is down, say): retried, where a `535` is not
    (`test_email_security`); the next attempt, once the server can check, delivers."""
    with MailSink(login=("notify", "secret"), folder=tmp_path / "mail") as mail:
        handler = email_handler(local_store, mail.port, smtp_username="notify", smtp_password=SecretStr("secret"))
        mail.login_reply = "454 4.7.0 Temporary authentication failure"
        outcome = await delivered(handler)
        assert isinstance(outcome, TransientDeliveryError)
        assert outcome.delivery.failure == "454 4.7.0 Temporary authentication failure"
        assert outcome.delivery.response.model_dump()["result"] == "FailedToAuthenticateWithServer"
        assert mail.messages == []
        mail.login_reply = None
        outcome = await delivered(handler, attempt=2)
    assert isinstance(outcome, Delivery) and outcome.failure is None
    assert [m.login for m in mail.messages] == ["notify"]


async def test_slack_calls_share_one_http_connection(handler: SlackHandler, slack_sink: SlackSink) -> None:
    """One HTTP session for the worker's Slack calls: a retry's look in the history and every post go over the
    connection the first call opened."""
    for attempt in (1, 2, 1):
        outcome = await delivered(handler, attempt=attempt)
        assert isinstance(outcome, Delivery) and outcome.failure is None
    assert [m for m, _ in slack_sink.calls] == ["chat.postMessage", "conversations.history", "chat.postMessage"]
    assert len(slack_sink.connections) == 1
    await handler.close()


DROPPED = "-- the connection was dropped ({}): the message goes on a new one"


@pytest.fixture
async def mail(tmp_path: Path) -> AsyncIterator[MailSink]:
    with MailSink(folder=tmp_path / "mail") as sink:
        yield sink


@pytest.fixture
async def email(local_store: StreamStore, mail: MailSink) -> AsyncIterator[EmailHandler]:
    handler = email_handler(local_store, mail.port)
    yield handler
    await handler.close()


def communication_log(outcome: Delivery | TransientDeliveryError) -> list[str]:
    delivery = outcome.delivery if isinstance(outcome, TransientDeliveryError) else outcome
    log: list[str] = delivery.response.model_dump()["communication_log"]
    return log


async def test_messages_to_one_server_share_a_connection_and_each_logs_its_own_exchange(
    email: EmailHandler, mail: MailSink
) -> None:
    first, second = await delivered(email), await delivered(email)
    assert isinstance(second, Delivery) and second.failure is None
    assert len(mail.messages) == 2 and mail.connections == 1
    assert mail.acknowledged == {0}  # the second message's RSET said that the first one's answer was read
    opened, reused = communication_log(first), communication_log(second)
    assert opened[0].startswith("S: 220 ") and opened[1].startswith("C: EHLO ")
    assert reused[:3] == [REUSED, "C: RSET", "S: 250 OK"]
    assert not any(line.startswith(("S: 220", "C: EHLO")) for line in reused)
    assert reused[-2:] == opened[-2:] and reused[-2].startswith("C: DATA <a message of ")


@pytest.mark.parametrize(
    ("refusal", "transient"),
    [
        ("451 4.3.0 Try again later", True),
        ("554 5.6.0 Message content rejected", False),
        ("550 5.1.1 No such user", False),
    ],
)
async def test_a_refused_message_leaves_the_connection_to_the_next(
    email: EmailHandler, mail: MailSink, refusal: str, transient: bool
) -> None:
    """A 4xx or 5xx, to DATA or to the recipient, fails that message alone (classified as ever); the next one goes on
    the same connection, reset."""
    if refusal.startswith("550"):
        mail.rejected_recipients["ada@example.com"] = refusal
    else:
        mail.script_replies(refusal)
    refused = await delivered(email)
    assert isinstance(refused, TransientDeliveryError) == transient
    assert (refused.delivery if isinstance(refused, TransientDeliveryError) else refused).failure is not None
    assert refusal in " ".join(communication_log(refused))
    mail.rejected_recipients.clear()
    outcome = await delivered(email)
    assert isinstance(outcome, Delivery) and outcome.failure is None
    assert len(mail.messages) == 1 and mail.connections == 1
    assert communication_log(outcome)[:2] == [REUSED, "C: RSET"]


async def test_messages_sent_together_take_no_more_connections_than_the_setting_allows(
    local_store: StreamStore, mail: MailSink
) -> None:
    handler = email_handler(local_store, mail.port, smtp_max_connections=2)
    outcomes = await asyncio.gather(*(delivered(handler) for _ in range(6)))
    await handler.close()
    assert all(isinstance(o, Delivery) and o.failure is None for o in outcomes)
    assert len(mail.messages) == 6 and mail.connections == 2
    assert mail.acknowledged == set(range(6))  # and each said QUIT at the end


async def test_a_connection_the_server_closed_while_idle_is_replaced_and_the_message_sent_once(
    email: EmailHandler, mail: MailSink
) -> None:
    """Whether the worker has seen the connection close yet (then it is not taken) or finds out at RSET, the message
    goes on a new connection, within the attempt: not a failed one."""
    await delivered(email)
    mail.hang_up()
    outcome = await delivered(email)
    assert isinstance(outcome, Delivery) and outcome.failure is None
    assert len(mail.messages) == 2 and mail.connections == 2
    log = communication_log(outcome)
    opened = log.index(next(line for line in log if line.startswith("S: 220 ")))
    if opened > 0:
        assert log[:2] == [REUSED, "C: RSET"] and log[2].startswith(
            "-- the connection was dropped (SMTPServerDisconnected: "
        )
        assert opened == 3
    assert [line for line in log if line.startswith("C: DATA")] == [log[-2]]


async def test_a_server_that_timed_out_an_idle_connection_costs_the_next_message_nothing(
    email: EmailHandler, mail: MailSink
) -> None:
    """Its `421` to the RSET (then it hangs up) is the connection's end, not the message's failure."""
    await delivered(email)
    mail.closing_reply = "421 4.4.2 Timeout exceeded"
    outcome = await delivered(email)
    assert isinstance(outcome, Delivery) and outcome.failure is None
    assert len(mail.messages) == 2 and mail.connections == 2
    log = communication_log(outcome)
    assert log[:4] == [REUSED, "C: RSET", "S: 421 4.4.2 Timeout exceeded", DROPPED.format("421 4.4.2 Timeout exceeded")]
    assert log[4].startswith("S: 220 ") and log[5].startswith("C: EHLO ")


async def test_a_connection_dropped_once_the_message_is_under_way_is_not_tried_again_on_another(
    email: EmailHandler, mail: MailSink
) -> None:
    """After DATA the server may have the message: the drop is the attempt's failure, and the message is not sent
    again within it (a retry's, under the same Message-ID, is the saga's to decide)."""
    await delivered(email)
    mail.data_arrived.clear()
    mail.hold()
    sending = asyncio.create_task(delivered(email))
    assert await asyncio.to_thread(mail.data_arrived.wait, 30)
    mail.hang_up()
    mail.release()
    outcome = await sending
    assert isinstance(outcome, TransientDeliveryError)
    assert outcome.delivery.failure is not None and outcome.delivery.failure.startswith("SMTPServerDisconnected")
    log = communication_log(outcome)
    assert log[:2] == [REUSED, "C: RSET"] and log[-1].startswith("C: DATA")
    assert mail.connections == 1


async def test_the_worker_closes_its_connections_when_it_stops(
    time_skipping_env: WorkflowEnvironment,
    store: StreamStore,
    settings: Settings,
    mail_sink: MailSink,
    slack_sink: SlackSink,
) -> None:
    """Its SMTP connection says QUIT, and its Slack session's connection is closed (aiohttp's own idle timeout is 15 s:
    closed at once, or the check fails)."""
    async with notifying(time_skipping_env, store, settings) as notify:
        for _ in range(2):
            _, view = await notify.send()
            assert view["status"] == "sent", view
        assert mail_sink.connections == 1 and mail_sink.acknowledged == {0}  # open, the last message's answer unsaid
        assert len(slack_sink.connections) == 1 and slack_sink.open_connections == 1
    assert mail_sink.acknowledged == {0, 1}  # QUIT

    async def slack_closed() -> bool:
        return slack_sink.open_connections == 0

    await eventually(slack_closed, timeout=5)
