"""The Slack channel's handler: posts a `SendSlackMessageOp` with slack-sdk's `chat.postMessage`."""

from __future__ import annotations

import asyncio

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from temporalio import activity

from activities.channel import CannotPrepare, ChannelHandler, Delivery, TransientDeliveryError
from activities.contract import RECORD_NOT_SENT, SEND
from domain import (
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
    tag,
)
from settings import Settings
from streams import StreamName

SLACK_TIMEOUT_SECONDS = 30
SLACK_MAX_TEXT = 40_000
"""Slack truncates longer messages (chat.postMessage, 'Truncating content')."""
TRANSIENT_SLACK_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)


def _seconds(header: str | None) -> float | None:
    try:
        return float(header) if header else None
    except ValueError:
        return None


class SlackHandler(ChannelHandler):
    channel = Channel.SLACK
    concern = "send-slack-message"
    operation_stream = StreamName.SLACK_OPERATION
    event_stream = StreamName.SLACK_EVENT
    requested_event = SendSlackMessageRequestedEvent
    succeeded_event = SucceededInSendingSlackMessageEvent
    failed_event = FailedToSendSlackMessageEvent
    response = SendSlackMessageResponse

    @activity.defn(name=SEND[Channel.SLACK].name)
    async def send(self, ref: ChannelOperationRef) -> ChannelOperationOutcomeInfo:
        return await self.handle(ref)

    @activity.defn(name=RECORD_NOT_SENT[Channel.SLACK].name)
    async def record_not_sent(self, failure: ChannelOperationFailure) -> ChannelOperationOutcomeInfo:
        return await self.give_up(failure)

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
            },
        )
        return message, [
            tag(TagName.SLACK_WORKSPACE, audience.slack.workspace),
            tag(TagName.SLACK_CHANNEL, audience.slack.channel),
        ]

    def failed_response(self, operation: SendSlackMessageOp, reason: str) -> SendSlackMessageResponse:  # type: ignore[override]
        return SendSlackMessageResponse(result=SendSlackMessageResult.FAILED_WITH_EXCEPTION_WHEN_SENDING, error=reason)

    async def deliver(self, op: SendSlackMessageOp) -> Delivery:  # type: ignore[override]
        token = self._settings.slack_token_for(op.workspace)
        if token is None:
            reason = f"no Slack token is configured for workspace {op.workspace!r}"
            return Delivery(self.failed_response(op, reason), reason)
        client = AsyncWebClient(
            token=token.get_secret_value(),
            base_url=self._settings.slack_api_url,
            timeout=SLACK_TIMEOUT_SECONDS,
            retry_handlers=[],
        )
        try:
            response = await client.chat_postMessage(channel=op.channel, text=op.text)
        except SlackApiError as error:
            body = getattr(error.response, "data", None)
            data = body if isinstance(body, dict) else {"body": str(body)}
            status: int = getattr(error.response, "status_code", None) or getattr(error.response, "status", None) or 0
            code = data.get("error") or f"HTTP {status}"
            reason = f"Slack answered {code}"
            delivery = Delivery(
                SendSlackMessageResponse(
                    result=SendSlackMessageResult.FAILED_WITH_SLACK_RETURNING_ERROR, response_json=data, error=reason
                ),
                reason,
            )
            if code in TRANSIENT_SLACK_ERRORS or status == 429 or status >= 500:
                headers = {k.lower(): v for k, v in (getattr(error.response, "headers", None) or {}).items()}
                raise TransientDeliveryError(delivery, _seconds(headers.get("retry-after"))) from error
            return delivery
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            reason = f"{error.__class__.__name__}: {error}"
            raise TransientDeliveryError(Delivery(self.failed_response(op, reason), reason)) from error
        return Delivery(SendSlackMessageResponse(result=SendSlackMessageResult.SUCCEEDED, response_json=response.data))
