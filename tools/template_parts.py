"""The merge template's parts: the logical ids Chalice gives the functions and the ids of what the template adds,
the table's properties and the mapping's filter from the schema, queues, the on-failure bucket, the backfill's
asynchronous failure handling, and the alarms and dashboard."""

from __future__ import annotations

import json
from typing import Any

from tools import alarms, failure_bucket, failure_handling

# Chalice's CloudFormation logical ids for the handler `sync_is_personal_email` (a test packages and checks them).
FUNCTION = "SyncIsPersonalEmail"
ROLE = "SyncIsPersonalEmailRole"
EVENT_SOURCE = "SyncIsPersonalEmailDynamodbEventSource"
TABLE = "UsersTable"
QUEUE = "StreamFailureQueue"
QUEUE_POLICY = "StreamFailureQueuePolicy"
LOG_GROUP = "SyncIsPersonalEmailLogGroup"
STREAM_PARAMETER = "UsersTableStreamArn"
STAGE_PARAMETER = "Stage"
TOPIC_PARAMETER = "AlarmTopicArn"
HAS_TOPIC = "HasAlarmTopic"
DASHBOARD = "Dashboard"
CREATE = "CREATE"
CREATES_TABLE = "CreateUsersTable"
LOG_RETENTION_DAYS = 30
# The backfill function `backfill_segment` and what it needs.
BACKFILL_FUNCTION = "BackfillSegment"
BACKFILL_ROLE = "BackfillSegmentRole"
BACKFILL_LOG_GROUP = "BackfillSegmentLogGroup"
BACKFILL_FUNCTION_NAME = "${AWS::StackName}-backfill_segment"
# The reconciler `reconcile_discarded_batches` and its dead-letter queue.
RECONCILER_FUNCTION = "ReconcileDiscardedBatches"
RECONCILER_ROLE = "ReconcileDiscardedBatchesRole"
RECONCILER_EVENT_SOURCE = "ReconcileDiscardedBatchesSqsEventSource"
RECONCILER_LOG_GROUP = "ReconcileDiscardedBatchesLogGroup"
DEAD_LETTER_QUEUE = "StreamFailureDeadLetterQueue"
DEAD_LETTER_QUEUE_POLICY = "StreamFailureDeadLetterQueuePolicy"
# The on-failure bucket, its policy, and the stage's days to keep its objects.
FAILURE_BUCKET = "StreamFailureBucket"
FAILURE_BUCKET_POLICY = "StreamFailureBucketPolicy"
RETENTION_PARAMETER = "FailureObjectRetentionDays"
# Where the backfill's failed asynchronous invocations go.
BACKFILL_FAILURE_QUEUE = "BackfillFailureQueue"
BACKFILL_FAILURE_QUEUE_POLICY = "BackfillFailureQueuePolicy"
BACKFILL_INVOKE_CONFIG = "BackfillSegmentEventInvokeConfig"
# The alarms' role for the backfill failure queue (tools/alarms.py names the other roles).
BACKFILL_FAILURE_QUEUE_ROLE = "backfill_failure_queue"
# The bucket's name can't come from the bucket (the failure queue's policy names it, and the bucket's notification
# needs that policy first): the stack's own id gives a name that is global, lower case and fits 63 characters.
STACK_UUID = {"Fn::Select": [2, {"Fn::Split": ["/", {"Ref": "AWS::StackId"}]}]}
BUCKET_NAME = {"Fn::Sub": ["stream-failures-${StackUuid}", {"StackUuid": STACK_UUID}]}
BUCKET_ARN_BY_NAME = {"Fn::Sub": ["arn:${AWS::Partition}:s3:::stream-failures-${StackUuid}", {"StackUuid": STACK_UUID}]}

STREAM_ARN_PATTERN = r"arn:aws[a-z-]*:dynamodb:[a-z0-9-]+:[0-9]{12}:table/[A-Za-z0-9_.-]{3,255}/stream/.+"


def table_properties(schema: dict[str, Any]) -> dict[str, Any]:
    """The AWS::DynamoDB::Table properties: the schema's keys and stream, on-demand, PITR and encryption on.

    The schema's TableName is left out: CloudFormation names the table after the stack, so two stages' stacks can
    live in one account; the `UsersTableName` output says what it chose.
    """
    stream = schema["StreamSpecification"]
    if not stream.get("StreamEnabled") or stream.get("StreamViewType") != "NEW_AND_OLD_IMAGES":
        raise ValueError("schema/users-table.json must enable a NEW_AND_OLD_IMAGES stream")
    if schema["BillingMode"] != "PAY_PER_REQUEST":
        raise ValueError("schema/users-table.json must use on-demand (PAY_PER_REQUEST) billing")
    return {
        "AttributeDefinitions": schema["AttributeDefinitions"],
        "KeySchema": schema["KeySchema"],
        "BillingMode": schema["BillingMode"],
        "StreamSpecification": {"StreamViewType": stream["StreamViewType"]},
        "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
        "SSESpecification": {"SSEEnabled": True},
    }


