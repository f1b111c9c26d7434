"""Soak: a steady stream of requests for a set time while things break at random, then the totals.

Runs a Temporal dev server (on a database file, so that it can be killed and restarted), worker processes
(`worker.py`), a mail sink and a Slack sink in this process, and, with `--postgres`, a fresh PostgreSQL database
reached through a proxy that can cut it off. Requests come at a steady rate, each with an idempotency key and retried
until accepted, as a careful client does. Meanwhile, at random:

- a worker is killed (SIGKILL) and another started;
- one outage at a time: the Temporal server killed and restarted on its database, the mail server stopped, Slack
  answering 500 to everything, or PostgreSQL unreachable, each for 10 to 30 s;
- all along, the sinks are faulty: some emails are answered 451 and some are slow; some Slack posts are answered 500,
  half of them after being posted (the answer lost).

Then every notification is waited for, and the sinks are compared with the outcomes:

- *lost*: no outcome by the end, or an outcome that says a channel was delivered that its sink never received;
- *duplicate* emails (by Message-ID) and Slack posts (by the channel operation in their metadata);
- the email attempts *in the window*, each of which the guarantee allows one extra copy: attempts that may have
  delivered without recording it, being abandoned (the handling history shows no end to them: the worker died, or
  the attempt's time ran out while the store could not be reached), and messages the mail server kept whose client
  never said QUIT after them (it did not read the answer). Each operation's copies are checked against its own.

    .venv/bin/python -m bench.soak --minutes 10 [--postgres postgresql://postgres@127.0.0.1:5432/postgres]

It exits non-zero if anything was lost, a Slack post doubled, or an email doubled more than its operation's window
allows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from activities.email import EmailHandler
from bench.services import drop_database, fresh_database, reachable
from client import NotificationClient
from domain import Channel, ChannelOutcome, DirectoryEntry, NotificationView, SendNotificationToEntityOp
from harness.processes import WorkerProcess, launch_worker, temporal_server, unconfigured_environment
from harness.proxy import CuttableProxy
from settings import Settings
from sinks.mail import MailSink, free_port
from sinks.slack import SlackSink
from streams import HandlingStatus, StreamName, StreamStore
from streams.directory import import_entries

ENTITIES = [
    DirectoryEntry.model_validate(
        {
            "id": f"soak-{i}",
            "name": f"Soak {i}",
            "email": f"soak-{i}@example.com",
            "slack": {"workspace": "acme", "channel": f"C{i:04d}"},
            "channels": [{"email": "send"}, {"slack": "send"}, {"email": "send", "slack": "send"}][i % 3],
        }
    )
    for i in range(12)
]
"""Email only, Slack only and both, four of each, every one in its own Slack channel (Slack paces per channel)."""
KILL_EVERY_SECONDS = (10, 40)
CALM_SECONDS = (5, 20)
"""Between one outage and the next."""


@dataclass
class Totals:
    minutes: float
    backend: str
    workers: int
    rate: float
    seed: int
    requested: int = 0
    accepted: int = 0
    request_retries: Counter[str] = field(default_factory=Counter)
    """Why requests had to be made again: the answer the client got."""
    terminal: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    duplicate_emails: int = 0
    duplicate_slack_posts: int = 0
    kills: int = 0
    abandoned_email_attempts: int = 0
    emails_unacknowledged: int = 0
    """Messages the mail server kept whose client did not say QUIT after them."""
    duplicate_emails_beyond_window: int = 0
    """Copies of an email beyond one plus its operation's attempts in the window."""
    outages: Counter[str] = field(default_factory=Counter)
    stack_traces_in_worker_logs: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    """The reasons of the notifications that did not end `sent`."""

    @property
    def kept(self) -> bool:
        """Whether the guarantee held."""
        return not self.lost and self.duplicate_slack_posts == 0 and self.duplicate_emails_beyond_window == 0

    def figures(self) -> dict[str, object]:
        counted = {name: dict(value) if isinstance(value, Counter) else value for name, value in vars(self).items()}
        return counted | {"kept": self.kept}

    def report(self) -> str:
        retries = ", ".join(f"{n} {why}" for why, n in self.request_retries.most_common()) or "none"
        rows = [
            ("requested", f"{self.requested}"),
            ("accepted", f"{self.accepted} (requests made again: {retries})"),
            ("terminal", f"{self.terminal} ({', '.join(f'{s} {n}' for s, n in self.statuses.most_common())})"),
            ("lost", f"{len(self.lost)}" + (f" (e.g. {', '.join(self.lost[:5])})" if self.lost else "")),
            ("duplicate Slack posts", f"{self.duplicate_slack_posts}"),
            (
                "duplicate emails",
                f"{self.duplicate_emails} ({self.duplicate_emails_beyond_window} beyond the window; attempts in it:"
                f" {self.abandoned_email_attempts} abandoned, {self.emails_unacknowledged} kept by the mail server"
                " without the client's QUIT)",
            ),
            ("worker kills", f"{self.kills}"),
            ("outages", ", ".join(f"{what} {n}" for what, n in sorted(self.outages.items())) or "none"),
            ("stack traces in worker logs", f"{self.stack_traces_in_worker_logs}"),
        ]
        rows += [("not sent because", f"{n} × {why}") for why, n in self.failures.most_common(5)]
        width = max(len(name) for name, _ in rows)
        head = (
            f"soak: {self.minutes:g} min, {self.rate:g} requests/s, {self.workers} workers, {self.backend} streams, "
            f"seed {self.seed}"
        )
        verdict = "guarantee kept" if self.kept else "GUARANTEE BROKEN"
        return "\n".join([head, *(f"  {name:<{width}}  {value}" for name, value in rows), verdict])


