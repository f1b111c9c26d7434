"""A broadcast whose worker is killed (issue 26): `worker.py --serve broadcasts` is killed (SIGKILL) twice while a
topic's members are notified, and started again each time; `worker.py --serve notifications` stays up. Nobody is
missed; each member gets one Slack message and one email (one Message-ID: an email whose attempt was killed after the
mail server had it is sent again, the window docs/delivery.md states) on each channel it prefers; the counts add up.
On SQLite and on PostgreSQL, with the local mail and Slack sinks.

A killed broadcast step is retried once its heartbeat timeout has passed (`NOTIFY_HEARTBEAT_TIMEOUT_SECONDS`, which
the broadcast takes from its requester: here the workers' 2 s)."""

from __future__ import annotations

import asyncio
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import PendingActivityState
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.contract import REQUEST_RECIPIENTS
from broadcasts import BroadcastClient
from client import NotificationClient
from domain import BroadcastCounts, Channel, DirectoryEntry, ExecuteOpRequestedEvent, TagName, tag
from harness.processes import WorkerProcess, start_worker
from settings import Settings
from sinks.mail import MailSink
from sinks.slack import SlackSink
from streams import StreamName, StreamStore
from streams.directory import import_entries
from tests.conftest import ON_BOTH_BACKENDS
from tests.service import entity, eventually

RECIPIENTS = int(os.environ.get("NOTIFY_TEST_BROADCAST_RECIPIENTS", "300"))
"""The topic's members: 300 (three pages: the third waits for room in the window, so that a page's step surely
runs once the first messages are delivered; at 150 it may end before, and the first moment never comes), or what
`NOTIFY_TEST_BROADCAST_RECIPIENTS` says (the issue's 500 and 2,000, run by hand)."""
PATIENCE = 120 + RECIPIENTS / 10
"""Seconds the test waits for a moment, and for the broadcast's end."""
EARLY = 20
"""Messages delivered before the first kill, which comes as a page's step is under way: the next pages are not
requested yet."""
STARTED = PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
MESSAGE_ID = re.compile(r"<notification-(?P<id>.+)\.email-\d+@")


def member(n: int) -> DirectoryEntry:
    """The topic's nth member: reached by email only, by Slack only, or both, in turn; each in a Slack channel of
    its own."""
    channels = [{"email": "send"}, {"slack": "send"}, {"email": "send", "slack": "send"}][n % 3]
    slack = {"workspace": "acme", "channel": f"C{n:05d}"}
    return entity(id=f"member-{n}", email=f"member-{n}@example.com", slack=slack, channels=channels)


@ON_BOTH_BACKENDS
async def test_a_broadcast_whose_worker_is_killed_twice_notifies_each_member_once_on_each_channel(
    dev_env: WorkflowEnvironment,
    tmp_path: Path,
    worker_env: dict[str, str],
    settings: Settings,
    store: StreamStore,
    owner: StreamStore,
    workers: list[WorkerProcess],
    mail_sink: MailSink,
    slack_sink: SlackSink,
) -> None:
    members = [member(n) for n in range(RECIPIENTS)]
    await import_entries(owner, members, {m.id: ["everyone"] for m in members})
    workers.append(start_worker(worker_env, tmp_path, "--serve", "notifications"))
    workers.append(start_worker(worker_env, tmp_path, "--serve", "broadcasts"))
    heartbeat = float(worker_env["NOTIFY_HEARTBEAT_TIMEOUT_SECONDS"])
    notify = NotificationClient(
        store, dev_env.client, settings.model_copy(update={"heartbeat_timeout_seconds": heartbeat})
    )
    broadcasts = BroadcastClient(notify)
    bid = await broadcasts.request(
        {"audience": {"topic": "everyone"}, "content": {"subject": "Maintenance tonight", "body": "22:00 UTC."}}
    )
    saga = dev_env.client.get_workflow_handle(bid)
    half = sum(len(m.channels) for m in members) // 2

    def delivered() -> int:
        return len(mail_sink.messages) + len(slack_sink.messages)

    async def requesting_a_page() -> bool:  # early: a page's step under way, the first recipients' sends done
        steps = await _steps(saga) if delivered() >= EARLY else []
        return any(a.activity_type.name == REQUEST_RECIPIENTS.name and a.state == STARTED for a in steps)

    async def half_way_between_steps() -> bool:  # mid-way: the saga waits, its recipients' sagas and sends go on
        return delivered() >= half and not await _steps(saga)

    for moment in (requesting_a_page, half_way_between_steps):
        await eventually(moment, timeout=PATIENCE)
        killed = workers[-1]
        killed.process.kill()
        killed.ended()
        workers.append(start_worker(worker_env, tmp_path, "--serve", "broadcasts"))
    counts = await asyncio.wait_for(broadcasts.result(bid), PATIENCE)
    status = await broadcasts.status(bid)
    snapshot = [entity_id for page in await broadcasts.pages(bid) for entity_id in page.entity_ids]
    by_broadcast = tag(TagName.BROADCAST_ID, bid)
    requested = await store.reader(StreamName.CLIENT_OPERATION).by_tags(
        by_broadcast, type=ExecuteOpRequestedEvent.__name__
    )
    ended = await store.reader(StreamName.NOTIFICATION_VIEW).by_tags(by_broadcast)

    assert counts == BroadcastCounts(recipients=RECIPIENTS, ended={"sent": RECIPIENTS})
    assert status == {
        "id": bid,
        "broadcast": True,
        "status": "completed",
        "recipients": RECIPIENTS,
        "left": 0,
        "counts": {"sent": RECIPIENTS},
    }
    assert sorted(snapshot) == sorted(m.id for m in members)
    place = {entity_id: f"{bid}.{n}" for n, entity_id in enumerate(snapshot, 1)}
    each_once = {f"{bid}.{n}": 1 for n in range(1, RECIPIENTS + 1)}
    assert Counter(r.record_id for r in requested) == each_once
    assert Counter(v.record_id for v in ended) == each_once
    mailed = Counter(
        (recipient, _notification_of(m.message["Message-ID"])) for m in mail_sink.messages for recipient in m.recipients
    )
    assert set(mailed) == {(m.email, place[m.id]) for m in members if Channel.EMAIL in m.channels}
    for (address, nid), copies in mailed.items():  # again only after an attempt was lost: one more per lost one
        assert copies == 1 or copies <= (await notify.status(nid or ""))["channels"]["email"]["attempts"], address
    posted = Counter(
        (m.channel, (m.metadata or {}).get("event_payload", {}).get("notification_id")) for m in slack_sink.messages
    )
    assert posted == {(m.slack.channel, place[m.id]): 1 for m in members if m.slack and Channel.SLACK in m.channels}


def _notification_of(message_id: str) -> str | None:
    """The notification a mail was sent for, as its Message-ID says."""
    found = MESSAGE_ID.match(message_id)
    return found["id"] if found else None


async def _steps(saga: WorkflowHandle[Any, Any]) -> Sequence[PendingActivityInfo]:
    """The broadcast saga's steps under way (a worker's, or waiting for one)."""
    return (await saga.describe()).raw_description.pending_activities
