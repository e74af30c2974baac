"""Stages are the user's: the committed `dev`/`prod` values are examples. On a copy of the project where a user did
what docs/adopting.md says (bound prod to their stream, added a stage, raised the handler's reserved concurrency,
changed memory and batch size), every test marked `stage_config` (the ones that read stage values) still passes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.projects import ROOT, copy_project, offline_environment, project_config, stage_tool
from tools.project import HANDLER, SWEEP

# What the marked tests need besides what copy_project copies: themselves, the pages and modules the docs test
# parses, and the files `make -n` reads.
TEST_PATHS = ("tests", "docs", "localdev", "bench")
TEST_FILES = (
    "README.md",
    "pyproject.toml",
    "Makefile",
    "requirements.txt",
    "requirements-dev.txt",
    "requirements-checkov.txt",
)
TEST_FILES += ("package.json", "package-lock.json")
# Values no committed stage has: a region, account and table of the user's, and sizes of their own.
PROD_ARN = "arn:aws:dynamodb:ap-southeast-2:210987654321:table/Customers.v2/stream/2025-06-30T12:34:56.789"
DEV_ARN = "arn:aws:dynamodb:us-west-2:210987654321:table/people/stream/2025-07-01T00:00:00.000"
ADDED = "eu-staging"
RESERVED, MEMORY, SWEEP_MEMORY, BATCH_SIZE = 120, 1024, 1769, "300"


def changed_project(target: Path) -> Path:
    """A copy of the project, tests included, changed as an adopter would, through the stage tool where one exists."""
    project = copy_project(target)
    for name in TEST_PATHS:
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in TEST_FILES:
        shutil.copy(ROOT / name, project / name)
    for arguments in (
        ("bind", "--stage", "prod", "--stream-arn", PROD_ARN),
        ("bind", "--stage", "dev", "--stream-arn", DEV_ARN),
        ("add-stage", "--stage", ADDED, "--from", "prod"),
    ):
        done = stage_tool(project, *arguments)
        assert done.returncode == 0, done.stderr
    # Sizing is edited in the config (docs/configuration.md): every stage's, the top-level memory size.
    config = project_config(project)
    config["lambda_memory_size"] = MEMORY
    for stage in config["stages"].values():
        stage["environment_variables"]["BATCH_SIZE"] = BATCH_SIZE
        functions = stage["lambda_functions"]
        functions.setdefault(HANDLER, {})["reserved_concurrency"] = RESERVED
        functions[SWEEP].update(lambda_memory_size=SWEEP_MEMORY, reserved_concurrency=1)
    (project / ".chalice" / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return project


def test_the_stage_config_tests_pass_on_a_project_whose_stages_the_user_changed(tmp_path):
    project = changed_project(tmp_path / "project")
    config = project_config(project)
    assert config["stages"]["prod"]["environment_variables"]["STREAM_ARN"] == PROD_ARN
    assert config["stages"][ADDED]["environment_variables"]["STAGE"] == ADDED
    assert {s["lambda_functions"][HANDLER]["reserved_concurrency"] for s in config["stages"].values()} == {RESERVED}
    assert config != project_config(ROOT)

    environment = {**offline_environment(), "PYTHONDONTWRITEBYTECODE": "1"}
    environment.pop("PYTEST_ADDOPTS", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "stage_config", "tests"],
        cwd=project,
        capture_output=True,
        text=True,
        env=environment,
        timeout=900,
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-2000:]
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 40, summary  # the marked tests ran, not a stray few
    assert "failed" not in summary and "error" not in summary, summary
