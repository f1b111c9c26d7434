"""A local Slack sink: an HTTP server speaking the part of Slack's Web API the Slack channel uses.

`POST /api/chat.postMessage` with a bearer token (or a `token` field), a channel, text and optional metadata,
answered as Slack does: `{"ok": true, "channel": ..., "ts": ...}` or `{"ok": false, "error": ...}`; and
`GET /api/conversations.history` (a channel's messages since `oldest`, newest first, with their metadata when
`include_all_metadata` is given, and the files they share). Files come as Slack's upload flow sends them:
`files.getUploadURLExternal` (filename, length) gives a file id and an upload URL on the sink itself, which takes
the bytes as the POST body (or a multipart form's first part), then `files.completeUploadExternal` (files as JSON,
`[{"id", "title"}]`; channel_id; initial_comment) shares them in one message. It keeps every message it accepts and
every file it shares, in memory and, given a folder, as JSON lines there (the files without their bytes). Responses
can be scripted so that tests can make it misbehave.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import mimetypes
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web

from sinks.mail import free_port

POSTING = frozenset({"chat.postMessage", "files.completeUploadExternal"})
"""The methods that post a message in a channel."""
MAX_UPLOAD = 1024**3
"""The largest body the sink takes: Slack's limit for a file, 1 GB."""


@dataclass(frozen=True)
class PostedMessage:
    token: str | None
    channel: str
    text: str
    ts: str
    metadata: dict[str, Any] | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    """The files the message shares, as the history shows them (id, name, title, mimetype, size)."""


@dataclass
class SharedFile:
    """A file uploaded and shared by `files.completeUploadExternal`, with its bytes."""

    id: str
    name: str
    title: str
    content: bytes
    channel: str | None
    """None for a file completed without a channel: private, in no message."""
    initial_comment: str | None
    ts: str | None
    """The message that shares it."""


@dataclass
class _Upload:
    """A file between `files.getUploadURLExternal` and its completion."""

    token: str
    name: str
    length: int
    content: bytes | None = None


@dataclass
class ScriptedResponse:
    status: int = 200
    body: dict[str, Any] | str = field(default_factory=lambda: {"ok": True})
    """JSON, or text (`text/plain` unless `headers` say otherwise): a proxy's error page, say."""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0
    """Seconds a slow server takes to answer."""
    method: str | None = None
    """The API method whose next call it answers; None for the next call of any."""

    def response(self) -> web.Response:
        if isinstance(self.body, str):
            return web.Response(text=self.body, status=self.status, headers=self.headers)
        return web.json_response(self.body, status=self.status, headers=self.headers)


