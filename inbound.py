"""Bounces and complaints coming back from email providers: one reader per provider takes a webhook request as it
arrived (the raw body, the headers, the query) with the provider's configured secret, checks that the provider sent
it, and says what it reports as `Feedback` about the addresses our email went to. No server and no store here: a
route (`POST /v1/inbound/{provider}`) dispatches on `READERS` and records what a reader returns.

How each provider is authenticated, as it offers:

- SendGrid: the Signed Event Webhook, an ECDSA P-256 signature (SHA-256, base64 DER) of the timestamp header followed
  by the raw body; the key is the base64 public key SendGrid shows (`NOTIFY_SENDGRID_VERIFICATION_KEY`).
- Mailgun: an HMAC-SHA256 (hex) of the signature's timestamp and token with the webhook signing key
  (`NOTIFY_MAILGUN_SIGNING_KEY`), in the body's `signature` object. It does not cover `event-data`.
- Postmark: HTTP basic auth with the credentials set on the webhook (`NOTIFY_POSTMARK_WEBHOOK_CREDENTIALS`,
  `user:password`).
- Amazon SES, through SNS: a secret token in the subscribed URL's query (`?token=`, `NOTIFY_SES_WEBHOOK_TOKEN`).

A signed timestamp (SendGrid's, Mailgun's) more than `FRESHNESS` away from now is refused, whichever side.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, Protocol
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError
from pydantic.alias_generators import to_camel, to_pascal

from domain import POSTMARK_METADATA_KEY, in_one_line, validation_message

Provider = Literal["ses", "sendgrid", "postmark", "mailgun"]
Kind = Literal["bounce", "complaint"]

FRESHNESS = timedelta(minutes=10)
"""How far from now a signed timestamp may be: a request signed longer ago (a replay) or further ahead is refused.
Ten minutes leaves room for the provider's queue and for clocks that disagree by a few minutes."""

DETAIL_CHARS = 300
"""A feedback's `detail`: one line of at most this many characters."""

SNS_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?")
"""The only hosts a subscription is confirmed at (SNS's own, in any region), unless a reader is told otherwise
(`allow_any_host`)."""

SES_TOPIC_VALIDATED = "Successfully validated SNS topic for Amazon SES event publishing."
"""The notification SNS sends once a topic is set up for SES event publishing: nothing to record."""

OUR_MESSAGE_ID = re.compile(r"notification-.+\.email-\d+")
"""What the Message-ID the service sets looks like (`activities.email.message_id`): where SES gives two (its own, in
the common headers, and the original header), the service's is taken."""

POSTMARK_HARD = frozenset({"HardBounce", "BadEmailAddress", "ManuallyDeactivated"})
"""Postmark's bounce types that say the address itself will not take mail (unknown user, invalid address, deactivated
by hand). Every other failure (`SoftBounce`, `Transient`, `DnsError`, `Blocked`, `SpamNotification`, `DMARCPolicy`,
`Unknown`, ...) is soft."""

POSTMARK_NOT_FAILURES = frozenset(
    {
        "AutoResponder",
        "AddressChange",
        "Subscribe",
        "Unsubscribe",
        "OpenRelayTest",
        "ChallengeVerification",
        "InboundError",
    }
)
"""Postmark's bounce types that are no failure to deliver (an out-of-office reply, a test of the relay, an inbound
message's error): ignored."""

SENDGRID_DROPPED_FOR_GOOD = frozenset({"Bounced Address", "Spam Reporting Address", "Invalid", "Unsubscribed Address"})
"""SendGrid's reasons for dropping a message that come from its suppression lists: it will drop every later message
to the address too. Its other reasons (`Spam Content`, `Invalid SMTPAPI header`, a quota) are about the message."""


def _detail(text: str) -> str:
    said = in_one_line(text)
    return said if len(said) <= DETAIL_CHARS else said[: DETAIL_CHARS - 1] + "…"


def _message_id(value: str | None) -> str | None:
    """A Message-ID as the service sets it, `<...>`, whether or not the provider kept the angle brackets."""
    core = (value or "").strip().removeprefix("<").removesuffix(">").strip()
    return f"<{core}>" if core else None


