"""The functions' least-privilege IAM policies: the statements (shared with the merge template) and each stage's
policy files, derived from its STREAM_ARN alone (the table, the stream, and the stage's queues and bucket named after
the app and the stage in the stream's account and region)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tools.arns import failure_queue_arn, function_arns, stage_failure_bucket, stage_stream_arn
from tools.failure_bucket import FAILURE_PREFIX, STATE_KEY, objects
from tools.project import CHALICE_DIR, HANDLER, RECONCILER, SWEEP, write_json

TABLE_WRITE_ACTION = "dynamodb:PartiQLUpdate"
LOG_WRITES = ["logs:CreateLogStream", "logs:PutLogEvents"]


def policy_statements(
    table_arn: Any,
    stream_arn: Any,
    list_streams_arn: Any,
    log_actions: list[str],
    log_resources: Any,
    failure_bucket_arn: Any,
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
    # The mapping writes a discarded batch (its record and payload) to the on-failure bucket with the function's role:
    # the Lambda guide asks for s3:PutObject and s3:ListBucket; Lambda writes under aws/lambda/ only.
    statements += [
        {
            "Sid": "RecordDiscardedBatches",
            "Effect": "Allow",
            "Action": ["s3:PutObject"],
            "Resource": objects(failure_bucket_arn, FAILURE_PREFIX),
        },
        {
            "Sid": "FindTheFailureBucket",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": failure_bucket_arn,
        },
        {
            "Sid": "WriteLogs",
            "Effect": "Allow",
            "Action": log_actions,
            "Resource": log_resources,
        },
    ]
    return statements


def policy_document(app_name: str, stage: str, stream_arn: str) -> dict[str, Any]:
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
            stage_failure_bucket(app_name, stage, stream_arn)[1],
        ),
    }


def state_statements(failure_bucket_arn: Any) -> list[dict[str, Any]]:
    """Read and conditionally write the sweep's state object (GetObject for its ETag, PutObject with If-Match or
    If-None-Match), and ListBucket so that a missing object answers 404, not 403 (S3 API Reference, GetObject,
    "Permissions"): the reconciler tells an on-failure object that is gone from one it is denied the same way."""
    return [
        {
            "Sid": "KeepTheSweepState",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject"],
            "Resource": state_object(failure_bucket_arn),
        },
        {
            "Sid": "FindTheFailureBucket",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": failure_bucket_arn,
        },
    ]


def state_object(failure_bucket_arn: Any) -> Any:
    """The ARN of the sweep's state object; a string or an intrinsic."""
    if isinstance(failure_bucket_arn, str):
        return f"{failure_bucket_arn}/{STATE_KEY}"
    return {"Fn::Join": ["", [failure_bucket_arn, f"/{STATE_KEY}"]]}


def reconciler_statements(
    table_arn: Any,
    reconciler_queue_arn: Any,
    failure_bucket_arn: Any,
    log_actions: list[str],
    log_resources: Any,
) -> list[dict[str, Any]]:
    """The reconciler's least-privilege statements: consume the on-failure queue, read the failure object it names,
    read and fix the object's items, and (when the records can't be had) record an urgent pass in the sweep's state.
    Nothing on the stream: the object holds the batch's records."""
    return [
        {
            "Sid": "ReconcileTheItems",
            "Effect": "Allow",
            "Action": ["dynamodb:BatchGetItem", TABLE_WRITE_ACTION],
            "Resource": table_arn,
        },
        {
            "Sid": "ReadDiscardedBatches",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": objects(failure_bucket_arn, FAILURE_PREFIX),
        },
        *state_statements(failure_bucket_arn),
        {
            "Sid": "ConsumeTheFailureQueue",
            "Effect": "Allow",
            "Action": [
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:GetQueueAttributes",
                "sqs:ChangeMessageVisibility",
            ],
            "Resource": reconciler_queue_arn,
        },
        {"Sid": "WriteLogs", "Effect": "Allow", "Action": log_actions, "Resource": log_resources},
    ]


