"""Configuration, read from `NOTIFY_*` environment variables and a `.env` file; shared by worker and starter."""

from __future__ import annotations

import base64
import binascii
import logging
import re
import sys
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import yaml
from pydantic import Field, SecretStr, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from activities.contract import BROADCASTS_QUEUE_SUFFIX
from commands import command
from domain import (
    CannotPrepareToSendOnChannelAction,
    Category,
    Channel,
    ChannelPolicy,
    ChannelPreference,
    DirectoryEntry,
    EmailAddress,
    FailureAction,
    Location,
    NotificationStatus,
    SagaPolicies,
    SlackAddress,
    admitted,
    checked_email_address,
    validation_message,
)
from streams import StreamStore, open_store, sqlite_file

INTERNAL_TEAM = "internal-team"
"""The entity id the internal team is notified as."""
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
"""Hosts `NOTIFY_PUBLIC_URL` may name with plain http: this machine's own."""


class ConfigsFailureAction(StrEnum):
    IGNORE = "ignore"
    """Send on the channels that can be used."""
    STOP = "stop"
    """Send on none if any channel configured to send on cannot be used."""


class CannotPrepareAction(StrEnum):
    CONTINUE = "continue"
    """Send on the channels that could be prepared."""
    STOP = "stop"
    """Send on none if one channel could not be prepared."""


CONFIGS_FAILURE_ACTIONS = {
    ConfigsFailureAction.IGNORE: FailureAction.IGNORE_AND_PROCEED_IF_POSSIBLE_OTHERWISE_STOP,
    ConfigsFailureAction.STOP: FailureAction.STOP,
}
"""Each setting's value, as the saga's policy says it (the reference's names)."""
CANNOT_PREPARE_ACTIONS = {
    CannotPrepareAction.CONTINUE: (
        CannotPrepareToSendOnChannelAction.CONTINUE_AND_ATTEMPT_PREPARING_TO_SEND_ON_NEXT_CHANNEL
    ),
    CannotPrepareAction.STOP: CannotPrepareToSendOnChannelAction.STOP_AND_DO_NOT_SEND_ON_ANY_CHANNEL,
}


@dataclass(frozen=True)
class PayloadKey:
    """An AES-256 key for Temporal's payloads (`codec`), and the id its payloads name."""

    id: str
    key: bytes = field(repr=False)


