"""The starter CLI: request notifications, follow them, ask what was sent, keep the entity directory.

`starter.py -h` lists the commands, `starter.py COMMAND -h` says what one takes. Bad input ends with a one-line error
and exit code 2, writing nothing; an unknown id with a one-line error and exit code 1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, ParamSpec

import typer
import yaml
from pydantic import TypeAdapter, ValidationError

import logs
from api.keys import Scope
from commands import command
from domain import (
    ADMISSION,
    MAX_ATTACHMENT_BYTES,
    MAX_ATTACHMENTS,
    MAX_ATTACHMENTS_BYTES,
    SEND_AT_EARLIEST,
    SEND_AT_LATEST,
    Category,
    Channel,
    ChannelPreference,
    DirectoryEntry,
    NotificationStatus,
    SendNotificationToEntityOp,
    SuppressionSource,
    Tag,
    category_preference,
    validation_message,
)
from links import preference_page
from settings import ConfigurationError, Settings, is_unavailable, load_settings, one_line
from streams import StreamName, StreamStore
from streams.directory import (
    OPERATOR,
    UnknownEntities,
    change_members,
    change_preferences,
    entry_or_why,
    import_entries,
    members,
    topic_sizes,
)
from streams.suppressions import change_suppression, suppressions

if TYPE_CHECKING:
    from broadcasts import BroadcastClient
    from client import NotificationClient

HELP = {"help_option_names": ["-h", "--help"]}
"""`-h` as well as `--help`, on every command."""


def command_group(help: str | None) -> typer.Typer:
    """A group of commands, with plain help (click's) naming each value by its metavar."""
    return typer.Typer(no_args_is_help=True, rich_markup_mode=None, context_settings=HELP, help=help)


app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings=HELP,
    help=__doc__,
)
directory_app = command_group("Import and show the entity directory.")
app.add_typer(directory_app, name="directory")
db_app = command_group("The PostgreSQL streams database: its schema and its roles.")
app.add_typer(db_app, name="db")
topic_app = command_group("Topics: named sets of entities that a notification can be sent to at once.")
app.add_typer(topic_app, name="topic")
streams_app = command_group("The streams themselves: retention.")
app.add_typer(streams_app, name="streams")
preferences_app = command_group("An entity's preferences: which categories it gets on which channel.")
app.add_typer(preferences_app, name="preferences")
suppression_app = command_group("The suppression list: email addresses that are not sent to.")
app.add_typer(suppression_app, name="suppression")
webhook_app = command_group("Webhooks out: endpoints told, signed, how each notification went.")
app.add_typer(webhook_app, name="webhook")
apikey_app = command_group("API keys for the HTTP API (`serve`).")
app.add_typer(apikey_app, name="apikey")
temporal_app = command_group("The Temporal namespace the sagas run in.")
app.add_typer(temporal_app, name="temporal")

P = ParamSpec("P")
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def argument(metavar: str) -> Any:
    """A command's argument, named in the usage line and in the command's help text (typer would list it again,
    labelled with its Python type)."""
    return typer.Argument(metavar=metavar, hidden=True)


Id = Annotated[str, argument("ID")]
NOT_DELIVERED = {NotificationStatus.FAILED, NotificationStatus.PARTIALLY_SENT, NotificationStatus.CANCELLED}
"""Outcomes after which `--wait` exits 1."""
WAIT_EXIT = "exit 1 if it failed, was partially sent or was cancelled (opted out is not a failure)."


class CliError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def exit_now(code: int) -> NoReturn:
    """Exit without interpreter finalization, which can crash a process that used the Temporal client."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_async(command: Callable[P, Coroutine[Any, Any, int | None]]) -> Callable[P, NoReturn]:
    """A command made of an async function: run it, and exit with the code it returns (0 for none), or say its error
    on one line and exit with its code: a `CliError`'s own, 2 for a setting, 1 for what a user can act on (a service
    that cannot be reached, an unknown id). A bug keeps its traceback."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> NoReturn:
        try:
            code = asyncio.run(command(*args, **kwargs)) or 0
        except CliError as error:
            print(f"error: {error}", file=sys.stderr)
            code = error.code
        except ConfigurationError as error:
            print(f"error: {error}", file=sys.stderr)
            code = 2
        except Exception as error:
            said = _said(error)
            if said is None:
                raise  # a bug: its traceback says where
            print(f"error: {said}", file=sys.stderr)
            code = 1
        exit_now(code)

    return run


def _said(error: Exception) -> str | None:
    """What to tell of `error` in one line, if it is something a user can act on; None for a bug."""
    if "client" in sys.modules:  # only a command that loaded the client (and Temporal's SDK) can meet these
        from client import UnknownNotification, is_connect_failure, temporal_unreachable

        if is_connect_failure(error):  # a lazy client's first call
            return one_line(temporal_unreachable(load_settings().temporal_address, error))
        if isinstance(error, UnknownNotification):
            return one_line(error)
    return one_line(error) if is_unavailable(error) else None


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def print_view(view: dict[str, Any]) -> None:
    print(f"notification {view['id']}: {view['status']}")
    print(f"  entity {view['entity_id']}, subject {view['subject']!r}, requested {view['requested_at']}")
    for row in channel_rows(view.get("channels", {})) + failure_rows(view):
        print(f"  {row}")
    if view.get("waiting"):
        print(f"  waiting: {view['waiting']}")
    if view.get("send_at") and view["status"] in ("scheduled", "cancelled"):
        print(f"  scheduled for {view['send_at']}")
    escalation = view.get("escalation")
    if escalation:
        print(f"  internal team: {escalation['status']}")
        for row in channel_rows(escalation["channels"], width=30):
            print(f"    {row}")


def channel_rows(channels: dict[str, dict[str, Any]], width: int = 32) -> list[str]:
    """A line per channel: its name, its address in a column `width` wide, its outcome in words."""
    return [f"{channel:<6} {c.get('address') or '-':<{width}} {channel_line(c)}" for channel, c in channels.items()]


def failure_rows(view: dict[str, Any]) -> list[str]:
    return [f"failure: {failure}" for failure in (view.get("outcome") or {}).get("failures", [])]


def channel_line(c: dict[str, Any]) -> str:
    """A channel's outcome in words: its operation, attempts, and why it failed or when it is tried again."""
    line = str(c["outcome"])
    details = [f"operation {c['channel_operation_id']}"] if c.get("channel_operation_id") else []
    if c.get("attempts") and (c["attempts"] > 1 or c["outcome"] == "sending"):
        details.append(f"{c['attempts']} attempt{'s' if c['attempts'] > 1 else ''}")
    if details:
        line += f" ({', '.join(details)})"
    if c.get("reason"):
        line += f": {c['reason']}"
    if c.get("last_error"):
        line += f"; the last attempt failed: {c['last_error']}"
    if c.get("next_attempt_at"):
        line += f"; next attempt at {c['next_attempt_at']}"
    return line


