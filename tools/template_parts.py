"""The merge template's parts: the logical ids Chalice gives the functions and the ids of what the template adds,
the table's properties from the schema, queues, the on-failure bucket, and the alarms and dashboard."""

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
SWEEP_FUNCTION = "SweepTable"
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


def template_parameters() -> dict[str, Any]:
    """The stack's parameters: the table (or CREATE), the stage, the alarms' topic, the failure objects' days."""
    return {
        STREAM_PARAMETER: {
            "Type": "String",
            "Description": (
                f"The stream ARN of an existing users table (any key schema: the filter names no key), or "
                f"{CREATE} to have this stack create the table from schema/users-table.json."
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
        },
        policy: {
            "Type": "AWS::SQS::QueuePolicy",
            "Properties": {
                "Queues": [{"Ref": queue}],
                "PolicyDocument": failure_handling.https_only_queue_policy({"Fn::GetAtt": [queue, "Arn"]}),
            },
        },
    }


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
        },
        FAILURE_BUCKET_POLICY: {
            "Type": "AWS::S3::BucketPolicy",
            "Properties": {
                "Bucket": {"Ref": FAILURE_BUCKET},
                "PolicyDocument": failure_bucket.tls_only_policy(bucket_arn),
            },
        },
    }


def monitoring_resources(resources: dict[str, Any]) -> dict[str, Any]:
    """The alarms (tools/alarms.py) and the dashboard on this stack's function and queues."""
    functions = {alarms.FUNCTION: FUNCTION, alarms.RECONCILER_FUNCTION: RECONCILER_FUNCTION}
    functions[alarms.SWEEP_FUNCTION] = SWEEP_FUNCTION
    queues = {alarms.FAILURE_QUEUE: QUEUE, alarms.DEAD_LETTER_QUEUE: DEAD_LETTER_QUEUE}
    # A queue another part of the template adds gets its alarm once it is there.
    targets = {
        **{role: {"Ref": logical_id} for role, logical_id in functions.items()},
        **{role: {"Fn::GetAtt": [q, "QueueName"]} if q in resources else None for role, q in queues.items()},
        "service": alarms.SERVICE,
        alarms.STAGE: {"Ref": STAGE_PARAMETER},
    }
    # The dashboard body is one string: Fn::Sub fills in the same names the alarms get through Ref and GetAtt.
    placeholders = {
        **{role: f"${{{logical_id}}}" for role, logical_id in functions.items()},
        **{role: f"${{{q}.QueueName}}" if q in resources else None for role, q in queues.items()},
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
