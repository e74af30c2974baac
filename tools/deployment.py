"""Where a stage's deployed parts are, read from either deploy path: `chalice deploy`'s
.chalice/deployed/<stage>.json, or a CloudFormation stack. `status` reads them; nothing here changes AWS."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from tools import alarms
from tools.deploy_steps import monitoring_targets
from tools.merge_template import DEAD_LETTER_QUEUE, FUNCTION, QUEUE
from tools.project import DEPLOYED_DIR, HANDLER, RECONCILER, ROOT, SWEEP
from tools.template_parts import RECONCILER_FUNCTION, SWEEP_FUNCTION

# The app's functions by Chalice name, with the logical ids `chalice package` gives them.
LOGICAL_IDS = {
    HANDLER: FUNCTION,
    RECONCILER: RECONCILER_FUNCTION,
    SWEEP: SWEEP_FUNCTION,
}


class NotDeployed(ValueError):
    """The stage has no stream handler deployed (never deployed, or removed by `chalice delete`)."""


@dataclass
class Deployment:
    """Where a stage's parts are: names and ids read from either deploy path."""

    source: str
    function_name: str
    mapping_uuid: str | None
    """The stream handler's event source mapping."""
    failure_queue: str
    dead_letter_queue: str
    alarm_names: list[str]
    log_groups: dict[str, str] = field(default_factory=dict)
    """Each of the app's functions (Chalice name) by the log group it really writes to."""
    reconciler_name: str | None = None
    reconciler_mapping_uuid: str | None = None
    """The reconciler's SQS event source mapping."""


def not_deployed(stage: str, why: str) -> NotDeployed:
    """The one-line answer for a stage with nothing to report on, and what to run."""
    return NotDeployed(
        f"stage {stage} has no stream handler deployed ({why}): run `chalice deploy --stage {stage}`, then "
        f"`python -m tools.stage apply-failure-handling --stage {stage}`"
    )


def from_chalice_deploy(app_name: str, stage: str) -> Deployment:
    """The stage's parts as `chalice deploy` recorded them and tools.stage names them; NotDeployed without AWS
    when the record has no handler (after `chalice delete`, or before the first deploy)."""
    record = DEPLOYED_DIR / f"{stage}.json"
    if not record.exists():
        raise not_deployed(stage, f"no {record.relative_to(ROOT)}")
    resources = {r.get("name"): r for r in json.loads(record.read_text()).get("resources", [])}
    handler = resources.get(HANDLER, {})
    if handler.get("resource_type") != "lambda_function":
        raise not_deployed(stage, f"{record.relative_to(ROOT)} lists no {HANDLER}: `chalice delete` removed it")
    function_name = handler["lambda_arn"].rsplit(":", 1)[1]
    targets = monitoring_targets(app_name, stage, function_name)
    prefix = f"{app_name}-{stage}"
    names = {function: f"{prefix}-{function}" for function in LOGICAL_IDS}
    return Deployment(
        source=f"chalice deploy (.chalice/deployed/{stage}.json)",
        function_name=function_name,
        mapping_uuid=resources.get(f"{HANDLER}-dynamodb-event-source", {}).get("event_uuid"),
        reconciler_name=names[RECONCILER] if RECONCILER in resources else None,
        reconciler_mapping_uuid=resources.get(f"{RECONCILER}-sqs-event-source", {}).get("event_uuid"),
        failure_queue=targets[alarms.FAILURE_QUEUE],
        dead_letter_queue=targets[alarms.DEAD_LETTER_QUEUE],
        alarm_names=[alarms.alarm_name(prefix, alarm) for alarm in alarms.alarms_for(targets)],
        # Chalice's functions log to Lambda's default group.
        log_groups={function: f"/aws/lambda/{name}" for function, name in names.items()},
    )


def mapping_by_source(lambda_client: Any, uuids: list[str], service: str) -> str | None:
    """The one of the stack's mappings whose source is a DynamoDB stream (`dynamodb`) or an SQS queue (`sqs`)."""
    for uuid in uuids:
        source = lambda_client.get_event_source_mapping(UUID=uuid).get("EventSourceArn", "")
        if f":{service}:" in source and (service != "dynamodb" or "/stream/" in source):
            return uuid
    return None


def real_log_group(lambda_client: Any, function_name: str, declared: str | None) -> str:
    """The log group a function writes to: its LoggingConfig, else the group the stack declares for it, else Lambda's
    default `/aws/lambda/<name>`."""
    try:
        configured = lambda_client.get_function_configuration(FunctionName=function_name).get("LoggingConfig") or {}
    except ClientError:
        configured = {}
    return configured.get("LogGroup") or declared or f"/aws/lambda/{function_name}"


def from_stack(session: Any, stack_name: str) -> Deployment:
    """The stage's parts as a CloudFormation stack made them (physical ids by logical id and type)."""
    listed = session.client("cloudformation").describe_stack_resources(StackName=stack_name)["StackResources"]
    resources = [r for r in listed if "LogicalResourceId" in r and "PhysicalResourceId" in r]
    physical = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in resources}
    if FUNCTION not in physical:
        raise NotDeployed(f"stack {stack_name} has no {FUNCTION}: is it this app's stack?")
    lambda_client = session.client("lambda")
    mappings = [r["PhysicalResourceId"] for r in resources if r["ResourceType"] == "AWS::Lambda::EventSourceMapping"]
    names = {function: physical[logical] for function, logical in LOGICAL_IDS.items() if logical in physical}
    return Deployment(
        source=f"CloudFormation stack {stack_name}",
        function_name=physical[FUNCTION],
        mapping_uuid=mapping_by_source(lambda_client, mappings, "dynamodb"),
        # A queue's physical id is its URL; the name is its last part.
        failure_queue=physical.get(QUEUE, "").rsplit("/", 1)[-1],
        dead_letter_queue=physical.get(DEAD_LETTER_QUEUE, "").rsplit("/", 1)[-1],
        alarm_names=[r["PhysicalResourceId"] for r in resources if r["ResourceType"] == "AWS::CloudWatch::Alarm"],
        # The merge template gives each function its own log group `<LogicalId>LogGroup`, named on the function.
        log_groups={
            function: real_log_group(lambda_client, name, physical.get(f"{LOGICAL_IDS[function]}LogGroup"))
            for function, name in names.items()
        },
        reconciler_name=names.get(RECONCILER),
        reconciler_mapping_uuid=mapping_by_source(lambda_client, mappings, "sqs"),
    )
