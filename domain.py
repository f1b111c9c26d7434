"""The notification domain: operations, events, outcomes, the entity directory and the view.

Every other module imports its models from here. Models are plain pydantic v2 classes with no side effects,
so the workflow sandbox can pass this module through unchanged. Nothing in here carries a credential.
"""

from __future__ import annotations

import email.errors
import email.policy
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import to_jsonable_python

MAX_BODY_BYTES = 256 * 1024
"""A body, HTML body or Slack text: at most this many bytes of UTF-8."""
MAX_REQUEST_BYTES = 512 * 1024
"""A whole request as JSON, as it travels in Temporal's payloads (a control character takes six bytes there). The
saga carries it, and the channel operations made of it, in payloads of its history: this keeps every one of them,
and every workflow task, well inside Temporal's limits (2 MB a payload, 4 MB a message)."""
MAX_TAGS = 50
"""Client tags on one request."""


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


ADMISSION = {"admission": True}
"""The validation context of what is new: a request or a directory entry as it is admitted (`admitted`). Every
rule of today applies to it. What was recorded (a record, a saga's input in its history) is read back with the
types alone, so that a rule added later never makes a running saga's input or an old record unreadable."""

M = TypeVar("M", bound=BaseModel)


def admitted(model_type: type[M], data: object) -> M:
    """`data` (a model, or what makes one) as a new `model_type`, checked against every rule of today."""
    # as plain data: pydantic takes a model instance inside `data` as it is, without checking it again
    return model_type.model_validate(to_jsonable_python(data), context=ADMISSION)


def Admitted(check: Callable[[Any], Any]) -> AfterValidator:  # noqa: N802 - used as a type annotation
    """A rule that applies on admission (see `ADMISSION`)."""

    def validate(value: Any, info: ValidationInfo) -> Any:
        return check(value) if _admitting(info) else value

    return AfterValidator(validate)


def _admitting(info: ValidationInfo) -> bool:
    return isinstance(info.context, dict) and bool(info.context.get("admission"))


def _sized(value: str, least: int, most: int) -> str:
    if len(value) < least:
        raise ValueError("must not be empty" if least == 1 else f"is shorter than {least} characters")
    if len(value) > most:
        raise ValueError(f"is longer than {most} characters")
    return value


def _utf8_at_most(value: str, most: int) -> str:
    if len(value.encode()) > most:
        raise ValueError(f"is over {most:,} bytes of UTF-8")
    return value


def _no_nul(value: str) -> str:
    if "\0" in value:
        raise ValueError("must not contain NUL characters")
    return value


def utc_now() -> datetime:
    """Now, in UTC: the timestamp of what activities record (workflow code uses `workflow.now()`)."""
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------------------------------
# Tags


class Tag(Model):
    """A name/value pair attached to a record; records are queryable by tags."""

    name: Annotated[str, Admitted(lambda v: _single_line(_sized(v, 1, 200)))]
    value: Annotated[str, Admitted(lambda v: _no_nul(_utf8_at_most(v, 2000)))]


def tag(name: str, value: object) -> Tag:
    return Tag(name=name, value=str(value))


def recipient_email_tag(address: str) -> Tag:
    """Email addresses are tagged in lower case, so that an audit finds them however they were written."""
    return Tag(name=TagName.RECIPIENT_EMAIL_ADDRESS, value=address.lower())


class TagName(StrEnum):
    NOTIFICATION_ID = "notification-id"
    ENTITY_ID = "entity-id"
    IDEMPOTENCY_KEY = "idempotency-key"
    RECIPIENT_EMAIL_ADDRESS = "recipient-email-address"
    SENDER_EMAIL_ADDRESS = "sender-email-address"
    SLACK_WORKSPACE = "slack-workspace"
    SLACK_CHANNEL = "slack-channel"


RESERVED_TAG_NAMES = frozenset(TagName)
"""The tag names the audit and `events` read: a client's tags may not use them, in any case."""


# ---------------------------------------------------------------------------------------------------------------
# Channels and the entity directory


class Channel(StrEnum):
    EMAIL = "email"
    SLACK = "slack"


class ChannelPreference(StrEnum):
    SEND = "send"
    OPTED_OUT = "opted-out"


CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
"""Every character that can break a line or is a control character (tab aside), Unicode's separators included."""


def _single_line(value: str) -> str:
    """Text that goes into a mail header: one line as written and as a mail reader decodes it, RFC 2047 encoded
    words included (an encoded CR LF would otherwise become a header of the attacker's choosing when the header is
    folded, CVE-2024-6923)."""
    if CONTROL.search(value) or CONTROL.search(_as_read(value)):
        raise ValueError("must be a single line of text (no line breaks or control characters, encoded or not)")
    return value