class Soak:
    def __init__(
        self,
        folder: Path,
        totals: Totals,
        postgres: str | None,
        outage_seconds: tuple[float, float],
        recovery_seconds: float | None,
    ) -> None:
        self.folder = folder
        self.outage_seconds = outage_seconds
        self.recovery = (
            {}
            if recovery_seconds is None
            else {
                "HEARTBEAT_TIMEOUT_SECONDS": str(recovery_seconds),
                "STICKY_QUEUE_TIMEOUT_SECONDS": str(recovery_seconds),
            }
        )
        """The workers' settings for how soon a killed worker's work goes on elsewhere (`--recovery-seconds`)."""
        self.totals = totals
        self.postgres = postgres
        self.port = free_port()
        self.server = temporal_server(self.port, folder / "temporal.db")
        self.mail_port = free_port()
        self.mails: list[MailSink] = []
        self.slack = SlackSink(folder=folder / "slack").start()
        self.slack.flaky = 0.02
        self.proxy: CuttableProxy | None = None
        self.workers: list[WorkerProcess] = []
        self.environment: dict[str, str] = {}
        self.ids: dict[int, str] = {}
        """Request number to notification id, once accepted."""

    # -- the parts ----------------------------------------------------------------------------------------------

    def start_mail(self) -> None:
        mail = MailSink(port=self.mail_port, folder=self.folder / "mail").start()
        mail.flaky, mail.slowness = 0.02, 0.2
        self.mails.append(mail)

    def launch_worker(self) -> None:
        self.workers.append(launch_worker(self.environment, self.folder))

    async def streams_url(self) -> dict[str, str]:
        """The settings that put the streams in SQLite or, with `--postgres`, in a new database behind the proxy,
        each kind of handle as its own role."""
        if self.postgres is None:
            return {"STREAMS_URL": f"sqlite:///{self.folder / 'streams.db'}"}
        owner = urlsplit(await fresh_database(self.postgres))
        self.proxy = proxy = await CuttableProxy(owner.hostname or "127.0.0.1", owner.port or 5432).start()

        def through(user: str) -> str:
            return urlunsplit(owner._replace(netloc=f"{user}@127.0.0.1:{proxy.port}"))

        return {
            "STREAMS_URL": through(owner.username or "postgres"),
            **{
                f"STREAMS_{role.upper()}_URL": through(f"notify_{role}") for role in ("producer", "consumer", "handler")
            },
        }

    # -- the faults ---------------------------------------------------------------------------------------------

    async def killing(self, until: float) -> None:
        """Kill a worker now and then, and start another in its place."""
        while await _pause(KILL_EVERY_SECONDS, until):
            victim = random.choice([w for w in self.workers if w.returncode is None])
            victim.process.kill()
            await asyncio.to_thread(victim.process.wait)
            self.totals.kills += 1
            self.launch_worker()

    async def breaking(self, until: float) -> None:
        """One outage at a time, each for a while, with calm between."""
        outages: dict[str, Callable[[float], Awaitable[None]]] = {
            "temporal": self.temporal_down,
            "mail": self.mail_down,
            "slack": self.slack_failing,
        }
        if self.proxy is not None:
            outages["postgres"] = self.postgres_down
        while await _pause(CALM_SECONDS, until):
            what = random.choice(sorted(outages))
            self.totals.outages[what] += 1
            await outages[what](random.uniform(*self.outage_seconds))

    async def temporal_down(self, seconds: float) -> None:
        self.server.kill()
        await asyncio.to_thread(self.server.wait)
        await asyncio.sleep(seconds)
        self.server = temporal_server(self.port, self.folder / "temporal.db")

    async def mail_down(self, seconds: float) -> None:
        await asyncio.to_thread(self.mails[-1].stop)
        await asyncio.sleep(seconds)
        self.start_mail()

    async def slack_failing(self, seconds: float) -> None:
        self.slack.failing = True
        await asyncio.sleep(seconds)
        self.slack.failing = False

    async def postgres_down(self, seconds: float) -> None:
        assert self.proxy is not None
        await self.proxy.cut()
        await asyncio.sleep(seconds)
        await self.proxy.restore()

    # -- the clients' side --------------------------------------------------------------------------------------

    async def requesting(self, client: NotificationClient, until: float) -> list[asyncio.Task[None]]:
        """A request every 1/rate seconds until `until`, each made again until it is accepted."""
        tasks: list[asyncio.Task[None]] = []
        loop = asyncio.get_running_loop()
        started = loop.time()
        while loop.time() < until:
            n = len(tasks)
            tasks.append(asyncio.create_task(self.request(client, n)))
            await asyncio.sleep(max(0.0, started + (n + 1) / self.totals.rate - loop.time()))
        self.totals.requested = len(tasks)
        return tasks

    async def request(self, client: NotificationClient, n: int) -> None:
        entity = ENTITIES[n % len(ENTITIES)]
        op = SendNotificationToEntityOp(entity_id=entity.id, subject=f"Soak {n}", body=f"Soak notification {n}.")
        while True:
            try:
                self.ids[n] = await client.request(op, idempotency_key=f"soak-{n}")
                return
            except Exception as error:  # whatever a client may be answered: it asks again, with the same key
                self.totals.request_retries[type(error).__name__] += 1
                await asyncio.sleep(1)

    async def outcomes(self, client: NotificationClient, drain: float) -> dict[str, NotificationView]:
        """Every accepted notification's outcome, waited for (and asked again after an error) up to `drain` s."""
        views: dict[str, NotificationView] = {}
        limit = asyncio.Semaphore(50)

        async def outcome(notification_id: str) -> None:
            async with limit:
                while True:
                    try:
                        views[notification_id] = await client.result(notification_id)
                        return
                    except Exception:
                        await asyncio.sleep(1)

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain):
                await asyncio.gather(*(outcome(i) for i in self.ids.values()))
        return views

    async def count(self, views: dict[str, NotificationView], store: StreamStore) -> None:
        totals = self.totals
        totals.accepted = len(self.ids)
        totals.terminal = len(views)
        totals.statuses = Counter(v.status.value for v in views.values())
        emails = Counter(m.message["Message-ID"] for mail in self.mails for m in mail.messages)
        window = await _abandoned_email_attempts(store)
        totals.abandoned_email_attempts = window.total()
        for mail in self.mails:
            for n, m in enumerate(mail.messages):
                if n not in mail.acknowledged:
                    window[_channel_operation_id(m.message["Message-ID"])] += 1
                    totals.emails_unacknowledged += 1
        totals.duplicate_emails_beyond_window = sum(
            max(0, n - 1 - window[_channel_operation_id(i)]) for i, n in emails.items()
        )
        posts = Counter(
            json.dumps((m.metadata or {}).get("event_payload"), sort_keys=True) for m in self.slack.messages
        )
        totals.duplicate_emails = sum(n - 1 for n in emails.values())
        totals.duplicate_slack_posts = sum(n - 1 for n in posts.values())
        emailed = {i.split(".email-")[0].removeprefix("<notification-") for i in emails}
        posted = {json.loads(p)["notification_id"] for p in posts if p != "null"}
        for notification_id in self.ids.values():
            view = views.get(notification_id)
            if view is None:
                totals.lost.append(notification_id)
                continue
            received = {Channel.EMAIL: notification_id in emailed, Channel.SLACK: notification_id in posted}
            if any(c.outcome == ChannelOutcome.SUCCEEDED and not received[ch] for ch, c in view.channels.items()):
                totals.lost.append(notification_id)
            if view.status != "sent":
                totals.failures.update(c.reason or c.outcome.value for c in view.channels.values() if c.reason)
        for n, worker in enumerate(self.workers):
            (self.folder / f"worker-{n}.log").write_text(worker.output)
            totals.stack_traces_in_worker_logs += worker.output.count("Traceback")

    # -- the run ------------------------------------------------------------------------------------------------

    async def run(self, drain: float) -> None:
        self.start_mail()
        self.environment = unconfigured_environment() | {
            f"NOTIFY_{name}": value
            for name, value in {
                "TEMPORAL_ADDRESS": f"127.0.0.1:{self.port}",
                "TASK_QUEUE": "soak",
                "DATA_DIR": str(self.folder),
                "SMTP_HOST": "127.0.0.1",
                "SMTP_PORT": str(self.mail_port),
                "EMAIL_FROM": "soak@notify.test",
                "SLACK_API_URL": self.slack.api_url,
                "SLACK_TOKENS": json.dumps({"acme": "xoxb-soak"}),
                **await self.streams_url(),
                **self.recovery,
            }.items()
        }
        settings = Settings(
            _env_file=None,
            temporal_address=self.environment["NOTIFY_TEMPORAL_ADDRESS"],
            task_queue="soak",
            streams_url=self.environment["NOTIFY_STREAMS_URL"],
        )
        temporal = await reachable(settings, lazy=True)
        async with settings.open_streams(as_owner=True, create=True) as store:
            await import_entries(store, ENTITIES)
            for _ in range(self.totals.workers):
                self.launch_worker()
            for worker in self.workers:
                await asyncio.to_thread(worker.until_polling)
            client = NotificationClient(store, temporal, settings)
            until = asyncio.get_running_loop().time() + self.totals.minutes * 60
            faults = [asyncio.create_task(self.killing(until)), asyncio.create_task(self.breaking(until))]
            requests = await self.requesting(client, until)
            await asyncio.gather(*faults)  # the last outage over: everything is up again
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain):
                    await asyncio.gather(*requests)
            for task in requests:
                task.cancel()
            await self.count(await self.outcomes(client, drain), store)

    async def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.server.kill()
        self.server.wait()
        for mail in self.mails:
            mail.stop()
        self.slack.stop()
        if self.postgres is not None and self.proxy is not None:
            await self.proxy.close()
            await drop_database(self.postgres, self.environment["NOTIFY_STREAMS_URL"])