def payload_keys(text: str) -> list[PayloadKey]:
    """`KEYID:BASE64KEY`, comma-separated: each key 32 bytes (base64 of them), each id unique."""
    keys: list[PayloadKey] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key_id, colon, encoded = item.partition(":")
        if not colon or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", key_id):
            raise ValueError("each key is KEYID:BASE64KEY, its id of letters, digits, '.', '_' or '-'")
        try:
            key = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise ValueError(f"key {key_id!r} is not base64") from None
        if len(key) != 32:
            raise ValueError(f"key {key_id!r} is {len(key)} bytes; AES-256 takes 32 (openssl rand -base64 32)")
        if any(k.id == key_id for k in keys):
            raise ValueError(f"key id {key_id!r} is given twice")
        keys.append(PayloadKey(key_id, key))
    if not keys:
        raise ValueError("no key: KEYID:BASE64KEY, comma-separated")
    return keys


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class SmtpSecurity(StrEnum):
    NONE = "none"
    STARTTLS = "starttls"
    TLS = "tls"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFY_", env_file=".env", extra="ignore")

    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    temporal_tls: bool = False
    temporal_tls_cert: Path | None = None
    temporal_tls_key: Path | None = None
    temporal_tls_ca: Path | None = None
    temporal_tls_server_name: str | None = None
    temporal_api_key: SecretStr | None = None
    task_queue: str = "notifications"
    data_dir: Path = Path(".notify")
    streams_url: str | None = None
    streams_producer_url: str | None = None
    streams_consumer_url: str | None = None
    streams_handler_url: str | None = None
    streams_pool_size: int = Field(10, ge=1)
    smtp_host: str = "localhost"
    smtp_port: int = Field(1025, ge=1, le=65535)
    smtp_security: SmtpSecurity = SmtpSecurity.NONE
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_max_connections: int = Field(3, ge=1)
    email_from: EmailAddress = "notifications@notify.localhost"
    slack_token: SecretStr | None = None
    slack_tokens: dict[str, SecretStr] = Field(default_factory=dict)
    slack_api_url: str = "https://slack.com/api/"
    email_retry_initial_seconds: float = Field(1, gt=0)
    email_retry_maximum_seconds: float = Field(60, gt=0)
    email_deadline_seconds: float = Field(600, gt=0)
    email_messages_per_second: float | None = Field(None, gt=0)
    slack_retry_initial_seconds: float = Field(1, gt=0)
    slack_retry_maximum_seconds: float = Field(60, gt=0)
    slack_deadline_seconds: float = Field(300, gt=0)
    slack_messages_per_second: float | None = Field(1, gt=0)
    email_attempt_timeout_seconds: float = Field(60, gt=0)
    slack_attempt_timeout_seconds: float = Field(60, gt=0)
    transfer_bytes_per_second: float = Field(500_000, gt=0)
    attachment_memory_bytes: int = Field(256 * 1024 * 1024, gt=0)
    heartbeat_timeout_seconds: float = Field(10, gt=0)
    broadcast_recipients_per_second: float | None = Field(None, gt=0)
    sticky_queue_timeout_seconds: float = Field(10, gt=0)
    channel_configs_failure_action: ConfigsFailureAction = ConfigsFailureAction.IGNORE
    cannot_prepare_action: CannotPrepareAction = CannotPrepareAction.CONTINUE
    escalate_on: Annotated[list[NotificationStatus], NoDecode] = [
        NotificationStatus.FAILED,
        NotificationStatus.PARTIALLY_SENT,
    ]
    internal_team_email: EmailAddress | None = None
    internal_team_slack: SlackAddress | None = None
    intake_poll_seconds: float = Field(1, gt=0)
    intake_safety_poll_seconds: float = Field(30, gt=0)
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(None, ge=1, le=65535)
    log_format: LogFormat = LogFormat.TEXT
    payload_keys: SecretStr | None = None
    codec_cors_origins: Annotated[list[str], NoDecode] = ["http://localhost:8233", "http://127.0.0.1:8233"]
    templates_dir: Path = Path("message_templates")
    categories_file: Path | None = None
    public_url: str | None = None
    link_secret: SecretStr | None = None
    unsubscribe_mailto: EmailAddress | None = None
    slack_unsubscribe_footer: bool = False
    sendgrid_verification_key: SecretStr | None = None
    mailgun_signing_key: SecretStr | None = None
    postmark_webhook_credentials: SecretStr | None = None
    ses_webhook_token: SecretStr | None = None
    webhook_allow_private: bool = False
    postmark_metadata: bool = False
    webhook_retry_initial_seconds: float = Field(5, gt=0)
    webhook_retry_hours: float = Field(24, gt=0)

    @field_validator("public_url")
    @classmethod
    def _absolute(cls, url: str | None) -> str | None:
        if url and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", url):
            raise ValueError(f"must be an absolute http(s) URL, such as https://notify.example.com, not {url!r}")
        if url and (parts := urlsplit(url)).scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
            raise ValueError(
                f"must be https (its links carry tokens that change preferences), not {url!r}: http only on this "
                "machine (localhost)"
            )
        return url or None

    @field_validator("link_secret")
    @classmethod
    def _long_enough(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is not None and not secret.get_secret_value():
            return None  # set empty: not set (no link is signed), never a key anyone can sign with
        if secret is not None and len(secret.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters: links signed with a short secret can be forged")
        return secret

    @model_validator(mode="after")
    def _every_role_or_none(self) -> Settings:
        roles = (self.streams_producer_url, self.streams_consumer_url, self.streams_handler_url)
        if any(roles) and not all(roles):
            raise ValueError("streams_producer_url, streams_consumer_url and streams_handler_url go together")
        return self

    @model_validator(mode="after")
    def _client_certificate_with_its_key(self) -> Settings:
        if (self.temporal_tls_cert is None) != (self.temporal_tls_key is None):
            raise ValueError("temporal_tls_cert and temporal_tls_key go together")
        return self

    @model_validator(mode="after")
    def _retries_within_their_bounds(self) -> Settings:
        for channel in Channel:
            initial, maximum = (getattr(self, f"{channel}_retry_{end}_seconds") for end in ("initial", "maximum"))
            if initial > maximum:
                raise ValueError(f"{channel}_retry_initial_seconds is more than {channel}_retry_maximum_seconds")
        return self

    @field_validator("task_queue")
    @classmethod
    def _not_a_broadcasts_queue(cls, value: str) -> str:
        if value.endswith(BROADCASTS_QUEUE_SUFFIX):
            raise ValueError(
                f"must not end in {BROADCASTS_QUEUE_SUFFIX!r}: broadcasts' task queue is <queue>-broadcasts"
            )
        return value

    @field_validator("email_from", "internal_team_email")
    @classmethod
    def _address_as_sent(cls, value: str | None) -> str | None:
        return None if value is None else checked_email_address(value)

    @field_validator("internal_team_slack")
    @classmethod
    def _slack_address_admitted(cls, value: SlackAddress | None) -> SlackAddress | None:
        return None if value is None else admitted(SlackAddress, value)

    @field_validator("payload_keys")
    @classmethod
    def _keys_that_can_be_used(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            payload_keys(value.get_secret_value())
        return value

    @property
    def payload_key_list(self) -> list[PayloadKey]:
        """`NOTIFY_PAYLOAD_KEYS`, the first to encrypt with; none when it is unset."""
        return [] if self.payload_keys is None else payload_keys(self.payload_keys.get_secret_value())

    @field_validator("escalate_on", "codec_cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value

    @field_validator("internal_team_slack", mode="before")
    @classmethod
    def _workspace_slash_channel(cls, value: object) -> object:
        if isinstance(value, str):
            workspace, slash, channel = value.partition("/")
            if not slash:
                raise ValueError("expected WORKSPACE/CHANNEL")
            return {"workspace": workspace, "channel": channel}
        return value

    @property
    def streams_location(self) -> str:
        """`NOTIFY_STREAMS_URL`, or by default a SQLite file in the data dir."""
        return self.streams_url or f"sqlite:///{self.default_streams_file}"

    @property
    def default_streams_file(self) -> Path:
        """Where the streams are kept without `NOTIFY_STREAMS_URL`: a SQLite file in the data dir."""
        return self.data_dir / "streams.db"

    def open_streams(self, *, as_owner: bool = False, create: bool = False) -> StreamStore:
        """The stream store, each kind of handle connecting as configured (for PostgreSQL, as its own role); or,
        `as_owner`, every handle with `NOTIFY_STREAMS_URL`, as what only the owner of the streams may do needs.
        Only what keeps the store (the worker, the demo) may `create` the default SQLite file: a client that made one
        would write requests no worker reads (`NoStore`)."""
        file = sqlite_file(self.streams_location)
        if not create and file is not None and not file.exists():
            variable = "NOTIFY_STREAMS_URL" if self.streams_url else "NOTIFY_DATA_DIR"
            raise NoStore(
                f"no store at {file.absolute()}: start the worker first ({WORKER_HINT}), or set {variable} to the "
                "worker's"
            )
        if as_owner:
            return open_store(self.streams_location, pool_size=self.streams_pool_size)
        return open_store(
            self.streams_location,
            producer_url=self.streams_producer_url,
            consumer_url=self.streams_consumer_url,
            handler_url=self.streams_handler_url,
            pool_size=self.streams_pool_size,
        )

    def slack_token_for(self, workspace: str) -> SecretStr | None:
        return self.slack_tokens.get(workspace, self.slack_token)

    def categories(self) -> dict[str, Category]:
        """The categories `NOTIFY_CATEGORIES_FILE` configures, by name (none without one): read again once the file
        changes; `ConfigurationError` for a file that cannot be read or is not a list of categories."""
        return {} if self.categories_file is None else _categories(self.categories_file)

    def saga_policies(self) -> SagaPolicies:
        team = {Channel.EMAIL: self.internal_team_email, Channel.SLACK: self.internal_team_slack}
        return SagaPolicies(
            channels={
                c: ChannelPolicy(
                    initial_retry_seconds=getattr(self, f"{c}_retry_initial_seconds"),
                    maximum_retry_seconds=getattr(self, f"{c}_retry_maximum_seconds"),
                    deadline_seconds=getattr(self, f"{c}_deadline_seconds"),
                    attempt_timeout_seconds=getattr(self, f"{c}_attempt_timeout_seconds"),
                    transfer_bytes_per_second=self.transfer_bytes_per_second,
                    heartbeat_timeout_seconds=self.heartbeat_timeout_seconds,
                )
                for c in Channel
            },
            slack_workspaces=None if self.slack_token else sorted(self.slack_tokens),
            channel_configs_failure_action=CONFIGS_FAILURE_ACTIONS[self.channel_configs_failure_action],
            cannot_prepare_action=CANNOT_PREPARE_ACTIONS[self.cannot_prepare_action],
            escalate_on=self.escalate_on,
            internal_team=None
            if not any(team.values())
            else DirectoryEntry(
                id=INTERNAL_TEAM,
                name="Internal team",
                email=self.internal_team_email,
                slack=self.internal_team_slack,
                channels={c: ChannelPreference.SEND for c, address in team.items() if address},
            ),
        )


_CATEGORIES: dict[Path, tuple[float, dict[str, Category]]] = {}
"""Each categories file as last read, with its modification time."""
_CATEGORY_LIST = TypeAdapter(list[Category])


def _categories(path: Path) -> dict[str, Category]:
    """The file's categories; once it was read, an edit that cannot be used keeps the last good ones (said once in the
    log, until it is fixed), so that a slip while the service runs fails no notification."""
    cached = _CATEGORIES.get(path)
    try:
        try:
            changed = path.stat().st_mtime
        except OSError as error:
            raise ConfigurationError(f"NOTIFY_CATEGORIES_FILE {path}: {one_line(error)}") from error
        if cached is not None and cached[0] == changed:
            return cached[1]
        named = _read_categories(path)
    except ConfigurationError as error:
        if cached is None:
            raise
        if cached[0] != -1:
            logging.getLogger("notify.settings").error("%s; the categories read before are kept", error)
            _CATEGORIES[path] = (-1, cached[1])  # said once
        return cached[1]
    _CATEGORIES[path] = (changed, named)
    return named


def _read_categories(path: Path) -> dict[str, Category]:
    try:
        listed = _CATEGORY_LIST.validate_python(yaml.safe_load(path.read_text(encoding="utf-8")) or [])
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigurationError(f"NOTIFY_CATEGORIES_FILE {path}: {one_line(error)}") from error
    except ValidationError as error:
        raise ConfigurationError(f"NOTIFY_CATEGORIES_FILE {path}: {validation_message(error)}") from error
    named = {c.name: c for c in listed}
    if len(named) != len(listed):
        raise ConfigurationError(f"NOTIFY_CATEGORIES_FILE {path}: each category is named once")
    return named


class ConfigurationError(ValueError):
    """A setting that cannot be used, named by its environment variable."""


WORKER_HINT = f"`{command('worker.py', '--dev', '--sinks')}` runs one on the embedded default"
"""How a message tells a user to start the worker, as pasted where this process was started."""


class NoStore(ConnectionError):
    """The store a client would use does not exist: the streams are where the worker keeps them."""


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` says a service cannot be reached or used (an `OSError`, `ConnectionError` and the store's
    `StoreUnavailable` and `StoreUnusable` among them, or a Temporal error): the entry points report it on one line.
    Anything else is a bug, reported with its traceback. (Temporal's errors are looked for only once its SDK is
    loaded: a command that never loaded it cannot have met one, and need not pay for loading it.)"""
    temporal = sys.modules.get("temporalio.exceptions")
    if temporal is not None and isinstance(error, RuntimeError) and str(error).startswith(TEMPORAL_OUTAGES):
        return True
    return isinstance(error, OSError) or (temporal is not None and isinstance(error, temporal.TemporalError))


TEMPORAL_OUTAGES = ("Failed client connect", "Worker validation failed", "Poll failure")
"""How Temporal's SDK begins the `RuntimeError`s it raises for a server it cannot reach or use (a namespace that is
not there, a server lost, a key revoked)."""


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else error.__class__.__name__


def load_settings() -> Settings:
    """The settings from the environment and `.env`, or a one-line `ConfigurationError`."""
    try:
        return Settings()
    except ValidationError as error:
        raise ConfigurationError(validation_message(error, located=_variable)) from error
    except SettingsError as error:  # a value that is not even JSON
        field = re.search(r'field "(\w+)"', str(error))
        name = f"NOTIFY_{field.group(1).upper()}" if field else "configuration"
        raise ConfigurationError(f"{name}: malformed JSON: {error.__cause__}") from error


def _variable(location: Location) -> Location:
    """A setting's error, where the user sets it: its environment variable (or the configuration as a whole)."""
    return (f"NOTIFY_{str(location[0]).upper()}",) if location else ("configuration",)
