"""The suppression list, kept in the email event stream: the latest `EmailSuppression` of an address (its record id,
in lower case) says whether mail to it is held back now (`domain.feedback`); and the feedback of email providers
(bounces, complaints), recorded with the email it is about and suppressing its address when it is for good."""

from __future__ import annotations

import re
from dataclasses import dataclass

from domain import (
    ChannelFeedback,
    EmailBouncedEvent,
    EmailComplainedEvent,
    EmailFeedbackEvent,
    EmailSuppression,
    SendEmailRequestedEvent,
    SignatureTaken,
    SuppressionSource,
    TagName,
    admitted,
    tag,
    utc_now,
)
from streams.store import (
    Put,
    ReadOnlyStream,
    Record,
    StreamName,
    StreamStore,
    WriteOnlyStream,
    readable,
)

SUPPRESSION = EmailSuppression.__name__
"""The type of the suppression records."""
LISTED = tag("suppression-list", "email")
"""The tag of every suppression record, by which the list is read rather than by scanning the stream (not one of
`TagName`: a request's own tags never reach the email event stream's records of this type)."""


def suppression_record(
    events: WriteOnlyStream,
    address: str,
    suppressed: bool,
    reason: str,
    source: SuppressionSource,
    notification_id: str | None = None,
) -> Put:
    """A suppression (or its lifting) to put with a step's other writes."""
    record = _suppression(address, suppressed, reason, source, notification_id)
    return events.record(record.address, record, tags=[LISTED])


def _suppression(
    address: str, suppressed: bool, reason: str, source: SuppressionSource, notification_id: str | None = None
) -> EmailSuppression:
    """The record, its address checked as every address is (`ValidationError`) and kept in lower case."""
    return admitted(
        EmailSuppression,
        {
            "address": address.lower(),
            "suppressed": suppressed,
            "reason": reason,
            "source": source,
            "notification_id": notification_id,
            "timestamp_utc": utc_now(),
        },
    )


async def suppression(events: ReadOnlyStream, address: str) -> EmailSuppression | None:
    """The address's suppression, if it is suppressed now; an unreadable latest record counts as none (and is logged
    once)."""
    record = await events.latest(address.lower(), type=SUPPRESSION)
    if record is None:
        return None
    latest = readable(record, EmailSuppression)
    return latest if latest is not None and latest.suppressed else None


async def suppressions(events: ReadOnlyStream) -> list[EmailSuppression]:
    """Every address suppressed now, in order of address."""
    latest: dict[str, EmailSuppression] = {}
    for record in await events.by_tags(LISTED, type=SUPPRESSION):
        if (change := readable(record, EmailSuppression)) is not None:
            latest[change.address] = change
    return [s for _, s in sorted(latest.items()) if s.suppressed]


async def change_suppression(
    store: StreamStore, address: str, suppressed: bool, reason: str, source: SuppressionSource
) -> EmailSuppression | None:
    """Suppress `address` (or lift its suppression); returns the record written, or None when it was so already
    (a suppression keeps its first reason and time)."""
    events = store.reader(StreamName.EMAIL_EVENT)
    if (await suppression(events, address) is not None) == suppressed:
        return None
    record = _suppression(address, suppressed, reason, source)
    await store.writer(StreamName.EMAIL_EVENT).put_all([(record.address, record, [LISTED])])
    return record


MESSAGE_ID = re.compile(r"<?notification-(?P<notification_id>[^<>\s]+?)\.email-(?P<operation_id>\d+)(?:@[^<>\s]+)?>?")
"""The Message-ID the service sets (`activities.email.message_id`), or the short form Postmark's metadata carries
(`activities.email.postmark_metadata`): the notification and its email's operation."""


@dataclass(frozen=True)
class FeedbackRecorded:
    """What one piece of feedback did: the notification it was matched to (None: no email of the service's had its
    Message-ID), and whether it suppressed the address now."""

    notification_id: str | None
    suppressed: bool


