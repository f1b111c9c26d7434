"""The saga's view of a notification, as pure functions of what the saga has learned: each channel's outcome, reason
and operation, the outcome's stages and failures, the final status, and what the internal team is told.

No I/O and nothing that varies between runs: the saga calls these from workflow code, and `tests/test_view.py`
drives them from tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain import (
    Channel,
    ChannelOperationOutcome,
    ChannelOperationOutcomeInfo,
    ChannelOperationRef,
    ChannelOutcome,
    ChannelPreference,
    ChannelView,
    DirectoryEntry,
    Failure,
    NotificationStatus,
    NotificationView,
    PrepareToSendNotificationEvent,
    PrepareToSendOnChannelResult,
    SendNotificationToEntityOp,
)


@dataclass(frozen=True)
class ChannelChange:
    """A channel's new outcome and reason, with its operation as put (the ref) or as it ended (the outcome info)."""

    outcome: ChannelOutcome
    reason: str | None = None
    operation: ChannelOperationRef | ChannelOperationOutcomeInfo | None = None

    @classmethod
    def ended(cls, outcome: ChannelOperationOutcomeInfo, cancelled: bool = False) -> ChannelChange:
        """How a channel operation ended; one that was not delivered because the notification was cancelled is
        `cancelled`."""
        if outcome.outcome == ChannelOperationOutcome.SUCCEEDED:
            return cls(ChannelOutcome.SUCCEEDED, outcome.reason, outcome)
        return cls(ChannelOutcome.CANCELLED if cancelled else ChannelOutcome.FAILED, outcome.reason, outcome)


def changed_channels(
    channels: dict[Channel, ChannelView],
    changes: dict[Channel, ChannelChange],
    audience: DirectoryEntry | None = None,
    fallback: bool = False,
) -> dict[Channel, ChannelView]:
    """The channels' views with these changes; a channel new to the view is shown at `audience`'s address on it."""
    changed = dict(channels)
    for channel, change in changes.items():
        current = changed.get(channel) or ChannelView(
            address=audience.address(channel) if audience else None, outcome=change.outcome
        )
        update: dict[str, Any] = {"outcome": change.outcome, "reason": change.reason}
        if isinstance(change.operation, ChannelOperationRef):
            update["channel_operation_id"] = change.operation.instruction.operation.channel_operation_id
        elif change.operation is not None:
            update.update(
                channel_operation_id=change.operation.channel_operation_id, attempts=change.operation.attempts
            )
        if fallback:
            update["fallback"] = True
        changed[channel] = current.model_copy(update=update)
    return changed


def with_outcome(view: NotificationView, failures: Sequence[Failure] = (), **stages: Any) -> NotificationView:
    """The view with these stages' outcomes, and these failures' reasons added to its failures."""
    outcome = view.outcome
    failed = [*outcome.failures, *(f.reason for f in failures)]
    return view.model_copy(update={"outcome": outcome.model_copy(update={**stages, "failures": failed})})


