"""Broadcasts (issue 26): one request notifies every member of a topic (or every entity it names), each with a
notification of its own that names the broadcast; its saga requests them a page at a time."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel
from temporalio.testing import WorkflowEnvironment

import activities.broadcast
import workflows.broadcast
from activities.contract import broadcast_task_queue
from api.app import owner_store
from broadcasts import BroadcastClient
from client import IdempotencyKeyConflict, NotCancellable, RequestRefused, attachment
from domain import (
    RECIPIENTS_PAGE,
    BroadcastAudience,
    BroadcastCounts,
    BroadcastRequestedEvent,
    BroadcastStopped,
    Channel,
    SendBroadcastOp,
    TagName,
    tag,
)
from settings import Settings
from sinks.mail import MailSink
from sinks.slack import SlackSink
from streams import StreamName, StreamStore
from streams.directory import change_members
from tests.service import Api, entity, eventually, notifying

MEMBERS = [entity(id=f"user-{n}", email=f"u{n}@example.com", channels={Channel.EMAIL: "send"}) for n in range(45)]


@pytest.fixture(autouse=True)
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of 20: the 45 members take three."""
    monkeypatch.setattr(activities.broadcast, "RECIPIENTS_PAGE", 20)


async def test_each_member_of_a_topic_gets_a_notification_of_its_own_and_the_counts_add_up(
    time_skipping_env: WorkflowEnvironment, store: StreamStore, settings: Settings, mail_sink: MailSink
) -> None:
    async with notifying(time_skipping_env, store, settings, *MEMBERS) as notify:
        async with owner_store(settings, store) as owner:
            await change_members(owner, "everyone", [m.id for m in MEMBERS], member=True)
        broadcasts = BroadcastClient(notify.client)
        bid = await broadcasts.request(
            {"audience": {"topic": "everyone"}, "content": {"subject": "Maintenance tonight", "body": "22:00 UTC."}}
        )
        counts = await broadcasts.result(bid)
        status = await broadcasts.status(bid)
        [one] = [r for r in await notify.client.events(f"{bid}.1") if r.stream == StreamName.CLIENT_OPERATION]

    assert counts == BroadcastCounts(recipients=45, ended={"sent": 45})
    assert status == {
        "id": bid,
        "broadcast": True,
        "status": "completed",
        "recipients": 45,
        "left": 0,
        "counts": {"sent": 45},
    }
    assert Counter(r for m in mail_sink.messages for r in m.recipients) == {m.email: 1 for m in MEMBERS}
    assert one.json()["operation"]["broadcast_id"] == bid and one.tag("broadcast-id") == bid


async def test_entities_named_are_notified_and_one_the_directory_lacks_is_refused(
    time_skipping_env: WorkflowEnvironment, store: StreamStore, settings: Settings, mail_sink: MailSink
) -> None:
    async with notifying(time_skipping_env, store, settings, *MEMBERS[:3]) as notify:
        broadcasts = BroadcastClient(notify.client)
        audience = {"entity_ids": ["user-0", "user-9", "user-2"]}
        bid = await broadcasts.request({"audience": audience, "content": {"subject": "S", "body": "B"}})
        counts = await broadcasts.result(bid)
        refused, _ = await broadcasts.notifications(bid, status="refused")
        every, last = await broadcasts.notifications(bid)
    assert counts.ended == {"sent": 2, "refused": 1}
    assert refused == [{"id": f"{bid}.2", "entity_id": "user-9", "status": "refused"}]
    assert [(n["entity_id"], n["status"]) for n in every] == [
        ("user-0", "sent"),
        ("user-9", "refused"),
        ("user-2", "sent"),
    ]
    assert last is None
    assert sorted(r for m in mail_sink.messages for r in m.recipients) == ["u0@example.com", "u2@example.com"]


async def test_a_broadcast_to_a_topic_nobody_made_or_with_bad_content_is_refused(
    time_skipping_env: WorkflowEnvironment, store: StreamStore, settings: Settings
) -> None:
    async with notifying(time_skipping_env, store, settings) as notify:
        broadcasts = BroadcastClient(notify.client)
        with pytest.raises(RequestRefused, match="no topic 'nope'"):
            await broadcasts.request({"audience": {"topic": "nope"}, "content": {"subject": "S", "body": "B"}})
        with pytest.raises(RequestRefused, match="subject"):
            await broadcasts.request(
                {"audience": {"entity_ids": ["user-1"]}, "content": {"subject": "a\nb", "body": "B"}}
            )
        with pytest.raises(RequestRefused, match="a topic or to entities: one of them"):
            await broadcasts.request({"audience": {}, "content": {"subject": "S", "body": "B"}})
        assert await store.reader(StreamName.CLIENT_OPERATION).by_tags(type="BroadcastRequestedEvent") == []


