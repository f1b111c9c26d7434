"""The suppression list, kept in the email event stream: the latest `EmailSuppression` of an address (its record id,
in lower case) says whether mail to it is held back now (`domain.feedback`)."""

from __future__ import annotations

from pydantic import ValidationError

from domain import EmailSuppression, SuppressionSource, admitted, utc_now
from streams.store import Put, ReadOnlyStream, StreamName, StreamStore, WriteOnlyStream, unreadable

SUPPRESSION = EmailSuppression.__name__
"""The type of the suppression records."""


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
    return events.record(record.address, record)


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
    try:
        latest = record.object(EmailSuppression)
    except ValidationError as error:
        unreadable(record, error)
        return None
    return latest if latest.suppressed else None


async def suppressions(events: ReadOnlyStream) -> list[EmailSuppression]:
    """Every address suppressed now, in order of address."""
    latest: dict[str, EmailSuppression] = {}
    for record in await events.by_tags(type=SUPPRESSION):
        try:
            change = record.object(EmailSuppression)
        except ValidationError as error:
            unreadable(record, error)
            continue
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
    await store.writer(StreamName.EMAIL_EVENT).put_all([(record.address, record, ())])
    return record
