"""Stage configuration and the deploy steps around Chalice: bind a stage to a stream, derive its IAM policy, and
give the deployed event source mapping the failure handling Chalice can't set.

python -m tools.stage enable-stream --stage prod --table-name Users   # UpdateTable (NEW_AND_OLD_IMAGES), then bind
python -m tools.stage bind --stage dev --stream-arn arn:aws:dynamodb:...:table/Users/stream/2026-...
python -m tools.stage policies         # regenerate every .chalice/policy-<stage>.json
python -m tools.stage apply-failure-handling --stage prod [--alarm-topic-arn ARN]   # after `chalice deploy`: queue,
                                       # mapping settings, env, alarms and dashboard
python -m tools.stage status --stage prod [--stack-name STACK]   # what is deployed vs what it should be; exit 1 if not
python -m tools.stage merge-template   # regenerate deploy/merge-template.json from schema/users-table.json
python -m tools.stage package --stage prod [--create-table] out/   # `chalice package` with the merge template
python -m tools.stage cleanup --stage dev    # after `chalice delete`: the stage's SQS queues, which it leaves

python -m tools.stage queues --stage dev   # the on-failure queue and its dead-letter queue (before `chalice deploy`)

Each stage has three policy files: `policy-<stage>.json` for the stream handler, `policy-<stage>-backfill.json` for
the backfill function (`lambda_functions.backfill_segment` in the stage's config), so only the backfill can Scan, and
`policy-<stage>-reconciler.json` for the on-failure queue's consumer `reconcile_discarded_batches`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import boto3

from chalicelib.config import UNBOUND_STREAM_ARN, Settings, dead_letter_queue_name, failure_queue_name
from tools import alarms, failure_handling

ROOT = Path(__file__).resolve().parent.parent
CHALICE_DIR = ROOT / ".chalice"
CONFIG = CHALICE_DIR / "config.json"
DEPLOYED_DIR = CHALICE_DIR / "deployed"
HANDLER = "sync_is_personal_email"
BACKFILL = "backfill_segment"
RECONCILER = "reconcile_discarded_batches"
# The one action every function writes the flag with (the gateway's conditional write): each policy builder uses it.
TABLE_WRITE_ACTION = "dynamodb:PartiQLUpdate"
STREAM_VIEW_TYPE = "NEW_AND_OLD_IMAGES"
# What `chalice package` bundles, plus the project config: copied into a scratch project by `package`.
PACKAGED_PATHS = ("app.py", "chalicelib", "vendor", "requirements.txt")
LOG_WRITES = ["logs:CreateLogStream", "logs:PutLogEvents"]


PARTITIONS = ("aws", "aws-cn", "aws-us-gov")
REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}")
ACCOUNT = re.compile(r"[0-9]{12}")
TABLE_NAME = re.compile(r"[a-zA-Z0-9_.-]{3,255}")
STREAM_LABEL = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?")
ARN_SHAPE = "arn:aws:dynamodb:REGION:ACCOUNT:table/NAME/stream/LABEL"


def split_stream_arn(stream_arn: str) -> tuple[str, str, str, str]:
    """(partition, region, account, table name) of a DynamoDB stream ARN; ValueError naming the part that is wrong.

    As strict as AWS (so the packaged template's parameter and cfn-lint accept what `bind` wrote): partition aws,
    aws-cn or aws-us-gov, a region, a 12-digit account, a table name of 3 to 255 letters, digits, `_`, `.` or `-`,
    and the stream's label (its creation time, e.g. 2026-01-01T00:00:00.000)."""
    parts = stream_arn.split(":", 5)
    resource = parts[5].split("/") if len(parts) == 6 else []
    shaped = len(parts) == 6 and parts[0] == "arn" and parts[2] == "dynamodb" and len(resource) == 4
    if not shaped or resource[0] != "table" or resource[2] != "stream":
        problem = f"expected {ARN_SHAPE}"
    elif parts[1] not in PARTITIONS:
        problem = f"partition {parts[1]!r} is not one of {', '.join(PARTITIONS)}"
    elif not REGION.fullmatch(parts[3]):
        problem = f"{parts[3]!r} is not a region (like eu-west-1)"
    elif not ACCOUNT.fullmatch(parts[4]):
        problem = f"account {parts[4]!r} is not 12 digits"
    elif not TABLE_NAME.fullmatch(resource[1]):
        problem = f"table name {resource[1]!r} is not 3 to 255 of a-z, A-Z, 0-9, '_', '.', '-'"
    elif not STREAM_LABEL.fullmatch(resource[3]) and stream_arn != UNBOUND_STREAM_ARN:
        problem = f"stream label {resource[3]!r} is not a stream's creation time (like 2026-01-01T00:00:00.000)"
    else:
        return parts[1], parts[3], parts[4], resource[1]
    raise ValueError(f"not a DynamoDB stream ARN: {problem}")


def policy_statements(
    table_arn: Any,
    stream_arn: Any,
    list_streams_arn: Any,
    log_actions: list[str],
    log_resources: Any,
    failure_queue_arn: Any = None,
) -> list[dict[str, Any]]:
    """The function's least-privilege statements; each ARN is a string or a CloudFormation intrinsic."""
    statements = [
        {
            "Sid": "KeepTheFlagInSync",
            "Effect": "Allow",
            "Action": [TABLE_WRITE_ACTION, "dynamodb:BatchGetItem"],
            "Resource": table_arn,
        },
        {
            "Sid": "ReadTheStream",
            "Effect": "Allow",
            "Action": ["dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator"],
            "Resource": stream_arn,
        },
        {
            "Sid": "FindTheStream",
            "Effect": "Allow",
            "Action": ["dynamodb:ListStreams"],
            "Resource": list_streams_arn,
        },
    ]
    if failure_queue_arn:
        # The mapping sends a discarded batch's pointer to its on-failure destination with the function's role.
        statements.append(
            {
                "Sid": "ReportDiscardedBatches",
                "Effect": "Allow",
                "Action": ["sqs:SendMessage"],
                "Resource": failure_queue_arn,
            }
        )
    statements.append(
        {
            "Sid": "WriteLogs",
            "Effect": "Allow",
            "Action": log_actions,
            "Resource": log_resources,
        }
    )
    return statements


def function_arns(app_name: str, stage: str, stream_arn: str, function: str) -> tuple[str, str]:
    """(table ARN, log group ARN) of a `chalice deploy`ed function of the stage, from the stage's stream ARN."""
    partition, region, account, table = split_stream_arn(stream_arn)
    table_arn = f"arn:{partition}:dynamodb:{region}:{account}:table/{table}"
    log_group = f"arn:{partition}:logs:{region}:{account}:log-group:/aws/lambda/{app_name}-{stage}-{function}"
    return table_arn, log_group


def policy_document(app_name: str, stage: str, stream_arn: str, failure_queue_arn: str = "") -> dict[str, Any]:
    """The `chalice deploy` function's policy: only the actions the code and the mapping use, on known ARNs."""
    table_arn, log_group = function_arns(app_name, stage, stream_arn, HANDLER)
    return {
        "Version": "2012-10-17",
        "Statement": policy_statements(
            table_arn,
            stream_arn,
            f"{table_arn}/stream/*",
            # Lambda creates the function's log group on its first write when `chalice deploy` made the function.
            ["logs:CreateLogGroup", *LOG_WRITES],
            [log_group, f"{log_group}:log-stream:*"],
            failure_queue_arn,
        ),
    }


def backfill_statements(
    table_arn: Any, log_actions: list[str], log_resources: Any, own_arn: Any = None
) -> list[dict[str, Any]]:
    """The backfill function's least-privilege statements: scan and fix the table, continue a self-continuing
    segment (the reconciler's fallback) by invoking itself (`own_arn`)."""
    statements = [
        {
            "Sid": "BackfillTheTable",
            "Effect": "Allow",
            "Action": ["dynamodb:Scan", TABLE_WRITE_ACTION],
            "Resource": table_arn,
        }
    ]
    if own_arn:
        statements.append(
            {"Sid": "ContinueTheSegment", "Effect": "Allow", "Action": ["lambda:InvokeFunction"], "Resource": own_arn}
        )
    statements.append({"Sid": "WriteLogs", "Effect": "Allow", "Action": log_actions, "Resource": log_resources})
    return statements


def backfill_policy_document(app_name: str, stage: str, stream_arn: str) -> dict[str, Any]:
    """The `chalice deploy` backfill function's policy, on the table named by the stage's stream ARN."""
    table_arn, log_group = function_arns(app_name, stage, stream_arn, BACKFILL)
    return {
        "Version": "2012-10-17",
        "Statement": backfill_statements(
            table_arn,
            ["logs:CreateLogGroup", *LOG_WRITES],
            [log_group, f"{log_group}:log-stream:*"],
            deployed_function_arn(app_name, stage, stream_arn, BACKFILL),
        ),
    }


def deployed_function_arn(app_name: str, stage: str, stream_arn: str, function: str) -> str:
    """A `chalice deploy`ed function's ARN (`<app>-<stage>-<function>`), in the stage's stream's region and account."""
    partition, region, account, _ = split_stream_arn(stream_arn)
    return f"arn:{partition}:lambda:{region}:{account}:function:{app_name}-{stage}-{function}"


def reconciler_statements(
    table_arn: Any,
    streams_arn: Any,
    failure_queue_arn: Any,
    backfill_function_arn: Any,
    log_actions: list[str],
    log_resources: Any,
) -> list[dict[str, Any]]:
    """The reconciler's least-privilege statements: read the discarded range back, read and fix its items, consume
    the on-failure queue, and start the backfill when the range is gone."""
    return [
        {
            "Sid": "ReconcileTheItems",
            "Effect": "Allow",
            # DescribeTable: the key names a backfill payload carries.
            "Action": ["dynamodb:BatchGetItem", TABLE_WRITE_ACTION, "dynamodb:DescribeTable"],
            "Resource": table_arn,
        },
        {
            "Sid": "ReadTheDiscardedRange",
            "Effect": "Allow",
            "Action": ["dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator"],
            # The table's streams, not only the current one: a message may name the stream before a rebind, and
            # must get its ResourceNotFoundException (then the backfill), not an AccessDenied retried to the DLQ.
            "Resource": streams_arn,
        },
        {
            "Sid": "ConsumeTheFailureQueue",
            "Effect": "Allow",
            "Action": [
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:GetQueueAttributes",
                "sqs:ChangeMessageVisibility",
            ],
            "Resource": failure_queue_arn,
        },
        {
            "Sid": "StartTheBackfill",
            "Effect": "Allow",
            "Action": ["lambda:InvokeFunction"],
            "Resource": backfill_function_arn,
        },
        {"Sid": "WriteLogs", "Effect": "Allow", "Action": log_actions, "Resource": log_resources},
    ]


def failure_queue_arn(app_name: str, stage: str, stream_arn: str) -> str:
    """The `chalice deploy` path's on-failure queue ARN: its name, in the stream's region and account."""
    partition, region, account, _ = split_stream_arn(stream_arn)
    return f"arn:{partition}:sqs:{region}:{account}:{failure_queue_name(app_name, stage)}"


def reconciler_policy_document(app_name: str, stage: str, stream_arn: str, _queue_arn: str = "") -> dict[str, Any]:
    """The `chalice deploy` reconciler's policy, on the ARNs the stage's stream ARN gives."""
    table_arn, log_group = function_arns(app_name, stage, stream_arn, RECONCILER)
    return {
        "Version": "2012-10-17",
        "Statement": reconciler_statements(
            table_arn,
            f"{table_arn}/stream/*",
            failure_queue_arn(app_name, stage, stream_arn),
            deployed_function_arn(app_name, stage, stream_arn, BACKFILL),
            ["logs:CreateLogGroup", *LOG_WRITES],
            [log_group, f"{log_group}:log-stream:*"],
        ),
    }


def load_config() -> dict[str, Any]:
    """The Chalice project config."""
    return json.loads(CONFIG.read_text())


class UnknownStage(ValueError):
    """A stage that .chalice/config.json does not define (Chalice itself accepts any name, with no settings)."""


def stage_names(project_dir: Path = ROOT) -> list[str]:
    """The stages defined in the project's .chalice/config.json, in its order."""
    return list(json.loads((project_dir / ".chalice" / "config.json").read_text()).get("stages", {}))


def require_stage(stage: str, names: Iterable[str] | None = None) -> str:
    """`stage` if it is one of `names` (default: this project's stages); UnknownStage listing them otherwise."""
    names = list(names) if names is not None else stage_names()
    if stage not in names:
        raise UnknownStage(f"no stage {stage!r} in .chalice/config.json (stages: {', '.join(names) or 'none'})")
    return stage


def stage_stream_arn(config: dict[str, Any], stage: str) -> str:
    """The stage's STREAM_ARN, or the unbound placeholder."""
    return config["stages"][stage].get("environment_variables", {}).get("STREAM_ARN") or UNBOUND_STREAM_ARN


def stage_variables(config: dict[str, Any], stage: str) -> dict[str, str]:
    """The stage's environment variables with STAGE set to its name; ValueError for an unknown stage."""
    require_stage(stage, config["stages"])
    variables = config["stages"][stage].setdefault("environment_variables", {})
    # Every command that writes a stage keeps STAGE (the function's metrics dimension, the deploy guard's stage).
    variables["STAGE"] = stage
    return variables


def expected_policy(config: dict[str, Any], stage: str) -> dict[str, Any]:
    """The policy a stage's file must hold, derived from its STREAM_ARN and FAILURE_QUEUE_ARN."""
    failure_queue_arn = config["stages"][stage].get("environment_variables", {}).get("FAILURE_QUEUE_ARN", "")
    return policy_document(config["app_name"], stage, stage_stream_arn(config, stage), failure_queue_arn)


def expected_backfill_policy(config: dict[str, Any], stage: str) -> dict[str, Any]:
    """The policy a stage's backfill policy file must hold, from its STREAM_ARN."""
    return backfill_policy_document(config["app_name"], stage, stage_stream_arn(config, stage))


def backfill_policy_file(config: dict[str, Any], stage: str) -> str:
    """The backfill function's policy file name in the stage's config; ValueError naming the key if it is missing."""
    return _function_policy_file(config, stage, BACKFILL, "backfill")


def reconciler_policy_file(config: dict[str, Any], stage: str) -> str:
    """The reconciler's policy file name in the stage's config; ValueError naming the key if it is missing."""
    return _function_policy_file(config, stage, RECONCILER, "reconciler")


def _function_policy_file(config: dict[str, Any], stage: str, function: str, suffix: str) -> str:
    name = config["stages"][stage].get("lambda_functions", {}).get(function, {}).get("iam_policy_file")
    if not name:
        raise ValueError(
            f"stage {stage!r} has no lambda_functions.{function}.iam_policy_file in .chalice/config.json: add "
            f'"policy-{stage}-{suffix}.json" there (without it that function would get the handler\'s policy)'
        )
    return name


def expected_reconciler_policy(config: dict[str, Any], stage: str) -> dict[str, Any]:
    """The policy a stage's reconciler policy file must hold, from its STREAM_ARN."""
    return reconciler_policy_document(config["app_name"], stage, stage_stream_arn(config, stage))


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write JSON the way the repo keeps it: two-space indent, trailing newline."""
    path.write_text(json.dumps(document, indent=2) + "\n")


def handler_policy_file(config: dict[str, Any], stage: str) -> str:
    """The stream handler's policy file name in the stage's config."""
    return config["stages"][stage].get("iam_policy_file", f"policy-{stage}.json")


def write_policies(config: dict[str, Any], chalice_dir: Path = CHALICE_DIR) -> list[Path]:
    """Regenerate every stage's policy file in `chalice_dir` from its STREAM_ARN."""
    written = []
    for stage in config["stages"]:
        path = chalice_dir / handler_policy_file(config, stage)
        write_json(path, expected_policy(config, stage))
        backfill_path = chalice_dir / backfill_policy_file(config, stage)
        write_json(backfill_path, expected_backfill_policy(config, stage))
        reconciler_path = chalice_dir / reconciler_policy_file(config, stage)
        write_json(reconciler_path, expected_reconciler_policy(config, stage))
        written += [path, backfill_path, reconciler_path]
    return written


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
    # The filter names the key of the table whose stream the deployed mapping reads.
    stream_arn = lambda_client.get_event_source_mapping(UUID=uuid)["EventSourceArn"]
    table = session.client("dynamodb").describe_table(TableName=split_stream_arn(stream_arn)[3])["Table"]
    criteria = failure_handling.stream_filter(table)
    if criteria is None:
        print("note: the stream has no NewImage: no filter, the handler skips REMOVE records itself", file=sys.stderr)
    factor = Settings.from_environ(variables).parallelization_factor
    settings = failure_handling.mapping_failure_handling(queue_arn, criteria, factor)
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


def package(stage: str, out: Path, create_table: bool) -> Path:
    """`chalice package` with deploy/merge-template.json, the stack parameter defaulting to this stage's choice.

    With `create_table` the stack makes the table, so the stage needs no STREAM_ARN: Chalice packages a scratch copy
    of the project whose stage names the unbound placeholder, which the merge template replaces everywhere.
    """
    from tools.merge_template import (
        CREATE,
        EVENT_SOURCE,
        FUNCTION,
        STAGE_PARAMETER,
        STREAM_PARAMETER,
        expected_merge_template,
    )

    config = load_config()
    variables = stage_variables(config, stage)
    stream_arn = variables.get("STREAM_ARN", "")
    if not create_table and not stream_arn:
        raise ValueError(f"stage {stage!r} has no STREAM_ARN: run enable-stream or bind first, or pass --create-table")
    merge_template = expected_merge_template()
    merge_template["Parameters"][STREAM_PARAMETER]["Default"] = CREATE if create_table else stream_arn
    merge_template["Parameters"][STAGE_PARAMETER]["Default"] = stage
    event = merge_template["Resources"][FUNCTION]["Properties"]["Events"][EVENT_SOURCE]["Properties"]
    event["ParallelizationFactor"] = Settings.from_environ(variables).parallelization_factor
    with tempfile.TemporaryDirectory() as scratch:
        project = Path(scratch)
        for name in PACKAGED_PATHS:
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
            elif (ROOT / name).exists():
                shutil.copy(ROOT / name, project / name)
        # Not packaged: app.py imports tools.deploy_guard when the Chalice CLI loads it.
        shutil.copytree(ROOT / "tools", project / "tools", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(CHALICE_DIR, project / ".chalice", ignore=shutil.ignore_patterns("deployed"))
        if create_table:
            stage_variables(config, stage)["STREAM_ARN"] = UNBOUND_STREAM_ARN
            write_json(project / ".chalice" / "config.json", config)
            # The merge template replaces the roles' policies; the files only have to agree with the placeholder.
            write_policies(config, project / ".chalice")
        write_json(project / "merge-template.json", merge_template)
        chalice = Path(sys.executable).parent / "chalice"
        command = [str(chalice), "--project-dir", str(project), "package", "--stage", stage]
        command += ["--merge-template", str(project / "merge-template.json"), str(out.resolve())]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ValueError(f"chalice package failed:\n{result.stdout}{result.stderr}")
    template = out / "sam.json"
    if UNBOUND_STREAM_ARN in template.read_text():
        raise ValueError(f"{template} still names the unbound placeholder stream: the merge template missed a place")
    return template


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    bind_parser = commands.add_parser("bind", help="set a stage's STREAM_ARN and regenerate its policy")
    bind_parser.add_argument("--stage", required=True)
    bind_parser.add_argument("--stream-arn", required=True)
    commands.add_parser("policies", help="regenerate every stage's policy file")
    enable_parser = commands.add_parser("enable-stream", help="turn on a table's stream and bind a stage to it")
    enable_parser.add_argument("--stage", required=True)
    enable_parser.add_argument("--table-name", required=True)
    apply_parser = commands.add_parser(
        "apply-failure-handling", help="give a `chalice deploy`ed mapping its failure handling and filter"
    )
    apply_parser.add_argument("--stage", required=True)
    apply_parser.add_argument("--alarm-topic-arn", default="", help="SNS topic the alarms notify (default: none)")
    status_parser = commands.add_parser("status", help="what is deployed, compared with what it should be")
    status_parser.add_argument("--stage", required=True)
    status_parser.add_argument("--stack-name", help="read a CloudFormation stack instead of .chalice/deployed/")
    queues_parser = commands.add_parser(
        "queues", help="make the on-failure queue and its dead-letter queue (before the first `chalice deploy`)"
    )
    queues_parser.add_argument("--stage", required=True)
    commands.add_parser("merge-template", help="regenerate deploy/merge-template.json from the table's schema")
    package_parser = commands.add_parser("package", help="`chalice package` with the merge template")
    package_parser.add_argument("--stage", required=True)
    package_parser.add_argument("--create-table", action="store_true", help="the stack creates the users table")
    package_parser.add_argument("out", type=Path)
    cleanup_parser = commands.add_parser("cleanup", help="after `chalice delete`: delete the stage's SQS queues")
    cleanup_parser.add_argument("--stage", required=True)
    cleanup_parser.add_argument("--yes", action="store_true", help="delete without asking")
    args = parser.parse_args(argv)
    from tools.errors import report_errors

    return report_errors(lambda: run(args), known=(ValueError,))


def run(args: argparse.Namespace) -> int:
    """Carry out one parsed command."""
    if args.command == "bind":
        bind(args.stage, args.stream_arn)
        print(f"stage {args.stage} bound; .chalice/config.json and its policy file updated")
    elif args.command == "policies":
        for path in write_policies(load_config()):
            print(f"wrote {path.relative_to(ROOT)}")
    elif args.command == "enable-stream":
        stream_arn = enable_stream(args.stage, args.table_name)
        print(f"stream {stream_arn} is on; stage {args.stage} bound to it (.chalice/config.json, policy file)")
    elif args.command == "apply-failure-handling":
        queue_arn = apply_failure_handling(args.stage, args.alarm_topic_arn)
        print(f"mapping of stage {args.stage}: failure handling and filter applied, on-failure queue {queue_arn}")
        print(f"alarms and dashboard created: {load_config()['app_name']}-{args.stage}[-<alarm>]")
        print("run this again after every `chalice deploy` of the stage (it is idempotent)")
    elif args.command == "status":
        from tools.status import run_status

        return run_status(args.stage, args.stack_name)
    elif args.command == "queues":
        queue_arn, dead_letter_arn = ensure_stage_queues(args.stage)
        print(f"on-failure queue {queue_arn} (redrive to {dead_letter_arn}) ready for `chalice deploy`")
    elif args.command == "cleanup":
        deleted = cleanup(args.stage, lambda urls: ask(urls, args.yes))
        print(f"deleted {len(deleted)} queue(s) of stage {args.stage}" if deleted else "no queue deleted")
    elif args.command == "merge-template":
        from tools.merge_template import write_merge_template

        print(f"wrote {write_merge_template().relative_to(ROOT)}")
    else:
        print(f"wrote {package(args.stage, args.out, args.create_table)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
