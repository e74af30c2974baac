"""`tools.stage status`: one line when nothing is deployed, the stream's mapping picked by its source, each function's
real log group, and the stream's open shards x factor against the handler's concurrency (on moto's emulator)."""

from __future__ import annotations

import json
import time

import pytest

from tests.projects import copy_project, lambda_role, named_stages, stage_tool, without_aws
from tools import failure_handling, sizing

# The tests' own stages (tests/projects.py), named as the expectations below spell them.
STAGES = ("dev", "prod")


@pytest.fixture
def project_copy(tmp_path):
    """This module's own project, with the stages its expectations name (STAGES)."""
    return copy_project(tmp_path / "project", named_stages(*STAGES))


@pytest.mark.parametrize("record", [None, {"resources": [], "schema_version": "2.0", "backend": "api"}])
def test_status_after_chalice_delete_is_one_line_without_aws(project_copy, tmp_path, record):
    if record is not None:  # what `chalice delete` leaves; None: never deployed
        deployed = project_copy / ".chalice" / "deployed"
        deployed.mkdir(parents=True, exist_ok=True)
        (deployed / "dev.json").write_text(json.dumps(record))
    result = stage_tool(project_copy, "status", "--stage", "dev", env=without_aws(tmp_path))
    assert result.returncode == 2
    assert result.stdout == "" and "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("error: stage dev has no stream handler deployed") and "chalice deploy --stage dev" in line


@pytest.mark.parametrize(
    ("shards", "factor", "concurrency", "problem"),
    [
        (40, 1, sizing.Concurrency(10, True), "set reserved_concurrency to at least 80"),
        (40, 1, sizing.Concurrency(40, True), None),
        (100, 2, sizing.Concurrency(150, False), "raise the Lambda quota"),
        (100, 1, sizing.Concurrency(900, False), None),
        (100, 1, sizing.Concurrency(None, False, "GetAccountSettings failed"), "could not be read"),
    ],
)
def test_the_handler_must_run_every_shard_at_once(shards, factor, concurrency, problem):
    found = sizing.concurrency_problem(shards, factor, concurrency, "prod")
    if problem is None:
        assert found is None
    else:
        assert problem in found and "\n" not in found
        assert f"{shards} open shards x ParallelizationFactor {factor} = {shards * factor}" in found
        if concurrency.reserved:
            assert "stages.prod.lambda_functions.sync_is_personal_email" in found and ".chalice/config.json" in found


def stack_template(role: str) -> dict:
    """A stack shaped like the packaged one: the stream handler and the reconciler, each with its mapping, and the
    reconciler's own log group."""
    code = {"ZipFile": "def handler(event, context):\n    return {}\n"}
    function = {"Runtime": "python3.11", "Handler": "index.handler", "Role": role, "Code": code}
    return {
        "Resources": {
            "UsersTable": {
                "Type": "AWS::DynamoDB::Table",
                "Properties": {
                    "AttributeDefinitions": [{"AttributeName": "tenant", "AttributeType": "S"}],
                    "KeySchema": [{"AttributeName": "tenant", "KeyType": "HASH"}],
                    "BillingMode": "PAY_PER_REQUEST",
                    "StreamSpecification": {"StreamViewType": "KEYS_ONLY"},
                },
            },
            "StreamFailureQueue": {"Type": "AWS::SQS::Queue", "Properties": {}},
            "StreamFailureBucket": {"Type": "AWS::S3::Bucket", "Properties": {}},
            "ReconcileDiscardedBatchesLogGroup": {
                "Type": "AWS::Logs::LogGroup",
                "Properties": {"LogGroupName": "stack-owned-reconciler-logs"},
            },
            "SyncIsPersonalEmail": {
                "Type": "AWS::Lambda::Function",
                "Properties": {**function, "Environment": {"Variables": {"REPORT_BATCH_ITEM_FAILURES": "true"}}},
            },
            "ReconcileDiscardedBatches": {
                "Type": "AWS::Lambda::Function",
                "Properties": {**function, "Environment": {"Variables": {"REPORT_BATCH_ITEM_FAILURES": "true"}}},
            },
            # Listed first: the reconciler's SQS mapping is also in the stack.
            "AReconcilerSqsEventSource": {
                "Type": "AWS::Lambda::EventSourceMapping",
                "Properties": {
                    "FunctionName": {"Ref": "ReconcileDiscardedBatches"},
                    "EventSourceArn": {"Fn::GetAtt": ["StreamFailureQueue", "Arn"]},
                    "BatchSize": 1,
                    **failure_handling.RECONCILER_MAPPING,
                },
            },
            "SyncIsPersonalEmailDynamodbEventSource": {
                "Type": "AWS::Lambda::EventSourceMapping",
                "Properties": {
                    "FunctionName": {"Ref": "SyncIsPersonalEmail"},
                    "EventSourceArn": {"Fn::GetAtt": ["UsersTable", "StreamArn"]},
                    "StartingPosition": "TRIM_HORIZON",
                    **failure_handling.mapping_failure_handling({"Fn::GetAtt": ["StreamFailureBucket", "Arn"]}),
                },
            },
        }
    }


