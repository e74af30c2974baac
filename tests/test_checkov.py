"""The security scan: checkov (pinned in requirements-checkov.txt, its own venv) on the packaged template, 0 failed
checks, every skip in its resource's Metadata with its reason and listed in docs/deploy.md."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.projects import ROOT, copy_project, named_stages, stage_tool
from tools.checkov_skips import SKIPS

CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
VERSION = "3.3.30"


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """The prod stage packaged by `tools.stage package --create-table` (every resource the stack can hold)."""
    project = copy_project(tmp_path_factory.mktemp("checkov") / "project", named_stages("prod"))
    out = project.parent / "out"
    result = stage_tool(project, "package", "--stage", "prod", "--create-table", str(out))
    assert result.returncode == 0, result.stderr
    return out / "sam.json"


@pytest.fixture(scope="module")
def scan(packaged):
    """checkov's JSON report on the packaged template (offline: no download of Prisma Cloud's guidelines)."""
    if not CHECKOV.exists():
        pytest.fail("no .venv-checkov: `make test` creates it from requirements-checkov.txt")
    version = subprocess.run([str(CHECKOV), "--version"], capture_output=True, text=True, timeout=120)
    assert version.stdout.strip() == VERSION, "run `make test` to reinstall .venv-checkov"
    command = [str(CHECKOV), "-f", str(packaged), "--framework", "cloudformation", "--output", "json"]
    result = subprocess.run([*command, "--skip-download"], capture_output=True, text=True, timeout=300)
    report = json.loads(result.stdout)
    return report["results"]


def test_the_packaged_template_passes_every_check_it_does_not_skip(scan):
    failed = sorted(f"{check['check_id']} {check['resource']}" for check in scan["failed_checks"])
    assert failed == [], "checkov fails:\n" + "\n".join(failed)
    assert scan["passed_checks"], "checkov scanned nothing"


def test_every_skip_is_in_the_resource_metadata_with_its_reason(scan, packaged):
    resources = json.loads(packaged.read_text())["Resources"]
    skipped = sorted((check["check_id"], check["resource"].split(".", 1)[1]) for check in scan["skipped_checks"])
    declared = sorted(
        (skip["id"], logical_id)
        for logical_id, resource in resources.items()
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
    )
    # Each skip checkov honoured is one the merge template wrote, each with a reason; none is left unused.
    expected = {logical_id: skips for logical_id, skips in SKIPS.items() if logical_id in resources}
    assert skipped == declared == sorted((check, logical) for logical, skips in expected.items() for check, _ in skips)
    assert all(
        check["check_id"] and len(check["check_result"].get("suppress_comment", "")) > 40
        for check in scan["skipped_checks"]
    )


def test_the_deploy_docs_list_every_skip():
    rows = [line for line in (ROOT / "docs" / "deploy.md").read_text().splitlines() if line.startswith("| `CKV_")]
    listed = {(check, logical) for logical, skips in SKIPS.items() for check, _ in skips}
    missing = {(c, r) for c, r in listed if not any(f"`{c}`" in row and f"`{r}`" in row for row in rows)}
    assert missing == set(), f"docs/deploy.md's table of skips does not list: {sorted(missing)}"