def reconciler_policy_document(app_name: str, stage: str, stream_arn: str) -> dict[str, Any]:
    """The `chalice deploy` reconciler's policy, on the ARNs the stage's stream ARN gives."""
    table_arn, log_group = function_arns(app_name, stage, stream_arn, RECONCILER)
    return {
        "Version": "2012-10-17",
        "Statement": reconciler_statements(
            table_arn,
            failure_queue_arn(app_name, stage, stream_arn),
            stage_failure_bucket(app_name, stage, stream_arn)[1],
            ["logs:CreateLogGroup", *LOG_WRITES],
            [log_group, f"{log_group}:log-stream:*"],
        ),
    }


def expected_policy(config: dict[str, Any], stage: str) -> dict[str, Any]:
    """The policy a stage's file must hold, derived from its STREAM_ARN."""
    return policy_document(config["app_name"], stage, stage_stream_arn(config, stage))


def expected_sweep_policy(config: dict[str, Any], stage: str) -> dict[str, Any]:
    """The policy a stage's sweep policy file must hold, from its STREAM_ARN."""
    return sweep_policy_document(config["app_name"], stage, stage_stream_arn(config, stage))


def expected_reconciler_policy(config: dict[str, Any], stage: str) -> dict[str, Any]:
    """The policy a stage's reconciler policy file must hold, from its STREAM_ARN."""
    return reconciler_policy_document(config["app_name"], stage, stage_stream_arn(config, stage))


def handler_policy_file(config: dict[str, Any], stage: str) -> str:
    """The stream handler's policy file name in the stage's config."""
    return config["stages"][stage].get("iam_policy_file", f"policy-{stage}.json")


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


def write_policies(config: dict[str, Any], chalice_dir: Path = CHALICE_DIR) -> list[Path]:
    """Regenerate every stage's policy files (handler, reconciler, sweep) in `chalice_dir` from its STREAM_ARN."""
    written = []
    for stage in config["stages"]:
        stream_arn = stage_stream_arn(config, stage)
        for file_name, document in (
            (handler_policy_file, policy_document),
            (reconciler_policy_file, reconciler_policy_document),
            (sweep_policy_file, sweep_policy_document),
        ):
            path = chalice_dir / file_name(config, stage)
            write_json(path, document(config["app_name"], stage, stream_arn))
            written.append(path)
    return written


def sweep_statements(
    table_arn: Any, failure_bucket_arn: Any, log_actions: list[str], log_resources: Any
) -> list[dict[str, Any]]:
    """The scheduled sweep's least-privilege statements: the table's key schema, size and capacity, its pages
    (eventually consistent Scan), the fixes (conditional PartiQL updates), the consistent read that tells an item
    gone since its page from one changed (BatchGetItem, only of the keys whose write condition failed), and its state
    object."""
    return [
        {
            "Sid": "SweepTheTable",
            "Effect": "Allow",
            "Action": ["dynamodb:DescribeTable", "dynamodb:Scan", TABLE_WRITE_ACTION, "dynamodb:BatchGetItem"],
            "Resource": table_arn,
        },
        *state_statements(failure_bucket_arn),
        {"Sid": "WriteLogs", "Effect": "Allow", "Action": log_actions, "Resource": log_resources},
    ]


def sweep_policy_document(app_name: str, stage: str, stream_arn: str) -> dict[str, Any]:
    """The `chalice deploy` sweep function's policy, on the table and bucket the stage's stream ARN names."""
    table_arn, log_group = function_arns(app_name, stage, stream_arn, SWEEP)
    log_actions = ["logs:CreateLogGroup", *LOG_WRITES]
    bucket_arn = stage_failure_bucket(app_name, stage, stream_arn)[1]
    statements = sweep_statements(table_arn, bucket_arn, log_actions, [log_group, f"{log_group}:log-stream:*"])
    return {"Version": "2012-10-17", "Statement": statements}


def sweep_policy_file(config: dict[str, Any], stage: str) -> str:
    """The sweep function's policy file name in the stage's config; ValueError naming the key if it is missing."""
    return _function_policy_file(config, stage, SWEEP, "sweep")