def _as_read(value: str) -> str:
    """What a mail reader makes of `value` in a header: the email package's own parser, which decodes encoded words
    however loosely they are written (spaces inside them included)."""
    try:
        return str(email.policy.default.header_factory("subject", value))
    except (ValueError, LookupError, email.errors.HeaderParseError) as error:
        raise ValueError("has an encoded word that cannot be decoded") from error


DOMAIN = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")


def checked_email_address(value: str) -> str:
    """`local@domain.tld`, taken only if the email package reads it back unchanged (so that what is validated is
    what is sent: no comments, quotes, routes or empty labels)."""
    if not value.isascii():
        raise ValueError(f"{value!r} is not an ASCII address: internationalized addresses (SMTPUTF8) are not supported")
    local, at, domain = value.rpartition("@")
    plain = bool(at and local and DOMAIN.fullmatch(domain)) and not CONTROL.search(value)
    plain = plain and '"' not in local and "=?" not in local  # no quoted local part, and no encoded word in it
    if plain:
        try:
            plain = Address(addr_spec=value).addr_spec == value
        except Exception:  # the parser fails in more ways than it documents (AttributeError on `a@[`, say)
            plain = False
    if not plain:
        raise ValueError(f"not an email address: {value!r}")
    return value


def _identifier(value: str) -> str:
    if not value or re.search(r"\s", value) or CONTROL.search(value):
        raise ValueError("must not be empty or contain spaces or control characters")
    return value


EmailAddress = Annotated[str, Admitted(checked_email_address)]
Name = Annotated[str, Admitted(lambda v: _single_line(_sized(v, 1, 200)))]
Identifier = Annotated[str, Admitted(lambda v: _identifier(_sized(v, 1, 200)))]


_IDEMPOTENCY_KEY = TypeAdapter(Identifier)


def admitted_idempotency_key(key: str) -> str:
    """A client's idempotency key, checked as an identifier."""
    return _IDEMPOTENCY_KEY.validate_python(key, context=ADMISSION)


class SlackAddress(Model):
    workspace: Identifier
    channel: Identifier


class DirectoryEntry(Model):
    """Who an entity is and where it can be reached. Every change is kept as a record in the directory stream."""

    id: Identifier
    name: Name
    email: EmailAddress | None = None
    slack: SlackAddress | None = None
    channels: dict[Channel, ChannelPreference]
    fallback: Channel | None = None
    """A channel not in `channels`, to deliver on when a preferred one fails for good or cannot be used or
    prepared."""

    def address(self, channel: Channel) -> str | None:
        """Where the entity is reached on `channel`, as views and the audit show it, or None."""
        if channel == Channel.EMAIL:
            return self.email
        return f"{self.slack.workspace}/{self.slack.channel}" if self.slack else None

    @model_validator(mode="after")
    def _reachable_where_it_says(self) -> DirectoryEntry:
        if self.fallback is not None and self.fallback in self.channels:
            raise ValueError(
                f"entity {self.id!r} has {self.fallback} as its fallback and in its channels: "
                "a fallback is a channel it is not otherwise sent on"
            )
        wanted = {c for c, p in self.channels.items() if p == ChannelPreference.SEND} | {self.fallback} - {None}
        if Channel.EMAIL in wanted and self.email is None:
            raise ValueError(f"entity {self.id!r} asks for email but has no email address")
        if Channel.SLACK in wanted and self.slack is None:
            raise ValueError(f"entity {self.id!r} asks for Slack but has no Slack workspace and channel")
        return self


# ---------------------------------------------------------------------------------------------------------------
# The client operation


def _at_most_body_size(value: str) -> str:
    if len(value.encode()) > MAX_BODY_BYTES:
        raise ValueError(f"is over {MAX_BODY_BYTES // 1024} KiB")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _subject(value: str) -> str:
    value = _single_line(value).strip()
    if not value:
        raise ValueError("must not be empty")
    return value


Subject = Annotated[str, Admitted(lambda v: _subject(_sized(v, 1, 998)))]
Body = Annotated[str, Admitted(lambda v: _at_most_body_size(_not_blank(v)))]
OptionalBody = Annotated[str, Admitted(_at_most_body_size)]


class SendNotificationToEntityOp(Model):
    """A client's request: notify this entity with this content."""

    entity_id: Identifier
    subject: Subject
    body: Body
    html_body: OptionalBody | None = None
    slack_text: OptionalBody | None = None
    tags: list[Tag] = Field(default_factory=list)
    send_at: AwareDatetime | None = None
    """When to send; until then the saga waits on a durable timer and can be cancelled."""

    @field_validator("tags")
    @classmethod
    def _client_tags(cls, tags: list[Tag], info: ValidationInfo) -> list[Tag]:
        if not _admitting(info):
            return tags
        if len(tags) > MAX_TAGS:
            raise ValueError(f"at most {MAX_TAGS} tags, not {len(tags)}")
        reserved = sorted({t.name for t in tags if t.name.lower() in RESERVED_TAG_NAMES})
        if reserved:
            raise ValueError(f"{', '.join(map(repr, reserved))}: reserved for the service's own tags")
        return tags

    @model_validator(mode="after")
    def _fits_in_a_payload(self, info: ValidationInfo) -> SendNotificationToEntityOp:
        size = len(self.model_dump_json().encode()) if _admitting(info) else 0
        if size > MAX_REQUEST_BYTES:
            raise ValueError(
                f"the request is {size:,} bytes as JSON (control characters count six); at most "
                f"{MAX_REQUEST_BYTES:,} (512 KiB) are taken"
            )
        return self


