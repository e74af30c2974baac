"""The tests' own project: the code copied into a temporary folder with a config the tests wrote (never the
committed `.chalice/config.json`, whose stages are the user's), for tests that run Chalice, the stage tools or the
local commands."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tools import project as project_files
from tools.policies import write_policies

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
APP_NAME = "email-checker"  # app.py's Chalice(app_name=...): the app's, not a stage's
# The tests' stages. Their names and attribute names are none of the committed config's examples, so a test that
# leans on those (a stage `dev`, the names `Email`/`IsPersonalEmail` of a committed stage) fails here.
STAGE = "alpha"
OTHER_STAGE = "beta"
# The stage's attribute names: the walkthrough's, set here by the tests (they are also Settings' defaults).
EMAIL, FLAG = "Email", "IsPersonalEmail"
# What the local commands need besides what Chalice and the stage tools need (tools.project.PROJECT_PATHS).
LOCAL_PATHS = ("localdev", "bench")
LOCAL_FILES = ("package.json", "package-lock.json")


def stage_entry(app_name: str, stage: str, stream_arn: str = "", **variables: str) -> dict[str, Any]:
    """A stage as docs/configuration.md describes it, with the walkthrough's values, `variables` over them."""
    environment = {
        "STAGE": stage,
        "STREAM_ARN": stream_arn,
        "BATCH_SIZE": "100",
        "STARTING_POSITION": "TRIM_HORIZON",
        "MAXIMUM_BATCHING_WINDOW_IN_SECONDS": "0",
        "PERSONAL_DOMAINS_ONLY": "",
        "PERSONAL_DOMAINS_ADD": "",
        "PERSONAL_DOMAINS_REMOVE": "",
        "WRITE_CONCURRENCY": "16",
        "REPORT_BATCH_ITEM_FAILURES": "false",
        "PARALLELIZATION_FACTOR": "1",
        "EMAIL_ATTRIBUTE": EMAIL,
        "FLAG_ATTRIBUTE": FLAG,
        "SWEEP_PERIOD_HOURS": "168",
        "SWEEP_RATE_MINUTES": "15",
        "SWEEP_SEGMENTS": "8",
        "SWEEP_CAPACITY_FRACTION": "0.2",
        "SWEEP_READ_UNITS": "1000",
        "SWEEP_WRITE_UNITS": "500",
    }
    functions = {
        project_files.RECONCILER: {"iam_policy_file": f"policy-{stage}-reconciler.json", "lambda_timeout": 120},
        project_files.SWEEP: {
            "iam_policy_file": f"policy-{stage}-sweep.json",
            "lambda_timeout": 900,
            "lambda_memory_size": 1024,
            "reserved_concurrency": 1,
        },
    }
    return {
        "iam_policy_file": f"policy-{stage}.json",
        "environment_variables": {**environment, **variables},
        "lambda_functions": functions,
    }


