"""The merge template's parts: the logical ids Chalice gives the functions and the ids of what the template adds,
the table's properties from the schema, queues, and the alarms and dashboard."""

from __future__ import annotations

import json
from typing import Any

from tools import alarms, failure_handling

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
# The reconciler's dead-letter queue (its own helper adds it): its alarm is in the template once the queue is.
DEAD_LETTER_QUEUE = "StreamFailureDeadLetterQueue"
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
# The asynchronous backfill's on-failure destination (its own helper adds it): its alarm comes with the queue.
BACKFILL_FAILURE_QUEUE = "BackfillFailureQueue"

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


def monitoring_resources(resources: dict[str, Any]) -> dict[str, Any]:
    """The alarms (tools/alarms.py) and the dashboard on this stack's function and queues."""
    functions = {alarms.FUNCTION: FUNCTION, alarms.RECONCILER_FUNCTION: RECONCILER_FUNCTION}
    functions[alarms.BACKFILL_FUNCTION] = BACKFILL_FUNCTION
    queues = {alarms.FAILURE_QUEUE: QUEUE, alarms.DEAD_LETTER_QUEUE: DEAD_LETTER_QUEUE}
    queues[alarms.BACKFILL_FAILURE_QUEUE] = BACKFILL_FAILURE_QUEUE
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
