"""The domain's nouns: tags, channels, the entity directory, the client's request, and a notification's status."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from domain.rules import (
    MAX_ATTACHMENT_BYTES,
    MAX_ATTACHMENTS,
    MAX_ATTACHMENTS_BYTES,
    MAX_REQUEST_BYTES,
    MAX_TAGS,
    Admitted,
    Body,
    EmailAddress,
    Identifier,
    Model,
    Name,
    OptionalBody,
    Segment,
    SendAt,
    Subject,
    _admitting,
    _no_nul,
    _single_line,
    _sized,
    _utf8_at_most,
)


class Tag(Model):
    """A name/value pair attached to a record; records are queryable by tags."""

    name: Annotated[str, Admitted(lambda v: _single_line(_sized(v, 1, 200)))]
    value: Annotated[str, Admitted(lambda v: _utf8_at_most(_no_nul(v), 2000))]


def tag(name: str, value: object) -> Tag:
    return Tag(name=name, value=str(value))


def recipient_email_tag(address: str) -> Tag:
    """Email addresses are tagged in lower case, so that an audit finds them however they were written."""
    return Tag(name=TagName.RECIPIENT_EMAIL_ADDRESS, value=address.lower())


class TagName(StrEnum):
    NOTIFICATION_ID = "notification-id"
    ENTITY_ID = "entity-id"
    IDEMPOTENCY_KEY = "idempotency-key"
    RECIPIENT_EMAIL_ADDRESS = "recipient-email-address"
    SENDER_EMAIL_ADDRESS = "sender-email-address"
    SLACK_WORKSPACE = "slack-workspace"
    SLACK_CHANNEL = "slack-channel"
    TOPIC_NAME = "topic-name"
    BROADCAST_ID = "broadcast-id"


RESERVED_TAG_NAMES = frozenset(TagName)
"""The tag names the audit and `events` read: a client's tags may not use them, in any case."""


class Channel(StrEnum):
    EMAIL = "email"
    SLACK = "slack"


class ChannelPreference(StrEnum):
    SEND = "send"
    OPTED_OUT = "opted-out"


LOCALE = re.compile(r"[a-z]{2,3}(?:-[A-Z][a-z]{3})?(?:-(?:[A-Z]{2}|[0-9]{3}))?")
"""A language tag as entities give theirs: a language (`de`), with a script (`zh-Hant`) and a region (`pt-BR`)."""


def _locale(value: str | None) -> str | None:
    if value is not None and not LOCALE.fullmatch(value):
        raise ValueError(f"{value!r} is not a language tag such as de, pt-BR or zh-Hant-TW")
    return value


class Category(Model):
    """A kind of notification (`billing`, `marketing`, `security`) that entities may opt out of per channel, as
    `NOTIFY_CATEGORIES_FILE` configures it: what each channel does for an entity that said nothing (`defaults`:
    send unless it says otherwise), and whether an entity may opt out of it at all (`opt_out`)."""

    name: Segment
    description: str = ""
    defaults: dict[Channel, ChannelPreference] = Field(default_factory=dict)
    opt_out: bool = True


class SlackAddress(Model):
    workspace: Identifier
    channel: Segment


class DirectoryEntry(Model):
    """Who an entity is and where it can be reached. Every change is kept as a record in the directory stream."""

    model_config = Model.model_config | {"json_schema_extra": lambda schema: schema["required"].remove("name")}
    id: Segment
    name: Name
    """How templates greet it; its id when not given."""
    email: EmailAddress | None = None
    slack: SlackAddress | None = None
    channels: dict[Channel, ChannelPreference]
    fallback: Channel | None = None
    """A channel not in `channels`, to deliver on when a preferred one fails for good or cannot be used or
    prepared."""
    locale: Annotated[str | None, AfterValidator(_locale), Field(exclude_if=lambda locale: locale is None)] = None
    """Its language, as a BCP 47 tag (`de`, `pt-BR`): templates are rendered in it where they have it
    (`welcome.de.yaml`), dates formatted for it."""
    preferences: dict[Segment, dict[Channel, ChannelPreference]] = Field(
        default_factory=dict, exclude_if=lambda preferences: not preferences
    )
    """Per category, per channel: `opted-out` keeps that category off that channel (of the channels it is sent on),
    `send` overrides a category's default; a category not named here follows its defaults."""

    def address(self, channel: Channel) -> str | None:
        """Where the entity is reached on `channel`, as views and the audit show it, or None."""
        if channel == Channel.EMAIL:
            return self.email
        return f"{self.slack.workspace}/{self.slack.channel}" if self.slack else None

    @model_validator(mode="before")
    @classmethod
    def _named(cls, data: object) -> object:
        if isinstance(data, dict) and "name" not in data and isinstance(data.get("id"), str):
            return {**data, "name": data["id"]}
        return data

    @model_validator(mode="after")
    def _reachable_where_it_says(self) -> DirectoryEntry:
        if self.fallback is not None and self.fallback in self.channels:
            raise ValueError(
                f"entity {self.id!r} has {self.fallback} as its fallback and in its channels: "
                "a fallback is a channel it is not otherwise sent on"
            )
        wanted = {c for c, p in self.channels.items() if p == ChannelPreference.SEND} | {self.fallback} - {None}
        if Channel.EMAIL in wanted and self.email is None:
            raise ValueError(f"entity {self.id!r} asks for email but has no email address")
        if Channel.SLACK in wanted and self.slack is None:
            raise ValueError(f"entity {self.id!r} asks for Slack but has no Slack workspace and channel")
        return self


