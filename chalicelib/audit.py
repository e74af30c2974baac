"""The continuous audit of the invariant (docs/design.md §1): each run reads one bounded page of the table, from a
random segment of a parallel scan, decides every item as the handler does, fixes what is wrong with the handler's
conditional writes, and reports what it checked, found and fixed (counts only).

The page is the backfill's (`chalicelib.backfill.scan_request` and `plan_page`): an eventually consistent Scan of
one segment with a Limit, projecting the key and the decision's two attributes, and the planner's `decide` on each
item. An item the page shows wrong may only be waiting for the stream handler (a change a second old), so the
suspects are read again after a grace period, consistently (the handler's own read), and only those still wrong
count as drift and are written (the handler's conditional writes, decided from that read).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chalicelib.backfill import Counts, SegmentRequest, estimated_read_units, plan_page, scan_request, tally
from chalicelib.deadline import Deadline
from chalicelib.planner import Classify, Write, decide, drift_of
from chalicelib.records import ItemKey, ItemState, table_name_from_stream_arn

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


@dataclass(slots=True)
class Confirmation:
    """The suspects read again: the writes those still wrong need (their kinds counted), and the others."""

    writes: list[Write] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    settled: int = 0
    """Right (or gone) by the second read: the stream handler had them in hand."""
    unread: int = 0
    """Not read again (refused or out of time): neither counted as drift nor written."""


def confirm(suspects: Sequence[Write], current: Mapping[ItemKey, ItemState | None], classify: Classify) -> Confirmation:
    """Decide the suspects again from their current state (None: the item is gone; missing: not read)."""
    confirmation = Confirmation()
    for suspect in suspects:
        if suspect.key not in current:
            confirmation.unread += 1
            continue
        state = current[suspect.key]
        write = decide(suspect.key, state, classify) if state is not None else None
        if state is None or write is None:
            confirmation.settled += 1
            continue
        confirmation.writes.append(write)
        confirmation.counts.count_drift(drift_of(state, write))
    confirmation.counts.to_write = len(confirmation.writes)
    return confirmation


@dataclass(frozen=True, slots=True)
class AuditReport:
    """One run of the audit: the segment it read and what it found; counts and segment numbers only."""

    table_name: str
    segment: int
    total_segments: int
    counts: Counts
    settled: int = 0
    """Items the page showed wrong that were right by the second read (the stream handler's, in flight)."""
    unread: int = 0

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
            "settled": self.settled,
            "unread": self.unread,
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
        gateway: Any,
        classify: Classify,
        stream_arn: str,
        sample_items: int,
        confirm_after_seconds: float,
        pick: Callable[[int], int] = random.randrange,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if not stream_arn:
            raise ValueError("STREAM_ARN is not set: the audit reads the table the stage's stream belongs to")
        self._client = client
        self._gateway = gateway
        self._classify = classify
        self._table_name = table_name_from_stream_arn(stream_arn)
        self._sample_items = sample_items
        self._confirm_after = confirm_after_seconds
        self._pick = pick
        self._clock = clock
        self._sleep = sleep
        self._shape: TableShape | None = None
        self._described_at = 0.0

    def shape(self) -> TableShape:
        """The table's key schema and item count: DescribeTable on first use, again once the count is stale."""
        if self._shape is None or self._clock() - self._described_at > ITEM_COUNT_MAX_AGE_SECONDS:
            self._shape = table_shape(self._client.describe_table(TableName=self._table_name)["Table"])
            self._described_at = self._clock()
        return self._shape

    def run(self, deadline: Deadline) -> AuditReport:
        """Read one sample page, confirm what looks wrong, fix it before `deadline`, and report."""
        shape = self.shape()
        request = sample_request(shape, self._sample_items, self._pick)
        response = self._client.scan(**scan_request(request, None, self._gateway.attributes))
        items = response.get("Items", [])
        consumed = response.get("ConsumedCapacity", {}).get("CapacityUnits")
        suspects, _ = plan_page(shape.name, shape.key_names, items, self._classify, self._gateway.attributes)
        confirmation = self._confirm(suspects, deadline)
        counts = confirmation.counts
        counts.pages, counts.scanned = 1, len(items)
        counts.read_units = float(consumed) if consumed is not None else estimated_read_units(items, False)
        counts.already_correct = len(items) - len(suspects) + confirmation.settled
        if confirmation.writes:
            counts.write_units = float(len(confirmation.writes))  # at least one unit each
            tally(self._gateway.apply(confirmation.writes, deadline), counts)
        return AuditReport(
            shape.name, request.segment, request.total_segments, counts, confirmation.settled, confirmation.unread
        )

    def _confirm(self, suspects: Sequence[Write], deadline: Deadline) -> Confirmation:
        """The suspects read again, consistently, after the grace period (shortened to half the time left)."""
        if not suspects:
            return Confirmation()
        self._sleep(max(0.0, min(self._confirm_after, deadline.remaining() / 2)))
        result = self._gateway.read_states([suspect.key for suspect in suspects], deadline)
        return confirm(suspects, result.states, self._classify)


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
