"""Nothing lost, nothing doubled, when a worker dies in the middle of a send: `worker.py` processes are killed
(SIGKILL) while the mail server holds the DATA phase, and while Slack holds its answer; another worker finishes."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.testing import WorkflowEnvironment

from client import NotCancellable, NotificationClient, connect
from domain import Channel, NotificationView, SendNotificationToEntityOp
from harness.processes import WorkerProcess, start_worker, temporal_server, unconfigured_environment
from harness.proxy import CuttableProxy
from settings import Settings
from sinks.mail import MailSink, free_port
from sinks.slack import SlackSink
from streams import StreamName, StreamStore
from streams.directory import import_entries
from tests.conftest import SLACK_TOKEN
from tests.databases import Databases
from tests.service import Notify, entity, eventually, notifying, operation


async def send_and_kill(
    env: dict[str, str],
    settings: Settings,
    tmp_path: Path,
    workers: list[WorkerProcess],
    dev_env: WorkflowEnvironment,
    channels: dict[str, str],
    until_sending: object,
    released: object,
) -> tuple[NotificationView, list[str]]:
    """Request a notification on `channels`; once the send is held (`until_sending`, a threading.Event), kill the
    worker, let the server go on (`released`), start another worker, and return the outcome and the record types."""
    async with settings.open_streams(create=True) as store:
        await import_entries(store, [entity(channels=channels)])
        workers.append(start_worker(env, tmp_path))
        client = NotificationClient(store, dev_env.client, settings)
        nid = await client.request(SendNotificationToEntityOp(entity_id="user-1", subject="Killed", body="B"))
        assert await asyncio.to_thread(until_sending.wait, 60)  # type: ignore[attr-defined]
        workers[0].process.kill()
        workers[0].ended()
        released()  # type: ignore[operator]
        workers.append(start_worker(env, tmp_path))
        view = await asyncio.wait_for(client.result(nid), 120)
        events = [
            r.type
            for r in await store.reader(
                StreamName.EMAIL_EVENT if "email" in channels else StreamName.SLACK_EVENT
            ).by_tags()
        ]
    return view, events


async def test_a_worker_killed_while_the_mail_server_holds_data_sends_at_most_once_more(
    worker_env: dict[str, str],
    settings: Settings,
    tmp_path: Path,
    workers: list[WorkerProcess],
    dev_env: WorkflowEnvironment,
    mail_sink: MailSink,
) -> None:
    mail_sink.hold()
    view, events = await send_and_kill(
        worker_env, settings, tmp_path, workers, dev_env, {"email": "send"}, mail_sink.data_arrived, mail_sink.release
    )
    assert view.status == "sent", view
    assert view.channels[Channel.EMAIL].attempts == 2
    # the killed attempt's message had reached the server: it is delivered, and the retry delivers it again (the
    # documented window), with the same Message-ID, so that a mail reader can tell
    assert 1 <= len(mail_sink.messages) <= 2
    assert len({m.message["Message-ID"] for m in mail_sink.messages}) == 1
    assert events == ["SendEmailRequestedEvent", "SucceededInSendingEmailEvent"]


async def test_a_worker_killed_while_slack_holds_its_answer_posts_once(
    worker_env: dict[str, str],
    settings: Settings,
    tmp_path: Path,
    workers: list[WorkerProcess],
    dev_env: WorkflowEnvironment,
    slack_sink: SlackSink,
) -> None:
    slack_sink.hold_answers()
    view, events = await send_and_kill(
        worker_env, settings, tmp_path, workers, dev_env, {"slack": "send"}, slack_sink.posted, slack_sink.release
    )
    assert view.status == "sent", view
    assert view.channels[Channel.SLACK].attempts == 2
    [posted] = slack_sink.messages  # the retry found the post in the channel's history, by its metadata
    assert posted.metadata == {
        "event_type": "notify_channel_operation",
        "event_payload": {"notification_id": view.id, "channel_operation_id": 1},
    }
    assert events == ["SendSlackMessageRequestedEvent", "SucceededInSendingSlackMessageEvent"]
    assert [m for m, _ in slack_sink.calls] == ["chat.postMessage", "conversations.history"]


async def test_a_cancel_stops_the_retries_of_what_was_not_delivered(
    dev_env: WorkflowEnvironment, store: StreamStore, settings: Settings, slack_sink: SlackSink
) -> None:
    """No mail server listens: the email waits for its next attempt when the cancel comes. Its retries stop and it
    is recorded as cancelled; the Slack message, delivered before, stays delivered, and the outcome says both."""
    down = settings.model_copy(
        update={"smtp_port": free_port(), "email_retry_initial_seconds": 1, "email_retry_maximum_seconds": 2}
    )
    async with notifying(dev_env, store, down) as notify:
        nid = await notify.client.request(operation())

        async def between_attempts() -> bool:
            channels = (await notify.client.status(nid))["channels"]
            email, slack = channels.get("email", {}), channels.get("slack", {})
            return (
                (email.get("attempts") or 0) >= 1
                and email.get("next_attempt_at")
                and slack.get("outcome") == "succeeded"
            )

        await eventually(between_attempts)
        view = await notify.client.cancel(nid)
        email_op = await store.reader(StreamName.EMAIL_OPERATION).latest(1)
        assert email_op is not None
        handling = await store.handling(StreamName.EMAIL_OPERATION).history(email_op.internal_id)
        events = [r.type for r in await notify.client.events(nid)]
    assert view["status"] == "cancelled"
    assert (view["channels"]["slack"]["outcome"], view["channels"]["email"]["outcome"]) == ("succeeded", "cancelled")
    assert view["channels"]["email"]["reason"] == "cancelled before it was delivered"
    assert "email: cancelled before it was delivered" in view["outcome"]["failures"]
    assert len(slack_sink.messages) == 1
    assert handling[-1].status == "ArchivedAfterFailure"  # no attempt after the cancel
    assert "NotificationCancelledEvent" in events and "FailedToSendEmailEvent" in events


async def test_a_cancel_during_an_attempt_waits_for_it(
    dev_env: WorkflowEnvironment, store: StreamStore, settings: Settings, mail_sink: MailSink
) -> None:
    """The mail server holds the DATA phase when the cancel comes: the attempt is waited for, it delivers, and so the
    cancel came too late (nothing was stopped: `NotCancellable`)."""
    async with notifying(dev_env, store, settings, entity(channels={"email": "send"})) as notify:
        mail_sink.hold()
        try:
            nid = await notify.client.request(operation())
            assert await asyncio.to_thread(mail_sink.data_arrived.wait, 30)
            cancelling = asyncio.create_task(notify.client.cancel(nid))

            async def cancel_requested() -> bool:
                described = await dev_env.client.get_workflow_handle(nid).describe()
                states = [a.state for a in described.raw_description.pending_activities]
                return states == [PendingActivityState.PENDING_ACTIVITY_STATE_CANCEL_REQUESTED]

            await eventually(cancel_requested)
        finally:
            mail_sink.release()
        with pytest.raises(NotCancellable, match=f"notification {nid} was sent before the cancel took effect"):
            await cancelling
        view = await notify.client.status(nid)
    assert view["status"] == "sent" and view["channels"]["email"]["outcome"] == "succeeded"
    assert len(mail_sink.messages) == 1


async def test_slack_is_paced_per_slack_channel(
    dev_env: WorkflowEnvironment, store: StreamStore, settings: Settings, slack_sink: SlackSink
) -> None:
    """One message a second per Slack channel, for every saga together: a busy channel does not hold up another."""
    paced = settings.model_copy(update={"slack_messages_per_second": 1})
    other = entity(id="user-2", slack={"workspace": "acme", "channel": "C0456"}, channels={"slack": "send"})
    async with notifying(dev_env, store, paced, entity(channels={"slack": "send"}), other) as notify:
        ids = await asyncio.gather(*(notify.client.request(operation(e)) for e in ["user-1"] * 5 + ["user-2"]))
        views = [await notify.client.result(i) for i in ids]
    assert [v.status for v in views] == ["sent"] * 6
    posted = {c: sorted(float(m.ts) for m in slack_sink.messages if m.channel == c) for c in ("C0123", "C0456")}
    assert [len(p) for p in posted.values()] == [5, 1]
    busy = posted["C0123"]
    # turns are a second apart; a post may start up to a second after its turn (the saga's timer, then the send)
    assert busy[-1] - busy[0] >= 3, busy
    assert posted["C0456"][0] < busy[2]  # not queued behind the busy channel


OUTAGE = 8
"""Seconds each service is down for in the outage tests: the first requests' sends fail five times or more, their
retries reaching the longest interval between them (`RETRY`), before the service is back."""
RETRY = {"initial_seconds": 0.5, "maximum_seconds": 2}
"""The retry policy of the channel that is down, as its settings name it."""


def retried(channel: str) -> dict[str, float]:
    """The settings that give `channel` the outage tests' retry policy."""
    return {f"{channel}_retry_{name}": seconds for name, seconds in RETRY.items()}