def fixture_config(stages: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The tests' Chalice config: the app's top level and `stages` (default: STAGE and OTHER_STAGE, unbound)."""
    return {
        "version": "2.0",
        "app_name": APP_NAME,
        "lambda_timeout": 60,
        "lambda_memory_size": 256,
        "autogen_policy": False,
        "environment_variables": {
            "POWERTOOLS_SERVICE_NAME": APP_NAME,
            "POWERTOOLS_METRICS_NAMESPACE": "EmailChecker",
            "POWERTOOLS_LOG_LEVEL": "INFO",
        },
        "stages": stages
        if stages is not None
        else {STAGE: stage_entry(APP_NAME, STAGE), OTHER_STAGE: stage_entry(APP_NAME, OTHER_STAGE)},
    }


# One file for every test process on this machine: port 8000 is the machine's, not a worker's.
PORT_8000_LOCK = Path(tempfile.gettempdir()) / "email-checker-tests-port-8000.lock"


@contextlib.contextmanager
def port_8000_alone() -> Iterator[None]:
    """Hold port 8000 (`make run`'s preferred port) for the test that uses it, against every other test process: two
    `make run`s starting at once could both bind it (DynamoDB Local's Jetty reuses the address), and each would then
    talk to the other's engine. Released when the test ends, or when its process dies."""
    with PORT_8000_LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def named_stages(*names: str) -> dict[str, Any]:
    """The tests' config with stages of these names (a module whose expectations spell its stages' names out)."""
    return fixture_config({name: stage_entry(APP_NAME, name) for name in names})


# An adopter's config, as docs/adopting.md has one made: none of the committed stages, stages of their own in two
# regions, their own attribute names and sizes. The config-reading paths are run against it (tests/test_independence.py,
# and every test of the committed files through the `checked_project` fixture).
ADOPTER_STAGES = {
    "prod-eu": "arn:aws:dynamodb:eu-west-1:210987654321:table/Members/stream/2026-06-30T12:34:56.789",
    "staging": "arn:aws:dynamodb:us-east-1:210987654321:table/Members-staging/stream/2026-07-01T00:00:00.000",
}
ADOPTER_EMAIL, ADOPTER_FLAG = "email", "is_personal"


def adopter_stages(stages: dict[str, str], **variables: str) -> dict[str, Any]:
    """Stage entries for `stages` (name: STREAM_ARN, "" for unbound) with the adopter's attribute names."""
    names = {"EMAIL_ATTRIBUTE": ADOPTER_EMAIL, "FLAG_ATTRIBUTE": ADOPTER_FLAG, **variables}
    return {name: stage_entry(APP_NAME, name, arn, **names) for name, arn in stages.items()}


def adopter_config() -> dict[str, Any]:
    """The adopter's config (ADOPTER_STAGES, bound; names ADOPTER_EMAIL/ADOPTER_FLAG; batch 300, 1024 MB)."""
    stages = adopter_stages(ADOPTER_STAGES, BATCH_SIZE="300")
    for entry in stages.values():
        entry["lambda_functions"]["sync_is_personal_email"] = {"reserved_concurrency": 20}
    return {**fixture_config(stages), "lambda_memory_size": 1024}


def write_config(project: Path, config: dict[str, Any], policies: bool = True) -> Path:
    """Write `config` as the project's .chalice/config.json, and (unless `policies` is False: a stage bound to DynamoDB
    Local's stream, whose ARN names no real region) every stage's policy files as tools.stage would."""
    chalice_dir = project / ".chalice"
    chalice_dir.mkdir(parents=True, exist_ok=True)
    for old in chalice_dir.glob("policy-*.json"):
        old.unlink()
    project_files.write_json(chalice_dir / "config.json", config)
    if policies:
        write_policies(config, chalice_dir)
    return project


def copy_project(target: Path, config: dict[str, Any] | None = None, local: bool = False) -> Path:
    """The code Chalice and the stage tools need (and with `local`, what the local commands need: localdev, bench,
    the virtual environment and DynamoDB Local's node_modules) copied into `target`, with `config` (default:
    fixture_config()) as its config."""
    code = [name for name in project_files.PROJECT_PATHS if name != ".chalice"]
    project_files.copy_project(target, paths=[*code, *(LOCAL_PATHS + LOCAL_FILES if local else ())])
    if local:  # the installs, shared read-only (the commands and the docs name `.venv/bin/...`)
        for name in (".venv", "node_modules"):
            (target / name).symlink_to(ROOT / name)
    return write_config(target, config if config is not None else fixture_config())


def project_config(project: Path) -> dict:
    """A project's .chalice/config.json, as a test reads the stage values it checks."""
    return json.loads((project / ".chalice" / "config.json").read_text())


def unused_stage_name(project: Path) -> str:
    """A stage name the project's config does not define (a user may add any, `staging` included)."""
    names = set(project_config(project)["stages"])
    return next(name for n in range(1000) if (name := f"staging{n or ''}") not in names)


def offline_environment() -> dict[str, str]:
    """The test's environment with a region, which `chalice package` needs although it calls no AWS API."""
    return {**os.environ, "AWS_DEFAULT_REGION": "eu-west-1"}


def chalice(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the Chalice CLI on a project copy."""
    return subprocess.run(
        [str(BIN / "chalice"), "--project-dir", str(project), *args],
        capture_output=True,
        text=True,
        env=env or offline_environment(),
        timeout=300,
    )


def stage_tool(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m tools.stage` in a project copy (the tool edits the copy's .chalice/)."""
    return project_tool(project, "tools.stage", *args, env=env)


def backfill_tool(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m tools.backfill` in a project copy."""
    return project_tool(project, "tools.backfill", *args, env=env)


def project_tool(
    project: Path, module: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m <module>` in a project copy."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=project,
        capture_output=True,
        text=True,
        env=env or offline_environment(),
        timeout=300,
    )


def without_aws(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This environment with no AWS_* variable, no AWS config or credentials file, plus `extra`."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    missing = str(tmp_path / "no-aws-config")
    return {**environment, "AWS_CONFIG_FILE": missing, "AWS_SHARED_CREDENTIALS_FILE": missing, **extra}


def lambda_role(emulator, name: str) -> str:
    """The ARN of a role Lambda may assume, made on the emulator (for a stack's or a function's role)."""
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    return emulator.client("iam").create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
