"""Failures: retries and their classification, deadlines, policies, escalation to the internal team, fallback,
scheduling and cancellation; on the time-skipping test server, with the mail and Slack sinks made to misbehave."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr
from temporalio.testing import WorkflowEnvironment

from activities.failures import failed_for_good
from client import NotCancellable
from domain import MAX_REQUEST_BYTES, NotificationRequest, NotificationStatus
from settings import CannotPrepareAction, ConfigsFailureAction, Settings
from sinks.mail import MailSink, free_port
from sinks.slack import ScriptedResponse, SlackSink
from streams import StreamName, StreamStore
from tests.conftest import SLACK_TOKEN
from tests.service import Notify, entity, eventually, notifying, operation
from workflows.notification import NotificationSaga

TEAM = "oncall@ops.test"


@pytest.fixture
def team_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"internal_team_email": TEAM})


@pytest.fixture
async def notify(
    time_skipping_env: WorkflowEnvironment, store: StreamStore, team_settings: Settings
) -> AsyncIterator[Notify]:
    async with notifying(time_skipping_env, store, team_settings) as notify:
        yield notify


def team_mails(mail_sink: MailSink) -> list[str]:
    return [m.message["Subject"] for m in mail_sink.received_by(TEAM)]


async def test_a_permanent_smtp_failure_is_recorded_at_once_and_the_team_told(
    notify: Notify, mail_sink: MailSink, slack_sink: SlackSink
) -> None:
    mail_sink.rejected_recipients["ada@example.com"] = "550 5.1.1 <ada@example.com>: mailbox unavailable"
    nid, view = await notify.send()
    assert view["status"] == "partially_sent"
    assert mail_sink.refused == ["ada@example.com"]  # one attempt
    failed = await notify.store.reader(StreamName.EMAIL_EVENT).latest(1, type="FailedToSendEmailEvent")
    assert failed is not None
    log = failed.json()["response"]["communication_log"]
    assert "C: RCPT TO:<ada@example.com>" in log
    assert "S: 550 5.1.1 <ada@example.com>: mailbox unavailable" in log

    assert team_mails(mail_sink) == [f"Notification {nid} partially sent: Disk almost full"]
    [told] = mail_sink.received_by(TEAM)
    plain = told.message.get_body(("plain",))
    assert plain is not None
    body = plain.get_content()
    assert "550 5.1.1" in body and f"Every record of it: the starter's `events {nid}`, or its page" in body
    assert view["escalation"]["status"] == "sent"
    assert view["escalation"]["channels"]["email"]["address"] == TEAM
    events = await notify.types(StreamName.NOTIFICATION_EVENT, nid)
    assert events[-3:] == [
        "SentOnSomePreparedChannelsEvent",
        "PartiallySentNotificationEvent",
        "FailedNotificationSentToInternalTeamEvent",
    ]
    assert await notify.types(StreamName.INTERNAL_OPERATION, nid) == ["ExecuteOpRequestedEvent"]
    team_op = await notify.store.reader(StreamName.EMAIL_OPERATION).latest(2)
    assert team_op is not None and team_op.tag("recipient-email-address") == TEAM
    [escalation] = await notify.client.audit_email(TEAM)
    assert (escalation.notification_id, escalation.outcome) == (nid, "sent")
    internal = await notify.store.reader(StreamName.INTERNAL_OPERATION).latest(nid)
    assert internal is not None
    handling = notify.store.handling(StreamName.INTERNAL_OPERATION)
    assert [e.status for e in await handling.history(internal.internal_id)] == ["Running", "Completed"]


async def test_partial_success_tells_the_team_and_sends_nothing_again(
    notify: Notify, mail_sink: MailSink, slack_sink: SlackSink
) -> None:
    slack_sink.unknown_channels.add("C0123")
    nid, view = await notify.send()
    assert view["status"] == "partially_sent"
    assert view["channels"]["email"]["outcome"] == "succeeded"
    assert view["channels"]["slack"]["reason"] == "Slack answered channel_not_found"
    assert len(slack_sink.calls) == 1
    assert len(mail_sink.received_by("ada@example.com")) == 1
    assert team_mails(mail_sink) == [f"Notification {nid} partially sent: Disk almost full"]


async def test_the_team_gets_exactly_one_mail_per_failed_notification(
    notify: Notify, mail_sink: MailSink, slack_sink: SlackSink
) -> None:
    first, _ = await notify.send(operation("nobody"))
    await notify.send()
    slack_sink.unknown_channels.add("C0123")
    mail_sink.rejected_recipients["ada@example.com"] = "550 no"
    third, view = await notify.send()
    assert view["status"] == "failed"
    assert sorted(team_mails(mail_sink)) == [
        f"Notification {first} failed: Disk almost full",
        f"Notification {third} failed: Disk almost full",
    ]


async def test_an_escalation_that_fails_is_recorded_and_not_escalated(
    notify: Notify, mail_sink: MailSink, slack_sink: SlackSink
) -> None:
    mail_sink.rejected_recipients["ada@example.com"] = "550 no such user"
    mail_sink.rejected_recipients[TEAM] = "550 no such team"
    slack_sink.unknown_channels.add("C0123")
    nid, view = await notify.send()
    assert view["status"] == "failed"
    assert view["escalation"]["status"] == "failed"
    assert view["escalation"]["channels"]["email"]["outcome"] == "failed"
    assert mail_sink.refused == ["ada@example.com", TEAM]  # the team once, and nothing about that
    assert (await notify.types(StreamName.NOTIFICATION_EVENT, nid))[-1] == (
        "CouldNotSendFailedNotificationToInternalTeamEvent"
    )


async def test_smtp_unreachable_for_a_while_then_recovered(
    time_skipping_env: WorkflowEnvironment, store: StreamStore, team_settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    unreachable = team_settings.model_copy(update={"smtp_port": port})
    async with notifying(time_skipping_env, store, unreachable, entity(channels={"email": "send"})) as notify:
        nid = await notify.client.request(operation())
        handling = store.handling(StreamName.EMAIL_OPERATION)

        async def refused_once() -> bool:
            record = await store.reader(StreamName.EMAIL_OPERATION).latest(1)
            return record is not None and "Failed" in [e.status for e in await handling.history(record.internal_id)]

        await eventually(refused_once)
        with MailSink(port=port) as mail:
            await notify.client.result(nid)
            view = await notify.client.status(nid)
    assert view["status"] == "sent"
    assert len(mail.messages) == 1
    record = await store.reader(StreamName.EMAIL_OPERATION).latest(1)
    assert record is not None
    history = await handling.history(record.internal_id)
    assert history[1].status == "Failed" and "[Errno 111] Connect call failed" in history[1].details
    assert [e.status for e in history][-2:] == ["Running", "Completed"]
    assert await notify.types(StreamName.EMAIL_EVENT, 1) == ["SendEmailRequestedEvent", "SucceededInSendingEmailEvent"]


async def test_a_channel_that_never_answers_fails_at_its_deadline(
    time_skipping_env: WorkflowEnvironment,
    store: StreamStore,
    team_settings: Settings,
    mail_sink: MailSink,
    slack_sink: SlackSink,
) -> None:
    slack_sink.hanging = True
    quick = team_settings.model_copy(update={"slack_deadline_seconds": 3, "slack_retry_initial_seconds": 0.5})
    async with notifying(time_skipping_env, store, quick) as notify:
        nid, view = await asyncio.wait_for(notify.send(), timeout=60)
    assert view["status"] == "partially_sent"
    slack = view["channels"]["slack"]
    assert slack["outcome"] == "failed"
    assert slack["reason"].startswith("no outcome within the 3 s deadline")
    assert len(slack_sink.calls) >= 1 and slack_sink.messages == []
    assert await notify.types(StreamName.SLACK_EVENT, 1) == [
        "SendSlackMessageRequestedEvent",
        "FailedToSendSlackMessageEvent",
    ]
    record = await store.reader(StreamName.SLACK_OPERATION).latest(1)
    assert record is not None
    history = await store.handling(StreamName.SLACK_OPERATION).history(record.internal_id)
    assert history[-1].status == "ArchivedAfterFailure"
    assert team_mails(mail_sink) == [f"Notification {nid} partially sent: Disk almost full"]


async def test_fallback_delivers_on_the_fallback_channel_and_records_both(
    time_skipping_env: WorkflowEnvironment,
    store: StreamStore,
    team_settings: Settings,
    mail_sink: MailSink,
    slack_sink: SlackSink,
) -> None:
    mail_sink.rejected_recipients["ada@example.com"] = "550 mailbox unavailable"
    prefers_email = entity(channels={"email": "send"}, fallback="slack")
    async with notifying(time_skipping_env, store, team_settings, prefers_email) as notify:
        nid, view = await notify.send()
    assert view["status"] == "sent"
    assert view["channels"]["email"]["outcome"] == "failed" and not view["channels"]["email"]["fallback"]
    assert view["channels"]["slack"]["outcome"] == "succeeded" and view["channels"]["slack"]["fallback"]
    assert [m.channel for m in slack_sink.messages] == ["C0123"]
    assert await notify.types(StreamName.EMAIL_EVENT, 1) == ["SendEmailRequestedEvent", "FailedToSendEmailEvent"]
    assert await notify.types(StreamName.SLACK_EVENT, 1) == [
        "SendSlackMessageRequestedEvent",
        "SucceededInSendingSlackMessageEvent",
    ]
    snapshot = await store.reader(StreamName.NOTIFICATION_SNAPSHOT).latest(nid)
    assert snapshot is not None
    outcomes = [(o["channel"], o["outcome"]) for o in snapshot.json()["attempt"]["channel_outcomes"]]
    assert outcomes == [("email", "Failed"), ("slack", "Succeeded")]
    assert team_mails(mail_sink) == []  # it reached the entity


@pytest.mark.parametrize(
    ("action", "status", "outcome"),
    [
        (ConfigsFailureAction.IGNORE, "partially_sent", "GotDeliveryChannelConfigsWithReportedFailuresIgnored"),
        (ConfigsFailureAction.STOP, "failed", "DespiteGettingDeliveryChannelConfigsFailuresPreventUsingThem"),
    ],
)
async def test_a_channel_without_a_token_follows_the_configs_failure_policy(
    time_skipping_env: WorkflowEnvironment,
    store: StreamStore,
    team_settings: Settings,
    mail_sink: MailSink,
    slack_sink: SlackSink,
    action: ConfigsFailureAction,
    status: str,
    outcome: str,
) -> None:
    other_workspace = team_settings.model_copy(
        update={"slack_tokens": {"other": SecretStr("xoxb-other")}, "channel_configs_failure_action": action}
    )
    async with notifying(time_skipping_env, store, other_workspace) as notify:
        nid, view = await notify.send()
    assert view["status"] == status
    assert view["outcome"]["get_delivery_channel_configs"] == outcome
    assert view["channels"]["slack"]["outcome"] == "not_prepared"
    assert view["channels"]["slack"]["reason"] == "slack: no token is configured for workspace 'acme'"
    assert slack_sink.calls == []
    assert len(mail_sink.received_by("ada@example.com")) == (1 if action == ConfigsFailureAction.IGNORE else 0)
    assert view["channels"]["email"]["outcome"] == (
        "succeeded" if action == ConfigsFailureAction.IGNORE else "not_prepared"
    )
    assert len(team_mails(mail_sink)) == 1
    events = await notify.types(StreamName.NOTIFICATION_EVENT, nid)
    if action == ConfigsFailureAction.IGNORE:  # partly unusable, partly delivered: it reads as partly sent
        assert events[-3:] == [
            "SentOnAllPreparedChannelsEvent",
            "PartiallySentNotificationEvent",
            "FailedNotificationSentToInternalTeamEvent",
        ]
    else:
        assert events[-3:] == [
            "CouldNotGetOrUseDeliveryChannelConfigsEvent",
            "FailedToSendNotificationEvent",
            "FailedNotificationSentToInternalTeamEvent",
        ]


@pytest.mark.parametrize(
    ("action", "status", "prepare"),
    [
        (CannotPrepareAction.CONTINUE, "partially_sent", "PreparedToSendOnSomeChannels"),
        (CannotPrepareAction.STOP, "failed", "CouldNotPrepareToSendOnAnyChannelBecauseOneForcedAllToBeDiscarded"),
    ],
)
async def test_a_channel_that_cannot_be_prepared_follows_the_policy(
    time_skipping_env: WorkflowEnvironment,
    store: StreamStore,
    team_settings: Settings,
    mail_sink: MailSink,
    slack_sink: SlackSink,
    action: CannotPrepareAction,
    status: str,
    prepare: str,
) -> None:
    policy = team_settings.model_copy(update={"cannot_prepare_action": action})
    async with notifying(time_skipping_env, store, policy) as notify:
        nid, view = await notify.send(operation(slack_text="x" * 40_001))
    assert view["status"] == status
    assert view["outcome"]["prepare"] == prepare
    assert view["channels"]["slack"]["outcome"] == "not_prepared"
    assert "at most 40,000 characters" in view["channels"]["slack"]["reason"]
    assert slack_sink.calls == []
    assert len(mail_sink.received_by("ada@example.com")) == (1 if action == CannotPrepareAction.CONTINUE else 0)
    if action == CannotPrepareAction.STOP:
        assert await notify.types(StreamName.NOTIFICATION_SAGA, nid) == []


async def test_a_scheduled_notification_waits_for_its_time(
    notify: Notify, mail_sink: MailSink, time_skipping_env: WorkflowEnvironment
) -> None:
    at = await time_skipping_env.get_current_time() + timedelta(days=2)
    nid = await notify.client.request(operation(send_at=at))
    status = await notify.client.status(nid)
    assert status["status"] == "scheduled"
    assert mail_sink.messages == []
    await time_skipping_env.sleep(timedelta(days=2))  # a handle the client looked up does not skip time itself
    view = await notify.client.result(nid)
    assert view.status == "sent"
    assert view.completed_at is not None and view.completed_at >= at
    assert len(mail_sink.messages) == 1


async def test_a_scheduled_notification_can_be_cancelled(
    notify: Notify, mail_sink: MailSink, slack_sink: SlackSink
) -> None:
    at = await notify.env.get_current_time() + timedelta(hours=3)
    nid = await notify.client.request(operation(send_at=at))
    view = await notify.client.cancel(nid)
    assert view["status"] == "cancelled"
    assert datetime.fromisoformat(view["completed_at"]) < at  # the cancel ended the wait, not the timer
    assert await notify.types(StreamName.NOTIFICATION_EVENT, nid) == [
        "SendNotificationRequestedEvent",
        "NotificationCancelledEvent",
    ]
    assert await notify.types(StreamName.NOTIFICATION_SAGA, nid) == []
    with pytest.raises(NotCancellable, match="is cancelled: nothing changed"):
        await notify.client.cancel(nid)
    assert mail_sink.messages == [] and slack_sink.calls == []


async def test_a_delivered_notification_cannot_be_cancelled(notify: Notify, mail_sink: MailSink) -> None:
    nid, _ = await notify.send()
    with pytest.raises(NotCancellable, match=f"notification {nid} is sent: nothing changed"):
        await notify.client.cancel(nid)
    assert (await notify.client.status(nid))["status"] == "sent"
    assert (await notify.types(StreamName.NOTIFICATION_EVENT, nid))[-1] == "SucceededInSendingNotificationEvent"


async def test_the_team_is_told_on_slack_too_and_only_for_the_outcomes_configured(
    time_skipping_env: WorkflowEnvironment,
    store: StreamStore,
    team_settings: Settings,
    mail_sink: MailSink,
    slack_sink: SlackSink,
) -> None:
    on_failure_only = team_settings.model_copy(
        update={
            "internal_team_slack": {"workspace": "acme", "channel": "C0PS"},
            "escalate_on": [NotificationStatus.FAILED],
        }
    )
    slack_sink.unknown_channels.add("C0123")
    async with notifying(time_skipping_env, store, on_failure_only) as notify:
        _, partial = await notify.send()
        failed, view = await notify.send(operation("nobody"))
    assert partial["status"] == "partially_sent" and partial["escalation"] is None
    assert view["escalation"]["status"] == "sent"
    assert {c: v["outcome"] for c, v in view["escalation"]["channels"].items()} == {
        "email": "succeeded",
        "slack": "succeeded",
    }
    [posted] = [m for m in slack_sink.messages if m.channel == "C0PS"]
    assert f"Notification {failed} failed" in posted.text and posted.token == SLACK_TOKEN
    assert team_mails(mail_sink) == [f"Notification {failed} failed: Disk almost full"]


async def test_fallback_when_the_preferred_channel_cannot_be_prepared(
    time_skipping_env: WorkflowEnvironment,
    store: StreamStore,
    team_settings: Settings,
    mail_sink: MailSink,
    slack_sink: SlackSink,
) -> None:
    prefers_slack = entity(channels={"slack": "send"}, fallback="email")
    async with notifying(time_skipping_env, store, team_settings, prefers_slack) as notify:
        nid, view = await notify.send(operation(slack_text="x" * 40_001))
    assert view["status"] == "sent"
    assert view["channels"]["slack"]["outcome"] == "not_prepared"
    assert view["channels"]["email"] == {
        "address": "ada@example.com",
        "outcome": "succeeded",
        "channel_operation_id": 1,
        "reason": None,
        "fallback": True,
        "attempts": 1,
        "last_error": None,
        "next_attempt_at": None,
    }
    assert len(mail_sink.received_by("ada@example.com")) == 1 and slack_sink.calls == []


async def test_an_attempt_near_the_deadline_stops_before_it(
    time_skipping_env: WorkflowEnvironment,
    store: StreamStore,
    team_settings: Settings,
    mail_sink: MailSink,
    slack_sink: SlackSink,
) -> None:
    """A slow answer to a retry near the deadline: the attempt gives up in time, so nothing is recorded after the
    saga records the failure, and the fallback is not sent on top of a late success."""
    slack_sink.script_responses(
        ScriptedResponse(status=503, body={"ok": False, "error": "service_unavailable"}),
        ScriptedResponse(delay=3),
    )
    quick = team_settings.model_copy(update={"slack_deadline_seconds": 3, "slack_retry_initial_seconds": 0.5})
    prefers_slack = entity(channels={"slack": "send"}, fallback="email")
    async with notifying(time_skipping_env, store, quick, prefers_slack) as notify:
        nid, view = await notify.send()
    assert view["channels"]["slack"]["outcome"] == "failed"
    assert view["channels"]["slack"]["reason"].startswith("no outcome within the 3 s deadline")
    assert await notify.types(StreamName.SLACK_EVENT, 1) == [
        "SendSlackMessageRequestedEvent",
        "FailedToSendSlackMessageEvent",
    ]
    failed = await store.reader(StreamName.SLACK_EVENT).latest(1)
    assert failed is not None
    assert failed.json()["response"]["error"].startswith(
        "no outcome within the 3 s deadline (the last attempt: no answer"
    )
    record = await store.reader(StreamName.SLACK_OPERATION).latest(1)
    assert record is not None
    statuses = [e.status for e in await store.handling(StreamName.SLACK_OPERATION).history(record.internal_id)]
    assert statuses[-2:] == ["Failed", "ArchivedAfterFailure"] and "Completed" not in statuses
    assert view["status"] == "sent" and view["channels"]["email"]["fallback"]


async def test_status_shows_a_retrying_channel_and_the_log_one_line_per_outage(
    dev_env: WorkflowEnvironment,
    store: StreamStore,
    settings: Settings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No mail server listens: `status` shows the email's attempts, last error and next attempt, the worker logs one
    line when the outage begins and one when it ends, and no traceback; once a mail server listens, the next attempt
    delivers."""
    port = free_port()
    down = settings.model_copy(
        update={"smtp_port": port, "email_retry_initial_seconds": 0.2, "email_retry_maximum_seconds": 0.4}
    )
    caplog.set_level(logging.INFO)  # as the worker logs
    async with notifying(dev_env, store, down, entity(channels={"email": "send"})) as notify:
        requested_at = datetime.now(UTC)
        nid = await notify.client.request(operation())
        seen: dict[str, Any] = {}

        async def retrying() -> bool:
            seen.update((await notify.client.status(nid))["channels"].get("email", {}))
            return (seen.get("attempts") or 0) >= 2 and seen["next_attempt_at"] is not None

        await eventually(retrying)
        assert seen["outcome"] == "sending"
        assert "Connect call failed" in seen["last_error"] or "refused" in seen["last_error"].lower()
        next_attempt = datetime.fromisoformat(seen["next_attempt_at"])
        assert requested_at < next_attempt <= datetime.now(UTC) + timedelta(seconds=1)
        with MailSink(port=port, folder=tmp_path / "mail") as mail:
            view = (await notify.client.result(nid)).model_dump(mode="json")
            assert len(mail.received_by("ada@example.com")) == 1
    assert view["status"] == "sent"
    assert view["channels"]["email"]["attempts"] >= 3
    said = [r.getMessage() for r in caplog.records if r.name == "notify.delivery" and r.levelno >= logging.INFO]
    attempts = view["channels"]["email"]["attempts"] - 1
    assert said == [  # the outage is one line, and the recovery another, however many attempts failed between
        f"email: sends fail, and are retried until it answers (notification {nid}: email 1 attempt 1 failed: "
        + said[0].split("attempt 1 failed: ")[1],
        f"email answers again, after {attempts} failed attempt(s)",
    ], said
    assert "Connect call failed" in said[0] and all("\n" not in line for line in said)
    assert [r for r in caplog.records if r.exc_info] == []


