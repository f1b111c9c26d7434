"""Local stand-ins for a mail server and for Slack, to try the service on one machine: `worker.py --sinks` and
`starter.py demo` run them beside the worker; the tests make them misbehave."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pydantic import SecretStr

from settings import Settings, SmtpSecurity
from sinks.mail import MailSink
from sinks.slack import SlackSink

LOCAL_SLACK_TOKEN = "xoxb-local-sink"


@dataclass(frozen=True)
class LocalSinks:
    settings: Settings
    """The settings, with email and Slack pointed at the sinks."""
    mail: MailSink
    slack: SlackSink

    def describe(self) -> str:
        return (
            f"local mail sink on {self.mail.host}:{self.mail.port} (mail kept in {self.mail.folder}), local Slack "
            f"sink at {self.slack.api_url} (messages kept in {self.slack.folder}/messages.jsonl)"
        )


@contextmanager
def local_sinks(settings: Settings) -> Iterator[LocalSinks]:
    """A mail sink on the SMTP host and port of the settings and a Slack sink on a free port, both keeping what they
    receive in the data dir; the settings they yield send there (plain SMTP, no login; the sink's Slack token)."""
    data = settings.data_dir
    with (
        MailSink(settings.smtp_host, settings.smtp_port, folder=data / "mail") as mail,
        SlackSink(folder=data / "slack") as slack,
    ):
        local: dict[str, object] = {
            "smtp_security": SmtpSecurity.NONE,
            "smtp_username": None,
            "smtp_password": None,
            "slack_api_url": slack.api_url,
            "slack_token": SecretStr(LOCAL_SLACK_TOKEN),
            "slack_tokens": {},
        }
        yield LocalSinks(settings.model_copy(update=local), mail, slack)
