"""Stage config and IAM: policies derived from each stage's stream ARN, and a clear refusal without one."""

from __future__ import annotations

import json

import pytest

from chalicelib.config import Settings
from tests.projects import OTHER_STAGE, STAGE, chalice, fixture_config, project_config, stage_tool, unused_stage_name
from tools import stage
from tools.deploy_guard import handler_timeout

ARN = "arn:aws:dynamodb:eu-west-1:123456789012:table/Users/stream/2026-01-01T00:00:00.000"


def test_policy_files_are_what_the_stage_stream_arn_gives(checked_project):
    config = project_config(checked_project)
    chalice_dir = checked_project / ".chalice"
    for name in config["stages"]:
        on_disk = json.loads((chalice_dir / config["stages"][name]["iam_policy_file"]).read_text())
        assert on_disk == stage.expected_policy(config, name), "run `make policies`"
        sweep = json.loads((chalice_dir / stage.sweep_policy_file(config, name)).read_text())
        assert sweep == stage.expected_sweep_policy(config, name), "run `make policies`"
        reconciler = json.loads((chalice_dir / stage.reconciler_policy_file(config, name)).read_text())
        assert reconciler == stage.expected_reconciler_policy(config, name), "run `make policies`"


def test_the_sweep_policy_scans_and_writes_the_table_and_keeps_its_state_only():
    policy = stage.sweep_policy_document("email-checker", "prod", ARN)
    by_sid = {statement["Sid"]: statement for statement in policy["Statement"]}
    table = "arn:aws:dynamodb:eu-west-1:123456789012:table/Users"
    assert by_sid["SweepTheTable"]["Action"] == [
        "dynamodb:DescribeTable",
        "dynamodb:Scan",
        stage.TABLE_WRITE_ACTION,
        "dynamodb:BatchGetItem",
    ]
    assert by_sid["SweepTheTable"]["Resource"] == table
    assert all("sweep_table" in r for r in by_sid["WriteLogs"]["Resource"])
    # Its state and nothing else in the bucket: GetObject for the ETag, PutObject with If-Match/If-None-Match, and
    # ListBucket so that a missing state answers 404, not 403 (S3 API Reference, GetObject, "Permissions").
    bucket = "arn:aws:s3:::email-checker-prod-failures-123456789012-eu-west-1"
    assert (by_sid["KeepTheSweepState"]["Action"], by_sid["KeepTheSweepState"]["Resource"]) == (
        ["s3:GetObject", "s3:PutObject"],
        f"{bucket}/sweep/state.json",
    )
    assert (by_sid["FindTheFailureBucket"]["Action"], by_sid["FindTheFailureBucket"]["Resource"]) == (
        ["s3:ListBucket"],
        bucket,
    )
    assert set(by_sid) == {"SweepTheTable", "KeepTheSweepState", "FindTheFailureBucket", "WriteLogs"}
    # Nothing invokes, sends or deletes: no chain, no lock.
    actions = json.dumps(policy)
    assert "lambda:" not in actions and "sqs:" not in actions and "Delete" not in actions
    # The stream handler's policy never gains Scan.
    handler = stage.policy_document("email-checker", "prod", ARN)
    assert not any("dynamodb:Scan" in statement["Action"] for statement in handler["Statement"])


