"""The web page: an overview of the notifications that ended in the last hour and day, recent notifications, a search
(an entity or a notification id: its page; else an email address or a Slack channel: the audit), and a page per
notification with its view, each channel's outcome, the escalation, the files it names (never their bytes), the messages
as sent and the timeline of its records, each of which opens to its payload. Server-rendered (Jinja2), every asset
served from here. It asks once for an API key with the `read` scope and keeps it in an HttpOnly, SameSite=Strict cookie,
and takes a sign-in or sign-out only from its own pages; a page that shows a notification still under way refreshes its
main part."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Cookie, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context
from jinja2.runtime import Context
from pydantic import ValidationError

from api.deps import AppParts, KeyRefused, authorized
from api.keys import Scope
from api.problems import problem
from broadcasts import BroadcastClient, UnknownBroadcast
from client import UNDECIDED, EventRecord, NotificationClient, UnknownNotification
from commands import command
from domain import (
    Attachment,
    Channel,
    ExecuteOpRequestedEvent,
    NotificationStatus,
    SendEmailOp,
    SendEmailRequestedEvent,
    SendNotificationRequestedEvent,
    SendNotificationToEntityOp,
    SendSlackMessageOp,
    SendSlackMessageRequestedEvent,
    TagName,
    recipient_id,
)
from streams import Record, StreamName
from streams.directory import entry_or_why
from streams.store import ViewCounts, unreadable
from streams.webhooks import endpoints

HERE = Path(__file__).parents[1]
COOKIE = "notify_key"
COOKIE_DAYS = 30
LIVE_SECONDS = 2
"""How often a page with a notification under way asks for its main part again."""
PAGE = 25
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
LINKED_PAGE_HEADERS = SECURITY_HEADERS | {"Referrer-Policy": "no-referrer"}
"""The headers of a page reached by a signed link: the page's own, but that no Referer carries the link's token
anywhere, not even to this site."""

WINDOWS = {"Last hour": 60, "Last day": 24 * 60}
"""The overview's windows, in whole minutes up to the current one."""
CHART_MINUTES = 60
CHART_HEIGHT = 100
BAR_WIDTH = 10
"""The chart's size in SVG units: one bar a minute."""
STATUS_ORDER = [*NotificationStatus]
K = TypeVar("K")

templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["moment"] = lambda value: (
    datetime.fromisoformat(str(value)).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"
)
templates.env.filters["pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False)


def _size(size: int) -> str:
    """A file's size as people read it: bytes below 1 KiB, then KiB, MiB or GiB to one decimal."""
    if size < 1024:
        return f"{size} byte{'' if size == 1 else 's'}"
    scaled = size / 1024
    for unit in ("KiB", "MiB"):
        if scaled < 1024:
            return f"{scaled:.1f} {unit}"
        scaled /= 1024
    return f"{scaled:.1f} GiB"


templates.env.filters["size"] = _size


def _path(request: Request, name: str, /, **params: Any) -> str:
    """The path of a route or an asset, never a URL naming the host the request's `Host` header gave."""
    return f"{request.scope.get('root_path', '')}{request.app.url_path_for(name, **params)}"


@pass_context
def _path_in(context: Context, name: str, /, **params: Any) -> str:
    return _path(context["request"], name, **params)


templates.env.globals["url_for"] = _path_in
router = APIRouter(include_in_schema=False)
static = StaticFiles(directory=HERE / "static")


class SignIn(Exception):
    """The page needs a key: to the sign-in form, then back."""


async def _signed_in(app: AppParts, key: Annotated[str | None, Cookie(alias=COOKIE)] = None) -> NotificationClient:
    """The client, for a request whose cookie holds a key with the `read` scope."""
    try:
        await authorized(app.keys, key, Scope.READ)
    except KeyRefused as refused:
        raise SignIn from refused
    return app.client


SignedIn = Annotated[NotificationClient, Depends(_signed_in)]


def _render(request: Request, template: str, status_code: int = 200, live: bool = False, **values: Any) -> Response:
    """The page, or only its main part when the page's script asks for it (`X-Notify-Part: main`)."""
    values |= {"signed_in": template != "sign_in.html", "live": live, "live_every": LIVE_SECONDS}
    headers = SECURITY_HEADERS | {"X-Notify-Live": "1" if live else "0"}
    if request.headers.get("X-Notify-Part") == "main":
        page = templates.get_template(template)
        context = page.new_context({"request": request, **values})
        body = "".join(page.blocks["main"](context))
        return HTMLResponse(body, status_code=status_code, headers=headers)
    return templates.TemplateResponse(request, template, values, status_code=status_code, headers=headers)


@dataclass(frozen=True)
class BarPart:
    """A status's part of a minute's bar."""

    status: str
    count: int
    y: float
    height: float


@dataclass(frozen=True)
class Bar:
    """The notifications that ended in one minute, by status, as the chart draws them."""

    minute: datetime
    x: int
    parts: list[BarPart]

    @property
    def title(self) -> str:
        counted = ", ".join(f"{p.count} {p.status.replace('_', ' ')}" for p in self.parts)
        return f"{self.minute:%H:%M} UTC: {counted}"


@dataclass(frozen=True)
class Overview:
    """What the overview shows of `ViewCounts`: each count over each window, and the last hour's chart."""

    windows: list[str]
    totals: list[int]
    statuses: dict[str, list[int]]
    channels: dict[tuple[str, str], list[int]]
    bars: list[Bar]
    peak: int

    @classmethod
    def of(cls, counts: ViewCounts, minute: datetime) -> Overview:
        """`counts` up to the current `minute`, in each of `WINDOWS`."""
        starts = [minute - timedelta(minutes=m - 1) for m in WINDOWS.values()]
        statuses = _windowed(((at, s, n) for (at, s), n in counts.statuses.items()), starts)
        statuses = {s: statuses[s] for s in sorted(statuses, key=_status_rank)}
        channels = _windowed(((at, (c, o), n) for (at, c, o), n in counts.channels.items()), starts)
        per_minute: dict[datetime, Counter[str]] = {}
        for (at, status), n in counts.statuses.items():
            per_minute.setdefault(at, Counter())[status] += n
        chart = [minute - timedelta(minutes=CHART_MINUTES - 1 - i) for i in range(CHART_MINUTES)]
        peak = max((sum(per_minute.get(at, Counter()).values()) for at in chart), default=0)
        return cls(
            windows=list(WINDOWS),
            totals=[sum(row[i] for row in statuses.values()) for i in range(len(starts))],
            statuses=statuses,
            channels=dict(sorted(channels.items())),
            bars=[_bar(i, at, per_minute.get(at, Counter()), max(peak, 1)) for i, at in enumerate(chart)],
            peak=peak,
        )


def _windowed(counted: Iterable[tuple[datetime, K, int]], starts: list[datetime]) -> dict[K, list[int]]:
    """Counts by key, summed over each window (from its start on)."""
    rows: dict[K, list[int]] = {}
    for at, key, n in counted:
        row = rows.setdefault(key, [0] * len(starts))
        for i, start in enumerate(starts):
            row[i] += n if at >= start else 0
    return rows


def _status_rank(status: str) -> int:
    return STATUS_ORDER.index(NotificationStatus(status)) if status in STATUS_ORDER else len(STATUS_ORDER)


def _bar(i: int, minute: datetime, counts: Counter[str], scale: int) -> Bar:
    """The `i`th bar of the chart: its statuses stacked from the bottom, in their order, `scale` its full height."""
    parts, top = [], float(CHART_HEIGHT)
    for status in sorted(counts, key=_status_rank):
        height = CHART_HEIGHT * counts[status] / scale
        top -= height
        parts.append(BarPart(status, counts[status], round(top, 2), round(height, 2)))
    return Bar(minute, i * BAR_WIDTH, parts)


@router.get("/", name="page_overview", dependencies=[Depends(_signed_in)])
async def overview(request: Request, app: AppParts) -> Response:
    """The notifications that ended in the last hour and day (their views), counted by the store in one query; and
    each webhook endpoint that is disabled."""
    minute = datetime.now(UTC).replace(second=0, microsecond=0)
    counts = await app.store.view_counts(minute - timedelta(minutes=max(WINDOWS.values()) - 1))
    return _render(
        request,
        "overview.html",
        overview=Overview.of(counts, minute),
        chart_size=(CHART_MINUTES * BAR_WIDTH, CHART_HEIGHT),
        bar_width=BAR_WIDTH - 2,
        under_way=UNDECIDED,
        disabled_webhooks=[e.shown for e in await endpoints(app.store) if e.disabled is not None],
    )


@router.get("/notifications", name="page_recent")
async def recent(
    request: Request,
    client: SignedIn,
    entity: str | None = None,
    status: str | None = None,
    before: int | None = None,
) -> Response:
    chosen = NotificationStatus(status) if status in set(NotificationStatus) else None
    views, last = await client.recent(entity_id=entity or None, status=chosen, limit=PAGE, before=before)
    older = None
    if last is not None:
        query = {k: v for k, v in (("entity", entity), ("status", chosen)) if v} | {"before": last}
        older = f"{_path(request, 'page_recent')}?{urlencode(query)}"
    return _render(
        request,
        "recent.html",
        live=any(v["status"] in UNDECIDED for v in views),
        views=views,
        entity=entity,
        chosen_status=chosen,
        statuses=list(NotificationStatus),
        older=older,
    )


@router.get("/search", name="page_search")
async def search(
    request: Request, client: SignedIn, app: AppParts, address: str, channel: Channel | None = None
) -> Response:
    """What the search box names, looked for in this order (as its title says): an entity in the directory, its
    notifications (an id may hold an `@`); a notification id, its page; an email address (it has an `@`) or else a
    Slack channel (`CHANNEL` or `WORKSPACE/CHANNEL`), what was sent there. An entity's or a notification's id holds no
    `/`: `WORKSPACE/CHANNEL` is always a channel. With `channel`, `address` is that channel's at once (the links from a
    notification's channels: an address that is also an entity's id still opens its audit)."""
    address = address.strip()
    if channel is None and address:
        if await entry_or_why(app.store.reader(StreamName.ENTITY_DIRECTORY), address) is not None:
            return _to(f"{_path(request, 'page_recent')}?{urlencode({'entity': address})}")
        notification_id = await client.full_id(address)
        requests = app.store.reader(StreamName.CLIENT_OPERATION)
        if await requests.latest(notification_id, type=ExecuteOpRequestedEvent.__name__) is not None:
            return _to(_path(request, "page_notification", notification_id=notification_id))
    email = channel == Channel.EMAIL if channel else "@" in address
    deliveries = await (client.audit_email(address) if email else client.audit_slack(address))
    return _render(
        request,
        "search.html",
        live=any(d.outcome == "sending" for d in deliveries),
        address=address,
        channel_name="Email" if email else "Slack",
        deliveries=deliveries,
    )


def _to(path: str) -> Response:
    return RedirectResponse(path, status_code=303, headers=SECURITY_HEADERS)


@dataclass(frozen=True)
class Message:
    """A message as a channel's requested event holds it (what was sent, or is being sent, to whom), or as the
    request asked for it (`channel` None: not sent on any channel)."""

    channel: Channel | None
    to: str
    text: str
    subject: str | None = None
    html: str | None = None
    slack_text: str | None = None
    """The request's own Slack text (a Slack message's text is `text`)."""
    for_team: bool = False
    """Sent to the internal team (the escalation), not to the entity."""
    files: tuple[Attachment, ...] = ()
    """The files it carries, as its operation names them (a Slack message carries no inline image)."""


Holder = (
    SendEmailRequestedEvent | SendSlackMessageRequestedEvent | SendNotificationRequestedEvent | ExecuteOpRequestedEvent
)
"""A record that holds a message."""

HOLDERS: dict[tuple[StreamName, str], type[Holder]] = {
    (StreamName.EMAIL_EVENT, SendEmailRequestedEvent.__name__): SendEmailRequestedEvent,
    (StreamName.SLACK_EVENT, SendSlackMessageRequestedEvent.__name__): SendSlackMessageRequestedEvent,
    (StreamName.NOTIFICATION_EVENT, SendNotificationRequestedEvent.__name__): SendNotificationRequestedEvent,
    (StreamName.CLIENT_OPERATION, ExecuteOpRequestedEvent.__name__): ExecuteOpRequestedEvent,
}
"""The records that hold a message, by stream and type: each channel's requested event, and the request."""


def _messages(view: dict[str, Any], records: list[Record]) -> tuple[list[Message], tuple[Attachment, ...], list[str]]:
    """The messages the channels' requested events hold, the entity's first, and the message the request asked for
    before them when none went to the entity; the files the request named; and why any of those records cannot be
    read."""
    escalation = (view.get("escalation") or {}).get("channels") or {}
    team = {(channel, c.get("channel_operation_id")) for channel, c in escalation.items()}
    sent: list[Message] = []
    asked: list[Message] = []
    unreadable_records: list[str] = []
    for record in records:
        model = HOLDERS.get((StreamName(record.stream), record.type))
        if model is None:
            continue
        try:
            operation = model.model_validate_json(record.payload).operation
        except ValidationError as error:
            unreadable_records.append(unreadable(record, error))
            continue
        if isinstance(operation, SendNotificationToEntityOp):
            asked.append(
                Message(
                    None,
                    operation.entity_id,
                    operation.body,
                    operation.subject,
                    operation.html_body,
                    operation.slack_text,
                    files=tuple(operation.attachments),
                )
            )
        elif isinstance(operation, SendEmailOp | SendSlackMessageOp):
            sent.append(_sent(operation, (operation.delivery_channel, operation.channel_operation_id) in team))
    sent.sort(key=lambda m: (m.for_team, list(Channel).index(m.channel or Channel.EMAIL)))  # the entity's first
    to_the_entity = any(not m.for_team for m in sent)
    files = asked[0].files if asked else ()
    return (sent if to_the_entity else asked[:1] + sent), files, unreadable_records


def _sent(operation: SendEmailOp | SendSlackMessageOp, for_team: bool) -> Message:
    if isinstance(operation, SendEmailOp):
        to = ", ".join(m.address for m in operation.to)
        return Message(
            Channel.EMAIL,
            to,
            operation.text_body,
            operation.subject,
            operation.html_body,
            for_team=for_team,
            files=tuple(operation.attachments),
        )
    slack = f"{operation.workspace}/{operation.channel}"
    return Message(Channel.SLACK, slack, operation.text, for_team=for_team, files=tuple(operation.attachments))


def _why_no_channel(view: dict[str, Any]) -> str:
    """What happened to a notification that has no channel, from its view, in words: that it has none yet, or was
    cancelled first, and why (its failures, which the page then shows here alone). The saga's stages, and how each
    ended, are the timeline's to show."""
    status, outcome = view["status"], view.get("outcome") or {}
    failures = "; ".join(outcome.get("failures") or [])
    why = f": {failures}." if failures else "."
    if status in UNDECIDED:
        when = " (they are chosen when it is sent)" if status == NotificationStatus.SCHEDULED else ""
        return f"No channel yet{when}{why}"
    if status == NotificationStatus.CANCELLED:
        return f"Cancelled before any channel was sent{why}"
    return f"No channel was sent{why}"


@router.get("/notifications/{notification_id}", name="page_notification")
async def notification(request: Request, client: SignedIn, notification_id: str) -> Response:
    try:
        view = await client.status(notification_id)
        records = await client.events(notification_id)
    except UnknownNotification as error:
        return _render(request, "missing.html", status_code=404, error=str(error))
    messages, files, unreadable_messages = _messages(view, records)
    undecided = view["status"] in UNDECIDED
    return _render(
        request,
        "notification.html",
        live=undecided,
        view=view,
        undecided=undecided,
        no_channel=_why_no_channel(view),
        messages=messages,
        files=files,
        unreadable_messages=unreadable_messages,
        records=[EventRecord.of(r) for r in records],
        broadcast_id=next((r.tag(TagName.BROADCAST_ID) for r in records if r.tag(TagName.BROADCAST_ID)), None),
    )


FIRST_RECIPIENTS = 20
"""Recipients' notifications a broadcast's page links to, from the first."""


@router.get("/broadcasts/{broadcast_id}", name="page_broadcast")
async def broadcast(request: Request, client: SignedIn, broadcast_id: str) -> Response:
    """A broadcast's progress: how many of its notifications have ended, by status; live until every one has."""
    try:
        shown = await BroadcastClient(client).status(broadcast_id)
    except UnknownBroadcast as error:
        return _render(request, "missing.html", status_code=404, error=str(error))
    first = [recipient_id(shown["id"], n) for n in range(1, min(shown["recipients"], FIRST_RECIPIENTS) + 1)]
    return _render(request, "broadcast.html", live=shown["status"] == "running", shown=shown, first=first)


@router.get("/sign-in", name="page_sign_in_form")
async def sign_in_form(request: Request, next: str = "/") -> Response:
    return _sign_in_page(request, next=_local(next))


def _sign_in_page(request: Request, status_code: int = 200, **values: Any) -> Response:
    """The sign-in form, which says how to make a key it takes."""
    create_key = command("starter.py", "apikey", "create", "NAME", "--scope", "read")
    return _render(request, "sign_in.html", status_code=status_code, create_key=create_key, **values)


@router.post("/sign-in", name="page_sign_in")
async def sign_in(request: Request, app: AppParts) -> Response:
    if not _from_this_site(request):
        return problem(403, "a sign-in sent from another site is refused")
    form = {k: v[0] for k, v in parse_qs((await request.body()).decode(errors="replace")).items()}
    key, next = form.get("key", "").strip(), _local(form.get("next", "/"))
    try:
        await authorized(app.keys, key, Scope.READ, asked="paste one")
    except KeyRefused as refused:
        error = f"{refused.detail[:1].upper()}{refused.detail[1:]}."
        return _sign_in_page(request, status_code=401, error=error, next=next)
    response = RedirectResponse(next, status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(
        COOKIE,
        key,
        max_age=COOKIE_DAYS * 86400,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/sign-out", name="page_sign_out")
async def sign_out(request: Request) -> Response:
    if not _from_this_site(request):
        return problem(403, "a sign-out sent from another site is refused")
    response = RedirectResponse(_path(request, "page_sign_in_form"), status_code=303, headers=SECURITY_HEADERS)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


def _from_this_site(request: Request) -> bool:
    """Whether a form came from this site's own page (not a page elsewhere that sends it in the user's browser): the
    browser says so (`Sec-Fetch-Site`), or, in one that does not, its `Origin` is this host. A request with neither
    is not a browser's."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


def _local(path: str) -> str:
    """Where to go after signing in: a path on this server, never another site."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/"


async def sign_in_first(request: Request, error: SignIn) -> Response:
    """Send a page's request without a usable key to the sign-in form (the page's script gets a 401: it stops)."""
    if request.headers.get("X-Notify-Part"):
        return Response(status_code=401, headers=SECURITY_HEADERS)
    there = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    target = f"{_path(request, 'page_sign_in_form')}?{urlencode({'next': there})}"
    return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