class Feedback(BaseModel):
    """What a provider reports about one address our email went to: a bounce or a complaint.

    `permanent` says the address should not be mailed again: a hard bounce, or any complaint. Soft, as each provider
    documents it: SES `Transient` and `Undetermined` bounces; SendGrid `bounce` events of `type: blocked` and
    `dropped` events whose reason is about the message (see `SENDGRID_DROPPED_FOR_GOOD`); Mailgun `failed` events of
    `severity: temporary`; Postmark bounces of any type outside `POSTMARK_HARD`.

    `message_id` is the Message-ID of the email the feedback is about, `<...>`, or None where the provider does not
    carry it (SES without the original headers in its notifications, SendGrid's spam reports, Postmark without
    the metadata header, see `POSTMARK_METADATA_KEY`)."""

    model_config = ConfigDict(frozen=True)

    provider: Provider
    kind: Kind
    address: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=320)]
    permanent: bool
    message_id: Annotated[str | None, AfterValidator(_message_id)]
    detail: Annotated[str, AfterValidator(_detail)]
    """The provider's reason (a server's reply, a bounce type), one line."""
    occurred_at: datetime | None
    """When the provider says it happened, where it says."""
    signed_once: str | None = None
    """A value its signature covers that must be taken once (Mailgun's token: its signature does not cover the
    event, so a request seen once may not be replayed with another event); None where the signature covers it all."""


class SubscriptionConfirmation(BaseModel):
    """An SNS subscription to confirm: visit `subscribe_url` (GET) and SNS starts sending the topic's notifications."""

    model_config = ConfigDict(frozen=True)

    topic_arn: str
    subscribe_url: str


Inbound = list[Feedback] | SubscriptionConfirmation


class InboundRefused(Exception):
    """A request that is not taken: `status` 401 where it does not prove the provider sent it, 400 where its body is
    not what the provider sends, 500 where the configured secret cannot be used. The message is one line and never
    holds a secret."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Reader(Protocol):
    """A provider's reader: the feedback in one webhook request, or an SNS subscription to confirm."""

    def __call__(self, body: bytes, headers: Mapping[str, str], query: Mapping[str, str], secret: str) -> Inbound: ...


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((value for key, value in headers.items() if key.lower() == wanted), None)


def _configured(secret: str, variable: str) -> str:
    if not secret.strip():
        raise InboundRefused(500, f"{variable} is not set")
    return secret.strip()


def _fresh(timestamp: str, provider: str) -> None:
    try:
        age = time.time() - int(timestamp)
    except (ValueError, OverflowError):
        raise InboundRefused(401, f"the {provider} signature's timestamp is not a number of seconds") from None
    if abs(age) > FRESHNESS.total_seconds():
        minutes = FRESHNESS.total_seconds() / 60
        raise InboundRefused(401, f"the {provider} signature's timestamp is more than {minutes:g} minutes from now")


@contextmanager
def _body_of(provider: str) -> Iterator[None]:
    """Turns a body that does not have the provider's shape into a 400."""
    try:
        yield
    except ValidationError as error:
        raise InboundRefused(400, f"not a {provider} webhook body: {validation_message(error)}") from None


# SendGrid's Event Webhook: a JSON array of events.


class _SendGridEvent(BaseModel):
    event: str
    email: str = ""
    timestamp: datetime | None = None
    smtp_id: str | None = Field(None, alias="smtp-id")
    reason: str | None = None
    type: str | None = None


_SENDGRID_BATCH = TypeAdapter(list[_SendGridEvent])


