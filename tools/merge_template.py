"""The `chalice package --merge-template` file: what Chalice's generated template can't express by itself.

    python -m tools.stage merge-template     # regenerate deploy/merge-template.json (a test keeps it in step)

Chalice deep-merges this into its SAM template: dictionaries merge key by key, anything else replaces. It adds
- the users table, built from schema/users-table.json (the schema's one source), when the stack parameter
  `UsersTableStreamArn` is CREATE; otherwise the mapping reads the existing table's stream named by that parameter;
- the mapping's failure handling, metrics and filter (tools/failure_handling.py), its on-failure destination the
  bucket `StreamFailureBucket` (tools/failure_bucket.py; its ObjectCreated notifications go to the encrypted failure
  queue; parameter `FailureObjectRetentionDays`), and the handler's partial-failure mode switched on to match
  `FunctionResponseTypes: [ReportBatchItemFailures]`;
- the alarms and dashboard of tools/alarms.py (parameters `Stage`, the metrics' dimension, and `AlarmTopicArn`);
- the security scan's accepted findings, each in its resource's Metadata with its reason (tools/checkov_skips.py);
- a log group the template owns, named on the function through `LoggingConfig`, so the role's log permissions name
  the log group that really exists whatever name CloudFormation gives the function;
- the role's policy (it replaces the policy file Chalice would attach): the same least-privilege statements as
  `chalice deploy` gets, on the ARNs this stack resolves;
- for the reconciler `reconcile_discarded_batches`: its SQS event source pointed at `StreamFailureQueue` (Chalice
  names the `chalice deploy` path's queue) and reporting batch item failures, with the function's partial-failure
  mode switched on to match, the queue's visibility timeout and redrive policy to the dead-letter
  queue `StreamFailureDeadLetterQueue`, its role policy, its log group and the bucket that holds the sweep's state;
- for the scheduled sweep `sweep_table`: its role policy, log group, table, stage and bucket (tools/sweep_template.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tools import failure_handling
from tools.checkov_skips import with_checkov_skips
from tools.policies import LOG_WRITES, policy_statements, reconciler_statements
from tools.project import ROOT, write_json
from tools.sweep_template import sweep_resources
from tools.template_parts import (
    CREATE,
    CREATES_TABLE,
    DASHBOARD,
    DEAD_LETTER_QUEUE,
    DEAD_LETTER_QUEUE_POLICY,
    EVENT_SOURCE,
    FAILURE_BUCKET,
    FUNCTION,
    HAS_TOPIC,
    LOG_GROUP,
    LOG_RETENTION_DAYS,
    QUEUE,
    QUEUE_POLICY,
    RECONCILER_EVENT_SOURCE,
    RECONCILER_FUNCTION,
    RECONCILER_LOG_GROUP,
    RECONCILER_ROLE,
    RETENTION_PARAMETER,
    ROLE,
    STAGE_PARAMETER,
    STREAM_ARN_PATTERN,
    STREAM_PARAMETER,
    TABLE,
    TOPIC_PARAMETER,
    failure_bucket_resources,
    monitoring_resources,
    queue_resources,
    table_properties,
    template_parameters,
    users_table_or_existing,
)

# Re-exported: the names the packaging step, status and tests read from here.
__all__ = [
    "CREATE",
    "DEAD_LETTER_QUEUE",
    "EVENT_SOURCE",
    "FAILURE_BUCKET",
    "FUNCTION",
    "QUEUE",
    "RETENTION_PARAMETER",
    "STAGE_PARAMETER",
    "STREAM_ARN_PATTERN",
    "STREAM_PARAMETER",
    "table_properties",
]

SCHEMA = ROOT / "schema" / "users-table.json"
MERGE_TEMPLATE = ROOT / "deploy" / "merge-template.json"


def build_merge_template(schema: dict[str, Any]) -> dict[str, Any]:
    """The merge template for `chalice package`, from the table's schema."""
    template = base_merge_template(schema)
    template["Resources"].update(monitoring_resources(template["Resources"]))
    with_checkov_skips(template["Resources"])
    return template