def largest(**shares: int) -> dict[str, str]:
    """Content at the size limit, in the characters that grow most as JSON (six bytes each), shared among fields."""
    room = (MAX_REQUEST_BYTES - len(operation().model_dump_json()) - 100) // 6 // sum(shares.values())
    return {field: "\x01" * (room * share) for field, share in shares.items()}


@pytest.mark.parametrize("shares", [{"body": 1}, {"body": 1, "html_body": 1, "slack_text": 1}])
async def test_the_largest_request_taken_is_delivered(
    dev_env: WorkflowEnvironment,
    store: StreamStore,
    settings: Settings,
    mail_sink: MailSink,
    slack_sink: SlackSink,
    shares: dict[str, int],
) -> None:
    """On the dev server, which enforces Temporal's payload limits: a request at the limit ends with its outcome."""
    op = operation(**{"slack_text": "Disk almost full", **largest(**shares)})  # Slack takes 40,000 characters
    assert MAX_REQUEST_BYTES - 1000 < len(op.model_dump_json()) <= MAX_REQUEST_BYTES
    async with notifying(dev_env, store, settings) as notify:
        nid, view = await notify.send(op)
    assert view["status"] == "sent", (view["channels"], view["outcome"])
    assert (await notify.types(StreamName.NOTIFICATION_EVENT, nid))[-1] == "SucceededInSendingNotificationEvent"
    assert len(mail_sink.messages) == 1 and len(slack_sink.messages) == 1


