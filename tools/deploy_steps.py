"""The AWS calls around `chalice deploy` and `chalice delete`: bind a stage to a stream (turning it on), make the
stage's queues and on-failure bucket, give the deployed mapping its failure handling, alarms and dashboard, and
delete everything the steps made."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import boto3

from chalicelib.config import Settings, dead_letter_queue_name, failure_queue_name
from tools import alarms, failure_handling
from tools.arns import split_stream_arn, stage_stream_arn
from tools.policies import write_policies
from tools.project import (
    CONFIG,
    DEPLOYED_DIR,
    HANDLER,
    RECONCILER,
    ROOT,
    SWEEP,
    load_config,
    require_stage,
    stage_variables,
    write_json,
)
from tools.stage_resources import (
    StageResources,
    ask,
    delete_leftovers,
    ensure_failure_queue,
    ensure_reconciler_queues,
    ensure_stage_resources,
    find_leftovers,
)

# Re-exported: tools.stage and localdev import them from here.
__all__ = [
    "STREAM_VIEW_TYPE",
    "apply_failure_handling",
    "ask",
    "bind",
    "cleanup",
    "deployed_resources",
    "enable_stream",
    "ensure_failure_queue",
    "ensure_reconciler_queues",
    "ensure_stage_queues",
    "monitoring_targets",
    "stage_queues",
]

STREAM_VIEW_TYPE = "NEW_AND_OLD_IMAGES"


def bind(stage: str, stream_arn: str) -> None:
    """Set a stage's STREAM_ARN (and STAGE) in .chalice/config.json and regenerate the policies."""
    split_stream_arn(stream_arn)
    config = load_config()
    stage_variables(config, stage)["STREAM_ARN"] = stream_arn
    write_json(CONFIG, config)
    write_policies(config)


def enable_stream(stage: str, table_name: str) -> str:
    """Turn on the table's stream (NEW_AND_OLD_IMAGES) unless it is on already, bind the stage to it; its ARN."""
    stage_variables(load_config(), stage)
    dynamodb = boto3.session.Session().client("dynamodb")
    try:
        table = dynamodb.describe_table(TableName=table_name)["Table"]
    except dynamodb.exceptions.ResourceNotFoundException:
        raise ValueError(
            f"no table {table_name!r} in {dynamodb.meta.region_name} (check the name, and AWS_DEFAULT_REGION or "
            "your profile's region)"
        ) from None
    stream = table.get("StreamSpecification", {})
    if stream.get("StreamEnabled"):
        if stream["StreamViewType"] != STREAM_VIEW_TYPE:
            # Changing the view type means disabling the stream (its unread records are lost): never done for you.
            print(
                f"note: the stream is {stream['StreamViewType']}; the handler reads each changed item back "
                f"(one read per item), where {STREAM_VIEW_TYPE} would need none",
                file=sys.stderr,
            )
        stream_arn = table["LatestStreamArn"]
    else:
        specification = {"StreamEnabled": True, "StreamViewType": STREAM_VIEW_TYPE}
        updated = dynamodb.update_table(TableName=table_name, StreamSpecification=specification)
        stream_arn = updated["TableDescription"]["LatestStreamArn"]
        dynamodb.get_waiter("table_exists").wait(TableName=table_name, WaiterConfig={"Delay": 2, "MaxAttempts": 150})
    bind(stage, stream_arn)
    # The reconciler's event source names the on-failure queue: it must exist before the first `chalice deploy`.
    ensure_stage_queues(stage)
    return stream_arn


def deployed_resources(stage: str, function: str = HANDLER) -> dict[str, dict[str, Any]]:
    """What `chalice deploy` recorded for one of the stage's functions, by resource type (iam_role, lambda_function,
    dynamodb_event, sqs_event); Chalice names them `<function>`, `<function>_role` and
    `<function>-dynamodb-event-source` or `<function>-sqs-event-source`."""
    record = DEPLOYED_DIR / f"{stage}.json"
    if not record.exists():
        raise ValueError(f"stage {stage!r} has no {record.relative_to(ROOT)}: run `chalice deploy --stage {stage}`")
    names = {function, f"{function}_role", f"{function}-dynamodb-event-source", f"{function}-sqs-event-source"}
    return {
        resource["resource_type"]: resource
        for resource in json.loads(record.read_text())["resources"]
        if resource["name"] in names
    }


def monitoring_targets(app_name: str, stage: str, function_name: str) -> dict[str, str]:
    """The alarms' dimension values on the `chalice deploy` path."""
    return {
        alarms.FUNCTION: function_name,
        alarms.FAILURE_QUEUE: failure_queue_name(app_name, stage),
        alarms.DEAD_LETTER_QUEUE: dead_letter_queue_name(app_name, stage),
        alarms.RECONCILER_FUNCTION: f"{app_name}-{stage}-{RECONCILER}",
        alarms.SWEEP_FUNCTION: f"{app_name}-{stage}-{SWEEP}",
        **alarms.service_targets(stage),
    }


