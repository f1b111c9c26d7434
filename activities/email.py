"""The email channel's handler: delivers a `SendEmailOp` over SMTP with aiosmtplib."""

from __future__ import annotations

import asyncio
import email.policy
import io
import re
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.generator import BytesGenerator
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from html import escape
from typing import Any

import aiosmtplib
from aiosmtplib.email import extract_recipients, extract_sender
from temporalio import activity

from activities.channel_handler import ChannelHandler, Delivery, FileBudget, TransientDeliveryError, opt_out_of
from activities.contract import RECORD_NOT_SENT, SEND
from domain import (
    POSTMARK_METADATA_KEY,
    Channel,
    ChannelOperationFailure,
    ChannelOperationOutcomeInfo,
    ChannelOperationRef,
    EmailMailbox,
    FailedToSendEmailEvent,
    PrepareToSendOnChannelOp,
    SendEmailOp,
    SendEmailRequestedEvent,
    SendEmailResponse,
    SendEmailResult,
    SucceededInSendingEmailEvent,
    SuppressionSource,
    Tag,
    admitted,
    recipient_email_tag,
)
from links import preference_page, unsubscribe_token, unsubscribe_url
from settings import INTERNAL_TEAM, Settings, SmtpSecurity
from streams import StoreUnavailable, StreamName, StreamStore
from streams.suppressions import suppression, suppression_record

SMTP_TIMEOUT_SECONDS = 30
"""How long the server may take to answer a command; a message's DATA is given, besides, the time its bytes take at
`NOTIFY_TRANSFER_BYTES_PER_SECOND` (aiosmtplib writes the whole message, then waits this long for the answer: the
time to send it counts)."""
SMTP_IDLE_SECONDS = 30
"""How long a connection waits, open, for the next message before it is closed."""


POSTMARK_METADATA_HEADER = f"X-PM-Metadata-{POSTMARK_METADATA_KEY}"
"""Postmark does not echo an email's Message-ID in its bounces: this header, on every email with
`NOTIFY_POSTMARK_METADATA`, comes back as the bounce's metadata instead (`postmark_metadata`)."""


def message_id(op: SendEmailOp) -> str:
    """Derived from the channel-operation id, so every attempt at one operation sends the same Message-ID."""
    domain = op.sender.address.rpartition("@")[2]
    return f"<notification-{op.notification_id}.email-{op.channel_operation_id}@{domain}>"


def postmark_metadata(op: SendEmailOp) -> str:
    """The Message-ID's notification and operation, short enough for a header line written as it is."""
    return f"notification-{op.notification_id}.email-{op.channel_operation_id}"