async def test_a_saga_whose_request_is_in_another_store_fails_saying_so_in_one_line(
    notify: Notify, team_settings: Settings, mail_sink: MailSink, caplog: pytest.LogCaptureFixture
) -> None:
    """A saga whose client operation is not in the worker's store (a client that wrote to another store), which both
    backends refuse to keep handling for, is not retried: the saga ends at once as failed, saying why in words, and
    the worker logs it in one line, without a traceback."""
    caplog.set_level(logging.INFO)
    request = NotificationRequest(
        notification_id="bad-data-1", operation=operation(), client_operation_record_id=987_654
    )
    view = await notify.env.client.execute_workflow(
        NotificationSaga.run, request, id=request.notification_id, task_queue=team_settings.task_queue
    )
    assert view.status == NotificationStatus.FAILED and view.completed_at is not None
    [reason] = view.outcome.failures
    assert reason.startswith("its request (record 987654 of the client-operation stream) is not in this worker's")
    assert reason.endswith(
        "by a client run in another folder or with another NOTIFY_DATA_DIR or NOTIFY_STREAMS_URL than the worker's"
    )
    logged = [r for r in caplog.records if r.name == "notify.steps"]
    assert [r.getMessage() for r in logged] == [f"notification bad-data-1: {reason}"]
    assert logged[0].exc_info is None
    assert mail_sink.messages == []


