"""How the processes log: a plain line each, or with `NOTIFY_LOG_FORMAT=json` one JSON object per line (time, level,
logger, message, the notification id where there is one, the exception), for a log pipeline to read."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from settings import LogFormat

QUIET = {
    "mail.log": logging.WARNING,
    "aiohttp.access": logging.WARNING,
    "psycopg.pool": logging.ERROR,
    "httpx": logging.WARNING,
}
"""The local sinks say a line per connection and per request, the pool a line per connection lost (the outage is
said once, elsewhere), and httpx a line per request with its whole URL (a webhook's may hold credentials)."""

_json = False


def configure(format: LogFormat) -> None:
    """Log at INFO to standard error in `format`; `say` follows it too."""
    global _json
    _json = format == LogFormat.JSON
    handler = logging.StreamHandler()
    handler.addFilter(NotificationIds())
    handler.setFormatter(JsonLines() if _json else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    for name, level in QUIET.items():
        logging.getLogger(name).setLevel(level)


def say(text: str) -> None:
    """What a process tells whoever started it (where it serves, what it waits for): a line on standard output, or a
    log line when the logs are JSON, so that every line it writes is one."""
    if _json:
        logging.getLogger("notify").info(text)
    else:
        print(text, flush=True)


class NotificationIds(logging.Filter):
    """Give each record the notification it is about, if it can tell: a saga's id is its notification's, and so is
    the workflow id of every activity a saga runs (Temporal's loggers carry it; so does an activity's context)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "notification_id", None) is None:
            record.notification_id = _notification_id(record)
        return True


def _notification_id(record: logging.LogRecord) -> str | None:
    for extra in ("temporal_workflow", "temporal_activity"):
        found = getattr(record, extra, None)
        if isinstance(found, dict) and found.get("workflow_id"):
            return str(found["workflow_id"])
    activity = sys.modules.get("temporalio.activity")  # only where Temporal's SDK is loaded anyway
    if activity is not None and activity.in_activity():
        return str(activity.info().workflow_id or "") or None
    return None


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        notification_id = getattr(record, "notification_id", None)
        if notification_id:
            line["notification_id"] = notification_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)
