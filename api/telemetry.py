"""The API server's own Prometheus metrics, at `/metrics`: requests by route, method and status, how long they took,
and notifications requested. The worker serves the saga's and the SDK's on its own port (`NOTIFY_METRICS_PORT`)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.limits import METHODS


class Telemetry:
    """One app's metrics, in a registry of their own (so that several apps in a process do not mix them)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "notify_api_requests",
            "HTTP requests answered, by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "notify_api_request_seconds", "Time to answer an HTTP request, by route", ["route"], registry=self.registry
        )
        self.requested = Counter(
            "notify_api_notifications_requested", "Notifications requested over HTTP", registry=self.registry
        )


class Measured:
    """ASGI middleware that counts and times every HTTP request by its route's path template."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            route = _route(scope)
            method = scope["method"] if scope["method"] in METHODS else "other"  # not one series each
            self.telemetry.requests.labels(route, method, str(status)).inc()
            self.telemetry.seconds.labels(route).observe(time.perf_counter() - started)


def _route(scope: Scope) -> str:
    """The path template of the route that took the request (`/v1/notifications/{notification_id}`, as the router
    marks it in the scope), so that ids do not each make a series; `unmatched` for none."""
    return str(getattr(scope.get("route"), "path", "unmatched"))