async def requested_through(outage: float, notify: Notify) -> list[str]:
    """A steady stream of requests, two a second, for `outage` seconds."""
    ids = []
    started = asyncio.get_running_loop().time()
    while asyncio.get_running_loop().time() - started < outage:
        ids.append(await notify.client.request(operation()))
        await asyncio.sleep(0.5)
    return ids


async def test_a_mail_server_down_for_a_while_loses_nothing(
    dev_env: WorkflowEnvironment,
    store: StreamStore,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    port = free_port()
    down = settings.model_copy(update={"smtp_port": port, **retried("email")})
    caplog.set_level(logging.INFO)
    async with notifying(dev_env, store, down, entity(channels={"email": "send"})) as notify:
        ids = await requested_through(OUTAGE, notify)
        with MailSink(port=port, folder=tmp_path / "mail") as mail:  # the mail server is back
            views = [await notify.client.result(i) for i in ids]
            received = [m.message["Message-ID"] for m in mail.messages]
    assert [v.status for v in views] == ["sent"] * len(ids)
    assert len(received) == len(set(received)) == len(ids)  # each once
    said = [r.getMessage() for r in caplog.records if r.name == "notify.delivery" and r.levelno >= logging.INFO]
    assert len(said) == 2 and said[0].startswith("email: sends fail") and said[1].startswith("email answers again")
    assert [r for r in caplog.records if r.exc_info] == []


async def test_slack_answering_500_for_a_while_loses_nothing_and_posts_once(
    dev_env: WorkflowEnvironment,
    store: StreamStore,
    settings: Settings,
    slack_sink: SlackSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky = settings.model_copy(update={**retried("slack"), "slack_messages_per_second": None})
    caplog.set_level(logging.INFO)
    async with notifying(dev_env, store, flaky, entity(channels={"slack": "send"})) as notify:
        slack_sink.failing = True
        ids = await requested_through(OUTAGE, notify)
        slack_sink.failing = False  # Slack is back
        views = [await notify.client.result(i) for i in ids]
    assert [v.status for v in views] == ["sent"] * len(ids)
    posted = [(m.metadata or {}).get("event_payload", {}).get("notification_id") for m in slack_sink.messages]
    assert sorted(posted) == sorted(ids)  # each once
    said = [r.getMessage() for r in caplog.records if r.name == "notify.delivery" and r.levelno >= logging.INFO]
    assert len(said) == 2 and said[0].startswith("slack: sends fail") and said[1].startswith("slack answers again")
    assert [r for r in caplog.records if r.exc_info] == []


async def test_the_temporal_server_killed_and_restarted_loses_nothing(
    tmp_path: Path, mail_sink: MailSink, slack_sink: SlackSink, workers: list[WorkerProcess]
) -> None:
    """Under a steady stream of requests the Temporal server is killed, and restarted on its database file: the
    requests made meanwhile are accepted, the worker waits, and every notification is delivered once."""
    port = free_port()
    env = {
        **unconfigured_environment(),
        "NOTIFY_TEMPORAL_ADDRESS": f"127.0.0.1:{port}",
        "NOTIFY_STREAMS_URL": f"sqlite:///{tmp_path / 'streams.db'}",
        "NOTIFY_SMTP_HOST": mail_sink.host,
        "NOTIFY_SMTP_PORT": str(mail_sink.port),
        "NOTIFY_SLACK_API_URL": slack_sink.api_url,
        "NOTIFY_SLACK_TOKENS": json.dumps({"acme": SLACK_TOKEN}),
        "NOTIFY_SLACK_MESSAGES_PER_SECOND": "100",
    }
    server = temporal_server(port, tmp_path / "temporal.db")

    async def noticed() -> bool:
        return "the client-operation handler waits for Temporal" in workers[0].output

    try:
        workers.append(start_worker(env, tmp_path))
        settings = Settings(
            _env_file=None, temporal_address=env["NOTIFY_TEMPORAL_ADDRESS"], streams_url=env["NOTIFY_STREAMS_URL"]
        )
        async with settings.open_streams(create=True) as store:
            await import_entries(store, [entity()])
            client = NotificationClient(store, await connect(settings, lazy=True), settings)
            ids = [await client.request(operation(subject=f"Before {i}")) for i in range(3)]
            server.kill()
            server.wait()
            # each waits out the client's retries of its start (some seconds) before it is accepted: all at once
            ids += await asyncio.gather(*(client.request(operation(subject=f"While down {i}")) for i in range(3)))
            await eventually(noticed, timeout=60)  # its handler has tried to start them, and waits
            server = temporal_server(port, tmp_path / "temporal.db")
            ids += [await client.request(operation(subject=f"After {i}")) for i in range(3)]
            views = [await asyncio.wait_for(client.result(i), 120) for i in ids]
    finally:
        server.kill()
        server.wait()
    assert [v.status for v in views] == ["sent"] * 9
    assert len(mail_sink.messages) == len({m.message["Message-ID"] for m in mail_sink.messages}) == 9
    assert len(slack_sink.messages) == 9
    assert workers[0].returncode is None  # it waited for its server, and went on
    said = workers[0].output
    assert "the client-operation handler waits for Temporal" in said and "takes up requests again" in said
    assert "Traceback" not in said and "retried" not in said  # the outage is a line, not a line per retried call


async def test_postgresql_unreachable_for_a_while_loses_nothing(
    dev_env: WorkflowEnvironment,
    postgres: Databases,
    tmp_path: Path,
    mail_sink: MailSink,
    slack_sink: SlackSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PostgreSQL stops accepting connections (and drops the open ones) for three heartbeat timeouts while sagas run:
    every step waits for it (an attempt waiting to record its delivery heartbeats all along, and is not retried beside
    itself), and every notification accepted before is delivered once."""
    url = urlsplit(postgres.fresh())
    proxy = await CuttableProxy(url.hostname or "127.0.0.1", url.port or 5432).start()
    through = urlunsplit(url._replace(netloc=f"{url.username or 'postgres'}@127.0.0.1:{proxy.port}"))
    settings = Settings(
        _env_file=None,
        task_queue=f"pg-outage-{uuid.uuid4()}",
        streams_url=through,
        smtp_host=mail_sink.host,
        smtp_port=mail_sink.port,
        slack_api_url=slack_sink.api_url,
        slack_tokens={"acme": SLACK_TOKEN},
        slack_messages_per_second=None,
        email_from="notifications@notify.test",
        heartbeat_timeout_seconds=2,
    )
    try:
        async with settings.open_streams() as store, notifying(dev_env, store, settings) as notify:
            mail_sink.hold()  # the sends are under way when the database goes
            ids = [await notify.client.request(operation(subject=f"N{i}")) for i in range(5)]
            assert await asyncio.to_thread(mail_sink.data_arrived.wait, 30)
            # and one whose time comes during the outage: its first step fails for as long as it lasts
            due = datetime.now(UTC) + timedelta(seconds=settings.heartbeat_timeout_seconds)
            ids.append(await notify.client.request(operation(subject="N5", send_at=due)))
            await proxy.cut()
            mail_sink.release()
            await asyncio.sleep(3 * settings.heartbeat_timeout_seconds)  # the outage itself: nothing to wait for
            await proxy.restore()
            views = [await asyncio.wait_for(notify.client.result(i), 120) for i in ids]
    finally:
        mail_sink.release()
        await proxy.close()
    assert [v.status for v in views] == ["sent"] * 6
    assert len(mail_sink.messages) == len({m.message["Message-ID"] for m in mail_sink.messages}) == 6
    assert len(slack_sink.messages) == 6
    # the steps that failed meanwhile are two lines, not a traceback each
    said = [r.getMessage() for r in caplog.records if r.name == "notify.steps"]
    assert len(said) == 2, said
    assert said[0].startswith("the stream store: steps fail") and said[1].startswith("the stream store answers again")
    assert [r.getMessage() for r in caplog.records if r.exc_info and not r.name.startswith("psycopg")] == []