def notification_tags(notification_id: str, operation: SendNotificationToEntityOp) -> list[Tag]:
    """The tags every record of a notification carries: its id, its entity, and the client's own tags."""
    return [
        tag(TagName.NOTIFICATION_ID, notification_id),
        tag(TagName.ENTITY_ID, operation.entity_id),
        *operation.tags,
    ]


class NotificationRequest(Model):
    """The saga's input: the notification id the client-operation stream issued, the operation, and the internal
    id of the operation's record in that stream (whose handling the saga keeps)."""

    notification_id: str
    operation: SendNotificationToEntityOp
    client_operation_record_id: int


class ExecuteOpRequestedEvent(Model):
    """How an operation is put in an operation stream: the op, its id and when it was requested."""

    id: str
    operation: (
        SendNotificationToEntityOp
        | SendEmailOp
        | SendSlackMessageOp
        | ProcessSendNotificationSagaOp
        | SendFailedNotificationToInternalTeamOp
    )
    timestamp_utc: datetime


# ---------------------------------------------------------------------------------------------------------------
# Failures and outcomes (the reference's enums, names kept)


MAX_REASON_CHARS = 1000
"""A failure's reason, as recorded, shown and logged: one line of at most this many characters."""


def in_one_line(reason: str) -> str:
    """`reason` (a server's multi-line reply, say) as one line of at most `MAX_REASON_CHARS` characters."""
    said = " ".join(CONTROL.sub(" ", reason).split())
    return said if len(said) <= MAX_REASON_CHARS else said[: MAX_REASON_CHARS - 1] + "…"


Reason = Annotated[str, AfterValidator(in_one_line)]
"""A reason, made one bounded line wherever it is built or read: a failure's reason ends up in escalations,
views and log lines, none of which may grow with what a server said."""


class Failure(Model):
    reason: Reason
    channel: Channel | None = None
    """The channel it concerns, if one."""


class FailureAction(StrEnum):
    IGNORE_AND_PROCEED_IF_POSSIBLE_OTHERWISE_STOP = "IgnoreAndProceedIfPossibleOtherwiseStop"
    STOP = "Stop"


class GetAudienceOutcome(StrEnum):
    GOT_AUDIENCE_WITH_NO_FAILURES_REPORTED = "GotAudienceWithNoFailuresReported"
    GOT_AUDIENCE_WITH_REPORTED_FAILURES_IGNORED = "GotAudienceWithReportedFailuresIgnored"
    COULD_NOT_GET_AUDIENCE_AND_NO_FAILURES_REPORTED = "CouldNotGetAudienceAndNoFailuresReported"
    COULD_NOT_GET_AUDIENCE_WITH_SOME_FAILURES_REPORTED = "CouldNotGetAudienceWithSomeFailuresReported"
    DESPITE_GETTING_AUDIENCE_FAILURES_PREVENT_USING_IT = "DespiteGettingAudienceFailuresPreventUsingIt"


class GetDeliveryChannelConfigsOutcome(StrEnum):
    GOT_CONFIGS_WITH_NO_FAILURES_REPORTED = "GotDeliveryChannelConfigsWithNoFailuresReported"
    GOT_CONFIGS_WITH_REPORTED_FAILURES_IGNORED = "GotDeliveryChannelConfigsWithReportedFailuresIgnored"
    COULD_NOT_GET_CONFIGS_AND_NO_FAILURES_REPORTED = "CouldNotGetDeliveryChannelConfigsAndNoFailuresReported"
    COULD_NOT_GET_CONFIGS_WITH_SOME_FAILURES_REPORTED = "CouldNotGetDeliveryChannelConfigsWithSomeFailuresReported"
    DESPITE_GETTING_CONFIGS_FAILURES_PREVENT_USING_THEM = "DespiteGettingDeliveryChannelConfigsFailuresPreventUsingThem"


class PrepareToSendOnChannelOutcome(StrEnum):
    PREPARED_WITH_NO_FAILURES_REPORTED = "PreparedToSendOnChannelWithNoFailuresReported"
    PREPARED_WITH_REPORTED_FAILURES_IGNORED = "PreparedToSendOnChannelWithReportedFailuresIgnored"
    COULD_NOT_PREPARE_AND_NO_FAILURES_REPORTED = "CouldNotPrepareToSendOnChannelAndNoFailuresReported"
    COULD_NOT_PREPARE_WITH_SOME_FAILURES_REPORTED = "CouldNotPrepareToSendOnChannelWithSomeFailuresReported"
    DESPITE_PREPARING_FAILURES_PREVENT_USING_IT = "DespitePreparingToSendOnChannelFailuresPreventUsingIt"