def test_status_reads_the_stream_mapping_the_real_log_group_and_the_shards(emulator, aws_environment, project_copy):
    role = lambda_role(emulator, "status-role")
    cloudformation = emulator.client("cloudformation")
    cloudformation.create_stack(StackName="email-checker-status", TemplateBody=json.dumps(stack_template(role)))
    logs = emulator.client("logs")
    logs.create_log_stream(logGroupName="stack-owned-reconciler-logs", logStreamName="s")
    line = '{"message": "reconciler message", "outcome": "fixed", "items": 3}'
    logs.put_log_events(
        logGroupName="stack-owned-reconciler-logs",
        logStreamName="s",
        logEvents=[{"timestamp": int(time.time() * 1000), "message": line}],
    )
    handler = cloudformation.describe_stack_resource(
        StackName="email-checker-status", LogicalResourceId="SyncIsPersonalEmail"
    )
    handler_name = handler["StackResourceDetail"]["PhysicalResourceId"]

    def status():
        return stage_tool(
            project_copy, "status", "--stage", "prod", "--stack-name", "email-checker-status", env=aws_environment
        )

    result = status()
    output = result.stdout + result.stderr
    # The stream's mapping (not the SQS one), its filter as every path deploys it, on a KEYS_ONLY stream.
    assert 'FilterCriteria              ["{\\"eventName\\": [\\"INSERT\\", \\"MODIFY\\"]}"]' in output, output
    assert "DRIFT" not in result.stdout, output
    assert "1 open shards x ParallelizationFactor 1 = 1 at once" in output
    assert "reconcile_discarded_batches: stack-owned-reconciler-logs" in output
    assert 'last line: {"message": "reconciler message"' in output
    assert result.returncode == 0, output

    # A reservation the stream's shards don't fit in: exit 1, one problem naming the setting to change.
    emulator.client("lambda").put_function_concurrency(FunctionName=handler_name, ReservedConcurrentExecutions=0)
    short = status()
    assert short.returncode == 1, short.stdout + short.stderr
    [verdict] = [line for line in short.stdout.splitlines() if line.startswith("verdict")]
    assert "1 open shards x ParallelizationFactor 1 = 1 concurrent batches" in verdict
    assert "set reserved_concurrency to at least 2" in verdict

    # A filter another tool left on the mapping: reported and failed.
    lambda_client = emulator.client("lambda")
    [mapping] = [
        m
        for m in lambda_client.list_event_source_mappings(FunctionName=handler_name)["EventSourceMappings"]
        if "/stream/" in m["EventSourceArn"]
    ]
    old = {"Filters": [{"Pattern": json.dumps({"dynamodb": {"NewImage": {"Id": {"S": [{"exists": True}]}}}})}]}
    lambda_client.update_event_source_mapping(UUID=mapping["UUID"], FilterCriteria=old)
    lambda_client.delete_function_concurrency(FunctionName=handler_name)
    drifted = status()
    assert drifted.returncode == 1 and "drift: FilterCriteria" in drifted.stdout, drifted.stdout + drifted.stderr

    # A stage whose FLAG_ATTRIBUTE is the bound table's key: the handler could never write it. Reported and failed.
    lambda_client.update_event_source_mapping(UUID=mapping["UUID"], FilterCriteria=failure_handling.filter_criteria())
    config_path = project_copy / ".chalice" / "config.json"
    config = json.loads(config_path.read_text())
    config["stages"]["prod"]["environment_variables"]["FLAG_ATTRIBUTE"] = "tenant"
    config_path.write_text(json.dumps(config))
    conflicting = status()
    assert conflicting.returncode == 1, conflicting.stdout + conflicting.stderr
    assert "key tenant; e-mail in Email, flag in tenant  CONFLICT" in conflicting.stdout
    [verdict] = [line for line in conflicting.stdout.splitlines() if line.startswith("verdict")]
    assert "FLAG_ATTRIBUTE" in verdict and "drift" not in verdict