PROGRESS_SECONDS = 0.5
"""How often `send --wait` and `status --watch` look at a notification under way."""


def progress_lines(view: dict[str, Any]) -> list[str]:
    """A notification's progress as lines, in words (the saga's stages are for `events`): its status and why it
    waits, each channel, every failure, the internal team's channels."""
    lines = [view["status"] + (f": {view['waiting']}" if view.get("waiting") else "")]
    lines += channel_rows(view.get("channels", {})) + failure_rows(view)
    escalation = view.get("escalation") or {}
    lines += [f"internal team {ch} {channel_line(c)}" for ch, c in escalation.get("channels", {}).items()]
    return lines


async def followed(client: NotificationClient, notification_id: str) -> dict[str, Any]:
    """Wait for the notification's outcome and return its view, showing its progress meanwhile: on a terminal, a
    live panel (rich) that updates in place; otherwise a plain line on standard error for each change, so that
    standard output keeps only the id and the outcome."""
    ended = asyncio.create_task(client.result(notification_id))

    async def changes() -> AsyncIterator[dict[str, Any]]:
        while True:
            done, _ = await asyncio.wait([ended], timeout=PROGRESS_SECONDS)
            yield await client.status(notification_id)
            if done:
                ended.result()
                return

    if not sys.stdout.isatty():
        shown: set[str] = set()
        async for view in changes():
            for line in progress_lines(view):
                if line not in shown:
                    shown.add(line)
                    print(f"{notification_id}: {line}", file=sys.stderr, flush=True)
        return view
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    def panel(view: dict[str, Any]) -> Text:
        return Text("\n".join([f"notification {notification_id}", *(f"  {line}" for line in progress_lines(view))]))

    with Live(Text(f"notification {notification_id}: waiting"), console=Console(), transient=True) as live:
        async for view in changes():
            live.update(panel(view))
    return view


def text_argument(value: str | None) -> str | None:
    """A value given inline, or `@PATH` to read it from a file (`@-` for standard input)."""
    if value is None or not value.startswith("@"):
        return value
    path = value[1:]
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as error:
        raise CliError(f"cannot read {path}: {error.strerror}", 2) from error


def parse_time(value: str | None) -> datetime | None:
    """The time to send at; None for now, saying so if the time given has passed."""
    if value is None:
        return None
    moment = parse_moment("--at", value, "an ISO 8601 time such as 2026-12-01T09:00:00+01:00")
    if moment <= datetime.now(UTC):
        print(f"--at {value} has passed: sending now", file=sys.stderr)
        return None
    return moment


