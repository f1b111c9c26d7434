"""The email channel's handler: delivers a `SendEmailOp` over SMTP with aiosmtplib."""

from __future__ import annotations

import ssl
from email.message import EmailMessage
from email.utils import formataddr, formatdate

import aiosmtplib
from temporalio import activity

from activities.channel import ChannelHandler, Delivery, TransientDeliveryError
from domain import (
    Channel,
    ChannelOperationFailure,
    ChannelOperationOutcomeInfo,
    ChannelOperationRef,
    DirectoryEntry,
    EmailMailbox,
    FailedToSendEmailEvent,
    PrepareToSendOnChannelOp,
    SendEmailOp,
    SendEmailRequestedEvent,
    SendEmailResponse,
    SendEmailResult,
    SucceededInSendingEmailEvent,
    Tag,
    TagName,
    recipient_email_tag,
    tag,
)
from settings import Settings, SmtpSecurity
from streams import StreamName

SMTP_TIMEOUT_SECONDS = 30


def message_id(op: SendEmailOp) -> str:
    """Derived from the channel-operation id, so every attempt at one operation sends the same Message-ID."""
    domain = op.sender.address.rpartition("@")[2]
    return f"<notification-{op.notification_id}.email-{op.channel_operation_id}@{domain}>"


def compose_message(op: SendEmailOp) -> EmailMessage:
    message = EmailMessage()
    message["From"] = formataddr((op.sender.name or "", op.sender.address))
    message["To"] = ", ".join(formataddr((m.name or "", m.address)) for m in op.to)
    message["Subject"] = op.subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = message_id(op)
    message.set_content(op.text_body)
    if op.html_body:
        message.add_alternative(op.html_body, subtype="html")
    return message


class EmailHandler(ChannelHandler):
    channel = Channel.EMAIL
    concern = "send-email"
    operation_stream = StreamName.EMAIL_OPERATION
    event_stream = StreamName.EMAIL_EVENT
    requested_event = SendEmailRequestedEvent
    succeeded_event = SucceededInSendingEmailEvent
    failed_event = FailedToSendEmailEvent

    @activity.defn(name="SendEmail")
    async def send(self, ref: ChannelOperationRef) -> ChannelOperationOutcomeInfo:
        return await self.handle(ref)

    @activity.defn(name="RecordEmailNotSent")
    async def record_not_sent(self, failure: ChannelOperationFailure) -> ChannelOperationOutcomeInfo:
        return await self.give_up(failure)

    @staticmethod
    def address(entry: DirectoryEntry) -> str | None:
        return entry.email

    @staticmethod
    def compose(
        op: PrepareToSendOnChannelOp, channel_operation_id: int, settings: Settings
    ) -> tuple[SendEmailOp, list[Tag]]:
        request, audience = op.operation, op.audience
        assert audience.email is not None
        email = SendEmailOp(
            notification_id=op.notification_id,
            channel_operation_id=channel_operation_id,
            sender=EmailMailbox(address=settings.email_from),
            to=[EmailMailbox(address=audience.email, name=audience.name)],
            subject=request.subject,
            text_body=request.body,
            html_body=request.html_body,
        )
        return email, [
            recipient_email_tag(audience.email),
            tag(TagName.SENDER_EMAIL_ADDRESS, settings.email_from.lower()),
        ]

    def failed_response(self, operation: SendEmailOp, reason: str) -> SendEmailResponse:  # type: ignore[override]
        return SendEmailResponse(
            result=SendEmailResult.FAILED_TO_SEND_EMAIL_TO_SERVER, message_id=message_id(operation), error=reason
        )

    async def deliver(self, op: SendEmailOp) -> Delivery:  # type: ignore[override]
        s = self._settings
        mid = message_id(op)
        try:
            _, server_response = await aiosmtplib.send(
                compose_message(op),
                hostname=s.smtp_host,
                port=s.smtp_port,
                use_tls=s.smtp_security == SmtpSecurity.TLS,
                start_tls=s.smtp_security == SmtpSecurity.STARTTLS,
                username=s.smtp_username,
                password=s.smtp_password.get_secret_value() if s.smtp_password else None,
                timeout=SMTP_TIMEOUT_SECONDS,
            )
        except aiosmtplib.SMTPRecipientsRefused as error:
            codes = [r.code for r in error.recipients]
            failure = "; ".join(f"{r.recipient} refused: {r.code} {r.message}" for r in error.recipients)
            return _failed(SendEmailResult.FAILED_TO_SEND_EMAIL_TO_SERVER, mid, failure, permanent=min(codes) >= 500)
        except aiosmtplib.SMTPAuthenticationError as error:
            failure = f"{error.code} {error.message}"
            return _failed(SendEmailResult.FAILED_TO_AUTHENTICATE_WITH_SERVER, mid, failure, permanent=True)
        except aiosmtplib.SMTPResponseException as error:
            failure = f"{error.code} {error.message}"
            return _failed(SendEmailResult.FAILED_TO_SEND_EMAIL_TO_SERVER, mid, failure, permanent=error.code >= 500)
        except ssl.SSLError as error:  # a certificate that does not verify will not verify on a retry either
            reason = f"{error.__class__.__name__}: {error}"
            return _failed(SendEmailResult.FAILED_TO_CONNECT_TO_SERVER, mid, reason, permanent=True)
        except (
            aiosmtplib.SMTPConnectError,
            aiosmtplib.SMTPTimeoutError,
            aiosmtplib.SMTPServerDisconnected,
            OSError,
        ) as error:
            reason = f"{error.__class__.__name__}: {error}"
            return _failed(SendEmailResult.FAILED_TO_CONNECT_TO_SERVER, mid, reason, permanent=False)
        except aiosmtplib.SMTPException as error:  # the server lacks what the settings ask for (STARTTLS, AUTH)
            reason = f"{error.__class__.__name__}: {error}"
            return _failed(SendEmailResult.FAILED_TO_CONNECT_TO_SERVER, mid, reason, permanent=True)
        return Delivery(
            SendEmailResponse(result=SendEmailResult.SUCCESS, message_id=mid, server_response=server_response)
        )


def _failed(result: SendEmailResult, mid: str, failure: str, *, permanent: bool) -> Delivery:
    delivery = Delivery(SendEmailResponse(result=result, message_id=mid, error=failure), failure)
    if permanent:
        return delivery
    raise TransientDeliveryError(delivery)
