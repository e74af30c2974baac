"""The `chalice deploy` path, run against moto's AWS emulator: enable the stream, deploy, read back, apply the
failure handling, read back again, delete, clean up."""

from __future__ import annotations

import json

import pytest

from chalicelib.config import Settings
from tests.projects import (
    chalice,
    copy_project,
    lambda_role,
    named_stages,
    project_config,
    stage_tool,
    unused_stage_name,
)
from tools import alarms, failure_bucket, failure_handling, stage
from tools.deploy_guard import handler_timeout

BUCKET = "email-checker-dev-failures-123456789012-us-east-1"  # moto's account, in the stream's region
FUNCTION = "email-checker-dev-sync_is_personal_email"
SWEEP = "email-checker-dev-sweep_table"
RECONCILER = "email-checker-dev-reconcile_discarded_batches"

# The tests' own stages (tests/projects.py), named as the expectations below spell them.
STAGES = ("dev", "prod")


@pytest.fixture
def project_copy(tmp_path):
    """This module's own project, with the stages its expectations name (STAGES)."""
    return copy_project(tmp_path / "project", named_stages(*STAGES))


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
    # ... and the on-failure bucket, whose notifications the failure queue lets in (from this bucket only).
    bucket_arn = f"arn:aws:s3:::{BUCKET}"
    assert json.loads(failures["Policy"]) == failure_bucket.failure_queue_policy(
        failures["QueueArn"], bucket_arn, "123456789012"
    )
    s3 = emulator.client("s3")
    assert s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"] == {
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}, "BucketKeyEnabled": False}]
    }
    public_access = s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"]
    assert public_access == failure_bucket.PUBLIC_ACCESS_BLOCK
    assert s3.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"
    assert s3.get_bucket_ownership_controls(Bucket=BUCKET)["OwnershipControls"] == failure_bucket.OWNERSHIP
    assert s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"] == failure_bucket.api_lifecycle(14)["Rules"]
    assert json.loads(s3.get_bucket_policy(Bucket=BUCKET)["Policy"]) == failure_bucket.tls_only_policy(bucket_arn)
    notification = s3.get_bucket_notification_configuration(Bucket=BUCKET)
    assert (
        notification["QueueConfigurations"]
        == failure_bucket.api_notification(failures["QueueArn"])["QueueConfigurations"]
    )
    # S3 tested the destination: its test event is the queue's first message (the reconciler ignores it on AWS;
    # moto runs no function, so it is taken off here).
    [test_event] = sqs.receive_message(QueueUrl=failures_url, WaitTimeSeconds=1)["Messages"]
    assert json.loads(test_event["Body"])["Event"] == "s3:TestEvent"
    sqs.delete_message(QueueUrl=failures_url, ReceiptHandle=test_event["ReceiptHandle"])

    # 2. chalice deploy, then read back what it made.
    deployed = chalice(project_copy, "deploy", "--stage", "dev", env=aws_environment)
    assert deployed.returncode == 0, deployed.stderr
    lambda_client, iam = emulator.client("lambda"), emulator.client("iam")
    function = lambda_client.get_function_configuration(FunctionName=FUNCTION)
    dev_stage = project_config(project_copy)["stages"]["dev"]  # the stage's values are the user's: read, never assumed
    batch_size = Settings.from_environ(dev_stage["environment_variables"]).batch_size
    assert function["Timeout"] == handler_timeout(project_config(project_copy), "dev")
    variables = function["Environment"]["Variables"]
    assert variables["STREAM_ARN"] == stream_arn
    assert variables["BATCH_SIZE"] == str(batch_size) and variables["REPORT_BATCH_ITEM_FAILURES"] == "false"
    role_name = function["Role"].rsplit("/", 1)[1]
    attached = iam.get_role_policy(RoleName=role_name, PolicyName=role_name)["PolicyDocument"]
    assert attached == policy_file
    assert f"{bucket_arn}/aws/lambda/*" in json.dumps(attached)  # granted from the first deploy on: bound, not applied
    # moto lists mappings by function ARN only (not by name, as Lambda also allows).
    [mapping] = lambda_client.list_event_source_mappings(FunctionName=function["FunctionArn"])["EventSourceMappings"]
    assert (mapping["EventSourceArn"], mapping["BatchSize"], mapping["StartingPosition"]) == (
        stream_arn,
        batch_size,
        Settings.from_environ(dev_stage["environment_variables"]).starting_position,
    )
    assert "FunctionResponseTypes" not in mapping and "DestinationConfig" not in mapping
    # The sweep has a role of its own: only it may Scan, and the handler's role can't.
    sweep = lambda_client.get_function_configuration(FunctionName=SWEEP)
    assert sweep["Timeout"] == dev_stage["lambda_functions"][stage.SWEEP]["lambda_timeout"]
    sweep_role = sweep["Role"].rsplit("/", 1)[1]
    assert sweep_role != role_name
    sweep_policy = iam.get_role_policy(RoleName=sweep_role, PolicyName=sweep_role)["PolicyDocument"]
    assert sweep_policy == stage.sweep_policy_document("email-checker", "dev", stream_arn)
    assert "dynamodb:Scan" not in json.dumps(attached)
    assert lambda_client.list_event_source_mappings(FunctionName=sweep["FunctionArn"])["EventSourceMappings"] == []
    # The reconciler: its own role and policy, subscribed to the on-failure queue one message at a time.
    reconciler = lambda_client.get_function_configuration(FunctionName=RECONCILER)
    assert reconciler["Timeout"] == failure_handling.RECONCILER_TIMEOUT_SECONDS
    assert "BACKFILL_FUNCTION_NAME" not in reconciler["Environment"]["Variables"]
    reconciler_role = reconciler["Role"].rsplit("/", 1)[1]
    assert reconciler_role not in (role_name, sweep_role)
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
    assert queue["Policy"] == failures["Policy"]
    assert queue["QueueArn"] == failures["QueueArn"] and queue["RedrivePolicy"] == failures["RedrivePolicy"]
    mapping = lambda_client.get_event_source_mapping(UUID=mapping["UUID"])
    expected = failure_handling.mapping_failure_handling(bucket_arn)
    assert {key: mapping[key] for key in expected} == expected
    assert mapping["DestinationConfig"] == {"OnFailure": {"Destination": bucket_arn}}
    assert (mapping["EventSourceArn"], mapping["BatchSize"]) == (stream_arn, batch_size)
    variables = lambda_client.get_function_configuration(FunctionName=FUNCTION)["Environment"]["Variables"]
    assert variables["REPORT_BATCH_ITEM_FAILURES"] == "true"
    assert variables["STREAM_ARN"] == stream_arn  # the rest of the environment is kept
    # The reconciler's event source reports batch item failures, and its function answers so (no raise on a retry).
    consumer = lambda_client.get_event_source_mapping(UUID=consumer["UUID"])
    assert consumer["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert (consumer["EventSourceArn"], consumer["BatchSize"]) == (failures["QueueArn"], 1)
    answering = lambda_client.get_function_configuration(FunctionName=RECONCILER)["Environment"]["Variables"]
    assert answering["REPORT_BATCH_ITEM_FAILURES"] == "true" and answering["STREAM_ARN"] == stream_arn
    attached = iam.get_role_policy(RoleName=role_name, PolicyName=role_name)["PolicyDocument"]
    assert attached == stage.policy_document("email-checker", "dev", stream_arn)
    config = json.loads((project_copy / ".chalice" / "config.json").read_text())
    dev = config["stages"]["dev"]["environment_variables"]
    # The stage keeps the partial-failure mode off: a later chalice deploy falls back to raising until this command
    # runs again.
    assert dev["REPORT_BATCH_ITEM_FAILURES"] == "false" and "FAILURE_QUEUE_ARN" not in dev
    assert json.loads((project_copy / ".chalice" / "policy-dev.json").read_text()) == attached
    # The alarms and the dashboard: the same definitions as the template's, on this path's names.
    cloudwatch = emulator.client("cloudwatch")
    created = {
        a["AlarmName"]: a for a in cloudwatch.describe_alarms(AlarmNamePrefix="email-checker-dev-")["MetricAlarms"]
    }
    targets = stage.monitoring_targets("email-checker", "dev", FUNCTION)
    assert set(created) == {f"email-checker-dev-{alarm.key}" for alarm in alarms.ALARMS}
    for alarm in alarms.ALARMS:
        made = created[f"email-checker-dev-{alarm.key}"]
        assert (made["Namespace"], made["MetricName"], made["Threshold"], made["Period"]) == (
            alarm.namespace,
            alarm.metric,
            alarm.threshold,
            alarm.period,
        )
        assert made["Dimensions"] == alarm.resolved_dimensions(targets)
        assert made["TreatMissingData"] == "notBreaching" and made["AlarmActions"] == []
    assert created["email-checker-dev-Failed"]["Dimensions"] == [
        {"Name": "service", "Value": "email-checker"},
        {"Name": "stage", "Value": "dev"},
    ]
    body = json.loads(cloudwatch.get_dashboard(DashboardName="email-checker-dev")["DashboardBody"])
    assert body == alarms.dashboard_body(targets, emulator.client("sqs").meta.region_name)

    # status: a clean deploy is all well.
    clean = stage_tool(project_copy, "status", "--stage", "dev", env=aws_environment)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout.splitlines()[-1].split() == ["verdict", "ok"] and "DRIFT" not in clean.stdout
    # A later `chalice deploy` recreating the mapping without partial failures, and a discarded batch waiting.
    lambda_client.update_event_source_mapping(UUID=mapping["UUID"], FunctionResponseTypes=[])
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"DDBStreamBatchInfo": {"shardId": "s"}}))
    drifted = stage_tool(project_copy, "status", "--stage", "dev", env=aws_environment)
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr
    assert "drift: FunctionResponseTypes" in drifted.stdout
    assert "messages waiting: email-checker-dev-stream-failures" in drifted.stdout
    assert "drift: function REPORT_BATCH_ITEM_FAILURES" in drifted.stdout  # the function answers nobody reads
    sqs.purge_queue(QueueUrl=queue_url)
    # The reconciler's event source losing its response type: its function's answers would delete every message.
    lambda_client.update_event_source_mapping(UUID=consumer["UUID"], FunctionResponseTypes=[])
    unreported = stage_tool(project_copy, "status", "--stage", "dev", env=aws_environment)
    assert unreported.returncode == 1, unreported.stdout + unreported.stderr
    assert "drift: reconciler FunctionResponseTypes" in unreported.stdout
    assert "drift: reconciler REPORT_BATCH_ITEM_FAILURES" in unreported.stdout
    # Running it again repairs the mappings, and gives the alarms a topic to notify.
    topic = "arn:aws:sns:us-east-1:123456789012:email-checker-alarms"
    again = stage_tool(
        project_copy, "apply-failure-handling", "--stage", "dev", "--alarm-topic-arn", topic, env=aws_environment
    )
    assert again.returncode == 0, again.stderr
    notified = cloudwatch.describe_alarms(AlarmNamePrefix="email-checker-dev-")["MetricAlarms"]
    assert [(a["AlarmActions"], a["OKActions"]) for a in notified] == [([topic], [topic])] * len(alarms.ALARMS)
    repaired = stage_tool(project_copy, "status", "--stage", "dev", env=aws_environment)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert lambda_client.get_event_source_mapping(UUID=consumer["UUID"])["FunctionResponseTypes"] == [
        "ReportBatchItemFailures"
    ]

    # 4. The sweep: one run at a time, and no send, no invoke, no delete anywhere.
    reserved = lambda_client.get_function_concurrency(FunctionName=SWEEP)["ReservedConcurrentExecutions"]
    assert reserved == dev_stage["lambda_functions"][stage.SWEEP]["reserved_concurrency"] == 1
    assert not [s for s in sweep_policy["Statement"] if {"sqs:SendMessage", "lambda:InvokeFunction"} & set(s["Action"])]

    # cleanup refuses while the stage is deployed: the mapping would lose its destination.
    early = stage_tool(project_copy, "cleanup", "--stage", "dev", "--yes", env=aws_environment)
    assert early.returncode == 2 and "chalice delete --stage dev" in early.stderr

    # 5. chalice delete removes the function, its mapping and its role.
    deleted = chalice(project_copy, "delete", "--stage", "dev", env=aws_environment)
    assert deleted.returncode == 0, deleted.stderr
    assert lambda_client.list_functions()["Functions"] == []
    assert lambda_client.list_event_source_mappings()["EventSourceMappings"] == []
    assert [role["RoleName"] for role in iam.list_roles()["Roles"]] == []

    # 6. cleanup deletes everything else the steps made: queues, the bucket with every version, alarms, dashboard.
    # A failure record, overwritten once and deleted (two versions and a delete marker). moto applies the bucket
    # policy's Deny to object writes without its TLS condition (and speaks HTTP): the objects go in without it.
    s3.delete_bucket_policy(Bucket=BUCKET)
    for body in (b"{}", b'{"again": 1}'):
        s3.put_object(Bucket=BUCKET, Key="aws/lambda/uuid/shard/2026/12/04/record", Body=body)
    s3.delete_object(Bucket=BUCKET, Key="aws/lambda/uuid/shard/2026/12/04/record")
    s3.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(failure_bucket.tls_only_policy(bucket_arn)))
    other_stage_alarm = "email-checker-dev-eu-Errors"  # another stage whose name starts the same: left alone
    cloudwatch.put_metric_alarm(AlarmName=other_stage_alarm, **alarms.ALARMS[0].settings())
    listed = stage_tool(project_copy, "cleanup", "--stage", "dev", env=aws_environment)
    assert listed.returncode == 0, listed.stderr
    assert "not deleted: run again with --yes" in listed.stdout
    for name in (
        "email-checker-dev-stream-failures",
        "email-checker-dev-stream-failures-dead",
        f"bucket     {BUCKET}",
        "alarm      email-checker-dev-Errors",
        "dashboard  email-checker-dev",
    ):
        assert name in listed.stdout, name
    assert other_stage_alarm not in listed.stdout
    cleaned = stage_tool(project_copy, "cleanup", "--stage", "dev", "--yes", env=aws_environment)
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"deleted {3 + len(alarms.ALARMS) + 1} resource(s) of stage dev" in cleaned.stdout
    assert not [url for url in sqs.list_queues().get("QueueUrls", []) if "/email-checker-dev-" in url]
    assert BUCKET not in [bucket["Name"] for bucket in s3.list_buckets()["Buckets"]]
    remaining = cloudwatch.describe_alarms(AlarmNamePrefix="email-checker-dev-")["MetricAlarms"]
    assert [alarm["AlarmName"] for alarm in remaining] == [other_stage_alarm]
    assert cloudwatch.list_dashboards(DashboardNamePrefix="email-checker-dev")["DashboardEntries"] == []
    again = stage_tool(project_copy, "cleanup", "--stage", "dev", "--yes", env=aws_environment)
    assert again.returncode == 0 and "nothing deleted" in again.stdout


