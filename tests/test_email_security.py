"""Email over STARTTLS and TLS on connect, with a login, against the aiosmtpd sink using a test CA; and credentials
never reaching a record or a workflow history."""

from __future__ import annotations

import base64
import random
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from string import ascii_letters, digits
from typing import Any

import pytest
import trustme
from aiosmtplib.email import flatten_message
from pydantic import SecretStr, ValidationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.email import MAX_LINE, REUSED, EmailHandler, compose_message, plain_message
from client import NotificationClient
from domain import DirectoryEntry, SendEmailOp, SendNotificationToEntityOp, admitted
from settings import Settings, SmtpSecurity
from sinks.mail import MailSink
from sinks.slack import SlackSink
from streams import StreamName
from streams.directory import import_entries
from tests.conftest import SLACK_TOKEN
from worker import running_workers

PASSWORD = "s3cret-smtp-password"
ENTITY = DirectoryEntry.model_validate(
    {
        "id": "ops",
        "name": "Ops",
        "email": "ops@example.com",
        "slack": {"workspace": "acme", "channel": "C0123"},
        "channels": {"email": "send", "slack": "send"},
    }
)


@pytest.fixture
def ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[trustme.CA]:
    """A test CA that this process's TLS clients trust, as they would a public one."""
    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    yield authority


def logged_in(settings: Settings, mail: MailSink, security: SmtpSecurity) -> Settings:
    """The settings that send to `mail` with `security` and the sink's login."""
    return settings.model_copy(
        update={
            "smtp_port": mail.port,
            "smtp_security": security,
            "smtp_username": "notify",
            "smtp_password": SecretStr(PASSWORD),
        }
    )


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


async def send_one(env: WorkflowEnvironment, tmp_path: Path, settings: Settings) -> tuple[str, dict[str, Any]]:
    async with settings.open_streams(create=True) as store, running_workers(env.client, store, settings):
        await import_entries(store, [ENTITY])
        client = NotificationClient(store, env.client, settings)
        nid = await client.request(SendNotificationToEntityOp(entity_id="ops", subject="TLS", body="Over TLS."))
        await client.result(nid)
        return nid, await client.status(nid)


async def everything_stored(settings: Settings) -> str:
    """Every record's payload and tags, and every handling entry's details, in every stream."""
    parts = []
    async with settings.open_streams() as store:
        for stream in StreamName:
            for record in await store.read(stream):
                parts += [record.payload, *(t.value for t in record.tags)]
                parts += [e.details for e in await store.handling(stream).history(record.internal_id)]
    return "\n".join(parts)


@pytest.mark.parametrize("security", [SmtpSecurity.STARTTLS, SmtpSecurity.TLS])
async def test_secure_connection_with_login(
    security: SmtpSecurity,
    ca: trustme.CA,
    tmp_path: Path,
    time_skipping_env: WorkflowEnvironment,
    settings: Settings,
    slack_sink: SlackSink,
) -> None:
    tls = server_context(ca)
    with MailSink(tls_context=tls, tls_on_connect=security == SmtpSecurity.TLS, login=("notify", PASSWORD)) as mail:
        secure = logged_in(settings, mail, security)
        nid, view = await send_one(time_skipping_env, tmp_path, secure)
    assert view["status"] == "sent"
    [message] = mail.messages
    assert message.login == "notify"

    history = (await time_skipping_env.client.get_workflow_handle(nid).fetch_history()).to_json()
    stored = await everything_stored(secure)
    assert "notify" in stored  # the login's user name is in the SMTP log; its password is not
    for secret in (PASSWORD, SLACK_TOKEN, base64.b64encode(PASSWORD.encode()).decode()):
        assert secret not in history
        assert secret not in stored


