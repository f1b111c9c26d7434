"""What one connection may cost the API before anyone knows who sent it: time to send a request's headers, time and
bytes to send its body, how many connections and requests are served at once. uvicorn serves HTTP/1.1 with h11
(a request's line and headers: at most h11's 16 KiB); `Bounded` holds a request's headers to a deadline, `RequestLimits`
its body, and refuses what no route takes. docs/operations.md says what a proxy in front should bound as well."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from api.problems import Problem, problem
from domain import MAX_ATTACHMENTS_BYTES, MAX_REQUEST_BYTES

MAX_BODY_BYTES = 2 * MAX_REQUEST_BYTES
"""The largest request body a route takes, but for those in `LARGE_BODIES` (a notification's own limit, 512 KiB as
JSON, is checked after: `422`)."""
MAX_FILES_BODY_BYTES = MAX_BODY_BYTES + 4 * -(-MAX_ATTACHMENTS_BYTES // 3)
"""`POST /v1/notifications` and `POST /v1/broadcasts`: their files' 25 MiB in base64 (34,952,536 bytes) beside the
1 MiB of any body, 36,001,112 bytes (a multipart body carries the same files unencoded). The limits of the files
themselves are checked after (`422`)."""
LARGE_BODIES = {("POST", "/v1/notifications"): MAX_FILES_BODY_BYTES, ("POST", "/v1/broadcasts"): MAX_FILES_BODY_BYTES}
"""The routes that take a body over `MAX_BODY_BYTES`, by method and path, and how large."""
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""The methods served; any other is answered 501 at once."""
CLOSE = {"Connection": "close"}
"""On a `408`: the connection ends with it."""


@dataclass(frozen=True)
class Limits:
    headers_seconds: float = 10
    """From a connection's start, or its last answer, to a request's last header."""
    body_seconds: float = 30
    """From a request's headers to the last byte of its body, beyond what its bytes earn at `body_rate`."""
    body_rate: int = 64 * 1024
    """Bytes a second a body must keep coming at once its first `body_seconds` are spent: each byte that has come
    earns 1 / `body_rate` s more. A body may take `body_seconds` + its size / `body_rate` at most (1 MiB: 46 s; the
    36 MB a notification with files may send: 9 min 40 s); one that comes at half the rate is cut off after twice
    `body_seconds`, a trickle after `body_seconds`."""
    connections: int = 200
    """Connections, and requests under way, at once; more are answered 503 at once."""
    large_bodies_bytes: int = 256 * 1024 * 1024
    """Bytes of large bodies (a route's of `LARGE_BODIES` over `MAX_BODY_BYTES`) read at once, each counted at the
    length it says (or its route's limit, if it says none) from its headers until its answer: one that would go past
    it is answered 503 at once (`Retry-After: 1`). A 36 MB JSON body costs about 70 MB while it is handled: 256 MiB of
    them, about 512 MiB of memory."""
    keep_alive_seconds: int = 5
    """How long an idle connection stays open for its next request."""


DEFAULT_LIMITS = Limits()


class Bounded(H11Protocol):
    """uvicorn's HTTP/1.1, closing a connection that does not send a request's headers within `headers_seconds` of
    its start or of its last answer (uvicorn bounds only an idle connection's wait, not a trickle). A body still
    coming after its answer (refused before it was read: 401, 413) is dropped as it comes, within the same bound."""

    headers_seconds: float = Limits.headers_seconds
    _due: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._due is not None:
            self._due.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._due is not None:
            self._due.cancel()
        self._due = self.loop.call_later(self.headers_seconds, self._late)

    def _late(self) -> None:
        """No request under way: close (one under way has its body bounded by `RequestLimits`)."""
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()


def protocol(limits: Limits) -> type[Bounded]:
    """`Bounded` with these limits, as uvicorn's `http` setting."""
    return type("Bounded", (Bounded,), {"headers_seconds": limits.headers_seconds})


class RequestLimits:
    """Refuse a method not in `METHODS` (`501`); a path or query with a NUL (`400`); a request body over
    `MAX_BODY_BYTES`, or its route's limit in `LARGE_BODIES` (`413`), whether it says its length or streams it, at
    once or as soon as the count is over; a body that has not all come within `body_seconds` of the headers and 1 s
    for each `body_rate` bytes that came (`408`)."""

    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app = app
        self.limits = limits
        self._large = 0
        """Bytes of the large bodies being read or handled now (`Limits.large_bodies_bytes`)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] not in METHODS:
            await problem(501, "the method is not one this server serves")(scope, receive, send)
            return
        if "\x00" in scope["path"] or b"\x00" in unquote_to_bytes(scope["query_string"]):
            await problem(400, "the path or the query holds a NUL character")(scope, receive, send)
            return
        largest = LARGE_BODIES.get((scope["method"], scope["path"]), MAX_BODY_BYTES)
        length = dict(scope["headers"]).get(b"content-length")
        too_large = f"the request body is over {largest:,} bytes"
        if length is not None and length.isdigit() and int(length) > largest:
            await problem(413, too_large)(scope, receive, send)
            return
        said = int(length) if length is not None and length.isdigit() else largest
        large = said if said > MAX_BODY_BYTES else 0
        if large and self._large + large > self.limits.large_bodies_bytes:
            busy = f"the server is reading as many large request bodies as it takes at once; retry (it said {said:,})"
            await problem(503, busy, {"Retry-After": "1"})(scope, receive, send)
            return
        self._large += large
        try:
            await self._bounded(scope, receive, send, largest)
        finally:
            self._large -= large

    async def _bounded(self, scope: Scope, receive: Receive, send: Send, largest: int) -> None:
        """The app, given the request's body as it comes, within `largest` bytes and its time."""
        too_large = f"the request body is over {largest:,} bytes"
        due = asyncio.get_running_loop().time() + self.limits.body_seconds  # and later as bytes come
        seen = 0
        whole = False

        async def counted() -> Message:
            nonlocal seen, whole
            if whole:  # the body is in: what comes next is the client leaving, whenever it does
                return await receive()
            try:
                async with asyncio.timeout_at(due + seen / self.limits.body_rate):
                    message = await receive()
            except TimeoutError:
                late = (
                    f"the request body did not all come within {self.limits.body_seconds:g} s and 1 s for each "
                    f"{self.limits.body_rate:,} bytes that came"
                )
                raise Problem(408, late, CLOSE) from None
            seen += len(message.get("body", b""))
            whole = not message.get("more_body", False)
            if seen > largest:
                raise Problem(413, too_large)
            return message

        await self.app(scope, counted, send)