async def test_a_broadcast_whose_requester_started_no_saga_is_started_by_a_workers_handler(
    time_skipping_env: WorkflowEnvironment, store: StreamStore, settings: Settings, mail_sink: MailSink
) -> None:
    """Its record alone, as a requester that died (or found Temporal down) after writing it leaves it."""
    async with notifying(time_skipping_env, store, settings, *MEMBERS[:2]) as notify:
        bid = await notify.client.new_id()
        op = SendBroadcastOp(
            audience=BroadcastAudience(entity_ids=["user-0", "user-1"]), content={"subject": "S", "body": "B"}
        )
        event = BroadcastRequestedEvent(id=bid, operation=op, timestamp_utc=datetime.now(UTC))
        await store.writer(StreamName.CLIENT_OPERATION).put(bid, event, tags=[tag(TagName.BROADCAST_ID, bid)])
        broadcasts = BroadcastClient(notify.client)

        async def completed() -> bool:
            return bool((await broadcasts.status(bid))["status"] == "completed")

        await eventually(completed, timeout=60)
    assert sorted(r for m in mail_sink.messages for r in m.recipients) == ["u0@example.com", "u1@example.com"]


async def test_the_api_requests_a_broadcast_and_reads_its_counts(
    api: Api, dev_env: WorkflowEnvironment, settings: Settings, mail_sink: MailSink
) -> None:
    sent = await api.call(
        "POST", "/v1/broadcasts", key="sender", json={"entities": ["user-1", "user-2"], "subject": "S", "body": "B"}
    )
    assert sent.status_code == 202, sent.text
    bid = sent.json()["id"]
    assert sent.json()["broadcast"] is True and sent.json()["status"] == "running"

    async def completed() -> bool:
        return bool((await api.call("GET", f"/v1/broadcasts/{bid}", key="reader")).json()["status"] == "completed")

    await eventually(completed, timeout=60)
    shown = (await api.call("GET", f"/v1/broadcasts/{bid}", key="reader")).json()
    assert shown == {
        "id": bid,
        "broadcast": True,
        "status": "completed",
        "recipients": 2,
        "left": 0,
        "counts": {"sent": 2},
    }
    assert len(mail_sink.messages) == 2
    first = (await api.call("GET", f"/v1/broadcasts/{bid}/notifications", key="reader", params={"limit": 1})).json()
    assert first["items"] == [{"id": f"{bid}.1", "entity_id": "user-1", "status": "sent"}] and first["next_cursor"]
    page = {"limit": 1, "cursor": first["next_cursor"]}
    second = (await api.call("GET", f"/v1/broadcasts/{bid}/notifications", key="reader", params=page)).json()
    assert second == {"items": [{"id": f"{bid}.2", "entity_id": "user-2", "status": "sent"}], "next_cursor": None}
    failed = await api.call("GET", f"/v1/broadcasts/{bid}/notifications", key="reader", params={"status": "failed"})
    assert failed.json() == {"items": [], "next_cursor": None}
    unknown = await api.call("GET", f"/v1/broadcasts/{bid}/notifications", key="reader", params={"status": "snt"})
    assert unknown.status_code == 422 and "'snt' is not a status a notification ends with" in unknown.text
    for workflow_id in (bid, f"{bid}.1"):  # on a task queue of their own, where a worker of their own may serve them
        described = await dev_env.client.get_workflow_handle(workflow_id).describe()
        assert described.task_queue == broadcast_task_queue(settings.task_queue), workflow_id
    assert described.raw_description.workflow_execution_info.priority.priority_key == 4  # behind single requests
    for method, path, body, status, said in [
        ("POST", "/v1/broadcasts", {"topic": "nope", "subject": "S", "body": "B"}, 422, "no topic 'nope'"),
        ("POST", "/v1/broadcasts", {"entities": ["user-1"], "topic": "t", "subject": "S", "body": "B"}, 422, "one of"),
        ("GET", "/v1/broadcasts/nope", None, 404, "no broadcast with id 'nope'"),
        ("POST", f"/v1/broadcasts/{bid}/cancel", None, 409, f"broadcast {bid} has ended: nothing changed"),
        ("POST", "/v1/broadcasts/nope/cancel", None, 404, "no broadcast with id 'nope'"),
    ]:
        refused = await api.call(method, path, json=body)
        assert refused.status_code == status and said in refused.json()["detail"], refused.text


