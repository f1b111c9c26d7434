"""Determinism: recorded saga histories must replay against the current workflow code.

`tests/histories/*.json` were recorded from real runs of the scenarios below. A change to the saga that would break
running workflows fails here. Record them again with `.venv/bin/python -m tests.test_replay` after a change that is
replay-safe (behind `workflow.patched` once released: docs/releasing.md).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from datetime import timedelta
from pathlib import Path

from pydantic import SecretStr
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from client import NotificationClient, register_search_attributes
from domain import DirectoryEntry, NotificationRequest, NotificationView, SendNotificationToEntityOp
from settings import Settings
from sinks.mail import MailSink
from sinks.slack import SlackSink
from streams.directory import import_entries
from worker import WORKFLOW_RUNNER, running_workers, temporal_binary
from workflows import search
from workflows.notification import NotificationSaga

HISTORIES = Path(__file__).parent / "histories"


def _entity(id: str, **fields: object) -> DirectoryEntry:
    return DirectoryEntry.model_validate({"id": id, "name": id.title(), "email": f"{id}@example.com", **fields})


SLACK = {"workspace": "acme", "channel": "C0123"}
ENTITIES = [
    _entity("both", slack=SLACK, channels={"email": "send", "slack": "send"}),
    _entity("rejected", slack=SLACK, channels={"email": "send", "slack": "send"}),
    _entity("opted-out", channels={"email": "opted-out"}),
    _entity("falls-back", slack=SLACK, channels={"email": "send"}, fallback="slack"),
    _entity("slack-only", slack=SLACK, channels={"slack": "send"}),
]
SCENARIOS = {
    "sent": "both",
    "partially_sent_and_escalated": "rejected",
    "opted_out": "opted-out",
    "unknown_entity": "nobody",
    "fallback": "falls-back",
    "scheduled_then_cancelled": "both",
    "deadline": "slack-only",
}
"""Each recorded once; between them they take every path of the saga: a timer and the cancel update, fallback,
escalation, and the record of a channel given up on at its deadline."""


async def record(env: WorkflowEnvironment, folder: Path) -> dict[str, WorkflowHistory]:
    """Run each scenario once on `env` with real sinks and a fresh store; return each saga's history."""
    histories = {}
    with MailSink() as mail, SlackSink(tokens={"xoxb-test"}) as slack:
        for address in ("rejected@example.com", "falls-back@example.com"):
            mail.rejected_recipients[address] = "550 5.1.1 mailbox unavailable"
        settings = Settings(
            _env_file=None,
            data_dir=folder,
            task_queue="replay",
            smtp_host=mail.host,
            smtp_port=mail.port,
            slack_api_url=slack.api_url,
            slack_token=SecretStr("xoxb-test"),
            slack_deadline_seconds=2,
            slack_retry_initial_seconds=0.5,
            internal_team_email="team@example.com",
        )
        async with settings.open_streams(create=True) as store, running_workers(env.client, store, settings):
            await import_entries(store, ENTITIES)
            client = NotificationClient(store, env.client, settings)
            for name, entity_id in SCENARIOS.items():
                send_at = await env.get_current_time() + timedelta(days=1) if name.startswith("scheduled") else None
                slack.hanging = name == "deadline"
                op = SendNotificationToEntityOp(
                    entity_id=entity_id, subject="Replay", body="A recorded saga.", send_at=send_at
                )
                nid = await client.request(op)
                if send_at is not None:
                    await client.cancel(nid)
                await client.result(nid)
                histories[name] = await env.client.get_workflow_handle(nid).fetch_history()
    return histories


def replayer(*workflows: type) -> Replayer:
    """A replayer set up as the worker is (its sandbox: modules passed through)."""
    return Replayer(
        workflows=list(workflows or [NotificationSaga]),
        data_converter=pydantic_data_converter,
        workflow_runner=WORKFLOW_RUNNER,
    )


def recorded() -> list[WorkflowHistory]:
    """The current code's histories (`histories/<scenario>.json`), and those a released version recorded, kept in
    `histories/<version>/` while a saga it started may be running (docs/releasing.md); each named by its path."""
    current = sorted(HISTORIES.glob("*.json"))
    assert {f.stem for f in current} == set(SCENARIOS), "record every scenario: python -m tests.test_replay"
    files = current + sorted(HISTORIES.glob("*/*.json"))
    return [
        WorkflowHistory.from_json(f.relative_to(HISTORIES).with_suffix("").as_posix(), f.read_text()) for f in files
    ]


async def test_recorded_histories_replay() -> None:
    for history in recorded():
        result = await replayer().replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, f"{history.workflow_id}: {result.replay_failure}"


async def test_fresh_histories_replay(time_skipping_env: WorkflowEnvironment, tmp_path: Path) -> None:
    histories = await record(time_skipping_env, tmp_path)
    assert set(histories) == set(SCENARIOS)
    for history in histories.values():
        result = await replayer().replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None


@workflow.defn(name="NotificationSaga")
class ReorderedSaga(NotificationSaga):
    """A change that is not replay-safe: a step (here a timer) ahead of those the recorded histories begin with."""

    @workflow.run
    async def run(self, request: NotificationRequest) -> NotificationView:
        await workflow.sleep(timedelta(seconds=1))
        return await super().run(request)


async def test_a_nondeterministic_change_fails_replay() -> None:
    """The changed saga meets the recorded history and says so: Temporal's nondeterminism error."""
    history = next(h for h in recorded() if h.workflow_id == "sent")
    result = await replayer(ReorderedSaga).replay_workflow(history, raise_on_replay_failure=False)
    assert "[TMPRL1100] Nondeterminism error" in str(result.replay_failure), result.replay_failure


async def _record_to_files() -> None:
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=str(temporal_binary("temporal-test-server")),
    )
    await register_search_attributes(env.client, env.client.namespace, [k.name for k in search.KEYS])
    try:
        with tempfile.TemporaryDirectory() as folder:
            histories = await record(env, Path(folder))
    finally:
        await env.shutdown()
    HISTORIES.mkdir(exist_ok=True)
    for name, history in histories.items():
        (HISTORIES / f"{name}.json").write_text(json.dumps(json.loads(history.to_json()), indent=1) + "\n")
        print(f"recorded {HISTORIES / name}.json")


if __name__ == "__main__":
    asyncio.run(_record_to_files())