def test_policy_is_least_privilege_on_known_arns():
    policy = stage.policy_document("email-checker", "prod", ARN)
    actions = {action for statement in policy["Statement"] for action in statement["Action"]}
    assert actions == {
        "dynamodb:PartiQLUpdate",
        "dynamodb:BatchGetItem",
        "dynamodb:DescribeStream",
        "dynamodb:GetRecords",
        "dynamodb:GetShardIterator",
        "dynamodb:ListStreams",
        "s3:PutObject",
        "s3:ListBucket",
        "logs:CreateLogGroup",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    }
    by_sid = {statement["Sid"]: statement for statement in policy["Statement"]}
    assert by_sid["KeepTheFlagInSync"]["Resource"] == "arn:aws:dynamodb:eu-west-1:123456789012:table/Users"
    assert by_sid["ReadTheStream"]["Resource"] == ARN
    # The mapping's on-failure destination: Lambda writes under aws/lambda/ of the stage's own bucket, nothing else.
    bucket = "arn:aws:s3:::email-checker-prod-failures-123456789012-eu-west-1"
    assert by_sid["RecordDiscardedBatches"]["Resource"] == f"{bucket}/aws/lambda/*"
    assert by_sid["FindTheFailureBucket"]["Resource"] == bucket
    assert "sqs:" not in json.dumps(policy)
    for statement in policy["Statement"]:
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        assert all(r.startswith("arn:aws:") and "123456789012" in r and "*" not in r.split("/")[0] for r in resources)


def test_the_reconciler_policy_reads_the_failure_object_fixes_items_consumes_its_queue_and_asks_for_a_sweep():
    policy = stage.reconciler_policy_document("email-checker", "prod", ARN)
    by_sid = {statement["Sid"]: statement for statement in policy["Statement"]}
    table = "arn:aws:dynamodb:eu-west-1:123456789012:table/Users"
    assert by_sid["ReconcileTheItems"]["Action"] == ["dynamodb:BatchGetItem", stage.TABLE_WRITE_ACTION]
    assert by_sid["ReconcileTheItems"]["Resource"] == table
    bucket = "arn:aws:s3:::email-checker-prod-failures-123456789012-eu-west-1"
    assert by_sid["ReadDiscardedBatches"]["Action"] == ["s3:GetObject"]
    assert by_sid["ReadDiscardedBatches"]["Resource"] == f"{bucket}/aws/lambda/*"
    assert by_sid["KeepTheSweepState"]["Action"] == ["s3:GetObject", "s3:PutObject"]
    assert by_sid["KeepTheSweepState"]["Resource"] == f"{bucket}/sweep/state.json"
    # A gone on-failure object answers 404 (told from a denied one) only with ListBucket.
    assert by_sid["FindTheFailureBucket"] == {
        "Sid": "FindTheFailureBucket",
        "Effect": "Allow",
        "Action": ["s3:ListBucket"],
        "Resource": bucket,
    }
    assert by_sid["ConsumeTheFailureQueue"]["Resource"] == (
        "arn:aws:sqs:eu-west-1:123456789012:email-checker-prod-stream-failures"
    )
    assert set(by_sid["ConsumeTheFailureQueue"]["Action"]) == {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
        "sqs:ChangeMessageVisibility",
    }
    assert all("reconcile_discarded_batches" in r for r in by_sid["WriteLogs"]["Resource"])
    assert set(by_sid) == {
        "ReconcileTheItems",
        "ReadDiscardedBatches",
        "KeepTheSweepState",
        "FindTheFailureBucket",
        "ConsumeTheFailureQueue",
        "WriteLogs",
    }
    # Neither Scan nor sending nor invoking nor the stream: the reconciler fixes the keys the object holds, the sweep
    # scans.
    actions = json.dumps(policy)
    assert "dynamodb:Scan" not in actions and "sqs:SendMessage" not in actions and "lambda:" not in actions
    assert "dynamodb:GetRecords" not in actions and "/stream/" not in actions


def test_every_policy_writes_with_the_one_write_action():
    documents = [
        stage.policy_document("a", "b", ARN),
        stage.sweep_policy_document("a", "b", ARN),
        stage.reconciler_policy_document("a", "b", ARN),
    ]
    writes = [
        action
        for document in documents
        for statement in document["Statement"]
        for action in statement["Action"]
        if action.startswith("dynamodb:") and ("Update" in action or "Put" in action or "PartiQL" in action)
    ]
    assert writes == [stage.TABLE_WRITE_ACTION] * 3