def bound_stream_arn(config: dict[str, Any], stage: str) -> str:
    """The stage's STREAM_ARN; ValueError pointing at bind when it has none (its resources are named from it)."""
    stage_variables(config, stage)
    stream_arn = config["stages"][stage]["environment_variables"].get("STREAM_ARN", "")
    if not stream_arn:
        raise ValueError(f"stage {stage!r} has no STREAM_ARN: run enable-stream or bind first")
    return stream_arn


def ensure_stage_queues(stage: str) -> StageResources:
    """Make the stage's queues and on-failure bucket (idempotent), in its stream's account and region."""
    config = load_config()
    stream_arn = bound_stream_arn(config, stage)
    variables = config["stages"][stage]["environment_variables"]
    return ensure_stage_resources(boto3.session.Session(), config["app_name"], stage, stream_arn, variables)


def apply_failure_handling(stage: str, alarm_topic_arn: str = "") -> StageResources:
    """Give a `chalice deploy`ed stage the packaged path's failure handling, alarms and dashboard; what it made sure of.

    The queues and the bucket are made sure of again (`enable-stream` or `queues` made them before the first deploy,
    since the reconciler's SQS event source names the queue). The policy files, which every `chalice deploy`
    attaches, already grant on them: they are derived from the stage's STREAM_ARN.

    REPORT_BATCH_ITEM_FAILURES is switched on in each deployed function (the stream handler, the reconciler) only once
    its mapping reports partial failures: the stage keeps it off, so a later `chalice deploy` (which resets the
    functions' environment, and may create a new mapping without FunctionResponseTypes) falls back to raising, never
    to answers nobody reads.
    """
    config = load_config()
    variables = stage_variables(config, stage)
    deployed = deployed_resources(stage)
    reconciler = deployed_resources(stage, RECONCILER)
    for function, resources, event in ((HANDLER, deployed, "dynamodb_event"), (RECONCILER, reconciler, "sqs_event")):
        if not {"lambda_function", event} <= set(resources):  # checked before anything is changed
            raise ValueError(
                f"stage {stage!r}'s deploy record lists no {function} with its event source: run "
                f"`chalice deploy --stage {stage}` first"
            )
    stream_arn = bound_stream_arn(config, stage)
    session = boto3.session.Session()
    made = ensure_stage_resources(session, config["app_name"], stage, stream_arn, variables)
    lambda_client = session.client("lambda")
    factor = Settings.from_environ(variables).parallelization_factor
    for resources, event, settings in (
        (deployed, "dynamodb_event", failure_handling.mapping_failure_handling(made.bucket_arn, factor)),
        (reconciler, "sqs_event", failure_handling.RECONCILER_MAPPING),
    ):
        report_partial_failures(lambda_client, resources[event]["event_uuid"], resources["lambda_function"], settings)
    function_arn = deployed["lambda_function"]["lambda_arn"]
    prefix = f"{config['app_name']}-{stage}"
    targets = monitoring_targets(config["app_name"], stage, function_arn.rsplit(":", 1)[1])
    cloudwatch = session.client("cloudwatch")
    alarms.put_alarms(cloudwatch, prefix, targets, alarm_topic_arn)
    alarms.put_dashboard(cloudwatch, prefix, targets, session.region_name)
    return made


def report_partial_failures(lambda_client: Any, uuid: str, function: dict[str, Any], settings: dict[str, Any]) -> None:
    """Give one mapping its settings, wait until it reports batch item failures, then switch its function's
    REPORT_BATCH_ITEM_FAILURES on (keeping the rest of its environment)."""
    failure_handling.update_mapping(lambda_client, uuid, settings)
    failure_handling.wait_for_partial_failures(lambda_client, uuid)
    function_arn = function["lambda_arn"]
    environment = lambda_client.get_function_configuration(FunctionName=function_arn)["Environment"]["Variables"]
    lambda_client.update_function_configuration(
        FunctionName=function_arn, Environment={"Variables": {**environment, **failure_handling.DEPLOYED_FUNCTION}}
    )


def stage_queues(stage: str) -> list[str]:
    """What of the stage's resources exists, one line each (queues, bucket, alarms, dashboard)."""
    config = load_config()
    session = boto3.session.Session()
    return find_leftovers(session, config["app_name"], stage, stage_stream_arn(config, stage)).lines()


def cleanup(stage: str, confirm: Callable[[list[str]], bool]) -> list[str]:
    """After `chalice delete`: delete what the stage's deploy steps made (queues, the bucket with every object
    version, alarms, dashboard) if `confirm(lines)` says so; the lines deleted. ValueError while the stage is
    still deployed (its mapping would lose its destination)."""
    require_stage(stage)
    record = DEPLOYED_DIR / f"{stage}.json"
    if record.exists() and json.loads(record.read_text()).get("resources"):
        raise ValueError(f"stage {stage!r} is still deployed: run `chalice delete --stage {stage}` first")
    config = load_config()
    stream_arn = stage_stream_arn(config, stage)
    session = boto3.session.Session()
    leftovers = find_leftovers(session, config["app_name"], stage, stream_arn)
    lines = leftovers.lines()
    if not lines or not confirm(lines):
        return []
    delete_leftovers(session, leftovers, split_stream_arn(stream_arn)[1])
    return lines
