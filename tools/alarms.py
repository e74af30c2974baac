"""The stage's CloudWatch alarms and dashboard: one definition for both deploy paths.

`tools/merge_template.py` renders them as CloudFormation resources, `python -m tools.stage apply-failure-handling`
creates them with put_metric_alarm and put_dashboard. Each alarm names its dimensions by role (the handler function,
the on-failure queue, its dead-letter queue, the service, the stage); each path says what the roles are.

The custom metrics carry exactly the dimensions the handler's Powertools Metrics emit: `service` (Metrics(service=
SERVICE)) and `stage` (set_default_dimensions(stage=...)), chalicelib/runtime.py. An alarm with one dimension more or
less watches a metric nobody writes and never fires.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from chalicelib.runtime import METRICS_NAMESPACE, SERVICE
from tools.failure_handling import MAXIMUM_RECORD_AGE_IN_SECONDS, STREAM_RETENTION_SECONDS

# Dimension roles: what each path fills in.
FUNCTION = "function"
FAILURE_QUEUE = "failure_queue"
DEAD_LETTER_QUEUE = "dead_letter_queue"
STAGE = "stage"
LAMBDA = "AWS/Lambda"
SQS = "AWS/SQS"
FIVE_MINUTES = 300
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


def _custom(key: str, evaluation_periods: int, meaning: str) -> Alarm:
    return Alarm(key, METRICS_NAMESPACE, key, CUSTOM_DIMENSIONS, "Sum", 1, evaluation_periods, meaning)


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
        "Records are discarded to the on-failure queue at 6 hours. Look at Errors, Throttles and the summary lines.",
    ),
    Alarm(
        "FailureQueueMessages",
        SQS,
        "ApproximateNumberOfMessagesVisible",
        (("QueueName", FAILURE_QUEUE),),
        "Maximum",
        1,
        3,
        "Discarded batches have waited 15 minutes in the on-failure queue: the reconciler is not draining it. "
        "Check the reconciler's errors and ReconcilerFailed; the stream keeps the records for 24 hours.",
    ),
    Alarm(
        "DeadLetterQueueMessages",
        SQS,
        "ApproximateNumberOfMessagesVisible",
        (("QueueName", DEAD_LETTER_QUEUE),),
        "Maximum",
        1,
        1,
        "The reconciler gave up on a discarded batch. Read the message, fix the cause, redrive it, or run a backfill.",
    ),
    Alarm(
        "DestinationDeliveryFailures",
        LAMBDA,
        "DestinationDeliveryFailures",
        FUNCTION_DIMENSIONS,
        "Sum",
        1,
        1,
        "Lambda discarded a batch and could not send its pointer to the on-failure queue: those changes are lost to "
        "the reconciler. Check the role's sqs:SendMessage and the queue, then run a backfill.",
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
        "Throttled batches wait until the 6-hour record age, then go to the on-failure queue.",
    ),
    _custom("Failed", 3, "Item writes have failed for 15 minutes (DynamoDB errors, throttling); they are retried."),
    _custom("Rejected", 1, "DynamoDB refused an item outright; not retried. The summary line names the records."),
    _custom("Malformed", 1, "A stream record could not be decoded; not retried. The summary line names the records."),
    _custom(
        "BatchErrors", 1, "The handler hit an unexpected exception (a bug); the summary line names its type and place."
    ),
    _custom("OutOfTime", 3, "Batches have run out of time for 15 minutes: lower BATCH_SIZE or raise the timeout."),
    _custom(
        "ReconcilerBackfillFallbacks",
        1,
        "A discarded batch's stream range was gone, so the reconciler started a backfill: watch it finish.",
    ),
    _custom(
        "ReconcilerFailed",
        3,
        "Reconciler messages have failed for 15 minutes; retried, then dead-lettered.",
    ),
    _custom(
        "AuditDrift",
        1,
        "The scheduled audit found items whose IsPersonalEmail is not what their Email gives, and fixed what it "
        "could: something lets items drift. Read its 'audit' lines (the kinds), then docs/operations.md.",
    ),
)


def alarms_for(targets: dict[str, Any]) -> list[Alarm]:
    """The alarms whose every dimension has a value on this path (a path without a queue skips its alarm)."""
    return [alarm for alarm in ALARMS if all(targets.get(role) is not None for _, role in alarm.dimensions)]


def alarm_name(prefix: str, alarm: Alarm) -> str:
    """`<prefix>-<key>`: the deploy path's prefix is `<app>-<stage>`, the stack's its name."""
    return f"{prefix}-{alarm.key}"


def put_alarms(cloudwatch: Any, prefix: str, targets: dict[str, Any], topic_arn: str = "") -> list[str]:
    """Create or update every alarm on the `chalice deploy` path; their names."""
    names = []
    actions = [topic_arn] if topic_arn else []
    for alarm in alarms_for(targets):
        name = alarm_name(prefix, alarm)
        cloudwatch.put_metric_alarm(
            AlarmName=name,
            Dimensions=alarm.resolved_dimensions(targets),
            AlarmActions=actions,
            OKActions=actions,
            **alarm.settings(),
        )
        names.append(name)
    return names


def cloudformation_alarms(
    targets: dict[str, Any], topic_condition: str, topic_parameter: str
) -> dict[str, dict[str, Any]]:
    """The alarms as AWS::CloudWatch::Alarm resources; actions on the topic parameter when its condition holds."""
    actions = {"Fn::If": [topic_condition, [{"Ref": topic_parameter}], {"Ref": "AWS::NoValue"}]}
    return {
        alarm.logical_id: {
            "Type": "AWS::CloudWatch::Alarm",
            "Properties": {
                "AlarmName": {"Fn::Sub": f"${{AWS::StackName}}-{alarm.key}"},
                "Dimensions": alarm.resolved_dimensions(targets),
                "AlarmActions": actions,
                "OKActions": actions,
                **alarm.settings(),
            },
        }
        for alarm in alarms_for(targets)
    }


def dashboard_body(targets: dict[str, str], region: str) -> dict[str, Any]:
    """The dashboard: one graph per alarm's metric with its threshold, two graphs to a row."""
    widgets = []
    for index, alarm in enumerate(alarms_for(targets)):
        dimensions = [value for name, role in alarm.dimensions for value in (name, targets[role])]
        widgets.append(
            {
                "type": "metric",
                "x": 12 * (index % 2),
                "y": 6 * (index // 2),
                "width": 12,
                "height": 6,
                "properties": {
                    "title": alarm.key,
                    "region": region,
                    "metrics": [[alarm.namespace, alarm.metric, *dimensions]],
                    "stat": alarm.statistic,
                    "period": alarm.period,
                    "annotations": {"horizontal": [{"label": "alarm", "value": alarm.threshold}]},
                },
            }
        )
    return {"widgets": widgets}


def put_dashboard(cloudwatch: Any, name: str, targets: dict[str, str], region: str) -> str:
    """Create or replace the `chalice deploy` path's dashboard; its name."""
    cloudwatch.put_dashboard(DashboardName=name, DashboardBody=json.dumps(dashboard_body(targets, region)))
    return name


def service_targets(stage: str) -> dict[str, str]:
    """The custom metrics' dimension values for a stage."""
    return {"service": SERVICE, STAGE: stage}


def custom_dimensions(stage: str) -> list[dict[str, str]]:
    """The dimensions of the handler's and the reconciler's own metrics for a stage."""
    targets = service_targets(stage)
    return [{"Name": name, "Value": targets[role]} for name, role in CUSTOM_DIMENSIONS]
