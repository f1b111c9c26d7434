"""A local mail sink: an SMTP server (aiosmtpd) that keeps every message it accepts.

Messages are kept in memory and, given a folder, as `.eml` files there. Replies can be scripted (say `421` once, then
accept; or `550` for a recipient) and delivery can be held, so that tests can make the server misbehave. Given a TLS
context it speaks STARTTLS or TLS on connect, and given a login it requires authentication.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

MAX_MESSAGE = 64 * 1024 * 1024
"""The largest message the sink takes (aiosmtpd's default is 32 MiB): a notification's 25 MiB of files are about
34 MiB as an email."""


@dataclass(frozen=True)
class ReceivedMail:
    sender: str
    recipients: tuple[str, ...]
    data: bytes
    path: Path | None
    login: str | None = None
    """The user the client authenticated as, if it did."""

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class MailSink:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        folder: Path | None = None,
        *,
        tls_context: ssl.SSLContext | None = None,
        tls_on_connect: bool = False,
        login: tuple[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.folder = folder
        self.messages: list[ReceivedMail] = []
        self.rejected_recipients: dict[str, str] = {}
        """Recipient address to the reply its RCPT gets, e.g. `"550 5.1.1 No such user"`."""
        self.refused: list[str] = []
        """Every recipient refused so far, once per RCPT."""
        self.data_arrived = threading.Event()
        """Set whenever a message's DATA arrives, before it is answered."""
        self.acknowledged: set[int] = set()
        """Indexes in `messages` of those whose client said RSET or QUIT after them on their connection: it had read
        the answer to their DATA."""
        self.connections = 0
        """Connections that said EHLO."""
        self._open: weakref.WeakSet[Any] = weakref.WeakSet()
        self.flaky = 0.0
        """The share of messages answered `451` (try again later) at random, as a struggling server does."""
        self.slowness = 0.0
        """Seconds, at most, a message waits (at random) before it is answered, as on a slow server."""
        self.login_reply: str | None = None
        """While set, the reply to every login, whatever its credentials: say `454 4.7.0 Temporary authentication
        failure`, from a server that cannot check them for now."""
        self.closing_reply: str | None = None
        """While set, the reply to a client's RSET, after which the server closes the connection: say `421 4.4.2
        Timeout exceeded`, from a server that timed out a connection left idle."""
        self._scripted_replies: list[str] = []
        self._release = threading.Event()
        self._release.set()
        self._lock = threading.Lock()
        self._login = login
        security: dict[str, Any] = {}
        if tls_context is not None and tls_on_connect:
            security["ssl_context"] = tls_context
        elif tls_context is not None:
            security.update(tls_context=tls_context, require_starttls=True)
        if login is not None:
            # aiosmtpd's check for TLS before AUTH only sees STARTTLS; TLS on connect is TLS all along
            starttls = tls_context is not None and not tls_on_connect
            security.update(authenticator=self._authenticate, auth_required=True, auth_require_tls=starttls)
        self._controller = Controller(self, hostname=host, port=self.port, data_size_limit=MAX_MESSAGE, **security)
        self.serving = False

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        if self.login_reply is not None:
            return AuthResult(success=False, handled=False, message=self.login_reply)
        given = (data.login.decode(), data.password.decode()) if isinstance(data, LoginPassword) else None
        return AuthResult(success=given == self._login, handled=False, auth_data=data)

    def script_replies(self, *replies: str) -> None:
        """Answer the next messages' DATA with these replies, in order, instead of accepting them."""
        with self._lock:
            self._scripted_replies.extend(replies)

    def hold(self) -> None:
        """Keep the next messages waiting at DATA until `release()`."""
        self._release.clear()

    def release(self) -> None:
        self._release.set()

    def received_by(self, address: str) -> list[ReceivedMail]:
        return [m for m in self.messages if address in m.recipients]

    def hang_up(self) -> None:
        """Close every open connection, as a server does with those idle too long, or when it restarts."""

        async def close() -> None:
            for server in list(self._open):
                if server.transport is not None:
                    server.transport.close()

        asyncio.run_coroutine_threadsafe(close(), self._controller.loop).result()

    # -- aiosmtpd handler hooks ------------------------------------------------------------------------------

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        if address in self.rejected_recipients:
            self.refused.append(address)
            return self.rejected_recipients[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        answer: str = await server.loop.run_in_executor(None, self._receive, session, envelope)
        return answer

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        if server not in self._open:  # the first EHLO on the connection (STARTTLS has it say EHLO again)
            self._open.add(server)
            self.connections += 1
        session.host_name = hostname
        return responses

    async def handle_RSET(self, server: Any, session: Any, envelope: Any) -> str:
        self._acknowledge(session)
        if self.closing_reply is None:
            return "250 OK"
        server.loop.call_soon(server.transport.close)  # once the reply is written
        return self.closing_reply

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        self._acknowledge(session)
        return "221 Bye"

    def _acknowledge(self, session: Any) -> None:
        with self._lock:
            self.acknowledged.update(getattr(session, "received", []))

    def _receive(self, session: Any, envelope: Any) -> str:
        self.data_arrived.set()
        self._release.wait()
        time.sleep(random.uniform(0, self.slowness))
        with self._lock:
            if self._scripted_replies:
                return self._scripted_replies.pop(0)
            if random.random() < self.flaky:
                return "451 4.3.0 Try again later"
            data = envelope.original_content or envelope.content
            path = None
            if self.folder is not None:
                self.folder.mkdir(parents=True, exist_ok=True)
                stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
                path = self.folder / f"{stamp}-{len(self.messages) + 1}.eml"
                path.write_bytes(data)
            login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
            self.messages.append(ReceivedMail(envelope.mail_from, tuple(envelope.rcpt_tos), data, path, login))
            session.received = [*getattr(session, "received", []), len(self.messages) - 1]
        return "250 Message accepted for delivery"

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> MailSink:
        self._controller.start()
        self.serving = True
        return self

    def stop(self) -> None:
        self._release.set()
        if self.serving:  # stopping a stopped sink is nothing
            self._controller.stop()
            self.serving = False

    def __enter__(self) -> MailSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