class TemplateUse(Model):
    """The template a request's content was rendered from: its name, and the SHA-256 of the file as rendered."""

    name: str
    sha256: str
    locale: str | None = Field(default=None, exclude_if=lambda locale: locale is None)
    """The language tag of the file rendered, `NAME.LOCALE.yaml`; None for `NAME.yaml`."""


_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,127}")


def _media_type(value: str) -> str:
    if not _MEDIA_TYPE.fullmatch(value):
        raise ValueError("must be a media type in lower case, such as application/pdf")
    if value.startswith(("message/", "multipart/")):
        raise ValueError("is a part of a message, not a file: send it as application/octet-stream")
    return value


def _file_size(value: int) -> int:
    if value > MAX_ATTACHMENT_BYTES:
        raise ValueError(f"is {value:,} bytes; a file may be at most {MAX_ATTACHMENT_BYTES:,} (10 MiB)")
    return value


_CONTENT_ID = re.compile(r"[A-Za-z0-9._@-]{1,200}")


def _content_id(value: str | None) -> str | None:
    if value is not None and not _CONTENT_ID.fullmatch(value):
        raise ValueError("must be 1 to 200 of A-Z a-z 0-9 . _ @ -")
    return value


class Attachment(Model):
    """A file a notification carries, as its records name it: its bytes are kept once in the stream store, by their
    SHA-256 (`StreamStore.put_contents`), never in a record or a workflow's payloads. Its rules are today's, checked
    on admission: a record or a saga's input written under others still reads back."""

    filename: Annotated[str, Admitted(lambda v: _file_name(_sized(v, 1, 255)))]
    media_type: Annotated[str, Admitted(_media_type)]
    size: Annotated[int, Field(ge=0), Admitted(_file_size)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    """What the store keeps its bytes by (`StreamStore.content`): always this shape."""
    content_id: Annotated[str | None, Admitted(_content_id), Field(exclude_if=lambda v: v is None)] = None
    """An image the HTML body shows (`<img src="cid:CONTENT_ID">`), sent beside it rather than as a file of its own;
    only email carries it."""


def _file_name(value: str) -> str:
    if any(c in value for c in "/\\") or not value.isprintable() or value.strip(" .") == "":
        raise ValueError("must be a file's name: printable, without / or \\, not only dots and spaces")
    return value


class TopicMembership(Model):
    """An entity joining a topic (`member`) or leaving it: the latest record of a topic and an entity says whether the
    entity is one of the topic's members now."""

    topic: Segment
    entity_id: Segment
    member: bool


class PreferenceChanged(Model):
    """An entity's preference for a category on a channel, changed: by whom (`one-click` from an email's unsubscribe
    link, `preference-page`, `operator`), recorded with the entity's new entry."""

    entity_id: Segment
    category: Segment
    channel: Channel
    preference: ChannelPreference
    by: str
    timestamp_utc: datetime


class SendNotificationToEntityOp(Model):
    """A client's request: notify this entity with this content."""

    entity_id: Identifier
    subject: Subject
    body: Body
    html_body: OptionalBody | None = None
    slack_text: OptionalBody | None = None
    tags: list[Tag] = Field(default_factory=list)
    send_at: SendAt | None = None
    """When to send (from 1970 up to 9998: `SEND_AT_EARLIEST`, `SEND_AT_LATEST`); until then the saga waits on a
    durable timer and can be cancelled."""
    template: TemplateUse | None = None
    """The template that rendered the subject and bodies, if one did."""
    attachments: list[Attachment] = Field(default_factory=list, exclude_if=lambda files: not files)
    """Files sent with it, by email (`MAX_ATTACHMENTS` at most, `MAX_ATTACHMENTS_BYTES` in all); left out of its
    JSON when there are none, as a request without files was written before (and as `notify_request` writes one)."""
    attach_to: list[Channel] | None = Field(default=None, exclude_if=lambda channels: channels is None)
    """The channels its files go on (`attachments_on`); none named: every channel it is sent on."""
    broadcast_id: str | None = Field(default=None, exclude_if=lambda broadcast: broadcast is None)
    """The broadcast it is one recipient's notification of, if it is."""
    category: Segment | None = Field(default=None, exclude_if=lambda category: category is None)
    """Its category, which entities' preferences may keep off a channel (`NOTIFY_CATEGORIES_FILE` names them)."""

    @field_validator("tags")
    @classmethod
    def _client_tags(cls, tags: list[Tag], info: ValidationInfo) -> list[Tag]:
        if not _admitting(info):
            return tags
        if len(tags) > MAX_TAGS:
            raise ValueError(f"at most {MAX_TAGS} tags, not {len(tags)}")
        reserved = sorted({t.name for t in tags if t.name.lower() in RESERVED_TAG_NAMES})
        if reserved:
            raise ValueError(f"{', '.join(map(repr, reserved))}: reserved for the service's own tags")
        return tags

    @field_validator("attachments")
    @classmethod
    def _few_enough(cls, attachments: list[Attachment], info: ValidationInfo) -> list[Attachment]:
        if _admitting(info):
            if len(attachments) > MAX_ATTACHMENTS:
                raise ValueError(f"at most {MAX_ATTACHMENTS} attachments, not {len(attachments)}")
            if len(ids := [a.content_id for a in attachments if a.content_id]) != len(set(ids)):
                raise ValueError("each inline image has a content id of its own")
            if (size := sum(a.size for a in attachments)) > MAX_ATTACHMENTS_BYTES:
                raise ValueError(
                    f"the attachments are {size:,} bytes in all; at most {MAX_ATTACHMENTS_BYTES:,} (25 MiB)"
                )
        return attachments

    @model_validator(mode="after")
    def _inline_in_html(self, info: ValidationInfo) -> SendNotificationToEntityOp:
        if _admitting(info) and not self.html_body and any(a.content_id for a in self.attachments):
            raise ValueError("an inline image is shown by an HTML body: give one")
        return self

    @model_validator(mode="after")
    def _attached_somewhere(self, info: ValidationInfo) -> SendNotificationToEntityOp:
        if _admitting(info) and self.attach_to is not None:
            if not self.attach_to or len(set(self.attach_to)) != len(self.attach_to):
                raise ValueError("attach_to: name each channel once, at least one")
            if all(a.content_id for a in self.attachments):
                raise ValueError("attach_to: names the channels of attached files; this request attaches none")
        return self

    def attachments_on(self, channel: Channel) -> list[Attachment]:
        """The files sent on `channel`: those attached, if `attach_to` does not leave it out, and by email the inline
        images too (the HTML body's, whatever `attach_to` says)."""
        attached = self.attach_to is None or channel in self.attach_to
        inline = channel == Channel.EMAIL
        return [a for a in self.attachments if (inline if a.content_id else attached)]

    @model_validator(mode="after")
    def _fits_in_a_payload(self, info: ValidationInfo) -> SendNotificationToEntityOp:
        size = len(self.model_dump_json().encode()) if _admitting(info) else 0
        if size > MAX_REQUEST_BYTES:
            raise ValueError(
                f"the request is {size:,} bytes as JSON (control characters count six); at most "
                f"{MAX_REQUEST_BYTES:,} (512 KiB) are taken"
            )
        return self


def notification_tags(notification_id: str, operation: SendNotificationToEntityOp) -> list[Tag]:
    """The tags every record of a notification carries: its id and the client's own tags."""
    return [tag(TagName.NOTIFICATION_ID, notification_id), *operation.tags]


def request_tags(notification_id: str, operation: SendNotificationToEntityOp) -> list[Tag]:
    """The tags of a notification's request (in the client-operation stream, and as the notification stream's
    `SendNotificationRequestedEvent`): those of every record, its entity, by which its notifications are found, and
    its broadcast (`broadcast_tags`)."""
    return [
        *notification_tags(notification_id, operation),
        tag(TagName.ENTITY_ID, operation.entity_id),
        *broadcast_tags(operation),
    ]


def broadcast_tags(operation: SendNotificationToEntityOp) -> list[Tag]:
    """The tag by which a broadcast finds its notifications' requests and views: none for a notification of its own."""
    return [] if operation.broadcast_id is None else [tag(TagName.BROADCAST_ID, operation.broadcast_id)]


class NotificationRequest(Model):
    """The saga's input: the notification id the client-operation stream issued, the operation, and the internal
    id of the operation's record in that stream (whose handling the saga keeps)."""

    notification_id: str
    operation: SendNotificationToEntityOp
    client_operation_record_id: int


class NotificationStatus(StrEnum):
    SCHEDULED = "scheduled"
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    PARTIALLY_SENT = "partially_sent"
    FAILED = "failed"
    OPTED_OUT = "opted_out"
    CANCELLED = "cancelled"
    UNREADABLE = "unreadable"
    """Not a saga's: what a reader shows for a notification whose record does not parse (its view says which)."""
