"""`python -m tools.trial`: the `chalice deploy` path on moto, on a table of the user's key schema, in a project copy,
leaving the user's .chalice/ and no process behind."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.projects import STAGE
from tools.trial import key_schema

MARKER = "EMAIL_CHECKER_TEST_MARKER"


def chalice_state(project: Path) -> dict[str, str]:
    """A digest of every file under the project's .chalice/ (deployed records included)."""
    return {
        str(path.relative_to(project)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted((project / ".chalice").rglob("*"))
        if path.is_file()
    }


def processes_with(marker: str) -> list[str]:
    """Command lines of the processes whose environment carries the marker (the trial's children)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"{MARKER}={marker}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


def trial(project: Path, tmp_path: Path, *arguments: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the trial as a user would, with AWS variables of a (fake) real account set; (result, processes left)."""
    marker = uuid.uuid4().hex
    environment = {**os.environ, MARKER: marker, "AWS_PROFILE": "production", "AWS_DEFAULT_REGION": "eu-west-1"}
    done = subprocess.run(
        [sys.executable, "-m", "tools.trial", "--work-dir", str(tmp_path), *arguments],
        cwd=project,
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
    )
    return done, processes_with(marker)


def test_key_schema_takes_a_hash_key_and_an_optional_range_key():
    assert key_schema(["tenant:S", "member_no:N"]) == (
        [{"AttributeName": "tenant", "AttributeType": "S"}, {"AttributeName": "member_no", "AttributeType": "N"}],
        [{"AttributeName": "tenant", "KeyType": "HASH"}, {"AttributeName": "member_no", "KeyType": "RANGE"}],
    )
    assert key_schema(["a:b:B"])[0] == [{"AttributeName": "a:b", "AttributeType": "B"}]  # a name may hold ':'


@pytest.mark.parametrize(
    ("keys", "problem"),
    [([], "one --key"), (["a:S", "b:S", "c:S"], "not 3"), (["Id"], "NAME:TYPE"), (["Id:X"], "NAME:TYPE"),
     (["Id:S", "Id:N"], "different names")],
)  # fmt: skip
def test_key_schema_refuses_what_dynamodb_would(keys, problem):
    with pytest.raises(ValueError, match=problem):
        key_schema(keys)


def test_the_trial_deploys_a_new_stage_on_a_composite_key_and_removes_it(project, tmp_path):
    before = chalice_state(project)
    done, left = trial(
        project, tmp_path, "--stage", "trial-eu", "--table", "Accounts", "--key", "tenant:S", "--key", "n:N"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not left, left
    lines = done.stdout.splitlines()
    commands = [line[2:].split("   #")[0] for line in lines if line.startswith("$ ")]
    tool = ".venv/bin/python -m tools.stage"
    assert commands == [
        f"{tool} add-stage --stage trial-eu",
        f"{tool} enable-stream --stage trial-eu --table-name Accounts",
        ".venv/bin/chalice deploy --stage trial-eu",
        f"{tool} apply-failure-handling --stage trial-eu",
        f"{tool} status --stage trial-eu",
        ".venv/bin/chalice delete --stage trial-eu",
        f"{tool} cleanup --stage trial-eu --yes",
    ]
    assert "table Accounts on moto: key tenant (HASH, S), n (RANGE, N), no stream" in done.stdout
    assert "127.0.0.1" in done.stdout and "amazonaws.com" not in done.stdout  # moto only, never the real account
    assert lines[-1] == "trial: OK, stage trial-eu deployed, checked and deleted on moto; moto stopped"
    assert "Traceback" not in done.stdout + done.stderr
    # The user's checkout is as it was: no stage added, no deployed record, no policy file rewritten.
    assert chalice_state(project) == before
    config = (tmp_path / "project" / ".chalice" / "config.json").read_text()
    assert '"trial-eu"' in config and "table/Accounts/stream/" in config  # the copy got them


def test_a_failing_step_stops_the_trial_and_moto(project, tmp_path):
    done, left = trial(project, tmp_path, "--stage", "Not_A_Stage")
    assert done.returncode == 2 and not left, done.stdout + done.stderr + str(left)
    assert "$ .venv/bin/python -m tools.stage add-stage --stage Not_A_Stage" in done.stdout
    assert "use lower-case letters" in done.stdout  # the step's own output, printed
    [error] = done.stderr.strip().splitlines()
    assert error.startswith("error: `.venv/bin/python -m tools.stage add-stage --stage Not_A_Stage` exited with 2")


def test_a_bad_key_is_one_line_before_anything_starts(project, tmp_path):
    done, left = trial(project, tmp_path, "--stage", STAGE, "--key", "Id:Q")
    assert (done.returncode, done.stdout, left) == (2, "", [])
    assert done.stderr.strip() == "error: --key 'Id:Q': expected NAME:TYPE with TYPE one of S, N, B"