class PrepareToSendNotificationOutcome(StrEnum):
    AUDIENCE_OPTED_OUT_OF_ALL_CHANNELS = "AudienceOptedOutOfAllChannels"
    PREPARED_TO_SEND_ON_ALL_CHANNELS = "PreparedToSendOnAllChannels"
    PREPARED_TO_SEND_ON_SOME_CHANNELS = "PreparedToSendOnSomeChannels"
    COULD_NOT_PREPARE_DESPITE_ATTEMPTING_ALL = "CouldNotPrepareToSendOnAnyChannelDespiteAttemptingAll"
    COULD_NOT_PREPARE_BECAUSE_ONE_FORCED_ALL_TO_BE_DISCARDED = (
        "CouldNotPrepareToSendOnAnyChannelBecauseOneForcedAllToBeDiscarded"
    )


class ChannelOperationOutcome(StrEnum):
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class AttemptToSendNotificationOutcome(StrEnum):
    SENT_ON_ALL_PREPARED_CHANNELS = "SentOnAllPreparedChannels"
    SENT_ON_SOME_PREPARED_CHANNELS = "SentOnSomePreparedChannels"
    COULD_NOT_SEND_ON_ANY_PREPARED_CHANNEL = "CouldNotSendOnAnyPreparedChannel"


E = TypeVar("E", bound=StrEnum)


@dataclass(frozen=True)
class StageOutcomes(Generic[E]):
    """A stage's outcomes by what each means, and the reference's shared derivation of one: found or not, failures
    or not, and what the failure action says. Naming each member here (not relying on their order or their names)
    keeps renaming or reordering one from changing what the saga does."""

    got: E
    got_ignoring_failures: E
    missing: E
    missing_with_failures: E
    despite_failures: E
    """Found, and the failures reported on the way prevent using it."""

    def of(self, found: bool, failures: list[Failure], stop_on_failures: bool) -> E:
        if not found:
            return self.missing_with_failures if failures else self.missing
        if not failures:
            return self.got
        return self.despite_failures if stop_on_failures else self.got_ignoring_failures

    def usable(self, outcome: E) -> bool:
        return outcome in (self.got, self.got_ignoring_failures)


AUDIENCE_OUTCOMES = StageOutcomes(
    got=GetAudienceOutcome.GOT_AUDIENCE_WITH_NO_FAILURES_REPORTED,
    got_ignoring_failures=GetAudienceOutcome.GOT_AUDIENCE_WITH_REPORTED_FAILURES_IGNORED,
    missing=GetAudienceOutcome.COULD_NOT_GET_AUDIENCE_AND_NO_FAILURES_REPORTED,
    missing_with_failures=GetAudienceOutcome.COULD_NOT_GET_AUDIENCE_WITH_SOME_FAILURES_REPORTED,
    despite_failures=GetAudienceOutcome.DESPITE_GETTING_AUDIENCE_FAILURES_PREVENT_USING_IT,
)
CONFIGS_OUTCOMES = StageOutcomes(
    got=GetDeliveryChannelConfigsOutcome.GOT_CONFIGS_WITH_NO_FAILURES_REPORTED,
    got_ignoring_failures=GetDeliveryChannelConfigsOutcome.GOT_CONFIGS_WITH_REPORTED_FAILURES_IGNORED,
    missing=GetDeliveryChannelConfigsOutcome.COULD_NOT_GET_CONFIGS_AND_NO_FAILURES_REPORTED,
    missing_with_failures=GetDeliveryChannelConfigsOutcome.COULD_NOT_GET_CONFIGS_WITH_SOME_FAILURES_REPORTED,
    despite_failures=GetDeliveryChannelConfigsOutcome.DESPITE_GETTING_CONFIGS_FAILURES_PREVENT_USING_THEM,
)
PREPARE_ON_CHANNEL_OUTCOMES = StageOutcomes(
    got=PrepareToSendOnChannelOutcome.PREPARED_WITH_NO_FAILURES_REPORTED,
    got_ignoring_failures=PrepareToSendOnChannelOutcome.PREPARED_WITH_REPORTED_FAILURES_IGNORED,
    missing=PrepareToSendOnChannelOutcome.COULD_NOT_PREPARE_AND_NO_FAILURES_REPORTED,
    missing_with_failures=PrepareToSendOnChannelOutcome.COULD_NOT_PREPARE_WITH_SOME_FAILURES_REPORTED,
    despite_failures=PrepareToSendOnChannelOutcome.DESPITE_PREPARING_FAILURES_PREVENT_USING_IT,
)