def test_the_reconciler_timeout_fits_the_queue_visibility_timeout():
    from tools import failure_handling

    config = fixture_config()
    for name in config["stages"]:
        function = config["stages"][name]["lambda_functions"][stage.RECONCILER]
        assert function["lambda_timeout"] == failure_handling.RECONCILER_TIMEOUT_SECONDS
        # Lambda refuses an SQS event source whose visibility timeout is below the function's timeout.
        assert function["lambda_timeout"] <= failure_handling.FAILURE_QUEUE_VISIBILITY_TIMEOUT_SECONDS
        assert "BACKFILL_FUNCTION_NAME" not in config["stages"][name]["environment_variables"]


@pytest.mark.parametrize("bad", ["", "arn:aws:dynamodb:eu-west-1:1:table/Users", "arn:aws:sqs:eu-west-1:1:q"])
def test_a_non_stream_arn_is_refused(bad):
    with pytest.raises(ValueError, match="stream ARN"):
        stage.split_stream_arn(bad)


def test_package_without_a_stream_arn_stops_and_names_the_key(project_copy, tmp_path):
    name = unused_stage_name(project_copy)
    assert stage_tool(project_copy, "add-stage", "--stage", name).returncode == 0  # unbound, whatever the others are
    result = chalice(project_copy, "package", "--stage", name, str(tmp_path / "out"))
    assert result.returncode != 0
    assert f"email-checker: stage {name} has no STREAM_ARN" in result.stderr
    assert f"`python -m tools.stage bind --stage {name} --stream-arn <arn>`" in result.stderr
    assert "config.json" not in result.stderr  # bind writes it, with the policy files that must match
    assert "Traceback" not in result.stderr


