"""The stage's alarms, defined once: each metric, its dimensions by role, and when it fires (tools/alarms.py renders
them for both deploy paths; docs/operations.md says what each means and what to do)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chalicelib.runtime import METRICS_NAMESPACE
from tools.failure_handling import MAXIMUM_RECORD_AGE_IN_SECONDS, STREAM_RETENTION_SECONDS

# Dimension roles: what each path fills in.
FUNCTION = "function"
FAILURE_QUEUE = "failure_queue"
DEAD_LETTER_QUEUE = "dead_letter_queue"
RECONCILER_FUNCTION = "reconciler_function"
SWEEP_FUNCTION = "sweep_function"
STAGE = "stage"
LAMBDA = "AWS/Lambda"
SQS = "AWS/SQS"
FIVE_MINUTES = 300
# Lambda and SQS publish these metrics every minute: a one-minute period with one datapoint fires within about two.
ONE_MINUTE = 60
# A pushed-back reconciler message is invisible (its depth stays 0) but counts in the age of the oldest message. One
# the reconciler finishes is deleted within seconds; one over a minute old was pushed back (30 s, then 60 s) or waits
# for a reconciler that doesn't run. A minute is also before the third receive (about 90 s after the first), after
# which SQS's metric description says a message may stop counting in that age (not recorded here).
OLDEST_MESSAGE_AGE_SECONDS = 60
# An hour behind: a stuck shard is found with 5 hours left before the mapping discards at 6 hours of age and 23 hours
# before the stream's 24-hour retention trims the records; a healthy mapping runs seconds behind.
ITERATOR_AGE_THRESHOLD_MS = 3_600_000
assert ITERATOR_AGE_THRESHOLD_MS < MAXIMUM_RECORD_AGE_IN_SECONDS * 1000 < STREAM_RETENTION_SECONDS * 1000


@dataclass(frozen=True)
class Alarm:
    """One alarm: a metric with its dimensions (by role), how it is aggregated, and when it fires."""

    key: str
    namespace: str
    metric: str
    dimensions: tuple[tuple[str, str], ...]
    statistic: str
    threshold: float
    evaluation_periods: int
    meaning: str
    period: int = FIVE_MINUTES

    @property
    def logical_id(self) -> str:
        """The alarm's CloudFormation logical id."""
        return f"{self.key}Alarm"

    def resolved_dimensions(self, targets: dict[str, Any]) -> list[dict[str, Any]]:
        """The alarm's dimensions with each role replaced by the path's value (a name or an intrinsic)."""
        return [{"Name": name, "Value": targets[role]} for name, role in self.dimensions]

    def settings(self) -> dict[str, Any]:
        """The put_metric_alarm / AWS::CloudWatch::Alarm settings that don't depend on the path."""
        return {
            "AlarmDescription": self.meaning,
            "Namespace": self.namespace,
            "MetricName": self.metric,
            "Statistic": self.statistic,
            "Period": self.period,
            "EvaluationPeriods": self.evaluation_periods,
            "DatapointsToAlarm": self.evaluation_periods,
            "Threshold": self.threshold,
            "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "TreatMissingData": "notBreaching",
        }


FUNCTION_DIMENSIONS = (("FunctionName", FUNCTION),)
CUSTOM_DIMENSIONS = (("service", "service"), ("stage", STAGE))


def _custom(key: str, evaluation_periods: int, meaning: str, period: int = FIVE_MINUTES) -> Alarm:
    return Alarm(key, METRICS_NAMESPACE, key, CUSTOM_DIMENSIONS, "Sum", 1, evaluation_periods, meaning, period)


