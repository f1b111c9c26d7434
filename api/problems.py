"""Errors as `application/problem+json` (RFC 9457), with a one-line `detail`."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel


class JsonAnswer(JSONResponse):
    """JSON, ending with a newline, as a terminal expects of what `curl` prints."""

    def render(self, content: Any) -> bytes:
        return super().render(content) + b"\n"


class Problem(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    408: "Request timeout",
    409: "Conflict",
    413: "Content too large",
    422: "Unprocessable content",
    500: "Internal server error",
    501: "Not implemented",
    502: "Bad gateway",
    503: "Service unavailable",
}


class ProblemDetails(BaseModel):
    """An error (RFC 9457): its status, its title, and what is wrong in one line."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The problem as a response (`headers`: more of them, say `Connection: close`)."""
    return JsonAnswer(
        ProblemDetails(title=TITLES.get(status, "Error"), status=status, detail=one_line_of(detail)).model_dump(),
        status_code=status,
        media_type="application/problem+json",
        headers=({"WWW-Authenticate": "Bearer"} if status == 401 else {}) | (headers or {}),
    )


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The errors a route answers with, for its OpenAPI description."""
    schema = ProblemDetails.model_json_schema()
    return {
        status: {"description": TITLES[status], "content": {"application/problem+json": {"schema": schema}}}
        for status in statuses
    }


def one_line_of(text: str) -> str:
    return " ".join(text.split())
