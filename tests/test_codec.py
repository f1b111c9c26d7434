"""Protected history: the AES-256-GCM payload codec (`NOTIFY_PAYLOAD_KEYS`) on a dev server with the real workers.
The raw history (`temporal workflow show --output json`) holds no address, subject or body in clear; a key rotated
out of first place still opens old histories, which still replay; the codec server decodes for the Web UI."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr, ValidationError
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

import codec
from api.app import create_app, serving
from api.keys import ApiKeys, Scope
from client import NotificationClient
from domain import Channel
from settings import PayloadKey, Settings
from streams import StreamStore
from streams.directory import import_entries
from tests.service import entity, operation
from worker import WORKFLOW_RUNNER, running_workers, temporal_binary
from workflows.notification import NotificationSaga

OLD, NEW = PayloadKey("2026-10", os.urandom(32)), PayloadKey("2026-11", os.urandom(32))
SUBJECT, BODY, ADDRESS = "Quarterly-7f3a figures", "Body-9c1e is ready.", "ada.secret@example.com"
NAME = "Ada-5e7d"
"""The entity's name: with a `-`, which base64 never holds, so that no ciphertext shown in the history spells it."""


def keys_setting(*keys: PayloadKey) -> SecretStr:
    return SecretStr(",".join(f"{k.id}:{base64.b64encode(k.key).decode()}" for k in keys))


def client_with(env: WorkflowEnvironment, *keys: PayloadKey) -> Client:
    return Client(env.client.service_client, namespace=env.client.namespace, data_converter=codec.data_converter(keys))


async def sent(temporal: Client, store: StreamStore, settings: Settings) -> str:
    async with running_workers(temporal, store, settings):
        await import_entries(store, [entity(email=ADDRESS, name=NAME)])
        notify = NotificationClient(store, temporal, settings)
        nid = await notify.request(operation(subject=SUBJECT, body=BODY))
        assert (await notify.result(nid)).status == "sent"
        return nid


def raw_history(env: WorkflowEnvironment, nid: str) -> tuple[str, list[bytes]]:
    """`temporal workflow show --output json`, and every payload's data in it, decoded from base64 (as stored)."""
    shown = subprocess.run(
        [str(temporal_binary("temporal")), "workflow", "show", "--workflow-id", nid, "--output", "json"]
        + ["--address", env.client.service_client.config.target_host],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout

    def payloads(node: Any) -> Iterator[bytes]:
        if isinstance(node, dict):
            if "metadata" in node and "data" in node:
                yield base64.b64decode(node["data"])
            for value in node.values():
                yield from payloads(value)
        elif isinstance(node, list):
            for value in node:
                yield from payloads(value)

    return shown, list(payloads(json.loads(shown)))


async def test_the_raw_history_holds_no_address_subject_or_body_in_clear(
    dev_env: WorkflowEnvironment, store: StreamStore, settings: Settings, mail_sink: Any, slack_sink: Any
) -> None:
    plain = await sent(dev_env.client, store, settings)
    _, data = raw_history(dev_env, plain)
    assert any(SUBJECT.encode() in d for d in data)  # the check below can see plaintext where there is some

    keyed = settings.model_copy(update={"payload_keys": keys_setting(OLD)})
    nid = await sent(client_with(dev_env, OLD), store, keyed)
    shown, data = raw_history(dev_env, nid)
    # sealed: the saga's input, its activities' inputs and results, its result (not its search attributes, an
    # entity id and a status, nor its patch markers' names)
    assert sum(1 for d in data if d[:1] not in (b"{", b"[", b'"')) >= 5
    for secret in (SUBJECT, BODY, ADDRESS, NAME):
        assert secret not in shown and not any(secret.encode() in d for d in data), secret

    # the key rotated out of first place still opens what it sealed: the result, and the history, which replays
    rotated = client_with(dev_env, NEW, OLD)
    view = await rotated.get_workflow_handle_for(NotificationSaga.run, nid).result()
    assert (view.subject, view.channels[Channel.EMAIL].address) == (SUBJECT, ADDRESS)
    history = await rotated.get_workflow_handle(nid).fetch_history()
    replayed = Replayer(
        workflows=[NotificationSaga], data_converter=codec.data_converter([NEW, OLD]), workflow_runner=WORKFLOW_RUNNER
    )
    assert (await replayed.replay_workflow(history, raise_on_replay_failure=False)).replay_failure is None
    without = Replayer(
        workflows=[NotificationSaga], data_converter=codec.data_converter([NEW]), workflow_runner=WORKFLOW_RUNNER
    )
    failure = (await without.replay_workflow(history, raise_on_replay_failure=False)).replay_failure
    assert failure is not None and "which NOTIFY_PAYLOAD_KEYS does not hold" in str(failure.__cause__ or failure)


async def test_a_sealed_payload_opens_only_with_its_key() -> None:
    payload = Payload(metadata={"encoding": b"json/plain"}, data=b'{"subject": "x"}')
    [sealed] = await codec.PayloadCipher([OLD]).encode([payload])
    assert sealed.metadata["encryption-key-id"] == b"2026-10" and b"subject" not in sealed.data
    assert await codec.PayloadCipher([NEW, OLD]).decode([sealed]) == [payload]
    assert await codec.PayloadCipher([NEW]).decode([payload]) == [payload]  # never sealed: passes
    with pytest.raises(ValueError, match="key '2026-10', which NOTIFY_PAYLOAD_KEYS does not hold"):
        await codec.PayloadCipher([NEW]).decode([sealed])
    tampered = Payload(metadata=sealed.metadata, data=sealed.data[:-1] + bytes([sealed.data[-1] ^ 1]))
    with pytest.raises(ValueError, match="does not open with key '2026-10'"):
        await codec.PayloadCipher([OLD]).decode([tampered])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("k1", "each key is KEYID:BASE64KEY"),
        ("k1:not base64!", "key 'k1' is not base64"),
        (f"k1:{base64.b64encode(b'short').decode()}", "key 'k1' is 5 bytes; AES-256 takes 32"),
        (f"k1:{base64.b64encode(b'1' * 32).decode()},k1:{base64.b64encode(b'2' * 32).decode()}", "'k1' is given twice"),
    ],
)
def test_bad_payload_keys_are_refused(value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None, payload_keys=value)