def read_sendgrid(body: bytes, headers: Mapping[str, str], query: Mapping[str, str], secret: str) -> list[Feedback]:
    """The `bounce`, `dropped` and `spamreport` events of a signed SendGrid Event Webhook request; its other events
    are ignored."""
    key = _sendgrid_key(_configured(secret, "NOTIFY_SENDGRID_VERIFICATION_KEY"))
    signature = _header(headers, "X-Twilio-Email-Event-Webhook-Signature")
    timestamp = _header(headers, "X-Twilio-Email-Event-Webhook-Timestamp")
    if not signature or not timestamp:
        raise InboundRefused(401, "the request is not signed (no X-Twilio-Email-Event-Webhook-Signature/-Timestamp)")
    try:
        key.verify(base64.b64decode(signature, validate=True), timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise InboundRefused(401, "the SendGrid signature does not match the body and timestamp") from None
    _fresh(timestamp, "SendGrid")
    with _body_of("SendGrid"):
        return [feedback for event in _SENDGRID_BATCH.validate_json(body) for feedback in _from_sendgrid(event)]


def _sendgrid_key(secret: str) -> ec.EllipticCurvePublicKey:
    try:
        key = load_der_public_key(base64.b64decode(secret, validate=True))
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise InboundRefused(500, "NOTIFY_SENDGRID_VERIFICATION_KEY is not a base64 P-256 public key")
    return key


def _from_sendgrid(event: _SendGridEvent) -> list[Feedback]:
    kind: Kind
    match event.event:
        case "bounce":
            kind, permanent = "bounce", event.type != "blocked"
            detail = event.reason or f"bounce ({event.type or 'bounce'})"
        case "dropped":
            kind, permanent = "bounce", event.reason in SENDGRID_DROPPED_FOR_GOOD
            detail = f"dropped: {event.reason or 'no reason given'}"
        case "spamreport":
            kind, permanent, detail = "complaint", True, "spam report"
        case _:
            return []
    return [
        Feedback(
            provider="sendgrid",
            kind=kind,
            address=event.email,
            permanent=permanent,
            message_id=event.smtp_id,
            detail=detail,
            occurred_at=event.timestamp,
        )
    ]


# Mailgun's webhooks: one event a request, as {"signature": {...}, "event-data": {...}}.


class _Kebab(BaseModel):
    model_config = ConfigDict(alias_generator=lambda name: name.replace("_", "-"))


class _MailgunSignature(_Kebab):
    timestamp: int | str
    token: str
    signature: str


class _MailgunDeliveryStatus(_Kebab):
    code: int | None = None
    message: str | None = None
    description: str | None = None


class _MailgunMessage(_Kebab):
    headers: dict[str, Any] = {}


class _MailgunEvent(_Kebab):
    event: str
    recipient: str = ""
    timestamp: datetime | None = None
    severity: str | None = None
    reason: str | None = None
    delivery_status: _MailgunDeliveryStatus = _MailgunDeliveryStatus()
    message: _MailgunMessage = _MailgunMessage()


class _MailgunWebhook(_Kebab):
    signature: Any = None
    event_data: Any = None


def read_mailgun(body: bytes, headers: Mapping[str, str], query: Mapping[str, str], secret: str) -> list[Feedback]:
    """A signed Mailgun webhook's `failed` or `complained` event; other events are ignored."""
    key = _configured(secret, "NOTIFY_MAILGUN_SIGNING_KEY")
    with _body_of("Mailgun"):
        webhook = _MailgunWebhook.model_validate_json(body)
    try:
        signed = _MailgunSignature.model_validate(webhook.signature)
    except ValidationError:
        raise InboundRefused(
            401, "the request is not signed (no signature with timestamp, token and signature)"
        ) from None
    expected = hmac.new(key.encode(), f"{signed.timestamp}{signed.token}".encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signed.signature.strip().lower().encode()):
        raise InboundRefused(401, "the Mailgun signature does not match its timestamp and token")
    _fresh(str(signed.timestamp), "Mailgun")
    with _body_of("Mailgun"):
        feedback = _from_mailgun(_MailgunEvent.model_validate(webhook.event_data))
    return [f.model_copy(update={"signed_once": signed.token}) for f in feedback]


def _from_mailgun(event: _MailgunEvent) -> list[Feedback]:
    kind: Kind
    match event.event:
        case "failed":
            kind, permanent = "bounce", event.severity == "permanent"
            status = event.delivery_status
            said = status.message or status.description or event.reason or f"failed ({event.severity})"
            detail = f"{status.code} {said}" if status.code else said
        case "complained":
            kind, permanent, detail = "complaint", True, "complained"
        case _:
            return []
    message_id = event.message.headers.get("message-id")
    return [
        Feedback(
            provider="mailgun",
            kind=kind,
            address=event.recipient,
            permanent=permanent,
            message_id=message_id if isinstance(message_id, str) else None,
            detail=detail,
            occurred_at=event.timestamp,
        )
    ]


# Postmark's bounce and spam-complaint webhooks: one record a request.


class _PostmarkRecord(BaseModel):
    model_config = ConfigDict(alias_generator=to_pascal)

    record_type: str | None = None
    type: str | None = None
    name: str | None = None
    email: str = ""
    details: str | None = None
    description: str | None = None
    bounced_at: datetime | None = None
    metadata: dict[str, Any] = {}


def read_postmark(body: bytes, headers: Mapping[str, str], query: Mapping[str, str], secret: str) -> list[Feedback]:
    """A Postmark bounce or spam complaint, sent with the webhook's basic-auth credentials; other records (delivery,
    open, click, subscription change) and bounces that are no failure (`POSTMARK_NOT_FAILURES`) are ignored."""
    credentials = _configured(secret, "NOTIFY_POSTMARK_WEBHOOK_CREDENTIALS")
    if ":" not in credentials:
        raise InboundRefused(500, "NOTIFY_POSTMARK_WEBHOOK_CREDENTIALS is not user:password")
    scheme, _, encoded = (_header(headers, "Authorization") or "").strip().partition(" ")
    if scheme.lower() != "basic":
        raise InboundRefused(401, "the request has no basic-auth credentials")
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise InboundRefused(401, "the request's basic-auth credentials are not base64") from None
    if not hmac.compare_digest(given, credentials.encode()):
        raise InboundRefused(401, "the request's basic-auth credentials are not the webhook's")
    with _body_of("Postmark"):
        return _from_postmark(_PostmarkRecord.model_validate_json(body))


def _from_postmark(record: _PostmarkRecord) -> list[Feedback]:
    if record.type is None:
        if record.record_type is None:
            raise InboundRefused(400, "not a Postmark webhook body: it has neither RecordType nor Type")
        return []
    kind: Kind
    if "SpamComplaint" in (record.record_type, record.type):
        kind, permanent = "complaint", True
    elif record.record_type in (None, "Bounce") and record.type not in POSTMARK_NOT_FAILURES:
        kind, permanent = "bounce", record.type in POSTMARK_HARD
    else:
        return []
    said = record.details or record.description
    name = record.name or record.type
    metadata = {key.lower(): value for key, value in record.metadata.items()}
    message_id = metadata.get(POSTMARK_METADATA_KEY)
    return [
        Feedback(
            provider="postmark",
            kind=kind,
            address=record.email,
            permanent=permanent,
            message_id=message_id if isinstance(message_id, str) else None,
            detail=f"{name}: {said}" if said else name,
            occurred_at=record.bounced_at,
        )
    ]


# Amazon SES, through SNS: an SNS message whose `Message` is the SES notification, as JSON text.


class _SnsMessage(BaseModel):
    model_config = ConfigDict(alias_generator=to_pascal)

    type: str
    message: str = ""
    topic_arn: str = ""
    subscribe_url: str | None = Field(None, alias="SubscribeURL")


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel)


