"""The adopter of issue 21, as tests build it (never from the committed .chalice/config.json): a project copy whose
stages are its own, named `prod-eu` (eu-west-1) and `staging`, with the attribute names `email` and `is_personal`,
for a `Members` table keyed `tenant` (S) + `member_no` (N)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.projects import ROOT, copy_project

EMAIL, FLAG = "email", "is_personal"
KEYS = ["tenant:S", "member_no:N"]
EU_STREAM = "arn:aws:dynamodb:eu-west-1:123456789012:table/Members/stream/2026-01-01T00:00:00.000"
FUNCTIONS = ("backfill_segment", "reconcile_discarded_batches", "audit_invariant")
FUNCTION_SETTINGS = {
    "backfill_segment": {"lambda_timeout": 900, "lambda_memory_size": 512, "reserved_concurrency": 4},
    "reconcile_discarded_batches": {"lambda_timeout": 120},
    "audit_invariant": {"lambda_timeout": 60, "reserved_concurrency": 1},
}


def stage_entry(stage: str, stream_arn: str = "") -> dict:
    """A stage of the adopter's config: its names, its own policy files, STREAM_ARN as given."""
    suffixes = {"backfill_segment": "backfill", "reconcile_discarded_batches": "reconciler", "audit_invariant": "audit"}
    return {
        "iam_policy_file": f"policy-{stage}.json",
        "environment_variables": {
            "STAGE": stage,
            "STREAM_ARN": stream_arn,
            "EMAIL_ATTRIBUTE": EMAIL,
            "FLAG_ATTRIBUTE": FLAG,
            "BACKFILL_FUNCTION_NAME": f"email-checker-{stage}-backfill_segment",
            "REPORT_BATCH_ITEM_FAILURES": "false",
        },
        "lambda_functions": {
            name: {"iam_policy_file": f"policy-{stage}-{suffixes[name]}.json", **FUNCTION_SETTINGS[name]}
            for name in FUNCTIONS
        },
    }


def adopter_project(target: Path, stages: dict[str, str], with_localdev: bool = False) -> Path:
    """A project copy whose config holds only `stages` (name: STREAM_ARN, "" for unbound), policy files generated."""
    from tools.policies import write_policies

    project = copy_project(target)
    if with_localdev:
        shutil.copytree(ROOT / "localdev", project / "localdev", ignore=shutil.ignore_patterns("__pycache__"))
        (project / "node_modules").symlink_to(ROOT / "node_modules")
    for old in (project / ".chalice").glob("policy-*.json"):
        old.unlink()
    config = {
        "version": "2.0",
        "app_name": "email-checker",
        "lambda_timeout": 60,
        "lambda_memory_size": 256,
        "autogen_policy": False,
        "stages": {stage: stage_entry(stage, arn) for stage, arn in stages.items()},
    }
    (project / ".chalice" / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_policies(config, project / ".chalice")
    return project
