"""What the benchmarks and the soak stand up alike: a fresh PostgreSQL database for the run, and a client of the dev
server they just started."""

from __future__ import annotations

import asyncio
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from temporalio.client import Client

from client import TemporalUnreachable, connect
from settings import Settings
from streams.postgres import grant, migrate


async def fresh_database(admin_url: str) -> str:
    """A new database on the server `admin_url` connects to, migrated and granted to the roles: its owner's URL."""
    admin = urlsplit(admin_url)
    name = f"notify_bench_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as db:
        await db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = urlunsplit(admin._replace(path=f"/{name}"))
    await migrate(url)
    await grant(url)
    return url


async def drop_database(admin_url: str, url: str) -> None:
    """Drop the database `url` names (one `fresh_database` made), whoever is still connected to it."""
    name = urlsplit(url).path.lstrip("/")
    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as db:
        await db.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


async def reachable(settings: Settings, *, lazy: bool = False) -> Client:
    """A client of the dev server just started, once it answers; `lazy`, one that then outlives its restarts."""
    deadline = time.monotonic() + 60
    while True:
        try:
            client = await connect(settings)
            return await connect(settings, lazy=True) if lazy else client
        except TemporalUnreachable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
