"""What comes back after a send: the suppression list of email addresses that are not sent to any more.

An address is suppressed when a mail server refuses it for good (a 5xx for the mailbox), when an email provider
reports a hard bounce or a complaint for it (`EmailBouncedEvent`, `EmailComplainedEvent`, recorded with the email they
are about), or when an operator says so; an operator may lift it again. Each change
is an `EmailSuppression` record in the email event stream under the address (lower case): the latest says whether
the address is suppressed now, why, and since when. None of them names a notification in its tags, so that pruning a
notification never lifts a suppression.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from domain.events import ChannelEvent
from domain.rules import EmailAddress, Model, Reason

POSTMARK_METADATA_KEY = "notify-message-id"
"""The metadata field that carries an email's notification and operation through Postmark, which does not echo the
Message-ID header in its bounces: with `NOTIFY_POSTMARK_METADATA`, every email carries
`X-PM-Metadata-notify-message-id: notification-ID.email-N`, and Postmark returns it in `Metadata`."""


class SuppressionSource(StrEnum):
    """Who suppressed an address (or lifted its suppression)."""

    SMTP = "smtp"
    """The mail server refused the recipient for good while the service sent to it."""
    OPERATOR = "operator"
    """Someone with an admin key, or the command line."""
    SES = "ses"
    SENDGRID = "sendgrid"
    POSTMARK = "postmark"
    MAILGUN = "mailgun"


class EmailSuppression(Model):
    """An address suppressed (`suppressed`) or no longer: the latest record of an address says which it is now."""

    address: EmailAddress
    suppressed: bool
    reason: Reason
    source: SuppressionSource
    notification_id: str | None = None
    """The notification whose send or feedback suppressed it, if one did."""
    timestamp_utc: datetime

    def said(self) -> str:
        """The suppression in a few words, as a channel's outcome gives it."""
        return (
            f"{self.address} is suppressed since {self.timestamp_utc:%Y-%m-%d %H:%M} UTC ({self.source}: {self.reason})"
        )


class SignatureTaken(Model):
    """A provider's signed value taken once (Mailgun's token), recorded with what it brought under
    `signature/{provider}/{value}`: the same again is a replay, refused."""

    provider: SuppressionSource
    timestamp_utc: datetime


class EmailFeedbackEvent(ChannelEvent):
    """What a provider said about an email after it was sent, recorded in the email event stream under the email's
    channel operation (beside its requested and outcome events), with the same tags."""

    address: EmailAddress
    provider: SuppressionSource
    permanent: bool
    """A hard bounce, or a complaint: the address is suppressed. A soft bounce is recorded and suppresses nothing."""
    detail: Reason
    """What the provider said, in one line."""


class EmailBouncedEvent(EmailFeedbackEvent):
    """The mailbox provider bounced the email after the mail server had taken it."""


class EmailComplainedEvent(EmailFeedbackEvent):
    """The recipient marked the email as spam."""
