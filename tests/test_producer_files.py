"""Files from the producer's SQL call (issue 25): `notify_request(..., attachments => ..., attach_to => ...)` keeps
each content once, as `notify_put_contents` does, and names the files as the Python client does (migration 0013)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from temporalio.testing import WorkflowEnvironment

from api.app import owner_store
from client import IdempotencyKeyConflict, NotificationClient, attachment, connect
from domain import Channel, ExecuteOpRequestedEvent, SendNotificationToEntityOp
from harness.processes import start_worker
from sinks.mail import MailSink, free_port
from sinks.slack import SlackSink
from streams import Record, StreamName, open_store
from streams.directory import import_entries
from streams.postgres import MIGRATIONS, SCHEMA_VERSION, migrate
from tests.databases import Databases
from tests.test_postgres import (
    ENTITY,
    _kept,
    _rows_of_every_table,
    as_role,
    client_settings,
    database,
    ops_in_directory,
    request_by_sql,
    sinks,
    worker_env,
)

__all__ = ["database", "ops_in_directory", "sinks", "worker_env"]  # fixtures: pytest finds them in the module

PDF = b"%PDF-1.7\n" + bytes(range(256)) * 1200
PNG = b"\x89PNG\r\n\x1a\n" + bytes(reversed(range(256))) * 40
HTML = '<p>The invoice is attached.</p><img src="cid:logo">'
MiB = 1024 * 1024
OTHERWISE = (
    'attachment 1: a file is {"filename", "content"} (text, the content in base64), perhaps with "content_type" and'
    ' "content_id" (text)'
)


def sent(filename: str, content: bytes, **more: str) -> dict[str, str]:
    """A file as `notify_request` takes it: its content in base64."""
    return {"filename": filename, "content": base64.b64encode(content).decode(), **more}


INVOICE = sent("invoice.pdf", PDF, content_type="application/pdf")
LOGO = sent("logo.png", PNG, content_type="IMAGE/PNG", content_id="logo")


def requested(record: Record | None) -> SendNotificationToEntityOp:
    """The request a client-operation record holds."""
    assert record is not None
    operation = record.object(ExecuteOpRequestedEvent).operation
    assert isinstance(operation, SendNotificationToEntityOp)
    return operation


def written(database: str) -> dict[str, int]:
    """What the service's requests have written: records (the directory aside), contents and their names."""
    with psycopg.connect(database) as db:
        return {
            table: db.execute(f"SELECT count(*) FROM {table}{where}").fetchone()[0]  # type: ignore[index]
            for table, where in (
                ("notify_records", " WHERE stream <> 'entity-directory'"),
                ("notify_unique_ids", ""),
                ("notify_contents", ""),
                ("notify_content_refs", ""),
            )
        }


async def test_plain_sql_as_the_client_role_sends_a_pdf_and_an_inline_image_that_arrive_whole(
    dev_env: WorkflowEnvironment,
    database: str,
    worker_env: dict[str, str],
    sinks: tuple[MailSink, SlackSink],
    tmp_path: Path,
) -> None:
    mail, slack = sinks
    worker = start_worker(worker_env, tmp_path)
    try:
        settings = client_settings(database)
        async with settings.open_streams() as store, owner_store(settings, store) as owner:
            await import_entries(owner, [ENTITY])
            client = NotificationClient(store, dev_env.client, settings)
            nid = await asyncio.to_thread(
                request_by_sql, database, "ops", "Invoice", html_body=HTML, attachments=json.dumps([INVOICE, LOGO])
            )
            view = await client.result(nid)
            record = await store.reader(StreamName.CLIENT_OPERATION).latest(nid)
    finally:
        worker.stop()
    assert view.status == "sent"
    [message] = [m.message for m in mail.messages]
    assert [(p.get_filename(), p.get_content_type(), p.get_content()) for p in message.iter_attachments()] == [
        ("invoice.pdf", "application/pdf", PDF)
    ]
    html = message.get_body(("related", "html"))
    assert html is not None and html.get_content_type() == "multipart/related"
    [shown, logo] = html.iter_parts()
    assert 'src="cid:logo"' in shown.get_content()
    assert (logo["Content-ID"], logo.get_content_type(), logo.get_content()) == ("<logo>", "image/png", PNG)
    assert [(f.name, f.content) for f in slack.files] == [("invoice.pdf", PDF)]  # an inline image is the mail's
    # named as the Python client names them, never carried
    assert record is not None and len(record.payload) < 2_000
    assert requested(record).attachments == [
        attachment("invoice.pdf", PDF),
        attachment("logo.png", PNG, content_id="logo"),
    ]


