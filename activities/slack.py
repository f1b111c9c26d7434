"""The Slack channel's handler: posts a `SendSlackMessageOp` with slack-sdk's `chat.postMessage`, or, when it names
files, uploads them with the message as their comment through Slack's upload flow (`files.getUploadURLExternal`,
the upload, `files.completeUploadExternal`: what slack-sdk's `files_upload_v2` calls, called here one by one so that a
retry can first look for what an earlier attempt shared)."""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse
from temporalio import activity

from activities.channel_handler import (
    CannotPrepare,
    ChannelHandler,
    Delivery,
    FileBudget,
    TransientDeliveryError,
    logger,
    opt_out_of,
)
from activities.contract import RECORD_NOT_SENT, SEND, WAIT_FOR_SLACK_TURN
from domain import (
    Attachment,
    Channel,
    ChannelOperationFailure,
    ChannelOperationOutcomeInfo,
    ChannelOperationRef,
    FailedToSendSlackMessageEvent,
    PrepareToSendOnChannelOp,
    SendSlackMessageOp,
    SendSlackMessageRequestedEvent,
    SendSlackMessageResponse,
    SendSlackMessageResult,
    SucceededInSendingSlackMessageEvent,
    Tag,
    TagName,
    admitted,
    in_one_line,
    tag,
)
from links import unsubscribe_token, unsubscribe_url
from settings import Settings
from streams import StreamName, StreamStore

SLACK_TIMEOUT_SECONDS = 30
"""How long a call to Slack may take; a file's upload is given, besides, the time its bytes take at
`NOTIFY_TRANSFER_BYTES_PER_SECOND`."""
LOOK_BACK_MARGIN = timedelta(minutes=5)
"""How far before the operation was first scheduled a retry looks for its earlier post (clocks differ)."""
SLACK_MAX_TEXT = 40_000
"""Slack truncates longer messages (chat.postMessage, 'Truncating content')."""
TRANSIENT_SLACK_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
TRANSIENT_STATUSES = frozenset({408, 429})
"""HTTP statuses that a later attempt may not meet, besides every 5xx."""
NOT_JSON = "in a non-JSON format: "
"""What slack_sdk's error says before the start of a body that said it was JSON and was not."""
TEXT_KEPT = 200
"""How many characters of an answer that is not Slack's JSON (a proxy's error page, say) are recorded."""


@dataclass(frozen=True)
class SlackAnswer:
    """A failed call's answer, read for what it holds and no more: its HTTP status, and Slack's JSON body, or the
    start of the text that came instead (a proxy's `503 upstream connect error`, say)."""

    status: int
    body: dict[str, Any]
    error: str | None
    """Slack's error code, when the body is Slack's JSON."""
    retry_after: float | None
    from_slack: bool = True
    """Whether the body is Slack's JSON (an object); not when something between answered instead."""

    @classmethod
    def of(cls, failure: SlackApiError) -> SlackAnswer:
        answer = failure.response
        data: dict[str, Any] | bytes | str
        if isinstance(answer, AsyncSlackResponse):
            status, data, headers = answer.status_code, answer.data, answer.headers
        else:  # aiohttp's response to a body that said it was JSON and was not: slack_sdk quotes it in the error
            status, data = getattr(answer, "status", 0), str(failure).partition("\n")[0].rpartition(NOT_JSON)[2]
            headers = getattr(answer, "headers", None) or {}
        retry_after = _seconds({k.lower(): v for k, v in headers.items()}.get("retry-after"))
        if isinstance(data, dict) and data:
            error = data.get("error")
            return cls(status, data, error if isinstance(error, str) else None, retry_after)
        text = data.decode(errors="replace") if isinstance(data, bytes) else str(data or "")
        return cls.not_slacks(status, text, retry_after)

    @classmethod
    def not_slacks(cls, status: int, text: str, retry_after: float | None = None) -> SlackAnswer:
        """An answer whose body is not Slack's JSON: its status and the start of its text."""
        return cls(status, {"status": status, "text": in_one_line(text)[:TEXT_KEPT]}, None, retry_after, False)

    @property
    def transient(self) -> bool:
        """By the HTTP status first (a 5xx, a 429 or a 408 is, whatever its body; any other 4xx is not), then by the
        body: Slack's error code, or, when a success's body is not Slack's JSON, yes (something between answered)."""
        if self.status in TRANSIENT_STATUSES or self.status >= 500:
            return True
        return self.status < 400 and (not self.from_slack or self.error in TRANSIENT_SLACK_ERRORS)

    @property
    def reason(self) -> str:
        if self.error:
            return f"Slack answered {self.error}"
        text = self.body.get("text")
        return f"Slack answered HTTP {self.status}" + (f": {text}" if text else "")


