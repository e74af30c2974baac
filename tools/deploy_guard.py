"""The check `chalice deploy`/`package` run through app.py: a stage's IAM policy files must be the ones its
STREAM_ARN gives, may send (sqs:SendMessage) or write objects (s3:PutObject) only to the stage's own queues and
bucket, and the stage must not switch REPORT_BATCH_ITEM_FAILURES on itself.

A STREAM_ARN edited by hand (without `tools.stage bind`) leaves `.chalice/policy-<stage>.json`,
`policy-<stage>-reconciler.json` and `policy-<stage>-sweep.json` granting on another
table while the mapping reads the new stream: AWS would refuse the deploy or deny every write, and moto (which
doesn't enforce IAM) would not notice. app.py imports this module only in Chalice's CLI mode; it is never part of
the deployment package.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from chalicelib.budget import budget_problem
from chalicelib.config import ConfigError, Settings, dead_letter_queue_name, failure_queue_name
from tools.arns import split_stream_arn, stage_failure_bucket
from tools.failure_handling import filter_refusal
from tools.policies import (
    handler_policy_file,
    policy_document,
    reconciler_policy_document,
    reconciler_policy_file,
    sweep_policy_document,
    sweep_policy_file,
)
from tools.project import HANDLER, RECONCILER, stage_names

SEND = "sqs:SendMessage"
PUT_OBJECT = "s3:PutObject"
REPORT_SETTING = "REPORT_BATCH_ITEM_FAILURES"
ADD_STAGE = "`python -m tools.stage add-stage --stage <stage>`"


def bind_command(stage: str, stream_arn: str = "<arn>") -> str:
    """The one command that sets a stage's STREAM_ARN and regenerates its policy files."""
    return f"`python -m tools.stage bind --stage {stage} --stream-arn {stream_arn}`"


def listed(value: Any) -> list[Any]:
    """A policy field that may be one value or a list, as a list."""
    return value if isinstance(value, list) else [value]


def foreign_grant(document: dict[str, Any], action: str, own: Callable[[Any], bool]) -> str | None:
    """The first resource the policy lets `action` (or a wildcard that covers it) reach that `own` refuses, or None.
    A NotResource statement reaches nearly everything: it counts as `*`."""
    for statement in document.get("Statement", []):
        actions = listed(statement.get("Action", []))
        allows = statement.get("Effect") == "Allow" and any(
            isinstance(a, str) and fnmatchcase(action.lower(), a.lower()) for a in actions
        )
        if not allows:
            continue
        if "NotResource" in statement:
            return "*"
        for resource in listed(statement.get("Resource", [])):
            if not own(resource):
                return resource if isinstance(resource, str) else json.dumps(resource)
    return None


def destination_refusal(chalice_dir: Path, names: list[str], app_name: str, stage: str, stream_arn: str) -> str | None:
    """Why a policy file lets a function send messages or write objects outside the stage's own queues and bucket."""
    partition, region, account, _ = split_stream_arn(stream_arn)
    queues = {
        f"arn:{partition}:sqs:{region}:{account}:{name}"
        for name in (failure_queue_name(app_name, stage), dead_letter_queue_name(app_name, stage))
    }
    bucket_name, bucket_arn = stage_failure_bucket(app_name, stage, stream_arn)
    checks = (
        (SEND, lambda r: r in queues, "queues"),
        (PUT_OBJECT, lambda r: isinstance(r, str) and r.startswith(f"{bucket_arn}/"), f"bucket {bucket_name}"),
    )
    for name in names:
        try:
            document = json.loads((chalice_dir / name).read_text())
        except (OSError, ValueError):
            continue  # the staleness check names it
        for action, own, what in checks:
            if (resource := foreign_grant(document, action, own)) is not None:
                return (
                    f"stage {stage}'s .chalice/{name} grants {action} on {resource}, which is not one of the stage's "
                    f"own {what}: run `python -m tools.stage policies` to regenerate it from STREAM_ARN"
                )
    return None


def report_mode_refusal(config: dict[str, Any], stage: str) -> str | None:
    """Why the stage's config switches REPORT_BATCH_ITEM_FAILURES on itself for a function whose mapping may not
    report partial failures (the stream handler, the reconciler), or None."""
    stage_config = config["stages"][stage]
    scopes = [("environment_variables", config), (f"stages.{stage}", stage_config)]
    for function in (HANDLER, RECONCILER):
        scopes += [
            (f"lambda_functions.{function}", config.get("lambda_functions", {}).get(function, {})),
            (f"stages.{stage}.lambda_functions.{function}", stage_config.get("lambda_functions", {}).get(function, {})),
        ]
    for where, scope in scopes:
        value = scope.get("environment_variables", {}).get(REPORT_SETTING)
        try:
            on = value is not None and Settings.from_environ({REPORT_SETTING: value}).report_batch_item_failures
        except ConfigError:
            on = True  # not even a boolean: refused all the same
        if on:
            return (
                f"stage {stage} sets {REPORT_SETTING}={value} itself ({where} in .chalice/config.json): set it to "
                "false; the deploy steps switch it on in the function once its mapping reports partial failures "
                "(on the `chalice deploy` path Lambda would otherwise ignore the reports and drop the failed items)"
            )
    return None


