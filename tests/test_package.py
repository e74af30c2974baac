"""The `chalice package` path: the merge template, what the packaged template holds, and cfn-lint on it."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from chalicelib.config import RECONCILER_MAXIMUM_CONCURRENCY, Settings
from tests.projects import (
    BIN,
    ROOT,
    chalice,
    copy_project,
    named_stages,
    stage_tool,
    unused_stage_name,
)
from tools import alarms, failure_handling, merge_template
from tools.deploy_guard import handler_timeout
from tools.project import SWEEP
from tools.stage import HANDLER, TABLE_WRITE_ACTION

ARN = "arn:aws:dynamodb:eu-west-1:123456789012:table/Users/stream/2026-01-01T00:00:00.000"
TABLE_ARN = "arn:aws:dynamodb:eu-west-1:123456789012:table/Users"
SCHEMA = json.loads((ROOT / "schema" / "users-table.json").read_text())

# The tests' own stages (tests/projects.py), named as the expectations below spell them.
STAGES = ("dev", "prod")
CONFIG = named_stages(*STAGES)


@pytest.fixture
def project_copy(tmp_path):
    """This module's own project, with the stages its expectations name (STAGES)."""
    return copy_project(tmp_path / "project", named_stages(*STAGES))


@pytest.fixture(scope="module")
def stack_with_table(tmp_path_factory):
    """The prod stage packaged by `tools.stage package --create-table`: (sam.json, out dir)."""
    project = copy_project(tmp_path_factory.mktemp("create") / "project", CONFIG)
    out = project.parent / "out"
    result = stage_tool(project, "package", "--stage", "prod", "--create-table", str(out))
    assert result.returncode == 0, result.stderr
    return json.loads((out / "sam.json").read_text()), out


@pytest.fixture(scope="module")
def sam_to_cloudformation():
    """Transform a packaged SAM template into the CloudFormation CloudFormation itself would run."""
    from samtranslator.translator.transform import transform

    class NoManagedPolicies:
        def load(self):
            return {}

    def run(template):
        template = json.loads(json.dumps(template))
        # `aws cloudformation package` uploads deployment.zip and puts its S3 location here; SAM insists on one.
        for function in ("SyncIsPersonalEmail", "ReconcileDiscardedBatches", "SweepTable"):
            template["Resources"][function]["Properties"]["CodeUri"] = "s3://artifacts/deployment.zip"
        return transform(template, {}, NoManagedPolicies())

    saved = os.environ.get("AWS_DEFAULT_REGION")
    os.environ["AWS_DEFAULT_REGION"] = "eu-west-1"  # SAM resolves the pseudo parameters for one region
    yield run
    if saved is None:
        os.environ.pop("AWS_DEFAULT_REGION")
    else:
        os.environ["AWS_DEFAULT_REGION"] = saved


def cfn_lint(path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "cfn-lint"), str(path)], capture_output=True, text=True, timeout=300)


def resolve(value, parameters, conditions):
    """Evaluate the few intrinsics the merge template uses; GetAtt and Ref to resources stay symbolic."""
    if isinstance(value, list):
        return [resolve(item, parameters, conditions) for item in value]
    if not isinstance(value, dict):
        return value
    if "Ref" in value:
        return parameters.get(value["Ref"], f"<{value['Ref']}>")
    if "Fn::GetAtt" in value:
        return "<{}.{}>".format(*value["Fn::GetAtt"])
    if "Fn::If" in value:
        condition, when_true, when_false = value["Fn::If"]
        return resolve(when_true if conditions[condition] else when_false, parameters, conditions)
    if "Fn::Split" in value:
        separator, text = value["Fn::Split"]
        return resolve(text, parameters, conditions).split(separator)
    if "Fn::Select" in value:
        index, items = value["Fn::Select"]
        return resolve(items, parameters, conditions)[index]
    if "Fn::Join" in value:
        separator, items = value["Fn::Join"]
        return separator.join(resolve(items, parameters, conditions))
    return {key: resolve(item, parameters, conditions) for key, item in value.items()}


