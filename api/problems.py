"""Errors as `application/problem+json` (RFC 9457), with a one-line `detail`."""

from __future__ import annotations

from fastapi.responses import JSONResponse


class Problem(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Content too large",
    422: "Unprocessable content",
    503: "Service unavailable",
}


def problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": TITLES.get(status, "Error"), "status": status, "detail": one_line_of(detail)},
        status_code=status,
        media_type="application/problem+json",
        headers={"WWW-Authenticate": "Bearer"} if status == 401 else None,
    )


def one_line_of(text: str) -> str:
    return " ".join(text.split())