ALARMS: tuple[Alarm, ...] = (
    Alarm(
        "IteratorAge",
        LAMBDA,
        "IteratorAge",
        FUNCTION_DIMENSIONS,
        "Maximum",
        ITERATOR_AGE_THRESHOLD_MS,
        1,
        "The mapping is an hour behind the stream: a shard is stuck on retries or the function is throttled. "
        "Records are discarded to the on-failure bucket at 6 hours. Look at Errors, Throttles and the summary lines.",
    ),
    Alarm(
        "FailureQueueMessages",
        SQS,
        "ApproximateNumberOfMessagesVisible",
        (("QueueName", FAILURE_QUEUE),),
        "Maximum",
        1,
        3,
        "Discarded batches' notifications have waited 15 minutes in the on-failure queue: the reconciler is not "
        "draining it. Check the reconciler's errors and ReconcilerFailed; the bucket keeps the batches' objects.",
    ),
    Alarm(
        "DeadLetterQueueMessages",
        SQS,
        "ApproximateNumberOfMessagesVisible",
        (("QueueName", DEAD_LETTER_QUEUE),),
        "Maximum",
        1,
        1,
        "The reconciler gave up on a discarded batch. Read the message, fix the cause, redrive it, or ask for an "
        "urgent sweep (`python -m tools.backfill urgent`).",
    ),
    Alarm(
        "DestinationDeliveryFailures",
        LAMBDA,
        "DestinationDeliveryFailures",
        FUNCTION_DIMENSIONS,
        "Sum",
        1,
        1,
        "Lambda discarded a batch and could not write it to the on-failure bucket: those changes are lost to the "
        "reconciler. Check the role's s3:PutObject and s3:ListBucket and the bucket, then ask for an urgent sweep.",
    ),
    Alarm(
        "Errors",
        LAMBDA,
        "Errors",
        FUNCTION_DIMENSIONS,
        "Sum",
        1,
        3,
        "The handler has raised for 15 minutes (timeouts, crashes): its batches are being bisected and retried. "
        "Read the function's error summary lines (field error).",
    ),
    Alarm(
        "Throttles",
        LAMBDA,
        "Throttles",
        FUNCTION_DIMENSIONS,
        "Sum",
        1,
        3,
        "The handler has been throttled for 15 minutes: the account's concurrency is used up elsewhere. "
        "Throttled batches wait until the 6-hour record age, then go to the on-failure bucket.",
    ),
    _custom("Failed", 3, "Item writes have failed for 15 minutes (DynamoDB errors, throttling); they are retried."),
    _custom("Rejected", 1, "DynamoDB refused an item outright; not retried. The summary line names the records."),
    _custom("Malformed", 1, "A stream record could not be decoded; not retried. The summary line names the records."),
    _custom(
        "BatchErrors", 1, "The handler hit an unexpected exception (a bug); the summary line names its type and place."
    ),
    _custom("OutOfTime", 3, "Batches have run out of time for 15 minutes: lower BATCH_SIZE or raise the timeout."),
    _custom(
        "ReconcilerSweepRequests",
        1,
        "The reconciler could not have a discarded batch's records (no payload, object gone or denied) and asked the "
        "sweep for an urgent pass: follow it with `python -m tools.backfill urgent` or `status` (its estimated end).",
        ONE_MINUTE,
    ),
    _custom(
        "ReconcilerFailed",
        1,
        "A reconciler message failed (it comes back after a doubling delay, then goes to the dead-letter queue): "
        "read the reconciler's summary line.",
    ),
    Alarm(
        "ReconcilerErrors",
        LAMBDA,
        "Errors",
        (("FunctionName", RECONCILER_FUNCTION),),
        "Sum",
        1,
        1,
        "The reconciler raised (timeout, crash, missing permission): its message comes back later. Read its log.",
        ONE_MINUTE,
    ),
    Alarm(
        "FailureQueueOldestMessage",
        SQS,
        "ApproximateAgeOfOldestMessage",
        (("QueueName", FAILURE_QUEUE),),
        "Maximum",
        OLDEST_MESSAGE_AGE_SECONDS,
        1,
        "A discarded batch has waited over a minute in the on-failure queue, visible or pushed back: the reconciler "
        "is failing or not running. Read its errors and ReconcilerFailed.",
        ONE_MINUTE,
    ),
    _custom(
        "SweepPassOverdue",
        1,
        "The sweep's pass is older than 1.5 x SWEEP_PERIOD_HOURS: drift may go unfound longer than the bound. Read the "
        "'sweep run' lines (rate, percent): raise SWEEP_READ_UNITS or the capacity fraction, or look for failed runs.",
        ONE_MINUTE,
    ),
    _custom(
        "SweepUrgentOverdue",
        1,
        "An urgent request is older than its estimate (two passes at the urgent rates): the sweep is throttled, "
        "failing or not running. Read its 'sweep run' and 'sweep failed' lines and SweepRunFailed.",
        ONE_MINUTE,
    ),
    _custom(
        "SweepRunFailed",
        1,
        "A sweep run failed (its table, its role, throttling past retries): the pass did not advance. Read its "
        "'sweep failed' line (the error's code); the next scheduled run resumes from the last page kept.",
        ONE_MINUTE,
    ),
    Alarm(
        "SweepErrors",
        LAMBDA,
        "Errors",
        (("FunctionName", SWEEP_FUNCTION),),
        "Sum",
        1,
        1,
        "A sweep run raised or timed out: read its log group. The next scheduled run resumes from the last page kept.",
        ONE_MINUTE,
    ),
    _custom(
        "SweepStateWriteErrors",
        1,
        "S3 refused a write of the sweep's state (sweep/state.json in the on-failure bucket) for another reason than "
        "a lost race: check the sweep role's s3:PutObject and s3:GetObject on it, the bucket and its policy.",
        ONE_MINUTE,
    ),
    _custom(
        "AccessDenied",
        1,
        "DynamoDB denied a write (the role lacks dynamodb:PartiQLUpdate, an SCP or a permissions boundary): the items "
        "are retried and stay wrong until IAM is fixed. Check the function's policy file and the account's guardrails.",
        ONE_MINUTE,
    ),
    _custom(
        "FlagInKey",
        1,
        "FLAG_ATTRIBUTE names a key attribute of the table: the handler can never write the flag. Set the stage's "
        "FLAG_ATTRIBUTE to a non-key attribute and deploy again.",
        ONE_MINUTE,
    ),
    _custom(
        "ReconcilerUnusable",
        1,
        "The reconciler received a message it can't use (not an S3 notification of an on-failure object, not an "
        "on-failure record): it was logged and dropped. Read its line; something else sends to the failure queue.",
        ONE_MINUTE,
    ),
)
