"""The web page: recent notifications, a search by email address or Slack channel (the audit), and a page per
notification with its view, each channel's outcome, the escalation and the timeline of its records. Server-rendered
(Jinja2), every asset served from here. It asks once for an API key with the `read` scope and keeps it in an
HttpOnly, SameSite=Strict cookie, and takes a sign-in or sign-out only from its own pages; a page that shows a
notification still under way refreshes its main part."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Cookie, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context
from jinja2.runtime import Context

from api.deps import AppParts, KeyRefused, authorized
from api.keys import Scope
from api.problems import problem
from client import UNDECIDED, NotificationClient, UnknownNotification
from domain import NotificationStatus

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

templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["moment"] = lambda value: (
    datetime.fromisoformat(str(value)).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"
)


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


@router.get("/", name="page_recent")
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
async def search(request: Request, client: SignedIn, address: str) -> Response:
    """An email address (it has an @) or a Slack channel (`CHANNEL` or `WORKSPACE/CHANNEL`)."""
    address = address.strip()
    email = "@" in address
    deliveries = await (client.audit_email(address) if email else client.audit_slack(address))
    return _render(
        request,
        "search.html",
        live=any(d.outcome == "sending" for d in deliveries),
        address=address,
        channel_name="Email" if email else "Slack",
        deliveries=deliveries,
    )


@router.get("/notifications/{notification_id}", name="page_notification")
async def notification(request: Request, client: SignedIn, notification_id: str) -> Response:
    try:
        view = await client.status(notification_id)
        records = await client.events(notification_id)
    except UnknownNotification as error:
        return _render(request, "missing.html", status_code=404, error=str(error))
    return _render(request, "notification.html", live=view["status"] in UNDECIDED, view=view, records=records)


@router.get("/sign-in", name="page_sign_in_form")
async def sign_in_form(request: Request, next: str = "/") -> Response:
    return _render(request, "sign_in.html", next=_local(next))


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
        return _render(request, "sign_in.html", status_code=401, error=error, next=next)
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