async def test_a_refused_login_is_a_permanent_failure(
    ca: trustme.CA, tmp_path: Path, time_skipping_env: WorkflowEnvironment, settings: Settings, slack_sink: SlackSink
) -> None:
    with MailSink(tls_context=server_context(ca), login=("notify", PASSWORD)) as mail:
        wrong = settings.model_copy(
            update={
                "smtp_port": mail.port,
                "smtp_security": SmtpSecurity.STARTTLS,
                "smtp_username": "notify",
                "smtp_password": SecretStr("wrong"),
            }
        )
        _, view = await send_one(time_skipping_env, tmp_path, wrong)
    assert view["status"] == "partially_sent"
    assert view["channels"]["email"]["outcome"] == "failed"
    assert view["channels"]["email"]["reason"].startswith("535")
    assert mail.messages == []
    async with settings.open_streams() as store:
        failed = await store.reader(StreamName.EMAIL_EVENT).latest(1)
        assert failed is not None
        assert failed.json()["response"]["result"] == "FailedToAuthenticateWithServer"
        log = failed.json()["response"]["communication_log"]
        assert "C: STARTTLS" in log
        auth = [line for line in log if line.startswith("C: AUTH")]
        assert auth and all(line.endswith("<credentials left out>") for line in auth)
        assert any(line.startswith("S: 535") for line in log)
        secrets = ("wrong", base64.b64encode(b"\0notify\0wrong").decode(), base64.b64encode(b"wrong").decode())
        assert not any(secret in line for line in log for secret in secrets)
        operation = await store.reader(StreamName.EMAIL_OPERATION).latest(1)
        assert operation is not None
        history = await store.handling(StreamName.EMAIL_OPERATION).history(operation.internal_id)
        assert [e.status for e in history] == ["Running", "Completed"]


INJECTIONS = [
    "=?utf-8?q?Invoice=0D=0AReply-To:_attacker@evil.example=0D=0AFrom:_ceo@corp.example?=",
    "=?utf-8?q?Invoice=0D=0A=0D=0AThe_attacker_writes_the_body?=",
    "=?utf-8?b?SW52b2ljZQ0KUmVwbHktVG86IGF0dGFja2VyQGV2aWwuZXhhbXBsZQ==?=",
    "Invoice\x0bReply-To: attacker@evil.example",
    "Invoice\x0cReply-To: attacker@evil.example",
    "Invoice\x85Reply-To: attacker@evil.example",
    "Invoice\u2028Reply-To: attacker@evil.example",
    "Invoice\u2029Reply-To: attacker@evil.example",
    "Invoice\x00",
    # Encoded words as loosely as a mail reader takes them: spaces inside, glued to text, upper case, a language.
    "=?utf-8?q?Invoice =0D=0AReply-To:_attacker@evil.example?=",
    "=?utf-8?b?SW52b2ljZQ0KUmVwbHktVG86IGF0 dGFja2VyQGV2aWwuZXhhbXBsZQ==?=",
    "Invoice=?utf-8?q?=0D=0AReply-To:_attacker@evil.example?=x",
    "=?UTF-8*en?Q?Invoice=0d=0aReply-To:_attacker@evil.example?=",
    "=?latin-1?q?Invoice=85Reply-To:_attacker@evil.example?=",
]


@pytest.mark.parametrize("subject", INJECTIONS)
def test_a_subject_that_would_break_a_header_line_is_refused(subject: str) -> None:
    with pytest.raises(ValidationError, match="must be a single line of text"):
        admitted(SendNotificationToEntityOp, {"entity_id": "ops", "subject": subject, "body": "B"})


@pytest.mark.parametrize("name", [s.replace("Invoice", "Ada") for s in INJECTIONS])
def test_a_directory_name_that_would_break_a_header_line_is_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="must be a single line of text"):
        admitted(DirectoryEntry, {**ENTITY.model_dump(), "name": name})


@pytest.mark.parametrize(
    "address",
    [
        "a:b@x.co",
        "a..b@x.co",
        "a\\b@x.co",
        "a@x..co",
        "a(b)@x.co",
        "a@-x.co",
        '"a b"@x.co',
        "a@localhost",
        "a@[",
        "b.=?utf-8?q?=0A?=@c.de",
    ],
)
def test_an_address_the_mail_would_not_carry_as_written_is_refused(address: str) -> None:
    with pytest.raises(ValidationError, match="not an email address"):
        admitted(DirectoryEntry, {**ENTITY.model_dump(), "email": address})