async def record_feedback(
    store: StreamStore,
    *,
    provider: SuppressionSource,
    complaint: bool,
    address: str,
    permanent: bool,
    message_id: str | None,
    detail: str,
    signed_once: str | None = None,
) -> FeedbackRecorded:
    """Record a provider's bounce (or `complaint`) of `address` with the email whose Message-ID it names, once (the
    same said again changes nothing; a hard bounce after a soft one is recorded too), and suppress the address when it
    is `permanent` and not suppressed yet: one write. Feedback that matches no email of the service's still
    suppresses. An address or a detail that the records' rules refuse is `ValidationError`, and nothing is written.
    `signed_once`: a signed value the provider may send once (`SignatureReplayed` the second time), recorded in the
    same write."""
    events = store.reader(StreamName.EMAIL_EVENT)
    taken = None
    if signed_once is not None:
        taken = f"signature/{provider}/{signed_once}"
        if await events.latest(taken) is not None:
            raise SignatureReplayed(f"this {provider} signature was taken before: a replay")
    matched = await _email_requested(store.reader(StreamName.EMAIL_EVENT), message_id)
    nid = None if matched is None else matched[1]
    writer = store.writer(StreamName.EMAIL_EVENT)
    puts = []
    if matched is not None:
        requested, notification_id, recorded = matched
        event_type = EmailComplainedEvent if complaint else EmailBouncedEvent
        operation_id = int(requested.record_id or 0)
        event = event_type(
            channel_operation_id=operation_id,
            notification_id=notification_id,
            timestamp_utc=utc_now(),
            address=address.lower(),
            provider=provider,
            permanent=permanent,
            detail=detail,
        )
        said = {"type": event_type.__name__, "permanent": event.permanent, "detail": event.detail}
        if not any({"type": r.type, **_said(r)} == said for r in recorded if r.type == event_type.__name__):
            puts.append(writer.record(operation_id, event, tags=requested.tags))
    suppressing = permanent and await suppression(store.reader(StreamName.EMAIL_EVENT), address) is None
    if suppressing:
        kind = "complaint" if complaint else "bounce"
        puts.append(suppression_record(writer, address, True, f"{kind}: {detail}", provider, nid))
    if taken is not None:
        puts.append(writer.record(taken, SignatureTaken(provider=provider, timestamp_utc=utc_now())))
    if puts:
        await store.steps().write(puts)
    return FeedbackRecorded(nid, suppressing)


class SignatureReplayed(Exception):
    """A provider's signed request that was taken before, sent again."""


async def _email_requested(events: ReadOnlyStream, message_id: str | None) -> tuple[Record, str, list[Record]] | None:
    """The requested event of the email that `message_id` names, if the stream has it, its notification's id, and
    every record of that email."""
    found = MESSAGE_ID.fullmatch(message_id.strip()) if message_id else None
    if found is None:
        return None
    nid = found["notification_id"]
    recorded = await events.by_id(found["operation_id"])
    for record in recorded:
        if record.type == SendEmailRequestedEvent.__name__ and record.tag(TagName.NOTIFICATION_ID) == nid:
            return record, nid, recorded
    return None


def _said(record: Record) -> dict[str, object]:
    """What a feedback record said: whether it was for good, and what."""
    try:
        payload = record.json()
    except ValueError:
        return {}
    return {"permanent": payload.get("permanent"), "detail": payload.get("detail")}


FEEDBACK = {EmailBouncedEvent.__name__: "bounced", EmailComplainedEvent.__name__: "complained"}
"""The feedback records' types, and what each says of the email."""


async def email_feedback(events: ReadOnlyStream, channel_operation_id: int) -> list[ChannelFeedback]:
    """The bounces and complaints recorded with an email (by its channel operation), oldest first."""
    found = []
    for record in await events.by_id(channel_operation_id):
        kind = FEEDBACK.get(record.type)
        if kind is None or (event := readable(record, EmailFeedbackEvent)) is None:
            continue
        found.append(
            ChannelFeedback(
                kind=kind,
                provider=event.provider,
                permanent=event.permanent,
                detail=event.detail,
                at=event.timestamp_utc,
            )
        )
    return found