def test_bind_then_package_gives_the_function_and_its_mapping(project_copy, tmp_path):
    assert stage_tool(project_copy, "bind", "--stage", OTHER_STAGE, "--stream-arn", ARN).returncode == 0
    result = chalice(project_copy, "package", "--stage", OTHER_STAGE, str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    template = json.loads((tmp_path / "out" / "sam.json").read_text())
    function = template["Resources"]["SyncIsPersonalEmail"]["Properties"]
    config = project_config(project_copy)
    settings = Settings.from_environ(config["stages"][OTHER_STAGE]["environment_variables"])
    assert function["Timeout"] == handler_timeout(config, OTHER_STAGE)
    assert function["Environment"]["Variables"]["STREAM_ARN"] == ARN
    [event_source] = function["Events"].values()
    assert event_source["Properties"] == {
        "Stream": ARN,
        "BatchSize": settings.batch_size,
        "StartingPosition": settings.starting_position,
        "MaximumBatchingWindowInSeconds": settings.maximum_batching_window_in_seconds,
    }
    [policy] = template["Resources"]["SyncIsPersonalEmailRole"]["Properties"]["Policies"]
    assert policy["PolicyDocument"] == stage.policy_document("email-checker", OTHER_STAGE, ARN)
    # Memory and reserved concurrency, at whichever level the config sets them, reach each function.
    for logical_id, function_name in (("SyncIsPersonalEmail", stage.HANDLER), ("SweepTable", stage.SWEEP)):
        packaged = template["Resources"][logical_id]["Properties"]
        assert packaged["MemorySize"] == chalice_setting(config, OTHER_STAGE, function_name, "lambda_memory_size", 128)
        reserved = chalice_setting(config, OTHER_STAGE, function_name, "reserved_concurrency", None)
        assert packaged.get("ReservedConcurrentExecutions") == reserved


def chalice_setting(config, stage_name, function, key, default):
    """A function's setting as Chalice resolves it: the stage's function entry, the stage, the top-level function
    entry, the top level."""
    stage_config = config["stages"][stage_name]
    levels = (stage_config.get("lambda_functions", {}).get(function, {}), stage_config)
    levels += (config.get("lambda_functions", {}).get(function, {}), config)
    return next((level[key] for level in levels if key in level), default)


def test_a_stage_without_the_sweep_policy_file_is_named():
    config = fixture_config()
    del config["stages"][STAGE]["lambda_functions"]
    with pytest.raises(ValueError, match=r"lambda_functions\.sweep_table\.iam_policy_file"):
        stage.sweep_policy_file(config, STAGE)
    with pytest.raises(ValueError, match=r"lambda_functions\.reconcile_discarded_batches\.iam_policy_file"):
        stage.reconciler_policy_file(config, STAGE)


def test_bind_writes_stage_into_a_stage_that_lacks_it(project_copy):
    config_path = project_copy / ".chalice" / "config.json"
    config = json.loads(config_path.read_text())
    del config["stages"][OTHER_STAGE]["environment_variables"]["STAGE"]
    stage.write_json(config_path, config)
    assert stage_tool(project_copy, "bind", "--stage", OTHER_STAGE, "--stream-arn", ARN).returncode == 0
    variables = json.loads(config_path.read_text())["stages"][OTHER_STAGE]["environment_variables"]
    assert (variables["STAGE"], variables["STREAM_ARN"]) == (OTHER_STAGE, ARN)


@pytest.mark.parametrize(
    ("app", "stage_name", "expected"),
    [
        ("email-checker", "prod", "email-checker-prod-failures-123456789012-eu-west-1"),
        ("email-checker", "Prod_EU", None),
        ("email-checker", "s" * 64, None),
        ("a" * 60, "dev", None),
    ],
    ids=["plain", "capitals-and-underscore", "long-stage", "long-app"],
)
def test_the_failure_bucket_name_is_a_legal_global_name_per_stage(app, stage_name, expected):
    from chalicelib.config import BUCKET_NAME, failure_bucket_name

    name = failure_bucket_name(app, stage_name, "123456789012", "eu-west-1")
    assert BUCKET_NAME.fullmatch(name) and len(name) <= 63 and "--" not in name, name
    assert name.endswith("-123456789012-eu-west-1")  # global: the account and region make it the stage's own
    assert expected is None or name == expected
    # One name per stage: two stages that would read alike once lower-cased get different names.
    assert failure_bucket_name(app, stage_name.swapcase() + "x", "123456789012", "eu-west-1") != name


def test_a_new_stage_copies_every_setting_and_makes_the_names_its_own():
    from tools.new_stage import new_stage_entry

    config = fixture_config()
    for source in config["stages"]:
        copied = json.loads(json.dumps(config["stages"][source]))
        copied["environment_variables"]["FAILURE_QUEUE_ARN"] = f"arn:aws:sqs:eu-west-1:123456789012:{source}-q"
        config["stages"][source] = copied
        entry = new_stage_entry(config, "qa-2", source, ARN)
        expected = json.loads(json.dumps(copied))
        expected["iam_policy_file"] = "policy-qa-2.json"
        functions = expected["lambda_functions"]
        functions[stage.RECONCILER]["iam_policy_file"] = "policy-qa-2-reconciler.json"
        functions[stage.SWEEP]["iam_policy_file"] = "policy-qa-2-sweep.json"
        variables = expected["environment_variables"]
        del variables["FAILURE_QUEUE_ARN"]  # the source's deployed queue, written by apply-failure-handling
        variables.update(STAGE="qa-2", STREAM_ARN=ARN)
        assert entry == expected
        assert config["stages"][source] == copied  # the source is left as it was


def test_add_stage_writes_the_stage_and_its_policies_and_it_deploys(project_copy, tmp_path):
    name = unused_stage_name(project_copy)
    added = stage_tool(project_copy, "add-stage", "--stage", name, "--from", OTHER_STAGE, "--stream-arn", ARN)
    assert added.returncode == 0, added.stderr
    assert f"python -m tools.stage queues --stage {name}" in added.stdout
    config = project_config(project_copy)
    assert config["stages"][name]["environment_variables"]["STREAM_ARN"] == ARN
    chalice_dir = project_copy / ".chalice"
    assert json.loads((chalice_dir / f"policy-{name}.json").read_text()) == stage.expected_policy(config, name)
    reconciler = json.loads((chalice_dir / f"policy-{name}-reconciler.json").read_text())
    assert reconciler == stage.expected_reconciler_policy(config, name)
    sweep = json.loads((chalice_dir / f"policy-{name}-sweep.json").read_text())
    assert sweep == stage.expected_sweep_policy(config, name)
    # The deploy guard accepts it as it is: `chalice package` makes its stack, its functions named after it.
    packaged = chalice(project_copy, "package", "--stage", name, str(tmp_path / "out"))
    assert packaged.returncode == 0, packaged.stderr
    template = json.loads((tmp_path / "out" / "sam.json").read_text())
    variables = template["Resources"]["SyncIsPersonalEmail"]["Properties"]["Environment"]["Variables"]
    assert (variables["STAGE"], variables["STREAM_ARN"]) == (name, ARN)
    # `bind` works on it like on any stage of the config.
    other = ARN.replace("table/Users", "table/Accounts")
    assert stage_tool(project_copy, "bind", "--stage", name, "--stream-arn", other).returncode == 0
    config = project_config(project_copy)
    assert json.loads((chalice_dir / f"policy-{name}.json").read_text()) == stage.expected_policy(config, name)


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        (["--stage", OTHER_STAGE], f"stage '{OTHER_STAGE}' is in .chalice/config.json already"),
        (["--stage", "Staging"], "use lower-case letters, digits and '-'"),
        (["--stage", "qa_1"], "use lower-case letters, digits and '-'"),
        (["--stage", "qa-"], "use lower-case letters, digits and '-'"),
        (["--stage", "q" * 23], "at most 22"),
        (["--stage", "qa", "--from", "nowhere"], "no stage 'nowhere' to copy"),
        (["--stage", "qa", "--stream-arn", "arn:aws:dynamodb:eu-west-1:1:table/Users"], "not a DynamoDB stream ARN"),
    ],
    ids=["existing", "upper-case", "underscore", "trailing-hyphen", "too-long", "unknown-source", "bad-arn"],
)
def test_add_stage_refuses_and_writes_nothing(project_copy, arguments, problem):
    before = {path.name: path.read_text() for path in (project_copy / ".chalice").glob("*.json")}
    refused = stage_tool(project_copy, "add-stage", *arguments)
    assert refused.returncode == 2 and problem in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert {path.name: path.read_text() for path in (project_copy / ".chalice").glob("*.json")} == before


