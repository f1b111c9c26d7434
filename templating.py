"""Templates: a notification's content rendered from NAME.yaml files (NAME.LOCALE.yaml in a language) with Jinja2,
and the files they name."""

from __future__ import annotations

import hashlib
import math
import re
import stat
import time
from collections.abc import Iterator, Mapping, Sized
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import yaml
from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime, format_time
from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError, TemplateRuntimeError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing

from domain import MAX_ATTACHMENT_BYTES, MAX_ATTACHMENTS, MAX_BODY_BYTES, MAX_REQUEST_BYTES
from domain.model import LOCALE

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_REQUIRED = ("subject", "text")
_PARTS = (*_REQUIRED, "html", "slack")
_FILES = {"attachments": ("path", "filename", "content_type"), "inline": ("content_id", "path", "content_type")}
"""The keys that name files, and the keys of each file (its `path` required, and an inline image's `content_id`)."""

RENDER_SECONDS = 2.0
"""The longest a rendering may take, all its parts together."""
MAX_VALUE_CHARS = MAX_REQUEST_BYTES
"""The longest string or list a template may build or look up (the whole request is at most this large)."""
MAX_POWER_BITS = 4096
"""The largest integer `**` may make, in bits."""
DEFAULT_LOCALE = Locale("en")
"""The locale dates are formatted for when the entity has none (or none Babel knows)."""


@dataclass(frozen=True)
class _Rendering:
    roots: Mapping[str, Any]
    """The variables of the rendering, by name, that undefined values name their paths from."""
    seconds: float
    deadline: float
    """By when (`time.monotonic`) the rendering must have ended: `seconds` after it began."""
    locale: Locale
    """What the date filters format for: the entity's locale."""


_rendering: ContextVar[_Rendering] = ContextVar("_rendering")
"""The rendering under way (in this thread)."""


class _TooMuch(Exception):
    """A rendering stopped: it ran too long or made too much."""


class _NotADate(Exception):
    """A date filter was given a value that is not a date."""


class TemplateError(ValueError):
    """A template that cannot be rendered: one line naming the template and what is wrong."""


@dataclass(frozen=True)
class Rendered:
    """A notification's content, rendered from one template."""

    name: str
    sha256: str
    """The hex sha256 of the template file's bytes, as read for this rendering."""
    locale: str | None
    """The language tag of the file rendered, `NAME.LOCALE.yaml`; None for `NAME.yaml`."""
    subject: str
    text: str
    html: str | None
    slack: str | None
    files: list[TemplateFile]
    category: str | None = None
    """The category the template sets (`category:`), which a request's own overrides."""


@dataclass(frozen=True)
class TemplateFile:
    """A file a template names (`attachments`, `inline`), read from the templates' folder for a rendering."""

    filename: str
    content: bytes
    content_type: str | None
    content_id: str | None


