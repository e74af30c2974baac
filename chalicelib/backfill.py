"""The backfill's segment worker: scan one segment of a parallel scan, decide each item as the handler would, and
write only what violates the invariant, through the handler's own conditional writes (docs/design.md §1, §3).

The same worker (its `page`) runs in the scheduled sweep (chalicelib/sweep.py, a thread per segment) and in the
local command (tools/backfill/local.py), which keeps its place in a checkpoint file.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from chalicelib.deadline import NO_DEADLINE, Deadline
from chalicelib.dynamodb import OutcomeTally, WriteOutcome
from chalicelib.planner import Classify, Drift, Write, decide, drift_of
from chalicelib.records import (
    AttributeNames,
    attribute_conflict,
    decision_projection,
    from_event_json,
    item_key,
    item_state,
)

# Scan reads in 4 KB units, eventually consistent at half a unit each; a write costs at least one 1 KB unit.
READ_UNIT_BYTES = 4096


class PayloadError(ValueError):
    """A segment request that can't be run; the message names the field, never a key's value."""


@dataclass(slots=True)
class Counts:
    """What a backfill did: counts only, never a key or an attribute value."""

    pages: int = 0
    scanned: int = 0
    already_correct: int = 0
    to_write: int = 0
    """Items that violated the invariant when scanned (in a dry run: what would be written)."""
    written: int = 0
    superseded: int = 0
    """A conditional write found the item changed since the scan: the stream handler owns it from there."""
    gone: int = 0
    """A conditional write found the item deleted since the scan (a consistent read after the failed condition)."""
    failed: int = 0
    rejected: int = 0
    read_units: float = 0.0
    write_units: float = 0.0
    # `to_write` by kind (chalicelib.planner.Drift).
    flag_wrong: int = 0
    flag_missing: int = 0
    flag_not_bool: int = 0
    flag_without_email: int = 0

    def drift(self) -> dict[Drift, int]:
        """The items that violated the invariant when scanned, by kind."""
        return {kind: getattr(self, kind.value) for kind in Drift}

    def count_drift(self, kind: Drift) -> None:
        """Count one item that violated the invariant in this way."""
        setattr(self, kind.value, getattr(self, kind.value) + 1)

    def add(self, other: Counts) -> None:
        """Add another count to this one, field by field."""
        for spec in fields(self):
            setattr(self, spec.name, getattr(self, spec.name) + getattr(other, spec.name))

    def to_dict(self) -> dict[str, Any]:
        """The counts as JSON-ready fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Counts:
        """Counts from `to_dict`'s output; unknown fields are ignored, missing ones are zero."""
        names = {spec.name for spec in fields(cls)}
        return cls(**{name: value for name, value in raw.items() if name in names})


@dataclass(frozen=True, slots=True)
class SegmentRequest:
    """One segment's work order: the table, its key attribute names, where to start, and how to behave."""

    table_name: str
    key_names: tuple[str, ...]
    segment: int
    total_segments: int
    start_key: dict[str, Any] | None = None
    """The scan's ExclusiveStartKey in DynamoDB JSON (binary values as bytes); None from the segment's start."""
    dry_run: bool = False
    page_size: int | None = None
    """Scan's Limit: items evaluated per page (None: DynamoDB's 1 MB pages)."""
    consistent_read: bool = False


@dataclass(slots=True)
class PageResult:
    """One scanned page: its counts, and the key to continue from (None: the segment is finished)."""

    counts: Counts
    last_evaluated_key: dict[str, Any] | None
    retry: bool = False
    """Some writes failed after botocore's retries: the page must be scanned again from its start key."""

    def finished_counts(self) -> Counts:
        """What this page adds to a segment's counts: all of it when it finished; when it will be scanned again, only
        its failures and the units it consumed (its items are counted when the page is redone, never twice)."""
        if not self.retry:
            return self.counts
        return Counts(failed=self.counts.failed, read_units=self.counts.read_units, write_units=self.counts.write_units)


@dataclass(slots=True)
class SegmentResult:
    """Where a worker stopped in its segment and what it did on the way."""

    segment: int
    total_segments: int
    last_evaluated_key: dict[str, Any] | None
    done: bool
    counts: Counts = field(default_factory=Counts)


def key_to_json(key: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any] | None:
    """A key in DynamoDB JSON with binary values base64-encoded, as DynamoDB's own wire format has them."""
    if key is None:
        return None
    return {
        name: {"B": base64.b64encode(value["B"]).decode("ascii")} if "B" in value else dict(value)
        for name, value in key.items()
    }


def key_from_json(key: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any] | None:
    """The inverse of `key_to_json`: binary values back to bytes, as boto3's client takes them."""
    if key is None:
        return None
    return {name: dict(from_event_json(value)) for name, value in key.items()}