def parse_moment(option: str, value: str, expected: str) -> datetime:
    """The time `value` given to `option`, local time if it has no offset, within the years a request's `send_at`
    may be in (`SEND_AT_EARLIEST`, `SEND_AT_LATEST`); a `CliError` (exit 2) otherwise."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as error:
        raise CliError(f"{option} {value!r}: expected {expected}", 2) from error
    try:
        moment = moment if moment.tzinfo else moment.astimezone()
        within = SEND_AT_EARLIEST <= moment < SEND_AT_LATEST
    except (ValueError, OverflowError):  # a time near year 1 or 9999 in the local time zone
        within = False
    if not within:
        raise CliError(
            f"{option} {value}: must be in the years {SEND_AT_EARLIEST.year} to {SEND_AT_LATEST.year - 1} (UTC)", 2
        )
    return moment


def parse_object(option: str, value: str | None) -> dict[str, Any] | None:
    """A JSON object given to `option` inline or as `@FILE` (a template's data, an entity)."""
    text = text_argument(value)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise CliError(f"{option}: malformed JSON: {error}", 2) from error
    if not isinstance(data, dict):
        raise CliError(f"{option}: must be a JSON object", 2)
    return data


def parse_tags(values: Sequence[str]) -> list[Tag]:
    tags = []
    for value in values:
        name, sep, tag_value = value.partition("=")
        if not sep or not name:
            raise CliError(f"--tag {value!r}: expected NAME=VALUE", 2)
        tags.append(Tag(name=name, value=tag_value))
    return tags


def read_attachments(attach: Sequence[str], inline: Sequence[str]) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Each `--attach PATH[;type=MEDIA/TYPE]` and `--inline CID=PATH[;type=...]`: how the request names the file,
    and its bytes. A file past a limit, or not a regular file, is refused before it is read."""
    from client import attachment

    if len(attach) + len(inline) > MAX_ATTACHMENTS:
        raise CliError(f"at most {MAX_ATTACHMENTS} files (--attach and --inline), not {len(attach) + len(inline)}", 2)
    named, contents, total = [], [], 0
    for option, value in [*(("--attach", v) for v in attach), *(("--inline", v) for v in inline)]:
        content_id, _, where = value.partition("=") if option == "--inline" else ("", "", value)
        path, _, media_type = where.partition(";type=")
        if option == "--inline" and not (content_id and path):
            raise CliError(f"--inline {value!r}: expected CID=PATH", 2)
        try:
            with open(path, "rb") as file:
                found = os.fstat(file.fileno())
                if not stat.S_ISREG(found.st_mode):
                    raise CliError(f"{option} {path}: not a regular file", 2)
                if found.st_size > MAX_ATTACHMENT_BYTES:
                    said = f"{found.st_size:,} bytes; a file may be at most {MAX_ATTACHMENT_BYTES:,}"
                    raise CliError(f"{option} {path}: {said}", 2)
                if (total := total + found.st_size) > MAX_ATTACHMENTS_BYTES:
                    raise CliError(f"{option} {path}: the files are over {MAX_ATTACHMENTS_BYTES:,} bytes in all", 2)
                content = file.read(MAX_ATTACHMENT_BYTES + 1)
        except OSError as error:
            raise CliError(f"{option} {path}: {error.strerror or error}", 2) from error
        try:
            named_file = attachment(Path(path).name, content, media_type or None, content_id or None)
        except ValidationError as error:
            raise CliError(f"{option} {value}: {validation_message(error)}", 2) from error
        named.append(named_file.model_dump())
        contents.append(content)
    return named, contents


async def _client(settings: Settings, store: StreamStore, *, owner: StreamStore | None = None) -> NotificationClient:
    """The notification client; imported here, so that a command that does not talk to Temporal does not load it."""
    from client import NotificationClient, connect

    return NotificationClient(store, await connect(settings, lazy=True), settings, owner=owner)


@app.command()
@run_async
async def send(
    entity: Annotated[
        list[str],
        typer.Option(
            metavar="ID", help="The id of the entity to notify, as the directory has it; several: a broadcast."
        ),
    ] = [],  # noqa: B006
    topic: Annotated[
        str | None, typer.Option(metavar="NAME", help="Notify each member of topic NAME: a broadcast.")
    ] = None,
    entity_json: Annotated[
        str | None,
        typer.Option(
            metavar="JSON",
            help="Or the entity itself, as a directory entry (JSON, or @FILE): recorded, or updated, in the directory "
            "first.",
        ),
    ] = None,
    subject: Annotated[str | None, typer.Option(metavar="TEXT", help="One line.")] = None,
    body: Annotated[str | None, typer.Option(metavar="TEXT", help="Plain-text body, or @FILE.")] = None,
    html: Annotated[str | None, typer.Option(metavar="HTML", help="HTML body, or @FILE.")] = None,
    slack_text: Annotated[
        str | None, typer.Option(metavar="TEXT", help="Slack text (default: subject and body), or @FILE.")
    ] = None,
    template: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="Render subject and bodies from NAME.yaml in NOTIFY_TEMPLATES_DIR."),
    ] = None,
    data: Annotated[
        str | None, typer.Option(metavar="JSON", help="The template's data: a JSON object, or @FILE.")
    ] = None,
    tag: Annotated[list[str], typer.Option(metavar="NAME=VALUE", help="A tag for every record; repeatable.")] = [],  # noqa: B006
    attach: Annotated[
        list[str],
        typer.Option(
            metavar="PATH[;type=MEDIA/TYPE]",
            help="A file to send (its media type from its name, unless given); repeatable.",
        ),
    ] = [],  # noqa: B006
    inline_images: Annotated[
        list[str],
        typer.Option(
            "--inline",
            metavar="CID=PATH[;type=MEDIA/TYPE]",
            help='An image the HTML body shows by its content id (src="cid:CID"); repeatable.',
        ),
    ] = [],  # noqa: B006
    attach_to: Annotated[
        list[Channel],
        typer.Option(
            metavar="CHANNEL", help="Send the --attach files on this channel only (default: every channel); repeatable."
        ),
    ] = [],  # noqa: B006
    idempotency_key: Annotated[
        str | None, typer.Option(metavar="KEY", help="Repeat a request safely: same key, same id.")
    ] = None,
    category: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="Its category (NOTIFY_CATEGORIES_FILE): entities may opt out of it."),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(metavar="TIME", help="Send at this ISO 8601 time (local time unless it has an offset)."),
    ] = None,
    wait: Annotated[bool, typer.Option(help=f"Print the id, then wait for the outcome; {WAIT_EXIT}")] = False,
    as_json: JsonOption = False,
) -> int:
    """Request a notification to an entity and print its id: with --subject and --body, or with --template. To a
    topic's members (--topic), or to several entities (--entity, repeated): a broadcast, each entity notified with a
    notification of its own; its id is the broadcast's."""
    if sum(map(bool, (entity, entity_json is not None, topic is not None))) != 1:
        raise CliError("give --entity ID (repeatable), --entity-json ENTRY or --topic NAME (one of them)", 2)
    broadcast = topic is not None or len(entity) > 1
    inline = parse_object("--entity-json", entity_json)
    if inline is not None:  # what is wrong with it is said before any store is looked for
        try:
            TypeAdapter(DirectoryEntry).validate_python(inline, context=ADMISSION)
        except ValidationError as error:
            raise CliError(f"--entity-json: {validation_message(error)}", 2) from error
    content: dict[str, Any] = dict(
        entity_id=entity[0] if len(entity) == 1 else None,
        subject=subject,
        body=text_argument(body),
        html_body=text_argument(html),
        slack_text=text_argument(slack_text),
        tags=parse_tags(tag),
        send_at=parse_time(at),
    )
    content["attachments"], contents = read_attachments(attach, inline_images)
    content["attach_to"] = attach_to or None
    content["category"] = category
    template_data = parse_object("--data", data)
    if broadcast:
        audience = {"topic": topic} if topic is not None else {"entity_ids": entity}
        return await _broadcast(
            audience, content, contents, template, template_data, idempotency_key, wait=wait, as_json=as_json
        )
    from client import RequestRefused, checked_idempotency_key

    try:
        checked_idempotency_key(idempotency_key)  # before the store is opened (or made)
    except RequestRefused as error:
        raise CliError(error.said(idempotency_key="--idempotency-key"), 2) from error
    settings = load_settings()
    async with settings.open_streams(as_owner=inline is not None) as store:  # the owner alone writes the directory
        client = await _client(settings, store, owner=store if inline is not None else None)
        try:
            notification_id = (
                await client.submit(content, template, template_data, idempotency_key, inline, contents=contents)
            ).id
        except RequestRefused as error:
            raise CliError(error.said(idempotency_key="--idempotency-key", entity="--entity-json"), 2) from error
        if not wait:
            print_json({"id": notification_id}) if as_json else print(notification_id)
            return 0
        if as_json:  # standard output keeps one JSON document
            print(f"notification {notification_id} requested; waiting for its outcome", file=sys.stderr)
            shown = (await client.result(notification_id)).model_dump(mode="json")
        else:
            print(notification_id, flush=True)
            shown = await followed(client, notification_id)
    print_json(shown) if as_json else print_view(shown)
    return 1 if shown["status"] in NOT_DELIVERED else 0


async def _broadcast(
    audience: dict[str, Any],
    content: dict[str, Any],
    contents: list[bytes],
    template: str | None,
    data: dict[str, Any] | None,
    idempotency_key: str | None,
    *,
    wait: bool,
    as_json: bool,
) -> int:
    """Request a broadcast (with `contents`, the files its content names); print its id, and with `wait` its
    progress until every notification has ended."""
    from broadcasts import BroadcastClient
    from client import RequestRefused

    op = {
        "audience": audience,
        "content": {k: v for k, v in content.items() if v not in (None, [], {}) and k != "entity_id"},
        "template": template,
        "data": data,
    }
    settings = load_settings()
    async with settings.open_streams() as store:
        client = await _client(settings, store)
        broadcasts = BroadcastClient(client)
        try:
            broadcast_id = await broadcasts.request(op, idempotency_key, contents)
        except RequestRefused as error:
            raise CliError(error.said(idempotency_key="--idempotency-key"), 2) from error
        if not wait:
            print_json({"id": broadcast_id, "broadcast": True, "status": "running"}) if as_json else print(broadcast_id)
            return 0
        if not as_json:
            print(broadcast_id, flush=True)
        shown = await _followed_broadcast(broadcasts, broadcast_id, quiet=as_json)
    print_json(shown) if as_json else print_broadcast(shown)
    return 1 if any(shown["counts"].get(s, 0) for s in [*NOT_DELIVERED, "refused"]) else 0


async def _followed_broadcast(broadcasts: BroadcastClient, broadcast_id: str, *, quiet: bool) -> dict[str, Any]:
    """The broadcast's status once it has completed; unless `quiet`, a line each time its counts change."""
    said = None
    while True:
        shown: dict[str, Any] = await broadcasts.status(broadcast_id)
        line = progress_of_broadcast(shown)
        if not quiet and line != said:
            print(line, flush=True)
            said = line
        if shown["status"] == "completed":
            return shown
        await asyncio.sleep(0.5)


def progress_of_broadcast(shown: dict[str, Any]) -> str:
    ended = ", ".join(f"{status} {n}" for status, n in sorted(shown["counts"].items()))
    return f"{shown['recipients'] - shown['left']} of {shown['recipients']} ended" + (f" ({ended})" if ended else "")


NOTIFICATIONS_LISTED = 20
"""A broadcast's notifications `status --notifications` lists unless told (`--limit`)."""


def print_broadcast(shown: dict[str, Any]) -> None:
    print(f"broadcast {shown['id']}: {shown['status']}, {progress_of_broadcast(shown)}")
    if listed := shown.get("notifications"):
        width = max(len(n["id"]) for n in listed)
        entity_width = max(len("ENTITY"), *(len(n["entity_id"]) for n in listed))
        print(f"{'ID':<{width}}  {'ENTITY':<{entity_width}}  STATUS")
        for n in listed:
            print(f"{n['id']:<{width}}  {n['entity_id']:<{entity_width}}  {n['status']}")
    if shown.get("next_after") is not None:
        print(f"more: --after {shown['next_after']}")


@app.command()
@run_async
async def status(
    notification_id: Id,
    wait: Annotated[bool, typer.Option(help=f"Wait for the outcome; {WAIT_EXIT}")] = False,
    watch: Annotated[
        bool, typer.Option(help="Wait for the outcome showing its progress (each channel); as --wait.")
    ] = False,
    as_json: JsonOption = False,
    notifications: Annotated[
        bool, typer.Option(help="Of a broadcast: list its notifications too, a page at a time (id, entity, status).")
    ] = False,
    only: Annotated[
        str | None,
        typer.Option(
            metavar="STATUS", help="List only its notifications that ended STATUS (sent, failed, refused...)."
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option(metavar="N", help="Notifications listed at most (up to 200).")
    ] = NOTIFICATIONS_LISTED,
    after: Annotated[
        int, typer.Option(metavar="N", help="List from after its Nth recipient (what the last page said).")
    ] = 0,
) -> int:
    """The status of notification ID: live while its saga runs, the recorded view after. Of a broadcast: how many
    of its notifications have ended, by status, and with --notifications or --only, a page of them."""
    from broadcasts import MAX_NOTIFICATIONS_PAGE, BroadcastClient, UnknownBroadcast, checked_status
    from client import RequestRefused

    listed = notifications or only is not None
    if not 1 <= limit <= MAX_NOTIFICATIONS_PAGE or after < 0:
        raise CliError(f"--limit: 1 to {MAX_NOTIFICATIONS_PAGE}; --after: 0 or more", 2)
    if not listed and (limit, after) != (NOTIFICATIONS_LISTED, 0):
        raise CliError(
            "--limit and --after page through a broadcast's notifications: give --notifications or --only", 2
        )
    if only is not None:
        try:
            checked_status(only, "--only")
        except RequestRefused as error:
            raise CliError(str(error), 2) from None
    settings = load_settings()
    async with settings.open_streams() as store:
        client = await _client(settings, store)
        broadcasts = BroadcastClient(client)
        try:
            shown = await broadcasts.status(notification_id)
        except UnknownBroadcast:
            if listed:
                raise CliError(
                    f"{notification_id} is not a broadcast's id: --notifications and --only list a broadcast's", 2
                ) from None
        else:
            if wait or watch:
                shown = await _followed_broadcast(broadcasts, notification_id, quiet=as_json or not watch)
            if listed:  # --only was checked above
                items, more = await broadcasts.notifications(shown["id"], status=only, after=after, limit=limit)
                shown = {**shown, "notifications": items, "next_after": more}
            print_json(shown) if as_json else print_broadcast(shown)
            return 1 if (wait or watch) and any(shown["counts"].get(s, 0) for s in [*NOT_DELIVERED, "refused"]) else 0
        view = await client.status(notification_id)
        if watch and not as_json:
            view = await followed(client, notification_id)
        elif wait or watch:
            await client.result(notification_id)
            view = await client.status(notification_id)
    print_json(view) if as_json else print_view(view)
    return 1 if (wait or watch) and view["status"] in NOT_DELIVERED else 0


@app.command()
@run_async
async def cancel(notification_id: Id, as_json: JsonOption = False) -> None:
    """Cancel notification ID if it has not finished sending (one scheduled with --at, say); what it sent meanwhile
    stays sent. Of a broadcast: it requests no more recipients, and each of its notifications not sent yet is
    cancelled."""
    from broadcasts import BroadcastClient, UnknownBroadcast
    from client import NotCancellable

    settings = load_settings()
    async with settings.open_streams() as store:
        client = await _client(settings, store)
        broadcasts = BroadcastClient(client)
        try:
            try:
                stopped = await broadcasts.cancel(notification_id)
            except UnknownBroadcast:
                view = await client.cancel(notification_id)
            else:
                shown = {**await broadcasts.status(notification_id), "stopped": stopped.stopped}
                print_json(shown) if as_json else print(
                    f"broadcast {shown['id']} cancelled: {stopped.stopped} stopped "
                    f"({stopped.cancelled} notifications cancelled, {stopped.not_requested} recipients not requested)"
                )
                return
        except NotCancellable as error:
            raise CliError(str(error)) from error
    print_json(view) if as_json else print_view(view)


@app.command()
@run_async
async def events(notification_id: Id, as_json: JsonOption = False) -> None:
    """Every record of notification ID across all streams, in the order written."""
    settings = load_settings()
    async with settings.open_streams() as store:
        records = await (await _client(settings, store)).events(notification_id)
    if as_json:
        from client import EventRecord

        print_json([EventRecord.of(r).model_dump(mode="json") for r in records])
        return
    print(f"{'RECORD':>8}  {'TIME':<32}  {'STREAM':<22} {'RECORD ID':<20} TYPE")
    for r in records:
        print(
            f"{r.internal_id:>8}  {r.timestamp_utc.isoformat():<32}  {r.stream:<22} {r.record_id or '-':<20} {r.type}"
        )


@app.command()
@run_async
async def audit(
    email: Annotated[str | None, typer.Option(metavar="ADDRESS", help="What was sent to this email address.")] = None,
    slack_channel: Annotated[
        str | None, typer.Option(metavar="CHANNEL", help="What was posted to CHANNEL or WORKSPACE/CHANNEL.")
    ] = None,
    entity: Annotated[str | None, typer.Option(metavar="ID", help="What was requested for this entity.")] = None,
    as_json: JsonOption = False,
) -> None:
    """What was sent (or attempted) to an address, a Slack channel, or an entity."""
    given = [
        name for name, value in (("--email", email), ("--slack-channel", slack_channel), ("--entity", entity)) if value
    ]
    if len(given) != 1:
        raise CliError("give exactly one of --email, --slack-channel, --entity", 2)
    settings = load_settings()
    async with settings.open_streams() as store:
        client = await _client(settings, store)
        if entity:
            entries: list[Any] = await client.audit_entity(entity)
        elif email:
            entries = await client.audit_email(email)
        else:
            assert slack_channel is not None
            entries = await client.audit_slack(slack_channel)
    if as_json:
        print_json([e.model_dump(mode="json") for e in entries])
        return
    if not entries:
        print(
            f"no notification was requested for entity {entity}"
            if entity
            else f"no email was sent to {email}"
            if email
            else f"no Slack message was sent to {slack_channel}"
        )
        return
    from client import file_summary

    width = max(len(e.notification_id) for e in entries)
    print(f"{'ID':<{width}}  {'REQUESTED':<32}  {'STATUS' if entity else 'OUTCOME':<15} SUBJECT")
    for e in entries:
        if entity:
            print(f"{e.notification_id:<{width}}  {e.requested_at.isoformat():<32}  {e.status:<15} {e.subject}")
        else:
            reason = f" ({e.reason})" if e.reason else ""
            line = f"{e.notification_id:<{width}}  {e.requested_at.isoformat():<32}  {e.outcome:<15} {e.subject}"
            print(line + reason)
        for file in e.attachments:
            print(f"{'':<{width}}  + {file_summary(file)}")


def read_directory(file: Path) -> tuple[list[DirectoryEntry], dict[str, list[str]]]:
    """The entities of a JSON or YAML directory file, and the topics of those that list theirs (`"topics": [...]`),
    or a one-line `CliError` (exit 2) saying what is wrong."""
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise CliError(f"cannot read {file}: {error.strerror}", 2) from error
    except UnicodeDecodeError as error:
        raise CliError(f"{file}: not UTF-8 text (byte {error.start} cannot be decoded)", 2) from error
    yaml_file = file.suffix in (".yaml", ".yml")
    try:
        data = yaml.safe_load(text) if yaml_file else json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        said = str(error).replace("\n", " ")
        raise CliError(f"{file}: malformed {'YAML' if yaml_file else 'JSON'}: {said}", 2) from error
    except RecursionError as error:
        raise CliError(f"{file}: nested too deeply (a directory file is a list of entities)", 2) from error
    listed: dict[int, object] = {}
    if isinstance(data, list):  # an entity's topics are memberships, not a part of its entry
        data = [dict(item) if isinstance(item, dict) else item for item in data]
        for n, item in enumerate(data):
            if isinstance(item, dict) and "topics" in item:
                listed[n] = item.pop("topics")
    try:
        entries = TypeAdapter(list[DirectoryEntry]).validate_python(data, context=ADMISSION)
        topics = {entries[n].id: TypeAdapter(list[str]).validate_python(t) for n, t in listed.items()}
    except ValidationError as error:
        raise CliError(f"{file}: {validation_message(error)}", 2) from error
    ids = [e.id for e in entries]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise CliError(f"{file}: entity ids appear more than once: {', '.join(duplicates)}", 2)
    return entries, topics


@directory_app.command("import")
@run_async
async def directory_import(
    file: Annotated[Path, argument("FILE")],
) -> None:
    """Record every new or changed entity of FILE (a JSON or YAML list of entities) in the directory, and make each
    entity that lists its "topics" a member of those and no others; all or nothing."""
    entries, topics = read_directory(file)
    settings = load_settings()
    async with settings.open_streams(as_owner=True) as owner:  # only the owner of the streams writes the directory
        try:
            imported = await import_entries(owner, entries, topics)
        except ValidationError as error:
            raise CliError(f"{file}: topics: {validation_message(error)}", 2) from error
    print(f"recorded {imported.recorded} entities, {imported.unchanged} unchanged")


@directory_app.command("show")
@run_async
async def directory_show(entity_id: Id) -> None:
    """Entity ID as the directory has it now."""
    entry = await _entry(load_settings(), entity_id)
    print_json(entry.model_dump(mode="json", exclude_none=True))


async def _entry(settings: Settings, entity_id: str) -> DirectoryEntry:
    """The entity's entry as the directory has it now; `CliError` if it has none, or one that cannot be read."""
    async with settings.open_streams() as store:
        entry = await entry_or_why(store.reader(StreamName.ENTITY_DIRECTORY), entity_id)
    if entry is None:
        raise CliError(f"no entity with id {entity_id!r}")
    if isinstance(entry, str):
        raise CliError(f"cannot read the entry of entity {entity_id!r}: {entry}")
    return entry


@preferences_app.command("show")
@run_async
async def preferences_show(entity_id: Id, as_json: JsonOption = False) -> None:
    """What entity ID gets of each category on each of its channels: `send` or `off`, and why."""
    settings = load_settings()
    categories = settings.categories()
    entry = await _entry(settings, entity_id)
    named = [*categories.values(), *(Category(name=n) for n in entry.preferences if n not in categories)]
    decided = {c.name: {ch: _decided(entry, c, ch) for ch in Channel if ch in entry.channels} for c in named}
    if as_json:
        print_json({"entity_id": entity_id, "preferences": entry.preferences, "decided": decided})
        return
    if not decided:
        print(f"no categories: NOTIFY_CATEGORIES_FILE names them, and {entity_id!r} has no preferences")
    for name, channels in decided.items():
        print(f"{name:<24} " + "  ".join(f"{channel}: {said}" for channel, said in channels.items()))


def _decided(entry: DirectoryEntry, category: Category, channel: Channel) -> str:
    if entry.channels[channel] != ChannelPreference.SEND:
        return "off: the entity's channel switch"
    why = category_preference(entry, category, channel)
    return "send" if why is None else f"off: {why}"


@preferences_app.command("set")
@run_async
async def preferences_set(
    entity_id: Id,
    category: Annotated[str, argument("CATEGORY")],
    channel: Annotated[Channel, argument("CHANNEL")],
    preference: Annotated[ChannelPreference, argument("send|opted-out")],
) -> None:
    """Set entity ID's preference for CATEGORY on CHANNEL (recorded with who made it: an operator)."""
    settings = load_settings()
    configured = settings.categories().get(category)
    if configured is None:
        raise CliError(f"{category!r} is not a configured category (NOTIFY_CATEGORIES_FILE)", 2)
    if not configured.opt_out and preference == ChannelPreference.OPTED_OUT:
        raise CliError(f"{category!r} may not be opted out of", 2)
    async with settings.open_streams(as_owner=True) as owner:  # only the owner of the streams writes the directory
        try:
            changed = await change_preferences(owner, entity_id, {category: {channel: preference}}, OPERATOR)
        except ValidationError as error:
            raise CliError(validation_message(error), 2) from error
    if changed is None:
        raise CliError(f"no entity with id {entity_id!r}")
    print(f"{entity_id}: {category} on {channel}: {preference}")


@preferences_app.command("link")
@run_async
async def preferences_link(entity_id: Id) -> None:
    """Print the address of entity ID's preference page (what its emails link to), signed as they are."""
    settings = load_settings()
    if settings.public_url is None or settings.link_secret is None:
        raise CliError("set NOTIFY_PUBLIC_URL and NOTIFY_LINK_SECRET: a preference page's link needs both", 2)
    async with settings.open_streams() as store:
        entry = await entry_or_why(store.reader(StreamName.ENTITY_DIRECTORY), entity_id)
    if entry is None:
        raise CliError(f"no entity with id {entity_id!r}")
    print(preference_page(settings.public_url, settings.link_secret.get_secret_value(), entity_id))


Topic = Annotated[str, argument("NAME")]
Entities = Annotated[list[str], argument("ENTITY...")]


@topic_app.command("add")
@run_async
async def topic_add(topic: Topic, entities: Entities) -> None:
    """Make each ENTITY (in the directory) a member of topic NAME, which is made if it is new."""
    await _change_members(topic, entities, member=True)


@topic_app.command("remove")
@run_async
async def topic_remove(topic: Topic, entities: Entities) -> None:
    """Make each ENTITY no longer a member of topic NAME."""
    await _change_members(topic, entities, member=False)


async def _change_members(topic: str, entities: list[str], member: bool) -> None:
    settings = load_settings()
    async with settings.open_streams(as_owner=True) as owner:  # only the owner of the streams writes the directory
        try:
            changed, unchanged = await change_members(owner, topic, entities, member)
        except ValidationError as error:
            raise CliError(validation_message(error), 2) from error
        except UnknownEntities as error:
            raise CliError(str(error), 2) from error
    done, already = ("added", "members already") if member else ("removed", "not members")
    print(f"topic {topic!r}: {changed} {done}, {unchanged} {already}")


@topic_app.command("show")
@run_async
async def topic_show(topic: Topic, as_json: JsonOption = False) -> None:
    """The members of topic NAME now, one id a line."""
    settings = load_settings()
    async with settings.open_streams() as store:
        found = await members(store.reader(StreamName.ENTITY_DIRECTORY), topic)
    if found is None:
        raise CliError(f"no topic {topic!r}")
    if as_json:
        print_json({"topic": topic, "members": found})
        return
    for entity_id in found:
        print(entity_id)


@topic_app.command("list")
@run_async
async def topic_list(as_json: JsonOption = False) -> None:
    """Every topic, with how many members it has now."""
    settings = load_settings()
    async with settings.open_streams() as store:
        sizes = await topic_sizes(store.reader(StreamName.ENTITY_DIRECTORY))
    if as_json:
        print_json([{"topic": name, "members": size} for name, size in sizes.items()])
        return
    if not sizes:
        print(f"no topics: make one with `{command('starter.py', 'topic', 'add', 'NAME', 'ENTITY')}`")
    for name, size in sizes.items():
        print(f"{name:<32} {size} member{'' if size == 1 else 's'}")


Address = Annotated[str, argument("ADDRESS")]


@suppression_app.command("list")
@run_async
async def suppression_list(as_json: JsonOption = False) -> None:
    """Every address suppressed now, with since when, who suppressed it and why."""
    settings = load_settings()
    async with settings.open_streams() as store:
        held = await suppressions(store.reader(StreamName.EMAIL_EVENT))
    if as_json:
        print_json([s.model_dump(mode="json") for s in held])
        return
    if not held:
        print("no address is suppressed")
    for s in held:
        print(f"{s.address}  since {s.timestamp_utc:%Y-%m-%d %H:%M:%S} UTC  {s.source}: {s.reason}")


@suppression_app.command("add")
@run_async
async def suppression_add(
    address: Address,
    reason: Annotated[str, typer.Option(metavar="TEXT", help="Why (shown with every notification it stops).")] = (
        "suppressed by an operator"
    ),
) -> None:
    """Suppress ADDRESS: no email is sent to it (each notification's email channel says `suppressed`, and its
    fallback channel is used) until it is removed."""
    await _change_suppression(address, True, reason)


@suppression_app.command("remove")
@run_async
async def suppression_remove(
    address: Address,
    reason: Annotated[str, typer.Option(metavar="TEXT", help="Why it may be sent to again.")] = (
        "lifted by an operator"
    ),
) -> None:
    """Send to ADDRESS again."""
    await _change_suppression(address, False, reason)


async def _change_suppression(address: str, suppressed: bool, reason: str) -> None:
    settings = load_settings()
    async with settings.open_streams() as store:
        try:
            changed = await change_suppression(store, address, suppressed, reason, SuppressionSource.OPERATOR)
        except ValidationError as error:
            raise CliError(validation_message(error), 2) from error
    state = "suppressed" if suppressed else "not suppressed"
    print(f"{address.lower()}: {state}{'' if changed else ' already'}")


@webhook_app.command("add")
@run_async
async def webhook_add(
    url: Annotated[str, argument("URL")],
    events: Annotated[
        str | None,
        typer.Option(metavar="EVENTS", help="The events to send, comma-separated (default: every one)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Send signed webhooks to URL and print the endpoint's id and its signing secret, this once."""
    from domain.webhooks import WebhookEventType
    from streams.webhooks import add_endpoint
    from webhooks import UnsafeUrl, checked_url

    try:
        wanted = [WebhookEventType(e.strip()) for e in (events or "").split(",") if e.strip()]
    except ValueError as error:
        raise CliError(f"--events: {error} ({', '.join(WebhookEventType)})", 2) from error
    settings = load_settings()
    try:
        await checked_url(url, settings.webhook_allow_private)
    except UnsafeUrl as error:
        raise CliError(f"URL: {error}", 2) from error
    async with settings.open_streams(as_owner=True) as store:  # only the owner of the streams writes endpoints
        added = await add_endpoint(store, url, wanted)
    if as_json:
        print_json({"id": added.id, "url": added.url, "events": added.events, "secret": added.secret})
    else:
        print(f"webhook {added.id} to {added.url}; its secret is shown this once:", file=sys.stderr)
        print(added.id)
        print(added.secret)


@webhook_app.command("list")
@run_async
async def webhook_list(as_json: JsonOption = False) -> None:
    """Every endpoint: its events, and whether it is enabled (or since when, and why, it is disabled)."""
    from streams.webhooks import endpoints

    settings = load_settings()
    async with settings.open_streams() as store:
        shown = [e.shown for e in await endpoints(store)]
    if as_json:
        print_json([e.model_dump(mode="json") for e in shown])
        return
    if not shown:
        print(f"no webhooks: add one with `{command('starter.py', 'webhook', 'add', 'URL')}`")
    for e in shown:
        state = "enabled" if e.enabled else f"disabled since {e.disabled_at:%Y-%m-%d %H:%M:%S} UTC: {e.disabled_reason}"
        print(f"{e.id}  {e.url}  {','.join(e.events)}  {state}")


@webhook_app.command("remove")
@run_async
async def webhook_remove(webhook_id: Id) -> None:
    """Remove an endpoint: nothing more is sent to it, retries included."""
    from streams.webhooks import UnknownWebhook, remove_endpoint

    settings = load_settings()
    async with settings.open_streams(as_owner=True) as store:
        try:
            await remove_endpoint(store, webhook_id)
        except UnknownWebhook as error:
            raise CliError(str(error)) from error
    print(f"removed webhook {webhook_id}")


@webhook_app.command("deliveries")
@run_async
async def webhook_deliveries(webhook_id: Id, as_json: JsonOption = False) -> None:
    """An endpoint's deliveries, newest first: each one's event, status, attempts and last answer."""
    from streams.webhooks import UnknownWebhook, deliveries, endpoint

    settings = load_settings()
    async with settings.open_streams() as store:
        if await endpoint(store, webhook_id) is None:
            raise CliError(str(UnknownWebhook(webhook_id)))
        found = await deliveries(store, webhook_id)
    if as_json:
        print_json([d.model_dump(mode="json") for d in found])
        return
    if not found:
        print("no deliveries yet")
    for d in found:
        answer = d.error or (f"HTTP {d.http_status}" if d.http_status else "")
        print(
            f"{d.webhook_id}  {d.event_type}  {d.notification_id or '-'}  {d.status}  {d.attempts} attempt"
            f"{'' if d.attempts == 1 else 's'}  {answer}  {d.first_at:%Y-%m-%d %H:%M:%S}..{d.last_at:%H:%M:%S} UTC"
        )


@streams_app.command("prune")
@run_async
async def streams_prune(
    before: Annotated[
        str | None, typer.Option(metavar="TIME", help="An ISO 8601 date or time (local time if no offset is given).")
    ] = None,
    older_than: Annotated[
        int | None, typer.Option(metavar="DAYS", help="Prune what ended more than this many days ago.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Remove every record of the notifications and broadcasts that ended (or were refused) before a time, in every
    stream, with their tags and handling, and the files nobody names then, in small batches while the service runs.
    What is still under way is kept, and so are the directory and the API keys. Run it with the owner's URL
    (NOTIFY_STREAMS_URL)."""
    cutoff = _prune_cutoff(before, older_than)
    settings = load_settings()
    async with settings.open_streams(as_owner=True) as store:
        pruned = await store.prune(cutoff)
    if as_json:
        print_json({"before": cutoff.isoformat(), **dataclasses.asdict(pruned)})
    else:
        print(
            f"pruned {pruned.notifications} notifications and {pruned.broadcasts} broadcasts ({pruned.records} records)"
            f" that ended before {cutoff}, and {pruned.contents} files nobody names"
        )


def _prune_cutoff(before: str | None, older_than: int | None) -> datetime:
    if (before is None) == (older_than is None):
        raise CliError("give --before DATE or --older-than DAYS (one of them)", 2)
    now = datetime.now(UTC)
    if older_than is not None:
        most = (now - SEND_AT_EARLIEST).days
        if not 0 <= older_than <= most:
            raise CliError(
                f"--older-than {older_than}: a number of days from 0 to {most} (since {SEND_AT_EARLIEST:%Y})", 2
            )
        return now - timedelta(days=older_than)
    assert before is not None
    moment = parse_moment("--before", before, "an ISO 8601 date or time such as 2026-10-01")
    if moment > now:
        raise CliError(f"--before {before} is in the future: that would prune whatever ends until then", 2)
    return moment


def postgres_url(settings: Settings) -> str:
    url = settings.streams_location
    if not url.startswith(("postgresql://", "postgres://")):
        raise CliError(
            f"NOTIFY_STREAMS_URL is {url}: only PostgreSQL is migrated and granted this way (SQLite streams "
            "bring their schema up to date when opened)",
            2,
        )
    return url


@db_app.command("migrate")
@run_async
async def db_migrate() -> None:
    """Bring the streams schema up to date (run it with a URL whose user may create tables)."""
    from streams.postgres import SCHEMA_VERSION, migrate

    applied = await migrate(postgres_url(load_settings()))
    for name in applied:
        print(f"applied {name}")
    print(f"the streams schema is at version {SCHEMA_VERSION}")


@db_app.command("grant")
@run_async
async def db_grant() -> None:
    """Create the notify_client, notify_producer, notify_consumer and notify_handler roles if missing, and grant each
    its part."""
    from streams.postgres import grant

    await grant(postgres_url(load_settings()))
    print("notify_client may request notifications (notify_request) and nothing else: give it to outside producers")
    print("notify_producer may append to the service's streams and take ids, and cannot read them")
    print("notify_consumer may read the streams and handling statuses, and cannot write")
    print("notify_handler may keep handling statuses, and cannot read or write records")
    print("connect each kind of handle as its role: NOTIFY_STREAMS_PRODUCER_URL, _CONSUMER_URL, _HANDLER_URL")


@app.command()
@run_async
async def serve() -> None:
    """Run the HTTP API on NOTIFY_API_HOST:NOTIFY_API_PORT (interactive docs at /docs), with the web page at /,
    metrics at /metrics and the codec server at /codec, until interrupted."""
    from api.app import create_app, owner_store, serving
    from client import connect

    settings = load_settings()
    settings.categories()  # a categories file that cannot be used stops it at once, in one line
    logs.configure(settings.log_format)
    async with settings.open_streams() as store, owner_store(settings, store) as owner:
        temporal = await connect(settings, lazy=True)
        app = create_app(store, temporal, settings, owner=owner)
        async with serving(app, settings.api_host, settings.api_port) as url:
            logs.say(f"API at {url} (docs at {url}/docs, the web page at {url}/); Ctrl-C stops it")
            await _interrupted(store)


async def _interrupted(store: StreamStore) -> None:
    """Return on SIGINT or SIGTERM; raise why once the store cannot be used as it was opened (its file replaced,
    say), stopping as the worker does then."""
    from worker import until_stopped

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await until_stopped(store, stop)


ScopeOption = Annotated[list[str], typer.Option("--scope", metavar="SCOPE", help="send, read or admin; repeatable.")]


@apikey_app.command("create")
@run_async
async def apikey_create(
    name: Annotated[str, argument("NAME")],
    scope: ScopeOption = [],  # noqa: B006
    as_json: JsonOption = False,
) -> None:
    """Issue an API key for NAME, who holds it (one key per name), and print it, this once: only its hash is
    kept."""
    from api.keys import ApiKeys, KeyNameTaken

    scopes = _scopes(scope)
    settings = load_settings()
    async with settings.open_streams(as_owner=True) as store:
        try:
            key = await ApiKeys(store).create(name, scopes)
        except ValidationError as error:
            raise CliError(f"NAME: {validation_message(error)}", 2) from error
        except KeyNameTaken as error:
            raise CliError(str(error), 2) from error
    if as_json:
        print_json({"name": name, "key": key, "scopes": sorted(scopes)})
    else:
        print(f"API key {name!r} ({', '.join(sorted(scopes))}); it is shown this once:", file=sys.stderr)
        print(key)


def _scopes(given: Sequence[str]) -> list[Scope]:
    if not given:
        raise CliError("give at least one --scope (send, read, admin)", 2)
    try:
        return [Scope(s) for s in given]
    except ValueError as error:
        raise CliError(f"--scope: {error} (send, read or admin)", 2) from error


@apikey_app.command("list")
@run_async
async def apikey_list(as_json: JsonOption = False) -> None:
    """The keys held now (never the keys themselves)."""
    from api.keys import ApiKeys

    settings = load_settings()
    async with settings.open_streams(as_owner=True) as store:
        keys = await ApiKeys(store).listed()
    if as_json:
        print_json([{"name": k.name, "scopes": k.scopes, "issued_at": k.issued_at.isoformat()} for k in keys])
        return
    if not keys:
        print(f"no API keys: make one with `{command('starter.py', 'apikey', 'create', 'NAME', '--scope', 'read')}`")
    for k in keys:
        print(f"{k.name:<24} {','.join(k.scopes):<18} issued {k.issued_at.isoformat()}")


@apikey_app.command("revoke")
@run_async
async def apikey_revoke(name: Annotated[str, argument("NAME")]) -> None:
    """Revoke the key of NAME: it is refused from the next request on."""
    from api.keys import ApiKeys, UnknownKey

    settings = load_settings()
    async with settings.open_streams(as_owner=True) as store:
        try:
            await ApiKeys(store).revoke(name)
        except UnknownKey as error:
            raise CliError(str(error)) from error
    print(f"revoked API key {name!r}")


SAMPLE_DIRECTORY = Path(__file__).resolve().parent / "entities.json"


DEMO_KEY = "demo"


@app.command()
@run_async
async def demo(
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Then serve the API until Ctrl-C.")] = True,
) -> int:
    """Run everything on the embedded default: the Temporal dev server, a worker, a local mail sink and a local
    Slack sink; import the sample directory (entities.json), send user-1 a notification and show its status; then
    serve the HTTP API, with a key to try it, until Ctrl-C. Its data is kept apart, in .notify/demo."""
    from api.app import create_app, owner_store, serving
    from api.keys import ApiKeys
    from client import NotificationClient
    from sinks import local_sinks
    from worker import dev_server, refuse_taken_ports, running_workers, serve_metrics

    entries, topics = read_directory(SAMPLE_DIRECTORY)
    settings = demo_settings(load_settings())
    refuse_taken_ports(settings, dev=True, sinks=True, api=serve)
    with local_sinks(settings) as local:
        settings = local.settings
        print(local.describe())
        serve_metrics(settings)
        async with (
            dev_server(settings) as temporal,
            settings.open_streams(create=True) as store,
            owner_store(settings, store) as owner,  # which alone writes the directory and the API keys
            running_workers(temporal, store, settings),
        ):
            await import_entries(owner, entries, topics)
            client = NotificationClient(store, temporal, settings)
            notification_id = await client.request(
                SendNotificationToEntityOp(
                    entity_id="user-1",
                    subject="Hello from notify",
                    body="This notification was sent by the durable notification saga.",
                    html_body="<p>This notification was sent by the <b>durable notification saga</b>.</p>",
                )
            )
            print(f"requested notification {notification_id}")
            view = await client.result(notification_id)
            print_view(view.model_dump(mode="json"))
            for m in local.mail.messages:
                print(f"mail to {', '.join(m.recipients)} landed in {m.path}")
            for posted in local.slack.messages:
                print(f"Slack message to channel {posted.channel} landed in {local.slack.folder}/messages.jsonl")
            if serve:
                keys = ApiKeys(owner)
                if await keys.active(DEMO_KEY) is not None:
                    await keys.revoke(DEMO_KEY)  # a new key each run: the last one was shown once
                key = await keys.create(DEMO_KEY, list(Scope))
                app = create_app(store, temporal, settings, owner=owner)
                async with serving(app, settings.api_host, settings.api_port) as url:
                    print(try_the_api(url, key, notification_id), flush=True)
                    await _interrupted(store)
    return 0 if view.status == NotificationStatus.SENT else 1


def demo_settings(settings: Settings) -> Settings:
    """The demo's settings: its data in a folder of its own in the data dir (`.notify/demo`), its streams there
    whatever `NOTIFY_STREAMS_URL` says, so that a worker's streams and Temporal's database, and the ids they issue,
    are never the demo's."""
    apart = ("streams_url", "streams_producer_url", "streams_consumer_url", "streams_handler_url")
    return settings.model_copy(update={"data_dir": settings.data_dir / "demo", **dict.fromkeys(apart)})


@temporal_app.command("setup")
@run_async
async def temporal_setup() -> int:
    """Register the saga's search attributes (NotifyEntity, NotifyStatus, NotifyChannels) in the namespace, once per
    namespace of a cluster (`worker.py --dev` registers them on the dev server it starts); what is there is kept."""
    from temporalio.service import RPCError

    from client import connect, missing_search_attributes, register_search_attributes
    from workflows import search

    settings = load_settings()
    temporal = await connect(settings)
    namespace = settings.temporal_namespace
    try:
        missing = await missing_search_attributes(temporal, namespace)
        if missing:
            await register_search_attributes(temporal, namespace, missing)
    except RPCError as error:
        raise CliError(
            f"Temporal refused to register search attributes in namespace {namespace!r} ({error.message}): on "
            "Temporal Cloud add NotifyEntity (Keyword), NotifyStatus (Keyword) and NotifyChannels (KeywordList) "
            "with tcld or the Cloud UI"
        ) from error
    if missing:
        print(f"registered the search attributes {', '.join(missing)} in namespace {namespace!r}")
    else:
        print(f"the search attributes {', '.join(k.name for k in search.KEYS)} are in namespace {namespace!r} already")
    return 0


def try_the_api(url: str, key: str, notification_id: str) -> str:
    auth = f"-H 'Authorization: Bearer {key}'"
    request = '{"entity": "user-1", "subject": "Hello over HTTP", "body": "Requested with curl."}'
    return "\n".join(
        [
            f"Web page at {url}/notifications/{notification_id} (sign in with the key below; {url}/ is the "
            f"overview, {url}/notifications the list)",
            f"API at {url} (interactive docs at {url}/docs)",
            f"API key {DEMO_KEY!r} (send, read, admin): {key}",
            "Try it:",
            f"  curl -s -X POST {url}/v1/notifications {auth} -H 'Content-Type: application/json' -d '{request}'",
            f"  curl -s {url}/v1/notifications/{notification_id} {auth}",
            f"  curl -s '{url}/v1/audit/email?address=test@example.com' {auth}",
            "Ctrl-C stops everything.",
        ]
    )


if __name__ == "__main__":
    app()
