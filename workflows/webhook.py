"""A webhook's delivery: one small workflow per (endpoint, event), its workflow id the webhook id, so that starting it
twice starts it once. Its one activity POSTs the event, retried with exponential backoff for `retry_hours` (the
same webhook id on every attempt); given up on after that, the delivery is recorded as failed and its endpoint
disabled. Nothing in a notification's saga waits for it."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.contract import DELIVER_WEBHOOK, RECORD_WEBHOOK_FAILED
    from domain.webhooks import WebhookDelivery

ATTEMPT_TIMEOUT = timedelta(seconds=30)
"""One attempt: the POST's own timeout (10 s) and the store's reads and writes around it."""
RETRY_MAXIMUM = timedelta(hours=1)
"""The longest wait between two attempts."""
STEP_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
"""Recording the failure is retried until it succeeds."""


@workflow.defn(name="WebhookDelivery")
class WebhookDeliveryWorkflow:
    @workflow.run
    async def run(self, delivery: WebhookDelivery) -> bool:
        """Whether the endpoint took it."""
        initial = timedelta(seconds=delivery.retry_initial_seconds)
        try:
            await workflow.execute_activity(
                DELIVER_WEBHOOK.name,
                delivery,
                result_type=DELIVER_WEBHOOK.result,
                schedule_to_close_timeout=timedelta(hours=delivery.retry_hours),
                start_to_close_timeout=ATTEMPT_TIMEOUT,
                retry_policy=RetryPolicy(
                    initial_interval=initial,
                    backoff_coefficient=2,
                    maximum_interval=max(RETRY_MAXIMUM, initial),
                ),
            )
            return True
        except ActivityError:
            await workflow.execute_activity(
                RECORD_WEBHOOK_FAILED.name,
                delivery,
                result_type=RECORD_WEBHOOK_FAILED.result,
                start_to_close_timeout=ATTEMPT_TIMEOUT,
                retry_policy=STEP_RETRY,
            )
            return False
