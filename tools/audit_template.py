"""The scheduled audit's part of the merge template: its role's policy, its log group, its table and its stage."""

from __future__ import annotations

from typing import Any

from tools.policies import LOG_WRITES, audit_statements
from tools.template_parts import LOG_RETENTION_DAYS, STAGE_PARAMETER

# Chalice's logical ids for the scheduled function `audit_invariant` (a test packages and checks them).
AUDIT_FUNCTION = "AuditInvariant"
AUDIT_ROLE = "AuditInvariantRole"
AUDIT_LOG_GROUP = "AuditInvariantLogGroup"
AUDIT_SCHEDULE = "AuditInvariantEvent"


def audit_resources(table_arn: Any, stream_arn: Any) -> dict[str, Any]:
    """The audit function's additions: its own log group, its role's least-privilege policy on the stack's table, the
    stream ARN it takes the table from, and the stage its metrics carry (the dimension the AuditDrift alarm watches)."""
    return {
        AUDIT_LOG_GROUP: {"Type": "AWS::Logs::LogGroup", "Properties": {"RetentionInDays": LOG_RETENTION_DAYS}},
        AUDIT_ROLE: {
            "Properties": {
                "Policies": [
                    {
                        "PolicyName": f"{AUDIT_ROLE}Policy",
                        "PolicyDocument": {
                            "Version": "2012-10-17",
                            "Statement": audit_statements(
                                table_arn, LOG_WRITES, {"Fn::GetAtt": [AUDIT_LOG_GROUP, "Arn"]}
                            ),
                        },
                    }
                ]
            }
        },
        AUDIT_FUNCTION: {
            "Properties": {
                "LoggingConfig": {"LogGroup": {"Ref": AUDIT_LOG_GROUP}},
                "Environment": {"Variables": {"STREAM_ARN": stream_arn, "STAGE": {"Ref": STAGE_PARAMETER}}},
            }
        },
    }