class _SesHeader(_Camel):
    name: str
    value: str


class _SesCommonHeaders(_Camel):
    message_id: str | None = None


class _SesMail(_Camel):
    headers: list[_SesHeader] = []
    common_headers: _SesCommonHeaders = _SesCommonHeaders()


class _SesRecipient(_Camel):
    email_address: str
    diagnostic_code: str | None = None


class _SesBounce(_Camel):
    bounce_type: str
    bounce_sub_type: str | None = None
    bounced_recipients: list[_SesRecipient]
    timestamp: datetime | None = None


class _SesComplaint(_Camel):
    complained_recipients: list[_SesRecipient]
    complaint_feedback_type: str | None = None
    timestamp: datetime | None = None


class _SesEvent(_Camel):
    notification_type: str | None = None
    event_type: str | None = None
    """The type's name where the event comes from event publishing (a configuration set), not identity
    notifications."""
    mail: _SesMail = _SesMail()
    bounce: _SesBounce | None = None
    complaint: _SesComplaint | None = None


def read_ses(
    body: bytes, headers: Mapping[str, str], query: Mapping[str, str], secret: str, *, allow_any_host: bool = False
) -> Inbound:
    """The bounces and complaints in an SNS notification from SES (identity notifications or event publishing), sent
    to the URL with the configured `?token=`; other notifications (deliveries, sends, opens) and unsubscribe
    confirmations are ignored. A subscription confirmation comes back as the URL to visit, which must be https on an
    SNS host (`SNS_HOST`) unless `allow_any_host`."""
    token = _configured(secret, "NOTIFY_SES_WEBHOOK_TOKEN")
    given = query.get("token")
    if not given:
        raise InboundRefused(401, "the request has no ?token=")
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise InboundRefused(401, "the request's ?token= is not the configured one")
    with _body_of("SNS"):
        sns = _SnsMessage.model_validate_json(body)
    match sns.type:
        case "SubscriptionConfirmation":
            return SubscriptionConfirmation(
                topic_arn=sns.topic_arn, subscribe_url=_subscribe_url(sns.subscribe_url or "", allow_any_host)
            )
        case "Notification" if sns.message.strip() != SES_TOPIC_VALIDATED:
            with _body_of("SES"):
                return _from_ses(_SesEvent.model_validate_json(sns.message))
        case _:
            return []