class GetAudienceResult(Model):
    audience: DirectoryEntry | None
    failures: list[Failure] = Field(default_factory=list)
    failure_action: FailureAction = FailureAction.STOP

    @property
    def outcome(self) -> GetAudienceOutcome:
        found = self.audience is not None
        return AUDIENCE_OUTCOMES.of(found, self.failures, self.failure_action == FailureAction.STOP)

    @property
    def usable(self) -> bool:
        return AUDIENCE_OUTCOMES.usable(self.outcome)


class DeliveryChannelConfig(Model):
    channel: Channel
    action: ChannelPreference


class GetDeliveryChannelConfigsResult(Model):
    configs: list[DeliveryChannelConfig]
    failures: list[Failure] = Field(default_factory=list)
    failure_action: FailureAction = FailureAction.STOP

    @property
    def outcome(self) -> GetDeliveryChannelConfigsOutcome:
        stop = self.failure_action == FailureAction.STOP
        return CONFIGS_OUTCOMES.of(bool(self.configs), self.failures, stop)

    @property
    def usable(self) -> bool:
        return CONFIGS_OUTCOMES.usable(self.outcome)


def get_delivery_channel_configs(audience: DirectoryEntry, policies: SagaPolicies) -> GetDeliveryChannelConfigsResult:
    """The entity's channels in a fixed order (email, then Slack), each to send on or opted out of; a channel that
    cannot be used (no Slack token for its workspace) is reported as a failure, and the policy says what then."""
    configs, failures = [], []
    for channel in Channel:
        if channel not in audience.channels:
            continue
        action = audience.channels[channel]
        workspaces = policies.slack_workspaces
        if action == ChannelPreference.SEND and channel == Channel.SLACK and workspaces is not None:
            assert audience.slack is not None
            if audience.slack.workspace not in workspaces:
                reason = f"slack: no token is configured for workspace {audience.slack.workspace!r}"
                failures.append(Failure(reason=reason, channel=channel))
                continue
        configs.append(DeliveryChannelConfig(channel=channel, action=action))
    if not configs and not failures:
        failures.append(Failure(reason=f"entity {audience.id!r} has no delivery channels configured"))
    return GetDeliveryChannelConfigsResult(
        configs=configs, failures=failures, failure_action=policies.channel_configs_failure_action
    )


# ---------------------------------------------------------------------------------------------------------------
# Channel operations


class EmailMailbox(Model):
    address: EmailAddress
    name: Name | None = None


class SendEmailOp(Model):
    """Everything needed to deliver one email. SMTP connection settings and credentials stay with the worker."""

    delivery_channel: ClassVar[Channel] = Channel.EMAIL
    notification_id: str
    channel_operation_id: int
    sender: EmailMailbox
    to: list[EmailMailbox] = Field(min_length=1)
    subject: Subject
    text_body: Body
    html_body: OptionalBody | None = None


class SendSlackMessageOp(Model):
    """Everything needed to post one Slack message. The workspace's token stays with the worker."""

    delivery_channel: ClassVar[Channel] = Channel.SLACK
    notification_id: str
    channel_operation_id: int
    workspace: Identifier
    channel: Identifier
    text: Body


ChannelOperation = SendEmailOp | SendSlackMessageOp


class ChannelOperationMonitoringInfo(Model):
    channel_operation_id: int
    succeeded_event_type: str
    failed_event_type: str


class ChannelOperationInstruction(Model):
    """One operation on one channel, how to tell its outcome, and the tags it is put with."""

    operation: ChannelOperation
    monitoring_info: ChannelOperationMonitoringInfo
    tags: list[Tag] = Field(default_factory=list)


class PrepareToSendOnChannelOp(Model):
    notification_id: str
    operation: SendNotificationToEntityOp
    audience: DirectoryEntry
    channel: Channel


class PrepareToSendOnChannelResult(Model):
    channel: Channel
    instructions: list[ChannelOperationInstruction]
    failures: list[Failure] = Field(default_factory=list)
    failure_action: FailureAction = FailureAction.STOP

    @property
    def outcome(self) -> PrepareToSendOnChannelOutcome:
        stop = self.failure_action == FailureAction.STOP
        return PREPARE_ON_CHANNEL_OUTCOMES.of(bool(self.instructions), self.failures, stop)

    @property
    def prepared(self) -> bool:
        return PREPARE_ON_CHANNEL_OUTCOMES.usable(self.outcome)


class CannotPrepareToSendOnChannelAction(StrEnum):
    STOP_AND_DO_NOT_SEND_ON_ANY_CHANNEL = "StopAndDoNotSendOnAnyChannel"
    CONTINUE_AND_ATTEMPT_PREPARING_TO_SEND_ON_NEXT_CHANNEL = "ContinueAndAttemptPreparingToSendOnNextChannel"


