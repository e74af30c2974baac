"""The `chalice deploy` path, run against moto's AWS emulator: enable the stream, deploy, read back, apply the
failure handling, read back again, delete."""

from __future__ import annotations

import json
import os

import pytest

from tests.projects import backfill_tool, chalice, stage_tool
from tools import failure_handling, stage

FUNCTION = "email-checker-dev-sync_is_personal_email"
BACKFILL = "email-checker-dev-backfill_segment"
RECONCILER = "email-checker-dev-reconcile_discarded_batches"


@pytest.fixture(scope="module")
def emulator():
    from localdev.moto_server import MotoServer

    with MotoServer() as server:
        yield server


@pytest.fixture
def aws_environment(emulator, tmp_path):
    """Only the emulator's endpoint and dummy credentials: no profile, no other endpoint, no real account."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    missing = str(tmp_path / "no-aws-config")
    return {**environment, **emulator.environment(), "AWS_CONFIG_FILE": missing, "AWS_SHARED_CREDENTIALS_FILE": missing}


def test_enable_stream_then_deploy_apply_failure_handling_and_delete(emulator, aws_environment, project_copy):
    dynamodb = emulator.client("dynamodb")
    dynamodb.create_table(
        TableName="Users",
        AttributeDefinitions=[{"AttributeName": "Id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "Id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )

    # 1. The console step, as a command: turn the stream on and bind the stage to it.
    enabled = stage_tool(project_copy, "enable-stream", "--stage", "dev", "--table-name", "Users", env=aws_environment)
    assert enabled.returncode == 0, enabled.stderr
    table = dynamodb.describe_table(TableName="Users")["Table"]
    assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    stream_arn = table["LatestStreamArn"]
    config = json.loads((project_copy / ".chalice" / "config.json").read_text())
    assert config["stages"]["dev"]["environment_variables"]["STREAM_ARN"] == stream_arn
    policy_file = json.loads((project_copy / ".chalice" / "policy-dev.json").read_text())
    assert policy_file == stage.policy_document("email-checker", "dev", stream_arn)
    # The reconciler's event source names the on-failure queue: enable-stream made it, with its dead-letter queue.
    sqs = emulator.client("sqs")
    failures_url = sqs.get_queue_url(QueueName="email-checker-dev-stream-failures")["QueueUrl"]
    failures = sqs.get_queue_attributes(QueueUrl=failures_url, AttributeNames=["All"])["Attributes"]
    dead_url = sqs.get_queue_url(QueueName="email-checker-dev-stream-failures-dead")["QueueUrl"]
    dead = sqs.get_queue_attributes(QueueUrl=dead_url, AttributeNames=["All"])["Attributes"]
    assert json.loads(failures["RedrivePolicy"]) == {"deadLetterTargetArn": dead["QueueArn"], "maxReceiveCount": 10}
    assert int(failures["VisibilityTimeout"]) == failure_handling.FAILURE_QUEUE_VISIBILITY_TIMEOUT_SECONDS
    assert (dead["SqsManagedSseEnabled"], dead["MessageRetentionPeriod"]) == ("true", "1209600")
    assert json.loads(dead["Policy"]) == failure_handling.https_only_queue_policy(dead["QueueArn"])

    # 2. chalice deploy, then read back what it made.
    deployed = chalice(project_copy, "deploy", "--stage", "dev", env=aws_environment)
    assert deployed.returncode == 0, deployed.stderr
    lambda_client, iam = emulator.client("lambda"), emulator.client("iam")
    function = lambda_client.get_function_configuration(FunctionName=FUNCTION)
    assert function["Timeout"] == 60
    variables = function["Environment"]["Variables"]
    assert variables["STREAM_ARN"] == stream_arn
    assert variables["BATCH_SIZE"] == "100" and variables["REPORT_BATCH_ITEM_FAILURES"] == "false"
    role_name = function["Role"].rsplit("/", 1)[1]
    attached = iam.get_role_policy(RoleName=role_name, PolicyName=role_name)["PolicyDocument"]
    assert attached == policy_file
    # moto lists mappings by function ARN only (not by name, as Lambda also allows).
    [mapping] = lambda_client.list_event_source_mappings(FunctionName=function["FunctionArn"])["EventSourceMappings"]
    assert (mapping["EventSourceArn"], mapping["BatchSize"], mapping["StartingPosition"]) == (
        stream_arn,
        100,
        "TRIM_HORIZON",
    )
    assert "FunctionResponseTypes" not in mapping and "DestinationConfig" not in mapping
    # The backfill function has a role of its own: only it may Scan, and the handler's role can't.
    backfill = lambda_client.get_function_configuration(FunctionName=BACKFILL)
    assert backfill["Timeout"] == 900
    backfill_role = backfill["Role"].rsplit("/", 1)[1]
    assert backfill_role != role_name
    backfill_policy = iam.get_role_policy(RoleName=backfill_role, PolicyName=backfill_role)["PolicyDocument"]
    assert backfill_policy == stage.backfill_policy_document("email-checker", "dev", stream_arn)
    assert "dynamodb:Scan" not in json.dumps(attached)
    assert lambda_client.list_event_source_mappings(FunctionName=backfill["FunctionArn"])["EventSourceMappings"] == []
    # The reconciler: its own role and policy, subscribed to the on-failure queue one message at a time.
    reconciler = lambda_client.get_function_configuration(FunctionName=RECONCILER)
    assert reconciler["Timeout"] == failure_handling.RECONCILER_TIMEOUT_SECONDS
    assert reconciler["Environment"]["Variables"]["BACKFILL_FUNCTION_NAME"] == BACKFILL
    reconciler_role = reconciler["Role"].rsplit("/", 1)[1]
    assert reconciler_role not in (role_name, backfill_role)
    reconciler_policy = iam.get_role_policy(RoleName=reconciler_role, PolicyName=reconciler_role)["PolicyDocument"]
    assert reconciler_policy == stage.reconciler_policy_document("email-checker", "dev", stream_arn)
    [consumer] = lambda_client.list_event_source_mappings(FunctionName=reconciler["FunctionArn"])["EventSourceMappings"]
    assert (consumer["EventSourceArn"], consumer["BatchSize"]) == (failures["QueueArn"], 1)

    # 3. The failure handling chalice deploy can't set, applied to the deployed mapping.
    applied = stage_tool(project_copy, "apply-failure-handling", "--stage", "dev", env=aws_environment)
    assert applied.returncode == 0, applied.stderr
    queue_url = sqs.get_queue_url(QueueName="email-checker-dev-stream-failures")["QueueUrl"]
    queue = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    assert queue["SqsManagedSseEnabled"] == "true"
    assert json.loads(queue["Policy"]) == failure_handling.https_only_queue_policy(queue["QueueArn"])
    assert queue["QueueArn"] == failures["QueueArn"] and queue["RedrivePolicy"] == failures["RedrivePolicy"]
    mapping = lambda_client.get_event_source_mapping(UUID=mapping["UUID"])
    expected = failure_handling.mapping_failure_handling(queue["QueueArn"])
    assert {key: mapping[key] for key in expected} == expected
    assert (mapping["EventSourceArn"], mapping["BatchSize"]) == (stream_arn, 100)
    variables = lambda_client.get_function_configuration(FunctionName=FUNCTION)["Environment"]["Variables"]
    assert variables["REPORT_BATCH_ITEM_FAILURES"] == "true"
    assert variables["STREAM_ARN"] == stream_arn  # the rest of the environment is kept
    attached = iam.get_role_policy(RoleName=role_name, PolicyName=role_name)["PolicyDocument"]
    assert attached == stage.policy_document("email-checker", "dev", stream_arn, queue["QueueArn"])
    config = json.loads((project_copy / ".chalice" / "config.json").read_text())
    dev = config["stages"]["dev"]["environment_variables"]
    # The stage remembers the queue (so the next deploy keeps the send permission) but not the partial-failure
    # mode: a later chalice deploy falls back to raising until this command runs again.
    assert dev["FAILURE_QUEUE_ARN"] == queue["QueueArn"] and dev["REPORT_BATCH_ITEM_FAILURES"] == "false"
    assert json.loads((project_copy / ".chalice" / "policy-dev.json").read_text()) == attached

    # 4. The backfill's fan-out: a results queue, the function's asynchronous destinations, and the send permission.
    setup = backfill_tool(project_copy, "setup-fanout", "--stage", "dev", env=aws_environment)
    assert setup.returncode == 0, setup.stderr
    results_url = sqs.get_queue_url(QueueName="email-checker-dev-backfill-results")["QueueUrl"]
    results_arn = sqs.get_queue_attributes(QueueUrl=results_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    invoke_config = lambda_client.get_function_event_invoke_config(FunctionName=BACKFILL)
    assert invoke_config["MaximumRetryAttempts"] == 0
    assert invoke_config["DestinationConfig"] == {
        "OnSuccess": {"Destination": results_arn},
        "OnFailure": {"Destination": results_arn},
    }
    backfill_policy = iam.get_role_policy(RoleName=backfill_role, PolicyName=backfill_role)["PolicyDocument"]
    assert backfill_policy == stage.backfill_policy_document("email-checker", "dev", stream_arn, results_arn)
    assert json.loads((project_copy / ".chalice" / "policy-dev-backfill.json").read_text()) == backfill_policy
    assert iam.get_role_policy(RoleName=role_name, PolicyName=role_name)["PolicyDocument"] == attached

    # 5. chalice delete removes the function, its mapping and its role.
    deleted = chalice(project_copy, "delete", "--stage", "dev", env=aws_environment)
    assert deleted.returncode == 0, deleted.stderr
    assert lambda_client.list_functions()["Functions"] == []
    assert lambda_client.list_event_source_mappings()["EventSourceMappings"] == []
    assert [role["RoleName"] for role in iam.list_roles()["Roles"]] == []


def test_apply_failure_handling_needs_a_deployed_stage(aws_environment, project_copy):
    result = stage_tool(project_copy, "apply-failure-handling", "--stage", "prod", env=aws_environment)
    assert result.returncode == 2
    assert "chalice deploy --stage prod" in result.stderr


def test_enable_stream_reuses_a_stream_that_is_already_on(emulator, aws_environment, project_copy):
    dynamodb = emulator.client("dynamodb")
    created = dynamodb.create_table(
        TableName="Accounts",
        AttributeDefinitions=[{"AttributeName": "Id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "Id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    stream_arn = created["TableDescription"]["LatestStreamArn"]
    result = stage_tool(
        project_copy, "enable-stream", "--stage", "prod", "--table-name", "Accounts", env=aws_environment
    )
    assert result.returncode == 0, result.stderr
    assert dynamodb.describe_table(TableName="Accounts")["Table"]["LatestStreamArn"] == stream_arn
    config = json.loads((project_copy / ".chalice" / "config.json").read_text())
    assert config["stages"]["prod"]["environment_variables"]["STREAM_ARN"] == stream_arn