class SlackCallFailed(Exception):
    """A Slack call that did not succeed, with its answer read (`SlackAnswer`)."""

    def __init__(self, answer: SlackAnswer) -> None:
        super().__init__(answer.reason)
        self.answer = answer


async def _called(call: Awaitable[AsyncSlackResponse]) -> AsyncSlackResponse:
    """The answer of a Slack call that succeeded, or `SlackCallFailed`. slack_sdk's own check of an answer assumes a
    JSON object: a 200 in plain text, or a JSON list, breaks it with an AttributeError, here an answer not Slack's."""
    try:
        return await call
    except SlackApiError as error:
        raise SlackCallFailed(SlackAnswer.of(error)) from error
    except AttributeError as error:
        raise SlackCallFailed(SlackAnswer.not_slacks(200, "an answer that is not Slack's JSON")) from error


def _seconds(header: str | None) -> float | None:
    try:
        return float(header) if header else None
    except ValueError:
        return None


class SlackHandler(ChannelHandler[SendSlackMessageOp, SendSlackMessageResponse]):
    channel = Channel.SLACK
    concern = "send-slack-message"
    operation_stream = StreamName.SLACK_OPERATION
    event_stream = StreamName.SLACK_EVENT
    requested_event = SendSlackMessageRequestedEvent
    succeeded_event = SucceededInSendingSlackMessageEvent
    failed_event = FailedToSendSlackMessageEvent
    operation_type = SendSlackMessageOp
    response_type = SendSlackMessageResponse

    def __init__(self, store: StreamStore, settings: Settings, files: FileBudget | None = None) -> None:
        super().__init__(store, settings, files)
        self._session: aiohttp.ClientSession | None = None
        self._clients: dict[str, AsyncWebClient] = {}
        """One client per token, all over one HTTP session (its connections kept open between calls)."""

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on the first call, in the worker's event loop
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SLACK_TIMEOUT_SECONDS))
        return self._session

    def _client(self, token: str) -> AsyncWebClient:
        session = self._http()
        client = self._clients.get(token)
        if client is None:
            client = self._clients[token] = AsyncWebClient(
                token=token, base_url=self._settings.slack_api_url, session=session, retry_handlers=[]
            )
        return client

    async def close(self) -> None:
        """Close the HTTP session's connections (when the worker stops)."""
        if self._session is not None:
            await self._session.close()

    @activity.defn(name=SEND[Channel.SLACK].name)
    async def send(self, ref: ChannelOperationRef) -> ChannelOperationOutcomeInfo:
        return await self.handle(ref)

    @activity.defn(name=RECORD_NOT_SENT[Channel.SLACK].name)
    async def record_not_sent(self, failure: ChannelOperationFailure) -> ChannelOperationOutcomeInfo:
        return await self.give_up(failure)

    async def turn(self, ref: ChannelOperationRef) -> float:
        """How long the message waits for its Slack channel's next turn: `NOTIFY_SLACK_MESSAGES_PER_SECOND` per
        Slack channel for all workers together (Slack's pace is per channel); 0 when its turn is now, or unpaced."""
        rate = self._settings.slack_messages_per_second
        op = self.operation(ref)
        if rate is None:
            return 0.0
        return await self._handling.next_turn(f"slack:{op.workspace}/{op.channel}", 1 / rate)

    @activity.defn(name=WAIT_FOR_SLACK_TURN.name)
    async def wait_for_turn(self, ref: ChannelOperationRef) -> float:
        """`turn`, as a step of its own: a fallback's or the internal team's message (a saga's others are taken
        while preparing)."""
        return await self.turn(ref)

    @staticmethod
    def compose(
        op: PrepareToSendOnChannelOp, channel_operation_id: int, settings: Settings
    ) -> tuple[SendSlackMessageOp, list[Tag]]:
        request, audience = op.operation, op.audience
        assert audience.slack is not None
        text = request.slack_text or f"*{request.subject}*\n{request.body}"
        if len(text) > SLACK_MAX_TEXT:
            raise CannotPrepare(f"a Slack message is at most {SLACK_MAX_TEXT:,} characters; this one has {len(text):,}")
        message = admitted(  # today's rules, whatever those of the request's or the entry's day were
            SendSlackMessageOp,
            {
                "notification_id": op.notification_id,
                "channel_operation_id": channel_operation_id,
                "workspace": audience.slack.workspace,
                "channel": audience.slack.channel,
                "text": text,
                "attachments": request.attachments_on(Channel.SLACK),
                "entity_id": audience.id,
                "opt_out": opt_out_of(request, settings),
            },
        )
        return message, [
            tag(TagName.SLACK_WORKSPACE, audience.slack.workspace),
            tag(TagName.SLACK_CHANNEL, audience.slack.channel),
        ]

    def _as_sent(self, op: SendSlackMessageOp) -> SendSlackMessageOp:
        """The message with a footer linking to unsubscribe from its category on Slack, with
        `NOTIFY_SLACK_UNSUBSCRIBE_FOOTER` where the links can be signed (every attempt the same: a retry finds it)."""
        settings = self._settings
        if not settings.slack_unsubscribe_footer or op.opt_out is None or op.entity_id is None:
            return op
        if settings.public_url is None or settings.link_secret is None:
            return op
        secret = settings.link_secret.get_secret_value()
        token = unsubscribe_token(secret, op.entity_id, op.opt_out, Channel.SLACK)
        footer = f"<{unsubscribe_url(settings.public_url, token)}|Unsubscribe from {op.opt_out} on Slack>"
        return op.model_copy(update={"text": f"{op.text}\n\n{footer}"})

    def failed_response(self, operation: SendSlackMessageOp, reason: str) -> SendSlackMessageResponse:
        return SendSlackMessageResponse(result=SendSlackMessageResult.FAILED_WITH_EXCEPTION_WHEN_SENDING, error=reason)

    async def deliver(self, op: SendSlackMessageOp) -> Delivery:
        op = self._as_sent(op)
        token = self._settings.slack_token_for(op.workspace)
        if token is None:
            reason = f"no Slack token is configured for workspace {op.workspace!r}"
            return Delivery(self.failed_response(op, reason), reason)
        client = self._client(token.get_secret_value())
        try:
            if activity.info().attempt > 1:  # an earlier attempt may have posted, and died before it heard back
                posted = await _posted_before(client, op)
                if posted is not None:
                    return Delivery(
                        SendSlackMessageResponse(result=SendSlackMessageResult.SUCCEEDED, response_json=posted)
                    )
            said: dict[str, Any] | bytes
            if op.attachments:
                async with self.files(op) as contents:
                    if isinstance(contents, Delivery):
                        return contents
                    said = await self._upload(client, op, contents)
            else:
                posting = client.chat_postMessage(channel=op.channel, text=op.text, metadata=_metadata(op))
                said = (await _called(posting)).data
        except SlackCallFailed as error:
            answer = error.answer
            delivery = Delivery(
                SendSlackMessageResponse(
                    result=SendSlackMessageResult.FAILED_WITH_SLACK_RETURNING_ERROR,
                    response_json=answer.body,
                    error=answer.reason,
                ),
                answer.reason,
            )
            if answer.transient:
                raise TransientDeliveryError(delivery, answer.retry_after) from error
            return delivery
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            reason = f"{error.__class__.__name__}: {error}"
            raise TransientDeliveryError(Delivery(self.failed_response(op, reason), reason)) from error
        return Delivery(SendSlackMessageResponse(result=SendSlackMessageResult.SUCCEEDED, response_json=said))

    async def _upload(
        self, client: AsyncWebClient, op: SendSlackMessageOp, contents: Sequence[bytes]
    ) -> dict[str, Any]:
        """Upload the files and share them in the channel, in one message with the text as its comment; what is
        recorded is Slack's ids and titles for them."""
        ids = []
        for attachment, content in zip(op.attachments, contents, strict=True):
            given = await _called(client.files_getUploadURLExternal(filename=attachment.filename, length=len(content)))
            timeout = aiohttp.ClientTimeout(
                total=SLACK_TIMEOUT_SECONDS + len(content) / self._settings.transfer_bytes_per_second
            )
            async with self._http().post(str(given["upload_url"]), data=content, timeout=timeout) as upload:
                if upload.status != 200:
                    raise SlackCallFailed(SlackAnswer.not_slacks(upload.status, await upload.text()))
            ids.append(str(given["file_id"]))
        completed = await _called(
            client.files_completeUploadExternal(
                files=[{"id": i, "title": a.filename} for i, a in zip(ids, op.attachments, strict=True)],
                channel_id=op.channel,
                initial_comment=op.text,
            )
        )
        return {"ok": True, "channel": op.channel, "files": _ids(completed.get("files") or [])}