@pytest.mark.usefixtures("ops_in_directory")
async def test_the_same_key_from_python_and_sql_is_one_request(database: str) -> None:
    """The same files, named the same, are the same request whichever door claimed the key; each content is kept
    once, named by the one notification; other files are another request (NT004, or the client's conflict)."""
    settings = client_settings(database)
    async with settings.open_streams() as store:
        client = NotificationClient(
            store,
            await connect(settings.model_copy(update={"temporal_address": f"127.0.0.1:{free_port()}"}), lazy=True),
            settings,
        )
        files = [attachment("invoice.pdf", PDF), attachment("logo.png", PNG, content_id="logo")]
        op = SendNotificationToEntityOp(entity_id="ops", subject="Invoice", body="B", html_body=HTML, attachments=files)
        by_python = await client.request(op, idempotency_key="k-1", contents=[PDF, PNG])
        call = (
            "SELECT notify_request('ops', 'Invoice', 'B', %s, idempotency_key => %s, attachments => %s,"
            " attach_to => %s)"
        )
        with psycopg.connect(as_role(database, "notify_client"), autocommit=True) as db:
            assert db.execute(call, (HTML, "k-1", json.dumps([INVOICE, LOGO]), None)).fetchone() == (by_python,)
            for other in ([{**INVOICE, "filename": "invoice-2.pdf"}, LOGO], [LOGO, INVOICE], [INVOICE]):
                with pytest.raises(psycopg.Error, match=f"was already used by notification {by_python}") as refused:
                    db.execute(call, (HTML, "k-1", json.dumps(other), None))
                assert refused.value.sqlstate == "NT004"
            with pytest.raises(psycopg.Error, match=f"was already used by notification {by_python}"):
                db.execute(call, (HTML, "k-1", json.dumps([INVOICE, LOGO]), ["email"]))
            by_sql = db.execute(call, (HTML, "k-2", json.dumps([INVOICE, LOGO]), ["email"])).fetchone()[0]  # type: ignore[index]
        to_email = op.model_copy(update={"attach_to": [Channel.EMAIL]})
        assert await client.request(to_email, idempotency_key="k-2", contents=[PDF, PNG]) == by_sql
        with pytest.raises(IdempotencyKeyConflict):
            await client.request(op, idempotency_key="k-2", contents=[PDF, PNG])
        records = {nid: await store.reader(StreamName.CLIENT_OPERATION).latest(nid) for nid in (by_python, by_sql)}
    operations = [requested(r) for r in records.values()]
    assert operations == [op, to_email]
    with psycopg.connect(database) as db:
        assert db.execute("SELECT count(*) FROM notify_contents").fetchone() == (2,)
        assert db.execute(
            "SELECT notification_id, count(*) FROM notify_content_refs GROUP BY 1 ORDER BY 1"
        ).fetchall() == sorted([(by_python, 2), (by_sql, 2)])


def _refused(limit: str, attachments: Any, html_body: str | None = HTML, attach_to: str = "NULL") -> Any:
    return pytest.param(attachments, html_body, attach_to, limit, id=limit)