def test_apply_failure_handling_needs_a_deployed_stage(aws_environment, project_copy):
    result = stage_tool(project_copy, "apply-failure-handling", "--stage", "prod", env=aws_environment)
    assert result.returncode == 2
    assert "chalice deploy --stage prod" in result.stderr


def test_apply_failure_handling_needs_the_reconcilers_event_source_too(aws_environment, project_copy):
    """A deploy record with the stream handler but not the reconciler's SQS event source: refused in one line before
    anything is changed (the handler is not switched to partial answers alone)."""
    arn = "arn:aws:lambda:us-east-1:123456789012:function:email-checker-prod-sync_is_personal_email"
    handler_only = [
        {"name": "sync_is_personal_email", "resource_type": "lambda_function", "lambda_arn": arn},
        {"name": "sync_is_personal_email-dynamodb-event-source", "resource_type": "dynamodb_event", "event_uuid": "u"},
        {"name": "reconcile_discarded_batches", "resource_type": "lambda_function", "lambda_arn": arn + "-r"},
    ]
    deployed = project_copy / ".chalice" / "deployed"
    deployed.mkdir(parents=True, exist_ok=True)
    (deployed / "prod.json").write_text(json.dumps({"resources": handler_only, "schema_version": "2.0"}))
    result = stage_tool(project_copy, "apply-failure-handling", "--stage", "prod", env=aws_environment)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert "lists no reconcile_discarded_batches with its event source" in line
    assert "chalice deploy --stage prod" in line


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
    # `queues` again is idempotent: the same bucket and queues, and S3's notification (whose every setting sends the
    # queue a test event) left as it was.
    again = stage_tool(project_copy, "queues", "--stage", "prod", env=aws_environment)
    assert again.returncode == 0, again.stderr
    assert "on-failure bucket email-checker-prod-failures-123456789012-us-east-1 and queue" in again.stdout
    sqs = emulator.client("sqs")
    url = sqs.get_queue_url(QueueName="email-checker-prod-stream-failures")["QueueUrl"]
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
    assert [json.loads(m["Body"])["Event"] for m in messages] == ["s3:TestEvent"]