def mapping_filter(schema: dict[str, Any]) -> dict[str, Any]:
    """The mapping's filter from the schema's hash key; ValueError if the schema's stream has no NewImage."""
    criteria = failure_handling.stream_filter(schema)
    if criteria is None:
        raise ValueError("schema/users-table.json's stream view has no NewImage: the mapping's filter needs one")
    return criteria


def template_parameters() -> dict[str, Any]:
    """The stack's parameters: the table (or CREATE), the stage, the alarms' topic, the failure objects' days."""
    return {
        STREAM_PARAMETER: {
            "Type": "String",
            "Description": (
                f"The stream ARN of an existing users table (NEW_AND_OLD_IMAGES, the hash key of "
                f"schema/users-table.json: the mapping's filter names it), or {CREATE} to have this stack create "
                "the table from schema/users-table.json."
            ),
            "AllowedPattern": f"^({CREATE}|{STREAM_ARN_PATTERN})$",
            "ConstraintDescription": f"{CREATE} or arn:aws:dynamodb:REGION:ACCOUNT:table/NAME/stream/LABEL",
        },
        STAGE_PARAMETER: {
            "Type": "String",
            "Description": "The Chalice stage: the handler's STAGE, the metrics dimension its alarms watch.",
            "AllowedPattern": "^[A-Za-z0-9_-]+$",
        },
        TOPIC_PARAMETER: {
            "Type": "String",
            "Default": "",
            "Description": "An SNS topic ARN the alarms notify (ALARM and OK); empty: no notifications.",
        },
        RETENTION_PARAMETER: {
            "Type": "Number",
            "Default": failure_bucket.DEFAULT_RETENTION_DAYS,
            "MinValue": 1,
            "MaxValue": failure_bucket.MAX_RETENTION_DAYS,
            "Description": "Days the on-failure bucket keeps a discarded batch's object (the stage's "
            f"{failure_bucket.RETENTION_SETTING}).",
        },
    }


def users_table_or_existing(created: Any, existing: Any) -> dict[str, Any]:
    """`created` when this stack makes the table, `existing` otherwise."""
    return {"Fn::If": [CREATES_TABLE, created, existing]}


def queue_resources(queue: str, policy: str, retention_seconds: int) -> dict[str, Any]:
    """An encrypted SQS queue and its policy refusing anything but HTTPS."""
    return {
        queue: {
            "Type": "AWS::SQS::Queue",
            "Properties": {"SqsManagedSseEnabled": True, "MessageRetentionPeriod": retention_seconds},
            "Metadata": checkov_skips(QUEUE_SKIPS),
        },
        policy: {
            "Type": "AWS::SQS::QueuePolicy",
            "Properties": {
                "Queues": [{"Ref": queue}],
                "PolicyDocument": failure_handling.https_only_queue_policy({"Fn::GetAtt": [queue, "Arn"]}),
            },
        },
    }


# checkov (3.3.30) checks that ask for more than these resources need: each with the reason (docs/deploy.md lists
# them). Only checks checkov runs on CloudFormation are listed (a skip of one it never runs would say nothing).
BUCKET_SKIPS = (
    (
        "CKV_AWS_18",
        "No access logging: only Lambda's role writes and the reconciler's reads; CloudTrail data events are the "
        "audit trail if one is required, and a log bucket would need a log bucket of its own.",
    ),
)
QUEUE_SKIPS = (
    (
        "CKV_AWS_27",
        "Encrypted at rest with SSE-SQS (SqsManagedSseEnabled), which this check does not recognise; a KMS key "
        "would need kms grants for every sender, and the AWS-managed aws/sqs key would stop the bucket's "
        "notifications (S3 can't use it).",
    ),
)