async def test_the_codec_server_decodes_for_the_web_ui(
    dev_env: WorkflowEnvironment, store: StreamStore, settings: Settings
) -> None:
    keyed = settings.model_copy(update={"payload_keys": keys_setting(NEW, OLD)})
    payload = Payload(metadata={"encoding": b"json/plain"}, data=b'{"subject": "x"}')
    [sealed] = await codec.PayloadCipher([OLD]).encode([payload])
    body = {
        "payloads": [
            {
                "metadata": {k: base64.b64encode(v).decode() for k, v in sealed.metadata.items()},
                "data": base64.b64encode(sealed.data).decode(),
            }
        ]
    }
    async with (
        settings.open_streams(as_owner=True) as owner,
        serving(create_app(store, dev_env.client, keyed), "127.0.0.1", 0) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        reader = await ApiKeys(owner).create("ui", [Scope.READ])
        ui = {"Origin": "http://localhost:8233", "Authorization": f"Bearer {reader}"}
        decoded = await http.post("/codec/decode", json=body, headers=ui)
        assert decoded.status_code == 200, decoded.text
        assert decoded.headers["access-control-allow-origin"] == "http://localhost:8233"
        [opened] = decoded.json()["payloads"]
        assert base64.b64decode(opened["data"]) == payload.data
        lower = await http.post("/codec/decode", json=body, headers={"Authorization": f"bearer {reader}"})
        assert lower.status_code == 200  # the scheme in any case, as the API takes it
        assert (await http.post("/codec/encode", json=body, headers=ui)).status_code == 403  # encoding is `send`'s
        assert (await http.post("/codec/decode", json=body)).status_code == 401
        for key, said in [
            (None, "an API key is needed: Authorization: Bearer KEY, or the web page's sign-in"),
            ("nk_000000000000_" + "A" * 43, "the API key is not valid (unknown, or revoked)"),
        ]:  # a refusal the UI can read: with its CORS headers
            headers = {"Origin": "http://localhost:8233"} | ({"Authorization": f"Bearer {key}"} if key else {})
            refused = await http.post("/codec/decode", json=body, headers=headers)
            assert (refused.status_code, refused.json()["detail"]) == (401, said)
            assert refused.headers["access-control-allow-origin"] == "http://localhost:8233"
        preflight = await http.options(
            "/codec/decode",
            headers={"Origin": "http://localhost:8233", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 204 and "X-Namespace" in preflight.headers["access-control-allow-headers"]
        elsewhere = await http.options("/codec/decode", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in elsewhere.headers
        signed = await http.post("/sign-in", data={"key": reader})  # the web page's cookie serves as well
        assert signed.status_code == 303
        assert (await http.post("/codec/decode", json=body)).status_code == 200
