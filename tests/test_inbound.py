"""The inbound readers against requests made as each provider makes them: SendGrid's events signed with a P-256 key
made here (its public half given as SendGrid shows it), Mailgun's signed with a real HMAC, Postmark's with basic auth,
SES's through SNS with the URL's token. Payloads follow the providers' documented examples, with our Message-IDs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from inbound import (
    DETAIL_CHARS,
    READERS,
    Feedback,
    InboundRefused,
    SubscriptionConfirmation,
    read_mailgun,
    read_postmark,
    read_sendgrid,
    read_ses,
)

MESSAGE_ID = "<notification-3f9a1c2e-7.email-3f9a1c2e-12@example.com>"
OTHER_MESSAGE_ID = "<notification-3f9a1c2e-8.email-3f9a1c2e-13@example.com>"


def refused(status: int, read: Any, *args: Any, secret: str, **kwargs: Any) -> str:
    """The message of the refusal `read` gives, checked for its status and for not holding the secret."""
    with pytest.raises(InboundRefused) as refusal:
        read(*args, secret, **kwargs)
    message = str(refusal.value)
    assert (refusal.value.status, "\n" in message, bool(secret) and secret in message) == (status, False, False)
    return message


# SendGrid


def sendgrid_key(key: ec.EllipticCurvePrivateKey) -> str:
    """The public half of `key` as SendGrid shows its verification key: base64 of the DER SubjectPublicKeyInfo."""
    return base64.b64encode(key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).decode()


SIGNING = ec.generate_private_key(ec.SECP256R1())
VERIFICATION_KEY = sendgrid_key(SIGNING)


def sendgrid_signed(body: bytes, key: ec.EllipticCurvePrivateKey = SIGNING, at: float | None = None) -> dict[str, str]:
    """The headers SendGrid sends with `body`: an ECDSA P-256/SHA-256 signature of the timestamp and the body."""
    timestamp = str(int(time.time() if at is None else at))
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        "Content-Type": "application/json",
    }


def sendgrid_event(event: str, **fields: Any) -> dict[str, Any]:
    return {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "smtp-id": MESSAGE_ID,
        "event": event,
        "category": "cat facts",
        "sg_event_id": "sg_event_id",
        "sg_message_id": "sg_message_id",
        **fields,
    }


SENDGRID_BATCH = json.dumps(
    [
        sendgrid_event("processed"),
        sendgrid_event("delivered", response="250 OK"),
        sendgrid_event("bounce", reason="500 unknown recipient", status="5.0.0", type="bounce"),
        sendgrid_event(
            "bounce",
            email="blocked@test.com",
            reason="550 5.7.1 Service unavailable; client host blocked using Spamhaus",
            status="5.7.1",
            type="blocked",
            bounce_classification="Reputation",
        ),
        sendgrid_event("dropped", email="gone@test.com", reason="Bounced Address", status="5.0.0"),
        sendgrid_event("dropped", email="content@test.com", reason="Spam Content"),
        sendgrid_event("spamreport", email="annoyed@test.com", **{"smtp-id": OTHER_MESSAGE_ID}),
        sendgrid_event("open", useragent="Mozilla/4.0", ip="255.255.255.255"),
    ]
).encode()


def test_sendgrid_bounces_drops_and_spam_reports() -> None:
    feedback = read_sendgrid(SENDGRID_BATCH, sendgrid_signed(SENDGRID_BATCH), {}, VERIFICATION_KEY)
    at = datetime.fromtimestamp(1513299569, UTC)
    assert [(f.kind, f.address, f.permanent, f.message_id, f.detail) for f in feedback] == [
        ("bounce", "example@test.com", True, MESSAGE_ID, "500 unknown recipient"),
        (
            "bounce",
            "blocked@test.com",
            False,
            MESSAGE_ID,
            "550 5.7.1 Service unavailable; client host blocked using Spamhaus",
        ),
        ("bounce", "gone@test.com", True, MESSAGE_ID, "dropped: Bounced Address"),
        ("bounce", "content@test.com", False, MESSAGE_ID, "dropped: Spam Content"),
        ("complaint", "annoyed@test.com", True, OTHER_MESSAGE_ID, "spam report"),
    ]
    assert {(f.provider, f.occurred_at) for f in feedback} == {("sendgrid", at)}


def test_sendgrid_headers_are_found_in_any_case() -> None:
    headers = {name.lower(): value for name, value in sendgrid_signed(SENDGRID_BATCH).items()}
    assert len(read_sendgrid(SENDGRID_BATCH, headers, {}, VERIFICATION_KEY)) == 5


def test_sendgrid_refuses_a_forged_signature() -> None:
    forged = sendgrid_signed(b"[]")  # a real signature, of another body
    forged["X-Twilio-Email-Event-Webhook-Timestamp"] = sendgrid_signed(SENDGRID_BATCH)[
        "X-Twilio-Email-Event-Webhook-Timestamp"
    ]
    assert "does not match" in refused(401, read_sendgrid, SENDGRID_BATCH, forged, {}, secret=VERIFICATION_KEY)
    garbage = {**forged, "X-Twilio-Email-Event-Webhook-Signature": "not base64!"}
    refused(401, read_sendgrid, SENDGRID_BATCH, garbage, {}, secret=VERIFICATION_KEY)


def test_sendgrid_refuses_an_altered_body() -> None:
    headers = sendgrid_signed(SENDGRID_BATCH)
    altered = SENDGRID_BATCH.replace(b"example@test.com", b"someone@test.com")
    refused(401, read_sendgrid, altered, headers, {}, secret=VERIFICATION_KEY)


def test_sendgrid_refuses_a_signature_by_another_key() -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    headers = sendgrid_signed(SENDGRID_BATCH, key=other)
    refused(401, read_sendgrid, SENDGRID_BATCH, headers, {}, secret=VERIFICATION_KEY)
    # and the same request is taken with the key that did sign it
    assert len(read_sendgrid(SENDGRID_BATCH, headers, {}, sendgrid_key(other))) == 5


@pytest.mark.parametrize(
    "missing", ["X-Twilio-Email-Event-Webhook-Signature", "X-Twilio-Email-Event-Webhook-Timestamp"]
)
def test_sendgrid_refuses_a_request_without_its_headers(missing: str) -> None:
    headers = {name: value for name, value in sendgrid_signed(SENDGRID_BATCH).items() if name != missing}
    assert "not signed" in refused(401, read_sendgrid, SENDGRID_BATCH, headers, {}, secret=VERIFICATION_KEY)


@pytest.mark.parametrize("offset", [-11 * 60, 11 * 60], ids=["stale", "ahead"])
def test_sendgrid_refuses_a_timestamp_out_of_freshness(offset: int) -> None:
    headers = sendgrid_signed(SENDGRID_BATCH, at=time.time() + offset)
    assert "minutes from now" in refused(401, read_sendgrid, SENDGRID_BATCH, headers, {}, secret=VERIFICATION_KEY)
    # nine minutes is within it
    assert read_sendgrid(SENDGRID_BATCH, sendgrid_signed(SENDGRID_BATCH, at=time.time() - 9 * 60), {}, VERIFICATION_KEY)


@pytest.mark.parametrize("body", [b"{not json", b'{"event": "bounce"}', b'[{"email": "a@test.com"}]'])
def test_sendgrid_refuses_a_body_that_is_not_an_event_batch(body: bytes) -> None:
    assert "not a SendGrid webhook body" in refused(
        400, read_sendgrid, body, sendgrid_signed(body), {}, secret=VERIFICATION_KEY
    )


def test_sendgrid_refuses_an_unusable_verification_key() -> None:
    message = refused(500, read_sendgrid, SENDGRID_BATCH, sendgrid_signed(SENDGRID_BATCH), {}, secret="c2VjcmV0")
    assert "NOTIFY_SENDGRID_VERIFICATION_KEY" in message
    refused(500, read_sendgrid, SENDGRID_BATCH, sendgrid_signed(SENDGRID_BATCH), {}, secret="")


# Mailgun

SIGNING_KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"


def mailgun_body(
    event_data: dict[str, Any], key: str = SIGNING_KEY, at: float | None = None, token: str | None = None
) -> bytes:
    """A Mailgun webhook body: `event_data` and the signature, an HMAC-SHA256 of the timestamp and token."""
    timestamp = str(int(time.time() if at is None else at))
    token = token or "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0"
    digest = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    signature = {"token": token, "timestamp": timestamp, "signature": digest}
    return json.dumps({"signature": signature, "event-data": event_data}).encode()


def mailgun_failed(severity: str, code: int, message: str) -> dict[str, Any]:
    return {
        "id": "G9Bn5sl1TC6nu79C8C0bwg",
        "timestamp": 1521233195.375624,
        "log-level": "error" if severity == "permanent" else "warn",
        "event": "failed",
        "severity": severity,
        "reason": "bounce" if severity == "permanent" else "generic",
        "delivery-status": {
            "attempt-no": 1,
            "message": message,
            "code": code,
            "description": "",
            "session-seconds": 0.4331989288330078,
        },
        "flags": {"is-routed": False, "is-authenticated": True, "is-system-test": False, "is-test-mode": False},
        "envelope": {"sender": "bob@example.com", "transport": "smtp", "targets": "alice@example.com"},
        "message": {
            "headers": {
                "to": "Alice <alice@example.com>",
                "message-id": MESSAGE_ID.strip("<>"),  # Mailgun gives it without the angle brackets
                "from": "Bob <bob@example.com>",
                "subject": "Test permanent_fail webhook",
            },
            "attachments": [],
            "size": 111,
        },
        "recipient": "alice@example.com",
        "recipient-domain": "example.com",
        "storage": {"url": "https://se.api.mailgun.net/v3/domains/example.com/messages/message_key", "key": "k"},
        "campaigns": [],
        "tags": ["my_tag_1", "my_tag_2"],
        "user-variables": {"my_var_1": "Mailgun Variable #1", "my-var-2": "awesome"},
    }


MAILGUN_COMPLAINED = {
    "id": "-Agny091SquKnsrW2NEKUA",
    "timestamp": 1521233123.501324,
    "log-level": "warn",
    "event": "complained",
    "envelope": {"sending-ip": "173.193.210.33"},
    "flags": {"is-test-mode": False},
    "message": {
        "headers": {
            "to": "Alice <alice@example.com>",
            "message-id": MESSAGE_ID.strip("<>"),
            "from": "Bob <bob@example.com>",
            "subject": "Test complained webhook",
        },
        "attachments": [],
        "size": 111,
    },
    "recipient": "alice@example.com",
    "campaigns": [],
    "tags": ["my_tag_1", "my_tag_2"],
    "user-variables": {},
}
MAILGUN_PERMANENT = mailgun_failed("permanent", 550, "5.1.1 The email account that you tried to reach does not exist.")


def test_mailgun_permanent_failure() -> None:
    [feedback] = read_mailgun(mailgun_body(MAILGUN_PERMANENT, token="t-1"), {}, {}, SIGNING_KEY)
    assert feedback == Feedback(
        provider="mailgun",
        kind="bounce",
        address="alice@example.com",
        permanent=True,
        message_id=MESSAGE_ID,
        detail="550 5.1.1 The email account that you tried to reach does not exist.",
        occurred_at=datetime(2018, 3, 16, 20, 46, 35, 375624, UTC),
        signed_once="t-1",  # its signature does not cover the event: the token is taken once
    )


def test_mailgun_temporary_failure_is_soft() -> None:
    event = mailgun_failed("temporary", 452, "4.2.2 The email account that you tried to reach is over quota.")
    [feedback] = read_mailgun(mailgun_body(event), {}, {}, SIGNING_KEY)
    assert (feedback.kind, feedback.permanent, feedback.detail) == (
        "bounce",
        False,
        "452 4.2.2 The email account that you tried to reach is over quota.",
    )


def test_mailgun_complaint() -> None:
    [feedback] = read_mailgun(mailgun_body(MAILGUN_COMPLAINED), {}, {}, SIGNING_KEY)
    assert (feedback.kind, feedback.address, feedback.permanent, feedback.message_id) == (
        "complaint",
        "alice@example.com",
        True,
        MESSAGE_ID,
    )


def test_mailgun_takes_a_timestamp_given_as_a_number() -> None:
    body = json.loads(mailgun_body(MAILGUN_COMPLAINED))
    body["signature"]["timestamp"] = int(body["signature"]["timestamp"])
    assert len(read_mailgun(json.dumps(body).encode(), {}, {}, SIGNING_KEY)) == 1


def test_mailgun_ignores_other_events() -> None:
    delivered = {**MAILGUN_COMPLAINED, "event": "delivered"}
    assert read_mailgun(mailgun_body(delivered), {}, {}, SIGNING_KEY) == []


def test_mailgun_refuses_a_forged_signature() -> None:
    body = json.loads(mailgun_body(MAILGUN_PERMANENT))
    body["signature"]["signature"] = hmac.new(b"guess", b"anything", hashlib.sha256).hexdigest()
    forged = json.dumps(body).encode()
    assert "does not match" in refused(401, read_mailgun, forged, {}, {}, secret=SIGNING_KEY)


def test_mailgun_refuses_an_altered_signature_block() -> None:
    body = json.loads(mailgun_body(MAILGUN_PERMANENT))
    body["signature"]["token"] = "b" + body["signature"]["token"][1:]
    refused(401, read_mailgun, json.dumps(body).encode(), {}, {}, secret=SIGNING_KEY)


def test_mailgun_refuses_another_key() -> None:
    body = mailgun_body(MAILGUN_PERMANENT, key="key-someone-else")
    refused(401, read_mailgun, body, {}, {}, secret=SIGNING_KEY)


@pytest.mark.parametrize("signature", [None, {"token": "t", "timestamp": "1"}, "signed"])
def test_mailgun_refuses_a_body_without_a_signature(signature: object) -> None:
    body = json.dumps({"signature": signature, "event-data": MAILGUN_PERMANENT}).encode()
    assert "not signed" in refused(401, read_mailgun, body, {}, {}, secret=SIGNING_KEY)


def test_mailgun_refuses_a_stale_timestamp() -> None:
    body = mailgun_body(MAILGUN_PERMANENT, at=time.time() - 3600)
    assert "minutes from now" in refused(401, read_mailgun, body, {}, {}, secret=SIGNING_KEY)


@pytest.mark.parametrize(
    "event_data", [None, {"recipient": "alice@example.com"}, {**MAILGUN_PERMANENT, "recipient": ""}]
)
def test_mailgun_refuses_event_data_that_is_not_an_event(event_data: object) -> None:
    body = json.loads(mailgun_body(MAILGUN_PERMANENT))
    body["event-data"] = event_data
    message = refused(400, read_mailgun, json.dumps(body).encode(), {}, {}, secret=SIGNING_KEY)
    assert "not a Mailgun webhook body" in message
    assert "not a Mailgun webhook body" in refused(400, read_mailgun, b"[1, 2", {}, {}, secret=SIGNING_KEY)


# Postmark

CREDENTIALS = "notify:correct horse battery staple"


def basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def postmark_record(record_type: str, kind: str, **fields: Any) -> bytes:
    return json.dumps(
        {
            "RecordType": record_type,
            "MessageStream": "outbound",
            "ID": 42,
            "Type": kind,
            "TypeCode": {"HardBounce": 1, "SoftBounce": 4096, "SpamComplaint": 512}.get(kind, 64),
            "Name": {"HardBounce": "Hard bounce", "SoftBounce": "Soft bounce"}.get(kind, "Spam complaint"),
            "Tag": "Test",
            "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
            "Metadata": {"notify-message-id": MESSAGE_ID, "a_key": "a_value"},
            "ServerID": 23,
            "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
            "Details": "Test bounce details",
            "Email": "john@example.com",
            "From": "sender@example.com",
            "BouncedAt": "2019-11-05T16:33:54.9070259Z",
            "DumpAvailable": True,
            "Inactive": True,
            "CanActivate": True,
            "Subject": "Test subject",
            "Content": "<Full dump of bounce>",
            **fields,
        }
    ).encode()


POSTMARK_BOUNCE = postmark_record("Bounce", "HardBounce")


def test_postmark_hard_bounce() -> None:
    [feedback] = read_postmark(POSTMARK_BOUNCE, basic(CREDENTIALS), {}, CREDENTIALS)
    assert feedback == Feedback(
        provider="postmark",
        kind="bounce",
        address="john@example.com",
        permanent=True,
        message_id=MESSAGE_ID,
        detail="Hard bounce: Test bounce details",
        occurred_at=datetime(2019, 11, 5, 16, 33, 54, 907025, UTC),
    )


def test_postmark_soft_bounce_is_soft() -> None:
    body = postmark_record("Bounce", "SoftBounce", Inactive=False, Details="mailbox full")
    [feedback] = read_postmark(body, basic(CREDENTIALS), {}, CREDENTIALS)
    assert (feedback.kind, feedback.permanent, feedback.detail) == ("bounce", False, "Soft bounce: mailbox full")


def test_postmark_spam_complaint() -> None:
    body = postmark_record("SpamComplaint", "SpamComplaint", Details="Test spam complaint details", CanActivate=False)
    [feedback] = read_postmark(body, basic(CREDENTIALS), {}, CREDENTIALS)
    assert (feedback.kind, feedback.permanent, feedback.message_id, feedback.detail) == (
        "complaint",
        True,
        MESSAGE_ID,
        "Spam complaint: Test spam complaint details",
    )


def test_postmark_without_our_metadata_has_no_message_id() -> None:
    body = postmark_record("Bounce", "HardBounce", Metadata={"a_key": "a_value"})
    [feedback] = read_postmark(body, basic(CREDENTIALS), {}, CREDENTIALS)
    assert feedback.message_id is None  # Postmark's own MessageID is not ours


def test_postmark_ignores_what_is_no_failure() -> None:
    auto_reply = postmark_record("Bounce", "AutoResponder")
    delivery = json.dumps(
        {"RecordType": "Delivery", "MessageID": "883953f4", "Recipient": "john@example.com", "Details": "Test"}
    ).encode()
    assert read_postmark(auto_reply, basic(CREDENTIALS), {}, CREDENTIALS) == []
    assert read_postmark(delivery, basic(CREDENTIALS), {}, CREDENTIALS) == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("notify:wrong"),
        basic("intruder:correct horse battery staple"),
        {"Authorization": "Bearer " + CREDENTIALS},
        {"Authorization": "Basic %%%"},
    ],
    ids=["none", "wrong-password", "wrong-user", "not-basic", "not-base64"],
)
def test_postmark_refuses_wrong_credentials(headers: Mapping[str, str]) -> None:
    refused(401, read_postmark, POSTMARK_BOUNCE, headers, {}, secret=CREDENTIALS)


@pytest.mark.parametrize("body", [b"<xml/>", b"[]", b'{"ID": 42}', b'{"RecordType": "Bounce", "Type": "HardBounce"}'])
def test_postmark_refuses_a_body_that_is_not_a_record(body: bytes) -> None:
    assert "not a Postmark webhook body" in refused(
        400, read_postmark, body, basic(CREDENTIALS), {}, secret=CREDENTIALS
    )


# Amazon SES through SNS

TOKEN = "9d6fa0b1c3e24a0f8c7b"

SES_MAIL = {
    "timestamp": "2016-01-27T14:59:38.237Z",
    "source": "john@example.com",
    "sourceArn": "arn:aws:ses:us-east-1:888888888888:identity/example.com",
    "sourceIp": "127.0.3.0",
    "sendingAccountId": "123456789012",
    "callerIdentity": "IAM_user_or_role_name",
    "messageId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000",
    "destination": ["jane@example.com", "mary@example.com", "richard@example.com"],
    "headersTruncated": False,
    "headers": [
        {"name": "From", "value": '"John Doe" <john@example.com>'},
        {"name": "To", "value": '"Jane Doe" <jane@example.com>, "Mary Doe" <mary@example.com>'},
        {"name": "Message-ID", "value": MESSAGE_ID},
        {"name": "Subject", "value": "Hello"},
    ],
    "commonHeaders": {
        "from": ["John Doe <john@example.com>"],
        "date": "Wed, 27 Jan 2016 14:05:45 +0000",
        "to": ["Jane Doe <jane@example.com>, Mary Doe <mary@example.com>"],
        "messageId": MESSAGE_ID,
        "subject": "Hello",
    },
}
SES_BOUNCE = {
    "notificationType": "Bounce",
    "bounce": {
        "bounceType": "Permanent",
        "reportingMTA": "dns; email.example.com",
        "bouncedRecipients": [
            {
                "emailAddress": "jane@example.com",
                "status": "5.1.1",
                "action": "failed",
                "diagnosticCode": "smtp; 550 5.1.1 <jane@example.com>... User",
            }
        ],
        "bounceSubType": "General",
        "timestamp": "2016-01-27T14:59:38.237Z",
        "feedbackId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa068a-000000",
        "remoteMtaIp": "127.0.2.0",
    },
    "mail": SES_MAIL,
}
SES_COMPLAINT = {
    "notificationType": "Complaint",
    "complaint": {
        "userAgent": "AnyCompany Feedback Loop (V0.01)",
        "complainedRecipients": [{"emailAddress": "richard@example.com"}],
        "complaintFeedbackType": "abuse",
        "arrivalDate": "2016-01-27T14:59:38.237Z",
        "timestamp": "2016-01-27T14:59:38.237Z",
        "feedbackId": "000001378603177f-18c07c78-fa81-4a58-9dd1-fedc3cb8f49a-000000",
    },
    "mail": SES_MAIL,
}


def sns(kind: str, message: object, **fields: str) -> bytes:
    """An SNS HTTP(S) message of type `kind` carrying `message` (as JSON text unless it is text already)."""
    return json.dumps(
        {
            "Type": kind,
            "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
            "TopicArn": "arn:aws:sns:us-west-2:123456789012:MyTopic",
            "Message": message if isinstance(message, str) else json.dumps(message),
            "Timestamp": "2012-05-02T00:54:06.655Z",
            "SignatureVersion": "1",
            "Signature": "EXAMPLEw6JRN...",
            "SigningCertURL": "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
            **fields,
        }
    ).encode()


SNS_HEADERS = {"x-amz-sns-message-type": "Notification", "Content-Type": "text/plain; charset=UTF-8"}
QUERY = {"token": TOKEN}


def ses_feedback(body: bytes) -> list[Feedback]:
    """The feedback in an SNS notification sent with the right token."""
    read = read_ses(body, SNS_HEADERS, QUERY, TOKEN)
    assert isinstance(read, list)
    return read


def test_ses_bounce() -> None:
    [feedback] = ses_feedback(sns("Notification", SES_BOUNCE))
    assert feedback == Feedback(
        provider="ses",
        kind="bounce",
        address="jane@example.com",
        permanent=True,
        message_id=MESSAGE_ID,
        detail="Permanent (General): smtp; 550 5.1.1 <jane@example.com>... User",
        occurred_at=datetime(2016, 1, 27, 14, 59, 38, 237000, UTC),
    )


def test_ses_complaint() -> None:
    [feedback] = ses_feedback(sns("Notification", SES_COMPLAINT))
    assert (feedback.kind, feedback.address, feedback.permanent, feedback.message_id, feedback.detail) == (
        "complaint",
        "richard@example.com",
        True,
        MESSAGE_ID,
        "complaint (abuse)",
    )


def test_ses_transient_bounce_of_every_recipient_in_event_publishing_form() -> None:
    """Event publishing names the type `eventType`; one notification may cover several recipients; without the
    common headers the Message-ID is found in `headers`."""
    mail = {**SES_MAIL, "commonHeaders": {"subject": "Hello"}}
    bounce = {
        "bounceType": "Transient",
        "bounceSubType": "MailboxFull",
        "bouncedRecipients": [{"emailAddress": "jane@example.com"}, {"emailAddress": "mary@example.com"}],
        "timestamp": "2017-08-05T00:41:02.669Z",
    }
    body = sns("Notification", {"eventType": "Bounce", "bounce": bounce, "mail": mail})
    feedback = ses_feedback(body)
    assert [(f.address, f.permanent, f.message_id, f.detail) for f in feedback] == [
        ("jane@example.com", False, MESSAGE_ID, "Transient (MailboxFull)"),
        ("mary@example.com", False, MESSAGE_ID, "Transient (MailboxFull)"),
    ]


def test_ses_without_original_headers_has_no_message_id() -> None:
    mail = {key: value for key, value in SES_MAIL.items() if key not in ("headers", "commonHeaders")}
    [feedback] = ses_feedback(sns("Notification", {**SES_BOUNCE, "mail": mail}))
    assert feedback.message_id is None  # mail.messageId is SES's own id, not ours


def test_ses_ignores_other_notifications() -> None:
    delivery = {
        "notificationType": "Delivery",
        "mail": SES_MAIL,
        "delivery": {"timestamp": "2016-01-27T14:59:38.237Z", "recipients": ["jane@example.com"]},
    }
    validated = "Successfully validated SNS topic for Amazon SES event publishing."
    assert read_ses(sns("Notification", delivery), SNS_HEADERS, QUERY, TOKEN) == []
    assert read_ses(sns("Notification", validated), SNS_HEADERS, QUERY, TOKEN) == []
    assert read_ses(sns("UnsubscribeConfirmation", "You have chosen to deactivate"), SNS_HEADERS, QUERY, TOKEN) == []


SUBSCRIBE_URL = (
    "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription"
    "&TopicArn=arn:aws:sns:us-west-2:123456789012:MyTopic&Token=2336412f37"
)


def confirmation(url: str) -> bytes:
    message = "You have chosen to subscribe to the topic arn:aws:sns:us-west-2:123456789012:MyTopic."
    return sns("SubscriptionConfirmation", message, SubscribeURL=url, Token="2336412f37")


def test_ses_subscription_confirmation_gives_the_url_to_visit() -> None:
    assert read_ses(confirmation(SUBSCRIBE_URL), SNS_HEADERS, QUERY, TOKEN) == SubscriptionConfirmation(
        topic_arn="arn:aws:sns:us-west-2:123456789012:MyTopic", subscribe_url=SUBSCRIBE_URL
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:8443/confirm",
        "http://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription",
        "https://sns.us-west-2.amazonaws.com.evil.example/",
        "https://sns.amazonaws.com@evil.example/",
        "https://evilamazonaws.com/",
        "https://my-bucket.s3.amazonaws.com/confirm",
    ],
)
def test_ses_subscription_confirmation_refuses_a_url_off_aws(url: str) -> None:
    refused(400, read_ses, confirmation(url), SNS_HEADERS, QUERY, secret=TOKEN)


def test_ses_subscription_confirmation_takes_any_host_when_allowed() -> None:
    local = "http://127.0.0.1:8123/confirm?Token=2336412f37"
    confirmed = read_ses(confirmation(local), SNS_HEADERS, QUERY, TOKEN, allow_any_host=True)
    assert confirmed == SubscriptionConfirmation(
        topic_arn="arn:aws:sns:us-west-2:123456789012:MyTopic", subscribe_url=local
    )
    refused(400, read_ses, confirmation("file:///etc/passwd"), SNS_HEADERS, QUERY, secret=TOKEN, allow_any_host=True)


@pytest.mark.parametrize(
    "query", [{}, {"token": ""}, {"token": "9d6fa0b1c3e24a0f8c7c"}], ids=["none", "empty", "wrong"]
)
def test_ses_refuses_a_missing_or_wrong_token(query: Mapping[str, str]) -> None:
    refused(401, read_ses, sns("Notification", SES_BOUNCE), SNS_HEADERS, query, secret=TOKEN)
    refused(401, read_ses, confirmation(SUBSCRIBE_URL), SNS_HEADERS, query, secret=TOKEN)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"MessageId": "1"}',
        sns("Notification", "{not json either"),
        sns("Notification", {"mail": SES_MAIL}),
        sns("Notification", {"notificationType": "Bounce", "mail": SES_MAIL}),
        sns("Notification", {"notificationType": "Complaint", "complaint": {"complainedRecipients": [{}]}}),
    ],
    ids=["not-json", "no-type", "message-not-json", "no-notification-type", "no-bounce", "no-address"],
)
def test_ses_refuses_a_body_that_is_not_sns_from_ses(body: bytes) -> None:
    refused(400, read_ses, body, SNS_HEADERS, QUERY, secret=TOKEN)


# Every reader


def test_detail_is_one_bounded_line() -> None:
    reason = "550 5.1.1 <jane@example.com>:\r\n  Recipient address rejected:\n" + "x" * 1000
    body = json.dumps([sendgrid_event("bounce", reason=reason, type="bounce")]).encode()
    [feedback] = read_sendgrid(body, sendgrid_signed(body), {}, VERIFICATION_KEY)
    assert feedback.detail.startswith("550 5.1.1 <jane@example.com>: Recipient address rejected: xxx")
    assert (len(feedback.detail), feedback.detail[-1]) == (DETAIL_CHARS, "…")


def test_readers_by_provider_name() -> None:
    requests: dict[str, tuple[bytes, Mapping[str, str], Mapping[str, str], str]] = {
        "ses": (sns("Notification", SES_BOUNCE), SNS_HEADERS, QUERY, TOKEN),
        "sendgrid": (SENDGRID_BATCH, sendgrid_signed(SENDGRID_BATCH), {}, VERIFICATION_KEY),
        "postmark": (POSTMARK_BOUNCE, basic(CREDENTIALS), {}, CREDENTIALS),
        "mailgun": (mailgun_body(MAILGUN_PERMANENT), {}, {}, SIGNING_KEY),
    }
    assert set(READERS) == set(requests)
    for provider, request in requests.items():
        read = READERS[provider](*request)
        assert isinstance(read, list)
        assert read[0].provider == provider
        assert (read[0].kind, read[0].permanent, read[0].message_id) == ("bounce", True, MESSAGE_ID)
