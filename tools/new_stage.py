"""Add a stage to .chalice/config.json: every setting and function entry copied from an existing stage, the names that
are a stage's own made the new stage's, its IAM policy files generated."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from tools.arns import split_stream_arn
from tools.policies import write_policies
from tools.project import CHALICE_DIR, CONFIG, RECONCILER, SWEEP, load_config, write_json

# Lower case, digits and hyphens: the stage's name is part of its functions', roles', queues', alarms' and bucket's
# names, and S3 bucket names allow nothing else.
STAGE_NAME = re.compile(r"[a-z]([a-z0-9-]*[a-z0-9])?")
LAMBDA_NAME_LIMIT = 64  # a function's and a role's name: Chalice names both `<app>-<stage>-<function>`
# Written by the deploy steps for the stage they deployed (an ARN in its account): never carried to another stage.
DEPLOY_WRITTEN = ("FAILURE_QUEUE_ARN",)


def longest_stage_name(config: dict[str, Any], source: str) -> int:
    """The longest stage name whose function and role names stay within Lambda's and IAM's 64 characters."""
    functions = {RECONCILER, SWEEP, *config["stages"][source].get("lambda_functions", {})}
    return LAMBDA_NAME_LIMIT - len(f"{config['app_name']}--{max(functions, key=len)}")


def stage_name_problem(config: dict[str, Any], name: str, source: str) -> str | None:
    """Why `name` can't be a new stage of `config` (copied from `source`), or None if it can."""
    if name in config["stages"]:
        return f"stage {name!r} is in .chalice/config.json already (bind it, or choose another name)"
    if not STAGE_NAME.fullmatch(name):
        return f"stage name {name!r}: use lower-case letters, digits and '-', starting with a letter"
    limit = longest_stage_name(config, source)
    if len(name) > limit:
        return f"stage name {name!r} is {len(name)} characters: at most {limit} (function names are 64 at most)"
    return None


def renamed_policy_file(file_name: str, source: str, name: str, fallback: str) -> str:
    """The new stage's policy file name for the source stage's `file_name` (policy-<source>... -> policy-<name>...)."""
    prefix = f"policy-{source}"
    if file_name.startswith((f"{prefix}.", f"{prefix}-")):
        return f"policy-{name}{file_name[len(prefix) :]}"
    return fallback


def new_stage_entry(config: dict[str, Any], name: str, source: str, stream_arn: str = "") -> dict[str, Any]:
    """The source stage's entry with the names that are a stage's own made `name`'s, bound to `stream_arn`."""
    app_name = config["app_name"]
    entry = copy.deepcopy(config["stages"][source])
    entry["iam_policy_file"] = renamed_policy_file(
        entry.get("iam_policy_file", ""), source, name, f"policy-{name}.json"
    )
    for function, settings in entry.get("lambda_functions", {}).items():
        if "iam_policy_file" in settings:
            settings["iam_policy_file"] = renamed_policy_file(
                settings["iam_policy_file"], source, name, f"policy-{name}-{function}.json"
            )
    variables = entry.setdefault("environment_variables", {})
    for key in DEPLOY_WRITTEN:
        variables.pop(key, None)
    for key, value in variables.items():
        # A resource name of the source stage (`<app>-<source>-...`) becomes the new one's.
        variables[key] = value.replace(f"{app_name}-{source}-", f"{app_name}-{name}-")
    variables.update(STAGE=name, STREAM_ARN=stream_arn)
    return entry


def add_stage(name: str, source: str | None = None, stream_arn: str = "") -> list[Path]:
    """Add stage `name` to .chalice/config.json, copied from `source` (default: the first stage), and write its
    policy files; the files written. ValueError, with nothing written, for a bad name, source or stream ARN."""
    config = load_config()
    source = source or next(iter(config["stages"]), "")
    if source not in config["stages"]:
        stages = ", ".join(config["stages"]) or "none"
        raise ValueError(f"no stage {source!r} to copy in .chalice/config.json (stages: {stages})")
    problem = stage_name_problem(config, name, source)
    if problem:
        raise ValueError(problem)
    if stream_arn:
        split_stream_arn(stream_arn)
    config["stages"][name] = new_stage_entry(config, name, source, stream_arn)
    written = write_policies({**config, "stages": {name: config["stages"][name]}}, CHALICE_DIR)
    write_json(CONFIG, config)
    return [CONFIG, *written]