def with_prepare_stage(view: NotificationView, stage: PrepareToSendNotificationEvent) -> NotificationView:
    """The view once preparing has ended: the stages' outcomes and failures, and each of the audience's channels
    pending, opted out, or not prepared and why."""
    got = stage.get_audience
    view = with_outcome(view, got.failures, get_audience=got.outcome)
    configs, audience = stage.get_delivery_channel_configs, got.audience
    if configs is None or audience is None:
        return view
    usable = {c.channel for c in configs.configs}
    changes = {
        c.channel: ChannelChange(
            ChannelOutcome.PENDING if c.action == ChannelPreference.SEND else ChannelOutcome.OPTED_OUT, c.reason
        )
        for c in configs.configs
    }
    changes |= {
        c: ChannelChange(ChannelOutcome.NOT_PREPARED, reasons(configs.failures, c))
        for c in audience.channels
        if c not in usable
    }
    view = view.model_copy(update={"channels": changed_channels(view.channels, changes, audience)})
    view = with_outcome(view, configs.failures, get_delivery_channel_configs=configs.outcome)
    if not configs.usable:
        stopped = "not sent: the policy sends on no channel when one cannot be used"
        changes = {
            c: ChannelChange(ChannelOutcome.NOT_PREPARED, stopped)
            for c, v in view.channels.items()
            if v.outcome == ChannelOutcome.PENDING
        }
        return view.model_copy(update={"channels": changed_channels(view.channels, changes)})
    prepare = stage.prepare
    assert prepare is not None
    changes = {
        r.channel: ChannelChange(
            not_prepared(r),
            reasons(r.failures) or "not sent: the policy sends on no channel when one cannot be prepared",
        )
        for r in prepare.channel_results
        if r.channel not in prepare.channels_to_send_on
    }
    view = view.model_copy(update={"channels": changed_channels(view.channels, changes)})
    return with_outcome(view, [f for r in prepare.channel_results for f in r.failures], prepare=prepare.outcome)


def not_prepared(result: PrepareToSendOnChannelResult) -> ChannelOutcome:
    """How a channel that was not prepared shows: `suppressed` when its address is, else `not_prepared`."""
    return ChannelOutcome.SUPPRESSED if result.suppressed else ChannelOutcome.NOT_PREPARED


def first_status(operation: SendNotificationToEntityOp, now: datetime) -> NotificationStatus:
    """A notification's status as its saga starts: `scheduled` while its time is still to come, else `pending`."""
    scheduled = operation.send_at is not None and operation.send_at > now
    return NotificationStatus.SCHEDULED if scheduled else NotificationStatus.PENDING


def final_status(channels: dict[Channel, ChannelView], cancelled: bool) -> NotificationStatus:
    """How the notification ended, from its channels: a channel opted out of counts for nothing, a fallback that
    delivered covers every preferred channel that failed, and a cancelled notification is `cancelled` (its channels
    say what was delivered before the cancel took effect)."""
    counted = [c for c in channels.values() if c.outcome != ChannelOutcome.OPTED_OUT]
    if cancelled and not (counted and all(c.outcome == ChannelOutcome.SUCCEEDED for c in counted)):
        return NotificationStatus.CANCELLED  # unless the cancel came too late for anything: then it was sent
    if channels and not counted:
        return NotificationStatus.OPTED_OUT
    if any(c.fallback and c.outcome == ChannelOutcome.SUCCEEDED for c in counted):
        return NotificationStatus.SENT
    outcomes = [c.outcome for c in counted]
    if outcomes and all(o == ChannelOutcome.SUCCEEDED for o in outcomes):
        return NotificationStatus.SENT
    if ChannelOutcome.SUCCEEDED in outcomes:
        return NotificationStatus.PARTIALLY_SENT
    return NotificationStatus.FAILED


def reasons(failures: Sequence[Failure], channel: Channel | None = None) -> str | None:
    """The failures' reasons in one line (those about `channel`, if given), or None."""
    return "; ".join(f.reason for f in failures if channel is None or f.channel == channel) or None


def escalation(view: NotificationView) -> tuple[str, str]:
    """The subject and body that tell the internal team how the notification ended."""
    subject = f"Notification {view.id} {view.status.replace('_', ' ')}: {view.subject}"[:998]
    lines = [
        f"Notification {view.id} to entity {view.entity_id} ({view.subject!r}) ended {view.status}.",
        "",
        *(
            f"{channel:<6} {c.address or '-'}: {c.outcome}{f' ({c.reason})' if c.reason else ''}"
            for channel, c in view.channels.items()
        ),
    ]
    if view.outcome.failures:
        lines += ["", "Failures:", *(f"- {f}" for f in view.outcome.failures)]
    lines += ["", f"Every record of it: the starter's `events {view.id}`, or its page (/notifications/{view.id})."]
    return subject, "\n".join(lines)