def test_an_unknown_stage_points_at_add_stage(project_copy, tmp_path):
    name = unused_stage_name(project_copy)
    bind = stage_tool(project_copy, "bind", "--stage", name, "--stream-arn", ARN)
    assert bind.returncode == 2 and f"`python -m tools.stage add-stage --stage {name}` adds it" in bind.stderr
    # Chalice packages a stage the config lacks with no settings at all (no STAGE): the refusal names both commands.
    packaged = chalice(project_copy, "package", "--stage", name, str(tmp_path / "out"))
    assert packaged.returncode != 0 and "Traceback" not in packaged.stderr
    assert "`python -m tools.stage add-stage --stage <stage>`" in packaged.stderr
    assert "`python -m tools.stage bind --stage <stage>" in packaged.stderr


def test_the_reconciler_derives_the_bucket_the_deploy_steps_make():
    """On the `chalice deploy` path nothing sets FAILURE_BUCKET (a deploy would drop it): the function derives the
    name from its stage and stream, and it must be the one `enable-stream`/`queues` made."""
    from chalicelib.config import stage_failure_bucket_name
    from tools.arns import stage_failure_bucket

    for stage_name in ("prod", "Prod_EU", "a" * 40):
        assert (
            stage_failure_bucket_name("email-checker", stage_name, ARN)
            == stage_failure_bucket("email-checker", stage_name, ARN)[0]
        )
