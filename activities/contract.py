"""The activities' contract: each activity's name and the types of its input and result, and the handling concerns
the activities and the client share.

Workflow and client code import this module, never the implementations: the workflow sandbox and the CLI then load
no SMTP, Slack or database code. The worker registers the implementations, whose names and types a test holds to
what is here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from domain import (
    BroadcastCounts,
    BroadcastPage,
    BroadcastRequest,
    BroadcastSnapshot,
    BroadcastStopped,
    Channel,
    ChannelOperationFailure,
    ChannelOperationInstruction,
    ChannelOperationOutcomeInfo,
    ChannelOperationRef,
    EscalationRequested,
    NotificationRequest,
    NotificationSnapshot,
    PreparedEscalation,
    PreparedNotification,
    PrepareNotificationOp,
    PrepareToSendOnChannelOp,
    PrepareToSendOnChannelResult,
    SagaEnded,
    SagaPolicies,
)
from domain.webhooks import WebhookDelivery

I = TypeVar("I")  # noqa: E741 - the input, beside O for the result
O = TypeVar("O")  # noqa: E741


@dataclass(frozen=True)
class Activity(Generic[I, O]):
    """An activity as its callers know it: its name, and its result's type for the data converter (the input's type
    is the first type parameter)."""

    name: str
    result: Any


RECORD_REQUESTED: Activity[NotificationRequest, SagaPolicies] = Activity("RecordNotificationRequested", SagaPolicies)
PREPARE_TO_SEND_ON_CHANNEL: Activity[PrepareToSendOnChannelOp, PrepareToSendOnChannelResult] = Activity(
    "PrepareToSendOnChannel", PrepareToSendOnChannelResult
)
PUT_CHANNEL_OPERATIONS: Activity[list[ChannelOperationInstruction], list[ChannelOperationRef]] = Activity(
    "PutChannelOperations", list[ChannelOperationRef]
)
RECORD_OUTCOME: Activity[NotificationSnapshot, None] = Activity("RecordOutcome", None)
RECORD_ESCALATION_REQUESTED: Activity[EscalationRequested, PreparedEscalation] = Activity(
    "RecordEscalationRequested", PreparedEscalation
)
RECORD_SAGA_ENDED: Activity[SagaEnded, None] = Activity("RecordSagaEnded", None)
PREPARE_NOTIFICATION: Activity[PrepareNotificationOp, PreparedNotification] = Activity(
    "PrepareNotification", PreparedNotification
)
"""Every step up to sending, in one: record the request (unless a scheduled saga has), get the audience, prepare
each channel, record the prepare stage, put the saga and its operations, take each operation's turn."""
RECORD_ENDED: Activity[SagaEnded, None] = Activity("RecordNotificationEnded", None)
"""`RECORD_OUTCOME` and `RECORD_SAGA_ENDED` in one step, for a saga that tells nobody."""

SEND: dict[Channel, Activity[ChannelOperationRef, ChannelOperationOutcomeInfo]] = {
    Channel.EMAIL: Activity("SendEmail", ChannelOperationOutcomeInfo),
    Channel.SLACK: Activity("SendSlackMessage", ChannelOperationOutcomeInfo),
}
"""Each channel's send activity, on the channel's own task queue."""
RECORD_NOT_SENT: dict[Channel, Activity[ChannelOperationFailure, ChannelOperationOutcomeInfo]] = {
    Channel.EMAIL: Activity("RecordEmailNotSent", ChannelOperationOutcomeInfo),
    Channel.SLACK: Activity("RecordSlackMessageNotSent", ChannelOperationOutcomeInfo),
}
"""Each channel's record of an operation the saga gave up on."""
WAIT_FOR_SLACK_TURN: Activity[ChannelOperationRef, float] = Activity("WaitForSlackTurn", float)
"""The seconds a Slack message waits for its Slack channel's next turn, across every worker (0: its turn is now):
a fallback's or the internal team's message (a saga's others take theirs while preparing)."""


SNAPSHOT_AUDIENCE: Activity[BroadcastRequest, BroadcastSnapshot] = Activity(
    "SnapshotBroadcastAudience", BroadcastSnapshot
)
"""A broadcast's recipients, kept a page at a time in its snapshot (once: a retry finds them kept)."""
REQUEST_RECIPIENTS: Activity[BroadcastPage, int] = Activity("RequestBroadcastRecipients", int)
"""Each recipient of a page of the snapshot requested (once: a retry requests what is not yet), and its saga
started; how many were requested."""
COUNT_RECIPIENTS: Activity[BroadcastRequest, BroadcastCounts] = Activity("CountBroadcastNotifications", BroadcastCounts)
CANCEL_RECIPIENTS: Activity[BroadcastRequest, BroadcastStopped] = Activity(
    "CancelBroadcastNotifications", BroadcastStopped
)
"""Cancel each of the broadcast's notifications that has not ended; what that stopped, and the recipients not
requested yet."""
RECORD_BROADCAST_ENDED: Activity[BroadcastRequest, None] = Activity("RecordBroadcastEnded", None)


DELIVER_WEBHOOK: Activity[WebhookDelivery, None] = Activity("DeliverWebhook", None)
"""One attempt at POSTing a webhook to its endpoint, signed with the endpoint's secret (read from the store):
recorded, and retried (raised) unless the endpoint answered 2xx, or 410 (the endpoint is then disabled)."""
RECORD_WEBHOOK_FAILED: Activity[WebhookDelivery, None] = Activity("RecordWebhookFailed", None)
"""A delivery given up on after `retry_hours`: recorded as failed, and its endpoint disabled."""


BROADCASTS_QUEUE_SUFFIX = "-broadcasts"


def broadcast_task_queue(task_queue: str) -> str:
    """Broadcasts have a task queue of their own, beside `task_queue` (the other notifications'): their sagas and
    their recipients' sagas, with their steps. A worker of its own can serve it (`worker.py --serve broadcasts`), so
    that a large broadcast takes none of the slots, or the event loop, of the notifications requested beside it."""
    return f"{task_queue}{BROADCASTS_QUEUE_SUFFIX}"


WEBHOOKS_QUEUE_SUFFIX = "-webhooks"


def webhook_task_queue(task_queue: str) -> str:
    """Webhook deliveries have a task queue of their own, beside `task_queue`, with a bounded number of attempts
    under way: an endpoint that is slow to answer holds none of the sagas' slots."""
    return f"{task_queue}{WEBHOOKS_QUEUE_SUFFIX}"


def channel_task_queue(task_queue: str, channel: Channel) -> str:
    """Each channel's sends have a task queue of their own, so that each can have its own rate limit: one for the
    notifications of `task_queue` and those of its broadcasts (`broadcast_task_queue`), which go after the others
    there (their priority), so that the channel's rate limit holds for all of them."""
    return f"{task_queue.removesuffix(BROADCASTS_QUEUE_SUFFIX)}-{channel}"


STEP_FAILED_FOR_GOOD = "StepFailedForGood"
"""The failure type of an activity that failed in a way no retry would fix (`activities.failures`)."""

SEND_NOTIFICATION_CONCERN = "send-notification"
"""The client-operation stream's concern: taking up a request (its saga does)."""
SEND_BROADCAST_CONCERN = "send-broadcast"
"""The client-operation stream's concern for a broadcast's request: its saga takes it up."""
SAGA_CONCERN = "process-send-notification-saga"
ESCALATION_CONCERN = "send-failed-notification-to-internal-team"
WEBHOOK_CONCERN = "dispatch-webhooks"
"""The concern under which a record an event is made of is marked once its deliveries are started (`webhooks`)."""
