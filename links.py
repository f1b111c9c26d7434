"""Links the service signs, so that whoever holds one may do what it says without a key or a sign-in: opt an entity
out of a category on a channel (one-click unsubscribe, RFC 8058), or see and set its preferences (its preference
page). A link names what it allows and carries an
HMAC-SHA256 of that with `NOTIFY_LINK_SECRET`: changing any of it, or the secret (which revokes every link), makes it
fail. Nothing in a link is secret but its signature; nothing of the secret is in a link, a record or a history."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json

from pydantic import BaseModel, ValidationError, model_validator

from domain import Channel

UNSUBSCRIBE = "unsubscribe"
"""What an unsubscribe link allows."""
PREFERENCES = "preferences"
"""What a preference page's link allows."""


class LinkClaims(BaseModel):
    """What a link allows: `purpose`, for this entity, and for an unsubscribe link this category and channel (a
    preference page's link names the entity alone)."""

    purpose: str
    entity_id: str
    category: str | None = None
    channel: Channel | None = None

    @model_validator(mode="after")
    def _scoped_as_its_purpose(self) -> LinkClaims:
        if self.purpose == PREFERENCES and (self.category, self.channel) != (None, None):
            raise ValueError("a preferences link names its entity alone")
        if self.purpose != PREFERENCES and (self.category is None or self.channel is None):
            raise ValueError(f"a {self.purpose} link names a category and a channel")
        return self


class InvalidLink(ValueError):
    """A link that is not one the service signed with its secret (forged, altered, or from before a rotation)."""


def signed_link(secret: str, claims: LinkClaims) -> str:
    """The link's token: its claims (base64url JSON) and their signature, joined by a dot."""
    named = claims.model_dump(mode="json", exclude_none=True)
    body = _encoded(json.dumps(named, separators=(",", ":"), sort_keys=True).encode())
    return f"{body}.{_encoded(_signature(secret, body))}"


def read_link(secret: str, token: str, purpose: str) -> LinkClaims:
    """The claims of a token the service signed for `purpose`; `InvalidLink` otherwise."""
    body, _, signature = token.partition(".")
    expected = _encoded(_signature(secret, body))  # compared as written: one spelling of a signature is taken
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        raise InvalidLink("the link is not one of ours, or its secret was rotated")
    try:
        claims = LinkClaims.model_validate_json(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (binascii.Error, ValueError, ValidationError):
        raise InvalidLink("the link is not one of ours") from None
    if claims.purpose != purpose:
        raise InvalidLink(f"the link is not for {purpose}")
    return claims


def _signature(secret: str, body: str) -> bytes:
    return hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()


def _encoded(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsubscribe_token(secret: str, entity_id: str, category: str, channel: Channel) -> str:
    """The token of a link that opts `entity_id` out of `category` on `channel`."""
    claims = LinkClaims(purpose=UNSUBSCRIBE, entity_id=entity_id, category=category, channel=channel)
    return signed_link(secret, claims)


def unsubscribe_url(public_url: str, token: str) -> str:
    """Where an unsubscribe link's `token` is taken (`POST` at once, `GET` asks first)."""
    return f"{public_url.rstrip('/')}/v1/unsubscribe/{token}"


def preference_page(public_url: str, secret: str, entity_id: str) -> str:
    """The address of the entity's preference page under `public_url` (`NOTIFY_PUBLIC_URL`), signed with `secret`."""
    token = signed_link(secret, LinkClaims(purpose=PREFERENCES, entity_id=entity_id))
    return f"{public_url.rstrip('/')}/preferences/{token}"
