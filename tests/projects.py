"""Scratch copies of the project for tests that run Chalice or the stage tools (which write the project's files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tools.project import copy_project as copy_project  # re-exported: the tests copy the project with it

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def project_config(project: Path = ROOT) -> dict:
    """A project's .chalice/config.json, as a test reads the stage values it checks (never the committed ones)."""
    return json.loads((project / ".chalice" / "config.json").read_text())


def unused_stage_name(project: Path = ROOT) -> str:
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
