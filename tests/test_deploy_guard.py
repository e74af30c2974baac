"""The deploy guard: `chalice deploy`/`package` refuse a stage whose IAM policy files weren't generated for its
STREAM_ARN, and every refusal points at `tools.stage bind`."""

from __future__ import annotations

import json

import pytest

from chalicelib.config import Settings
from tests.projects import chalice, copy_project, named_stages, stage_tool, write_config
from tools import stage
from tools.deploy_guard import budget_refusal, deploy_refusal, handler_timeout

ARN = "arn:aws:dynamodb:eu-west-1:123456789012:table/Users/stream/2026-01-01T00:00:00.000"
OTHER_ARN = "arn:aws:dynamodb:eu-west-1:123456789012:table/Accounts/stream/2026-02-01T00:00:00.000"
QUEUE_ARN = "arn:aws:sqs:eu-west-1:123456789012:email-checker-prod-stream-failures"
BUCKET_ARN = "arn:aws:s3:::email-checker-prod-failures-123456789012-eu-west-1"

# The tests' own stages (tests/projects.py), named as the expectations below spell them; and one that is none of them.
STAGES = ("dev", "prod")
UNKNOWN = "staging"


@pytest.fixture
def chalice_dir(tmp_path):
    """A project's .chalice/ (all the guard reads) with this module's stages, in a project directory of its own."""
    return write_config(tmp_path, named_stages(*STAGES)) / ".chalice"


@pytest.fixture
def project_copy(tmp_path):
    """This module's own project, with the stages its expectations name (STAGES)."""
    return copy_project(tmp_path / "project", named_stages(*STAGES))


def configure(chalice_dir, **variables):
    """Set prod's variables in the copy's config.json and regenerate its policy files, as `tools.stage` does."""
    config = json.loads((chalice_dir / "config.json").read_text())
    stage.stage_variables(config, "prod").update(variables)
    stage.write_json(chalice_dir / "config.json", config)
    stage.write_policies(config, chalice_dir)


def hand_edit(chalice_dir, stream_arn):
    """Change prod's STREAM_ARN in config.json only, leaving the policy files as they were."""
    config = json.loads((chalice_dir / "config.json").read_text())
    config["stages"]["prod"]["environment_variables"]["STREAM_ARN"] = stream_arn
    stage.write_json(chalice_dir / "config.json", config)


def test_every_stage_names_itself_in_stage(checked_project):
    config = json.loads((checked_project / ".chalice" / "config.json").read_text())
    assert {name: s["environment_variables"].get("STAGE") for name, s in config["stages"].items()} == {
        name: name for name in config["stages"]
    }


def test_a_bound_stage_passes_with_its_own_destinations(chalice_dir):
    configure(chalice_dir, STREAM_ARN=ARN)
    assert deploy_refusal(chalice_dir.parent, "prod", ARN) is None
    # The files grant on the stage's own bucket and queue only, from bind on: nothing is added after a deploy.
    assert f"{BUCKET_ARN}/aws/lambda/*" in (chalice_dir / "policy-prod.json").read_text()
    assert "sqs:SendMessage" not in (chalice_dir / "policy-prod.json").read_text()
    assert f"{BUCKET_ARN}/sweep/state.json" in (chalice_dir / "policy-prod-sweep.json").read_text()


def grant(chalice_dir, name, action, resource, **extra):
    """Add an Allow statement to one of prod's policy files, as a hand edit would."""
    document = json.loads((chalice_dir / name).read_text())
    document["Statement"].append({"Sid": "Added", "Effect": "Allow", "Action": action, "Resource": resource, **extra})
    stage.write_json(chalice_dir / name, document)


@pytest.mark.parametrize(
    ("name", "action", "resource", "shown"),
    [
        ("policy-prod.json", ["sqs:SendMessage"], "*", "sqs:SendMessage on *"),
        ("policy-prod-sweep.json", "sqs:SendMessage", QUEUE_ARN.replace("prod", "dev"), "dev-stream-failures"),
        ("policy-prod.json", ["sqs:*"], ["arn:aws:sqs:eu-west-1:123456789012:other"], ":other"),
        ("policy-prod.json", ["s3:PutObject"], "*", "s3:PutObject on *"),
        ("policy-prod-reconciler.json", ["s3:Put*"], "arn:aws:s3:::someone-else/*", "someone-else/*"),
        ("policy-prod.json", "*", BUCKET_ARN + "*", BUCKET_ARN + "*"),
    ],
    ids=["send-anywhere", "another-stage-queue", "wildcard-action", "put-anywhere", "another-bucket", "star-action"],
)
def test_a_send_or_put_outside_the_stage_own_queues_and_bucket_is_refused(chalice_dir, name, action, resource, shown):
    configure(chalice_dir, STREAM_ARN=ARN)
    grant(chalice_dir, name, action, resource)
    message = deploy_refusal(chalice_dir.parent, "prod", ARN)
    assert message is not None and "\n" not in message
    assert message.startswith(f"stage prod's .chalice/{name} grants ") and shown in message
    assert "not one of the stage's own" in message and "`python -m tools.stage policies`" in message


