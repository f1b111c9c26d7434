"""The Slack channel's handler: posts a `SendSlackMessageOp` with slack-sdk's `chat.postMessage`."""

from __future__ import annotations

import asyncio

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from temporalio import activity

from activities.channel import ChannelHandler, Delivery, TransientDeliveryError
from domain import (
    ChannelOperationOutcomeInfo,
    ChannelOperationRef,
    FailedToSendSlackMessageEvent,
    SendSlackMessageOp,
    SendSlackMessageRequestedEvent,
    SendSlackMessageResponse,
    SendSlackMessageResult,
    SucceededInSendingSlackMessageEvent,
)
from settings import Settings
from streams import StreamName, StreamStore

SLACK_TIMEOUT_SECONDS = 30
TRANSIENT_SLACK_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)


class SlackHandler(ChannelHandler):
    concern = "send-slack-message"
    operation_stream = StreamName.SLACK_OPERATION
    event_stream = StreamName.SLACK_EVENT
    requested_event = SendSlackMessageRequestedEvent
    succeeded_event = SucceededInSendingSlackMessageEvent
    failed_event = FailedToSendSlackMessageEvent

    def __init__(self, store: StreamStore, settings: Settings) -> None:
        super().__init__(store)
        self._settings = settings

    @activity.defn(name="SendSlackMessage")
    async def send_slack_message(self, ref: ChannelOperationRef) -> ChannelOperationOutcomeInfo:
        return await self.handle(ref)

    async def deliver(self, op: SendSlackMessageOp) -> Delivery:  # type: ignore[override]
        token = self._settings.slack_token_for(op.workspace)
        if token is None:
            reason = f"no Slack token is configured for workspace {op.workspace!r}"
            return Delivery(
                SendSlackMessageResponse(
                    result=SendSlackMessageResult.FAILED_WITH_EXCEPTION_WHEN_SENDING, error=reason
                ),
                reason,
            )
        client = AsyncWebClient(
            token=token.get_secret_value(),
            base_url=self._settings.slack_api_url,
            timeout=SLACK_TIMEOUT_SECONDS,
            retry_handlers=[],
        )
        try:
            response = await client.chat_postMessage(channel=op.channel, text=op.text)
        except SlackApiError as error:
            data = error.response.data if isinstance(error.response.data, dict) else {"body": str(error.response.data)}
            code = data.get("error", f"http_{error.response.status_code}")
            delivery = Delivery(
                SendSlackMessageResponse(
                    result=SendSlackMessageResult.FAILED_WITH_SLACK_RETURNING_ERROR, response_json=data, error=code
                ),
                f"Slack answered {code}",
            )
            status = error.response.status_code
            if code in TRANSIENT_SLACK_ERRORS or status == 429 or status >= 500:
                retry_after = error.response.headers.get("Retry-After") or error.response.headers.get("retry-after")
                raise TransientDeliveryError(delivery, float(retry_after) if retry_after else None) from error
            return delivery
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            reason = f"{error.__class__.__name__}: {error}"
            raise TransientDeliveryError(
                Delivery(
                    SendSlackMessageResponse(
                        result=SendSlackMessageResult.FAILED_WITH_EXCEPTION_WHEN_SENDING, error=reason
                    ),
                    reason,
                )
            ) from error
        return Delivery(SendSlackMessageResponse(result=SendSlackMessageResult.SUCCEEDED, response_json=response.data))