def test_the_committed_merge_template_is_the_one_the_schema_gives():
    committed = json.loads((ROOT / "deploy" / "merge-template.json").read_text())
    assert committed == merge_template.expected_merge_template(), "run `make merge-template`"


def test_the_table_comes_from_the_schema_with_pitr_and_encryption():
    properties = merge_template.table_properties(SCHEMA)
    assert properties == {
        "AttributeDefinitions": SCHEMA["AttributeDefinitions"],
        "KeySchema": SCHEMA["KeySchema"],
        "BillingMode": "PAY_PER_REQUEST",
        "StreamSpecification": {"StreamViewType": "NEW_AND_OLD_IMAGES"},
        "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
        "SSESpecification": {"SSEEnabled": True},
    }
    with pytest.raises(ValueError, match="NEW_AND_OLD_IMAGES"):
        merge_template.table_properties({**SCHEMA, "StreamSpecification": {"StreamEnabled": False}})


def test_the_packaged_stack_holds_every_setting(stack_with_table):
    template, _ = stack_with_table
    resources = template["Resources"]
    assert set(resources) == {
        "SyncIsPersonalEmail",
        "SyncIsPersonalEmailRole",
        "UsersTable",
        "StreamFailureQueue",
        "StreamFailureQueuePolicy",
        "SyncIsPersonalEmailLogGroup",
        "Dashboard",
        *(alarm.logical_id for alarm in alarms.ALARMS),
        "ReconcileDiscardedBatches",
        "ReconcileDiscardedBatchesRole",
        "ReconcileDiscardedBatchesLogGroup",
        "StreamFailureDeadLetterQueue",
        "StreamFailureDeadLetterQueuePolicy",
        "SweepTable",
        "SweepTableRole",
        "SweepTableLogGroup",
        "StreamFailureBucket",
        "StreamFailureBucketPolicy",
    }
    assert template["Parameters"]["UsersTableStreamArn"]["Default"] == "CREATE"
    assert template["Parameters"]["Stage"]["Default"] == "prod"
    assert template["Parameters"]["AlarmTopicArn"]["Default"] == ""
    table_stream = {
        "Fn::If": ["CreateUsersTable", {"Fn::GetAtt": ["UsersTable", "StreamArn"]}, {"Ref": "UsersTableStreamArn"}]
    }

    function = resources["SyncIsPersonalEmail"]["Properties"]
    config = CONFIG  # the stage's values are the user's: the stack must carry whatever they are
    prod = config["stages"]["prod"]
    settings = Settings.from_environ(prod["environment_variables"])
    assert function["Timeout"] == handler_timeout(config, "prod")
    assert function["LoggingConfig"] == {"LogGroup": {"Ref": "SyncIsPersonalEmailLogGroup"}}
    variables = function["Environment"]["Variables"]
    assert variables["REPORT_BATCH_ITEM_FAILURES"] == "true"
    assert variables["STAGE"] == {"Ref": "Stage"}  # the metrics' dimension, the same one the alarms watch
    assert variables["STREAM_ARN"] == table_stream
    assert variables["BATCH_SIZE"] == prod["environment_variables"]["BATCH_SIZE"]  # the stage's settings are kept

    [event] = function["Events"].values()
    assert event["Type"] == "DynamoDB"
    assert event["Properties"] == {
        "Stream": table_stream,
        "BatchSize": settings.batch_size,
        "StartingPosition": settings.starting_position,
        "MaximumBatchingWindowInSeconds": settings.maximum_batching_window_in_seconds,
        "BisectBatchOnFunctionError": True,
        "MaximumRetryAttempts": 100,
        "MaximumRecordAgeInSeconds": 21600,
        "DestinationConfig": {"OnFailure": {"Destination": {"Fn::GetAtt": ["StreamFailureBucket", "Arn"]}}},
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
        "MetricsConfig": {"Metrics": ["EventCount"]},
        "FilterCriteria": {"Filters": [{"Pattern": '{"eventName": ["INSERT", "MODIFY"]}'}]},
        "ParallelizationFactor": settings.parallelization_factor,
    }
    # The stage's choice, whatever it is (unreserved unless the stage reserves some: docs/performance.md, sizing).
    handler = prod["lambda_functions"].get(HANDLER, {})
    assert function.get("ReservedConcurrentExecutions") == handler.get("reserved_concurrency")

    table = resources["UsersTable"]
    assert table["Condition"] == "CreateUsersTable"
    assert table["DeletionPolicy"] == table["UpdateReplacePolicy"] == "Retain"
    assert table["Properties"] == merge_template.table_properties(SCHEMA)

    queue = resources["StreamFailureQueue"]["Properties"]
    assert queue["SqsManagedSseEnabled"] is True
    https_only, _ = resources["StreamFailureQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert https_only["Effect"] == "Deny" and https_only["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert resources["SyncIsPersonalEmailLogGroup"]["Properties"]["RetentionInDays"] == 30


def test_the_sweep_runs_on_its_schedule_alone_with_its_state_in_the_bucket(stack_with_table):
    template, _ = stack_with_table
    resources = template["Resources"]
    function = resources["SweepTable"]["Properties"]
    assert function["Handler"] == "app.sweep_table"
    sweep = CONFIG["stages"]["prod"]["lambda_functions"][SWEEP]
    assert (function["Timeout"], function["MemorySize"], function["Role"]) == (
        sweep["lambda_timeout"],
        sweep["lambda_memory_size"],
        {"Fn::GetAtt": ["SweepTableRole", "Arn"]},
    )
    # One run at a time: a second would only lose its claim on the state.
    assert function["ReservedConcurrentExecutions"] == 1
    assert function["Environment"]["Variables"]["FAILURE_BUCKET"] == {"Ref": "StreamFailureBucket"}
    [event] = function["Events"].values()
    assert event["Type"] == "Schedule" and event["Properties"]["Schedule"].startswith("rate(")
    assert not [name for name in resources if "Backfill" in name or "Audit" in name]


def test_the_on_failure_bucket_is_private_encrypted_versioned_expiring_and_notifies_the_failure_queue(
    stack_with_table,
):
    template, _ = stack_with_table
    resources = template["Resources"]
    bucket = resources["StreamFailureBucket"]
    assert bucket["Type"] == "AWS::S3::Bucket"
    # S3 tests the notification's destination when it is configured: the queue's policy must exist first.
    assert bucket["DependsOn"] == ["StreamFailureQueuePolicy"]
    properties = bucket["Properties"]
    assert properties["BucketEncryption"] == {
        "ServerSideEncryptionConfiguration": [{"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
    }
    assert properties["PublicAccessBlockConfiguration"] == dict.fromkeys(
        ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"), True
    )
    assert properties["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    assert properties["VersioningConfiguration"] == {"Status": "Enabled"}
    expire, states, markers = properties["LifecycleConfiguration"]["Rules"]
    # Only failure objects expire; the sweep's state never does, and its earlier versions go after a day.
    assert expire["Prefix"] == "aws/lambda/"
    assert states == {
        "Id": "remove-old-sweep-states",
        "Prefix": "sweep/state.json",
        "Status": "Enabled",
        "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
    }
    assert expire["ExpirationInDays"] == expire["NoncurrentVersionExpiration"]["NoncurrentDays"]
    assert expire["ExpirationInDays"] == {"Ref": "FailureObjectRetentionDays"}
    assert template["Parameters"]["FailureObjectRetentionDays"]["Default"] == 14  # the stage's default
    assert markers["ExpiredObjectDeleteMarker"] is True
    assert properties["NotificationConfiguration"] == {
        "QueueConfigurations": [
            {
                "Event": "s3:ObjectCreated:*",
                "Queue": {"Fn::GetAtt": ["StreamFailureQueue", "Arn"]},
                "Filter": {"S3Key": {"Rules": [{"Name": "prefix", "Value": "aws/lambda/"}]}},
            }
        ]
    }
    skipped = {skip["id"] for skip in bucket["Metadata"]["checkov"]["skip"]}
    assert skipped == {"CKV_AWS_18"}  # access logging; each skip has its reason
    for queue in ("StreamFailureQueue", "StreamFailureDeadLetterQueue"):
        [queue_skip] = resources[queue]["Metadata"]["checkov"]["skip"]
        assert queue_skip["id"] == "CKV_AWS_27" and "SqsManagedSseEnabled" in queue_skip["comment"]
    assert all(len(skip["comment"]) > 20 for skip in bucket["Metadata"]["checkov"]["skip"])
    [tls_only] = resources["StreamFailureBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert tls_only["Effect"] == "Deny" and tls_only["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    arn = {"Fn::GetAtt": ["StreamFailureBucket", "Arn"]}
    assert tls_only["Resource"] == [arn, {"Fn::Join": ["", [arn, "/*"]]}]
    # The queue lets in this bucket's notifications only: the bucket's name, stated without naming the bucket
    # resource (which waits for this policy), is the one the bucket gets.
    _, allow = resources["StreamFailureQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert (allow["Effect"], allow["Principal"], allow["Action"]) == (
        "Allow",
        {"Service": "s3.amazonaws.com"},
        "sqs:SendMessage",
    )
    assert allow["Resource"] == {"Fn::GetAtt": ["StreamFailureQueue", "Arn"]}
    assert allow["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    source = allow["Condition"]["ArnEquals"]["aws:SourceArn"]["Fn::Sub"]
    name = properties["BucketName"]["Fn::Sub"]
    assert source[0] == "arn:${AWS::Partition}:s3:::" + name[0] and source[1] == name[1]
    stack_id = (
        "arn:aws:cloudformation:eu-west-1:123456789012:stack/email-checker-prod/51af3dc0-da77-11e4-872e-1234567db123"
    )
    resolved = name[0].replace("${StackUuid}", stack_id.split("/")[int(name[1]["StackUuid"]["Fn::Select"][0])])
    assert resolved == "stream-failures-51af3dc0-da77-11e4-872e-1234567db123" and len(resolved) <= 63


def test_package_takes_the_retention_from_the_stage(project_copy, tmp_path):
    config_path = project_copy / ".chalice" / "config.json"
    config = json.loads(config_path.read_text())
    config["stages"]["prod"]["environment_variables"]["FAILURE_OBJECT_RETENTION_DAYS"] = "30"
    config_path.write_text(json.dumps(config))
    result = stage_tool(project_copy, "package", "--stage", "prod", "--create-table", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    template = json.loads((tmp_path / "out" / "sam.json").read_text())
    assert template["Parameters"]["FailureObjectRetentionDays"]["Default"] == 30
    config["stages"]["prod"]["environment_variables"]["FAILURE_OBJECT_RETENTION_DAYS"] = "0"
    config_path.write_text(json.dumps(config))
    refused = stage_tool(project_copy, "package", "--stage", "prod", "--create-table", str(tmp_path / "refused"))
    assert refused.returncode == 2 and "FAILURE_OBJECT_RETENTION_DAYS must be" in refused.stderr


def test_every_alarm_reads_back_from_the_packaged_template_as_defined(stack_with_table):
    template, _ = stack_with_table
    resources = template["Resources"]
    conditions = {"CreateUsersTable": True, "HasAlarmTopic": False}
    # The targets as the packaged stack resolves them: the handler, its queue, the stage parameter, the service.
    # The reconciler's dead-letter queue's alarm comes with the queue.
    dead_letter_queue = "StreamFailureDeadLetterQueue" in resources
    targets = {
        "function": "<SyncIsPersonalEmail>",
        "failure_queue": "<StreamFailureQueue.QueueName>",
        "dead_letter_queue": "<StreamFailureDeadLetterQueue.QueueName>" if dead_letter_queue else None,
        "reconciler_function": "<ReconcileDiscardedBatches>",
        "sweep_function": "<SweepTable>",
        "service": "email-checker",
        "stage": "prod",
    }
    expected = alarms.alarms_for(targets)
    assert len(expected) == len(alarms.ALARMS) - (not dead_letter_queue)
    assert {name for name, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"} == {
        alarm.logical_id for alarm in expected
    }
    for alarm in expected:
        properties = resolve(resources[alarm.logical_id]["Properties"], {"Stage": "prod"}, conditions)
        assert resources[alarm.logical_id]["Type"] == "AWS::CloudWatch::Alarm"
        assert (properties["Namespace"], properties["MetricName"]) == (alarm.namespace, alarm.metric)
        assert properties["Dimensions"] == alarm.resolved_dimensions(targets)
        assert (properties["Threshold"], properties["Period"], properties["Statistic"]) == (
            alarm.threshold,
            alarm.period,
            alarm.statistic,
        )
        assert properties["TreatMissingData"] == "notBreaching"
        assert properties["AlarmActions"] == properties["OKActions"] == "<AWS::NoValue>"
        topic = resolve(
            resources[alarm.logical_id]["Properties"]["AlarmActions"],
            {"AlarmTopicArn": "arn:t"},
            {"HasAlarmTopic": True},
        )
        assert topic == ["arn:t"]
    # The custom metrics are alarmed with exactly the handler's dimensions: service from Powertools, stage from STAGE.
    custom = [a for a in expected if a.namespace == "EmailChecker"]
    assert {a.metric for a in custom} == {
        "Failed",
        "Rejected",
        "Malformed",
        "BatchErrors",
        "OutOfTime",
        "ReconcilerSweepRequests",
        "ReconcilerFailed",
        "ReconcilerUnusable",
        "SweepPassOverdue",
        "SweepUrgentOverdue",
        "SweepRunFailed",
        "SweepStateWriteErrors",
        "AccessDenied",
        "FlagInKey",
    }
    for alarm in custom:
        names = [d["Name"] for d in resources[alarm.logical_id]["Properties"]["Dimensions"]]
        assert names == ["service", "stage"]
    body = resources["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    graphed = [w["properties"]["metrics"][0][:2] for w in json.loads(body)["widgets"]]
    assert graphed == [[a.namespace, a.metric] for a in expected]


def test_the_reconciler_consumes_the_failure_queue_which_redrives_to_its_dead_letter_queue(stack_with_table):
    template, _ = stack_with_table
    resources = template["Resources"]
    function = resources["ReconcileDiscardedBatches"]["Properties"]
    assert function["Handler"] == "app.reconcile_discarded_batches"
    assert function["Role"] == {"Fn::GetAtt": ["ReconcileDiscardedBatchesRole", "Arn"]}
    assert function["Timeout"] == failure_handling.RECONCILER_TIMEOUT_SECONDS
    assert function["LoggingConfig"] == {"LogGroup": {"Ref": "ReconcileDiscardedBatchesLogGroup"}}
    assert "BACKFILL_FUNCTION_NAME" not in function["Environment"]["Variables"]  # it starts nothing
    # It names the messages to come back later in its answer (no Lambda Errors for a retry), as its event source
    # reports them.
    assert function["Environment"]["Variables"]["REPORT_BATCH_ITEM_FAILURES"] == "true"
    # Chalice's event source (named after the `chalice deploy` path's queue) now reads the stack's own queue.
    assert function["Events"] == {
        "ReconcileDiscardedBatchesSqsEventSource": {
            "Type": "SQS",
            "Properties": {
                "Queue": {"Fn::Sub": "${StreamFailureQueue.Arn}"},
                "BatchSize": 1,
                "MaximumBatchingWindowInSeconds": 0,
                # The reconcilers a burst of discarded batches runs at once (AWS's cap for an SQS event source).
                "ScalingConfig": {"MaximumConcurrency": RECONCILER_MAXIMUM_CONCURRENCY},
                "FunctionResponseTypes": ["ReportBatchItemFailures"],
            },
        }
    }
    queue = resources["StreamFailureQueue"]["Properties"]
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["StreamFailureDeadLetterQueue", "Arn"]},
        "maxReceiveCount": 10,
    }
    assert queue["VisibilityTimeout"] >= function["Timeout"]
    dead = resources["StreamFailureDeadLetterQueue"]["Properties"]
    assert dead == {"SqsManagedSseEnabled": True, "MessageRetentionPeriod": 1_209_600}
    assert dead["MessageRetentionPeriod"] >= queue["MessageRetentionPeriod"]
    [https_only] = resources["StreamFailureDeadLetterQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert https_only["Effect"] == "Deny" and https_only["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert resources["StreamFailureDeadLetterQueuePolicy"]["Properties"]["Queues"] == [
        {"Ref": "StreamFailureDeadLetterQueue"}
    ]


@pytest.mark.parametrize(
    ("parameter", "table", "stream"),
    [
        ("CREATE", "<UsersTable.Arn>", "<UsersTable.StreamArn>"),
        (ARN, TABLE_ARN, ARN),
    ],
    ids=["created-table", "existing-table"],
)
def test_the_role_is_least_privilege_on_the_resolved_arns(stack_with_table, parameter, table, stream):
    template, _ = stack_with_table
    [policy] = template["Resources"]["SyncIsPersonalEmailRole"]["Properties"]["Policies"]
    document = resolve(
        policy["PolicyDocument"], {"UsersTableStreamArn": parameter}, {"CreateUsersTable": parameter == "CREATE"}
    )
    by_sid = {statement["Sid"]: statement for statement in document["Statement"]}
    assert {sid: (s["Action"], s["Resource"]) for sid, s in by_sid.items()} == {
        "KeepTheFlagInSync": (["dynamodb:PartiQLUpdate", "dynamodb:BatchGetItem"], table),
        "ReadTheStream": (["dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator"], stream),
        "FindTheStream": (["dynamodb:ListStreams"], f"{table}/stream/*"),
        "RecordDiscardedBatches": (["s3:PutObject"], "<StreamFailureBucket.Arn>/aws/lambda/*"),
        "FindTheFailureBucket": (["s3:ListBucket"], "<StreamFailureBucket.Arn>"),
        "WriteLogs": (["logs:CreateLogStream", "logs:PutLogEvents"], "<SyncIsPersonalEmailLogGroup.Arn>"),
    }
    assert all(statement["Effect"] == "Allow" for statement in document["Statement"])
    # The sweep scans with its own role, on the table alone, and keeps its state: GetObject for the ETag, PutObject
    # with If-Match/If-None-Match, ListBucket so a missing state answers 404 (S3 API Reference, GetObject).
    state = ["s3:GetObject", "s3:PutObject"], "<StreamFailureBucket.Arn>/sweep/state.json"
    [sweep] = template["Resources"]["SweepTableRole"]["Properties"]["Policies"]
    document = resolve(
        sweep["PolicyDocument"], {"UsersTableStreamArn": parameter}, {"CreateUsersTable": parameter == "CREATE"}
    )
    assert {s["Sid"]: (s["Action"], s["Resource"]) for s in document["Statement"]} == {
        "SweepTheTable": (
            ["dynamodb:DescribeTable", "dynamodb:Scan", "dynamodb:PartiQLUpdate", "dynamodb:BatchGetItem"],
            table,
        ),
        "KeepTheSweepState": state,
        "FindTheFailureBucket": (["s3:ListBucket"], "<StreamFailureBucket.Arn>"),
        "WriteLogs": (["logs:CreateLogStream", "logs:PutLogEvents"], "<SweepTableLogGroup.Arn>"),
    }
    # The reconciler: read the failure object, fix its items, consume its queue, record an urgent sweep; nothing on
    # the stream, no Invoke.
    [reconciler] = template["Resources"]["ReconcileDiscardedBatchesRole"]["Properties"]["Policies"]
    document = resolve(
        reconciler["PolicyDocument"], {"UsersTableStreamArn": parameter}, {"CreateUsersTable": parameter == "CREATE"}
    )
    assert {s["Sid"]: (s["Action"], s["Resource"]) for s in document["Statement"]} == {
        "ReconcileTheItems": (["dynamodb:BatchGetItem", TABLE_WRITE_ACTION], table),
        "ReadDiscardedBatches": (["s3:GetObject"], "<StreamFailureBucket.Arn>/aws/lambda/*"),
        "KeepTheSweepState": state,
        "FindTheFailureBucket": (["s3:ListBucket"], "<StreamFailureBucket.Arn>"),
        "ConsumeTheFailureQueue": (
            ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility"],
            "<StreamFailureQueue.Arn>",
        ),
        "WriteLogs": (["logs:CreateLogStream", "logs:PutLogEvents"], "<ReconcileDiscardedBatchesLogGroup.Arn>"),
    }


def test_cfn_lint_passes_on_the_packaged_and_the_transformed_template(stack_with_table, sam_to_cloudformation):
    template, out = stack_with_table
    packaged = cfn_lint(out / "sam.json")
    assert (packaged.returncode, packaged.stdout, packaged.stderr) == (0, "", "")

    cloudformation = sam_to_cloudformation(template)
    (out / "cloudformation.json").write_text(json.dumps(cloudformation))
    transformed = cfn_lint(out / "cloudformation.json")
    assert (transformed.returncode, transformed.stdout, transformed.stderr) == (0, "", "")
    # What CloudFormation creates for the mapping carries every setting, not only the SAM event that describes it.
    mappings = [r for r in cloudformation["Resources"].values() if r["Type"] == "AWS::Lambda::EventSourceMapping"]
    [mapping] = [m for m in mappings if m["Properties"]["FunctionName"] == {"Ref": "SyncIsPersonalEmail"}]
    [consumer] = [m for m in mappings if m["Properties"]["FunctionName"] == {"Ref": "ReconcileDiscardedBatches"}]
    assert consumer["Properties"]["EventSourceArn"] == {"Fn::Sub": "${StreamFailureQueue.Arn}"}
    assert consumer["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    expected = failure_handling.mapping_failure_handling({"Fn::GetAtt": ["StreamFailureBucket", "Arn"]})
    assert {key: mapping["Properties"][key] for key in expected} == expected
    assert "dynamodb:GetRecords" not in json.dumps(cloudformation["Resources"]["ReconcileDiscardedBatchesRole"])


def test_cfn_lint_reports_a_mapping_setting_out_of_range(stack_with_table, sam_to_cloudformation, tmp_path):
    template, _ = stack_with_table
    broken = json.loads(json.dumps(template))
    [event] = broken["Resources"]["SyncIsPersonalEmail"]["Properties"]["Events"].values()
    event["Properties"]["MaximumRetryAttempts"] = 10_001
    (tmp_path / "broken.json").write_text(json.dumps(sam_to_cloudformation(broken)))
    result = cfn_lint(tmp_path / "broken.json")
    assert result.returncode != 0
    assert "E3034" in result.stdout and "10001" in result.stdout


def test_plain_chalice_package_with_the_merge_template_wires_a_bound_stage(project_copy, tmp_path):
    assert stage_tool(project_copy, "bind", "--stage", "prod", "--stream-arn", ARN).returncode == 0
    merge = project_copy / "deploy" / "merge-template.json"
    result = chalice(project_copy, "package", "--stage", "prod", "--merge-template", str(merge), str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    template = json.loads((tmp_path / "out" / "sam.json").read_text())
    # The committed template has no default: whoever deploys it says which table, so nothing is created by surprise.
    assert "Default" not in template["Parameters"]["UsersTableStreamArn"]
    [event] = template["Resources"]["SyncIsPersonalEmail"]["Properties"]["Events"].values()
    resolved = resolve(event["Properties"], {"UsersTableStreamArn": ARN}, {"CreateUsersTable": False})
    assert resolved["Stream"] == ARN
    assert resolved["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_package_for_an_existing_table_defaults_the_parameter_to_the_stage_stream(project_copy, tmp_path):
    name = unused_stage_name(project_copy)
    assert stage_tool(project_copy, "add-stage", "--stage", name).returncode == 0  # unbound, whatever prod is
    refused = stage_tool(project_copy, "package", "--stage", name, str(tmp_path / "out"))
    assert refused.returncode == 2 and "no STREAM_ARN" in refused.stderr and "--create-table" in refused.stderr
    assert stage_tool(project_copy, "bind", "--stage", name, "--stream-arn", ARN).returncode == 0
    result = stage_tool(project_copy, "package", "--stage", name, str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    template = json.loads((tmp_path / "out" / "sam.json").read_text())
    assert template["Parameters"]["UsersTableStreamArn"]["Default"] == ARN
