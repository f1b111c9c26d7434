"""The suppression list: email addresses that are not sent to. Read it (`read`), suppress an address or lift its
suppression (`admin`, as the directory)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field, ValidationError

from api.deps import AppParts, KeyFirst, needs
from api.keys import Scope
from api.problems import Problem, problems
from domain import EmailSuppression, Reason, SuppressionSource, validation_message
from streams import StreamName
from streams.suppressions import change_suppression, suppression, suppressions

router = APIRouter(prefix="/v1/suppressions", route_class=KeyFirst, tags=["suppressions"], responses=problems(401, 403))


class SuppressionIn(BaseModel):
    reason: Reason = Field(default="suppressed by an operator", min_length=1)
    """Why: shown with every notification whose email it stops."""


class LiftIn(BaseModel):
    reason: Reason = Field(default="lifted by an operator", min_length=1)


@router.get("", dependencies=[needs(Scope.READ)], summary="Every address suppressed now")
async def list_suppressions(app: AppParts) -> list[EmailSuppression]:
    return await suppressions(app.store.reader(StreamName.EMAIL_EVENT))


@router.get("/{address}", dependencies=[needs(Scope.READ)], responses=problems(404), summary="An address's suppression")
async def get_suppression(address: str, app: AppParts) -> EmailSuppression:
    found = await suppression(app.store.reader(StreamName.EMAIL_EVENT), address)
    if found is None:
        raise Problem(404, f"{address} is not suppressed")
    return found


@router.put(
    "/{address}", dependencies=[needs(Scope.ADMIN)], responses=problems(409, 422), summary="Suppress an address"
)
async def suppress(address: str, app: AppParts, body: SuppressionIn | None = None) -> EmailSuppression:
    """No email is sent to the address until its suppression is lifted: each notification's email channel says
    `suppressed`, and its fallback channel is used. An address suppressed already keeps its reason and time."""
    made = await _changed(app, address, True, (body or SuppressionIn()).reason)
    held = made or await suppression(app.store.reader(StreamName.EMAIL_EVENT), address)
    if held is None:  # lifted by another request between the two
        raise Problem(409, f"{address}: its suppression was lifted meanwhile; ask again")
    return held


@router.delete(
    "/{address}", dependencies=[needs(Scope.ADMIN)], responses=problems(404, 422), summary="Lift a suppression"
)
async def lift(address: str, app: AppParts, body: LiftIn | None = None) -> EmailSuppression:
    """The record that lifted it; `404` when the address was not suppressed."""
    lifted = await _changed(app, address, False, (body or LiftIn()).reason)
    if lifted is None:
        raise Problem(404, f"{address} is not suppressed")
    return lifted


async def _changed(app: AppParts, address: str, suppressed: bool, reason: str) -> EmailSuppression | None:
    try:
        return await change_suppression(app.store, address, suppressed, reason, SuppressionSource.OPERATOR)
    except ValidationError as error:
        raise Problem(422, validation_message(error)) from error