def scan_request(
    request: SegmentRequest, start_key: Mapping[str, Any] | None, attributes: AttributeNames
) -> dict[str, Any]:
    """The Scan parameters of one page: the segment, only the attributes the decision reads, consumed capacity."""
    projection, names = decision_projection(tuple(request.key_names), attributes)
    parameters: dict[str, Any] = {
        "TableName": request.table_name,
        "Segment": request.segment,
        "TotalSegments": request.total_segments,
        "ProjectionExpression": projection,
        "ExpressionAttributeNames": names,
        "ReturnConsumedCapacity": "TOTAL",
        "ConsistentRead": request.consistent_read,
    }
    if request.page_size is not None:
        parameters["Limit"] = request.page_size
    if start_key is not None:
        parameters["ExclusiveStartKey"] = dict(start_key)
    return parameters


def plan_page(
    table_name: str,
    key_names: Sequence[str],
    items: Sequence[Mapping[str, Any]],
    classify: Classify,
    attributes: AttributeNames,
    counts: Counts | None = None,
) -> tuple[list[Write], int]:
    """The writes a scanned page needs (the handler's `decide` on each item) and how many items need none; each
    write's kind of drift is counted in `counts`."""
    writes = []
    for item in items:
        state = item_state(item, attributes)
        write = decide(item_key(table_name, {name: item[name] for name in key_names}), state, classify)
        if write is not None:
            writes.append(write)
            if counts is not None:
                counts.count_drift(drift_of(state, write))
    return writes, len(items) - len(writes)


def tally(outcomes: Sequence[WriteOutcome], counts: Counts) -> None:
    """Count the writes' outcomes."""
    tallied = OutcomeTally.of(outcomes)
    counts.written += tallied.applied
    counts.superseded += tallied.superseded
    counts.rejected += tallied.rejected
    counts.failed += tallied.failed


