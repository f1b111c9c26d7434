"""Bounces and complaints from email providers: `POST /v1/inbound/{provider}` takes a provider's webhook request,
authenticated the way that provider offers (`inbound`: no API key), and records what it reports with the email its
Message-ID names, suppressing each address that bounced for good or complained (`streams.suppressions`). A provider
whose setting is not configured is not there (`404`)."""

from __future__ import annotations

import logging

import httpx
from fastapi import APIRouter, Request
from pydantic import BaseModel, SecretStr, ValidationError

from api.deps import AppParts
from api.problems import Problem, problems
from domain import SuppressionSource, validation_message
from inbound import READERS, InboundRefused, SubscriptionConfirmation, read_ses
from settings import Settings
from streams.suppressions import SignatureReplayed, record_feedback

router = APIRouter(prefix="/v1/inbound", tags=["inbound"], responses=problems(400, 401, 404, 500, 502))
log = logging.getLogger("notify.api")

CONFIRM_TIMEOUT_SECONDS = 10
"""How long the visit that confirms an SNS subscription may take."""


class InboundRecorded(BaseModel):
    recorded: int
    """Bounces and complaints in the request (deliveries and other events are not recorded)."""
    ignored: int = 0
    """Bounces and complaints of addresses the service would never send to (not an address by its rules)."""
    matched: list[str]
    """The notifications they were matched to, by the Message-ID of their email."""
    suppressed: list[str]
    """The addresses suppressed by this request (not those suppressed already)."""
    subscription_confirmed: bool = False
    """SNS: the subscription was confirmed (its SubscribeURL visited)."""


def _secret(settings: Settings, provider: str) -> SecretStr | None:
    return {
        "ses": settings.ses_webhook_token,
        "sendgrid": settings.sendgrid_verification_key,
        "postmark": settings.postmark_webhook_credentials,
        "mailgun": settings.mailgun_signing_key,
    }.get(provider)


@router.post("/{provider}", summary="A provider's bounces and complaints")
async def inbound(provider: str, request: Request, app: AppParts) -> InboundRecorded:
    """`provider`: `ses` (SNS notifications of SES bounces and complaints, with `?token=`), `sendgrid` (the signed
    event webhook), `postmark` (bounce and spam-complaint webhooks, with basic auth), `mailgun` (signed webhooks)."""
    secret = _secret(app.settings, provider)
    if secret is None:
        raise Problem(404, f"no inbound webhook for {provider!r} is configured")
    body, headers, query = await request.body(), dict(request.headers), dict(request.query_params)
    try:
        if provider == "ses":
            read = read_ses(
                body, headers, query, secret.get_secret_value(), allow_any_host=app.settings.webhook_allow_private
            )
        else:
            read = READERS[provider](body, headers, query, secret.get_secret_value())
    except InboundRefused as refused:
        log.warning("inbound %s request refused: %s", provider, refused)
        raise Problem(refused.status, str(refused)) from None
    if isinstance(read, SubscriptionConfirmation):
        await _confirm(read)
        return InboundRecorded(recorded=0, matched=[], suppressed=[], subscription_confirmed=True)
    matched, suppressed, ignored = [], [], 0
    for feedback in read:
        try:
            recorded = await record_feedback(
                app.store,
                provider=SuppressionSource(provider),
                complaint=feedback.kind == "complaint",
                address=feedback.address,
                permanent=feedback.permanent,
                message_id=feedback.message_id,
                detail=feedback.detail,
                signed_once=feedback.signed_once,
            )
        except SignatureReplayed as replayed:
            log.warning("inbound %s request refused: %s", provider, replayed)
            raise Problem(401, str(replayed)) from None
        except ValidationError as error:  # an address the service would never send to: nothing to record
            log.warning("inbound %s %s ignored: %s", provider, feedback.kind, validation_message(error))
            ignored += 1
            continue
        if recorded.notification_id is not None:
            matched.append(recorded.notification_id)
        if recorded.suppressed:
            suppressed.append(feedback.address.lower())
            log.info("%s suppressed: %s %s (%s)", feedback.address, provider, feedback.kind, feedback.detail)
    return InboundRecorded(recorded=len(read) - ignored, matched=matched, suppressed=suppressed, ignored=ignored)


async def _confirm(subscription: SubscriptionConfirmation) -> None:
    """Visit the SubscribeURL, as SNS asks: until then it sends nothing else."""
    try:
        async with httpx.AsyncClient(timeout=CONFIRM_TIMEOUT_SECONDS) as http:
            answer = await http.get(subscription.subscribe_url)
    except httpx.HTTPError as error:
        raise Problem(502, f"the SNS subscription could not be confirmed: {error.__class__.__name__}") from None
    if answer.status_code != 200:
        raise Problem(502, f"the SNS subscription could not be confirmed: SNS answered {answer.status_code}")
    log.info("SNS subscription to %s confirmed", subscription.topic_arn)
