"""One-click unsubscribe (RFC 8058): each email of a category that may be opted out of carries a link signed by the
service (`links`), and a POST to it opts its entity out of that category on that channel at once, without a key or a
sign-in, as a mailbox provider's "unsubscribe" button sends it (`List-Unsubscribe=One-Click`). A GET shows a page
that asks first: link checkers fetch links, and must not unsubscribe anyone."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.deps import AppParts
from api.problems import problems
from api.routes.page import LINKED_PAGE_HEADERS, templates
from domain import ChannelPreference
from links import UNSUBSCRIBE, InvalidLink, LinkClaims, read_link
from settings import Settings
from streams.directory import change_preferences

router = APIRouter(prefix="/v1/unsubscribe", tags=["preferences"], responses=problems(403, 404))
log = logging.getLogger("notify.api")
ONE_CLICK = "one-click"
"""Who a change made by an unsubscribe link is recorded as made by."""


@router.get("/{token}", summary="A page that asks before it unsubscribes")
async def ask(token: str, request: Request, app: AppParts) -> Response:
    claims = _claims(app.settings, token)
    if isinstance(claims, Response):
        return claims
    return _page(request, claims)


@router.post("/{token}", summary="Unsubscribe at once (one click)")
async def unsubscribe(token: str, request: Request, app: AppParts) -> Response:
    """Opt the link's entity out of its category on its channel; `403` for a link the service did not sign (or
    signed with a secret since rotated), and nothing changes."""
    claims = _claims(app.settings, token)
    if isinstance(claims, Response):
        return claims
    assert claims.category is not None and claims.channel is not None  # an unsubscribe link's (`LinkClaims`)
    opted_out = {claims.category: {claims.channel: ChannelPreference.OPTED_OUT}}
    changed = await change_preferences(app.owner, claims.entity_id, opted_out, ONE_CLICK)
    if changed is None:
        return _page(request, claims, refused="The entity this link was sent to is not in the directory.", status=404)
    log.info("entity %s opted out of %r on %s (one click)", claims.entity_id, claims.category, claims.channel)
    return _page(request, claims, done=True)


def _claims(settings: Settings, token: str) -> LinkClaims | Response:
    if settings.link_secret is None:
        return Response("links are not configured here", status_code=404, media_type="text/plain")
    try:
        return read_link(settings.link_secret.get_secret_value(), token, UNSUBSCRIBE)
    except InvalidLink as error:
        log.info("an unsubscribe link refused: %s", error)  # anyone may send one: not a warning
        return Response(f"{error}: nothing changed", status_code=403, media_type="text/plain")


def _page(
    request: Request, claims: LinkClaims, done: bool = False, refused: str | None = None, status: int = 200
) -> Response:
    values = {"category": claims.category, "channel": claims.channel, "done": done, "refused": refused}
    return templates.TemplateResponse(
        request, "unsubscribe.html", {**values, "signed_in": False}, status_code=status, headers=LINKED_PAGE_HEADERS
    )
