"""The activities' contract: the workflow and the client know activities by it alone, and the implementations the
worker registers agree with it, name for name and type for type."""

from __future__ import annotations

import subprocess
import sys
import typing
from typing import Any

from temporalio import activity

import activities.contract as contract
from activities.broadcast import BroadcastActivities
from activities.notification import NotificationActivities
from activities.registry import CHANNEL_HANDLERS
from activities.slack import SlackHandler
from activities.webhooks import WebhookActivities
from harness.processes import ROOT

IMPLEMENTATIONS = [
    *(getattr(NotificationActivities, name) for name in vars(NotificationActivities)),
    *(getattr(BroadcastActivities, name) for name in vars(BroadcastActivities)),
    *(getattr(WebhookActivities, name) for name in vars(WebhookActivities)),
    *(method for handler in CHANNEL_HANDLERS.values() for method in (handler.send, handler.record_not_sent)),
    SlackHandler.wait_for_turn,
]


def test_the_workflow_and_the_client_load_no_implementation() -> None:
    """Importing them loads no SMTP, Slack, HTTP or database client, and no handler."""
    code = "import sys, workflows.notification, workflows.broadcast, workflows.webhook, client; print(*sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    modules = set(loaded.stdout.split())
    assert "workflows.notification" in modules and "activities.contract" in modules
    heavy = {m for m in modules if m.split(".")[0] in {"aiosmtplib", "aiosmtpd", "slack_sdk", "aiohttp", "psycopg"}}
    assert heavy == set()
    assert {m for m in modules if m.startswith("activities.")} == {"activities.contract"}


def declared() -> list[tuple[contract.Activity[Any, Any], type, object]]:
    """Each activity of the contract, with the input and result types its annotation gives."""
    found = []
    for name, hint in typing.get_type_hints(contract).items():
        value = getattr(contract, name)
        if isinstance(value, dict):
            hint, values = typing.get_args(hint)[1], list(value.values())
        else:
            values = [value]
        if typing.get_origin(hint) is contract.Activity:
            found += [(a, *typing.get_args(hint)) for a in values]
    return found


def test_every_activity_of_the_contract_is_implemented_with_its_types() -> None:
    implemented: dict[str, tuple[object, ...]] = {}
    for fn in IMPLEMENTATIONS:
        definition = activity._Definition.from_callable(fn)
        if definition is not None and definition.name is not None:
            implemented[definition.name] = (*(definition.arg_types or ()), definition.ret_type)
    activities = declared()
    assert sorted(implemented) == sorted(a.name for a, _, _ in activities)
    for a, input_type, result_type in activities:
        assert implemented[a.name] == (input_type, result_type), a.name
        assert a.result == (None if result_type is type(None) else result_type), a.name  # as the converter takes it