class TranscribedSMTP(aiosmtplib.SMTP):
    """An SMTP client that keeps the exchange as a communication log: every command and reply, except that
    credentials (an AUTH command and whatever answers a 334 challenge) are left out, and a message is only sized.
    Each message sent on the connection is given a `log` of its own."""

    def __init__(self, log: list[str], bytes_per_second: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log = log
        self._bytes_per_second = bytes_per_second
        self.data_begun = False
        """Whether the current message's DATA was begun: from then on, the server may have it."""
        self._challenged = False

    async def connect(self, *args: Any, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        start = len(self.log)
        try:
            greeting = await super().connect(*args, **kwargs)
        except aiosmtplib.SMTPResponseException as error:
            self.log.append(f"S: {_said(error)}")
            raise
        self.log.insert(start, f"S: {greeting.code} {greeting.message}")  # before the EHLO and login it made
        return greeting

    async def execute_command(self, *args: bytes, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        command = b" ".join(args).decode(errors="replace")
        if command.upper().startswith("AUTH "):
            command = " ".join(command.split()[:2]) + " <credentials left out>"
        elif self._challenged:
            command = "<credentials left out>"
        self.log.append(f"C: {command}")
        response = await super().execute_command(*args, **kwargs)
        self._challenged = response.code == 334
        self.log.append(f"S: {response.code} {response.message}")
        return response

    async def starttls(self, *args: Any, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        self.log.append("C: STARTTLS")
        response = await super().starttls(*args, **kwargs)
        self.log.append(f"S: {response.code} {response.message}")
        return response

    async def send_plain(self, message: PlainMessage) -> str:
        """The message sent with the MAIL options `send_message` gives an ASCII message (BODY=8BITMIME where the
        server takes it); the server's answer to its DATA."""
        await self._ehlo_or_helo_if_needed()
        options = ["BODY=8BITMIME"] if self.supports_extension("8BITMIME") else []
        _, answer = await self.sendmail(message.sender, message.recipients, message.data, mail_options=options)
        return answer

    async def send_composed(self, message: EmailMessage) -> str:
        """What `send_message` sends, flattened in a thread: the email package takes a second or more to write out a
        message with files, which would hold up the worker's other attempts. (Its addresses are ASCII: no SMTPUTF8.)
        The server's answer to its DATA."""
        await self._ehlo_or_helo_if_needed()
        eight_bit = self.supports_extension("8BITMIME")
        data = await asyncio.to_thread(flattened, message, "8bit" if eight_bit else "7bit")
        sender, recipients = extract_sender(message), extract_recipients(message)
        assert sender is not None
        options = ["BODY=8BITMIME"] if eight_bit else []
        _, answer = await self.sendmail(sender, recipients, data, mail_options=options)
        return answer

    async def data(self, message: str | bytes, /, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        self.data_begun = True
        self.log.append(f"C: DATA <a message of {len(message)} bytes>")
        timeout = SMTP_TIMEOUT_SECONDS + len(message) / self._bytes_per_second
        try:
            response = await super().data(message, **{**kwargs, "timeout": timeout})
        except aiosmtplib.SMTPResponseException as error:
            self.log.append(f"S: {_said(error)}")
            raise
        self.log.append(f"S: {response.code} {response.message}")
        return response


REUSED = "-- on a connection an earlier message opened: its greeting, EHLO and login are not repeated"


class SmtpConnections:
    """The connections to the mail server the settings name (host, port, security, login), kept open from one message
    to the next: at most `smtp_max_connections` at a time, as the server's limit per client asks; each closed (QUIT)
    once idle for `SMTP_IDLE_SECONDS`, and every one at `close()`. Each message on a reused connection begins with
    RSET; one that finds the connection dropped before its DATA is begun goes once on a new connection, within the
    same attempt (the server cannot have it)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._slots = asyncio.Semaphore(settings.smtp_max_connections)
        self._idle: list[tuple[TranscribedSMTP, asyncio.TimerHandle]] = []
        """Most recently used last."""
        self._quitting: set[asyncio.Task[None]] = set()
        self._closed = False

    async def send(
        self, compose: Callable[[], PlainMessage | EmailMessage], log: list[str], *, files: bool = False
    ) -> str:
        """Send the message `compose` gives, composed once a connection is had (a message with files is several
        times their size; with `files`, composed in a thread: 25 MiB of them take most of a second to attach), its
        exchange written to `log`; the server's answer to its DATA."""
        async with self._slots:
            message = await asyncio.to_thread(compose) if files else compose()
            smtp = self._reused(log)
            if smtp is not None:
                try:
                    await _reset(smtp)
                    return await self._sent(smtp, message)
                except (aiosmtplib.SMTPException, OSError) as error:
                    if smtp.data_begun or smtp.is_connected:
                        raise
                    log.append(f"-- the connection was dropped ({_reason(error)}): the message goes on a new one")
            smtp = self._new(log)
            await smtp.connect()
            return await self._sent(smtp, message)

    def _new(self, log: list[str]) -> TranscribedSMTP:
        s = self._settings
        return TranscribedSMTP(
            log,
            s.transfer_bytes_per_second,
            hostname=s.smtp_host,
            port=s.smtp_port,
            use_tls=s.smtp_security == SmtpSecurity.TLS,
            start_tls=s.smtp_security == SmtpSecurity.STARTTLS,
            username=s.smtp_username,
            password=s.smtp_password.get_secret_value() if s.smtp_password else None,
            timeout=SMTP_TIMEOUT_SECONDS,
        )

    def _reused(self, log: list[str]) -> TranscribedSMTP | None:
        """The most recently used idle connection the server has not closed, now the message's, if there is one."""
        while self._idle:
            smtp, expiry = self._idle.pop()
            expiry.cancel()
            if smtp.is_connected:
                smtp.log, smtp.data_begun = log, False
                log.append(REUSED)
                return smtp
        return None

    async def _sent(self, smtp: TranscribedSMTP, message: PlainMessage | EmailMessage) -> str:
        """The message sent on this connection; the connection kept for the next message unless it is broken."""
        try:
            if isinstance(message, PlainMessage):
                answer = await smtp.send_plain(message)
            else:
                answer = await smtp.send_composed(message)
        except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
            self._keep(smtp)  # a refusal, after which aiosmtplib said RSET: the connection serves the next message
            raise
        except BaseException:  # anything else (a timeout, a cancelled attempt) may leave it mid-exchange
            smtp.close()
            raise
        self._keep(smtp)
        return answer

    def _keep(self, smtp: TranscribedSMTP) -> None:
        smtp.log = []  # what follows (an idle QUIT) is no message's
        if self._closed:
            self._quit(smtp)
        elif smtp.is_connected:
            expiry = asyncio.get_running_loop().call_later(SMTP_IDLE_SECONDS, self._expire, smtp)
            self._idle.append((smtp, expiry))

    def _expire(self, smtp: TranscribedSMTP) -> None:
        self._quit(smtp, idle=True)

    def _quit(self, smtp: TranscribedSMTP, idle: bool = False) -> None:
        task = asyncio.create_task(self._said_quit(smtp, idle))
        self._quitting.add(task)
        task.add_done_callback(self._quitting.discard)

    async def _said_quit(self, smtp: TranscribedSMTP, idle: bool) -> None:
        """QUIT, in a slot of its own: until the server has closed it, the connection counts against the limit. An
        idle connection stays for a message to take until the slot is had (so that no message opens another beside
        it meanwhile), and is not closed if one did."""
        async with self._slots:
            if idle:
                if not any(s is smtp for s, _ in self._idle):
                    return  # a message took it meanwhile
                self._idle = [(s, e) for s, e in self._idle if s is not smtp]
            try:
                await smtp.quit()
            except (aiosmtplib.SMTPException, OSError):
                pass  # gone already: nothing to say goodbye to
            finally:
                smtp.close()

    async def close(self) -> None:
        """QUIT every open connection; those in use are closed when their message is sent."""
        self._closed = True
        idle, self._idle = self._idle, []
        for smtp, expiry in idle:
            expiry.cancel()
            self._quit(smtp)
        await asyncio.gather(*self._quitting)


async def _reset(smtp: TranscribedSMTP) -> None:
    """RSET, as the next message on a connection begins: a connection that does not answer 250 is closed."""
    try:
        await smtp.rset()
    except BaseException:
        smtp.close()
        raise


def mailbox(m: EmailMailbox) -> Address:
    return Address(display_name=m.name or "", addr_spec=m.address)


AS_GIVEN = email.policy.default.clone(refold_source="none")
"""The email package's policy, but that a header set raw (`extra`) is written as given: folded or encoded, a URL
(List-Unsubscribe's) is no longer one."""


def flattened(message: EmailMessage, cte_type: str) -> bytes:
    """The message as SMTP carries it (CRLF line ends), by its own policy (`AS_GIVEN`), as aiosmtplib's
    `flatten_message` writes one by the default policy."""
    with io.BytesIO() as out:
        BytesGenerator(out, policy=message.policy.clone(linesep="\r\n", cte_type=cte_type)).flatten(message)
        return out.getvalue()


def compose_message(
    op: SendEmailOp, now: datetime, contents: Sequence[bytes] = (), extra: Sequence[tuple[str, str]] = ()
) -> EmailMessage:
    """The message, with `contents` (those of `op.attachments`, in order): inline images beside the HTML body that
    shows them (`multipart/related`), other files attached (`multipart/mixed`), each with its name (RFC 2231 where
    it is not ASCII); and the `extra` headers after its Message-ID."""
    message = EmailMessage(policy=AS_GIVEN)
    # Address objects, not formatted strings: a display name is then always quoted or encoded whole, so that a
    # comma or an address inside it stays part of the name.
    message["From"] = mailbox(op.sender)
    message["To"] = [mailbox(m) for m in op.to]
    message["Subject"] = op.subject
    message["Date"] = now
    message["Message-ID"] = message_id(op)
    for name, value in extra:
        message.set_raw(name, value)  # as given, however long: a URL in a header is not to be folded or encoded
    message.set_content(op.text_body)
    if op.html_body:
        message.add_alternative(op.html_body, subtype="html")
    html = message.get_body(("html",))
    for attachment, content in zip(op.attachments, contents, strict=True):
        maintype, subtype = attachment.media_type.split("/")
        if attachment.content_id and html is not None:
            cid = f"<{attachment.content_id}>"
            html.add_related(content, maintype, subtype, cid=cid, filename=attachment.filename)
        else:
            message.add_attachment(content, maintype=maintype, subtype=subtype, filename=attachment.filename)
    return message


@dataclass(frozen=True)
class PlainMessage:
    """A message with nothing in it to encode, quote or fold, written as it goes on the wire."""

    sender: str
    recipients: list[str]
    data: bytes


MAX_LINE = 78
"""The longest line the email package writes as it is (its default policy's `max_line_length`)."""
_PLAIN_NAME = re.compile(r"[A-Za-z0-9'_-]+(?: [A-Za-z0-9'_-]+)*")
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
_PLAIN_TEXT = re.compile(r"[!-~]+(?: [!-~]+)*")
_PLAIN_BODY = re.compile(r"[ -~\t\r\n]*")


def plain_message(op: SendEmailOp, now: datetime, extra: Sequence[tuple[str, str]] = ()) -> PlainMessage | None:
    """The bytes `compose_message` gives once flattened for SMTP, written directly, when nothing in the message needs
    encoding, quoting or folding: ASCII words, no encoded-word look-alike, every line at most 78 characters, no HTML
    part (None otherwise). Most notifications are such, and the email package's parsing of every header is most of a
    send's CPU."""
    mailboxes = [op.sender, *op.to]
    if (
        op.html_body
        or op.attachments
        or op.sender.name
        or "=?" in op.subject
        or not _PLAIN_TEXT.fullmatch(op.subject)
        or not _PLAIN_BODY.fullmatch(op.text_body)
        or not all(_PLAIN_ADDRESS.fullmatch(m.address) for m in mailboxes)
        or not all(_PLAIN_NAME.fullmatch(m.name) for m in mailboxes if m.name)
    ):
        return None
    to = ", ".join(f"{m.name} <{m.address}>" if m.name else m.address for m in op.to)
    headers = [
        f"From: {op.sender.address}",
        f"To: {to}",
        f"Subject: {op.subject}",
        f"Date: {format_datetime(now)}",
        f"Message-ID: {message_id(op)}",
    ]
    given = [f"{name}: {value}" for name, value in extra]  # as given, as `compose_message` writes them
    mime = ['Content-Type: text/plain; charset="utf-8"', "Content-Transfer-Encoding: 7bit", "MIME-Version: 1.0"]
    lines = op.text_body.splitlines() or [""]
    if any(len(line) > MAX_LINE for line in (*headers, *mime, *lines)) or not all(map(_PLAIN_TEXT.fullmatch, given)):
        return None
    data = "".join(f"{line}\r\n" for line in (*headers, *given, *mime, "", *lines)).encode("ascii")
    return PlainMessage(op.sender.address, [m.address for m in op.to], data)


PREFERENCES_FOOTER = "\n\n--\nYour notification preferences: "
"""What each email's text ends with, then the link to its entity's preference page."""
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


def with_link(html_body: str, url: str) -> str:
    """The HTML body with a paragraph linking to the preference page at `url`: before `</body>`, or at its end."""
    paragraph = f'<p style="font-size:small"><a href="{escape(url)}">Your notification preferences</a></p>'
    ends = list(_BODY_END.finditer(html_body))
    at = ends[-1].start() if ends else len(html_body)
    return f"{html_body[:at]}{paragraph}{html_body[at:]}"


class EmailHandler(ChannelHandler[SendEmailOp, SendEmailResponse]):
    channel = Channel.EMAIL
    concern = "send-email"
    operation_stream = StreamName.EMAIL_OPERATION
    event_stream = StreamName.EMAIL_EVENT
    requested_event = SendEmailRequestedEvent
    succeeded_event = SucceededInSendingEmailEvent
    failed_event = FailedToSendEmailEvent
    operation_type = SendEmailOp
    response_type = SendEmailResponse

    def __init__(self, store: StreamStore, settings: Settings, files: FileBudget | None = None) -> None:
        super().__init__(store, settings, files)
        self._connections = SmtpConnections(settings)

    async def close(self) -> None:
        """Close the connections to the mail server (when the worker stops)."""
        await self._connections.close()

    @activity.defn(name=SEND[Channel.EMAIL].name)
    async def send(self, ref: ChannelOperationRef) -> ChannelOperationOutcomeInfo:
        return await self.handle(ref)

    @activity.defn(name=RECORD_NOT_SENT[Channel.EMAIL].name)
    async def record_not_sent(self, failure: ChannelOperationFailure) -> ChannelOperationOutcomeInfo:
        return await self.give_up(failure)

    @staticmethod
    def compose(
        op: PrepareToSendOnChannelOp, channel_operation_id: int, settings: Settings
    ) -> tuple[SendEmailOp, list[Tag]]:
        request, audience = op.operation, op.audience
        assert audience.email is not None
        email = admitted(  # today's rules, whatever those of the request's or the entry's day were
            SendEmailOp,
            {
                "notification_id": op.notification_id,
                "channel_operation_id": channel_operation_id,
                "sender": {"address": settings.email_from},
                "to": [{"address": audience.email, "name": audience.name}],
                "subject": request.subject,
                "text_body": request.body,
                "html_body": request.html_body,
                "attachments": request.attachments_on(Channel.EMAIL),
                "entity_id": audience.id,
                "opt_out": opt_out_of(request, settings),
            },
        )
        return email, [recipient_email_tag(audience.email)]

    def _unsubscribe(self, op: SendEmailOp) -> list[tuple[str, str]]:
        """One-click unsubscribe (RFC 8058) from its category, where it has one that may be opted out of and the
        links can be signed (`NOTIFY_PUBLIC_URL`, `NOTIFY_LINK_SECRET`); and by mail, where an address is given."""
        settings = self._settings
        if op.opt_out is None or op.entity_id is None or settings.public_url is None or settings.link_secret is None:
            return []
        secret = settings.link_secret.get_secret_value()
        token = unsubscribe_token(secret, op.entity_id, op.opt_out, Channel.EMAIL)
        links = [f"<{unsubscribe_url(settings.public_url, token)}>"]
        if settings.unsubscribe_mailto:
            links.append(f"<mailto:{settings.unsubscribe_mailto}?subject=unsubscribe%20{token}>")
        folded = ",\r\n ".join(links)  # a line each (RFC 2369): both on one may be longer than 998 characters
        return [("List-Unsubscribe", folded), ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]

    def _as_sent(self, op: SendEmailOp) -> SendEmailOp:
        """The email with a footer that links to its entity's preference page, where the links can be signed
        (`NOTIFY_PUBLIC_URL`, `NOTIFY_LINK_SECRET`) and it is not the internal team's; the operation as recorded keeps
        its bodies as they were requested."""
        settings = self._settings
        if op.entity_id in (None, INTERNAL_TEAM) or settings.public_url is None or settings.link_secret is None:
            return op
        url = preference_page(settings.public_url, settings.link_secret.get_secret_value(), op.entity_id)
        text = f"{op.text_body}{PREFERENCES_FOOTER}{url}"
        return op.model_copy(update={"text_body": text, "html_body": op.html_body and with_link(op.html_body, url)})

    def _postmark(self, op: SendEmailOp) -> list[tuple[str, str]]:
        return [(POSTMARK_METADATA_HEADER, postmark_metadata(op))] if self._settings.postmark_metadata else []

    def failed_response(self, operation: SendEmailOp, reason: str) -> SendEmailResponse:
        return SendEmailResponse(
            result=SendEmailResult.FAILED_TO_SEND_EMAIL_TO_SERVER, message_id=message_id(operation), error=reason
        )

    async def deliver(self, op: SendEmailOp) -> Delivery:
        log: list[str] = []

        def answer(result: SendEmailResult, **fields: str) -> SendEmailResponse:
            return SendEmailResponse(result=result, message_id=message_id(op), communication_log=log, **fields)

        now = datetime.now(UTC)
        extra = [*self._unsubscribe(op), *self._postmark(op)]
        sent = self._as_sent(op)
        try:
            async with self.files(op) as contents:
                if isinstance(contents, Delivery):
                    return contents
                server_response = await self._connections.send(
                    lambda: plain_message(sent, now, extra) or compose_message(sent, now, contents, extra),
                    log,
                    files=bool(contents),
                )
        except aiosmtplib.SMTPRecipientsRefused as error:
            failure = "; ".join(f"{r.recipient} refused: {_said(r)}" for r in error.recipients)
            transient = any(_transient(r.code) for r in error.recipients)
            delivery = _failed(answer, SendEmailResult.FAILED_TO_SEND_EMAIL_TO_SERVER, failure, transient)
            gone = [
                (r.recipient, _said(r)) for r in error.recipients if refuses_mailbox(r.code, r.message, at_rcpt=True)
            ]
            return await self._suppressing(delivery, op, gone)
        except aiosmtplib.SMTPResponseException as error:  # a refused login included: a 454 is tried again
            authenticating = isinstance(error, aiosmtplib.SMTPAuthenticationError)
            result = (
                SendEmailResult.FAILED_TO_AUTHENTICATE_WITH_SERVER
                if authenticating
                else SendEmailResult.FAILED_TO_SEND_EMAIL_TO_SERVER
            )
            delivery = _failed(answer, result, _said(error), _transient(error.code))
            at_data = isinstance(error, aiosmtplib.SMTPDataError) and len(op.to) == 1  # its one recipient, at DATA
            mailbox_gone = at_data and refuses_mailbox(error.code, error.message, at_rcpt=False)
            return await self._suppressing(delivery, op, [(op.to[0].address, _said(error))] if mailbox_gone else [])
        except ssl.SSLError as error:  # a certificate that does not verify will not verify on a retry either
            return _failed(answer, SendEmailResult.FAILED_TO_CONNECT_TO_SERVER, _reason(error), transient=False)
        except (
            aiosmtplib.SMTPConnectError,
            aiosmtplib.SMTPTimeoutError,
            aiosmtplib.SMTPServerDisconnected,
            OSError,
        ) as error:
            return _failed(answer, SendEmailResult.FAILED_TO_CONNECT_TO_SERVER, _reason(error), transient=True)
        except aiosmtplib.SMTPException as error:  # the server lacks what the settings ask for (STARTTLS, AUTH)
            return _failed(answer, SendEmailResult.FAILED_TO_CONNECT_TO_SERVER, _reason(error), transient=False)
        return Delivery(answer(SendEmailResult.SUCCESS, server_response=server_response))

    async def _suppressing(self, delivery: Delivery, op: SendEmailOp, gone: list[tuple[str, str]]) -> Delivery:
        """`delivery`, suppressing each address the server said is `gone` (with what it said) that is not suppressed
        yet, in the outcome's write."""
        for address, said in gone:
            try:
                if await suppression(self._outcomes, address) is not None:
                    continue
            except StoreUnavailable:
                pass  # suppressed again, then: the latest record says the same
            record = suppression_record(self._events, address, True, said, SuppressionSource.SMTP, op.notification_id)
            delivery.also_put.append(record)
        return delivery


ENHANCED_CODE = re.compile(r"\s*(5\.\d{1,3}\.\d{1,3})\b")
"""An enhanced status code of a permanent failure (RFC 3463) at the start of a reply's text."""
MAILBOX_GONE = frozenset({"5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10", "5.2.1"})
"""The enhanced codes that say the recipient's address or mailbox is gone: no such mailbox (5.1.1), no such domain
(5.1.2), a bad address (5.1.3), a mailbox that moved (5.1.6), a null MX (5.1.10), a mailbox disabled (5.2.1)."""
MAILBOX_REFUSED = frozenset({550, 551, 553})
"""The codes that, at RCPT and without an enhanced code, refuse the mailbox (RFC 5321)."""


def refuses_mailbox(code: int, message: str, *, at_rcpt: bool) -> bool:
    """Whether a mail server's reply refuses the recipient's mailbox for good, so that its address is suppressed: a
    5xx whose enhanced code says the address or mailbox is gone (`MAILBOX_GONE`), at RCPT or at DATA; or, at RCPT
    only, a 550, 551 or 553 without an enhanced code. Not a refusal of the sender (5.1.7, 5.1.8), nor one about
    policy, the system, the network or the message (5.7.x, 5.3.x, 5.4.x, 5.5.x, 5.6.x, a full mailbox: 5.2.2), which
    may be the sender's doing or may pass."""
    if not 500 <= code < 600:
        return False
    enhanced = ENHANCED_CODE.match(message)
    if enhanced is not None:
        return enhanced[1] in MAILBOX_GONE
    return at_rcpt and code in MAILBOX_REFUSED


def _reason(error: Exception) -> str:
    return (
        _said(error) if isinstance(error, aiosmtplib.SMTPResponseException) else f"{error.__class__.__name__}: {error}"
    )


def _transient(code: int) -> bool:
    """Whether a reply's code says a later attempt may succeed: a 4xx does (RFC 5321), and so does a reply that is
    not SMTP at all (aiosmtplib's code -1: a line cut short, or something else answering on the port); a 5xx, or any
    other code, is for good."""
    return 400 <= code < 500 or code < 0


def _said(error: aiosmtplib.SMTPResponseException) -> str:
    """The reply as the server gave it: its code, then its text; only the text for a reply that had no code."""
    return f"{error.code} {error.message}" if error.code >= 0 else error.message.strip()


def _failed(
    answer: Callable[..., SendEmailResponse], result: SendEmailResult, failure: str, transient: bool
) -> Delivery:
    delivery = Delivery(answer(result, error=failure), failure)
    if transient:
        raise TransientDeliveryError(delivery)
    return delivery
