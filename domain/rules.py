"""The rules for what is new (a request, a directory entry, a setting): limits, the checks of identifiers, names,
subjects, bodies and addresses, and the admission that applies them (`admitted`); the model base class.
"""

from __future__ import annotations

import email.errors
import email.policy
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.headerregistry import Address
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
)
from pydantic_core import to_jsonable_python

MAX_BODY_BYTES = 256 * 1024
"""A body, HTML body or Slack text: at most this many bytes of UTF-8."""


MAX_REQUEST_BYTES = 512 * 1024
"""A whole request as JSON, as it travels in Temporal's payloads (a control character takes six bytes there). The
saga carries it, and the channel operations made of it, in payloads of its history: this keeps every one of them,
and every workflow task, well inside Temporal's limits (2 MB a payload, 4 MB a message)."""


MAX_TAGS = 50
"""Client tags on one request."""


MAX_ATTACHMENTS = 20
"""Files attached to one request."""
MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024
"""One attached file's bytes."""
MAX_ATTACHMENTS_BYTES = 25 * 1024 * 1024
"""A request's attached files' bytes, in all. Base64 makes a message a third larger than its files: 25 MiB of them
is some 34 MiB on the wire, past what many mail servers take (Postfix's default is about 10 MB, Gmail's 25 MB)."""


SEND_AT_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
"""The earliest `send_at` a request may give (inclusive)."""


SEND_AT_LATEST = datetime(9999, 1, 1, tzinfo=UTC)
"""The time every `send_at` must be before (exclusive): the last year is 9998, so that the time in any time zone
(a page shows it in the reader's) stays within what Python, PostgreSQL and Temporal represent."""


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


ADMISSION = {"admission": True}
"""The validation context of what is new: a request or a directory entry as it is admitted (`admitted`). Every
rule of today applies to it. What was recorded (a record, a saga's input in its history) is read back with the
types alone, so that a rule added later never makes a running saga's input or an old record unreadable."""


M = TypeVar("M", bound=BaseModel)


def admitted(model_type: type[M], data: object) -> M:
    """`data` (a model, or what makes one) as a new `model_type`, checked against every rule of today."""
    # as plain data: pydantic takes a model instance inside `data` as it is, without checking it again
    return model_type.model_validate(to_jsonable_python(data), context=ADMISSION)


def Admitted(check: Callable[[Any], Any]) -> AfterValidator:
    """A rule that applies on admission (see `ADMISSION`)."""

    def validate(value: Any, info: ValidationInfo) -> Any:
        return check(value) if _admitting(info) else value

    return AfterValidator(validate)


def _admitting(info: ValidationInfo) -> bool:
    return isinstance(info.context, dict) and bool(info.context.get("admission"))


def _sized(value: str, least: int, most: int) -> str:
    if len(value) < least:
        raise ValueError("must not be empty" if least == 1 else f"is shorter than {least} characters")
    if len(value) > most:
        raise ValueError(f"is longer than {most} characters")
    return value


def _utf8_at_most(value: str, most: int) -> str:
    if len(value.encode()) > most:
        raise ValueError(f"is over {most:,} bytes of UTF-8")
    return value


def _no_nul(value: str) -> str:
    if "\0" in value:
        raise ValueError("must not contain NUL characters")
    return _unicode(value)


SURROGATE = re.compile(r"[\ud800-\udfff]")


def _unicode(value: str) -> str:
    """Text that UTF-8 can carry: no lone surrogate (JSON's `\\ud800` escape), which no store or channel takes."""
    if match := SURROGATE.search(value):
        raise ValueError(f"is not valid Unicode: a lone surrogate (U+{ord(match.group()):04X}) at {match.start()}")
    return value


def _one_segment(value: str) -> str:
    """An identifier that a URL path names as one segment (`/v1/entities/ID`), and the audit reads back whole."""
    if "/" in value:
        raise ValueError("must not contain '/'")
    return value


def _within_send_window(value: datetime) -> datetime:
    if not SEND_AT_EARLIEST <= value < SEND_AT_LATEST:
        raise ValueError(
            f"must be in the years {SEND_AT_EARLIEST.year} to {SEND_AT_LATEST.year - 1} (UTC), not {value.isoformat()}"
        )
    return value


def utc_now() -> datetime:
    """Now, in UTC: the timestamp of what activities record (workflow code uses `workflow.now()`)."""
    return datetime.now(UTC)


CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
"""Every character that can break a line or is a control character (tab aside), Unicode's separators included."""


def _single_line(value: str) -> str:
    """Text that goes into a mail header: one line as written and as a mail reader decodes it, RFC 2047 encoded
    words included (an encoded CR LF would otherwise become a header of the attacker's choosing when the header is
    folded, CVE-2024-6923)."""
    # only an encoded word (`=?`) can decode to what the text does not hold as written
    if CONTROL.search(_unicode(value)) or ("=?" in value and CONTROL.search(_as_read(value))):
        raise ValueError("must be a single line of text (no line breaks or control characters, encoded or not)")
    return value


def _as_read(value: str) -> str:
    """What a mail reader makes of `value` in a header: the email package's own parser, which decodes encoded words
    however loosely they are written (spaces inside them included)."""
    try:
        return str(email.policy.default.header_factory("subject", value))
    except (ValueError, LookupError, email.errors.HeaderParseError) as error:
        raise ValueError("has an encoded word that cannot be decoded") from error


DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
"""A local part as RFC 5322's dot-atom: atoms of atext joined by single dots."""
DOMAIN = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")


