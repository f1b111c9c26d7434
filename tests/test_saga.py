"""The saga end to end on Temporal's time-skipping test server, with the real activities, a real SQLite store, the
aiosmtpd mail sink and the local Slack sink."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

import pytest
from temporalio.client import WorkflowExecutionDescription
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.email import EmailHandler
from client import IdempotencyKeyConflict
from domain import (
    ChannelOperationFailure,
    ChannelOperationInstruction,
    ChannelOperationMonitoringInfo,
    ChannelOperationRef,
    ExecuteOpRequestedEvent,
    NotificationStatus,
    PrepareToSendOnChannelOp,
    ProcessSendNotificationSagaOp,
    SendEmailResponse,
    SendEmailResult,
    SucceededInSendingEmailEvent,
    utc_now,
)
from settings import Settings
from sinks.mail import MailSink
from sinks.slack import ScriptedResponse, SlackSink
from streams import StreamName, StreamStore
from streams.directory import import_entries
from tests.conftest import SLACK_TOKEN
from tests.service import Notify, entity, operation
from workflows.notification import NotificationSaga


async def test_sends_on_both_channels_and_records_every_step(
    notify: Notify, mail_sink: MailSink, slack_sink: SlackSink
) -> None:
    nid, view = await notify.send(operation(html_body="<p>Volume <b>/data</b> is at 91%.</p>"))

    assert view["status"] == "sent"
    assert view["outcome"]["attempt"] == "SentOnAllPreparedChannels"
    assert view["channels"]["email"] == {
        "address": "ada@example.com",
        "outcome": "succeeded",
        "channel_operation_id": 1,
        "reason": None,
        "fallback": False,
        "attempts": 1,
        "last_error": None,
        "next_attempt_at": None,
    }
    assert view["channels"]["slack"]["address"] == "acme/C0123"
    assert view["channels"]["slack"]["outcome"] == "succeeded"

    [mail] = mail_sink.messages
    assert mail.recipients == ("ada@example.com",)
    message = mail.message
    assert message["Subject"] == "Disk almost full"
    assert message["Message-ID"] == f"<notification-{nid}.email-1@notify.test>"
    plain, html = message.get_body(("plain",)), message.get_body(("html",))
    assert plain is not None and html is not None
    assert plain.get_content().strip() == "Volume /data is at 91%."
    assert "<b>/data</b>" in html.get_content()
    assert mail.path is not None and mail.path.read_bytes() == mail.data

    [posted] = slack_sink.messages
    assert (posted.token, posted.channel) == (SLACK_TOKEN, "C0123")
    assert "Disk almost full" in posted.text and "Volume /data is at 91%." in posted.text

    assert await notify.types(StreamName.CLIENT_OPERATION, nid) == ["ExecuteOpRequestedEvent"]
    assert await notify.types(StreamName.NOTIFICATION_EVENT, nid) == [
        "SendNotificationRequestedEvent",
        "PreparedToSendOnAllChannelsEvent",
        "SentOnAllPreparedChannelsEvent",
        "SucceededInSendingNotificationEvent",
    ]
    assert await notify.types(StreamName.NOTIFICATION_SAGA, nid) == ["ExecuteOpRequestedEvent"]
    assert await notify.types(StreamName.EMAIL_OPERATION, 1) == ["ExecuteOpRequestedEvent"]
    assert await notify.types(StreamName.EMAIL_EVENT, 1) == ["SendEmailRequestedEvent", "SucceededInSendingEmailEvent"]
    assert await notify.types(StreamName.SLACK_EVENT, 1) == [
        "SendSlackMessageRequestedEvent",
        "SucceededInSendingSlackMessageEvent",
    ]
    assert await notify.types(StreamName.NOTIFICATION_VIEW, nid) == ["NotificationView"]
    assert await notify.types(StreamName.NOTIFICATION_SNAPSHOT, nid) == ["NotificationSnapshot"]

    email_event = await notify.store.reader(StreamName.EMAIL_EVENT).latest(1)
    assert email_event is not None
    assert email_event.tag("recipient-email-address") == "ada@example.com"
    assert email_event.tag("notification-id") == nid
    assert email_event.json()["response"]["server_response"].startswith("Message accepted")

    saga = await notify.store.reader(StreamName.NOTIFICATION_SAGA).latest(nid)
    assert saga is not None
    saga_op = saga.object(ExecuteOpRequestedEvent).operation
    assert isinstance(saga_op, ProcessSendNotificationSagaOp)
    assert set(saga_op.channel_operations) == {"email", "slack"}

    handling = notify.store.handling(StreamName.EMAIL_OPERATION)
    email_op = await notify.store.reader(StreamName.EMAIL_OPERATION).latest(1)
    assert email_op is not None
    assert [e.status for e in await handling.history(email_op.internal_id, "send-email")] == ["Running", "Completed"]
    client_op = await notify.store.reader(StreamName.CLIENT_OPERATION).latest(nid)
    assert client_op is not None
    client_handling = notify.store.handling(StreamName.CLIENT_OPERATION)
    assert await client_handling.status(client_op.internal_id, "send-notification") == "Completed"


async def test_events_across_streams_and_audit(notify: Notify) -> None:
    nid, _ = await notify.send()
    records = await notify.client.events(nid)
    assert [(r.stream, r.type) for r in records][:6] == [
        ("client-operation", "ExecuteOpRequestedEvent"),
        ("notification-event", "SendNotificationRequestedEvent"),
        ("notification-event", "PreparedToSendOnAllChannelsEvent"),
        ("notification-saga", "ExecuteOpRequestedEvent"),
        ("email-operation", "ExecuteOpRequestedEvent"),
        ("slack-operation", "ExecuteOpRequestedEvent"),
    ]
    assert [(r.stream, r.type) for r in records][-4:] == [
        ("notification-event", "SentOnAllPreparedChannelsEvent"),
        ("notification-event", "SucceededInSendingNotificationEvent"),
        ("notification-view", "NotificationView"),
        ("notification-snapshot", "NotificationSnapshot"),
    ]
    assert {r.stream for r in records} == {s.value for s in StreamName} - {
        "internal-operation",
        "entity-directory",
        "api-key",
        "webhook",
        "webhook-delivery",
    }

    [sent] = await notify.client.audit_email("ada@example.com")
    assert (sent.notification_id, sent.subject, sent.outcome) == (nid, "Disk almost full", "sent")
    assert sent.completed_at is not None and sent.completed_at >= sent.requested_at
    assert await notify.client.audit_email("bob@example.com") == []
    [posted] = await notify.client.audit_slack("acme/C0123")
    assert posted.outcome == "sent"
    assert await notify.client.audit_slack("other/C0123") == []
    [requested] = await notify.client.audit_entity("user-1")
    assert (requested.notification_id, requested.status) == (nid, "sent")


async def test_email_only(notify: Notify, mail_sink: MailSink, slack_sink: SlackSink) -> None:
    await import_entries(notify.store, [entity(channels={"email": "send", "slack": "opted-out"})])
    _, view = await notify.send()
    assert view["status"] == "sent"
    assert view["channels"]["email"]["outcome"] == "succeeded"
    assert view["channels"]["slack"]["outcome"] == "opted_out"
    assert len(mail_sink.messages) == 1
    assert slack_sink.calls == []


async def test_slack_only(notify: Notify, mail_sink: MailSink, slack_sink: SlackSink) -> None:
    await import_entries(notify.store, [entity(email=None, channels={"slack": "send"})])
    _, view = await notify.send(operation(slack_text="Disk almost full on :floppy_disk: /data"))
    assert view["status"] == "sent"
    assert list(view["channels"]) == ["slack"]
    assert mail_sink.messages == []
    assert [m.text for m in slack_sink.messages] == ["Disk almost full on :floppy_disk: /data"]


async def test_opted_out_of_everything(notify: Notify, mail_sink: MailSink, slack_sink: SlackSink) -> None:
    await import_entries(notify.store, [entity(channels={"email": "opted-out", "slack": "opted-out"})])
    nid, view = await notify.send()
    assert view["status"] == "opted_out"
    assert view["outcome"]["prepare"] == "AudienceOptedOutOfAllChannels"
    assert await notify.types(StreamName.NOTIFICATION_EVENT, nid) == [
        "SendNotificationRequestedEvent",
        "AudienceOptedOutOfAllChannelsEvent",
    ]
    assert await notify.types(StreamName.NOTIFICATION_SAGA, nid) == []
    assert mail_sink.messages == [] and slack_sink.calls == []


async def test_unknown_entity_is_a_recorded_failure(notify: Notify, mail_sink: MailSink) -> None:
    nid, view = await notify.send(operation("nobody"))
    assert view["status"] == "failed"
    assert view["outcome"]["get_audience"] == "CouldNotGetAudienceWithSomeFailuresReported"
    assert view["outcome"]["failures"] == ["entity 'nobody' is not in the directory"]
    assert await notify.types(StreamName.NOTIFICATION_EVENT, nid) == [
        "SendNotificationRequestedEvent",
        "CouldNotGetOrUseAudienceEvent",
        "FailedToSendNotificationEvent",
    ]
    assert mail_sink.messages == []


async def test_smtp_permanent_rejection_is_not_retried(
    notify: Notify, mail_sink: MailSink, slack_sink: SlackSink
) -> None:
    mail_sink.rejected_recipients["ada@example.com"] = "550 5.1.1 <ada@example.com>: mailbox unavailable"
    _, view = await notify.send()
    assert view["status"] == "partially_sent"
    assert view["outcome"]["attempt"] == "SentOnSomePreparedChannels"
    assert view["channels"]["email"]["outcome"] == "failed"
    assert "550 5.1.1" in view["channels"]["email"]["reason"]
    assert view["channels"]["slack"]["outcome"] == "succeeded"
    assert await notify.types(StreamName.EMAIL_EVENT, 1) == ["SendEmailRequestedEvent", "FailedToSendEmailEvent"]
    failed = await notify.store.reader(StreamName.EMAIL_EVENT).latest(1)
    assert failed is not None and failed.json()["response"]["result"] == "FailedToSendEmailToServer"
    email_op = await notify.store.reader(StreamName.EMAIL_OPERATION).latest(1)
    assert email_op is not None
    history = await notify.store.handling(StreamName.EMAIL_OPERATION).history(email_op.internal_id)
    assert [e.status for e in history] == ["Running", "Completed"]  # one attempt
    assert mail_sink.messages == []


async def test_slack_channel_not_found(notify: Notify, mail_sink: MailSink, slack_sink: SlackSink) -> None:
    slack_sink.unknown_channels.add("C0123")
    _, view = await notify.send()
    assert view["status"] == "partially_sent"
    assert view["channels"]["slack"] == {
        "address": "acme/C0123",
        "outcome": "failed",
        "channel_operation_id": 1,
        "reason": "Slack answered channel_not_found",
        "fallback": False,
        "attempts": 1,
        "last_error": None,
        "next_attempt_at": None,
    }
    assert len(slack_sink.calls) == 1  # not retried
    failed = await notify.store.reader(StreamName.SLACK_EVENT).latest(1)
    assert failed is not None and failed.type == "FailedToSendSlackMessageEvent"
    assert failed.json()["response"]["response_json"] == {"ok": False, "error": "channel_not_found"}
    assert len(mail_sink.messages) == 1


async def test_nothing_delivered_is_failed(notify: Notify, mail_sink: MailSink, slack_sink: SlackSink) -> None:
    mail_sink.rejected_recipients["ada@example.com"] = "553 5.1.3 bad address"
    slack_sink.unknown_channels.add("C0123")
    nid, view = await notify.send()
    assert view["status"] == "failed"
    assert view["outcome"]["attempt"] == "CouldNotSendOnAnyPreparedChannel"
    assert (await notify.types(StreamName.NOTIFICATION_EVENT, nid))[-1] == "FailedToSendNotificationEvent"


async def test_status_while_running_and_after(notify: Notify, mail_sink: MailSink) -> None:
    """The status follows every step; the search attributes hold the status at the start until the saga ends."""
    mail_sink.hold()
    nid = await notify.client.request(operation())
    assert await asyncio.to_thread(mail_sink.data_arrived.wait, 30)
    running = await notify.client.status(nid)
    assert running["status"] == "sending"
    assert running["channels"]["email"]["outcome"] == "sending"
    assert await notify.store.reader(StreamName.NOTIFICATION_VIEW).latest(nid) is None
    saga = notify.env.client.get_workflow_handle(nid)
    assert searched(await saga.describe()) == {"NotifyEntity": "user-1", "NotifyStatus": "pending"}
    mail_sink.release()
    await notify.client.result(nid)
    after = await notify.client.status(nid)
    assert after["status"] == "sent"
    view = await notify.store.reader(StreamName.NOTIFICATION_VIEW).latest(nid)
    assert view is not None and view.json() == after
    assert searched(await saga.describe()) == {
        "NotifyEntity": "user-1",
        "NotifyStatus": "sent",
        "NotifyChannels": ["email", "slack"],
    }


def searched(description: WorkflowExecutionDescription) -> dict[str, object]:
    return {pair.key.name: pair.value for pair in description.typed_search_attributes}


async def test_a_retried_send_records_once_and_delivers_once(
    notify: Notify, mail_sink: MailSink, caplog: pytest.LogCaptureFixture
) -> None:
    mail_sink.script_replies("421-4.3.0 Try again later\r\n421 4.3.0 The queue is full")  # a multi-line reply
    _, view = await notify.send()
    assert view["status"] == "sent"
    assert len(mail_sink.messages) == 1
    assert await notify.types(StreamName.EMAIL_EVENT, 1) == ["SendEmailRequestedEvent", "SucceededInSendingEmailEvent"]
    email_op = await notify.store.reader(StreamName.EMAIL_OPERATION).latest(1)
    assert email_op is not None
    history = await notify.store.handling(StreamName.EMAIL_OPERATION).history(email_op.internal_id, "send-email")
    assert [e.status for e in history] == ["Running", "Failed", "AvailableAfterFailure", "Running", "Completed"]
    assert "421" in history[1].details and "Try again later 4.3.0 The queue is full" in history[1].details
    failing, answering = [r.getMessage() for r in caplog.records if r.name == "notify.delivery"]
    assert failing.endswith("failed: 421 4.3.0 Try again later 4.3.0 The queue is full)"), failing  # one line
    assert answering == "email answers again, after 1 failed attempt(s)"


def activity_environment(attempt: int = 1) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, attempt=attempt, start_to_close_timeout=timedelta(seconds=30), schedule_to_close_timeout=None
    )
    return env


async def email_operation(store: StreamStore, settings: Settings, channel_operation_id: int) -> ChannelOperationRef:
    """An email operation put in its stream as the saga would, for driving its handler directly."""
    prepare = PrepareToSendOnChannelOp(notification_id="9", operation=operation(), audience=entity(), channel="email")
    email, tags = EmailHandler.compose(prepare, channel_operation_id, settings)
    instruction = ChannelOperationInstruction(
        operation=email,
        monitoring_info=ChannelOperationMonitoringInfo(
            channel_operation_id=channel_operation_id,
            succeeded_event_type="SucceededInSendingEmailEvent",
            failed_event_type="FailedToSendEmailEvent",
        ),
        tags=tags,
    )
    put = await store.writer(StreamName.EMAIL_OPERATION).put(
        channel_operation_id,
        ExecuteOpRequestedEvent(id=str(channel_operation_id), operation=email, timestamp_utc=utc_now()),
    )
    return ChannelOperationRef(instruction=instruction, internal_record_id=put.record_internal_id)


async def handling_statuses(store: StreamStore, ref: ChannelOperationRef) -> list[str]:
    return [e.status for e in await store.handling(StreamName.EMAIL_OPERATION).history(ref.internal_record_id)]


async def event_types(store: StreamStore, channel_operation_id: int) -> list[str]:
    return [r.type for r in await store.reader(StreamName.EMAIL_EVENT).by_id(channel_operation_id)]


async def test_a_handler_run_again_after_it_finished_sends_nothing(
    mail_sink: MailSink, store: StreamStore, settings: Settings
) -> None:
    ref = await email_operation(store, settings, 7)
    handler = EmailHandler(store, settings)
    first = await activity_environment().run(handler.send, ref)
    again = await activity_environment(attempt=2).run(handler.send, ref)
    assert first == again and first.outcome == "Succeeded"
    assert len(mail_sink.messages) == 1
    assert await event_types(store, 7) == ["SendEmailRequestedEvent", "SucceededInSendingEmailEvent"]
    assert await handling_statuses(store, ref) == ["Running", "Completed"]


async def test_a_handler_finds_the_outcome_an_attempt_recorded_before_it_died(
    mail_sink: MailSink, store: StreamStore, settings: Settings
) -> None:
    ref = await email_operation(store, settings, 8)
    # an attempt that took up the operation, delivered and recorded so, and died before completing its handling
    await store.handling(StreamName.EMAIL_OPERATION).begin(ref.internal_record_id, "send-email")
    delivered = SendEmailResponse(result=SendEmailResult.SUCCESS, message_id="<n-9.email-8@notify.test>")
    await store.writer(StreamName.EMAIL_EVENT).put(
        8,
        SucceededInSendingEmailEvent(
            channel_operation_id=8, notification_id="9", timestamp_utc=utc_now(), response=delivered
        ),
    )
    outcome = await activity_environment(attempt=2).run(EmailHandler(store, settings).send, ref)
    assert (outcome.outcome, outcome.attempts) == ("Succeeded", 2)
    assert mail_sink.messages == []
    assert await event_types(store, 8) == ["SucceededInSendingEmailEvent"]
    assert await handling_statuses(store, ref) == [
        "Running",
        "AvailableAfterExternalCancellation",
        "Running",
        "Completed",
    ]


async def test_an_operation_given_up_on_is_recorded_and_archived(
    mail_sink: MailSink, store: StreamStore, settings: Settings
) -> None:
    ref = await email_operation(store, settings, 11)
    handler = EmailHandler(store, settings)
    mail_sink.script_replies("421 4.3.0 Try again later")
    with pytest.raises(ApplicationError, match="421") as error:
        await activity_environment().run(handler.send, ref)
    last = error.value.details[0]
    assert "S: 421 4.3.0 Try again later" in last["communication_log"]
    failure = ChannelOperationFailure(operation=ref, reason="no outcome within the 600 s deadline", last_response=last)
    outcome = await activity_environment().run(handler.record_not_sent, failure)
    assert outcome.outcome == "Failed" and outcome.reason == "no outcome within the 600 s deadline"
    recorded = await store.reader(StreamName.EMAIL_EVENT).latest(11)
    assert recorded is not None
    assert recorded.json()["response"]["error"] == "no outcome within the 600 s deadline"
    assert "S: 421 4.3.0 Try again later" in recorded.json()["response"]["communication_log"]
    assert await event_types(store, 11) == ["SendEmailRequestedEvent", "FailedToSendEmailEvent"]
    assert await handling_statuses(store, ref) == ["Running", "Failed", "ArchivedAfterFailure"]
    assert await activity_environment().run(handler.record_not_sent, failure) == outcome
    assert await event_types(store, 11) == ["SendEmailRequestedEvent", "FailedToSendEmailEvent"]


async def test_idempotency_key(notify: Notify, mail_sink: MailSink) -> None:
    first = await notify.client.request(operation(), idempotency_key="disk-alert-42")
    again = await notify.client.request(operation(), idempotency_key="disk-alert-42")
    assert again == first
    await notify.client.result(first)
    assert await notify.client.request(operation(), idempotency_key="disk-alert-42") == first
    with pytest.raises(IdempotencyKeyConflict):
        await notify.client.request(operation(subject="Something else"), idempotency_key="disk-alert-42")
    assert len(mail_sink.messages) == 1
    other = await notify.client.request(operation(), idempotency_key="disk-alert-43")
    assert other != first
    await notify.client.result(other)
    assert len(mail_sink.messages) == 2


async def test_directory_changes_are_kept_as_records(notify: Notify, store: StreamStore) -> None:
    imported = await import_entries(store, [entity()])
    assert (imported.recorded, imported.unchanged) == (0, 1)
    imported = await import_entries(store, [entity(email="ada@new.example.com")])
    assert (imported.recorded, imported.unchanged) == (1, 0)
    history = await store.reader(StreamName.ENTITY_DIRECTORY).by_id("user-1")
    assert [r.json()["email"] for r in history] == ["ada@example.com", "ada@new.example.com"]
    _, view = await notify.send()
    assert view["channels"]["email"]["address"] == "ada@new.example.com"


async def test_query_answers_with_the_view_model(notify: Notify) -> None:
    nid, _ = await notify.send()
    handle = notify.env.client.get_workflow_handle_for(NotificationSaga.run, nid)
    view = await handle.query(NotificationSaga.status)
    assert view.status == NotificationStatus.SENT
    assert view.id == nid


async def test_slack_rate_limit_waits_the_retry_after_it_was_given(notify: Notify, slack_sink: SlackSink) -> None:
    slack_sink.script_responses(
        ScriptedResponse(status=429, body={"ok": False, "error": "ratelimited"}, headers={"Retry-After": "2"})
    )
    _, view = await notify.send()
    assert view["status"] == "sent"
    # a retry looks for an earlier attempt's post in the channel's history first
    assert [m for m, _ in slack_sink.calls] == ["chat.postMessage", "conversations.history", "chat.postMessage"]
    assert len(slack_sink.messages) == 1
    slack_op = await notify.store.reader(StreamName.SLACK_OPERATION).latest(1)
    assert slack_op is not None
    history = await notify.store.handling(StreamName.SLACK_OPERATION).history(
        slack_op.internal_id, "send-slack-message"
    )
    assert [e.status for e in history] == ["Running", "Failed", "AvailableAfterFailure", "Running", "Completed"]
    assert history[1].details == "Slack answered ratelimited"
    first, second = (e.timestamp_utc for e in history if e.status == "Running")
    assert second - first >= timedelta(seconds=2)  # the retry policy alone would have waited 1 s