class SlackSink:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        tokens: set[str] | None = None,
        folder: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.tokens = tokens
        """The tokens it accepts (`invalid_auth` for others); None accepts any non-empty token."""
        self.folder = folder
        self.messages: list[PostedMessage] = []
        self.calls: list[tuple[str, str | None]] = []
        """Every API call received: (method, token)."""
        self.connections: set[tuple[str, int]] = set()
        """The client's address and port of every call: one per connection the calls came over."""
        self.unknown_channels: set[str] = set()
        """Channels it answers `channel_not_found` for."""
        self.hanging = False
        """Never answer (until the sink stops): a Slack that does not respond."""
        self.failing = False
        """Answer every call with HTTP 500 (`internal_error`): a Slack that is down."""
        self.flaky = 0.0
        """The share of posts answered HTTP 500 at random before they are recorded, and again the share answered 500
        after (an answer lost on the way): a struggling Slack."""
        self.history_forbidden = False
        """Answer `conversations.history` with `missing_scope`, as for a token without `channels:history`."""
        self.files: list[SharedFile] = []
        self.uploads: dict[str, _Upload] = {}
        """Files given an upload URL and not completed yet, by id."""
        self.lost_answers: list[str] = []
        """API methods whose next call is carried out, and then the connection dropped before any answer: an answer
        lost on the way."""
        self._file_ids = itertools.count(1)
        self.posted = threading.Event()
        """Set when a post is recorded (after `hold_answers`)."""
        self._answering = threading.Event()
        self._answering.set()
        self._stopping: asyncio.Event | None = None
        self._scripted: list[ScriptedResponse] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api/"

    def script_responses(self, *responses: ScriptedResponse) -> None:
        """Answer the next calls with these responses, in order (each the next call of its method, if it names one),
        before behaving normally again."""
        with self._lock:
            self._scripted.extend(responses)

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        fields: dict[str, Any] = dict(request.query)  # slack_sdk sends some POSTs' arguments in the query string
        if request.method == "POST" and request.content_type == "application/json":
            fields.update(await request.json())
        elif request.method == "POST":
            fields.update(await request.post())
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else fields.get("token")
        with self._lock:
            self.calls.append((method, token))
            if request.transport is not None:  # None once the client has gone
                self.connections.add(request.transport.get_extra_info("peername")[:2])
            hanging = self.hanging
        if hanging:
            assert self._stopping is not None
            await self._stopping.wait()
            return web.json_response({"ok": False, "error": "service_unavailable"}, status=503)
        chance = random.random() if method == "chat.postMessage" else 1.0
        if self.failing or chance < self.flaky:
            return web.json_response({"ok": False, "error": "internal_error"}, status=500)
        with self._lock:
            due = next((i for i, r in enumerate(self._scripted) if r.method in (None, method)), None)
            scripted = None if due is None else self._scripted.pop(due)
        if scripted is None:
            with self._lock:
                answer = self._answer(method, token, fields)
            if method in POSTING and answer.get("ok"):
                self.posted.set()
                await asyncio.get_running_loop().run_in_executor(None, self._answering.wait)
                if chance < 2 * self.flaky:
                    return web.json_response({"ok": False, "error": "internal_error"}, status=500)
            with self._lock:
                lost = method in self.lost_answers
                if lost:
                    self.lost_answers.remove(method)
            if lost and request.transport is not None:
                request.transport.abort()
            return web.json_response(answer)
        await asyncio.sleep(scripted.delay)
        return scripted.response()

    def _answer(self, method: str, token: str | None, fields: dict[str, Any]) -> dict[str, Any]:
        if not token:
            return {"ok": False, "error": "not_authed"}
        if self.tokens is not None and token not in self.tokens:
            return {"ok": False, "error": "invalid_auth"}
        if method == "conversations.history":
            return self._history(fields)
        if method == "files.getUploadURLExternal":
            return self._upload_url(token, fields)
        if method == "files.completeUploadExternal":
            return self._complete(token, fields)
        if method != "chat.postMessage":
            return {"ok": False, "error": "unknown_method"}
        channel, text = fields.get("channel"), fields.get("text")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if channel in self.unknown_channels:
            return {"ok": False, "error": "channel_not_found"}
        if not text:
            return {"ok": False, "error": "no_text"}
        metadata = fields.get("metadata")
        metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
        message = PostedMessage(token=token, channel=channel, text=text, ts=f"{time.time():.6f}", metadata=metadata)
        self._keep(message)
        return {"ok": True, "channel": channel, "ts": message.ts, "message": {"text": text}}

    def _keep(self, message: PostedMessage) -> None:
        self.messages.append(message)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            with (self.folder / "messages.jsonl").open("a") as f:
                f.write(json.dumps(asdict(message)) + "\n")

    def _upload_url(self, token: str, fields: dict[str, Any]) -> dict[str, Any]:
        filename, length = fields.get("filename"), str(fields.get("length") or "")
        if not filename or not length.isdigit():
            return {"ok": False, "error": "invalid_arguments"}
        file_id = f"F{next(self._file_ids):010d}"
        self.uploads[file_id] = _Upload(token, filename, int(length))
        return {"ok": True, "upload_url": f"http://{self.host}:{self.port}/upload/v1/{file_id}", "file_id": file_id}

    async def _receive(self, request: web.Request) -> web.Response:
        """The upload URL: the file's bytes, as the body or as a multipart form's first part."""
        if request.content_type.startswith("multipart/"):
            part = await (await request.multipart()).next()
            content = await part.read() if isinstance(part, BodyPartReader) else b""
        else:
            content = await request.read()
        with self._lock:
            upload = self.uploads.get(request.match_info["file_id"])
            if upload is None:
                return web.Response(status=404, text="Not Found")
            upload.content = content
        return web.Response(text=f"OK - {len(content)}")

    def _complete(self, token: str, fields: dict[str, Any]) -> dict[str, Any]:
        try:
            named = json.loads(fields.get("files") or "")
            ids = [str(f["id"]) for f in named]
        except (ValueError, TypeError, KeyError):
            return {"ok": False, "error": "invalid_arguments"}
        if not ids:
            return {"ok": False, "error": "invalid_arguments"}
        uploads = [self.uploads.get(i) for i in ids]
        if any(u is None or u.token != token or u.content is None for u in uploads):
            return {"ok": False, "error": "file_not_found"}
        channel = fields.get("channel_id") or None
        if channel in self.unknown_channels:
            return {"ok": False, "error": "channel_not_found"}
        comment, ts = fields.get("initial_comment"), f"{time.time():.6f}" if channel else None
        shared = [
            SharedFile(i, u.name, f.get("title") or u.name, u.content, channel, comment, ts)
            for i, u, f in zip(ids, uploads, named, strict=True)
            if u is not None and u.content is not None
        ]
        for file in shared:
            del self.uploads[file.id]
        self.files.extend(shared)
        if channel is not None and ts is not None:
            listed = [
                {"id": f.id, "name": f.name, "title": f.title, "mimetype": _media_type(f.name), "size": len(f.content)}
                for f in shared
            ]
            self._keep(PostedMessage(token=token, channel=channel, text=comment or "", ts=ts, files=listed))
        return {"ok": True, "files": [{"id": f.id, "title": f.title} for f in shared]}

    def _history(self, fields: dict[str, Any]) -> dict[str, Any]:
        if self.history_forbidden:
            return {"ok": False, "error": "missing_scope", "needed": "channels:history"}
        oldest = float(fields.get("oldest") or 0)
        with_metadata = str(fields.get("include_all_metadata")).lower() in ("1", "true")
        found = [m for m in self.messages if m.channel == fields.get("channel") and float(m.ts) >= oldest]
        return {
            "ok": True,
            "messages": [
                {
                    "type": "message",
                    "text": m.text,
                    "ts": m.ts,
                    **({"metadata": m.metadata} if with_metadata and m.metadata else {}),
                    **({"files": m.files, "upload": True} if m.files else {}),
                }
                for m in reversed(found)
            ],
            "has_more": False,
        }

    @property
    def open_connections(self) -> int:
        """Connections from clients open now."""
        server = self._runner.server if self._runner is not None else None
        return len(server.connections) if server is not None else 0

    def hold_answers(self) -> None:
        """Keep the answer to the next posts, messages or shared files (each recorded as posted first, `posted` set)
        until `release()`."""
        self.posted.clear()
        self._answering.clear()

    def release(self) -> None:
        self._answering.set()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> SlackSink:
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            self._loop = loop = asyncio.new_event_loop()
            self._stopping = asyncio.Event()
            app = web.Application(client_max_size=MAX_UPLOAD)  # aiohttp refuses a body over 1 MiB by default
            app.router.add_post("/api/{method}", self._handle)
            app.router.add_get("/api/{method}", self._handle)
            app.router.add_post("/upload/v1/{file_id}", self._receive)
            self._runner = web.AppRunner(app)
            try:
                loop.run_until_complete(self._runner.setup())
                loop.run_until_complete(web.TCPSite(self._runner, self.host, self.port).start())
            except BaseException as error:
                failure.append(error)
                return
            finally:
                started.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=serve, name="slack-sink", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        self._answering.set()
        if self._loop is not None and self._thread is not None:
            assert self._stopping is not None
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    def __enter__(self) -> SlackSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _media_type(name: str) -> str:
    return mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"
