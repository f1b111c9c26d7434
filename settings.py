"""Configuration, read from `NOTIFY_*` environment variables and a `.env` file; shared by worker and starter."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from domain import EmailAddress


class SmtpSecurity(StrEnum):
    NONE = "none"
    STARTTLS = "starttls"
    TLS = "tls"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFY_", env_file=".env", extra="ignore")

    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    task_queue: str = "notifications"
    data_dir: Path = Path(".notify")
    streams_url: str | None = None
    smtp_host: str = "localhost"
    smtp_port: int = Field(1025, ge=1, le=65535)
    smtp_security: SmtpSecurity = SmtpSecurity.NONE
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    email_from: EmailAddress = "notifications@notify.localhost"
    slack_token: SecretStr | None = None
    slack_tokens: dict[str, SecretStr] = Field(default_factory=dict)
    slack_api_url: str = "https://slack.com/api/"
    internal_team_email: EmailAddress | None = None

    @property
    def streams_location(self) -> str:
        """`NOTIFY_STREAMS_URL`, or by default a SQLite file in the data dir."""
        return self.streams_url or f"sqlite:///{self.data_dir / 'streams.db'}"

    def slack_token_for(self, workspace: str) -> SecretStr | None:
        return self.slack_tokens.get(workspace, self.slack_token)


class ConfigurationError(ValueError):
    """A setting that cannot be used, named by its environment variable."""


def load_settings() -> Settings:
    """The settings from the environment and `.env`, or a one-line `ConfigurationError`."""
    try:
        return Settings()
    except ValidationError as error:
        first = error.errors()[0]
        name = "NOTIFY_" + "_".join(str(part) for part in first["loc"][:1]).upper()
        raise ConfigurationError(f"{name}: {first['msg'].removeprefix('Value error, ')}") from error
    except SettingsError as error:  # a value that is not even JSON
        field = re.search(r'field "(\w+)"', str(error))
        name = f"NOTIFY_{field.group(1).upper()}" if field else "configuration"
        raise ConfigurationError(f"{name}: malformed JSON: {error.__cause__}") from error


async def connect(settings: Settings, *, lazy: bool = False) -> Client:
    """A Temporal client for these settings, speaking pydantic models; a lazy one connects on first use."""
    try:
        return await Client.connect(
            settings.temporal_address,
            namespace=settings.temporal_namespace,
            data_converter=pydantic_data_converter,
            lazy=lazy,
        )
    except RuntimeError as error:
        raise ConnectionError(f"cannot reach Temporal at {settings.temporal_address}: {error}") from error