@pytest.mark.usefixtures("ops_in_directory")
@pytest.mark.parametrize(
    ("attachments", "html_body", "attach_to", "said"),
    [
        _refused("at most 20 attachments, not 21", [sent(f"f{i}.txt", b"x") for i in range(21)]),
        _refused(
            "attachment 2: 10,485,761 bytes; a file may be at most 10,485,760 (10 MiB)",
            [INVOICE, sent("big.bin", bytes(10 * MiB + 1))],
        ),
        _refused(
            "the attachments are over 26,214,400 bytes (25 MiB) in all",
            [sent(f"{i}.bin", bytes(9 * MiB)) for i in range(3)],
        ),
        _refused("attachment 1: content must be base64", [{"filename": "a.txt", "content": "not base64!"}]),
        _refused("attachment 1: content must be base64", [{"filename": "a.txt", "content": "aGVsbG8=aGVsbG8="}]),
        _refused("attachment 1: content must be base64", [{"filename": "a.txt", "content": "aGVsbG8"}]),
        *(
            _refused("attachment 1: a filename must be 1 to 255 characters, without / or \\", [sent(name, b"x")])
            for name in ("", "f" * 256, "../etc/passwd", "C:\\passwd")
        ),
        _refused(
            "each inline image has a content id of its own",
            [LOGO, sent("other.png", b"other", content_id="logo")],
        ),
        *(
            _refused("an inline image is shown by an HTML body: give one", [LOGO], html_body=html)
            for html in (None, "")
        ),
        _refused("attachments must be a JSON array of objects", INVOICE),
        _refused("attachments must be a JSON array of objects", ["invoice.pdf"]),
        _refused(OTHERWISE, [{**INVOICE, "contentType": "application/pdf"}]),
        _refused(OTHERWISE, [{**INVOICE, "content_id": 7}]),
        _refused(OTHERWISE, [{"filename": "a.txt"}]),
        _refused("attach_to names channels: email, slack", [INVOICE], attach_to="ARRAY['email', 'fax']"),
        _refused("attach_to names channels: email, slack", [INVOICE], attach_to="ARRAY[NULL]::text[]"),
    ],
)
def test_each_limit_is_refused_with_nt002_and_nothing_is_written(
    database: str, attachments: Any, html_body: str | None, attach_to: str, said: str
) -> None:
    with psycopg.connect(as_role(database, "notify_client"), autocommit=True) as db:
        with pytest.raises(psycopg.Error) as refused:
            db.execute(
                f"SELECT notify_request('ops', 'S', 'B', %s, idempotency_key => 'k', attachments => %s,"
                f" attach_to => {attach_to})",
                (html_body, json.dumps(attachments)),
            )
    assert (refused.value.sqlstate, refused.value.diag.message_primary) == ("NT002", f"notify_request: {said}")
    assert written(database) == dict.fromkeys(
        ("notify_records", "notify_unique_ids", "notify_contents", "notify_content_refs"), 0
    )


@pytest.mark.usefixtures("ops_in_directory")
async def test_old_calls_go_on_as_they_were_and_write_no_files(database: str) -> None:
    """The old signature is gone, not overloaded: every call of it, by position or by name, is the new one's, and
    writes no `attachments` nor `attach_to` key, as before."""
    with psycopg.connect(as_role(database, "notify_client"), autocommit=True) as db:
        ids = [
            db.execute(call).fetchone()[0]  # type: ignore[index]
            for call in (
                "SELECT notify_request('ops', 'Deploy finished', 'v1.2 is live.')",
                "SELECT notify_request('ops', 'S', 'B', '<p>B</p>', 'B', '{\"team\": \"db\"}', '2030-12-01 09:00+01',"
                " 'k-8')",
                "SELECT notify_request(entity_id => 'ops', subject => 'Deploy finished', body => 'v1.2 is live.',"
                " html_body => '<p>v1.2 is live.</p>', slack_text => NULL, tags => '{\"team\": \"payments\"}',"
                " send_at => '2030-12-01 09:00+01', idempotency_key => 'deploy-1.2')",
            )
        ]
    with psycopg.connect(database) as db:
        assert db.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.proname IN ('notify_request', 'notify_accept')"
            " ORDER BY 1"
        ).fetchall() == [
            ("notify_accept(text,text,text,text,text,jsonb,timestamp with time zone,text,jsonb,text[])",),
            ("notify_request(text,text,text,text,text,jsonb,timestamp with time zone,text,jsonb,text[])",),
        ]
    async with open_store(database) as owner:
        records = [await owner.reader(StreamName.CLIENT_OPERATION).latest(nid) for nid in ids]
    operations = [json.loads(r.payload)["operation"] for r in records if r is not None]
    assert [sorted(set(op) & {"attachments", "attach_to"}) for op in operations] == [[], [], []]
    assert [requested(r).subject for r in records] == [
        "Deploy finished",
        "S",
        "Deploy finished",
    ]
    assert written(database)["notify_contents"] == 0


