"""`python -m tools.stage status`: what a stage has deployed, at a glance, against what it should have.

Reads either path: `chalice deploy`'s .chalice/deployed/<stage>.json, or a CloudFormation stack (--stack-name).
Prints the mapping's state and each failure-handling setting against tools/failure_handling.py, filter included
(drift: e.g. a mapping a later `chalice deploy` recreated without FunctionResponseTypes or destination), the stream's
open shards x ParallelizationFactor against the handler's concurrency (tools/sizing.py), the iterator age, both
queues' depths, the alarms in ALARM, the reconciler's event source (reporting batch item failures, as its function
answers), its last outcome and newest line, the sweep's pass (from its state
object) and each function's log group. Exit status 1 on
drift, a stream the handler can't cover, an alarm or messages waiting; 2, in one line, when nothing is deployed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.exceptions import ClientError

from chalicelib.attributes import attribute_conflict
from chalicelib.config import Settings
from chalicelib.records import table_name_from_stream_arn
from chalicelib.runtime import METRICS_NAMESPACE
from tools import alarms, failure_handling, sizing
from tools.arns import stage_stream_arn
from tools.cloudwatch_reads import latest_datapoint, newest_line
from tools.deployment import Deployment, from_chalice_deploy, from_stack
from tools.project import HANDLER, RECONCILER, load_config, stage_variables
from tools.stage_resources import failure_destination_arn
from tools.sweep_view import sweep_line

RECONCILER_METRICS = ("ReconcilerMessages", "ReconcilerItemsFixed", "ReconcilerFailed", "ReconcilerSweepRequests")
RECONCILER_LINE = "reconciler message"
FIXES = {"FilterCriteria": " (Lambda may drop records the handler needs: run apply-failure-handling)"}
LABEL_WIDTH = 18


@dataclass
class Status:
    """The lines to print and the problems that make the exit status non-zero."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, label: str, text: str, problem: str | None = None) -> None:
        """One line of output; with `problem`, also a reason for exit status 1."""
        self.lines.append(f"{label:<{LABEL_WIDTH}}{text}")
        if problem:
            self.problems.append(problem)


def normalized(key: str, value: Any) -> Any:
    """A mapping setting in a comparable form: filter patterns parsed, absent lists and dicts empty."""
    if key == "FilterCriteria":
        return sorted(json.dumps(json.loads(f["Pattern"]), sort_keys=True) for f in (value or {}).get("Filters", []))
    if key in ("FunctionResponseTypes",):
        return sorted(value or [])
    if key in ("DestinationConfig", "MetricsConfig"):
        return value or {}
    return value


def mapping_drift(actual: dict[str, Any], expected: dict[str, Any]) -> list[tuple[str, Any, Any, bool]]:
    """(setting, expected, actual, same) for every failure-handling setting of the mapping."""
    rows = []
    for key, want in expected.items():
        got = actual.get(key)
        if key == "DestinationConfig":
            want = (want.get("OnFailure") or {}).get("Destination")
            got = ((got or {}).get("OnFailure") or {}).get("Destination")
        rows.append((key, want, got, normalized(key, want) == normalized(key, got)))
    return rows


