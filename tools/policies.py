"""The functions' least-privilege IAM policies: the statements (shared with the merge template) and each stage's
policy files, derived from its STREAM_ARN (and FAILURE_QUEUE_ARN)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tools.arns import deployed_function_arn, failure_queue_arn, function_arns, stage_stream_arn
from tools.project import AUDIT, BACKFILL, CHALICE_DIR, HANDLER, RECONCILER, write_json

TABLE_WRITE_ACTION = "dynamodb:PartiQLUpdate"
LOG_WRITES = ["logs:CreateLogStream", "logs:PutLogEvents"]


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


def expected_policy(config: dict[str, Any], stage: str) -> dict[str, Any]:
    """The policy a stage's file must hold, derived from its STREAM_ARN and FAILURE_QUEUE_ARN."""
    failure_queue_arn = config["stages"][stage].get("environment_variables", {}).get("FAILURE_QUEUE_ARN", "")
    return policy_document(config["app_name"], stage, stage_stream_arn(config, stage), failure_queue_arn)


def expected_backfill_policy(config: dict[str, Any], stage: str) -> dict[str, Any]:
    """The policy a stage's backfill policy file must hold, from its STREAM_ARN."""
    return backfill_policy_document(config["app_name"], stage, stage_stream_arn(config, stage))


def expected_reconciler_policy(config: dict[str, Any], stage: str) -> dict[str, Any]:
    """The policy a stage's reconciler policy file must hold, from its STREAM_ARN."""
    return reconciler_policy_document(config["app_name"], stage, stage_stream_arn(config, stage))


def handler_policy_file(config: dict[str, Any], stage: str) -> str:
    """The stream handler's policy file name in the stage's config."""
    return config["stages"][stage].get("iam_policy_file", f"policy-{stage}.json")


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
        written += [path, backfill_path, reconciler_path, write_audit_policy(config, stage, chalice_dir)]
    return written


def audit_statements(table_arn: Any, log_actions: list[str], log_resources: Any) -> list[dict[str, Any]]:
    """The scheduled audit's least-privilege statements: the key schema, a sample of the table, a second read of
    what looked wrong, and the fixes."""
    return [
        {
            "Sid": "AuditTheTable",
            "Effect": "Allow",
            "Action": ["dynamodb:DescribeTable", "dynamodb:Scan", "dynamodb:BatchGetItem", TABLE_WRITE_ACTION],
            "Resource": table_arn,
        },
        {"Sid": "WriteLogs", "Effect": "Allow", "Action": log_actions, "Resource": log_resources},
    ]


def audit_policy_document(app_name: str, stage: str, stream_arn: str) -> dict[str, Any]:
    """The `chalice deploy` audit function's policy, on the table named by the stage's stream ARN."""
    table_arn, log_group = function_arns(app_name, stage, stream_arn, AUDIT)
    log_actions = ["logs:CreateLogGroup", *LOG_WRITES]
    statements = audit_statements(table_arn, log_actions, [log_group, f"{log_group}:log-stream:*"])
    return {"Version": "2012-10-17", "Statement": statements}


def audit_policy_file(config: dict[str, Any], stage: str) -> str:
    """The audit function's policy file name in the stage's config; ValueError naming the key if it is missing."""
    return _function_policy_file(config, stage, AUDIT, "audit")


def write_audit_policy(config: dict[str, Any], stage: str, chalice_dir: Path = CHALICE_DIR) -> Path:
    """Regenerate the stage's audit policy file from its STREAM_ARN."""
    path = chalice_dir / audit_policy_file(config, stage)
    write_json(path, audit_policy_document(config["app_name"], stage, stage_stream_arn(config, stage)))
    return path