def test_queues_needs_a_bound_stage(aws_environment, project_copy):
    name = unused_stage_name(project_copy)
    assert stage_tool(project_copy, "add-stage", "--stage", name).returncode == 0  # unbound, whatever dev is
    result = stage_tool(project_copy, "queues", "--stage", name, env=aws_environment)
    assert result.returncode == 2 and "has no STREAM_ARN: run enable-stream or bind first" in result.stderr


def test_status_reads_a_cloudformation_stack(emulator, aws_environment, project_copy):
    """The stack path: the function, mapping and queue found by logical id and type in the stack (moto's
    CloudFormation makes no AWS::CloudWatch::Alarm: the alarms are read back from the packaged template instead)."""
    from tools import merge_template

    role = lambda_role(emulator, "stack-role")
    schema = json.loads((project_copy / "schema" / "users-table.json").read_text())
    bucket_arn = {"Fn::GetAtt": ["StreamFailureBucket", "Arn"]}
    settings = failure_handling.mapping_failure_handling(bucket_arn)
    answering = {  # a function with its partial-failure mode on, as the packaged stack deploys both
        "Runtime": "python3.11",
        "Handler": "index.handler",
        "Role": role,
        "Code": {"ZipFile": "def handler(event, context):\n    return {}\n"},
        "Environment": {"Variables": {"REPORT_BATCH_ITEM_FAILURES": "true"}},
    }
    template = {
        "Resources": {
            "UsersTable": {"Type": "AWS::DynamoDB::Table", "Properties": merge_template.table_properties(schema)},
            "StreamFailureQueue": {"Type": "AWS::SQS::Queue", "Properties": {}},
            "StreamFailureBucket": {"Type": "AWS::S3::Bucket", "Properties": {}},
            "SyncIsPersonalEmail": {
                "Type": "AWS::Lambda::Function",
                "Properties": answering,
            },
            "SyncIsPersonalEmailDynamodbEventSource": {
                "Type": "AWS::Lambda::EventSourceMapping",
                "Properties": {
                    "FunctionName": {"Ref": "SyncIsPersonalEmail"},
                    "EventSourceArn": {"Fn::GetAtt": ["UsersTable", "StreamArn"]},
                    "StartingPosition": "TRIM_HORIZON",
                    **settings,
                },
            },
            "ReconcileDiscardedBatches": {
                "Type": "AWS::Lambda::Function",
                "Properties": answering,
            },
            "ReconcileDiscardedBatchesSqsEventSource": {
                "Type": "AWS::Lambda::EventSourceMapping",
                "Properties": {
                    "FunctionName": {"Ref": "ReconcileDiscardedBatches"},
                    "EventSourceArn": {"Fn::GetAtt": ["StreamFailureQueue", "Arn"]},
                    "BatchSize": 1,
                    **failure_handling.RECONCILER_MAPPING,
                },
            },
        },
    }
    cloudformation = emulator.client("cloudformation")
    cloudformation.create_stack(StackName="email-checker-prod", TemplateBody=json.dumps(template))
    result = stage_tool(
        project_copy, "status", "--stage", "prod", "--stack-name", "email-checker-prod", env=aws_environment
    )
    assert "from CloudFormation stack email-checker-prod" in result.stdout, result.stdout + result.stderr
    assert "DRIFT" not in result.stdout and 'FunctionResponseTypes       ["ReportBatchItemFailures"]' in result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    # The function's partial-failure mode off while the mapping expects answers: named, exit 1.
    function = cloudformation.describe_stack_resource(
        StackName="email-checker-prod", LogicalResourceId="SyncIsPersonalEmail"
    )
    emulator.client("lambda").update_function_configuration(
        FunctionName=function["StackResourceDetail"]["PhysicalResourceId"],
        Environment={"Variables": {"REPORT_BATCH_ITEM_FAILURES": "false"}},
    )
    drifted = stage_tool(
        project_copy, "status", "--stage", "prod", "--stack-name", "email-checker-prod", env=aws_environment
    )
    assert drifted.returncode == 1 and "drift: function REPORT_BATCH_ITEM_FAILURES" in drifted.stdout
    assert "drift: reconciler" not in drifted.stdout  # the stack's reconciler and its SQS event source agree