async def _abandoned_email_attempts(store: StreamStore) -> Counter[str]:
    """By channel operation id, the email attempts that a later attempt found still running: they may have delivered
    without recording it (`begin` ends such an attempt as externally cancelled)."""
    handling = store.handling(StreamName.EMAIL_OPERATION)
    abandoned: Counter[str] = Counter()
    for record in await store.read(StreamName.EMAIL_OPERATION):
        history = await handling.history(record.internal_id, EmailHandler.concern)
        ended = sum(e.status == HandlingStatus.AVAILABLE_AFTER_EXTERNAL_CANCELLATION for e in history)
        if ended and record.record_id is not None:
            abandoned[record.record_id] = ended
    return abandoned


def _channel_operation_id(message_id: str) -> str:
    """The channel operation an email's Message-ID names (`activities.email.message_id`)."""
    return message_id.rpartition(".email-")[2].partition("@")[0]


async def _pause(seconds: tuple[float, float], until: float) -> bool:
    """Wait a random while in `seconds`; whether there is time left to do something after it."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(min(random.uniform(*seconds), max(0.0, until - loop.time())))
    return loop.time() < until


async def main_async(args: argparse.Namespace, folder: Path) -> Totals:
    random.seed(args.seed)
    totals = Totals(
        minutes=args.minutes,
        backend="postgresql" if args.postgres else "sqlite",
        workers=args.workers,
        rate=args.rate,
        seed=args.seed,
    )
    soak = Soak(folder, totals, args.postgres, tuple(args.outage_seconds), args.recovery_seconds)
    try:
        await soak.run(args.drain_minutes * 60)
    finally:
        await soak.close()
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10, help="how long requests come and faults happen")
    parser.add_argument("--rate", type=float, default=4, help="requests per second")
    parser.add_argument("--workers", type=int, default=2, help="worker processes running at a time")
    parser.add_argument("--postgres", metavar="URL", help="a PostgreSQL server to make the streams' database on")
    parser.add_argument("--seed", type=int, default=random.randrange(1_000_000), help="for the random faults")
    parser.add_argument(
        "--outage-seconds",
        type=float,
        nargs=2,
        default=[10, 30],
        metavar=("MIN", "MAX"),
        help="how long an outage lasts",
    )
    parser.add_argument(
        "--recovery-seconds",
        type=float,
        help="the workers' heartbeat and sticky-queue timeouts: how soon a killed worker's work goes on elsewhere "
        "(default: the service's, 10 s each)",
    )
    parser.add_argument("--drain-minutes", type=float, default=10, help="how long to wait for outcomes afterwards")
    parser.add_argument("--folder", type=Path, help="where to keep logs, mail and figures (default: a new temp dir)")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="notify-soak-"))
    if folder.exists() and any(folder.iterdir()):
        parser.error(f"{folder} is not empty: a soak starts from nothing (its streams, server and mail)")
    folder.mkdir(parents=True, exist_ok=True)
    logging.getLogger("notify.client").setLevel(logging.ERROR)  # a line per request accepted while Temporal is down
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)  # a line per connection refused while PostgreSQL is cut
    totals = asyncio.run(main_async(args, folder))
    print(totals.report())
    (folder / "soak.json").write_text(json.dumps(totals.figures(), indent=2) + "\n")
    print(f"logs, mail and soak.json in {folder}")
    raise SystemExit(0 if totals.kept else 1)


if __name__ == "__main__":
    main()
