"""The scheduled sweep's part of the merge template: its role's policy, its log group, its table, its stage and the
bucket that holds its state."""

from __future__ import annotations

from typing import Any

from tools.policies import LOG_WRITES, sweep_statements
from tools.template_parts import FAILURE_BUCKET, LOG_RETENTION_DAYS, STAGE_PARAMETER, SWEEP_FUNCTION

# Chalice's logical ids for the scheduled function `sweep_table` (a test packages and checks them).
__all__ = ["SWEEP_FUNCTION", "sweep_resources"]
SWEEP_ROLE = "SweepTableRole"
SWEEP_LOG_GROUP = "SweepTableLogGroup"
SWEEP_SCHEDULE = "SweepTableEvent"


def sweep_resources(table_arn: Any, stream_arn: Any) -> dict[str, Any]:
    """The sweep function's additions: its own log group, its role's least-privilege policy on the stack's table and
    its state object, the stream ARN it takes the table from, the bucket and the stage its metrics carry."""
    bucket_arn = {"Fn::GetAtt": [FAILURE_BUCKET, "Arn"]}
    return {
        SWEEP_LOG_GROUP: {"Type": "AWS::Logs::LogGroup", "Properties": {"RetentionInDays": LOG_RETENTION_DAYS}},
        SWEEP_ROLE: {
            "Properties": {
                "Policies": [
                    {
                        "PolicyName": f"{SWEEP_ROLE}Policy",
                        "PolicyDocument": {
                            "Version": "2012-10-17",
                            "Statement": sweep_statements(
                                table_arn, bucket_arn, LOG_WRITES, {"Fn::GetAtt": [SWEEP_LOG_GROUP, "Arn"]}
                            ),
                        },
                    }
                ]
            }
        },
        SWEEP_FUNCTION: {
            "Properties": {
                "LoggingConfig": {"LogGroup": {"Ref": SWEEP_LOG_GROUP}},
                "Environment": {
                    "Variables": {
                        "STREAM_ARN": stream_arn,
                        "STAGE": {"Ref": STAGE_PARAMETER},
                        "FAILURE_BUCKET": {"Ref": FAILURE_BUCKET},
                    }
                },
            }
        },
    }
