"""The README's main command runs the walkthrough on a real engine and says it went as the walkthrough says."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.documented import GROUP

STEP = re.compile(r"^\d+\. (.+?)\s+(\d+)\s+(\d+)  ")


@pytest.mark.xdist_group(GROUP)
def test_demo_runs_the_walkthrough(documented_runs):
    # The README's tour runs it (with --verbose) in a fresh clone: that run is the one checked here.
    result = documented_runs.of(".venv/bin/python -m localdev.demo")
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    rows = {line.split()[0]: line.split() for line in lines if line.startswith("ID")}
    assert rows["ID1"][1:3] == ["john@hotmail.com", "true"]
    assert rows["ID2"][1:3] == ["john@gmail.com", "true"]
    assert "walkthrough: OK" in result.stdout
    steps = {m[1]: (int(m[2]), int(m[3])) for m in map(STEP.match, lines) if m}
    assert len(steps) == 5
    # Every e-mail change costs its record plus the handler's own write coming back, which needs nothing...
    assert steps["create ID1 <john@example.com>"] == (2, 1)
    assert steps["change ID1's e-mail to john@outlook.com"] == (2, 1)
    # ...and a change that leaves the flag right, or touches another attribute, costs a record and no write.
    assert steps["change ID1's e-mail to john@hotmail.com"] == (1, 0)
    assert steps["change ID2's Name (not the e-mail)"] == (1, 0)


def test_demo_says_what_to_install_when_java_is_missing(project, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "localdev.demo"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(tmp_path), "HOME": str(tmp_path)},
    )
    assert result.returncode == 2
    assert "Java" in result.stderr and "install" in result.stderr.lower()
    assert "Traceback" not in result.stderr