async def test_a_broadcast_goes_on_as_new_runs_and_requests_each_recipient_once(
    time_skipping_env: WorkflowEnvironment,
    store: StreamStore,
    settings: Settings,
    mail_sink: MailSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workflows.broadcast, "STEPS_PER_RUN", 2)  # a new run every two steps: every page or so
    async with notifying(time_skipping_env, store, settings, *MEMBERS) as notify:
        broadcasts = BroadcastClient(notify.client)
        audience = {"entity_ids": [m.id for m in MEMBERS]}
        bid = await broadcasts.request({"audience": audience, "content": {"subject": "S", "body": "B"}})
        counts = await broadcasts.result(bid)
        last_run = await time_skipping_env.client.get_workflow_handle(bid).fetch_history()
    assert counts == BroadcastCounts(recipients=45, ended={"sent": 45})
    assert Counter(r for m in mail_sink.messages for r in m.recipients) == {m.email: 1 for m in MEMBERS}
    started = last_run.events[0].workflow_execution_started_event_attributes
    assert started.continued_execution_run_id  # a run that an earlier one went on as
    assert len(last_run.events) < 40  # each run's history is a few steps long


async def test_one_idempotency_key_is_one_broadcast_and_never_a_notification_too(
    time_skipping_env: WorkflowEnvironment, store: StreamStore, settings: Settings, mail_sink: MailSink
) -> None:
    async with notifying(time_skipping_env, store, settings, *MEMBERS[:2]) as notify:
        broadcasts = BroadcastClient(notify.client)
        op = {"audience": {"entity_ids": ["user-0", "user-1"]}, "content": {"subject": "S", "body": "B"}}
        first = await broadcasts.request(op, "release-7")
        await broadcasts.result(first)
        assert await broadcasts.request(op, "release-7") == first  # ended, and asked again: the same
        other = {**op, "content": {"subject": "Other", "body": "B"}}
        with pytest.raises(IdempotencyKeyConflict, match=f"was already used by broadcast {first} with a different"):
            await broadcasts.request(other, "release-7")
        with pytest.raises(IdempotencyKeyConflict, match="was already used by a broadcast's request"):
            await notify.client.submit(
                {"entity_id": "user-0", "subject": "S", "body": "B"}, idempotency_key="release-7"
            )
        nid = (await notify.client.submit({"entity_id": "user-0", "subject": "S", "body": "B"}, idempotency_key="n")).id
        with pytest.raises(IdempotencyKeyConflict, match="was already used by a notification's request"):
            await broadcasts.request(op, "n")
        await notify.client.result(nid)
        requested = await store.reader(StreamName.CLIENT_OPERATION).by_tags(type="BroadcastRequestedEvent")
    assert [r.record_id for r in requested] == [first]
    assert sorted(r for m in mail_sink.messages for r in m.recipients) == [
        "u0@example.com",
        "u0@example.com",
        "u1@example.com",
    ]