def checked_email_address(value: str) -> str:
    """`local@domain.tld`, taken only if the email package reads it back unchanged (so that what is validated is
    what is sent: no comments, quotes, routes or empty labels)."""
    if not value.isascii():
        raise ValueError(f"{value!r} is not an ASCII address: internationalized addresses (SMTPUTF8) are not supported")
    local, at, domain = value.rpartition("@")
    plain = bool(at and local and DOMAIN.fullmatch(domain)) and not CONTROL.search(value)
    plain = plain and '"' not in local and "=?" not in local  # no quoted local part, and no encoded word in it
    if plain and not DOT_ATOM.fullmatch(local):  # a dot-atom is read back as written; anything else, ask the parser
        try:
            plain = Address(addr_spec=value).addr_spec == value
        except Exception:  # the parser fails in more ways than it documents (AttributeError on `a@[`, say)
            plain = False
    if not plain:
        raise ValueError(f"not an email address: {value!r}")
    return value


def _identifier(value: str) -> str:
    if not _unicode(value) or re.search(r"\s", value) or CONTROL.search(value):
        raise ValueError("must not be empty or contain spaces or control characters")
    return value


EmailAddress = Annotated[str, Admitted(checked_email_address)]


Name = Annotated[str, Admitted(lambda v: _single_line(_sized(v, 1, 200)))]


Identifier = Annotated[str, Admitted(lambda v: _identifier(_sized(v, 1, 200)))]


Segment = Annotated[str, Admitted(lambda v: _one_segment(_identifier(_sized(v, 1, 200))))]
"""An identifier without `/`: an entity's id in the directory, a Slack channel."""


SendAt = Annotated[AwareDatetime, Admitted(_within_send_window)]
"""When to send: between `SEND_AT_EARLIEST` and `SEND_AT_LATEST`."""


_IDEMPOTENCY_KEY = TypeAdapter(Identifier)


def admitted_idempotency_key(key: str) -> str:
    """A client's idempotency key, checked as an identifier."""
    return _IDEMPOTENCY_KEY.validate_python(key, context=ADMISSION)


def _at_most_body_size(value: str) -> str:
    if len(_unicode(value).encode()) > MAX_BODY_BYTES:
        raise ValueError(f"is over {MAX_BODY_BYTES // 1024} KiB")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _subject(value: str) -> str:
    value = _single_line(value).strip()
    if not value:
        raise ValueError("must not be empty")
    return value


Subject = Annotated[str, Admitted(lambda v: _subject(_sized(v, 1, 998)))]


Body = Annotated[str, Admitted(lambda v: _at_most_body_size(_not_blank(v)))]


OptionalBody = Annotated[str, Admitted(_at_most_body_size)]


MAX_REASON_CHARS = 1000
"""A failure's reason, as recorded, shown and logged: one line of at most this many characters."""


def in_one_line(reason: str) -> str:
    """`reason` (a server's multi-line reply, say) as one line of at most `MAX_REASON_CHARS` characters."""
    said = " ".join(CONTROL.sub(" ", reason).split())
    return said if len(said) <= MAX_REASON_CHARS else said[: MAX_REASON_CHARS - 1] + "…"


Reason = Annotated[str, AfterValidator(in_one_line)]
"""A reason, made one bounded line wherever it is built or read: a failure's reason ends up in escalations,
views and log lines, none of which may grow with what a server said."""


Location = tuple[int | str, ...]
"""Where an error is, as pydantic gives it: field names, and the indexes of entries in lists."""


def validation_message(
    error: ValidationError | Sequence[Mapping[str, Any]], located: Callable[[Location], Location] | None = None
) -> str:
    """The first of pydantic's errors in plain words: where (`subject`, `entry 2, slack.channel`) and what, and how
    many more there are. `located` names the place as the caller's user knows it (`NOTIFY_SMTP_PORT`, a field of
    the request body)."""
    errors = error.errors() if isinstance(error, ValidationError) else error
    first = errors[0]
    groups: list[list[str]] = [[]]
    for part in first["loc"] if located is None else located(tuple(first["loc"])):
        if isinstance(part, str) and INTERNAL_LOCATION.fullmatch(part):
            continue
        if isinstance(part, int):
            groups += [[f"entry {part + 1}"], []]
        else:
            groups[-1].append(str(part))
    where = ", ".join(".".join(g) for g in groups if g)
    message = _in_own_words(first["type"], first["msg"], first.get("ctx") or {})
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {message}{more}" if where else f"{message}{more}"


def _in_own_words(kind: str, said: str, ctx: dict[str, Any]) -> str:
    words = {
        "missing": "is missing",
        "extra_forbidden": "is not a known field",
        "string_too_short": "must not be empty",
        "string_too_long": f"is longer than {ctx.get('max_length')} characters",
        "string_type": "must be text",
        "enum": f"must be {ctx.get('expected')}",
        "list_type": "must be a list",
        "dict_type": "must be an object",
        "model_type": "must be an object",
        "model_attributes_type": "must be an object",
        "timezone_aware": "must have a time zone",
    }
    return words.get(kind) or _first_line(URL.sub("", said.removeprefix("Value error, "))).strip()


INTERNAL_LOCATION = re.compile(r"[\w-]+\[.*\]")
"""A part of pydantic's location that names its own machinery (`function-after[_fits_in_a_payload(), ...]`,
`json-or-python[...]`), not a field."""


URL = re.compile(r"\s*\(?(?:For further information visit )?https?://\S+\)?")


def _first_line(text: str) -> str:
    return text.partition("\n")[0]
