"""The stage's CloudWatch alarms and dashboard: one definition for both deploy paths.

`tools/merge_template.py` renders them as CloudFormation resources, `python -m tools.stage apply-failure-handling`
creates them with put_metric_alarm and put_dashboard. Each alarm names its dimensions by role (the handler function,
the on-failure queue, its dead-letter queue, the service, the stage); each path says what the roles are.

The custom metrics carry exactly the dimensions the handler's Powertools Metrics emit: `service` (Metrics(service=
SERVICE)) and `stage` (set_default_dimensions(stage=...)), chalicelib/runtime.py. An alarm with one dimension more or
less watches a metric nobody writes and never fires.
"""

from __future__ import annotations

import json
from typing import Any

from chalicelib.runtime import SERVICE
from tools.alarm_catalog import (
    ALARMS,
    CUSTOM_DIMENSIONS,
    DEAD_LETTER_QUEUE,
    FAILURE_QUEUE,
    FUNCTION,
    RECONCILER_FUNCTION,
    STAGE,
    SWEEP_FUNCTION,
    Alarm,
)

# Re-exported: the roles and definitions both paths and status read from here.
__all__ = [
    "ALARMS",
    "DEAD_LETTER_QUEUE",
    "FAILURE_QUEUE",
    "FUNCTION",
    "RECONCILER_FUNCTION",
    "STAGE",
    "SWEEP_FUNCTION",
    "Alarm",
]


def alarms_for(targets: dict[str, Any]) -> list[Alarm]:
    """The alarms whose every dimension has a value on this path (a path without a queue skips its alarm)."""
    return [alarm for alarm in ALARMS if all(targets.get(role) is not None for _, role in alarm.dimensions)]


def alarm_name(prefix: str, alarm: Alarm) -> str:
    """`<prefix>-<key>`: the deploy path's prefix is `<app>-<stage>`, the stack's its name."""
    return f"{prefix}-{alarm.key}"


def put_alarms(cloudwatch: Any, prefix: str, targets: dict[str, Any], topic_arn: str = "") -> list[str]:
    """Create or update every alarm on the `chalice deploy` path; their names."""
    names = []
    actions = [topic_arn] if topic_arn else []
    for alarm in alarms_for(targets):
        name = alarm_name(prefix, alarm)
        cloudwatch.put_metric_alarm(
            AlarmName=name,
            Dimensions=alarm.resolved_dimensions(targets),
            AlarmActions=actions,
            OKActions=actions,
            **alarm.settings(),
        )
        names.append(name)
    return names


def cloudformation_alarms(
    targets: dict[str, Any], topic_condition: str, topic_parameter: str
) -> dict[str, dict[str, Any]]:
    """The alarms as AWS::CloudWatch::Alarm resources; actions on the topic parameter when its condition holds."""
    actions = {"Fn::If": [topic_condition, [{"Ref": topic_parameter}], {"Ref": "AWS::NoValue"}]}
    return {
        alarm.logical_id: {
            "Type": "AWS::CloudWatch::Alarm",
            "Properties": {
                "AlarmName": {"Fn::Sub": f"${{AWS::StackName}}-{alarm.key}"},
                "Dimensions": alarm.resolved_dimensions(targets),
                "AlarmActions": actions,
                "OKActions": actions,
                **alarm.settings(),
            },
        }
        for alarm in alarms_for(targets)
    }


def dashboard_body(targets: dict[str, str], region: str) -> dict[str, Any]:
    """The dashboard: one graph per alarm's metric with its threshold, two graphs to a row."""
    widgets = []
    for index, alarm in enumerate(alarms_for(targets)):
        dimensions = [value for name, role in alarm.dimensions for value in (name, targets[role])]
        widgets.append(
            {
                "type": "metric",
                "x": 12 * (index % 2),
                "y": 6 * (index // 2),
                "width": 12,
                "height": 6,
                "properties": {
                    "title": alarm.key,
                    "region": region,
                    "metrics": [[alarm.namespace, alarm.metric, *dimensions]],
                    "stat": alarm.statistic,
                    "period": alarm.period,
                    "annotations": {"horizontal": [{"label": "alarm", "value": alarm.threshold}]},
                },
            }
        )
    return {"widgets": widgets}


def put_dashboard(cloudwatch: Any, name: str, targets: dict[str, str], region: str) -> str:
    """Create or replace the `chalice deploy` path's dashboard; its name."""
    cloudwatch.put_dashboard(DashboardName=name, DashboardBody=json.dumps(dashboard_body(targets, region)))
    return name


def service_targets(stage: str) -> dict[str, str]:
    """The custom metrics' dimension values for a stage."""
    return {"service": SERVICE, STAGE: stage}


def custom_dimensions(stage: str) -> list[dict[str, str]]:
    """The dimensions of the handler's and the reconciler's own metrics for a stage."""
    targets = service_targets(stage)
    return [{"Name": name, "Value": targets[role]} for name, role in CUSTOM_DIMENSIONS]