def test_a_not_resource_grant_counts_as_everywhere(chalice_dir):
    configure(chalice_dir, STREAM_ARN=ARN)
    document = json.loads((chalice_dir / "policy-prod.json").read_text())
    document["Statement"].append({"Effect": "Allow", "Action": "s3:PutObject", "NotResource": "arn:aws:s3:::x/*"})
    stage.write_json(chalice_dir / "policy-prod.json", document)
    assert "grants s3:PutObject on *" in deploy_refusal(chalice_dir.parent, "prod", ARN)


def test_a_send_to_the_stage_own_queue_still_has_to_be_generated(chalice_dir):
    # Not foreign, but nobody generated it: the staleness check names the file.
    configure(chalice_dir, STREAM_ARN=ARN)
    grant(chalice_dir, "policy-prod.json", ["sqs:SendMessage"], QUEUE_ARN)
    message = deploy_refusal(chalice_dir.parent, "prod", ARN)
    assert "policy-prod.json" in message and "not one of the stage's own" not in message


@pytest.mark.parametrize(
    ("scope", "value"),
    [
        ("stage", "true"),
        ("stage", "1"),
        ("stage-function", "yes"),
        ("top", "TRUE"),
        ("stage", "maybe"),
        ("stage-reconciler", "true"),
        ("top-reconciler", "on"),
    ],
)
def test_a_stage_that_switches_partial_failures_on_itself_is_refused(chalice_dir, scope, value):
    """For the stream handler and the reconciler alike: a function answering a mapping that doesn't report partial
    failures has its failed items (or unfinished messages) dropped."""
    configure(chalice_dir, STREAM_ARN=ARN)
    config = json.loads((chalice_dir / "config.json").read_text())
    functions = config["stages"]["prod"]["lambda_functions"]
    target = {
        "stage": config["stages"]["prod"],
        "stage-function": functions.setdefault("sync_is_personal_email", {}),
        "top": config,
        "stage-reconciler": functions.setdefault("reconcile_discarded_batches", {}),
        "top-reconciler": config.setdefault("lambda_functions", {}).setdefault("reconcile_discarded_batches", {}),
    }[scope]
    target.setdefault("environment_variables", {})["REPORT_BATCH_ITEM_FAILURES"] = value
    stage.write_json(chalice_dir / "config.json", config)
    message = deploy_refusal(chalice_dir.parent, "prod", ARN)
    assert message is not None and "\n" not in message
    assert message.startswith(f"stage prod sets REPORT_BATCH_ITEM_FAILURES={value} itself")
    assert "set it to false" in message and "drop the failed items" in message


def test_a_stage_that_keeps_partial_failures_off_passes(chalice_dir):
    configure(chalice_dir, STREAM_ARN=ARN, REPORT_BATCH_ITEM_FAILURES="false")
    assert deploy_refusal(chalice_dir.parent, "prod", ARN) is None
    config = json.loads((chalice_dir / "config.json").read_text())
    del config["stages"]["prod"]["environment_variables"]["REPORT_BATCH_ITEM_FAILURES"]
    stage.write_json(chalice_dir / "config.json", config)
    assert deploy_refusal(chalice_dir.parent, "prod", ARN) is None


def test_chalice_package_refuses_a_stage_that_reports_partial_failures_itself(project_copy, tmp_path):
    assert stage_tool(project_copy, "bind", "--stage", "prod", "--stream-arn", ARN).returncode == 0
    config = json.loads((project_copy / ".chalice" / "config.json").read_text())
    config["stages"]["prod"]["environment_variables"]["REPORT_BATCH_ITEM_FAILURES"] = "true"
    stage.write_json(project_copy / ".chalice" / "config.json", config)
    refused = chalice(project_copy, "package", "--stage", "prod", str(tmp_path / "refused"))
    assert refused.returncode != 0 and "Traceback" not in refused.stderr + refused.stdout
    assert "email-checker: stage prod sets REPORT_BATCH_ITEM_FAILURES=true itself" in refused.stderr
    assert not (tmp_path / "refused" / "sam.json").exists()