def checkov_skips(skips: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """A resource's Metadata that has checkov skip the given checks, each with its reason."""
    return {"checkov": {"skip": [{"id": check, "comment": why} for check, why in skips]}}


def failure_bucket_resources() -> dict[str, Any]:
    """The on-failure bucket (tools/failure_bucket.py), its TLS-only policy, and the failure queue's policy that lets
    its notifications in; the bucket waits for that policy (S3 tests the destination when it is configured)."""
    queue_arn = {"Fn::GetAtt": [QUEUE, "Arn"]}
    bucket_arn = {"Fn::GetAtt": [FAILURE_BUCKET, "Arn"]}
    return {
        QUEUE_POLICY: {
            "Type": "AWS::SQS::QueuePolicy",
            "Properties": {
                "Queues": [{"Ref": QUEUE}],
                "PolicyDocument": failure_bucket.failure_queue_policy(
                    queue_arn, BUCKET_ARN_BY_NAME, {"Ref": "AWS::AccountId"}
                ),
            },
        },
        FAILURE_BUCKET: {
            "Type": "AWS::S3::Bucket",
            "DependsOn": [QUEUE_POLICY],
            "Properties": failure_bucket.cloudformation_properties(
                BUCKET_NAME, queue_arn, {"Ref": RETENTION_PARAMETER}
            ),
            "Metadata": checkov_skips(BUCKET_SKIPS),
        },
        FAILURE_BUCKET_POLICY: {
            "Type": "AWS::S3::BucketPolicy",
            "Properties": {
                "Bucket": {"Ref": FAILURE_BUCKET},
                "PolicyDocument": failure_bucket.tls_only_policy(bucket_arn),
            },
        },
    }


# checkov's CKV_AWS_116 asks for a dead-letter queue: the backfill has an on-failure destination instead.
BACKFILL_METADATA = {
    "checkov": {
        "skip": [
            {
                "id": "CKV_AWS_116",
                "comment": "Failed asynchronous invocations go to BackfillFailureQueue through the on-failure "
                "destination of BackfillSegmentEventInvokeConfig, which keeps the request and the error; a dead-letter "
                "queue would keep the event only.",
            }
        ]
    }
}


def backfill_failure_resources() -> dict[str, Any]:
    """The backfill's failure queue and its asynchronous-invocation config (retries, event age, the queue)."""
    return {
        **queue_resources(
            BACKFILL_FAILURE_QUEUE, BACKFILL_FAILURE_QUEUE_POLICY, failure_handling.BACKFILL_FAILURE_RETENTION_SECONDS
        ),
        BACKFILL_INVOKE_CONFIG: {
            "Type": "AWS::Lambda::EventInvokeConfig",
            "Properties": {
                "FunctionName": {"Ref": BACKFILL_FUNCTION},
                "Qualifier": "$LATEST",
                **failure_handling.backfill_invoke_config({"Fn::GetAtt": [BACKFILL_FAILURE_QUEUE, "Arn"]}),
            },
        },
    }


def monitoring_resources(resources: dict[str, Any]) -> dict[str, Any]:
    """The alarms (tools/alarms.py) and the dashboard on this stack's function and queues."""
    targets = {
        alarms.FUNCTION: {"Ref": FUNCTION},
        alarms.FAILURE_QUEUE: {"Fn::GetAtt": [QUEUE, "QueueName"]},
        alarms.DEAD_LETTER_QUEUE: {"Fn::GetAtt": [DEAD_LETTER_QUEUE, "QueueName"]}
        if DEAD_LETTER_QUEUE in resources
        else None,
        BACKFILL_FAILURE_QUEUE_ROLE: {"Fn::GetAtt": [BACKFILL_FAILURE_QUEUE, "QueueName"]},
        "service": alarms.SERVICE,
        alarms.STAGE: {"Ref": STAGE_PARAMETER},
    }
    # The dashboard body is one string: Fn::Sub fills in the same names the alarms get through Ref and GetAtt.
    placeholders = {
        alarms.FUNCTION: f"${{{FUNCTION}}}",
        alarms.FAILURE_QUEUE: f"${{{QUEUE}.QueueName}}",
        alarms.DEAD_LETTER_QUEUE: f"${{{DEAD_LETTER_QUEUE}.QueueName}}" if DEAD_LETTER_QUEUE in resources else None,
        BACKFILL_FAILURE_QUEUE_ROLE: f"${{{BACKFILL_FAILURE_QUEUE}.QueueName}}",
        "service": targets["service"],
        alarms.STAGE: f"${{{STAGE_PARAMETER}}}",
    }
    return {
        **alarms.cloudformation_alarms(targets, HAS_TOPIC, TOPIC_PARAMETER),
        DASHBOARD: {
            "Type": "AWS::CloudWatch::Dashboard",
            "Properties": {
                "DashboardName": {"Fn::Sub": "${AWS::StackName}"},
                "DashboardBody": {"Fn::Sub": json.dumps(alarms.dashboard_body(placeholders, "${AWS::Region}"))},
            },
        },
    }
