"""The continuous audit of the invariant (docs/design.md §1): each run reads one bounded page of the table, from a
random segment of a parallel scan, decides every item as the handler does, fixes what is wrong with the handler's
conditional writes, and reports what it checked, found and fixed (counts only).

The page is the backfill's (`chalicelib.backfill.SegmentWorker.page`): an eventually consistent Scan of one segment
with a Limit, projecting the key and the decision's two attributes; the planner's `decide` on each item; the
gateway's conditional writes. This module adds the sample (which segment, how many segments) and the report.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from chalicelib.backfill import Counts, SegmentRequest, SegmentWorker
from chalicelib.deadline import Deadline
from chalicelib.records import table_name_from_stream_arn

MAX_TOTAL_SEGMENTS = 1_000_000
"""Scan's limit on TotalSegments."""
ITEM_COUNT_MAX_AGE_SECONDS = 6 * 3600
"""DescribeTable's ItemCount is refreshed about every six hours; the key schema never changes, the count does."""
ANSWER_MARGIN_SECONDS = 5.0
"""The function's time kept for the log line and the metrics: writes not sent by then are left for the next run."""
METRICS = {"AuditChecked": "checked", "AuditDrift": "drift", "AuditFixed": "fixed"}
"""The metric each report count is emitted as (with the `service` and `stage` dimensions)."""
FAILED_METRIC = "AuditFailed"
"""1 for a run that could not read its sample (throttled, denied, no table): then it raises, for Lambda's Errors."""


@dataclass(frozen=True, slots=True)
class TableShape:
    """What the audit needs from DescribeTable: the key schema (hash key first) and the estimated item count."""

    name: str
    key_names: tuple[str, ...]
    item_count: int


def table_shape(description: Mapping[str, Any]) -> TableShape:
    """The audit's facts from a DescribeTable `Table`."""
    schema = sorted(description["KeySchema"], key=lambda element: element["KeyType"] != "HASH")
    return TableShape(
        name=description["TableName"],
        key_names=tuple(element["AttributeName"] for element in schema),
        item_count=int(description.get("ItemCount", 0)),
    )


def total_segments(item_count: int, sample_items: int) -> int:
    """TotalSegments that put about one sample's worth of items in each segment (1 to 1,000,000)."""
    return max(1, min(MAX_TOTAL_SEGMENTS, -(-item_count // sample_items)))


def sample_request(shape: TableShape, sample_items: int, pick: Callable[[int], int]) -> SegmentRequest:
    """One run's Scan: a segment `pick(total)` chooses, at most `sample_items` items, eventually consistent."""
    total = total_segments(shape.item_count, sample_items)
    segment = pick(total)
    if not 0 <= segment < total:
        raise ValueError(f"segment {segment} is not one of {total}")
    return SegmentRequest(shape.name, shape.key_names, segment, total, page_size=sample_items)


@dataclass(frozen=True, slots=True)
class AuditReport:
    """One run of the audit: the segment it read and what it found; counts and segment numbers only."""

    table_name: str
    segment: int
    total_segments: int
    counts: Counts

    @property
    def checked(self) -> int:
        """Items read and decided."""
        return self.counts.scanned

    @property
    def drift(self) -> int:
        """Items whose flag was not f(email) when read."""
        return self.counts.to_write

    @property
    def fixed(self) -> int:
        """Items a conditional write corrected."""
        return self.counts.written

    def metrics(self) -> dict[str, int]:
        """The run's metrics by name."""
        return {name: getattr(self, field) for name, field in METRICS.items()}

    def summary(self) -> dict[str, Any]:
        """The run's structured log fields (the table's name, segment numbers and counts; never a key or a value)."""
        counts = self.counts
        return {
            "table": self.table_name,
            "segment": self.segment,
            "total_segments": self.total_segments,
            "checked": self.checked,
            "drift": self.drift,
            **{kind.value: number for kind, number in counts.drift().items()},
            "fixed": self.fixed,
            "superseded": counts.superseded,
            "failed": counts.failed,
            "rejected": counts.rejected,
            "read_units": counts.read_units,
            "write_units": counts.write_units,
        }


class Auditor:
    """Audits a bounded sample of the stage's table each run; the table's shape is read once and kept."""

    def __init__(
        self,
        client: Any,
        worker: SegmentWorker,
        stream_arn: str,
        sample_items: int,
        pick: Callable[[int], int] = random.randrange,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not stream_arn:
            raise ValueError("STREAM_ARN is not set: the audit reads the table the stage's stream belongs to")
        self._client = client
        self._worker = worker
        self._table_name = table_name_from_stream_arn(stream_arn)
        self._sample_items = sample_items
        self._pick = pick
        self._clock = clock
        self._shape: TableShape | None = None
        self._described_at = 0.0

    def shape(self) -> TableShape:
        """The table's key schema and item count: DescribeTable on first use, again once the count is stale."""
        if self._shape is None or self._clock() - self._described_at > ITEM_COUNT_MAX_AGE_SECONDS:
            self._shape = table_shape(self._client.describe_table(TableName=self._table_name)["Table"])
            self._described_at = self._clock()
        return self._shape

    def run(self, deadline: Deadline) -> AuditReport:
        """Read one sample page, fix what violates the invariant before `deadline`, and report."""
        request = sample_request(self.shape(), self._sample_items, self._pick)
        page = self._worker.page(request, None, deadline)
        return AuditReport(request.table_name, request.segment, request.total_segments, page.counts)


def run_audit(auditor: Auditor, remaining_ms: int, stage: str, logger: Any, metrics: Any) -> AuditReport:
    """One scheduled run: the audit, its one summary line and its metrics (EMF). A run that fails logs the error's
    type and code (never its message: it may quote a key), counts AuditFailed and raises."""
    try:
        report = auditor.run(Deadline.from_remaining_ms(remaining_ms, ANSWER_MARGIN_SECONDS))
    except Exception as error:
        code = getattr(error, "response", {}).get("Error", {}).get("Code")
        logger.error("audit failed", extra={"stage": stage, "error": type(error).__name__, "code": code})
        metrics.add_metric(name=FAILED_METRIC, unit="Count", value=1)
        metrics.flush_metrics()
        raise
    log = logger.warning if report.drift else logger.info
    log("audit", extra={"stage": stage, **report.summary()})
    for name, value in {**report.metrics(), FAILED_METRIC: 0}.items():
        metrics.add_metric(name=name, unit="Count", value=value)
    metrics.flush_metrics()
    return report