class PrepareToSendNotificationResult(Model):
    channel_results: list[PrepareToSendOnChannelResult]
    cannot_prepare_action: CannotPrepareToSendOnChannelAction
    channels_to_send_on: list[Channel]

    @classmethod
    def of(
        cls, results: list[PrepareToSendOnChannelResult], action: CannotPrepareToSendOnChannelAction
    ) -> PrepareToSendNotificationResult:
        """Apply the cannot-prepare action: one channel that cannot be prepared may discard all the others."""
        prepared = [r.channel for r in results if r.prepared]
        stop = action == CannotPrepareToSendOnChannelAction.STOP_AND_DO_NOT_SEND_ON_ANY_CHANNEL
        if stop and len(prepared) < len(results):
            prepared = []
        return cls(channel_results=results, cannot_prepare_action=action, channels_to_send_on=prepared)

    @property
    def outcome(self) -> PrepareToSendNotificationOutcome:
        outcomes = PrepareToSendNotificationOutcome
        if not self.channel_results:
            return outcomes.AUDIENCE_OPTED_OUT_OF_ALL_CHANNELS
        if len(self.channels_to_send_on) == len(self.channel_results):
            return outcomes.PREPARED_TO_SEND_ON_ALL_CHANNELS
        if self.channels_to_send_on:
            return outcomes.PREPARED_TO_SEND_ON_SOME_CHANNELS
        if self.cannot_prepare_action == CannotPrepareToSendOnChannelAction.STOP_AND_DO_NOT_SEND_ON_ANY_CHANNEL:
            return outcomes.COULD_NOT_PREPARE_BECAUSE_ONE_FORCED_ALL_TO_BE_DISCARDED
        return outcomes.COULD_NOT_PREPARE_DESPITE_ATTEMPTING_ALL

    def instructions(self) -> list[ChannelOperationInstruction]:
        return [i for r in self.channel_results if r.channel in self.channels_to_send_on for i in r.instructions]


class ProcessSendNotificationSagaOp(Model):
    """The saga record: which channel operations to wait for, and how to tell their outcomes."""

    notification_id: str
    channel_operations: dict[Channel, list[ChannelOperationMonitoringInfo]]


class ChannelOperationRef(Model):
    """A channel operation as put in its operation stream: the handler's input."""

    instruction: ChannelOperationInstruction
    internal_record_id: int


class ChannelOperationFailure(Model):
    """The saga gave up on a channel operation, for this reason; with the channel's last response, if it had one."""

    operation: ChannelOperationRef
    reason: Reason
    last_response: dict | None = None


class ChannelOperationOutcomeInfo(Model):
    channel: Channel
    channel_operation_id: int
    event_type: str
    outcome: ChannelOperationOutcome
    reason: Reason | None = None
    attempts: int | None = None
    """How many attempts the operation took, where the handler knows."""


class AttemptToSendNotificationResult(Model):
    channel_outcomes: list[ChannelOperationOutcomeInfo] = Field(min_length=1)

    @property
    def channels_sent(self) -> list[Channel]:
        channels = dict.fromkeys(o.channel for o in self.channel_outcomes)
        return [
            c
            for c in channels
            if all(o.outcome == ChannelOperationOutcome.SUCCEEDED for o in self.channel_outcomes if o.channel == c)
        ]

    @property
    def outcome(self) -> AttemptToSendNotificationOutcome:
        outcomes = AttemptToSendNotificationOutcome
        if all(o.outcome == ChannelOperationOutcome.SUCCEEDED for o in self.channel_outcomes):
            return outcomes.SENT_ON_ALL_PREPARED_CHANNELS
        return (
            outcomes.SENT_ON_SOME_PREPARED_CHANNELS
            if self.channels_sent
            else outcomes.COULD_NOT_SEND_ON_ANY_PREPARED_CHANNEL
        )


# ---------------------------------------------------------------------------------------------------------------
# Channel handler responses and events


class SendEmailResult(StrEnum):
    SUCCESS = "Success"
    FAILED_TO_CONNECT_TO_SERVER = "FailedToConnectToServer"
    FAILED_TO_AUTHENTICATE_WITH_SERVER = "FailedToAuthenticateWithServer"
    FAILED_TO_SEND_EMAIL_TO_SERVER = "FailedToSendEmailToServer"


class SendEmailResponse(Model):
    result: SendEmailResult
    message_id: str
    server_response: str | None = None
    error: str | None = None
    communication_log: list[str] = Field(default_factory=list)
    """The SMTP exchange, credentials left out."""


class SendSlackMessageResult(StrEnum):
    SUCCEEDED = "Succeeded"
    FAILED_WITH_EXCEPTION_WHEN_SENDING = "FailedWithExceptionWhenSending"
    FAILED_WITH_SLACK_RETURNING_ERROR = "FailedWithSlackReturningError"