def test_a_stream_arn_changed_without_bind_is_refused(chalice_dir):
    configure(chalice_dir, STREAM_ARN=ARN)
    hand_edit(chalice_dir, OTHER_ARN)
    message = deploy_refusal(chalice_dir.parent, "prod", OTHER_ARN)
    assert message is not None and "\n" not in message
    assert "stage prod" in message and "policy-prod.json" in message and "policy-prod-sweep.json" in message
    assert "policy-prod-reconciler.json" in message
    assert "arn:aws:dynamodb:eu-west-1:123456789012:table/Users" in message  # what the stale files grant on
    assert f"`python -m tools.stage bind --stage prod --stream-arn {OTHER_ARN}`" in message
    assert "config.json" not in message


def test_the_unbound_placeholder_policies_are_refused_for_a_real_stream(chalice_dir):
    configure(chalice_dir, STREAM_ARN="")  # unbound: the files name the placeholder table
    hand_edit(chalice_dir, ARN)
    message = deploy_refusal(chalice_dir.parent, "prod", ARN)
    assert message is not None and "table/unbound" in message and "tools.stage bind --stage prod" in message


def test_a_stale_sweep_policy_alone_is_refused(chalice_dir):
    configure(chalice_dir, STREAM_ARN=ARN)
    handler_policy = (chalice_dir / "policy-prod.json").read_text()
    configure(chalice_dir, STREAM_ARN=OTHER_ARN)
    (chalice_dir / "policy-prod.json").write_text(handler_policy)  # only the handler's file brought back to ARN
    message = deploy_refusal(chalice_dir.parent, "prod", ARN)
    assert message is not None
    assert ".chalice/policy-prod-sweep.json" in message and ".chalice/policy-prod.json" not in message


def test_a_stale_reconciler_policy_alone_is_refused(chalice_dir):
    configure(chalice_dir, STREAM_ARN=ARN)
    stale = stage.reconciler_policy_document("email-checker", "prod", OTHER_ARN)
    stage.write_json(chalice_dir / "policy-prod-reconciler.json", stale)
    message = deploy_refusal(chalice_dir.parent, "prod", ARN)
    assert message is not None
    assert ".chalice/policy-prod-reconciler.json" in message and ".chalice/policy-prod.json" not in message
    # A reconciler file with an extra statement is refused too: nothing in it is left to the file's own say.
    document = stage.reconciler_policy_document("email-checker", "prod", ARN)
    document["Statement"].append({"Sid": "X", "Effect": "Allow", "Action": ["sqs:SendMessage"], "Resource": "q"})
    stage.write_json(chalice_dir / "policy-prod-reconciler.json", document)
    assert "policy-prod-reconciler.json" in deploy_refusal(chalice_dir.parent, "prod", ARN)


def test_a_policy_with_a_statement_nobody_generated_is_refused(chalice_dir):
    configure(chalice_dir, STREAM_ARN=ARN)
    document = json.loads((chalice_dir / "policy-prod.json").read_text())
    document["Statement"].append({"Sid": "Extra", "Effect": "Allow", "Action": ["dynamodb:Scan"], "Resource": "*"})
    stage.write_json(chalice_dir / "policy-prod.json", document)
    assert "policy-prod.json" in deploy_refusal(chalice_dir.parent, "prod", ARN)
    (chalice_dir / "policy-prod.json").unlink()
    assert "policy-prod.json (missing or not JSON)" in deploy_refusal(chalice_dir.parent, "prod", ARN)


@pytest.mark.parametrize(
    ("stage_name", "stream_arn", "expected"),
    [
        ("prod", "", "stage prod has no STREAM_ARN"),
        ("prod", "arn:aws:dynamodb:eu-west-1:1:table/Users", "not a DynamoDB stream ARN"),
        ("", ARN, "STAGE is not set"),
        (UNKNOWN, ARN, f"STAGE is {UNKNOWN!r}, which is no stage"),
    ],
    ids=["no-stream-arn", "not-a-stream-arn", "no-stage", "unknown-stage"],
)
def test_every_refusal_points_at_bind(chalice_dir, stage_name, stream_arn, expected):
    message = deploy_refusal(chalice_dir.parent, stage_name, stream_arn)
    assert expected in message
    assert "`python -m tools.stage bind --stage " in message
    # A stage the config lacks: it must be added first (bind refuses it).
    assert ("`python -m tools.stage add-stage --stage <stage>`" in message) == (expected.startswith("STAGE is"))
    assert "config.json" not in message or "stage of .chalice/config.json" in message
    assert "environment_variables" not in message