async def test_a_cancelled_broadcast_stops_what_is_not_sent_and_says_how_many(
    dev_env: WorkflowEnvironment,
    store: StreamStore,
    settings: Settings,
    mail_sink: MailSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its notifications wait for their time (an hour on): two pages of them are requested, the third waits for
    room (at most 40 under way), and the cancel stops them all."""
    # room for a page (of 20) while fewer than 21 are under way
    monkeypatch.setattr(workflows.broadcast, "WINDOW", RECIPIENTS_PAGE + 20)
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    async with notifying(dev_env, store, settings, *MEMBERS) as notify:
        broadcasts = BroadcastClient(notify.client)
        content = {"subject": "S", "body": "B", "send_at": later}
        bid = await broadcasts.request({"audience": {"entity_ids": [m.id for m in MEMBERS]}, "content": content})
        requests = store.reader(StreamName.CLIENT_OPERATION)

        async def two_pages_requested() -> bool:
            by_broadcast = tag(TagName.BROADCAST_ID, bid)
            return len(await requests.by_tags(by_broadcast, type="ExecuteOpRequestedEvent")) == 40

        await eventually(two_pages_requested)
        stopped = await broadcasts.cancel(bid)
        counts = await broadcasts.result(bid)
        status = await broadcasts.status(bid)
        with pytest.raises(NotCancellable, match="nothing changed"):
            await broadcasts.cancel(bid)
    assert stopped == BroadcastStopped(cancelled=40, not_requested=5)
    assert counts.ended == {"cancelled": 40} and (status["status"], status["left"]) == ("cancelled", 5)
    assert mail_sink.messages == []


PDF = b"%PDF-1.7\n" + bytes(range(256)) * 40
PNG = b"\x89PNG\r\n\x1a\n" + bytes(reversed(range(256)))


def content_names(settings: Settings) -> set[tuple[str, str]]:
    """Which ids name which contents (`StreamStore.put_contents`), as the SQLite file has them."""
    with sqlite3.connect(settings.streams_location.removeprefix("sqlite:///")) as db:
        return set(db.execute("SELECT notification_id, sha256 FROM content_refs"))


async def test_a_broadcasts_files_are_kept_once_and_reach_each_recipient_whole_on_its_channels(
    time_skipping_env: WorkflowEnvironment,
    store: StreamStore,
    settings: Settings,
    mail_sink: MailSink,
    slack_sink: SlackSink,
) -> None:
    """A file and an inline image to one entity by email, one on Slack, one on both: the file by each channel, the
    image by email; a request whose files are not those it names writes nothing."""
    recipients = [
        entity(id="by-mail", email="m@example.com", slack=None, channels={Channel.EMAIL: "send"}),
        entity(id="by-slack", email=None, slack={"workspace": "acme", "channel": "C0S"}, channels={"slack": "send"}),
        entity(id="by-both", email="b@example.com", slack={"workspace": "acme", "channel": "C0B"}),
    ]
    files = [attachment("report.pdf", PDF), attachment("logo.png", PNG, content_id="logo")]
    content = {
        "subject": "Report",
        "body": "Attached.",
        "html_body": '<p>Attached.</p><img src="cid:logo">',
        "attachments": [f.model_dump() for f in files],
    }
    op = {"audience": {"entity_ids": [r.id for r in recipients]}, "content": content}
    async with notifying(time_skipping_env, store, settings, *recipients) as notify:
        broadcasts = BroadcastClient(notify.client)
        for contents in ([PDF], [PDF, PNG[:-1]], [PDF, PNG, b"more"]):
            with pytest.raises(RequestRefused, match="^attachments: the files given are not those the request names"):
                await broadcasts.request(op, "files", contents)
        assert await store.read(StreamName.CLIENT_OPERATION) == [] and content_names(settings) == set()
        bid = await broadcasts.request(op, "files", [PNG, PDF])
        assert await broadcasts.request(op, "files", [PDF, PNG]) == bid  # the same files: the same broadcast
        other = {**op, "content": {**content, "attachments": [files[0].model_dump()], "html_body": None}}
        with pytest.raises(IdempotencyKeyConflict, match=f"was already used by broadcast {bid} with a different"):
            await broadcasts.request(other, "files", [PDF])
        counts = await broadcasts.result(bid)
        requested = await store.reader(StreamName.CLIENT_OPERATION).by_tags(
            tag(TagName.BROADCAST_ID, bid), type="ExecuteOpRequestedEvent"
        )
    assert counts.ended == {"sent": 3}
    assert content_names(settings) == {(bid, hashlib.sha256(c).hexdigest()) for c in (PDF, PNG)}  # once, for all
    assert [r.json()["operation"]["attachments"] for r in requested] == [[f.model_dump() for f in files]] * 3
    mailed = {}
    for mail in mail_sink.messages:
        related = mail.message.get_body(("related",))
        assert related is not None
        inline = [(p["Content-ID"], p.get_content()) for p in related.iter_parts() if p["Content-ID"]]
        attached = [(p.get_filename(), p.get_content()) for p in mail.message.iter_attachments()]
        mailed[tuple(mail.recipients)] = (attached, inline)
    assert mailed == {
        ("m@example.com",): ([("report.pdf", PDF)], [("<logo>", PNG)]),
        ("b@example.com",): ([("report.pdf", PDF)], [("<logo>", PNG)]),
    }
    assert sorted((f.channel, f.name, f.content) for f in slack_sink.files) == [
        ("C0B", "report.pdf", PDF),
        ("C0S", "report.pdf", PDF),
    ]


async def test_a_template_naming_a_file_is_broadcast_with_it_kept_once(
    time_skipping_env: WorkflowEnvironment,
    store: StreamStore,
    settings: Settings,
    mail_sink: MailSink,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "terms.pdf").write_bytes(PDF)
    (folder / "terms.yaml").write_text(
        "subject: Terms for {{ entity.email }}\ntext: Attached.\n"
        "attachments: [{path: terms.pdf, filename: Terms.pdf}]\n"
    )
    settings = settings.model_copy(update={"templates_dir": folder})
    async with notifying(time_skipping_env, store, settings, *MEMBERS[:2]) as notify:
        broadcasts = BroadcastClient(notify.client)
        bid = await broadcasts.request({"audience": {"entity_ids": ["user-0", "user-1"]}, "template": "terms"})
        counts = await broadcasts.result(bid)
    assert counts.ended == {"sent": 2}
    assert content_names(settings) == {(bid, hashlib.sha256(PDF).hexdigest())}
    mailed = {
        m.message["Subject"]: [(p.get_filename(), p.get_content()) for p in m.message.iter_attachments()]
        for m in mail_sink.messages
    }
    assert mailed == {
        "Terms for u0@example.com": [("Terms.pdf", PDF)],
        "Terms for u1@example.com": [("Terms.pdf", PDF)],
    }


class BroadcastStatusView(BaseModel):
    """A view as counts read it: its status."""

    status: str


async def test_a_client_counts_each_notification_once_reading_only_the_views_recorded_since_it_last_counted(
    time_skipping_env: WorkflowEnvironment, store: StreamStore, settings: Settings
) -> None:
    """The broadcast's saga counts again and again: each count reads the views recorded since the last, and a
    notification whose view is recorded again counts once, with its status now."""
    views = store.writer(StreamName.NOTIFICATION_VIEW)
    by_broadcast = [tag(TagName.BROADCAST_ID, "b-1")]

    async def viewed(number: int, status: str) -> None:
        await views.put(f"b-1.{number}", BroadcastStatusView(status=status), tags=by_broadcast)

    async with notifying(time_skipping_env, store, settings) as notify:
        broadcasts = BroadcastClient(notify.client)
        await viewed(1, "sent")
        await viewed(2, "failed")
        assert (await broadcasts.counts("b-1")).ended == {"sent": 1, "failed": 1}
        await viewed(2, "sent")  # recorded again
        await viewed(3, "cancelled")
        assert (await broadcasts.counts("b-1")).ended == {"sent": 2, "cancelled": 1}
        assert (await BroadcastClient(notify.client).counts("b-1")).ended == {"sent": 2, "cancelled": 1}


async def test_broadcasts_start_their_recipients_at_the_pace_they_share(
    time_skipping_env: WorkflowEnvironment, store: StreamStore, settings: Settings, mail_sink: MailSink
) -> None:
    """At 8 recipients a second for all broadcasts together, two broadcasts of 20 take their turns, 16 sagas at a
    time at most: the 40 cannot all have started (nor ended) sooner than (40 - 16) / 8 s after the first turn (at
    their own speed here, about one second)."""
    paced = settings.model_copy(update={"broadcast_recipients_per_second": 8})
    async with notifying(time_skipping_env, store, paced, *MEMBERS[:20]) as notify:
        async with owner_store(paced, store) as owner:
            await change_members(owner, "everyone", [m.id for m in MEMBERS[:20]], member=True)
        broadcasts = BroadcastClient(notify.client)
        content = {"subject": "Maintenance tonight", "body": "22:00 UTC."}
        started = time.monotonic()
        bids = [await broadcasts.request({"audience": {"topic": "everyone"}, "content": content}) for _ in range(2)]
        counts = [await broadcasts.result(bid) for bid in bids]
        took = time.monotonic() - started

    assert counts == [BroadcastCounts(recipients=20, ended={"sent": 20})] * 2
    assert took >= (40 - 16) / 8
    assert len(mail_sink.messages) == 40
