"""The saga's stages and what they decide: the reference's outcomes and failure policies (named by meaning in
`StageOutcomes`), each stage's result, the channel operations and the saga's policies.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import (
    Field,
)

from domain.model import (
    Attachment,
    Category,
    Channel,
    ChannelPreference,
    DirectoryEntry,
    NotificationStatus,
    SendNotificationToEntityOp,
    Tag,
)
from domain.rules import (
    Body,
    EmailAddress,
    Identifier,
    Model,
    Name,
    OptionalBody,
    Reason,
    Subject,
)


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
    reason: str | None = Field(default=None, exclude_if=lambda reason: reason is None)
    """Why it is opted out, when a category's preference or default says so."""


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


def get_delivery_channel_configs(
    audience: DirectoryEntry, policies: SagaPolicies, category: Category | None = None
) -> GetDeliveryChannelConfigsResult:
    """The entity's channels in a fixed order (email, then Slack), each to send on or opted out of (by the entity's
    switch, or for the notification's `category` by its preference or the category's default:
    `category_preference`); a channel that cannot be used (no Slack token for its workspace) is reported as a
    failure, and the policy says what then."""
    configs, failures = [], []
    for channel in Channel:
        if channel not in audience.channels:
            continue
        action = audience.channels[channel]
        if action == ChannelPreference.SEND and category is not None:
            why = category_preference(audience, category, channel)
            if why is not None:
                reason = f"{channel}: {why}"
                configs.append(
                    DeliveryChannelConfig(channel=channel, action=ChannelPreference.OPTED_OUT, reason=reason)
                )
                continue
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


def category_preference(audience: DirectoryEntry, category: Category, channel: Channel) -> str | None:
    """Why `category` is kept off `channel` for the entity (its preference, else the category's default), or None
    when it is sent there; a category that may not be opted out of is always sent."""
    if not category.opt_out:
        return None
    preferred = audience.preferences.get(category.name, {}).get(channel)
    if preferred == ChannelPreference.OPTED_OUT:
        return f"opted out of {category.name!r} (the entity's preference)"
    if preferred is None and category.defaults.get(channel) == ChannelPreference.OPTED_OUT:
        return f"{category.name!r} is off by default (the category's)"
    return None


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
    attachments: list[Attachment] = Field(default_factory=list, exclude_if=lambda files: not files)
    """Named, not carried: the handler reads their bytes from the stream store."""
    entity_id: str | None = Field(default=None, exclude_if=lambda entity_id: entity_id is None)
    """The entity it is sent to, whose preference page the handler links to as it sends (a footer)."""
    opt_out: str | None = Field(default=None, exclude_if=lambda opt_out: opt_out is None)
    """The category its entity may opt out of, with a link the handler signs as it sends (List-Unsubscribe)."""


class SendSlackMessageOp(Model):
    """Everything needed to post one Slack message. The workspace's token stays with the worker."""

    delivery_channel: ClassVar[Channel] = Channel.SLACK
    notification_id: str
    channel_operation_id: int
    workspace: Identifier
    channel: Identifier
    text: Body
    attachments: list[Attachment] = Field(default_factory=list, exclude_if=lambda files: not files)
    """Named, not carried: the handler reads their bytes from the stream store and uploads them with `text` as their
    comment."""
    entity_id: str | None = Field(default=None, exclude_if=lambda entity_id: entity_id is None)
    """The entity it is sent to (whose preference its unsubscribe link changes)."""
    opt_out: str | None = Field(default=None, exclude_if=lambda opt_out: opt_out is None)
    """The category its entity may opt out of on Slack, with a link the handler signs as it sends
    (`NOTIFY_SLACK_UNSUBSCRIBE_FOOTER`)."""


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
    suppressed: bool = Field(default=False, exclude_if=lambda suppressed: not suppressed)
    """Not prepared because its address is on the suppression list (the failure says since when and why)."""

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
    last_response: dict[str, Any] | None = None


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


class ChannelPolicy(Model):
    """How long and how often to try a channel: exponential backoff (coefficient 2) from `initial_retry_seconds`
    up to `maximum_retry_seconds` between attempts, until `deadline_seconds` after the first."""

    initial_retry_seconds: float = Field(gt=0)
    maximum_retry_seconds: float = Field(gt=0)
    deadline_seconds: float = Field(gt=0)
    attempt_timeout_seconds: float = Field(gt=0)
    """How long one attempt may take, at most (within the deadline), besides the time its files are given."""
    transfer_bytes_per_second: float = Field(gt=0)
    """The slowest rate files are carried at: an attempt with files is given the time they take at this rate."""
    heartbeat_timeout_seconds: float = Field(gt=0)
    """How long an attempt may go without a heartbeat before it counts as lost (its worker dead) and is retried."""


class SagaPolicies(Model):
    """The worker's policies for one saga, read once when it starts and kept in its history."""

    channels: dict[Channel, ChannelPolicy]
    slack_workspaces: list[str] | None
    """The Slack workspaces a token is configured for; None when a default token serves any workspace."""
    channel_configs_failure_action: FailureAction
    cannot_prepare_action: CannotPrepareToSendOnChannelAction
    escalate_on: list[NotificationStatus]
    internal_team: DirectoryEntry | None
