"""The codec server the Temporal Web UI asks to show a saga's encrypted payloads (`codec`) to an operator:
`POST /codec/decode` (a key with the `read` scope) and `POST /codec/encode` (`send`), in the codec server's JSON
(`{"payloads": [...]}`, as Temporal's proto JSON). The key comes as `Authorization: Bearer KEY`, or as the web
page's cookie (the Web UI on the same host sends it with `includeCredentials`); CORS lets the UI's origins in
(`NOTIFY_CODEC_CORS_ORIGINS`), and only them, and only here."""

from __future__ import annotations

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from starlette.requests import Request
from starlette.responses import Response
from temporalio.api.common.v1 import Payloads

from api.keys import Scope
from api.page import COOKIE
from api.problems import problem
from codec import PayloadCipher
from settings import Settings

ALLOWED_HEADERS = "Content-Type, X-Namespace, Authorization"


class CodecServer:
    def __init__(self, settings: Settings) -> None:
        keys = settings.payload_key_list
        self._cipher = PayloadCipher(keys) if keys else None
        self._origins = frozenset(settings.codec_cors_origins)

    def _cors(self, request: Request) -> dict[str, str]:
        origin = request.headers.get("origin")
        if origin not in self._origins:
            return {"Vary": "Origin"}
        return {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true", "Vary": "Origin"}

    async def preflight(self, request: Request) -> Response:
        headers = self._cors(request)
        if "Access-Control-Allow-Origin" in headers:
            headers |= {
                "Access-Control-Allow-Methods": "POST, OPTIONS",
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": "600",
            }
        return Response(status_code=204, headers=headers)

    async def decode(self, request: Request) -> Response:
        return await self._answer(request, Scope.READ, decode=True)

    async def encode(self, request: Request) -> Response:
        return await self._answer(request, Scope.SEND, decode=False)

    async def _answer(self, request: Request, scope: Scope, decode: bool) -> Response:
        cors = self._cors(request)
        bearer = request.headers.get("authorization", "")
        key = bearer.removeprefix("Bearer ").strip() if bearer.startswith("Bearer ") else request.cookies.get(COOKIE)
        issued = None if not key else await request.app.state.keys.authenticate(key)
        if issued is None:
            return _problem(401, "an API key is needed: Authorization: Bearer KEY, or the web page's sign-in", cors)
        if scope not in issued.scopes:
            return _problem(403, f"the API key {issued.name!r} does not hold the {scope.value!r} scope", cors)
        if self._cipher is None:
            return _problem(404, "the codec is off: NOTIFY_PAYLOAD_KEYS is not set", cors)
        try:
            payloads = json_format.Parse(await request.body(), Payloads(), ignore_unknown_fields=True)
            coded = await (self._cipher.decode if decode else self._cipher.encode)(list(payloads.payloads))
        except (json_format.ParseError, DecodeError, ValueError) as error:
            return _problem(422, " ".join(str(error).split()), cors)
        body = json_format.MessageToJson(Payloads(payloads=coded))
        return Response(body, media_type="application/json", headers=cors)


def _problem(status: int, detail: str, headers: dict[str, str]) -> Response:
    response = problem(status, detail)
    response.headers.update(headers)
    return response