class SendSlackMessageResponse(Model):
    result: SendSlackMessageResult
    response_json: dict | None = None
    error: str | None = None


class ChannelEvent(Model):
    channel_operation_id: int
    notification_id: str
    timestamp_utc: datetime


class SendEmailRequestedEvent(ChannelEvent):
    operation: SendEmailOp


class SucceededInSendingEmailEvent(ChannelEvent):
    response: SendEmailResponse


class FailedToSendEmailEvent(ChannelEvent):
    response: SendEmailResponse


class SendSlackMessageRequestedEvent(ChannelEvent):
    operation: SendSlackMessageOp


class SucceededInSendingSlackMessageEvent(ChannelEvent):
    response: SendSlackMessageResponse


class FailedToSendSlackMessageEvent(ChannelEvent):
    response: SendSlackMessageResponse


# ---------------------------------------------------------------------------------------------------------------
# Notification events and the aggregate


class NotificationStatus(StrEnum):
    SCHEDULED = "scheduled"
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    PARTIALLY_SENT = "partially_sent"
    FAILED = "failed"
    OPTED_OUT = "opted_out"
    CANCELLED = "cancelled"


class NotificationOutcome(Model):
    """The detailed outcome: each stage's result as far as the saga got, and every failure reason."""

    get_audience: GetAudienceOutcome | None = None
    get_delivery_channel_configs: GetDeliveryChannelConfigsOutcome | None = None
    prepare: PrepareToSendNotificationOutcome | None = None
    attempt: AttemptToSendNotificationOutcome | None = None
    failures: list[str] = Field(default_factory=list)