async def test_the_message_bytes_hold_exactly_the_headers_composed(
    time_skipping_env: WorkflowEnvironment, tmp_path: Path, settings: Settings, mail_sink: MailSink
) -> None:
    """Subjects and names that are long, non-ASCII or look like encoded words reach the server as one header each."""
    subject = "Invoice =?utf-8?q?Caf=C3=A9?= " + "é, Reply-To: attacker@evil.example; " * 40
    named = ENTITY.model_copy(update={"name": "Lovelace, =?utf-8?q?Ada_Ren=C3=A9e?= <ceo@corp.example> Ëlise"})
    async with settings.open_streams(create=True) as store, running_workers(time_skipping_env.client, store, settings):
        await import_entries(store, [named])
        client = NotificationClient(store, time_skipping_env.client, settings)
        nid = await client.request(SendNotificationToEntityOp(entity_id="ops", subject=subject[:998], body="B"))
        await client.result(nid)
    [mail] = mail_sink.messages
    head = mail.data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    names = [line.split(":", 1)[0].lower() for line in head.split("\r\n") if line and not line[0].isspace()]
    assert sorted(names) == sorted(
        ["from", "to", "subject", "date", "message-id", "content-type", "content-transfer-encoding", "mime-version"]
    )
    message = mail.message
    assert message["Reply-To"] is None  # a reader decodes the encoded word, and finds nothing else in it
    assert message["Subject"] == subject[:998].strip().replace("=?utf-8?q?Caf=C3=A9?=", "Café")
    assert message.get_all("From") == ["notifications@notify.test"]
    [to] = message.get_all("To") or []
    [address] = to.addresses  # the comma and the address in the name stay in it
    assert address.addr_spec == "ops@example.com"
    said = named.name.replace("=?utf-8?q?Ada_Ren=C3=A9e?=", "Ada Renée")  # decoded, as for the subject
    assert address.display_name.replace(" ", "") == said.replace(" ", "")


async def test_a_directory_entry_from_before_todays_rules_is_checked_again_when_composed(
    time_skipping_env: WorkflowEnvironment, settings: Settings, mail_sink: MailSink, slack_sink: SlackSink
) -> None:
    """An entry recorded under older, weaker rules (here a name with an encoded line break, which Python before
    3.11.10 folds into a header of the attacker's choosing) is not sent to: today's rules run again on every channel
    operation composed, and the channel is recorded as not prepared, with the reason."""
    older = ENTITY.model_copy(update={"name": "=?utf-8?q?a b=0D=0ABcc: x@evil.example?="})
    async with settings.open_streams(create=True) as store, running_workers(time_skipping_env.client, store, settings):
        await store.writer(StreamName.ENTITY_DIRECTORY).put("ops", older)  # as an older version recorded it
        client = NotificationClient(store, time_skipping_env.client, settings)
        nid = await client.request(SendNotificationToEntityOp(entity_id="ops", subject="S", body="B"))
        view = (await client.result(nid)).model_dump(mode="json")
    assert mail_sink.messages == [] and len(slack_sink.messages) == 1
    email = view["channels"]["email"]
    assert email["outcome"] == "not_prepared", email
    assert email["reason"].startswith("email: cannot be sent: to, entry 1, name: must be a single line of text"), email
    assert view["status"] == "partially_sent"


def sample(subject: str = "Disk almost full", body: str = "Volume /data is at 91%.", **changes: object) -> SendEmailOp:
    return SendEmailOp.model_validate(
        {
            "notification_id": "0193ab12-n",
            "channel_operation_id": 4,
            "sender": {"address": "notifications@notify.test"},
            "to": [{"address": "ops@example.com", "name": "Ops"}],
            "subject": subject,
            "text_body": body,
            **changes,
        }
    )


SENT_AS_THEY_ARE = [
    sample(),
    sample(to=[{"address": "ann.obrien+ops@mail-1.example.com", "name": "Ann O'Brien-Smith"}, {"address": "b@x.co"}]),
    sample(subject="S" * (MAX_LINE - len("Subject: "))),
    sample(body=f"{'a' * MAX_LINE}\r\n\r\n\tindented, trailing space \rold Mac line end\n"),
    sample(body=""),
    sample(subject='100% [urgent]: disk <data> (a,b); "quoted" \\ back'),
]
COMPOSED = [
    sample(subject="S" * (MAX_LINE - len("Subject: ") + 1)),  # folded
    sample(body="a" * (MAX_LINE + 1)),
    sample(subject="Café"),
    sample(subject="=?utf-8?q?Caf=C3=A9?="),  # an encoded word's look-alike: the email package decides
    sample(subject="two  spaces"),
    sample(to=[{"address": "ops@example.com", "name": "Lovelace, Ada"}]),  # quoted
    sample(to=[{"address": "ops@example.com", "name": "Ëlise"}]),
    sample(body="naïve"),
    sample(html_body="<p>B</p>"),
    sample(sender={"address": "notifications@notify.test", "name": "Notify"}),
]


