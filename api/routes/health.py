"""Whether the API can serve: the process answers (`/healthz`), the streams and Temporal answer (`/readyz`: which
does not, not why, to a request without a key; why is in the log); and its own Prometheus metrics (`/metrics`)."""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from api.deps import AppParts
from api.problems import Problem, problems
from settings import one_line
from streams import StreamName

router = APIRouter(tags=["health"])
log = logging.getLogger("notify.api")


class Health(BaseModel):
    status: Literal["ok", "ready"]


@router.get("/healthz", summary="The process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", responses=problems(503), summary="The streams and Temporal answer")
async def readyz(app: AppParts) -> Health:
    try:
        await app.store.reader(StreamName.CLIENT_OPERATION).newest()
    except Exception as error:
        log.warning("readyz: the streams cannot be read: %s", one_line(error))
        raise Problem(503, "the streams cannot be read: the server's log says why") from error
    try:
        await app.temporal.service_client.check_health()
    except Exception as error:
        log.warning("readyz: Temporal does not answer at %s: %s", app.settings.temporal_address, one_line(error))
        raise Problem(503, "Temporal does not answer: the server's log says why") from error
    return Health(status="ready")


@router.get("/metrics", include_in_schema=False)
async def metrics(app: AppParts) -> Response:
    return Response(generate_latest(app.telemetry.registry), media_type=CONTENT_TYPE_LATEST)