def test_a_step_that_fails_for_good_of_a_bug_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    reason = failed_for_good("PrepareNotification", "n-1", KeyError("missing"))
    assert reason == "PrepareNotification failed for good: KeyError: 'missing'"
    [logged] = [r for r in caplog.records if r.name == "notify.steps"]
    assert (
        logged.getMessage() == "notification n-1: PrepareNotification failed for good (a bug or bad data: not retried)"
    )
    assert logged.exc_info is not None


class NotAnEntry(BaseModel):
    value: int


async def test_a_directory_entry_that_cannot_be_read_is_a_reported_failure_of_the_audience_stage(
    notify: Notify, mail_sink: MailSink, caplog: pytest.LogCaptureFixture
) -> None:
    """Bad data while preparing (a directory record that is no entry) is not retried, and does not end the saga as a
    broken step would: it is the audience stage's reported failure, saying which record cannot be read (logged once,
    as every reader logs an unreadable record)."""
    caplog.set_level(logging.INFO)
    await notify.store.writer(StreamName.ENTITY_DIRECTORY).put("broken", NotAnEntry(value=1))
    nid, view = await notify.send(operation("broken"))
    assert view["status"] == "failed"
    assert view["outcome"]["get_audience"] == "CouldNotGetAudienceWithSomeFailuresReported"
    [reason] = view["outcome"]["failures"]
    said = "entity 'broken' has a directory entry that cannot be read: record "
    assert reason.startswith(said) and "of stream entity-directory" in reason and "is unreadable: not a" in reason
    assert "CouldNotGetOrUseAudienceEvent" in await notify.types(StreamName.NOTIFICATION_EVENT, nid)
    logged = [r.getMessage() for r in caplog.records if r.name in ("notify.steps", "notify.streams")]
    assert logged == [reason.removeprefix("entity 'broken' has a directory entry that cannot be read: ")]
    assert [m.recipients for m in mail_sink.messages] == [("oncall@ops.test",)]  # only the internal team is told
