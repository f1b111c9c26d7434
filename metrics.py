"""The service's own metrics, beside the Temporal SDK's, on the Prometheus endpoint a worker serves
(`NOTIFY_METRICS_PORT`): what ended how, what each channel's sends did, how long a notification took, and how often
the internal team was told. Recorded through Temporal's metric meters, so that a saga's are not counted again when
its history is replayed."""

from __future__ import annotations

from temporalio.common import MetricMeter

NOTIFICATIONS = "notify_notifications"
"""Notifications ended, by `status` (a counter: `notify_notifications_total`)."""
CHANNEL_SENDS = "notify_channel_sends"
"""Deliveries on a channel, by `channel` and `result`: `succeeded`, `failed` (for good) or `retried` (this attempt
failed; another follows)."""
NOTIFICATION_SECONDS = "notify_notification_seconds"
"""From the request to the outcome, a histogram."""
ESCALATIONS = "notify_escalations"
"""Notifications the internal team was told about."""
WEBHOOK_DELIVERIES = "notify_webhook_deliveries"
"""Webhook delivery attempts, by `result`: `delivered`, `retried` (this attempt failed; another follows) or `failed`
(given up on: 410 Gone, or failed for `NOTIFY_WEBHOOK_RETRY_HOURS`)."""
WEBHOOKS_DISABLED = "notify_webhooks_disabled"
"""Webhook endpoints disabled: their deliveries failed for good."""

NOTIFICATION_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0)


def notification_ended(meter: MetricMeter, status: str, seconds: float | None) -> None:
    meter.create_counter(NOTIFICATIONS, "Notifications ended, by status").add(1, {"status": status})
    if seconds is not None:
        meter.create_histogram_float(NOTIFICATION_SECONDS, "From the request to the outcome", "s").record(seconds)


def escalated(meter: MetricMeter) -> None:
    meter.create_counter(ESCALATIONS, "Notifications the internal team was told about").add(1)


def channel_sent(meter: MetricMeter, channel: str, result: str) -> None:
    meter.create_counter(CHANNEL_SENDS, "Deliveries on a channel, by result").add(
        1, {"channel": channel, "result": result}
    )


def webhook_delivered(meter: MetricMeter, result: str) -> None:
    meter.create_counter(WEBHOOK_DELIVERIES, "Webhook delivery attempts, by result").add(1, {"result": result})


def webhook_disabled(meter: MetricMeter) -> None:
    meter.create_counter(WEBHOOKS_DISABLED, "Webhook endpoints disabled").add(1)