def tables_named(document: dict[str, Any]) -> list[str]:
    """The DynamoDB table ARNs a policy grants on (stream ARNs left out)."""
    named = set()
    for statement in document.get("Statement", []):
        resources = statement.get("Resource", [])
        for resource in resources if isinstance(resources, list) else [resources]:
            if isinstance(resource, str) and ":dynamodb:" in resource and "/stream/" not in resource:
                named.add(resource)
    return sorted(named)


def granted_tables(path: Path) -> list[str] | None:
    """The tables a policy file grants on, or None if it can't be read."""
    try:
        return tables_named(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def stale_policy(path: Path, expected: dict[str, Any]) -> str | None:
    """Why the policy file isn't `expected` (what the stage's stream ARN gives), or None if it is."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return f".chalice/{path.name} (missing or not JSON)"
    if document == expected:
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
    if refusal := filter_refusal(project_dir):
        return refusal
    app_name = config["app_name"]
    try:
        reconciler_file = reconciler_policy_file(config, stage)
        sweep_file = sweep_policy_file(config, stage)
    except ValueError as problem:
        return str(problem)
    if refusal := report_mode_refusal(config, stage):
        return refusal
    checks = [
        (handler_policy_file(config, stage), policy_document(app_name, stage, stream_arn)),
        (reconciler_file, reconciler_policy_document(app_name, stage, stream_arn)),
        (sweep_file, sweep_policy_document(app_name, stage, stream_arn)),
    ]
    stale = {name: reason for name, expected in checks if (reason := stale_policy(chalice_dir / name, expected))}
    if not stale:
        return None
    # Files generated for this stream but edited since: say which grant reaches outside the stage, if one does.
    # (Files generated for another stream grant on another table, and need bind.)
    table = tables_named(checks[0][1])
    if all(granted_tables(chalice_dir / name) == table for name in stale) and (
        refusal := destination_refusal(chalice_dir, list(stale), app_name, stage, stream_arn)
    ):
        return refusal
    stale = list(stale.values())
    return (
        f"stage {stage}'s IAM policy {'files' if len(stale) > 1 else 'file'} {' and '.join(stale)} "
        f"{'were' if len(stale) > 1 else 'was'} not generated for its STREAM_ARN {stream_arn} (was it set without "
        "`tools.stage bind`?): deployed, the functions' roles would not grant on that table and stream. Run "
        f"{bind_command(stage, stream_arn)}, which writes the STREAM_ARN and regenerates the stage's policies."
    )


def chalice_command(argv: list[str]) -> tuple[str, str | None]:
    """(the Chalice CLI's subcommand, its --profile or None) from the CLI process's argv: `chalice [--project-dir DIR]
    [--debug] deploy --stage S [--profile P]`."""
    words, index = argv[1:], 0
    while index < len(words) and words[index].startswith("-"):
        index += 2 if words[index] == "--project-dir" else 1
    if index >= len(words):
        return "", None
    profile = None
    rest = words[index + 1 :]
    for position, word in enumerate(rest):
        if word == "--profile" and position + 1 < len(rest):
            profile = rest[position + 1]
        elif word.startswith("--profile="):
            profile = word.split("=", 1)[1]
    return words[index], profile


def deploy_region(profile: str | None) -> str | None:
    """The region `chalice deploy` would deploy to, read as Chalice's session reads it (AWS_DEFAULT_REGION, then the
    profile's `region`), without calling AWS; None if none is set or the profile can't be read."""
    import botocore.session
    from botocore.exceptions import BotoCoreError

    try:
        return botocore.session.Session(profile=profile).get_config_variable("region")
    except BotoCoreError:
        return None  # an unknown profile: Chalice says so itself


def region_refusal(stage: str, stream_arn: str, argv: list[str], environ: dict[str, str]) -> str | None:
    """Why `chalice deploy` must not go ahead in the region it would deploy to: not the stage's stream's region (the
    mapping would be refused as an `Invalid EventSourceArn` after the functions and roles were made), or no region
    at all; None for any other command, or the right region. Runs before Chalice's first AWS call."""
    command, profile = chalice_command(argv)
    if command != "deploy":
        return None  # package needs no region, and local none of AWS
    stream_region = split_stream_arn(stream_arn)[1]
    fix = f"run `AWS_DEFAULT_REGION={stream_region} chalice deploy --stage {stage}`"
    region = deploy_region(profile)
    if region is None:
        return f"no AWS region for the deploy: stage {stage}'s stream is in {stream_region}; {fix}"
    if region == stream_region:
        return None
    source = "AWS_DEFAULT_REGION" if environ.get("AWS_DEFAULT_REGION") else f"profile {profile or 'default'}'s region"
    return (
        f"this deploy would go to {region} ({source}) but stage {stage}'s stream is in {stream_region}: {fix} "
        "(nothing was deployed)"
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
