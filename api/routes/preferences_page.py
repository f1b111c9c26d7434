"""The preference page: every email links to one for its entity (`links.preference_page`), signed by the service, where
whoever holds the link sees each configured category with a switch per channel the entity is sent on, and saves them
without a key, a cookie or a script (a plain form). A category that may not be opted out of is shown on and cannot be
switched. Saving writes only the switches that changed what the entity gets (`change_preferences`, by
`preference-page`), so that a category's defaults stay the entity's until it says otherwise."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.deps import AppParts
from api.problems import problems
from api.routes.page import LINKED_PAGE_HEADERS, templates
from domain import Category, Channel, ChannelPreference, DirectoryEntry, category_preference
from links import PREFERENCES, InvalidLink, read_link
from settings import Settings
from streams import StreamName
from streams.directory import change_preferences, lookup

router = APIRouter(prefix="/preferences", tags=["preferences"], responses=problems(403, 404))
log = logging.getLogger("notify.api")
PREFERENCE_PAGE = "preference-page"
"""Who a change made on the preference page is recorded as made by."""


@dataclass(frozen=True)
class Switch:
    """A category on one of the entity's channels, as the page shows it: its form field, and whether it is sent."""

    channel: Channel
    field: str
    sent: bool


@dataclass(frozen=True)
class Row:
    """A category, with a switch per channel; `fixed` when it may not be opted out of."""

    category: Category
    switches: list[Switch]

    @property
    def fixed(self) -> bool:
        return not self.category.opt_out


@router.get("/{token}", summary="An entity's preference page (from the link in its emails)")
async def show(token: str, request: Request, app: AppParts) -> Response:
    """The categories, each with a switch per channel the entity is sent on; `403` for a link the service did not
    sign (or signed with a secret since rotated)."""
    entity_id = _entity_id(app.settings, token)
    if isinstance(entity_id, Response):
        return entity_id
    entry = await lookup(app.store.reader(StreamName.ENTITY_DIRECTORY), entity_id)
    return _page(request, app.settings, entry)


@router.post("/{token}", summary="Save an entity's preferences (the preference page's form)")
async def save(token: str, request: Request, app: AppParts) -> Response:
    """The page's form (`application/x-www-form-urlencoded`): a checked box is `send`, an unchecked one `opted-out`,
    for each category that may be opted out of on each channel the entity is sent on; `403` for a link the service
    did not sign, and nothing changes."""
    entity_id = _entity_id(app.settings, token)
    if isinstance(entity_id, Response):
        return entity_id
    checked = parse_qs((await request.body()).decode(errors="replace"))
    if "save" not in checked:  # not the page's form (an empty POST would untick everything): nothing changes
        return Response("not the preference page's form: nothing changed", status_code=400, media_type="text/plain")
    entry = await lookup(app.owner.reader(StreamName.ENTITY_DIRECTORY), entity_id)
    if entry is None:
        return _page(request, app.settings, None)
    changes: dict[str, dict[Channel, ChannelPreference]] = {}
    for row in _rows(app.settings, entry):
        for switch in [] if row.fixed else row.switches:
            wanted = switch.field in checked
            if wanted != switch.sent:
                preference = ChannelPreference.SEND if wanted else ChannelPreference.OPTED_OUT
                changes.setdefault(row.category.name, {})[switch.channel] = preference
    changed = await change_preferences(app.owner, entity_id, changes, PREFERENCE_PAGE)
    if changes and changed is not None:
        log.info("entity %s changed %d preferences on its preference page", entity_id, sum(map(len, changes.values())))
    return _page(request, app.settings, changed, saved=changed is not None)


def _entity_id(settings: Settings, token: str) -> str | Response:
    if settings.link_secret is None:
        return Response("links are not configured here", status_code=404, media_type="text/plain")
    try:
        return read_link(settings.link_secret.get_secret_value(), token, PREFERENCES).entity_id
    except InvalidLink as error:
        log.info("a preference page's link refused: %s", error)  # anyone may send one: not a warning
        return Response(f"{error}: nothing changed", status_code=403, media_type="text/plain")


def _rows(settings: Settings, entry: DirectoryEntry) -> list[Row]:
    """Each configured category, with a switch for each channel the entity is sent on (its `channels` say `send`)."""
    channels = [c for c in Channel if entry.channels.get(c) == ChannelPreference.SEND]
    return [
        Row(
            category,
            [Switch(c, f"{category.name}:{c}", category_preference(entry, category, c) is None) for c in channels],
        )
        for category in settings.categories().values()
    ]


def _page(request: Request, settings: Settings, entry: DirectoryEntry | None, saved: bool = False) -> Response:
    if entry is None:
        values = {"refused": "The entity this link was sent to is not in the directory.", "rows": [], "saved": False}
        status = 404
    else:
        values = {"refused": None, "rows": _rows(settings, entry), "saved": saved}
        status = 200
    return templates.TemplateResponse(
        request, "preferences.html", {**values, "signed_in": False}, status_code=status, headers=LINKED_PAGE_HEADERS
    )