POSTED_BY = "notify_channel_operation"
"""The event type of the metadata every post carries: which channel operation posted it."""
LOOK_BACK_PAGES = 10


def _metadata(op: SendSlackMessageOp) -> dict[str, object]:
    return {
        "event_type": POSTED_BY,
        "event_payload": {"notification_id": op.notification_id, "channel_operation_id": op.channel_operation_id},
    }


async def _posted_before(client: AsyncWebClient, op: SendSlackMessageOp) -> dict[str, object] | None:
    """The message an earlier attempt of this operation posted, found in the channel's history; None if there is
    none, or if the token may not read the history (the `channels:history` scope): then a post whose answer was lost
    is posted again, and says so in the log. A message is found by its metadata; files, which Slack shares without
    metadata, by a message since the operation was first scheduled with its text and exactly its files (names and
    sizes, in order)."""
    if op.attachments:
        message = await _found_before(client, op, lambda m: _shares(m, op.text, op.attachments))
    else:
        message = await _found_before(client, op, lambda m: _posted_by(m) == _metadata(op)["event_payload"])
    if message is None:
        return None
    found = {"ok": True, "channel": op.channel, "ts": message.get("ts"), "found_in_history": True}
    return found | ({"files": _ids(message["files"])} if op.attachments else {})


def _ids(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What is recorded of files Slack shared: their ids and titles."""
    return [{"id": f.get("id"), "title": f.get("title")} for f in files]


def _posted_by(message: dict[str, Any]) -> object:
    metadata = message.get("metadata") or {}
    return metadata.get("event_payload") if metadata.get("event_type") == POSTED_BY else None


def _shares(message: dict[str, Any], text: str, attachments: list[Attachment]) -> bool:
    """Whether a message of the history shares these files with this comment (which Slack returns with &, < and >
    escaped)."""
    files = message.get("files") or []
    shared = [(f.get("name"), f.get("size")) for f in files if isinstance(f, dict)]
    named = [(a.filename, a.size) for a in attachments]
    return shared == named and html.unescape(str(message.get("text") or "")) == text


async def _found_before(
    client: AsyncWebClient, op: SendSlackMessageOp, matches: Callable[[dict[str, Any]], bool]
) -> dict[str, Any] | None:
    """The first message of the channel's history since the operation was first scheduled that `matches`, or None
    (also when the token may not read the history)."""
    since = activity.info().scheduled_time - LOOK_BACK_MARGIN
    cursor = None
    for _ in range(LOOK_BACK_PAGES):
        try:
            page = await _called(
                client.conversations_history(
                    channel=op.channel,
                    oldest=f"{since.timestamp():.6f}",
                    include_all_metadata=True,
                    limit=200,
                    cursor=cursor,
                )
            )
        except SlackCallFailed as error:
            if error.answer.error != "missing_scope":
                raise
            logger.warning(
                "notification %s: slack %s: cannot look for an earlier attempt's post (the token lacks the "
                "channels:history scope): posting, perhaps again",
                op.notification_id,
                op.channel_operation_id,
            )
            return None
        for message in page.get("messages") or []:
            if isinstance(message, dict) and matches(message):
                return message
        cursor = (page.get("response_metadata") or {}).get("next_cursor")
        if not cursor:
            return None
    return None
