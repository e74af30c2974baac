"""Importing app.py: in Lambda it builds the function's processor in the init phase; anywhere else it stays cheap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import json, sys
import app
from chalicelib import domains, runtime
print(json.dumps({
    "domain_list_loaded": domains.default_personal_domains.cache_info().currsize,
    "processors": runtime.processor_for.cache_info().currsize,
    "sweeps": runtime.sweep_for.cache_info().currsize,
    "heavy_modules": sorted(m for m in ("boto3", "aws_lambda_powertools") if m in sys.modules),
}))
"""


def import_app(**variables: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_LAMBDA_", "AWS_CHALICE_"))}
    environ.update({"AWS_DEFAULT_REGION": "us-east-1", "STAGE": "dev", **variables})
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_in_lambda_the_stream_handlers_processor_is_built_at_import():
    state = import_app(AWS_LAMBDA_FUNCTION_NAME="email-checker-dev-sync_is_personal_email")
    assert state["processors"] == 1 and state["sweeps"] == 0 and state["domain_list_loaded"] == 1
    assert state["heavy_modules"] == ["aws_lambda_powertools", "boto3"]


@pytest.mark.parametrize("name", ["email-checker-dev-sweep_table", "stack-SweepTable-AbC123"])
def test_in_lambda_the_sweep_builds_its_sweeper_and_no_processor(name):
    arn = "arn:aws:dynamodb:us-east-1:123456789012:table/Users/stream/2026-01-01T00:00:00.000"
    state = import_app(AWS_LAMBDA_FUNCTION_NAME=name, STREAM_ARN=arn)
    assert state["sweeps"] == 1 and state["processors"] == 0 and state["domain_list_loaded"] == 1


def test_outside_lambda_importing_the_app_builds_nothing_and_imports_no_sdk():
    state = import_app()
    assert state == {
        "domain_list_loaded": 0,
        "processors": 0,
        "sweeps": 0,
        "heavy_modules": [],
    }