async def test_migration_13_keeps_everything_and_requests_take_files(postgres: Databases) -> None:
    """A store at schema 12, with a request by the old call, its key's claim and contents, is migrated to 13: every
    row is as it was; the same request by the new call is the one claimed; new contents are kept out of line and
    uncompressed, the old ones read as they were."""
    url = postgres.empty()
    text = b"a text that compresses well " * 200
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("SET search_path = public, pg_temp")
        db.execute("CREATE TABLE notify_schema_migrations (version integer PRIMARY KEY, name text NOT NULL)")
        for version in range(1, 13):
            db.execute(MIGRATIONS[version].read_text())
            db.execute("INSERT INTO notify_schema_migrations VALUES (%s, %s)", (version, MIGRATIONS[version].name))
        db.execute("SELECT * FROM notify_put('entity-directory', 'ops', 'D', '{}', '[]', 'DoNotWriteIfFoundById', 1)")
        [old] = db.execute("SELECT notify_request('ops', 'Keyed', 'B', idempotency_key => 'k')").fetchone()  # type: ignore[misc]
        db.execute("SELECT notify_put_contents(%s, ARRAY[%s, %s])", (old, text, PDF))
        before = _rows_of_every_table(db)
    assert await migrate(url) == [MIGRATIONS[v].name for v in range(13, SCHEMA_VERSION + 1)]
    with psycopg.connect(url) as db:
        after = _rows_of_every_table(db)
    unchanged = _kept(before, after)
    assert {"notify_records", "notify_record_tags", "notify_contents", "notify_content_refs"} <= unchanged
    with psycopg.connect(as_role(url, "notify_client"), autocommit=True) as db:
        assert db.execute("SELECT notify_request('ops', 'Keyed', 'B', idempotency_key => 'k')").fetchone() == (old,)
        new = db.execute(
            "SELECT notify_request('ops', 'Files', 'B', attachments => %s)",
            (json.dumps([sent("t.txt", text * 2), sent("copy.txt", text * 2)]),),
        ).fetchone()[0]  # type: ignore[index]
    with psycopg.connect(url) as db:
        compressed = db.execute(
            "SELECT sha256, pg_column_size(content) < octet_length(content) FROM notify_contents"
            " WHERE sha256 IN (%s, %s)",
            (digest(text), digest(text * 2)),
        ).fetchall()
        assert dict(compressed) == {digest(text): True, digest(text * 2): False}  # the old one as it was
        storage = (
            "SELECT attstorage FROM pg_attribute WHERE attrelid = 'notify_contents'::regclass AND attname = 'content'"
        )
        assert db.execute(storage).fetchone() == ("e",)
        assert db.execute("SELECT sha256 FROM notify_content_refs WHERE notification_id = %s", (new,)).fetchall() == [
            (digest(text * 2),)
        ]
    async with open_store(url) as store:
        assert [await store.content(digest(c)) for c in (text, PDF, text * 2)] == [text, PDF, text * 2]
        record = await store.reader(StreamName.CLIENT_OPERATION).latest(new)
    assert requested(record).attachments == [
        attachment("t.txt", text * 2, "application/octet-stream"),  # without a content_type: no guess
        attachment("copy.txt", text * 2, "application/octet-stream"),
    ]


def digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()
