"""The suite and the commands need none of the committed stages: on an adopter's config (no `dev`, no `prod`, stages of
their own, other attribute names; tests/projects.py), every path that reads the config works, and no test reads the
committed `.chalice/` for its own setup (tests/conftest.py's guard fails one that does)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import GUARD
from tests.projects import ADOPTER_EMAIL, ADOPTER_FLAG, ADOPTER_STAGES, ROOT, named_stages, write_config
from tools.project import UnknownStage, chosen_stage


def run(project, module: str, *arguments: str) -> subprocess.CompletedProcess:
    """Run one of the project's commands in `project`, in its own process group: one that outlives 120 s (a command
    that should have stopped at once, and started its engine instead) gets SIGTERM, which stops what it started."""
    process = subprocess.Popen(
        [sys.executable, "-m", module, *arguments],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_the_guard_sees_a_read_of_the_committed_config_and_a_command_run_in_the_checkout():
    seen, GUARD.seen = GUARD.seen, []
    try:
        (ROOT / ".chalice" / "config.json").read_text()
        GUARD("subprocess.Popen", (sys.executable, [sys.executable, "-m", "tools.stage", "policies"], str(ROOT), None))
        GUARD("subprocess.Popen", ("chalice", ["chalice", "package", "--stage", "x"], None, None))
        GUARD("subprocess.Popen", ("git", ["git", "clone", str(ROOT)], str(ROOT), None))  # reads no config
        caught = GUARD.seen
    finally:
        GUARD.seen = seen
    assert caught == [
        f"opened {ROOT / '.chalice' / 'config.json'}",
        f"ran {sys.executable} -m tools.stage policies in the checkout",
        "ran chalice package --stage x in the checkout",
    ]


def test_a_command_given_no_stage_takes_the_only_one_or_names_them_all(tmp_path):
    one = write_config(tmp_path / "one", named_stages("prod-eu"))
    assert chosen_stage(None, one) == "prod-eu" and chosen_stage("other", one) == "other"
    several = write_config(tmp_path / "several", named_stages("prod-eu", "staging"))
    with pytest.raises(UnknownStage, match=r"has 2 stages: prod-eu, staging \(choose one: --stage prod-eu"):
        chosen_stage(None, several)


@pytest.mark.parametrize("module", ["localdev.run", "tools.trial"])
def test_run_and_the_trial_with_no_stage_name_the_adopters_stages_in_one_line(adopter_project, module, tmp_path):
    done = run(adopter_project, module, "--data-dir" if module == "localdev.run" else "--work-dir", str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: no --stage given") and ", ".join(ADOPTER_STAGES) in line


def test_the_demo_runs_the_walkthrough_on_an_adopters_config(adopter_project):
    done = run(adopter_project, "localdev.demo")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "walkthrough: OK" in done.stdout and "IsPersonalEmail after" in done.stdout


def test_the_benchmark_and_the_backfill_benchmark_take_the_walkthroughs_settings(adopter_project):
    from bench.sizes import stage_memory
    from bench.subjects import stage_environment
    from bench.workload import ATTRIBUTES
    from localdev.walkthrough import WALKTHROUGH_STAGE, walkthrough_settings

    environment = stage_environment()
    assert (environment["EMAIL_ATTRIBUTE"], environment["FLAG_ATTRIBUTE"]) == (ATTRIBUTES.email, ATTRIBUTES.flag)
    settings = walkthrough_settings()
    assert (settings.stage, settings.email_attribute, settings.flag_attribute) == (
        WALKTHROUGH_STAGE,
        "Email",
        "IsPersonalEmail",
    )
    assert stage_memory(adopter_project) == 1024  # the app's memory, read from whichever config is there


def test_the_handler_under_an_adopters_stage_writes_its_flag(engine, make_table, adopter_project):
    from localdev.events import StreamEventFactory
    from localdev.invoker import ChaliceInvoker

    table = make_table()
    table.client.put_item(TableName=table.name, Item={"Id": {"S": "a"}, ADOPTER_EMAIL: {"S": "a@gmail.com"}})
    factory = StreamEventFactory(table_name=table.name)
    handler = ChaliceInvoker("staging", project_dir=adopter_project)
    try:
        assert handler.settings.stage == "staging" and handler.settings.batch_size == 300
        handler(factory.event(factory.insert({"Id": "a", ADOPTER_EMAIL: "a@gmail.com"})))
    finally:
        handler.close()
    item = table.client.get_item(TableName=table.name, Key={"Id": {"S": "a"}}, ConsistentRead=True)["Item"]
    assert item[ADOPTER_FLAG] == {"BOOL": True} and "IsPersonalEmail" not in item


def test_the_backfill_command_reads_the_adopters_stage(engine, make_table, adopter_project):
    table = make_table(stream=False)
    table.client.put_item(TableName=table.name, Item={"Id": {"S": "a"}, ADOPTER_EMAIL: {"S": "a@outlook.com"}})
    done = run(adopter_project, "tools.backfill", "run", "--table", table.name, "--stage", "prod-eu", "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    item = table.client.get_item(TableName=table.name, Key={"Id": {"S": "a"}}, ConsistentRead=True)["Item"]
    assert item[ADOPTER_FLAG] == {"BOOL": True}
