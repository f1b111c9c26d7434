"""Hostile HTTP on a real uvicorn server: what a request without a key, a slow one, an odd method or path, a huge
list or another site's form costs the API, and what it answers. Raw sockets where the point is what is sent when."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from psycopg import sql
from temporalio.testing import WorkflowEnvironment

from api.app import create_app, serving
from api.keys import ApiKeys, Scope
from api.limits import MAX_BODY_BYTES, MAX_FILES_BODY_BYTES, Limits
from settings import Settings
from streams import StreamStore
from tests.conftest import ON_BOTH_BACKENDS
from tests.databases import Databases, admin_url, role_urls
from tests.service import Api

MIB = 1024 * 1024
TIGHT = Limits(headers_seconds=1, body_seconds=1, body_rate=4096, connections=3, large_bodies_bytes=4 * MIB)


@asynccontextmanager
async def connection(url: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    where = urlsplit(url)
    reader, writer = await asyncio.open_connection(where.hostname, where.port)
    try:
        yield reader, writer
    finally:
        writer.close()


def head(method: str, path: str, length: int, key: str | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: notify.test", "Content-Type: application/json"]
    lines += [f"Content-Length: {length}"] + ([f"Authorization: Bearer {key}"] if key else [])
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def answer(reader: asyncio.StreamReader, within: float = 10) -> tuple[int, bytes]:
    """The status and the rest of what the server sent before it closed the connection."""
    async with asyncio.timeout(within):
        sent = await reader.read()
    status_line, _, rest = sent.partition(b"\r\n")
    return int(status_line.split()[1]), rest


async def status_and_headers(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    async with asyncio.timeout(10):
        sent = await reader.readuntil(b"\r\n\r\n")
    return int(sent.split()[1]), sent.lower()


@ON_BOTH_BACKENDS
@pytest.mark.parametrize(("key", "status"), [(None, 401), ("not-a-key", 401), ("reader", 403)])
async def test_a_request_without_a_usable_key_is_refused_before_its_body_comes(
    api: Api, key: str | None, status: int
) -> None:
    async with connection(str(api.http.base_url)) as (reader, writer):
        writer.write(head("POST", "/v1/notifications", MIB, api.keys.get(key, key) if key else None) + b"{" * 1000)
        await writer.drain()
        code, headers = await status_and_headers(reader)  # read without sending the rest
    assert code == status and b"content-type: application/problem+json" in headers


async def test_the_rest_of_a_refused_body_is_dropped_within_the_bound(tight: tuple[str, str]) -> None:
    url, _ = tight
    async with connection(url) as (reader, writer):
        writer.write(head("POST", "/v1/notifications", MIB) + b"{" * 1000)
        await writer.drain()
        assert (await status_and_headers(reader))[0] == 401
        async with asyncio.timeout(TIGHT.headers_seconds + 5):
            await reader.read()  # the rest never comes: closed


@ON_BOTH_BACKENDS
async def test_a_keyless_request_with_malformed_json_is_401_not_422(api: Api) -> None:
    refused = await api.call(
        "POST", "/v1/notifications", key=None, content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert refused.status_code == 401


@ON_BOTH_BACKENDS
async def test_a_key_with_its_scope_still_has_its_body_read(api: Api) -> None:
    body = b'{"entity": "user-1", "subject": "S", "body": "B"}'
    async with connection(str(api.http.base_url)) as (reader, writer):
        writer.write(head("POST", "/v1/notifications", len(body), api.keys["sender"]) + body[:10])
        await writer.drain()
        writer.write(body[10:])
        async with asyncio.timeout(10):
            status_line = await reader.readline()
    assert status_line.split()[1] == b"202"


@pytest.fixture
async def tight(dev_env: WorkflowEnvironment, store: StreamStore, settings: Settings) -> AsyncIterator[tuple[str, str]]:
    """The API within `TIGHT`, and a key with every scope."""
    async with (
        settings.open_streams(as_owner=True) as owner,
        serving(create_app(store, dev_env.client, settings, TIGHT), "127.0.0.1", 0) as url,
    ):
        yield url, await ApiKeys(owner).create("all", list(Scope))


async def test_a_trickled_body_is_cut_off_within_its_bound(tight: tuple[str, str]) -> None:
    url, key = tight
    async with connection(url) as (reader, writer):
        writer.write(head("POST", "/v1/notifications", 1000, key) + b'{"entity": ')
        await writer.drain()
        started = time.monotonic()
        code, rest = await answer(reader, within=TIGHT.body_seconds + 5)
    assert code == 408 and b"did not all come within 1 s" in rest
    assert time.monotonic() - started < TIGHT.body_seconds + 5


async def test_large_bodies_past_the_servers_budget_are_503_at_once_and_smaller_ones_go_on(
    tight: tuple[str, str],
) -> None:
    url, key = tight
    async with connection(url) as (held, holding):
        holding.write(head("POST", "/v1/notifications", 2 * MIB, key) + b'{"entity": ')  # 2 of its 4 MiB
        await holding.drain()
        async with connection(url) as (reader, writer):
            writer.write(head("POST", "/v1/notifications", 3 * MIB, key))
            await writer.drain()
            code, rest = await answer(reader)
        assert code == 503 and b"retry-after: 1" in rest.lower(), rest
        assert b"as many large request bodies as it takes at once" in rest
        async with connection(url) as (reader, writer):
            writer.write(head("POST", "/v1/notifications", MIB + MIB // 2, key) + b"x" * (MIB + MIB // 2))
            await writer.drain()
            code, rest = await answer(reader)
        assert code == 422, rest  # read, and refused for what it is
        code, _ = await answer(held, within=TIGHT.body_seconds + 5)
    assert code == 408


async def test_a_body_that_keeps_coming_at_the_rate_is_read_past_body_seconds(tight: tuple[str, str]) -> None:
    url, key = tight
    body = json.dumps({"entity": "user-1", "subject": "S", "body": "B"}).encode().ljust(3 * TIGHT.body_rate)
    pieces = [body[i : i + len(body) // 6] for i in range(0, len(body), len(body) // 6)]
    async with connection(url) as (reader, writer):
        started = time.monotonic()
        writer.write(head("POST", "/v1/notifications", len(body), key))
        for piece in pieces:  # twice the rate, for 1.5 s
            await asyncio.sleep(0.25)
            writer.write(piece)
            await writer.drain()
        code, headers = await status_and_headers(reader)
        said = json.loads(await reader.readexactly(content_length(headers)))
    assert time.monotonic() - started > TIGHT.body_seconds
    assert (code, said["detail"]) == (422, "entity 'user-1' is not in the directory"), said  # read whole


def content_length(headers: bytes) -> int:
    return int(headers.partition(b"content-length: ")[2].partition(b"\r\n")[0])


@ON_BOTH_BACKENDS
async def test_a_body_over_its_routes_limit_is_413_before_it_is_read(api: Api) -> None:
    """`POST /v1/notifications` and `POST /v1/broadcasts` take their files' 25 MiB in base64; every other route
    1 MiB."""
    for method, path, largest in [
        ("POST", "/v1/notifications", MAX_FILES_BODY_BYTES),
        ("POST", "/v1/broadcasts", MAX_FILES_BODY_BYTES),
        ("PUT", "/v1/entities/user-3", MAX_BODY_BYTES),
        ("POST", "/v1/notifications/x/cancel", MAX_BODY_BYTES),
    ]:
        async with connection(str(api.http.base_url)) as (reader, writer):
            writer.write(head(method, path, largest + 1, api.keys["all"]) + b"{")
            await writer.drain()
            code, headers = await status_and_headers(reader)  # read without sending the rest
            said = json.loads(await reader.readexactly(content_length(headers)))
        assert (code, said["detail"]) == (413, f"the request body is over {largest:,} bytes")


async def test_trickled_headers_are_cut_off_within_their_bound(tight: tuple[str, str]) -> None:
    url, _ = tight
    async with connection(url) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: notify.test\r\n")  # and never the blank line
        await writer.drain()
        async with asyncio.timeout(TIGHT.headers_seconds + 5):
            assert await reader.read() == b""  # closed, with no answer


async def test_connections_over_the_bound_are_answered_503(tight: tuple[str, str]) -> None:
    url, _ = tight
    async with connection(url), connection(url), connection(url), connection(url) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: notify.test\r\nConnection: close\r\n\r\n")
        await writer.drain()
        code, _ = await answer(reader)
    assert code == 503
    async with httpx.AsyncClient(base_url=url) as http:  # and served again once they are gone
        assert (await http.get("/healthz")).status_code == 200


async def test_unknown_methods_count_as_one_label_and_a_huge_one_is_refused(api: Api) -> None:
    for i in range(20):
        assert (await api.call(f"BREW{i}", "/v1/notifications")).status_code == 501
    metrics = (await api.call("GET", "/metrics", key=None)).text
    assert "BREW" not in metrics and 'method="other"' in metrics
    async with connection(str(api.http.base_url)) as (reader, writer):
        writer.write(b"X" * 60_000 + b" / HTTP/1.1\r\nHost: notify.test\r\n\r\n")
        await writer.drain()
        code, _ = await status_and_headers(reader)  # not waiting for the kept-alive connection to close
    assert code == 501


async def test_too_many_tags_are_refused_before_they_are_read(api: Api) -> None:
    tags = {f"t{i}": "v" for i in range(80_000)}
    started = time.monotonic()
    refused = await api.call(
        "POST", "/v1/notifications", json={"entity": "user-1", "subject": "S", "body": "B", "tags": tags}
    )
    took = time.monotonic() - started
    assert refused.status_code == 422 and refused.json()["detail"] == "tags: at most 50 tags, not 80000"
    assert took < 1, took  # it took 2 s when the tags were made into models first


@ON_BOTH_BACKENDS
@pytest.mark.parametrize(
    "path",
    [
        "/v1/notifications/%00",
        "/v1/notifications/x%00y/events",
        "/v1/notifications?entity=%00",
        "/v1/audit/email?address=a%00@example.com",
        "/v1/entities/%00",
        "/notifications/%00",
        "/search?address=%00",
    ],
)
async def test_a_nul_in_a_path_or_query_is_400(api: Api, path: str) -> None:
    refused = await api.call("GET", path, headers={"Cookie": f"notify_key={api.keys['all']}"})
    assert refused.status_code == 400 and refused.json()["detail"] == "the path or the query holds a NUL character"


async def test_an_id_in_the_idempotency_key_form_is_not_found(api: Api) -> None:
    nid = "idempotency-key:k-1"
    for method, path in (("GET", nid), ("GET", f"{nid}/events"), ("POST", f"{nid}/cancel")):
        answered = await api.call(method, f"/v1/notifications/{path}")
        assert answered.status_code == 404, answered.text
        assert answered.headers["content-type"] == "application/problem+json"
    page = await api.call("GET", f"/notifications/{nid}", headers={"Cookie": f"notify_key={api.keys['reader']}"})
    assert page.status_code == 404 and "text/html" in page.headers["content-type"]


@pytest.mark.parametrize(
    "sent_from",
    [{"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}, {"Origin": "http://evil.example"}],
)
async def test_sign_in_and_sign_out_from_another_site_are_refused(api: Api, sent_from: dict[str, str]) -> None:
    signed = await api.http.post("/sign-in", data={"key": api.keys["reader"]}, headers=sent_from)
    assert signed.status_code == 403 and "set-cookie" not in signed.headers
    out = await api.http.post("/sign-out", headers=sent_from | {"Cookie": f"notify_key={api.keys['reader']}"})
    assert out.status_code == 403 and "set-cookie" not in out.headers
    here = {"Origin": str(api.http.base_url).rstrip("/"), "Sec-Fetch-Site": "same-origin"}
    assert (await api.http.post("/sign-in", data={"key": api.keys["reader"]}, headers=here)).status_code == 303
    assert "notify_key" in api.http.cookies
    api.http.cookies.clear()


async def test_the_host_header_is_in_no_redirect_or_asset_url(api: Api) -> None:
    evil = {"Host": "evil.example"}
    to_sign_in = await api.call("GET", "/", key=None, headers=evil)
    assert to_sign_in.status_code == 303 and to_sign_in.headers["location"].startswith("/sign-in?")
    page = await api.call("GET", "/", key=None, headers=evil | {"Cookie": f"notify_key={api.keys['reader']}"})
    assert page.status_code == 200 and 'href="/static/notify.css"' in page.text and "evil.example" not in page.text
    docs = await api.call("GET", "/docs", key=None, headers=evil)
    assert docs.status_code == 200 and "evil.example" not in docs.text
    slash = await api.call("GET", "/v1/notifications/", headers=evil)
    assert slash.status_code == 404 and "location" not in slash.headers


async def test_a_503_says_what_cannot_be_used_but_not_where(
    postgres: Databases, dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    database = postgres.fresh()
    settings = Settings(_env_file=None, data_dir=tmp_path, streams_url=database, **role_urls(database))
    name = urlsplit(database).path.lstrip("/")
    async with (
        settings.open_streams() as store,
        serving(create_app(store, dev_env.client, settings), "127.0.0.1", 0) as url,
        httpx.AsyncClient(base_url=url, timeout=60) as http,
    ):
        with psycopg.connect(admin_url(), autocommit=True) as admin:  # the streams go away
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        keyed = await http.get("/v1/notifications", headers={"Authorization": f"Bearer nk_000000000000_{'A' * 43}"})
    assert keyed.status_code == 503, keyed.text
    assert keyed.json()["detail"] == "a service the API needs cannot be used now: the server's log says why"
    assert name not in keyed.text and "127.0.0.1" not in keyed.text  # /readyz: tests/test_api.py