def test_chalice_package_refuses_a_hand_edited_stream_arn_until_bind(project_copy, tmp_path):
    hand_edit(project_copy / ".chalice", ARN)
    refused = chalice(project_copy, "package", "--stage", "prod", str(tmp_path / "refused"))
    assert refused.returncode != 0
    assert "email-checker: stage prod's IAM policy files" in refused.stderr
    assert f"python -m tools.stage bind --stage prod --stream-arn {ARN}" in refused.stderr
    assert "Traceback" not in refused.stderr + refused.stdout
    assert not (tmp_path / "refused" / "sam.json").exists()

    assert stage_tool(project_copy, "bind", "--stage", "prod", "--stream-arn", ARN).returncode == 0
    packaged = chalice(project_copy, "package", "--stage", "prod", str(tmp_path / "out"))
    assert packaged.returncode == 0, packaged.stderr
    template = json.loads((tmp_path / "out" / "sam.json").read_text())
    variables = template["Resources"]["SyncIsPersonalEmail"]["Properties"]["Environment"]["Variables"]
    assert (variables["STAGE"], variables["STREAM_ARN"]) == ("prod", ARN)


def test_chalice_package_refuses_a_stage_whose_sweep_policy_alone_is_stale(project_copy, tmp_path):
    assert stage_tool(project_copy, "bind", "--stage", "prod", "--stream-arn", ARN).returncode == 0
    stale = stage.sweep_policy_document("email-checker", "prod", OTHER_ARN)
    stage.write_json(project_copy / ".chalice" / "policy-prod-sweep.json", stale)
    refused = chalice(project_copy, "package", "--stage", "prod", str(tmp_path / "out"))
    assert refused.returncode != 0
    assert ".chalice/policy-prod-sweep.json" in refused.stderr
    assert ".chalice/policy-prod.json" not in refused.stderr
    assert "tools.stage bind --stage prod" in refused.stderr and "Traceback" not in refused.stderr


def test_tools_stage_package_with_create_table_passes_for_a_bound_stage(project_copy, tmp_path):
    # The scratch project names the placeholder stream; its policy files must agree with it, not with the stage.
    assert stage_tool(project_copy, "bind", "--stage", "prod", "--stream-arn", ARN).returncode == 0
    result = stage_tool(project_copy, "package", "--stage", "prod", "--create-table", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr


def test_a_batch_that_cannot_answer_inside_the_timeout_at_worst_is_refused(chalice_dir):
    project = chalice_dir.parent
    default = Settings.from_environ({"STAGE": "prod"})
    assert budget_refusal(project, "prod", default) is None
    huge = Settings.from_environ({"STAGE": "prod", "BATCH_SIZE": "10000", "WRITE_CONCURRENCY": "4"})
    refusal = budget_refusal(project, "prod", huge)
    assert refusal and refusal.startswith("stage prod: a batch of BATCH_SIZE=10000 with WRITE_CONCURRENCY=4")
    config = json.loads((chalice_dir / "config.json").read_text())
    config["stages"]["prod"]["lambda_timeout"] = 20
    stage.write_json(chalice_dir / "config.json", config)
    assert handler_timeout(config, "prod") == 20 and "lambda_timeout of 20 s" in budget_refusal(
        project, "prod", default
    )
    config["stages"]["prod"]["lambda_functions"]["sync_is_personal_email"] = {"lambda_timeout": 60}
    assert handler_timeout(config, "prod") == 60


def test_chalice_package_refuses_a_batch_too_big_for_its_timeout(project_copy, tmp_path):
    assert stage_tool(project_copy, "bind", "--stage", "prod", "--stream-arn", ARN).returncode == 0
    config = json.loads((project_copy / ".chalice" / "config.json").read_text())
    config["stages"]["prod"]["environment_variables"].update(BATCH_SIZE="10000", WRITE_CONCURRENCY="2")
    stage.write_json(project_copy / ".chalice" / "config.json", config)
    refused = chalice(project_copy, "package", "--stage", "prod", str(tmp_path / "refused"))
    assert refused.returncode != 0 and "Traceback" not in refused.stderr + refused.stdout
    assert "email-checker: stage prod: a batch of BATCH_SIZE=10000 with WRITE_CONCURRENCY=2" in refused.stderr
    assert "lower BATCH_SIZE or raise WRITE_CONCURRENCY" in refused.stderr
