"""What CloudWatch says of a deployed stage, read for `status`: a metric's latest datapoint, a log group's newest
matching line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

LOG_PAGES = 20
"""Pages of a day's matching log events read to find the newest (FilterLogEvents answers oldest first)."""


def latest_datapoint(
    cloudwatch: Any, namespace: str, metric: str, dimensions: list[dict[str, str]], statistic: str, hours: int
) -> dict[str, Any] | None:
    """The most recent datapoint of a metric in the last `hours`, or None."""
    now = datetime.now(UTC)
    points = cloudwatch.get_metric_statistics(
        Namespace=namespace,
        MetricName=metric,
        Dimensions=dimensions,
        StartTime=now - timedelta(hours=hours),
        EndTime=now,
        Period=60 if hours <= 1 else 3600,
        Statistics=[statistic],
    )["Datapoints"]
    return max(points, key=lambda point: point["Timestamp"]) if points else None


def newest_line(logs: Any, group: str | None, text: str, now: datetime | None = None) -> str | None:
    """The newest of the last day's log events holding `text`: FilterLogEvents answers oldest first, so every page
    (at most LOG_PAGES) is read and the latest kept."""
    if not group:
        return None
    start = int(((now or datetime.now(UTC)) - timedelta(days=1)).timestamp() * 1000)
    newest: dict[str, Any] | None = None
    try:
        pages = logs.get_paginator("filter_log_events").paginate(
            logGroupName=group, filterPattern=f'"{text}"', startTime=start
        )
        for number, page in enumerate(pages):
            for event in page.get("events", []):
                if newest is None or event["timestamp"] >= newest["timestamp"]:
                    newest = event
            if number + 1 >= LOG_PAGES:
                break
    except ClientError:
        return None
    return newest["message"].strip() if newest else None