def _subscribe_url(url: str, allow_any_host: bool) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if allow_any_host and parts.scheme in ("http", "https") and host:
        return url
    if parts.scheme != "https" or not SNS_HOST.fullmatch(host):
        raise InboundRefused(400, "the SubscribeURL is not https on an SNS host (sns.REGION.amazonaws.com)")
    return url


def _from_ses(event: _SesEvent) -> list[Feedback]:
    named = event.notification_type or event.event_type
    kind: Kind
    if named is None:
        raise InboundRefused(400, "not an SES notification: it has neither notificationType nor eventType")
    if named == "Bounce" and event.bounce:
        bounce = event.bounce
        kind, permanent, occurred_at = "bounce", bounce.bounce_type == "Permanent", bounce.timestamp
        recipients = bounce.bounced_recipients
        said = f"{bounce.bounce_type} ({bounce.bounce_sub_type})" if bounce.bounce_sub_type else bounce.bounce_type
    elif named == "Complaint" and event.complaint:
        complaint = event.complaint
        kind, permanent, occurred_at = "complaint", True, complaint.timestamp
        recipients = complaint.complained_recipients
        said = f"complaint ({complaint.complaint_feedback_type or 'no feedback type'})"
    elif named in ("Bounce", "Complaint"):
        raise InboundRefused(400, f"not an SES notification: a {named} without its {named.lower()} object")
    else:
        return []
    mail = event.mail
    given = [h.value for h in mail.headers if h.name.lower() == "message-id"] + [mail.common_headers.message_id]
    message_id = next((m for m in given if m and OUR_MESSAGE_ID.search(m)), None) or next((m for m in given if m), None)
    return [
        Feedback(
            provider="ses",
            kind=kind,
            address=recipient.email_address,
            permanent=permanent,
            message_id=message_id,
            detail=f"{said}: {recipient.diagnostic_code}" if recipient.diagnostic_code else said,
            occurred_at=occurred_at,
        )
        for recipient in recipients
    ]


READERS: Mapping[str, Reader] = {
    "ses": read_ses,
    "sendgrid": read_sendgrid,
    "postmark": read_postmark,
    "mailgun": read_mailgun,
}
"""Each provider's reader, by the name a route takes (`POST /v1/inbound/{provider}`)."""
