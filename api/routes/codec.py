"""The codec server the Temporal Web UI asks to show a saga's encrypted payloads (`codec`) to an operator:
`POST /codec/decode` (a key with the `read` scope) and `POST /codec/encode` (`send`), in the codec server's JSON
(`{"payloads": [...]}`, as Temporal's proto JSON). The key comes as `Authorization: Bearer KEY`, or as the web
page's cookie (the Web UI on the same host sends it with `includeCredentials`); CORS lets the UI's origins in
(`NOTIFY_CODEC_CORS_ORIGINS`), and only them, and only here."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Cookie, Request
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from starlette.responses import Response
from temporalio.api.common.v1 import Payloads

from api.deps import AppParts, Bearer, KeyRefused, authorized
from api.keys import Scope
from api.problems import problem
from api.routes.page import COOKIE

ALLOWED_HEADERS = "Content-Type, X-Namespace, Authorization"
ASKED = "Authorization: Bearer KEY, or the web page's sign-in"
"""How a request gives a key here."""

router = APIRouter(prefix="/codec", include_in_schema=False)
PageKey = Annotated[str | None, Cookie(alias=COOKIE)]


def _cors(request: Request, app: AppParts) -> dict[str, str]:
    origin = request.headers.get("origin")
    if origin not in app.settings.codec_cors_origins:
        return {"Vary": "Origin"}
    return {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true", "Vary": "Origin"}


@router.options("/decode")
@router.options("/encode")
async def preflight(request: Request, app: AppParts) -> Response:
    headers = _cors(request, app)
    if "Access-Control-Allow-Origin" in headers:
        headers |= {
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": "600",
        }
    return Response(status_code=204, headers=headers)


@router.post("/decode")
async def decode(request: Request, app: AppParts, credentials: Bearer, cookie: PageKey = None) -> Response:
    return await _answer(request, app, credentials.credentials if credentials else cookie, Scope.READ, decode=True)


@router.post("/encode")
async def encode(request: Request, app: AppParts, credentials: Bearer, cookie: PageKey = None) -> Response:
    return await _answer(request, app, credentials.credentials if credentials else cookie, Scope.SEND, decode=False)


async def _answer(request: Request, app: AppParts, key: str | None, scope: Scope, decode: bool) -> Response:
    cors = _cors(request, app)
    try:
        await authorized(app.keys, key, scope, asked=ASKED)
    except KeyRefused as refused:
        return _problem(refused.status, refused.detail, cors)
    if app.cipher is None:
        return _problem(404, "the codec is off: NOTIFY_PAYLOAD_KEYS is not set", cors)
    try:
        payloads = json_format.Parse(await request.body(), Payloads(), ignore_unknown_fields=True)
        coded = await (app.cipher.decode if decode else app.cipher.encode)(list(payloads.payloads))
    except (json_format.ParseError, DecodeError, ValueError) as error:
        return _problem(422, " ".join(str(error).split()), cors)
    body = json_format.MessageToJson(Payloads(payloads=coded))
    return Response(body, media_type="application/json", headers=cors)


def _problem(status: int, detail: str, headers: dict[str, str]) -> Response:
    response = problem(status, detail)
    response.headers.update(headers)
    return response