class ChannelOutcome(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    NOT_PREPARED = "not_prepared"
    OPTED_OUT = "opted_out"


class ChannelView(Model):
    address: str | None
    outcome: ChannelOutcome
    channel_operation_id: int | None = None
    reason: str | None = None
    fallback: bool = False
    """Sent on because a preferred channel failed."""
    attempts: int | None = None
    """Attempts at delivering so far (while sending, from Temporal) or in all (once it ended)."""
    last_error: str | None = None
    """While retrying: why the last attempt failed."""
    next_attempt_at: datetime | None = None
    """While retrying: when the next attempt starts."""


class EscalationStatus(StrEnum):
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class EscalationView(Model):
    """How the internal team was told about a notification that did not go out as asked."""

    status: EscalationStatus
    channels: dict[Channel, ChannelView] = Field(default_factory=dict)


class NotificationEvent(Model):
    notification_id: str
    timestamp_utc: datetime

    @property
    def record_type(self) -> str:
        """The type it is recorded as: its class name, unless its outcome names it."""
        return self.__class__.__name__


class SendNotificationRequestedEvent(NotificationEvent):
    """Creates the notification aggregate."""

    operation: SendNotificationToEntityOp


class PrepareToSendNotificationEvent(NotificationEvent):
    """The prepare stage. Its record type names how it ended, as the reference's event names do."""

    get_audience: GetAudienceResult
    get_delivery_channel_configs: GetDeliveryChannelConfigsResult | None = None
    prepare: PrepareToSendNotificationResult | None = None

    @property
    def record_type(self) -> str:
        if not self.get_audience.usable:
            return "CouldNotGetOrUseAudienceEvent"
        if self.get_delivery_channel_configs is None or not self.get_delivery_channel_configs.usable:
            return "CouldNotGetOrUseDeliveryChannelConfigsEvent"
        assert self.prepare is not None
        outcome = self.prepare.outcome
        if outcome in (
            PrepareToSendNotificationOutcome.COULD_NOT_PREPARE_DESPITE_ATTEMPTING_ALL,
            PrepareToSendNotificationOutcome.COULD_NOT_PREPARE_BECAUSE_ONE_FORCED_ALL_TO_BE_DISCARDED,
        ):
            return "CouldNotPrepareToSendOnAnyChannelEvent"
        return f"{outcome.value}Event"


class AttemptToSendNotificationEvent(NotificationEvent):
    """The attempt stage: SentOnAllPreparedChannelsEvent, SentOnSomePreparedChannelsEvent or
    CouldNotSendOnAnyPreparedChannelEvent, by its outcome."""

    attempt: AttemptToSendNotificationResult

    @property
    def record_type(self) -> str:
        return f"{self.attempt.outcome.value}Event"


class NotificationView(Model):
    """The notification as a UI shows it; also the status a running saga answers queries with."""

    id: str
    status: NotificationStatus
    entity_id: str
    subject: str
    outcome: NotificationOutcome
    channels: dict[Channel, ChannelView] = Field(default_factory=dict)
    escalation: EscalationView | None = None
    requested_at: datetime
    send_at: datetime | None = None
    completed_at: datetime | None = None


class NotificationEndedEvent(NotificationEvent):
    """What every terminal event holds: the view as the notification ended."""

    view: NotificationView


class SucceededInSendingNotificationEvent(NotificationEndedEvent):
    """Terminal: sent on every prepared channel."""


class PartiallySentNotificationEvent(NotificationEndedEvent):
    """Terminal: sent on some of the entity's channels and not on others (which failed, or could not be used or
    prepared); the view says which and why."""


class FailedToSendNotificationEvent(NotificationEndedEvent):
    """Terminal: sent on none of the entity's channels; the view says how far it got and why."""


class NotificationCancelledEvent(NotificationEndedEvent):
    """Terminal: cancelled before anything was sent."""


def terminal_event_type(status: NotificationStatus) -> type[NotificationEndedEvent] | None:
    """The event that ends a notification's stream, or None when the prepare stage's `AudienceOptedOutOfAllChannels`
    event already ended it (there was nothing to send)."""
    if status == NotificationStatus.OPTED_OUT:
        return None
    ended: dict[NotificationStatus, type[NotificationEndedEvent]] = {
        NotificationStatus.CANCELLED: NotificationCancelledEvent,
        NotificationStatus.SENT: SucceededInSendingNotificationEvent,
        NotificationStatus.PARTIALLY_SENT: PartiallySentNotificationEvent,
    }
    return ended.get(status, FailedToSendNotificationEvent)


class SendFailedNotificationToInternalTeamOp(Model):
    """Put in the internal operation stream when a notification failed: tell the internal team."""

    notification_id: str
    status: NotificationStatus
    failures: list[str]


class FailedNotificationSentToInternalTeamEvent(NotificationEvent):
    """The internal team was told (`CouldNotSendFailedNotificationToInternalTeamEvent` when that failed too)."""

    escalation: EscalationView

    @property
    def record_type(self) -> str:
        if self.escalation.status == EscalationStatus.SENT:
            return "FailedNotificationSentToInternalTeamEvent"
        return "CouldNotSendFailedNotificationToInternalTeamEvent"


class NotificationSnapshot(Model):
    """The aggregate at its end: the request and every stage's full result."""

    notification_id: str
    operation: SendNotificationToEntityOp
    prepare: PrepareToSendNotificationEvent | None
    attempt: AttemptToSendNotificationResult | None
    view: NotificationView


class SagaEnded(Model):
    """What the saga records when it ends, written together by one activity: the escalation event (if it told the
    internal team), the view and the snapshot; and the handling of its records completed."""

    snapshot: NotificationSnapshot
    client_operation_record_id: int
    saga_record_id: int | None = None
    internal_operation_record_id: int | None = None


class EscalationRequested(Model):
    """The internal operation to tell the internal team, and the channel operations that will."""

    operation: SendFailedNotificationToInternalTeamOp
    instructions: list[ChannelOperationInstruction]


class PreparedEscalation(Model):
    internal_operation_record_id: int
    operations: list[ChannelOperationRef]


class ChannelPolicy(Model):
    """How long and how often to try a channel: exponential backoff (coefficient 2) from `initial_retry_seconds`
    up to `maximum_retry_seconds` between attempts, until `deadline_seconds` after the first."""

    initial_retry_seconds: float = Field(gt=0)
    maximum_retry_seconds: float = Field(gt=0)
    deadline_seconds: float = Field(gt=0)


class SagaPolicies(Model):
    """The worker's policies for one saga, read once when it starts and kept in its history."""

    channels: dict[Channel, ChannelPolicy]
    slack_workspaces: list[str] | None
    """The Slack workspaces a token is configured for; None when a default token serves any workspace."""
    channel_configs_failure_action: FailureAction
    cannot_prepare_action: CannotPrepareToSendOnChannelAction
    escalate_on: list[NotificationStatus]
    internal_team: DirectoryEntry | None


ExecuteOpRequestedEvent.model_rebuild()


class PrepareStageEnded(Model):
    """How preparing ended, for the notification of this operation."""

    operation: SendNotificationToEntityOp
    event: PrepareToSendNotificationEvent


class PreparedSaga(Model):
    """The saga record and its channel operations, as put in their streams."""

    saga_record_id: int
    operations: list[ChannelOperationRef]


class IdempotencyKeyClaim(Model):
    """Put in the client-operation stream under the key: the first request with a key claims it for its id."""

    idempotency_key: str
    notification_id: str
    operation: SendNotificationToEntityOp


class DeliveryAuditEntry(Model):
    """One email or Slack message sent (or attempted) to an address, for `audit`."""

    notification_id: str
    channel: Channel
    channel_operation_id: int
    address: str
    subject: str | None
    outcome: Literal["sent", "failed", "sending"]
    reason: str | None = None
    requested_at: datetime
    completed_at: datetime | None = None


class NotificationAuditEntry(Model):
    """One notification requested for an entity, for `audit --entity`."""

    notification_id: str
    subject: str
    status: NotificationStatus
    requested_at: datetime