@pytest.mark.parametrize("op", SENT_AS_THEY_ARE + COMPOSED)
@pytest.mark.parametrize("eight_bit", [True, False])
def test_a_plain_message_goes_out_as_the_email_package_writes_it(op: SendEmailOp, eight_bit: bool) -> None:
    """`plain_message` writes exactly the bytes `compose_message` gives once flattened for SMTP (whether the server
    takes 8BITMIME or not), and only for messages with nothing to encode, quote or fold."""
    now = datetime(2026, 12, 5, 1, 2, 3, 456789, tzinfo=UTC)
    plain = plain_message(op, now)
    assert (plain is not None) == (op in SENT_AS_THEY_ARE)
    if plain is not None:
        composed = flatten_message(compose_message(op, now), cte_type="8bit" if eight_bit else "7bit")
        assert plain.data == composed
        assert (plain.sender, plain.recipients) == (op.sender.address, [m.address for m in op.to])


def test_plain_messages_of_every_shape_go_out_as_the_email_package_writes_them() -> None:
    """The same, over a few thousand messages of words drawn from every printable ASCII character (seeded)."""
    draw = random.Random(24)
    printable = "".join(map(chr, range(0x21, 0x7F)))

    def words(letters: str, most: int, longest: int) -> str:
        return " ".join(
            "".join(draw.choices(letters, k=draw.randint(1, longest))) for _ in range(draw.randint(1, most))
        )

    plain = 0
    for n in range(1500):
        lines = [words(printable, 12, 9)[: draw.choice([MAX_LINE - 1, MAX_LINE, MAX_LINE + 1])] for _ in range(3)]
        name = draw.choice([None, words(ascii_letters + digits + "'_-", 3, 8), words(printable, 2, 5)])
        op = sample(
            subject=words(draw.choice([printable, ascii_letters + "=?"]), 12, draw.choice([3, 9])),
            body=draw.choice(["\n", "\r\n", "\r"]).join(lines) + draw.choice(["", "\n", " "]),
            to=[{"address": "ops@example.com", "name": name}] * draw.randint(1, 2),
            notification_id="n" * draw.randint(1, 40),
        )
        now = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n * 7919)
        written = plain_message(op, now)
        if written is not None:
            plain += 1
            assert written.data == flatten_message(compose_message(op, now)), op
    assert plain > 150


@pytest.mark.parametrize("security", [SmtpSecurity.STARTTLS, SmtpSecurity.TLS])
async def test_a_secure_connection_with_login_serves_the_next_message_as_it_is(
    security: SmtpSecurity, ca: trustme.CA, settings: Settings
) -> None:
    """TLS and the login are the connection's: the next message on it says neither again, nor its credentials."""
    with MailSink(
        tls_context=server_context(ca), tls_on_connect=security == SmtpSecurity.TLS, login=("notify", PASSWORD)
    ) as mail:
        secure = logged_in(settings, mail, security)
        async with secure.open_streams(create=True) as store:
            handler = EmailHandler(store, secure)
            first, second = [
                await ActivityEnvironment().run(handler.deliver, sample(channel_operation_id=n)) for n in (1, 2)
            ]
            await handler.close()
    assert mail.connections == 1 and [m.login for m in mail.messages] == ["notify", "notify"]
    opened, reused = (d.response.model_dump()["communication_log"] for d in (first, second))
    assert any(line.startswith("C: AUTH ") for line in opened)
    assert reused[:3] == [REUSED, "C: RSET", "S: 250 OK"]
    assert not any(word in line for line in reused for word in ("STARTTLS", "AUTH", PASSWORD))