def queue_depth(sqs: Any, name: str) -> tuple[str | None, int, int]:
    """(ARN, visible, in flight) of a queue by name; (None, 0, 0) when it doesn't exist."""
    if not name:
        return None, 0, 0
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError:
        return None, 0, 0
    names = ["QueueArn", "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return (
        attributes["QueueArn"],
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


def check_mapping(
    status: Status, session: Any, deployment: Deployment, failure_queue_arn: str | None, factor: int
) -> dict[str, Any] | None:
    """The mapping's state and settings, and the function's partial-failure mode, against what they should be; the
    mapping, or None when there is none."""
    lambda_client = session.client("lambda")
    if not deployment.mapping_uuid:
        status.add("mapping", "none found", "drift: no event source mapping")
        return None
    mapping = lambda_client.get_event_source_mapping(UUID=deployment.mapping_uuid)
    state = mapping.get("State")
    status.add(
        "mapping",
        f"{deployment.mapping_uuid}  {state}",
        None if state == "Enabled" else f"drift: mapping {state}",
    )
    expected = failure_handling.mapping_failure_handling(failure_queue_arn, factor)
    for key, want, got, same in mapping_drift(mapping, expected):
        shown = json.dumps(normalized(key, got)) if key == "FilterCriteria" else json.dumps(got)
        text = f"  {key:<28}{shown}" + ("" if same else f"  DRIFT (want {json.dumps(normalized(key, want))})")
        status.add("", text, None if same else f"drift: {key}" + FIXES.get(key, ""))
    check_partial_failures(status, lambda_client, "function", deployment.function_name, mapping)
    return mapping


def check_partial_failures(
    status: Status, lambda_client: Any, role: str, function_name: str, mapping: dict[str, Any], label: str | None = None
) -> None:
    """The function answers with partial batch responses exactly when its mapping reports them, and it does (on a
    line of its own, or indented under `label`'s)."""
    variables = lambda_client.get_function_configuration(FunctionName=function_name)
    partial = (variables.get("Environment") or {}).get("Variables", {}).get("REPORT_BATCH_ITEM_FAILURES", "")
    reports = failure_handling.REPORT_BATCH_ITEM_FAILURES in (mapping.get("FunctionResponseTypes") or [])
    same = (partial == "true") == reports and reports
    status.add(
        role if label is None else label,
        ("" if label is None else "  ")
        + f"{function_name}  REPORT_BATCH_ITEM_FAILURES={partial or '(unset)'}"
        + ("" if same else "  DRIFT"),
        None if same else f"drift: {role} REPORT_BATCH_ITEM_FAILURES",
    )


def check_reconciler_mapping(status: Status, lambda_client: Any, deployment: Deployment) -> None:
    """The reconciler's SQS event source: Enabled, reporting batch item failures, its function answering so."""
    if not (deployment.reconciler_name and deployment.reconciler_mapping_uuid):
        status.add("reconciler", "no function or no event source found", "drift: no reconciler event source")
        return
    mapping = lambda_client.get_event_source_mapping(UUID=deployment.reconciler_mapping_uuid)
    state = mapping.get("State")
    types = normalized("FunctionResponseTypes", mapping.get("FunctionResponseTypes"))
    want = normalized("FunctionResponseTypes", failure_handling.RECONCILER_MAPPING["FunctionResponseTypes"])
    drift = [f"drift: reconciler mapping {state}"] if state != "Enabled" else []
    drift += ["drift: reconciler FunctionResponseTypes"] if types != want else []
    status.add(
        "reconciler",
        f"{deployment.reconciler_mapping_uuid}  {state}  FunctionResponseTypes {json.dumps(types)}"
        + ("  DRIFT" if drift else ""),
        "; ".join(drift) or None,
    )
    check_partial_failures(status, lambda_client, "reconciler", deployment.reconciler_name, mapping, label="")


def check_sizing(status: Status, session: Any, deployment: Deployment, mapping: dict[str, Any], stage: str) -> None:
    """The stream's open shards x the mapping's factor against the handler's concurrency."""
    shards = sizing.open_shards(session.client("dynamodbstreams"), mapping["EventSourceArn"])
    factor = int(mapping.get("ParallelizationFactor") or 1)
    status.add("stream", f"{shards} open shards x ParallelizationFactor {factor} = {shards * factor} at once")
    concurrency = sizing.handler_concurrency(session.client("lambda"), deployment.function_name)
    if concurrency.reserved:
        text = f"{HANDLER} reserves {concurrency.limit}"
    elif concurrency.limit is None:
        text = f"unreserved; the account's unreserved pool unknown ({concurrency.note})"
    else:
        text = f"unreserved: the account's {concurrency.limit} unreserved executions, shared with other functions"
    status.add("concurrency", text, sizing.concurrency_problem(shards, factor, concurrency, stage))


def check_table(status: Status, dynamodb: Any, stream_arn: str, settings: Settings) -> None:
    """The bound table's key against the stage's attribute names: a flag that is a key attribute is never written."""
    name = table_name_from_stream_arn(stream_arn)
    try:
        keys = [key["AttributeName"] for key in dynamodb.describe_table(TableName=name)["Table"]["KeySchema"]]
    except ClientError as error:
        status.add("table", f"{name}: not read ({error.response['Error']['Code']})")
        return
    conflict = attribute_conflict(keys, settings.attributes)
    shown = f"{name}: key {', '.join(keys)}; e-mail in {settings.email_attribute}, flag in {settings.flag_attribute}"
    status.add("table", shown + ("  CONFLICT" if conflict else ""), conflict)


def check_queues(status: Status, sqs: Any, deployment: Deployment) -> None:
    """Both queues' depths."""
    for label, name in (("on-failure", deployment.failure_queue), ("dead-letter", deployment.dead_letter_queue)):
        arn, visible, in_flight = queue_depth(sqs, name)
        if arn is None:
            missing = f"drift: no {label} queue" if label == "on-failure" else None
            status.add(f"{label} queue", f"{name or '(none)'}: absent", missing)
            continue
        waiting = visible + in_flight
        status.add(
            f"{label} queue",
            f"{name}: {visible} visible, {in_flight} in flight" + ("  WAITING" if waiting else ""),
            f"messages waiting: {name}" if waiting else None,
        )


def check_alarms(status: Status, cloudwatch: Any, deployment: Deployment) -> None:
    """The stage's alarms: how many exist, which are in ALARM."""
    found = []
    for start in range(0, len(deployment.alarm_names), 100):
        found += cloudwatch.describe_alarms(AlarmNames=deployment.alarm_names[start : start + 100])["MetricAlarms"]
    firing = sorted(alarm["AlarmName"] for alarm in found if alarm["StateValue"] == "ALARM")
    missing = len(deployment.alarm_names) - len(found)
    status.add(
        "alarms",
        f"{len(found)} of {len(deployment.alarm_names)} present, {len(firing)} in ALARM"
        + (f": {', '.join(firing)}" if firing else ""),
        f"alarms in ALARM: {', '.join(firing)}" if firing else None,
    )
    if missing:
        status.problems.append(f"drift: {missing} alarm(s) missing (run apply-failure-handling)")


def check_reconciler(status: Status, session: Any, stage: str, deployment: Deployment) -> None:
    """The reconciler's last outcome: its metrics' latest datapoints, and its last summary line."""
    cloudwatch = session.client("cloudwatch")
    dimensions = alarms.custom_dimensions(stage)
    parts = []
    for metric in RECONCILER_METRICS:
        point = latest_datapoint(cloudwatch, METRICS_NAMESPACE, metric, dimensions, "Sum", 24)
        if point:
            parts.append(f"{metric} {point['Sum']:g} at {point['Timestamp']:%Y-%m-%d %H:%M}Z")
    status.add("", "  " + ("; ".join(parts) if parts else "no datapoints in the last 24 h"))
    newest = newest_line(session.client("logs"), deployment.log_groups.get(RECONCILER), RECONCILER_LINE)
    if newest:
        status.add("", f"  last line: {newest[:200]}")


def collect(session: Any, stage: str, stack_name: str | None = None) -> Status:
    """Everything `status` prints, and its problems."""
    config = load_config()
    app_name = config["app_name"]
    settings = Settings.from_environ(stage_variables(config, stage))
    factor = settings.parallelization_factor
    deployment = from_stack(session, stack_name) if stack_name else from_chalice_deploy(app_name, stage)
    status = Status()
    status.add("stage", f"{stage} from {deployment.source}")
    check_queues(status, session.client("sqs"), deployment)
    destination = failure_destination_arn(session, app_name, stage, stage_stream_arn(config, stage), stack_name)
    mapping = check_mapping(status, session, deployment, destination, factor)
    if mapping:
        check_sizing(status, session, deployment, mapping, stage)
    stream_arn = mapping["EventSourceArn"] if mapping else stage_stream_arn(config, stage)
    check_table(status, session.client("dynamodb"), stream_arn, settings)
    cloudwatch = session.client("cloudwatch")
    point = latest_datapoint(
        cloudwatch,
        "AWS/Lambda",
        "IteratorAge",
        [{"Name": "FunctionName", "Value": deployment.function_name}],
        "Maximum",
        1,
    )
    status.add(
        "iterator age",
        f"{point['Maximum'] / 1000:.1f} s at {point['Timestamp']:%H:%M}Z" if point else "no data in the last hour",
    )
    check_alarms(status, cloudwatch, deployment)
    check_reconciler_mapping(status, session.client("lambda"), deployment)
    check_reconciler(status, session, stage, deployment)
    status.add("sweep", sweep_line(session.client("s3"), destination))
    for function, group in deployment.log_groups.items():
        status.add("logs" if function == next(iter(deployment.log_groups)) else "", f"{function}: {group}")
    return status


def run_status(stage: str, stack_name: str | None = None) -> int:
    """Print the stage's status; 0 when all is well, 1 on drift, an alarm or messages waiting."""
    status = collect(boto3.session.Session(), stage, stack_name)
    for line in status.lines:
        print(line)
    if status.problems:
        print(f"{'verdict':<{LABEL_WIDTH}}NOT OK: {'; '.join(status.problems)}")
        return 1
    print(f"{'verdict':<{LABEL_WIDTH}}ok")
    return 0