class Templates:
    """The templates in a folder, each a file `NAME.yaml` and a file `NAME.LOCALE.yaml` for each language it is
    written in (`welcome.de.yaml`, `welcome.pt-BR.yaml`); read again on every rendering."""

    def __init__(self, folder: Path, seconds: float = RENDER_SECONDS) -> None:
        self.folder = folder
        self.seconds = seconds
        plain = _Environment(undefined=_Undefined, autoescape=False, keep_trailing_newline=False)
        self._environments = {
            "subject": plain,
            "text": plain,
            "html": _Environment(undefined=_Undefined, autoescape=True, keep_trailing_newline=False),
            "slack": _Environment(undefined=_Undefined, finalize=_slack_escaped, keep_trailing_newline=False),
        }

    def render(self, name: str, data: Mapping[str, Any], entity: Mapping[str, Any]) -> Rendered:
        """Render the template `name` with the variables `data` (the request's JSON object) and `entity`, from its
        file for the entity's `locale` (`_lookup`), within `seconds` and `MAX_BODY_BYTES` of output a part. It runs
        for as long as it takes: a caller on an event loop runs it in a thread (`asyncio.to_thread`)."""
        if not _is_name(name):
            raise TemplateError(
                f"template {name!r}: not a template name (a letter or digit, then up to 99 letters, digits, "
                "'_', '.' or '-', without '..')"
            )
        base, _, last = name.rpartition(".")
        if base and LOCALE.fullmatch(last):
            raise TemplateError(
                f"template {name!r}: a name may not end in a language tag: {name}.yaml is template {base!r} "
                f"in {last!r}, for entities whose locale is {last!r}"
            )
        if not isinstance(data, Mapping):
            raise TemplateError(f"template {name!r}: data must be a JSON object")
        locale = entity.get("locale")
        if locale is not None and not (isinstance(locale, str) and LOCALE.fullmatch(locale)):
            raise TemplateError(f"template {name!r}: the entity's locale {locale!r} is not a language tag")
        lookup = _lookup(locale)
        source, used = self._source(name, lookup)
        label = f"template {name!r}" if used is None else f"template {name!r} ({_file_name(name, used)})"
        parts, files, category = _parts(label, source)
        token = _rendering.set(
            _Rendering(
                {"data": data, "entity": entity}, self.seconds, time.monotonic() + self.seconds, _babel_locale(lookup)
            )
        )
        try:
            rendered = {part: self._render_part(label, part, text, data, entity) for part, text in parts.items()}
        finally:
            _rendering.reset(token)
        return Rendered(
            name=name,
            sha256=hashlib.sha256(source).hexdigest(),
            locale=used,
            subject=rendered["subject"].strip(),
            text=rendered["text"],
            html=rendered.get("html"),
            slack=rendered.get("slack"),
            files=[self._file(label, key, file) for key, named in files.items() for file in named],
            category=category,
        )

    def _source(self, name: str, lookup: list[str]) -> tuple[bytes, str | None]:
        """The bytes of the file of template `name` in the first of the language tags `lookup` it is written in,
        else of `NAME.yaml`, and the tag of the file read (None for `NAME.yaml`)."""
        for locale in (*lookup, None):
            try:
                return (self.folder / _file_name(name, locale)).read_bytes(), locale
            except (FileNotFoundError, IsADirectoryError):
                continue
        raise TemplateError(f"template {name!r}: no such template")

    def _file(self, label: str, key: str, file: Mapping[str, str]) -> TemplateFile:
        """A file the template names by a path in the templates' folder (never outside it), a regular file of at most
        `MAX_ATTACHMENT_BYTES` (no more is read). `label` names the template in errors, as `template 'welcome'`."""
        where = f"{label}, {key}: {file['path']!r}"
        folder = self.folder.resolve()
        path = (folder / file["path"]).resolve()
        if not path.is_relative_to(folder):
            raise TemplateError(f"{where}: not in the templates' folder")
        try:
            found = path.stat()
            if not stat.S_ISREG(found.st_mode):  # a FIFO would block its reader
                raise TemplateError(f"{where}: not a regular file")
            with path.open("rb") as opened:
                content = opened.read(MAX_ATTACHMENT_BYTES + 1)
        except OSError as error:
            raise TemplateError(f"{where}: {error.strerror}") from None
        if len(content) > MAX_ATTACHMENT_BYTES:
            raise TemplateError(f"{where}: over {MAX_ATTACHMENT_BYTES:,} bytes, the most a file may be")
        return TemplateFile(
            filename=file.get("filename") or path.name,
            content=content,
            content_type=file.get("content_type"),
            content_id=file.get("content_id"),
        )

    def _render_part(
        self, label: str, part: str, source: str, data: Mapping[str, Any], entity: Mapping[str, Any]
    ) -> str:
        where = f"{label}, {part}"
        try:
            template = self._environments[part].from_string(source)
        except TemplateSyntaxError as error:
            raise TemplateError(
                f"{where}: syntax error on line {error.lineno}: {_first_line(error.message or '')}"
            ) from error
        try:
            return _bounded(template.generate(data=data, entity=entity))
        except _TooMuch as error:
            raise TemplateError(f"{where}: stopped: {error}") from error
        except _NotADate as error:
            raise TemplateError(f"{where}: {error}") from error
        except SecurityError as error:
            raise TemplateError(f"{where}: not allowed: {_first_line(str(error)).rstrip('.')}") from error
        except UndefinedError as error:
            raise TemplateError(f"{where}: {_first_line(str(error))}") from error
        except Exception as error:  # what the template's own expressions raise, as `{{ 1 / 0 }}`
            raise TemplateError(f"{where}: {type(error).__name__}: {_first_line(str(error))}") from error


def _bounded(chunks: Iterator[str]) -> str:
    """The output of a rendering, as long as it is within its time and `MAX_BODY_BYTES`."""
    output: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_BODY_BYTES:  # characters: each is a byte of UTF-8 or more
            raise _TooMuch(f"the output is over {MAX_BODY_BYTES // 1024} KiB")
        _in_time()
        output.append(chunk)
    return "".join(output)


def _in_time() -> None:
    rendering = _rendering.get()
    if time.monotonic() > rendering.deadline:
        raise _TooMuch(f"it ran longer than {rendering.seconds:g} s")