def base_merge_template(schema: dict[str, Any]) -> dict[str, Any]:
    """The merge template without its alarms and dashboard."""
    existing_stream = {"Ref": STREAM_PARAMETER}
    stream_arn = users_table_or_existing({"Fn::GetAtt": [TABLE, "StreamArn"]}, existing_stream)
    table_arn = users_table_or_existing(
        {"Fn::GetAtt": [TABLE, "Arn"]}, {"Fn::Select": [0, {"Fn::Split": ["/stream/", existing_stream]}]}
    )
    queue_arn = {"Fn::GetAtt": [QUEUE, "Arn"]}
    bucket_arn = {"Fn::GetAtt": [FAILURE_BUCKET, "Arn"]}
    # The queue's policy is the bucket's part: it also lets the bucket's notifications in.
    failure_queue = queue_resources(QUEUE, QUEUE_POLICY, failure_handling.FAILURE_QUEUE_RETENTION_SECONDS)
    failure_queue.pop(QUEUE_POLICY)
    failure_queue[QUEUE]["Properties"].update(
        {
            "VisibilityTimeout": failure_handling.FAILURE_QUEUE_VISIBILITY_TIMEOUT_SECONDS,
            "RedrivePolicy": failure_handling.redrive_policy({"Fn::GetAtt": [DEAD_LETTER_QUEUE, "Arn"]}),
        }
    )
    return {
        "Parameters": template_parameters(),
        "Conditions": {
            CREATES_TABLE: {"Fn::Equals": [existing_stream, CREATE]},
            HAS_TOPIC: {"Fn::Not": [{"Fn::Equals": [{"Ref": TOPIC_PARAMETER}, ""]}]},
        },
        "Resources": {
            TABLE: {
                "Type": "AWS::DynamoDB::Table",
                "Condition": CREATES_TABLE,
                # The users' data outlives the stack: deleting or replacing the stack leaves the table in place.
                "DeletionPolicy": "Retain",
                "UpdateReplacePolicy": "Retain",
                "Properties": table_properties(schema),
            },
            **failure_queue,
            **queue_resources(
                DEAD_LETTER_QUEUE, DEAD_LETTER_QUEUE_POLICY, failure_handling.DEAD_LETTER_RETENTION_SECONDS
            ),
            **failure_bucket_resources(),
            LOG_GROUP: {"Type": "AWS::Logs::LogGroup", "Properties": {"RetentionInDays": LOG_RETENTION_DAYS}},
            ROLE: {
                "Properties": {
                    "Policies": [
                        {
                            "PolicyName": f"{ROLE}Policy",
                            "PolicyDocument": {
                                "Version": "2012-10-17",
                                "Statement": policy_statements(
                                    table_arn,
                                    stream_arn,
                                    {"Fn::Join": ["", [table_arn, "/stream/*"]]},
                                    LOG_WRITES,
                                    {"Fn::GetAtt": [LOG_GROUP, "Arn"]},
                                    bucket_arn,
                                ),
                            },
                        }
                    ]
                }
            },
            RECONCILER_LOG_GROUP: {
                "Type": "AWS::Logs::LogGroup",
                "Properties": {"RetentionInDays": LOG_RETENTION_DAYS},
            },
            RECONCILER_ROLE: {
                "Properties": {
                    "Policies": [
                        {
                            "PolicyName": f"{RECONCILER_ROLE}Policy",
                            "PolicyDocument": {
                                "Version": "2012-10-17",
                                "Statement": reconciler_statements(
                                    table_arn,
                                    queue_arn,
                                    bucket_arn,
                                    LOG_WRITES,
                                    {"Fn::GetAtt": [RECONCILER_LOG_GROUP, "Arn"]},
                                ),
                            },
                        }
                    ]
                }
            },
            RECONCILER_FUNCTION: {
                "Properties": {
                    "LoggingConfig": {"LogGroup": {"Ref": RECONCILER_LOG_GROUP}},
                    "Environment": {
                        "Variables": {
                            "STREAM_ARN": stream_arn,
                            # Where the sweep's state lives (its urgent request).
                            "FAILURE_BUCKET": {"Ref": FAILURE_BUCKET},
                            # Its metrics carry the stage the alarms watch, as the handler's do.
                            "STAGE": {"Ref": STAGE_PARAMETER},
                            **failure_handling.DEPLOYED_FUNCTION,
                        }
                    },
                    # Chalice points the event source at the `chalice deploy` path's queue name, as an `Fn::Sub`;
                    # the merge is key by key, so only another `Fn::Sub` replaces it: the stack's own queue's ARN.
                    "Events": {
                        RECONCILER_EVENT_SOURCE: {
                            "Properties": {
                                "Queue": {"Fn::Sub": f"${{{QUEUE}.Arn}}"},
                                **failure_handling.RECONCILER_MAPPING,
                            }
                        }
                    },
                }
            },
            **sweep_resources(table_arn, stream_arn),
            FUNCTION: {
                "Properties": {
                    "LoggingConfig": {"LogGroup": {"Ref": LOG_GROUP}},
                    "Environment": {
                        "Variables": {
                            "STREAM_ARN": stream_arn,
                            **failure_handling.DEPLOYED_FUNCTION,
                            "STAGE": {"Ref": STAGE_PARAMETER},
                        }
                    },
                    "Events": {
                        EVENT_SOURCE: {
                            "Properties": {
                                "Stream": stream_arn,
                                **failure_handling.mapping_failure_handling(bucket_arn),
                            }
                        }
                    },
                }
            },
        },
        "Outputs": {
            "UsersTableName": {"Condition": CREATES_TABLE, "Value": {"Ref": TABLE}},
            "UsersTableStreamArn": {"Value": stream_arn},
            "StreamFailureQueueUrl": {"Value": {"Ref": QUEUE}},
            "StreamFailureDeadLetterQueueUrl": {"Value": {"Ref": DEAD_LETTER_QUEUE}},
            "StreamFailureBucketName": {"Value": {"Ref": FAILURE_BUCKET}},
            "ReconcilerFunctionName": {"Value": {"Ref": RECONCILER_FUNCTION}},
            "FunctionLogGroup": {"Value": {"Ref": LOG_GROUP}},
            "SweepFunctionName": {"Value": {"Ref": "SweepTable"}},
            "DashboardName": {"Value": {"Ref": DASHBOARD}},
        },
    }


def expected_merge_template() -> dict[str, Any]:
    """What deploy/merge-template.json must hold: the merge template built from the committed schema."""
    return build_merge_template(json.loads(SCHEMA.read_text()))


def write_merge_template(path: Path = MERGE_TEMPLATE) -> Path:
    """Regenerate the committed merge template from the schema."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, expected_merge_template())
    return path
