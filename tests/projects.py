"""Scratch copies of the project for tests that run Chalice or the stage tools (which write the project's files)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PROJECT_PATHS = ("app.py", "chalicelib", "requirements.txt", ".chalice", "tools", "deploy", "schema")


def copy_project(target: Path) -> Path:
    """Copy what Chalice and the tools need into `target`, without deployment records or caches."""
    target.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_PATHS:
        source = ROOT / name
        if source.is_dir():
            ignored = shutil.ignore_patterns("deployments", "deployed", "__pycache__")
            shutil.copytree(source, target / name, ignore=ignored)
        else:
            shutil.copy(source, target / name)
    return target


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
