"""The check `chalice deploy`/`package` run through app.py: a stage's IAM policy files must be the ones its
STREAM_ARN gives.

A STREAM_ARN edited by hand (without `tools.stage bind`) leaves `.chalice/policy-<stage>.json`,
`policy-<stage>-backfill.json` and `policy-<stage>-reconciler.json` granting on another table while the mapping
reads the new stream: AWS would refuse the deploy or deny every write, and moto (which doesn't enforce IAM) would
not notice. app.py imports this module only in Chalice's CLI mode; it is never part of the deployment package.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chalicelib.budget import budget_problem
from chalicelib.config import Settings
from tools.arns import split_stream_arn
from tools.policies import (
    backfill_policy_document,
    backfill_policy_file,
    handler_policy_file,
    policy_document,
    reconciler_policy_document,
    reconciler_policy_file,
)
from tools.project import HANDLER, stage_names

SEND = ["sqs:SendMessage"]
ADD_STAGE = "`python -m tools.stage add-stage --stage <stage>`"


def bind_command(stage: str, stream_arn: str = "<arn>") -> str:
    """The one command that sets a stage's STREAM_ARN and regenerates its policy files."""
    return f"`python -m tools.stage bind --stage {stage} --stream-arn {stream_arn}`"


def queue_arn_in(document: dict[str, Any]) -> str:
    """The queue the policy lets the function send to (added by apply-failure-handling), or ""."""
    queues = [s.get("Resource") for s in document.get("Statement", []) if s.get("Action") == SEND]
    return queues[0] if len(queues) == 1 and isinstance(queues[0], str) else ""


def tables_named(document: dict[str, Any]) -> list[str]:
    """The DynamoDB table ARNs a policy grants on (stream ARNs left out)."""
    named = set()
    for statement in document.get("Statement", []):
        resources = statement.get("Resource", [])
        for resource in resources if isinstance(resources, list) else [resources]:
            if isinstance(resource, str) and ":dynamodb:" in resource and "/stream/" not in resource:
                named.add(resource)
    return sorted(named)


def stale_policy(path: Path, expected: Callable[[str], dict[str, Any]]) -> str | None:
    """Why the policy file isn't what `expected(queue ARN)` gives for the stage's stream, or None if it is."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return f".chalice/{path.name} (missing or not JSON)"
    # The send permission on a failure or results queue is the only part the stream ARN doesn't decide: regenerate
    # with the queue the file names, so a bound, failure-handled stage passes and everything else must match.
    if document == expected(queue_arn_in(document)):
        return None
    tables = tables_named(document)
    return f".chalice/{path.name}" + (f" (grants on {', '.join(tables)})" if tables else "")


def deploy_refusal(project_dir: Path | str, stage: str, stream_arn: str) -> str | None:
    """Why the stage must not be deployed or packaged with this STREAM_ARN (one paragraph), or None if it may."""
    if not stage:
        return (
            "STAGE is not set in the stage's environment variables: for a stage of .chalice/config.json "
            f"({', '.join(stage_names(Path(project_dir))) or 'none'}) run {bind_command('<stage>')} (it writes STAGE "
            f"and STREAM_ARN and regenerates the stage's IAM policies); add any other stage first with {ADD_STAGE}"
        )
    if not stream_arn:
        return (
            f"stage {stage} has no STREAM_ARN: run {bind_command(stage)} "
            "(aws dynamodb describe-table --table-name <table> --query Table.LatestStreamArn prints it)"
        )
    try:
        split_stream_arn(stream_arn)
    except ValueError as problem:
        return (
            f"stage {stage}'s STREAM_ARN {stream_arn!r} is {problem}: run {bind_command(stage)} with its stream's ARN"
        )
    chalice_dir = Path(project_dir) / ".chalice"
    config = json.loads((chalice_dir / "config.json").read_text())
    if stage not in config.get("stages", {}):
        return (
            f"STAGE is {stage!r}, which is no stage of .chalice/config.json: run {bind_command('<stage>', stream_arn)} "
            f"for the stage you deploy (it sets STAGE to the stage's name), or add that stage with {ADD_STAGE}"
        )
    app_name = config["app_name"]
    try:
        backfill_file = backfill_policy_file(config, stage)
        reconciler_file = reconciler_policy_file(config, stage)
    except ValueError as problem:
        return str(problem)
    checks = [
        (handler_policy_file(config, stage), lambda queue: policy_document(app_name, stage, stream_arn, queue)),
        (backfill_file, lambda _queue: backfill_policy_document(app_name, stage, stream_arn)),
        (reconciler_file, lambda _queue: reconciler_policy_document(app_name, stage, stream_arn)),
    ]
    stale = [reason for name, expected in checks if (reason := stale_policy(chalice_dir / name, expected))]
    if not stale:
        return None
    return (
        f"stage {stage}'s IAM policy {'files' if len(stale) > 1 else 'file'} {' and '.join(stale)} "
        f"{'were' if len(stale) > 1 else 'was'} not generated for its STREAM_ARN {stream_arn} (was it set without "
        "`tools.stage bind`?): deployed, the functions' roles would not grant on that table and stream. Run "
        f"{bind_command(stage, stream_arn)}, which writes the STREAM_ARN and regenerates the stage's policies."
    )


DEFAULT_LAMBDA_TIMEOUT = 60  # Chalice's default when no level of the config sets one


def handler_timeout(config: dict[str, Any], stage: str) -> int:
    """The stream handler's `lambda_timeout` as Chalice resolves it: function, then stage, then top level."""
    stage_config = config.get("stages", {}).get(stage, {})
    for level in (stage_config.get("lambda_functions", {}).get(HANDLER, {}), stage_config, config):
        if "lambda_timeout" in level:
            return int(level["lambda_timeout"])
    return DEFAULT_LAMBDA_TIMEOUT


def budget_refusal(project_dir: Path | str, stage: str, settings: Settings) -> str | None:
    """Why the stage's batch can't answer inside its handler's timeout with every request at its worst, or None."""
    from chalicelib.dynamodb import BATCH_STATEMENT_LIMIT

    config = json.loads((Path(project_dir) / ".chalice" / "config.json").read_text())
    problem = budget_problem(
        settings.batch_size, settings.write_concurrency, BATCH_STATEMENT_LIMIT, handler_timeout(config, stage)
    )
    return f"stage {stage}: {problem}" if problem else None
