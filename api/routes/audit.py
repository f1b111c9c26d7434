"""The audit: what was sent to an email address, or posted to a Slack channel, each message with its files."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import KeyFirst, Notifications, needs
from api.keys import Scope
from api.problems import problems
from domain import DeliveryAuditEntry

router = APIRouter(
    prefix="/v1/audit",
    route_class=KeyFirst,
    tags=["audit"],
    dependencies=[needs(Scope.READ)],
    responses=problems(401, 403, 422),
)


@router.get("/email", summary="What was sent to an address")
async def audit_email(address: str, client: Notifications) -> list[DeliveryAuditEntry]:
    return await client.audit_email(address)


@router.get("/slack", summary="What was posted to a channel")
async def audit_slack(channel: str, client: Notifications) -> list[DeliveryAuditEntry]:
    """`CHANNEL`, or `WORKSPACE/CHANNEL`."""
    return await client.audit_slack(channel)