def estimated_read_units(items: Sequence[Mapping[str, Any]], consistent: bool) -> float:
    """Read units of a page when the engine does not report them: the projected items' size, a lower bound."""
    size = sum(len(name) + _value_size(value) for item in items for name, value in item.items())
    units = max(1, -(-size // READ_UNIT_BYTES))
    return float(units if consistent else units / 2)


def _value_size(value: Mapping[str, Any]) -> int:
    [(kind, raw)] = value.items()
    if kind in ("S", "N"):
        return len(str(raw).encode())
    if kind == "B":
        return len(raw)
    return 1


class TokenBucket:
    """A rate limit in units per second with a burst of one second's units; the clock and sleep are injected.

    `take(n)` waits until the bucket holds something, then takes `n` (the balance may go negative): a page whose
    cost is only known afterwards (its consumed read units) is paid for by waiting before the next one.
    """

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("a rate limit must be positive")
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._tokens = rate
        self._updated = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.rate, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def wait_time(self) -> float:
        """Seconds until the bucket is no longer in debt (0 when something can be taken now)."""
        with self._lock:
            self._refill()
            return 0.0 if self._tokens > 0 else (-self._tokens) / self.rate + 1e-9

    def take(self, amount: float) -> float:
        """Wait until the bucket holds something, then take `amount`; the seconds waited. A sleep that returns True
        (a stop event's `wait` once the event is set) ends the wait at once: the caller then stops too."""
        waited = 0.0
        while True:
            delay = self.wait_time()
            if delay <= 0:
                break
            woken = self._sleep(delay)
            waited += delay
            if woken is True:
                break
        with self._lock:
            self._refill()
            self._tokens -= amount
        return waited


class SegmentWorker:
    """Scans pages of one segment and fixes what violates the invariant, with the handler's writes: it reads the
    attributes its gateway writes (`gateway.attributes`)."""

    def __init__(
        self,
        client: Any,
        gateway: Any,
        classify: Classify,
        read_limit: TokenBucket | None = None,
        write_limit: TokenBucket | None = None,
        new_gateway: Callable[[], Any] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self._stop = stop
        self._client = client
        self._gateway = gateway
        self._classify = classify
        self._read_limit = read_limit
        self._write_limit = write_limit
        self._new_gateway = new_gateway
        self._owns_gateway = False

    @property
    def attributes(self) -> AttributeNames:
        """The e-mail and flag attribute names its reads and writes use."""
        return self._gateway.attributes

    def limited(
        self,
        read_units_per_second: float | None,
        write_units_per_second: float | None,
        stop: threading.Event | None = None,
    ) -> SegmentWorker:
        """The same worker (client, writes, classification) under its own rate limits (None: unlimited). With `stop`,
        the limits' waits end when it is set, and a page then stops sending (a local run's Ctrl-C)."""
        sleep = stop.wait if stop is not None else time.sleep
        return SegmentWorker(
            self._client,
            self._gateway,
            self._classify,
            TokenBucket(read_units_per_second, sleep=sleep) if read_units_per_second else None,
            TokenBucket(write_units_per_second, sleep=sleep) if write_units_per_second else None,
            self._new_gateway,
            stop,
        )

    def for_segment(self) -> SegmentWorker:
        """A worker for one more segment: the same rate limits (shared) and its own writes pool when the worker
        was given `new_gateway`, so a write concurrency is per segment, not shared by every segment."""
        if self._new_gateway is None:
            return self
        worker = SegmentWorker(
            self._client,
            self._new_gateway(),
            self._classify,
            self._read_limit,
            self._write_limit,
            self._new_gateway,
            self._stop,
        )
        worker._owns_gateway = True
        return worker

    def close(self) -> None:
        """Stop the writes pool of a worker `for_segment` made (a shared one is left to its owner)."""
        if self._owns_gateway:
            self._gateway.close()

    def page(
        self, request: SegmentRequest, start_key: Mapping[str, Any] | None, deadline: Deadline = NO_DEADLINE
    ) -> PageResult:
        """Scan one page from `start_key`, write what it needs (unless a dry run), and count. Once the worker's stop
        event is set, the page sends nothing more (between the rate limit's steps) and is to be scanned again."""
        if self._read_limit is not None:
            self._read_limit.take(0)
        attributes = self._gateway.attributes
        response = self._client.scan(**scan_request(request, start_key, attributes))
        items = response.get("Items", [])
        counts = Counts(pages=1, scanned=len(items))
        consumed = response.get("ConsumedCapacity", {}).get("CapacityUnits")
        counts.read_units = (
            float(consumed) if consumed is not None else estimated_read_units(items, request.consistent_read)
        )
        if self._read_limit is not None:
            self._read_limit.take(counts.read_units)
        writes, counts.already_correct = plan_page(
            request.table_name, request.key_names, items, self._classify, attributes, counts
        )
        counts.to_write = len(writes)
        if writes and not request.dry_run:
            counts.write_units = float(len(writes))  # at least one unit each; the full item size is not read
            # Under a write limit, at most one second's worth at a time: a page's writes don't go out in one burst.
            step = max(1, int(self._write_limit.rate)) if self._write_limit is not None else len(writes)
            for start in range(0, len(writes), step):
                chunk = writes[start : start + step]
                if self._write_limit is not None:
                    self._write_limit.take(len(chunk))
                if self._stop is not None and self._stop.is_set():
                    return PageResult(counts, response.get("LastEvaluatedKey"), retry=True)
                outcomes = self._gateway.apply(chunk, deadline)
                tally(outcomes, counts)
                self._count_gone(chunk, outcomes, counts, deadline)
        return PageResult(counts, response.get("LastEvaluatedKey"), retry=counts.failed > 0)

    def _count_gone(
        self, writes: Sequence[Write], outcomes: Sequence[WriteOutcome], counts: Counts, deadline: Deadline
    ) -> None:
        """Tell the superseded writes whose item is gone from those whose item changed: one consistent read of their
        keys (rare: a condition fails only when a client wrote the item since the scan). An unread key stays
        superseded."""
        failed_condition = [w.key for w, o in zip(writes, outcomes, strict=True) if o is WriteOutcome.SUPERSEDED]
        if not failed_condition:
            return
        read = self._gateway.read_states(failed_condition, deadline)
        gone = sum(1 for key in failed_condition if key in read.states and read.states[key] is None)
        counts.superseded -= gone
        counts.gone += gone
        counts.read_units += len(failed_condition)  # consistent reads of at most 4 KB each

    def run(
        self,
        request: SegmentRequest,
        keep_going: Callable[[], bool],
        on_page: Callable[[PageResult, SegmentResult], None] | None = None,
        deadline: Deadline = NO_DEADLINE,
    ) -> SegmentResult:
        """Work through the segment from the request's start key while `keep_going()` says so (asked after every
        page: the first always runs). A page with failed writes (or writes cut off by `deadline`) ends the run at
        that page's start, to be scanned again; its items are not counted (`finished_counts`).
        `on_page` sees each page and where the segment stands after it (the checkpoint to keep). PayloadError, before
        any read, when the request's key holds the flag attribute (a key can't be written)."""
        conflict = attribute_conflict(request.key_names, self._gateway.attributes)
        if conflict:
            raise PayloadError(conflict)
        result = SegmentResult(request.segment, request.total_segments, request.start_key, done=False)
        while True:
            page = self.page(request, result.last_evaluated_key, deadline)
            result.counts.add(page.finished_counts())
            if not page.retry:
                result.last_evaluated_key = page.last_evaluated_key
                result.done = page.last_evaluated_key is None
            if on_page is not None:
                on_page(page, result)
            if page.retry or result.done or not keep_going():
                return result
