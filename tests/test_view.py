"""The saga's view as pure functions, from tables: the final status of every mix of channel outcomes, how channel
changes land in the view, and what the internal team is told."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from domain import (
    Channel,
    ChannelOperationOutcome,
    ChannelOperationOutcomeInfo,
    ChannelOutcome,
    ChannelView,
    Failure,
    GetAudienceOutcome,
    NotificationOutcome,
    NotificationStatus,
    NotificationView,
)
from tests.service import entity, operation
from workflows.view import (
    ChannelChange,
    changed_channels,
    escalation,
    final_status,
    first_status,
    reasons,
    with_outcome,
)

E, S = Channel.EMAIL, Channel.SLACK
O = ChannelOutcome  # noqa: E741


def channels(
    *outcomes: tuple[Channel, ChannelOutcome] | tuple[Channel, ChannelOutcome, bool],
) -> dict[Channel, ChannelView]:
    return {c: ChannelView(address=None, outcome=o, fallback=bool(rest and rest[0])) for c, o, *rest in outcomes}


@pytest.mark.parametrize(
    ("outcomes", "cancelled", "status"),
    [
        ((), True, NotificationStatus.CANCELLED),
        (((E, O.SUCCEEDED),), True, NotificationStatus.SENT),  # the cancel came too late for anything
        (((E, O.SUCCEEDED), (S, O.CANCELLED)), True, NotificationStatus.CANCELLED),
        (((E, O.PENDING), (S, O.PENDING)), True, NotificationStatus.CANCELLED),
        (((E, O.SUCCEEDED), (S, O.SUCCEEDED)), False, NotificationStatus.SENT),
        (((E, O.SUCCEEDED), (S, O.OPTED_OUT)), False, NotificationStatus.SENT),
        (((E, O.OPTED_OUT), (S, O.OPTED_OUT)), False, NotificationStatus.OPTED_OUT),
        (((E, O.SUCCEEDED), (S, O.FAILED)), False, NotificationStatus.PARTIALLY_SENT),
        (((E, O.SUCCEEDED), (S, O.NOT_PREPARED)), False, NotificationStatus.PARTIALLY_SENT),
        (((E, O.FAILED), (S, O.FAILED)), False, NotificationStatus.FAILED),
        (((E, O.NOT_PREPARED),), False, NotificationStatus.FAILED),
        (((E, O.FAILED), (S, O.SUCCEEDED, True)), False, NotificationStatus.SENT),  # the fallback covers it
        (((E, O.FAILED), (S, O.FAILED, True)), False, NotificationStatus.FAILED),
        ((), False, NotificationStatus.FAILED),  # no channel at all: an unknown entity, say
    ],
)
def test_final_status(outcomes: tuple[Any, ...], cancelled: bool, status: NotificationStatus) -> None:
    assert final_status(channels(*outcomes), cancelled) == status


NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("send_at", "status"),
    [
        (None, NotificationStatus.PENDING),
        (NOW, NotificationStatus.PENDING),  # its time has come
        (datetime(2026, 5, 1, 12, 0, 1, tzinfo=UTC), NotificationStatus.SCHEDULED),
    ],
)
def test_first_status(send_at: datetime | None, status: NotificationStatus) -> None:
    """The status a saga starts with, in its view and in its search attributes."""
    assert first_status(operation(send_at=send_at), NOW) == status


def ended(outcome: ChannelOperationOutcome, reason: str | None = None) -> ChannelOperationOutcomeInfo:
    return ChannelOperationOutcomeInfo(
        channel=E, channel_operation_id=7, event_type="E", outcome=outcome, reason=reason, attempts=3
    )


@pytest.mark.parametrize(
    ("change", "fallback", "expected"),
    [
        (ChannelChange(O.PENDING), False, ChannelView(address="ada@example.com", outcome=O.PENDING)),
        (
            ChannelChange(O.NOT_PREPARED, "no token"),
            True,
            ChannelView(address="ada@example.com", outcome=O.NOT_PREPARED, reason="no token", fallback=True),
        ),
        (
            ChannelChange.ended(ended(ChannelOperationOutcome.SUCCEEDED)),
            False,
            ChannelView(address="ada@example.com", outcome=O.SUCCEEDED, channel_operation_id=7, attempts=3),
        ),
        (
            ChannelChange.ended(ended(ChannelOperationOutcome.FAILED, "550 no such user")),
            False,
            ChannelView(
                address="ada@example.com",
                outcome=O.FAILED,
                reason="550 no such user",
                channel_operation_id=7,
                attempts=3,
            ),
        ),
    ],
)
def test_a_channel_change_lands_in_the_view(change: ChannelChange, fallback: bool, expected: ChannelView) -> None:
    assert changed_channels({}, {E: change}, entity(), fallback) == {E: expected}


def test_a_later_change_keeps_what_the_view_knew() -> None:
    sending = changed_channels({}, {S: ChannelChange(O.SENDING)}, entity())
    done = changed_channels(sending, {S: ChannelChange(O.SUCCEEDED)})  # no audience: the address is kept
    assert done[S].address == "acme/C0123" and done[S].outcome == O.SUCCEEDED


def view(**fields: object) -> NotificationView:
    base: dict[str, Any] = {
        "id": "42",
        "status": NotificationStatus.PARTIALLY_SENT,
        "entity_id": "user-1",
        "subject": "Disk almost full",
        "outcome": NotificationOutcome(),
        "requested_at": datetime(2026, 11, 29, tzinfo=UTC),
    }
    return NotificationView.model_validate(base | fields)


def test_outcome_stages_and_failures_add_up() -> None:
    first = with_outcome(
        view(), [Failure(reason="a")], get_audience=GetAudienceOutcome.GOT_AUDIENCE_WITH_NO_FAILURES_REPORTED
    )
    second = with_outcome(first, [Failure(reason="b", channel=S)])
    assert second.outcome.failures == ["a", "b"]
    assert second.outcome.get_audience == GetAudienceOutcome.GOT_AUDIENCE_WITH_NO_FAILURES_REPORTED


@pytest.mark.parametrize(
    ("channel", "said"), [(None, "email: 550; slack: no token; later"), (S, "slack: no token"), (E, "email: 550")]
)
def test_reasons_in_one_line(channel: Channel | None, said: str) -> None:
    failures = [Failure(reason="email: 550", channel=E), Failure(reason="slack: no token", channel=S)]
    failures.append(Failure(reason="later"))
    assert reasons(failures, channel) == said


def test_the_team_is_told_each_channel_and_failure() -> None:
    told = view(
        channels=channels((E, O.SUCCEEDED), (S, O.FAILED))
        | {S: ChannelView(address="acme/C1", outcome=O.FAILED, reason="x")},
        outcome=NotificationOutcome(failures=["slack: x"]),
    )
    subject, body = escalation(told)
    assert subject == "Notification 42 partially sent: Disk almost full"
    assert body.splitlines() == [
        "Notification 42 to entity user-1 ('Disk almost full') ended partially_sent.",
        "",
        "email  -: succeeded",
        "slack  acme/C1: failed (x)",
        "",
        "Failures:",
        "- slack: x",
        "",
        "Every record of it: the starter's `events 42`, or its page (/notifications/42).",
    ]
    assert len(escalation(view(subject="s" * 998))[0]) == 998
