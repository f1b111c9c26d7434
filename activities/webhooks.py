"""A webhook delivery's steps: one attempt at POSTing the event, signed with the endpoint's secret read from the
store (never from the workflow's input), each attempt recorded in the webhook-delivery stream; and the record of a
delivery given up on, which disables its endpoint."""

from __future__ import annotations

import logging
import time
from typing import NoReturn

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

import metrics
from activities.contract import DELIVER_WEBHOOK, RECORD_WEBHOOK_FAILED
from domain import in_one_line, utc_now
from domain.webhooks import DeliveryStatus, WebhookAttempt, WebhookDelivery
from settings import Settings, one_line
from streams import ExistingRecordStrategy, StreamName, StreamStore
from streams.webhooks import ATTEMPT, attempt_tags, disabled_record, endpoint
from webhooks import UnsafeUrl, checked_url, sign

log = logging.getLogger("notify.webhooks")

POST_TIMEOUT = 10.0
"""Seconds an endpoint has to answer."""
NOT_DELIVERABLE = "WebhookNotDeliverable"
"""The failure of an attempt no retry would help: the endpoint answered 410 Gone, or was removed or disabled."""


class WebhookActivities:
    def __init__(self, store: StreamStore, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._deliveries = store.writer(StreamName.WEBHOOK_DELIVERY)
        self._http = httpx.AsyncClient(timeout=POST_TIMEOUT, follow_redirects=False, trust_env=False)

    async def close(self) -> None:
        await self._http.aclose()

    @activity.defn(name=DELIVER_WEBHOOK.name)
    async def deliver(self, delivery: WebhookDelivery) -> None:
        attempt = activity.info().attempt
        found = await endpoint(self._store, delivery.endpoint_id)
        if found is None or found.disabled is not None:
            why = "the endpoint was removed" if found is None else "the endpoint is disabled"
            await self._record(delivery, attempt, DeliveryStatus.FAILED, error=why)
            raise _not_deliverable(why)
        body = delivery.event.model_dump_json()
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery.webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(found.added.secret, delivery.webhook_id, timestamp, body),
        }
        try:
            await checked_url(found.added.url, self._settings.webhook_allow_private)
            async with self._http.stream("POST", found.added.url, content=body.encode(), headers=headers) as response:
                pass  # its status is all that is read: not its body, which may be of any size
        except (UnsafeUrl, httpx.HTTPError, httpx.InvalidURL, OSError) as error:
            await self._retrying(delivery, attempt, None, one_line(error) or type(error).__name__)
        if response.is_success:
            await self._record(delivery, attempt, DeliveryStatus.DELIVERED, response.status_code)
            metrics.webhook_delivered(activity.metric_meter(), "delivered")
            return
        if response.status_code == 410:
            why = "the endpoint answered 410 Gone"
            await self._record(delivery, attempt, DeliveryStatus.FAILED, 410, why)
            await self._disable(delivery.endpoint_id, why)
            metrics.webhook_delivered(activity.metric_meter(), "failed")
            raise _not_deliverable(why)
        await self._retrying(delivery, attempt, response.status_code, f"HTTP {response.status_code}")

    @activity.defn(name=RECORD_WEBHOOK_FAILED.name)
    async def record_failed(self, delivery: WebhookDelivery) -> None:
        attempts = [
            r.object(WebhookAttempt)
            for r in await self._store.reader(StreamName.WEBHOOK_DELIVERY).by_id(delivery.webhook_id)
            if r.type == ATTEMPT
        ]
        last = attempts[-1] if attempts else None
        if last is not None and last.status == DeliveryStatus.FAILED:
            return  # its last attempt said so (410, or the endpoint was removed or disabled)
        hours = f"{delivery.retry_hours:g} hour{'' if delivery.retry_hours == 1 else 's'}"
        why = f"deliveries failed for {hours}" + (f" (last: {last.error})" if last and last.error else "")
        await self._record(
            delivery, last.attempt if last else 0, DeliveryStatus.FAILED, last.http_status if last else None, why
        )
        metrics.webhook_delivered(activity.metric_meter(), "failed")
        found = await endpoint(self._store, delivery.endpoint_id)
        if found is not None and found.disabled is None:
            await self._disable(delivery.endpoint_id, why)

    async def _retrying(self, delivery: WebhookDelivery, attempt: int, status: int | None, error: str) -> NoReturn:
        """Record a failed attempt, and raise for a retry."""
        await self._record(delivery, attempt, DeliveryStatus.RETRYING, status, error)
        metrics.webhook_delivered(activity.metric_meter(), "retried")
        raise ApplicationError(error, type="WebhookNotTaken", category=ApplicationErrorCategory.BENIGN)

    async def _record(
        self,
        delivery: WebhookDelivery,
        attempt: int,
        status: DeliveryStatus,
        http_status: int | None = None,
        error: str | None = None,
    ) -> None:
        record = WebhookAttempt(
            webhook_id=delivery.webhook_id,
            endpoint_id=delivery.endpoint_id,
            event_type=delivery.event.type,
            notification_id=delivery.event.data.notification_id,
            attempt=attempt,
            status=status,
            http_status=http_status,
            error=None if error is None else in_one_line(error),
            at=utc_now(),
        )
        await self._deliveries.put_all([(delivery.webhook_id, record, attempt_tags(record))])

    async def _disable(self, endpoint_id: str, reason: str) -> None:
        """Disable the endpoint, once: of attempts that find it failing at once, the first says so."""
        record_id, disabled, tags = disabled_record(endpoint_id, reason)
        once = ExistingRecordStrategy.DO_NOT_WRITE_IF_FOUND_BY_ID_AND_TYPE
        put = await self._deliveries.put(record_id, disabled, tags=tags, strategy=once)
        if put.internal_id is not None:
            metrics.webhook_disabled(activity.metric_meter())
            log.warning("webhook endpoint %s is disabled: %s", endpoint_id, reason)


def _not_deliverable(why: str) -> ApplicationError:
    """The failure of an attempt no retry would help (`NOT_DELIVERABLE`): benign, as its one log line is said."""
    return ApplicationError(why, type=NOT_DELIVERABLE, non_retryable=True, category=ApplicationErrorCategory.BENIGN)