def _sized(value: Any) -> Any:
    """`value`, unless it is a string or list longer than `MAX_VALUE_CHARS`."""
    if isinstance(value, str | bytes | list | tuple) and len(value) > MAX_VALUE_CHARS:
        raise _TooMuch(f"a value is longer than {MAX_VALUE_CHARS:,}")
    return value


def _parts(label: str, source: bytes) -> tuple[dict[str, str], dict[str, list[dict[str, str]]], str | None]:
    """The parts of a template file, by key, the files it names, by key, and the category it sets, checked. `label`
    names the template in errors."""
    try:
        content = yaml.safe_load(source.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise TemplateError(f"{label}: not UTF-8 ({error.reason} at byte {error.start})") from None
    except yaml.MarkedYAMLError as error:
        line = f" on line {error.problem_mark.line + 1}" if error.problem_mark else ""
        raise TemplateError(f"{label}: not valid YAML{line}: {_first_line(str(error.problem))}") from None
    except yaml.YAMLError as error:
        raise TemplateError(f"{label}: not valid YAML: {_first_line(str(error))}") from None
    if not isinstance(content, dict):
        raise TemplateError(
            f"{label}: must be a YAML mapping with keys subject, text and optionally html, slack, attachments, inline"
        )
    if unknown := [key for key in content if key not in (*_PARTS, *_FILES, "category")]:
        allowed = ", ".join((*_PARTS, *_FILES, "category"))
        raise TemplateError(f"{label}: unknown {_keys(unknown)} (allowed: {allowed})")
    if not isinstance(content.get("category", ""), str):
        raise TemplateError(f"{label}, category: must be a string, not {_type(content['category'])}")
    if absent := [key for key in _REQUIRED if key not in content]:
        raise TemplateError(f"{label}: missing required {_keys(absent)}")
    parts = {part: value for part, value in content.items() if part in _PARTS}
    for part, value in parts.items():
        if not isinstance(value, str):
            raise TemplateError(f"{label}, {part}: must be a string, not {_type(value)}")
    files = {key: _files(label, key, content[key]) for key in _FILES if key in content}
    if (count := sum(map(len, files.values()))) > MAX_ATTACHMENTS:
        raise TemplateError(f"{label}: at most {MAX_ATTACHMENTS} files, not {count}")
    return parts, files, content.get("category")


def _files(label: str, key: str, value: object) -> list[dict[str, str]]:
    """The files under `key` (`_FILES`): a list of mappings of text, each with a path (and an inline image's content
    id)."""
    where = f"{label}, {key}"
    shape = f"a list of {{{', '.join(_FILES[key])}}}"
    if not isinstance(value, list):
        raise TemplateError(f"{where}: must be {shape}, not {_type(value)}")
    for file in value:
        if not isinstance(file, dict) or any(k not in _FILES[key] or not isinstance(v, str) for k, v in file.items()):
            raise TemplateError(f"{where}: each must be {shape} of text")
        if absent := [k for k in ("path", "content_id") if k in _FILES[key] and not file.get(k)]:
            raise TemplateError(f"{where}: each needs {_keys(absent)}")
    return value


def _type(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _keys(keys: list[Any]) -> str:
    return f"key{'s' if len(keys) > 1 else ''} {', '.join(repr(key) for key in keys)}"


def _is_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None and ".." not in name


def _file_name(name: str, locale: str | None) -> str:
    """The file of template `name` in the language `locale`, or its file for any other (None)."""
    return f"{name}.yaml" if locale is None else f"{name}.{locale}.yaml"


def _lookup(locale: str | None) -> list[str]:
    """The language tags a template is looked up by for `locale`, most specific first, one subtag less each:
    `zh-Hant-TW`, `zh-Hant`, `zh`."""
    if locale is None:
        return []
    subtags = locale.split("-")
    return ["-".join(subtags[:count]) for count in range(len(subtags), 0, -1)]


def _babel_locale(lookup: list[str]) -> Locale:
    """The first of the language tags `lookup` that Babel has data for, else `DEFAULT_LOCALE`."""
    for tag in lookup:
        try:
            return Locale.parse(tag, sep="-")
        except UnknownLocaleError:
            continue
    return DEFAULT_LOCALE


def _moment(value: object, filter: str) -> datetime:
    """`value`, an ISO 8601 string, a `datetime` or a `date`, as a `datetime` with a time zone: UTC if it has none."""
    if isinstance(value, _Undefined):
        value._fail_with_undefined_error()
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise _NotADate(f"{filter}: {value[:64]!r} is not an ISO 8601 date or date and time") from None
    else:
        raise _NotADate(f"{filter}: {_type(value)} is not a date or an ISO 8601 string")
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _date(value: Any, format: str = "medium") -> str:
    """The filter `date`: `value`'s date (at its own offset) for the entity's locale, in `format`: `short`, `medium`,
    `long`, `full` or a CLDR pattern (`d MMMM y`)."""
    return format_date(_moment(value, "date").date(), format, locale=_rendering.get().locale)


def _datetime(value: Any, format: str = "medium") -> str:
    """The filter `datetime`: `value`'s date and time, at its own offset (UTC if it has none), as `date`."""
    moment = _moment(value, "datetime")
    return format_datetime(moment, format, tzinfo=moment.tzinfo, locale=_rendering.get().locale)


def _time(value: Any, format: str = "medium") -> str:
    """The filter `time`: `value`'s time, at its own offset (UTC if it has none), as `date`."""
    moment = _moment(value, "time")
    return format_time(moment, format, tzinfo=moment.tzinfo, locale=_rendering.get().locale)


def _first_line(text: str) -> str:
    return text.partition("\n")[0]


def _slack_escaped(value: object) -> str:
    """A value output into Slack mrkdwn, with its control characters `&`, `<` and `>` escaped."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _Environment(ImmutableSandboxedEnvironment):
    """A sandbox in which `data.items` is the key `items` of the data (a key before a method), a lookup on an
    undefined value is undefined too (so that its error names the whole path), and every lookup, call and
    multiplication is bounded: in time (a loop looks up what it loops over), and in size."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters.update(date=_date, datetime=_datetime, time=_time)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _in_time()
        if isinstance(obj, _Undefined):
            return obj.looked_up(attribute)
        if isinstance(obj, Mapping) and attribute in obj:
            return _sized(obj[attribute])
        return _sized(super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        _in_time()
        if isinstance(obj, _Undefined):
            return obj.looked_up(argument)
        return _sized(super().getitem(obj, argument))

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _in_time()
        return _sized(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _in_time()
        if operator == "**" and _power_bits(left, right) > MAX_POWER_BITS:
            raise _TooMuch(f"a power is over {MAX_POWER_BITS} bits")
        if operator == "*":
            for many, times in ((left, right), (right, left)):
                if isinstance(many, Sized) and isinstance(times, int) and len(many) * times > MAX_VALUE_CHARS:
                    raise _TooMuch(f"a value is longer than {MAX_VALUE_CHARS:,}")
        return super().call_binop(context, operator, left, right)


def _power_bits(base: Any, exponent: Any) -> float:
    """About how many bits `base ** exponent` takes, for integers (0 for what is not)."""
    if not (isinstance(base, int) and isinstance(exponent, int | float)) or abs(base) < 2 or exponent <= 0:
        return 0
    return math.log2(abs(base)) * exponent


class _Undefined(StrictUndefined):
    """An undefined value whose error names the path it was looked up by, as `data.order.id is undefined`."""

    __slots__ = ("_lookups",)

    def __init__(
        self,
        hint: str | None = None,
        obj: Any = missing,
        name: str | None = None,
        exc: type[TemplateRuntimeError] = UndefinedError,
        lookups: tuple[Any, ...] = (),
    ) -> None:
        super().__init__(hint, obj, name, exc)
        self._lookups = lookups

    def looked_up(self, key: Any) -> _Undefined:
        """This undefined value, looked up further by `key`."""
        return _Undefined(
            self._undefined_hint,
            self._undefined_obj,
            self._undefined_name,
            self._undefined_exception,
            (*self._lookups, key),
        )

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint:
            return self._undefined_hint
        if self._undefined_obj is missing:
            path = str(self._undefined_name)
        elif (found := _path_to(self._undefined_obj)) is not None:
            path = _joined(found, self._undefined_name)
        else:
            return super()._undefined_message
        for key in self._lookups:
            path = _joined(path, key)
        return f"{path} is undefined"


def _path_to(target: object) -> str | None:
    """The path by which `target`, a mapping or a list, is reached from the variables of the rendering under way;
    None if it is not (as other values are not told apart by identity)."""
    if not isinstance(target, Mapping | list):
        return None
    pending: list[tuple[str, Any]] = list(_rendering.get().roots.items())
    while pending:
        path, value = pending.pop()
        if value is target:
            return path
        if isinstance(value, Mapping):
            pending.extend((_joined(path, key), item) for key, item in value.items())
        elif isinstance(value, list):
            pending.extend((_joined(path, index), item) for index, item in enumerate(value))
    return None


def _joined(path: str, key: Any) -> str:
    return f"{path}.{key}" if isinstance(key, str) and key.isidentifier() else f"{path}[{key!r}]"
