"""The HTTP API, called over HTTP on a real uvicorn server, with a worker and the dev server (on PostgreSQL with its
roles: tests/test_postgres.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from hashlib import sha256
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel
from temporalio.testing import WorkflowEnvironment

from api.app import create_app, serving
from client import Accepted, EventRecord, NotificationClient, attachment, connect
from domain import DeliveryAuditEntry, DirectoryEntry, NotificationView, TagName, tag
from settings import Settings
from sinks.mail import MailSink, free_port
from sinks.slack import SlackSink
from streams import StreamName, StreamStore
from tests.service import Api, operation


def is_problem(response: httpx.Response, status: int, detail: str) -> bool:
    body = response.json()
    return (
        response.status_code == status
        and response.headers["content-type"] == "application/problem+json"
        and body["status"] == status
        and body["detail"] == detail
        and "\n" not in body["detail"]
    )


async def test_a_notification_is_requested_read_back_and_found_in_the_audit(
    api: Api, mail_sink: MailSink, slack_sink: SlackSink
) -> None:
    sent = await api.call(
        "POST",
        "/v1/notifications",
        json={"entity": "user-1", "subject": "Over HTTP", "body": "B", "tags": {"team": "web"}},
    )
    assert sent.status_code == 202, sent.text
    accepted = sent.json()
    assert set(accepted) == {"id", "status"} and accepted["status"] == "pending"
    view = await api.outcome(accepted["id"])
    assert view["status"] == "sent" and view["channels"]["email"]["address"] == "ada@example.com"
    events = (await api.call("GET", f"/v1/notifications/{accepted['id']}/events")).json()
    assert events[0]["type"] == "ExecuteOpRequestedEvent" and events[0]["stream"] == "client-operation"
    assert {"name": "team", "value": "web"} in events[0]["tags"]
    audit = (await api.call("GET", "/v1/audit/email", params={"address": "ADA@example.com"})).json()
    assert [(a["notification_id"], a["outcome"]) for a in audit] == [(accepted["id"], "sent")]
    slack = (await api.call("GET", "/v1/audit/slack", params={"channel": "acme/C0123"})).json()
    assert [a["notification_id"] for a in slack] == [accepted["id"]]
    assert [m.message["Subject"] for m in mail_sink.messages] == ["Over HTTP"]
    # as recorded, field for field: the view, and each record as `events --json` shows it
    recorded = await api.store.reader(StreamName.NOTIFICATION_VIEW).latest(accepted["id"])
    assert recorded is not None and view == recorded.json()
    listed = (await api.call("GET", "/v1/notifications", params={"entity": "user-1"})).json()
    assert listed["items"] == [view]
    by_id = tag(TagName.NOTIFICATION_ID, accepted["id"])
    records = sorted(
        [r for stream in StreamName for r in await api.store.reader(stream).by_tags(by_id)], key=lambda r: r.internal_id
    )
    assert events == [
        {
            "internal_id": r.internal_id,
            "stream": r.stream,
            "record_id": r.record_id,
            "type": r.type,
            "timestamp_utc": r.timestamp_utc.isoformat(),
            "tags": [{"name": t.name, "value": t.value} for t in r.tags],
            "payload": r.json(),
        }
        for r in records
    ]


async def test_the_audit_lists_the_files_each_message_carried(
    api: Api, dev_env: WorkflowEnvironment, settings: Settings
) -> None:
    pdf, png = b"%PDF-1.7\n" + bytes(range(256)), b"\x89PNG\r\n\x1a\n" + bytes(32)
    files = [attachment("report.pdf", pdf), attachment("logo.png", png, content_id="logo")]
    op = operation(html_body='<img src="cid:logo">', attachments=files)
    nid = await NotificationClient(api.store, dev_env.client, settings).request(op, contents=[pdf, png])
    assert (await api.outcome(nid))["status"] == "sent"
    named = [
        {
            "filename": "report.pdf",
            "media_type": "application/pdf",
            "size": len(pdf),
            "sha256": sha256(pdf).hexdigest(),
        },
        {
            "filename": "logo.png",
            "media_type": "image/png",
            "size": len(png),
            "sha256": sha256(png).hexdigest(),
            "content_id": "logo",
        },
    ]
    email = (await api.call("GET", "/v1/audit/email", params={"address": "ada@example.com"}, key="reader")).json()
    slack = (await api.call("GET", "/v1/audit/slack", params={"channel": "acme/C0123"}, key="reader")).json()
    assert [a["attachments"] for a in email if a["notification_id"] == nid] == [named]
    assert [a["attachments"] for a in slack if a["notification_id"] == nid] == [named[:1]]  # inline: email's alone


async def test_an_idempotency_key_returns_the_first_id_and_refuses_another_request(api: Api) -> None:
    body = {"entity": "user-2", "subject": "Once", "body": "B"}
    first = await api.call("POST", "/v1/notifications", json=body, headers={"Idempotency-Key": "order-7"})
    again = await api.call("POST", "/v1/notifications", json=body, headers={"Idempotency-Key": "order-7"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert (await api.outcome(first.json()["id"]))["status"] == "sent"
    later = await api.call("POST", "/v1/notifications", json=body, headers={"Idempotency-Key": "order-7"})
    assert later.json() == {"id": first.json()["id"], "status": "sent"}  # its status now, not at the first request
    other = await api.call(
        "POST", "/v1/notifications", json={**body, "subject": "Twice"}, headers={"Idempotency-Key": "order-7"}
    )
    assert is_problem(
        other,
        409,
        f"idempotency key 'order-7' was already used by notification {first.json()['id']} with a different request",
    )
    bad_key = await api.call("POST", "/v1/notifications", json=body, headers={"Idempotency-Key": "a key"})
    assert bad_key.status_code == 422 and bad_key.json()["detail"].startswith("Idempotency-Key: ")


async def test_bad_input_is_422_and_writes_nothing(api: Api) -> None:
    before = await api.records()
    for body, detail in [
        ({"entity": "user-1", "subject": "Two\nlines", "body": "B"}, "subject: must be a single line of text"),
        ({"entity": "user-1", "body": "B"}, "subject: is missing"),
        ({"subject": "S", "body": "B"}, "entity: is missing"),
        ({"entity": "user-1", "subject": "S", "body": "B", "colour": "red"}, "colour: is not a known field"),
        ({"entity": "user-1", "subject": "S", "body": "B", "send_at": "2030-01-01T09:00"}, "send_at: must have a"),
        ({"entity": "user-1", "subject": "S", "body": "B", "tags": {"entity-id": "x"}}, "tags: 'entity-id': reserved"),
        ({"entity": "user-1", "template": "welcome", "data": {}}, "template 'welcome', subject: data.service is"),
        ({"entity": "user-1", "template": "nope"}, "template 'nope': no such template"),
        ({"entity": "user-1", "template": "welcome", "subject": "S", "data": {}}, "template 'welcome': subject is"),
        ({"entity": "user-9", "subject": "S", "body": "B"}, "entity 'user-9' is not in the directory"),
        ({"entity": {"id": "u-9", "channels": {"slack": "send"}}, "subject": "S", "body": "B"}, "entity: entity 'u-9"),
    ]:
        response = await api.call("POST", "/v1/notifications", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"].startswith(detail), (body, response.json())
    malformed = await api.call(
        "POST", "/v1/notifications", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 422 and "\n" not in malformed.json()["detail"]
    assert await api.records() == before


async def test_a_request_that_carries_its_entity_records_it_in_the_directory_first(
    api: Api, mail_sink: MailSink
) -> None:
    """A `send` key may name a new entity inline; changing one the directory has takes `admin`; a request refused or
    repeated changes nothing there."""
    carried = {"id": "user-9", "email": "nine@example.com", "channels": {"email": "send"}}
    sent = await api.call(
        "POST", "/v1/notifications", key="sender", json={"entity": carried, "subject": "Hi", "body": "B"}
    )
    assert sent.status_code == 202, sent.text
    view = await api.outcome(sent.json()["id"])
    assert (view["entity_id"], view["channels"]["email"]["address"]) == ("user-9", "nine@example.com")
    recorded = await api.call("GET", "/v1/entities/user-9")
    assert recorded.json() == {**carried, "name": "user-9"}
    assert [m.recipients for m in mail_sink.messages] == [("nine@example.com",)]

    hijack = {"entity": {**carried, "email": "attacker@evil.test"}, "subject": "Hi", "body": "B"}
    refused = await api.call("POST", "/v1/notifications", key="sender", json=hijack)
    assert is_problem(
        refused,
        403,
        "entity 'user-9' is in the directory as another entry: changing it takes a key with the 'admin' scope (or "
        "give its id alone)",
    )
    keyed = {"Idempotency-Key": "inline-1"}
    first = await api.call("POST", "/v1/notifications", json={**hijack, "entity": carried}, headers=keyed)
    assert first.status_code == 202, first.text
    conflict = await api.call("POST", "/v1/notifications", json={**hijack, "subject": "Other"}, headers=keyed)
    repeated = await api.call("POST", "/v1/notifications", json=hijack, headers=keyed)
    assert (conflict.status_code, repeated.status_code) == (409, 202)
    assert (await api.call("GET", "/v1/entities/user-9")).json()["email"] == "nine@example.com"
    assert len(await api.store.reader(StreamName.ENTITY_DIRECTORY).by_id("user-9")) == 1  # never changed


async def test_keys_and_scopes(api: Api) -> None:
    assert is_problem(
        await api.call("GET", "/v1/notifications", key=None), 401, "an API key is needed: Authorization: Bearer KEY"
    )
    assert (await api.call("GET", "/v1/notifications", key=None)).headers["www-authenticate"] == "Bearer"
    wrong = api.keys["all"][:-4] + "AAAA"
    assert is_problem(
        await api.call("GET", "/v1/notifications", key=wrong), 401, "the API key is not valid (unknown, or revoked)"
    )
    assert (await api.call("GET", "/v1/notifications", key="reader")).status_code == 200
    assert is_problem(
        await api.call(
            "POST", "/v1/notifications", key="reader", json={"entity": "user-1", "subject": "S", "body": "B"}
        ),
        403,
        "the API key 'reader' does not hold the 'send' scope",
    )
    assert (await api.call("GET", "/v1/notifications", key="sender")).status_code == 403
    assert (await api.call("PUT", "/v1/entities/user-9", key="sender", json={"name": "N"})).status_code == 403
    await api.issuer.revoke("reader")
    assert (await api.call("GET", "/v1/notifications", key="reader")).status_code == 401  # at once
    assert (await api.call("GET", "/healthz", key=None)).json() == {"status": "ok"}


async def test_cancel_and_unknown_ids(api: Api) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    sent = await api.call(
        "POST", "/v1/notifications", json={"entity": "user-1", "subject": "L", "body": "B", "send_at": later}
    )
    assert sent.json()["status"] == "scheduled"
    nid = sent.json()["id"]
    cancelled = await api.call("POST", f"/v1/notifications/{nid}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    again = await api.call("POST", f"/v1/notifications/{nid}/cancel")
    assert again.status_code == 409 and again.headers["content-type"] == "application/problem+json"
    for method, path in (
        ("GET", "/v1/notifications/x-1"),
        ("GET", "/v1/notifications/x-1/events"),
        ("POST", "/v1/notifications/x-1/cancel"),
    ):
        assert is_problem(await api.call(method, path), 404, "no notification with id 'x-1'")
    assert is_problem(await api.call("GET", "/v1/entities/nobody"), 404, "no entity with id 'nobody'")
    assert (await api.call("GET", "/v1/nothing-here")).headers["content-type"] == "application/problem+json"


async def test_recent_notifications_page_newest_first_by_entity_and_status(api: Api) -> None:
    ids = []
    for i, who in enumerate(["user-1", "user-2", "user-1", "user-2", "user-2"]):
        sent = await api.call("POST", "/v1/notifications", json={"entity": who, "subject": f"N{i}", "body": "B"})
        ids.append(sent.json()["id"])
    for nid in ids:
        await api.outcome(nid)
    first = (await api.call("GET", "/v1/notifications", params={"entity": "user-2", "limit": 2})).json()
    assert [v["id"] for v in first["items"]] == [ids[4], ids[3]]
    second = (
        await api.call(
            "GET", "/v1/notifications", params={"entity": "user-2", "limit": 2, "cursor": first["next_cursor"]}
        )
    ).json()
    assert [v["id"] for v in second["items"]] == [ids[1]] and second["next_cursor"] is None
    sent_ones = (await api.call("GET", "/v1/notifications", params={"status": "sent", "limit": 100})).json()
    assert [v["id"] for v in sent_ones["items"]] == ids[::-1]
    assert (await api.call("GET", "/v1/notifications", params={"status": "failed"})).json()["items"] == []
    assert (await api.call("GET", "/v1/notifications", params={"cursor": "bogus"})).status_code == 422
    assert (await api.call("GET", "/v1/notifications", params={"limit": 0})).status_code == 422


async def test_the_directory_is_kept_over_http(api: Api) -> None:
    entry = {"name": "Eve", "email": "eve@example.com", "channels": {"email": "send"}}
    put = await api.call("PUT", "/v1/entities/user-7", json=entry)
    assert put.status_code == 200 and put.json() == {"id": "user-7", **entry}
    assert (await api.call("GET", "/v1/entities/user-7", key="reader")).json() == {"id": "user-7", **entry}
    bad = await api.call("PUT", "/v1/entities/user-8", json={**entry, "email": "not an address"})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("email: ")
    other = await api.call("PUT", "/v1/entities/user-8", json={**entry, "id": "user-9"})
    assert is_problem(other, 422, "id: 'user-9' is not the id in the path, 'user-8'")
    assert (await api.call("GET", "/v1/entities/user-8")).status_code == 404


async def test_a_template_renders_into_the_mail_and_the_slack_message(
    api: Api, mail_sink: MailSink, slack_sink: SlackSink
) -> None:
    sent = await api.call(
        "POST",
        "/v1/notifications",
        json={"entity": "user-1", "template": "welcome", "data": {"service": "Billing <beta>", "version": "2.0"}},
    )
    assert sent.status_code == 202, sent.text
    view = await api.outcome(sent.json()["id"])
    assert view["status"] == "sent"
    [mail] = mail_sink.messages
    assert mail.message["Subject"] == "Welcome to Billing <beta> 2.0, Ada"
    html = mail.message.get_body(("html",))
    assert html is not None and "Billing &lt;beta&gt;" in html.get_content()
    [posted] = slack_sink.messages
    assert "Billing &lt;beta&gt;" in posted.text
    events = (await api.call("GET", f"/v1/notifications/{sent.json()['id']}/events")).json()
    template = events[0]["payload"]["operation"]["template"]
    assert template["name"] == "welcome" and len(template["sha256"]) == 64


async def test_docs_list_every_endpoint(api: Api) -> None:
    docs = await api.call("GET", "/docs", key=None)
    assert docs.status_code == 200 and "swagger-ui" in docs.text and "cdn" not in docs.text.lower()
    paths = (await api.call("GET", "/openapi.json", key=None)).json()["paths"]
    assert set(paths) == {
        "/v1/notifications",
        "/v1/notifications/{notification_id}",
        "/v1/notifications/{notification_id}/events",
        "/v1/notifications/{notification_id}/cancel",
        "/v1/audit/email",
        "/v1/audit/slack",
        "/v1/entities/{entity_id}",
        "/v1/broadcasts",
        "/v1/broadcasts/{broadcast_id}",
        "/v1/broadcasts/{broadcast_id}/cancel",
        "/v1/broadcasts/{broadcast_id}/notifications",
        "/v1/suppressions",
        "/v1/suppressions/{address}",
        "/v1/inbound/{provider}",
        "/v1/webhooks",
        "/v1/unsubscribe/{token}",
        "/preferences/{token}",
        "/v1/entities/{entity_id}/preferences",
        "/v1/webhooks/{webhook_id}",
        "/v1/webhooks/{webhook_id}/deliveries",
        "/v1/topics",
        "/v1/topics/{topic}",
        "/v1/topics/{topic}/members/{entity_id}",
        "/healthz",
        "/readyz",
    }
    assert (await api.call("GET", "/readyz", key=None)).json() == {"status": "ready"}


async def test_openapi_describes_a_notification_its_events_and_the_audit(api: Api) -> None:
    spec = (await api.call("GET", "/openapi.json", key=None)).json()
    schemas = spec["components"]["schemas"]

    def answer(path: str, method: str = "get", status: str = "200") -> dict[str, Any]:
        schema: dict[str, Any] = spec["paths"][path][method]["responses"][status]["content"]["application/json"][
            "schema"
        ]
        return schema

    def fields(name: str) -> set[str]:
        return set(schemas[name]["properties"])

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    one = "/v1/notifications/{notification_id}"
    assert answer(one) == answer(f"{one}/cancel", "post") == ref(NotificationView)
    assert fields("NotificationView") == set(NotificationView.model_fields) >= {"id", "status", "channels", "outcome"}
    assert fields("ChannelView") >= {"address", "outcome", "attempts", "last_error", "next_attempt_at"}
    assert answer(f"{one}/events")["items"] == ref(EventRecord)
    assert fields("EventRecord") == {"internal_id", "stream", "record_id", "type", "timestamp_utc", "tags", "payload"}
    for audit in ("/v1/audit/email", "/v1/audit/slack"):
        assert answer(audit)["items"] == ref(DeliveryAuditEntry)
    assert fields("DeliveryAuditEntry") == set(DeliveryAuditEntry.model_fields) >= {"address", "outcome", "reason"}
    assert answer("/v1/notifications", "post", "202") == ref(Accepted) and fields("Accepted") == {"id", "status"}
    assert fields("NotificationPage") == {"items", "next_cursor"}
    assert answer("/v1/entities/{entity_id}") == ref(DirectoryEntry)
    entity = schemas["NotificationIn"]["properties"]["entity"]  # an id, or the entity itself
    assert entity["anyOf"] == [{"type": "string"}, ref(DirectoryEntry)] and "DirectoryEntry" in schemas
    refused = spec["paths"]["/v1/notifications"]["get"]["responses"]["401"]["content"]["application/problem+json"]
    assert set(refused["schema"]["properties"]) == {"type", "title", "status", "detail"}


async def test_readyz_is_503_without_temporal(store: StreamStore, settings: Settings) -> None:
    away = settings.model_copy(update={"temporal_address": f"127.0.0.1:{free_port()}"})
    temporal = await connect(away, lazy=True)
    async with (
        serving(create_app(store, temporal, away), "127.0.0.1", 0) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        ready = await http.get("/readyz")
        assert ready.status_code == 503 and ready.headers["content-type"] == "application/problem+json"
        assert ready.json()["detail"] == "Temporal does not answer: the server's log says why"
        assert away.temporal_address not in ready.text  # nor where: that is in the log
        assert (await http.get("/healthz")).status_code == 200


async def test_metrics_count_requests_by_route_and_the_notifications_requested(api: Api) -> None:
    def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    before = samples((await api.call("GET", "/metrics", key=None)).text)
    sent = await api.call("POST", "/v1/notifications", json={"entity": "user-1", "subject": "Counted", "body": "B"})
    assert sent.status_code == 202
    assert (await api.call("GET", f"/v1/notifications/{sent.json()['id']}")).status_code == 200
    assert (await api.call("GET", "/v1/notifications/no-such-id")).status_code == 404
    after = samples((await api.call("GET", "/metrics", key=None)).text)

    def moved(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0) - before.get(key, 0)

    assert moved("notify_api_notifications_requested_total") == 1
    assert moved("notify_api_requests_total", route="/v1/notifications", method="POST", status="202") == 1
    by_id = {"route": "/v1/notifications/{notification_id}", "method": "GET"}
    assert moved("notify_api_requests_total", **by_id, status="200") == 1
    assert moved("notify_api_requests_total", **by_id, status="404") == 1  # ids do not each make a series
    assert moved("notify_api_request_seconds_count", route="/v1/notifications") == 1
