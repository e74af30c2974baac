"""The AWS calls around `chalice deploy` and `chalice delete`: bind a stage to a stream (turning it on), make the
stage's queues, give the deployed mapping its failure handling, alarms and dashboard, and delete the queues."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from typing import Any

import boto3

from chalicelib.config import Settings, backfill_failure_queue_name, dead_letter_queue_name, failure_queue_name
from tools import alarms, failure_handling
from tools.arns import split_stream_arn
from tools.policies import expected_policy, write_policies
from tools.project import (
    BACKFILL,
    CONFIG,
    DEPLOYED_DIR,
    HANDLER,
    RECONCILER,
    ROOT,
    load_config,
    require_stage,
    stage_variables,
    write_json,
)

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
            f"no table {table_name!r} in {dynamodb.meta.region_name} (check the name and AWS_REGION)"
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
    dynamodb_event); Chalice names them `<function>`, `<function>_role` and `<function>-dynamodb-event-source`."""
    record = DEPLOYED_DIR / f"{stage}.json"
    if not record.exists():
        raise ValueError(f"stage {stage!r} has no {record.relative_to(ROOT)}: run `chalice deploy --stage {stage}`")
    names = {function, f"{function}_role", f"{function}-dynamodb-event-source"}
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
        alarms.BACKFILL_FUNCTION: f"{app_name}-{stage}-{BACKFILL}",
        alarms.BACKFILL_FAILURE_QUEUE: backfill_failure_queue_name(app_name, stage),
        **alarms.service_targets(stage),
    }


def ensure_failure_queue(
    sqs: Any,
    name: str,
    retention_seconds: int = failure_handling.FAILURE_QUEUE_RETENTION_SECONDS,
    extra_attributes: dict[str, str] | None = None,
) -> str:
    """Create the encrypted, TLS-only queue (on-failure or its dead-letter queue), or find it and
    bring its attributes up to date; its ARN."""
    # Created bare, then set: CreateQueue refuses an existing queue whose attributes differ from the ones it is given.
    queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    attributes = {
        "SqsManagedSseEnabled": "true",
        "MessageRetentionPeriod": str(retention_seconds),
        "Policy": json.dumps(failure_handling.https_only_queue_policy(queue_arn)),
        **(extra_attributes or {}),
    }
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes=attributes)
    return queue_arn


def ensure_reconciler_queues(sqs: Any, app_name: str, stage: str) -> tuple[str, str]:
    """The on-failure queue, made the reconciler's event source (visibility timeout, redrive to its dead-letter
    queue), and the dead-letter queue; (queue ARN, dead-letter queue ARN)."""
    dead_letter_arn = ensure_failure_queue(
        sqs, dead_letter_queue_name(app_name, stage), failure_handling.DEAD_LETTER_RETENTION_SECONDS
    )
    queue_arn = ensure_failure_queue(
        sqs,
        failure_queue_name(app_name, stage),
        extra_attributes={
            "VisibilityTimeout": str(failure_handling.FAILURE_QUEUE_VISIBILITY_TIMEOUT_SECONDS),
            "RedrivePolicy": json.dumps(failure_handling.redrive_policy(dead_letter_arn)),
        },
    )
    return queue_arn, dead_letter_arn


def ensure_stage_queues(stage: str) -> tuple[str, str]:
    """Make the stage's on-failure queue and dead-letter queue (idempotent); their ARNs."""
    config = load_config()
    stage_variables(config, stage)
    return ensure_reconciler_queues(boto3.session.Session().client("sqs"), config["app_name"], stage)


def apply_failure_handling(stage: str, alarm_topic_arn: str = "") -> str:
    """Give a `chalice deploy`ed stage the packaged path's failure handling, alarms and dashboard; the queue's ARN.

    The on-failure queue and its dead-letter queue are made sure of again (`enable-stream` or `queues` made them
    before the first deploy, since the reconciler's SQS event source names the queue).

    The queue's ARN goes into the stage (FAILURE_QUEUE_ARN) so the policy file, which every `chalice deploy`
    re-attaches, keeps the send permission. REPORT_BATCH_ITEM_FAILURES is switched on in the deployed function only,
    once the mapping reports partial failures: the stage keeps it off, so a later `chalice deploy` (which may
    create a new mapping without FunctionResponseTypes) falls back to raising, never to answers nobody reads.
    """
    config = load_config()
    variables = stage_variables(config, stage)
    deployed = deployed_resources(stage)
    session = boto3.session.Session()
    queue_arn, _ = ensure_reconciler_queues(session.client("sqs"), config["app_name"], stage)
    variables["FAILURE_QUEUE_ARN"] = queue_arn
    write_json(CONFIG, config)
    write_policies(config)
    role_name = deployed["iam_role"]["role_name"]
    # Chalice names the role's inline policy after the role.
    session.client("iam").put_role_policy(
        RoleName=role_name, PolicyName=role_name, PolicyDocument=json.dumps(expected_policy(config, stage))
    )
    lambda_client = session.client("lambda")
    uuid = deployed["dynamodb_event"]["event_uuid"]
    factor = Settings.from_environ(variables).parallelization_factor
    settings = failure_handling.mapping_failure_handling(queue_arn, factor)
    failure_handling.update_mapping(lambda_client, uuid, settings)
    failure_handling.wait_for_partial_failures(lambda_client, uuid)
    function_arn = deployed["lambda_function"]["lambda_arn"]
    environment = lambda_client.get_function_configuration(FunctionName=function_arn)["Environment"]["Variables"]
    lambda_client.update_function_configuration(
        FunctionName=function_arn, Environment={"Variables": {**environment, **failure_handling.DEPLOYED_FUNCTION}}
    )
    prefix = f"{config['app_name']}-{stage}"
    targets = monitoring_targets(config["app_name"], stage, function_arn.rsplit(":", 1)[1])
    cloudwatch = session.client("cloudwatch")
    alarms.put_alarms(cloudwatch, prefix, targets, alarm_topic_arn)
    alarms.put_dashboard(cloudwatch, prefix, targets, session.region_name)
    return queue_arn


def stage_queues(sqs: Any, app_name: str, stage: str) -> list[str]:
    """URLs of the stage's queues that exist: the on-failure queue and its dead-letter queue (`chalice delete`
    leaves them, as it did not create them)."""
    urls = []
    names = (failure_queue_name(app_name, stage), dead_letter_queue_name(app_name, stage))
    for name in names:
        with contextlib.suppress(sqs.exceptions.QueueDoesNotExist):
            urls.append(sqs.get_queue_url(QueueName=name)["QueueUrl"])
    return urls


def cleanup(stage: str, confirm: Callable[[list[str]], bool]) -> list[str]:
    """After `chalice delete`: delete the stage's queues if `confirm(urls)` says so; the URLs deleted."""
    require_stage(stage)
    sqs = boto3.session.Session().client("sqs")
    urls = stage_queues(sqs, load_config()["app_name"], stage)
    if not urls or not confirm(urls):
        return []
    for url in urls:
        sqs.delete_queue(QueueUrl=url)
    return urls


def ask(urls: list[str], assume_yes: bool) -> bool:
    """List the queues and ask before deleting them (without a terminal, only --yes deletes)."""
    print("the stage's queues (`chalice delete` leaves them; messages in them are lost with them):")
    for url in urls:
        print(f"  {url}")
    if assume_yes:
        return True
    if not sys.stdin.isatty():
        print("not deleted: run again with --yes to delete them")
        return False
    try:
        return input("delete them? [y/N] ").strip().lower() in ("y", "yes")
    except (EOFError, KeyboardInterrupt):
        print()
        return False
