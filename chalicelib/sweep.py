"""The sweep (docs/design.md §6, docs/operations.md): one resumable, rate-limited pass at a time over the whole table,
run by a scheduled function with reserved concurrency 1.

Its whole state (the pass, when it started, each segment's cursor, the pass's counts and the urgent request) is one
JSON object in the stage's on-failure bucket, written only with conditional puts on its ETag (If-Match, or
If-None-Match when there is none yet). A run claims the pass by writing it, then writes it again after every page:
a second run at once either fails its claim or takes the pass over, and the first one's next write fails, so it
stops; a run that dies loses at most the page each segment had in hand, which the next run reads again.

Background: every item is checked at least once per period (SWEEP_PERIOD_HOURS): each run derives its read rate from
the table's size, what this pass has read and the time left of the period, reads one interval's worth of it at the
stage's limits and ends (so a small table's runs last seconds, not the function's whole timeout). Urgent: the
reconciler records the failure time of a batch whose records can't be had (`StateStore.request_urgent`); runs then go
at the stage's limits until a pass that started after the latest request has finished (the pass in hand, then at
most one more).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.backfill import Counts, SegmentRequest, SegmentWorker, key_from_json, key_to_json
from chalicelib.deadline import Deadline
from chalicelib.records import attribute_conflict

STATE_KEY = "sweep/state.json"
"""The state object's key in the stage's on-failure bucket (outside `aws/lambda/`, so no notification and no
expiry: tools/failure_bucket.py)."""
BYTES_PER_READ_UNIT = 8192
"""An eventually consistent Scan reads 4 KB for half a read unit."""
MIN_BACKGROUND_READ_UNITS = 10.0
"""The background's floor: a table DescribeTable still calls empty (its size is refreshed about every 6 hours) is
read at 80 KB/s, about 6.9 GB a day, not at zero."""
RATE_HEADROOM = 1.5
"""The background reads this much faster than the bare arithmetic asks (throttles, a table that grows, pauses)."""
MARGIN_SECONDS = 10.0
"""Kept back from the function's remaining time: the last state write, the summary line, the metrics, and the first
page (a page starts only while the slowest one measured still fits; one cut off by the deadline is read again)."""
CONFLICTS = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
"""A conditional put that lost: another writer changed the object (412), or was changing it at the time (409)."""
MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
URGENT_ATTEMPTS = 5
DEFAULT_CAPACITY_FRACTION = 0.2
"""On a provisioned table, the share of its capacity the sweep (and by default the backfill command) may use: the
live traffic keeps the rest, the handler's writes included."""
ON_DEMAND_READ_UNITS = 1000.0
"""On an on-demand table, the most read units per second by default: small against its initial 12,000 RCU."""
ON_DEMAND_WRITE_UNITS = 500.0
"""On an on-demand table, the most write units per second by default: small against its initial 4,000 WCU."""


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def _when(text: Any) -> datetime | None:
    return datetime.fromisoformat(text) if isinstance(text, str) and text else None


def error_code(error: Exception) -> str:
    """An AWS error's code (or the exception's type)."""
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", "")) or type(error).__name__
    return type(error).__name__


@dataclass(slots=True)
class Cursor:
    """Where one segment of the pass stands: the key to go on from (None: its start), and whether it is done."""

    key: dict[str, Any] | None = None
    done: bool = False


@dataclass(slots=True)
class SweepState:
    """The one state object: the pass in hand, its cursors and counts, the urgent request, the last finished pass."""

    table: str = ""
    pass_number: int = 0
    """0: no pass has started yet (the object holds only an urgent request)."""
    started_at: datetime | None = None
    cursors: list[Cursor] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    urgent_since: datetime | None = None
    """The latest failure time an urgent pass must cover; None: background."""
    urgent_requests: int = 0
    last_started_at: datetime | None = None
    last_finished_at: datetime | None = None
    runs: int = 0
    updated_at: datetime | None = None
    estimated_end: datetime | None = None
    item_count: int = 0
    """The table's ItemCount when the run last looked (DescribeTable's estimate)."""

    @property
    def urgent(self) -> bool:
        """Whether runs go at the urgent rates."""
        return self.urgent_since is not None

    @property
    def finished(self) -> bool:
        """Whether every segment of the pass is done."""
        return bool(self.cursors) and all(cursor.done for cursor in self.cursors)

    def percent(self) -> float:
        """How far the pass is, by items checked against the table's estimated count (at most 99.9 until done)."""
        if self.finished:
            return 100.0
        return min(99.9, 100.0 * self.counts.scanned / self.item_count) if self.item_count else 0.0

    def start_pass(self, table: str, segments: int, now: datetime) -> None:
        """Begin the next pass from the table's start (the urgent request, if any, stays)."""
        self.table, self.pass_number, self.started_at = table, self.pass_number + 1, now
        self.cursors = [Cursor() for _ in range(segments)]
        self.counts = Counts()
        self.estimated_end = None

    def finish_pass(self, now: datetime) -> None:
        """Record the finished pass; an urgent request it covers (made before it started) is answered."""
        self.last_started_at, self.last_finished_at = self.started_at, now
        if self.urgent_since is not None and self.started_at is not None and self.started_at > self.urgent_since:
            self.urgent_since = None

    def to_json(self) -> bytes:
        """The object's body."""
        return json.dumps(
            {
                "format": 1,
                "table": self.table,
                "pass": self.pass_number,
                "started_at": _iso(self.started_at),
                "cursors": [{"key": key_to_json(c.key), "done": c.done} for c in self.cursors],
                "counts": self.counts.to_dict(),
                "urgent_since": _iso(self.urgent_since),
                "urgent_requests": self.urgent_requests,
                "last_started_at": _iso(self.last_started_at),
                "last_finished_at": _iso(self.last_finished_at),
                "runs": self.runs,
                "updated_at": _iso(self.updated_at),
                "estimated_end": _iso(self.estimated_end),
                "item_count": self.item_count,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, body: bytes) -> SweepState:
        """The state from its object's body; ValueError if it is not one."""
        raw = json.loads(body)
        if not isinstance(raw, Mapping) or raw.get("format") != 1:
            raise ValueError("not a sweep state object")
        return cls(
            table=str(raw.get("table") or ""),
            pass_number=int(raw.get("pass") or 0),
            started_at=_when(raw.get("started_at")),
            cursors=[Cursor(key_from_json(c.get("key")), c.get("done") is True) for c in raw.get("cursors") or []],
            counts=Counts.from_dict(raw.get("counts") or {}),
            urgent_since=_when(raw.get("urgent_since")),
            urgent_requests=int(raw.get("urgent_requests") or 0),
            last_started_at=_when(raw.get("last_started_at")),
            last_finished_at=_when(raw.get("last_finished_at")),
            runs=int(raw.get("runs") or 0),
            updated_at=_when(raw.get("updated_at")),
            estimated_end=_when(raw.get("estimated_end")),
            item_count=int(raw.get("item_count") or 0),
        )


class StateStore:
    """The state object in S3, read with its ETag and written only on it (If-Match; If-None-Match: * when absent).

    The role needs s3:GetObject and s3:PutObject on the key, and s3:ListBucket on the bucket so that a missing object
    answers 404, not 403 (S3 API Reference, GetObject, "Permissions")."""

    def __init__(self, s3: Any, bucket: str, key: str = STATE_KEY) -> None:
        self._s3 = s3
        self.bucket = bucket
        self.key = key

    def load(self) -> tuple[SweepState | None, str | None]:
        """(state, ETag), or (None, None) when there is no object yet; S3's other errors are raised."""
        try:
            response = self._s3.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as error:
            if error_code(error) in MISSING:
                return None, None
            raise
        return SweepState.from_json(response["Body"].read()), response["ETag"]

    def save(self, state: SweepState, etag: str | None) -> str | None:
        """Write `state` if the object is still the one read (`etag`; None: if there is none); its new ETag, or None
        when another writer got there first. S3's other errors are raised."""
        condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        # A write of its own (the ETag is the body's MD5): two writers of equal states never get equal ETags.
        body = state.to_json()[:-1] + b', "write": "' + uuid.uuid4().hex.encode() + b'"}'
        try:
            response = self._s3.put_object(
                Bucket=self.bucket, Key=self.key, Body=body, ContentType="application/json", **condition
            )
        except ClientError as error:
            if error_code(error) in CONFLICTS:
                return None
            raise
        return response["ETag"]

    def request_urgent(self, failed_at: datetime) -> SweepState:
        """Record that a pass must start after `failed_at` (kept if a later request is there); the state written.
        Conflicting writers are met by reading again; RuntimeError after `URGENT_ATTEMPTS` lost writes."""
        for _ in range(URGENT_ATTEMPTS):
            state, etag = self.load()
            state = state or SweepState()
            if state.urgent_since is not None and state.urgent_since >= failed_at:
                return state  # an equal or later request is there: a pass that covers it covers this one
            state.urgent_since = failed_at
            state.urgent_requests += 1
            if self.save(state, etag) is not None:
                return state
        raise RuntimeError("the sweep's state kept changing")


@dataclass(frozen=True, slots=True)
class TableFacts:
    """What the sweep reads from DescribeTable each run."""

    name: str
    key_names: tuple[str, ...]
    size_bytes: int
    item_count: int
    read_capacity: int
    """Provisioned read units; 0 on demand."""
    write_capacity: int


def table_facts(description: Mapping[str, Any]) -> TableFacts:
    """The sweep's facts from a DescribeTable `Table`."""
    schema = sorted(description["KeySchema"], key=lambda element: element["KeyType"] != "HASH")
    on_demand = description.get("BillingModeSummary", {}).get("BillingMode") == "PAY_PER_REQUEST"
    throughput = {} if on_demand else description.get("ProvisionedThroughput", {})
    return TableFacts(
        name=description["TableName"],
        key_names=tuple(element["AttributeName"] for element in schema),
        size_bytes=int(description.get("TableSizeBytes", 0)),
        item_count=int(description.get("ItemCount", 0)),
        read_capacity=int(throughput.get("ReadCapacityUnits", 0)),
        write_capacity=int(throughput.get("WriteCapacityUnits", 0)),
    )


@dataclass(frozen=True, slots=True)
class SweepConfig:
    """The stage's sweep settings (chalicelib.config.Settings)."""

    period: timedelta = timedelta(hours=168)
    segments: int = 8
    capacity_fraction: float = DEFAULT_CAPACITY_FRACTION
    """On a provisioned table: the share of its read and write capacity the sweep may use at most."""
    read_units: float = ON_DEMAND_READ_UNITS
    """On demand: the most read units per second the sweep uses (the urgent rate)."""
    write_units: float = ON_DEMAND_WRITE_UNITS
    page_items: int | None = None
    """Scan's Limit (None: DynamoDB's 1 MB pages)."""
    interval: timedelta = timedelta(minutes=15)
    """The schedule's rate: with each run's length, what share of the time the sweep reads (the duty)."""
    margin_seconds: float = MARGIN_SECONDS
    """Kept back from each run's remaining time (a test's short runs keep less)."""


@dataclass(frozen=True, slots=True)
class Rates:
    """Units per second a run may read and write."""

    read: float
    write: float


@dataclass(frozen=True, slots=True)
class RunPlan:
    """How one run reads: always at the stage's limits (`limits`), for at most `quota` read units (None: until its
    time is up)."""

    read_rate: float
    """The read units per second the pass is kept at: the background's derived rate, or the urgent limit."""
    average: float
    """What that rate comes to over the schedule's interval (a run reads for part of it): the pass's progress."""
    quota: float | None


def limits(facts: TableFacts, config: SweepConfig) -> Rates:
    """The most the sweep may use: a fraction of a provisioned table's capacity, or the stage's on-demand limits."""
    if facts.read_capacity:
        return Rates(
            max(1.0, facts.read_capacity * config.capacity_fraction),
            max(1.0, facts.write_capacity * config.capacity_fraction),
        )
    return Rates(config.read_units, config.write_units)


def pass_read_units(size_bytes: int) -> float:
    """Read units one pass of a table of `size_bytes` costs (eventually consistent)."""
    return size_bytes / BYTES_PER_READ_UNIT


def background_read_rate(units_left: float, seconds_left: float, cap: float) -> float:
    """The average read rate that finishes `units_left` within `seconds_left`, with headroom; at least the floor, at
    most `cap` (the cap once the period is over)."""
    if seconds_left <= 0:
        return cap
    needed = RATE_HEADROOM * max(0.0, units_left) / seconds_left
    return min(cap, max(MIN_BACKGROUND_READ_UNITS, needed))


@dataclass(slots=True)
class RunReport:
    """What one run did: counts only, never a key or an attribute value."""

    outcome: str = "advanced"
    """advanced, superseded (another run holds the pass), or state_error (the state could not be written)."""
    pass_number: int = 0
    mode: str = "background"
    read_units_per_second: float = 0.0
    read_units_quota: float | None = None
    """A background run's share of the pass (read at the stage's limits, then the run ends); None when urgent."""
    percent: float = 0.0
    passes_finished: int = 0
    counts: Counts = field(default_factory=Counts)
    pass_overdue: bool = False
    urgent_overdue: bool = False
    estimated_end: str | None = None

    def summary(self) -> dict[str, Any]:
        """The run's log line and return value."""
        return {
            "outcome": self.outcome,
            "pass": self.pass_number,
            "mode": self.mode,
            "read_units_per_second": round(self.read_units_per_second, 1),
            "read_units_quota": None if self.read_units_quota is None else round(self.read_units_quota, 1),
            "percent": round(self.percent, 1),
            "passes_finished": self.passes_finished,
            "pass_overdue": self.pass_overdue,
            "urgent_overdue": self.urgent_overdue,
            "estimated_end": self.estimated_end,
            "scanned": self.counts.scanned,
            "to_write": self.counts.to_write,
            "written": self.counts.written,
            "superseded": self.counts.superseded,
            "gone": self.counts.gone,
            "failed": self.counts.failed,
            "rejected": self.counts.rejected,
            "pages": self.counts.pages,
            "read_units": round(self.counts.read_units, 1),
        }


class StateLost(Exception):
    """Another run wrote the state: this one stops."""


class Sweeper:
    """Runs the pass in hand for as long as the function's time allows, segments in parallel (threads sharing the
    rate limits), each page decided and written with the handler's planner and conditional writes."""

    def __init__(
        self,
        client: Any,
        worker: SegmentWorker,
        store: StateStore,
        table_name: str,
        config: SweepConfig,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client = client
        self._worker = worker
        self._store = store
        self._table_name = table_name
        self._config = config
        self._now = now

    def run(self, remaining_ms: Callable[[], int]) -> RunReport:
        """One run: claim the pass, work it until the time is nearly up, keep the state after every page."""
        run_ms = remaining_ms()
        margin = self._config.margin_seconds
        deadline = Deadline.from_remaining_ms(run_ms, margin)
        facts = table_facts(self._client.describe_table(TableName=self._table_name)["Table"])
        conflict = attribute_conflict(facts.key_names, self._worker.attributes)
        if conflict:
            raise ValueError(conflict)
        state, etag = self._store.load()
        state = state or SweepState()
        now = self._now()
        if state.pass_number == 0 or state.table != facts.name or not state.cursors:
            state.start_pass(facts.name, self._config.segments, now)
        elif state.finished:  # a state written by hand, or by an older version: finish it and go on
            state.finish_pass(now)
            state.start_pass(facts.name, len(state.cursors), now)
        state.item_count = facts.item_count
        state.runs += 1
        state.updated_at = now
        report = RunReport(pass_number=state.pass_number)
        duty = min(1.0, max(0.0, run_ms / 1000 - margin) / self._config.interval.total_seconds())
        plan = self._plan(state, facts, duty, now)
        report.mode = "urgent" if state.urgent else "background"
        report.read_units_per_second = plan.read_rate
        report.read_units_quota = plan.quota
        state.estimated_end = self._estimated_end(state, facts, plan.average, now)
        etag = _written(self._store, state, etag)  # the claim: fails if another run wrote since we read
        if etag is None:
            report.outcome = "superseded"
            return report
        holder = _Holder(self._store, state, etag, self._now)
        try:
            self._work(holder, facts, plan, deadline, report)
        except StateLost:
            report.outcome = "superseded"
        self._finish(report, holder.state, facts, duty, now)
        return report

    def _plan(self, state: SweepState, facts: TableFacts, duty: float, now: datetime) -> RunPlan:
        """Urgent: the stage's limits for the whole run. Background: the rate that keeps the period, as a quota of
        one interval's worth read at the limits, so a run ends once it has read its share instead of being billed
        for sleeping between pages."""
        cap = limits(facts, self._config)
        if state.urgent:
            return RunPlan(cap.read, cap.read * duty, None)
        assert state.started_at is not None
        seconds_left = (state.started_at + self._config.period - now).total_seconds()
        units_left = pass_read_units(facts.size_bytes) - state.counts.read_units
        rate = background_read_rate(units_left, seconds_left, cap.read * duty)  # what runs of this length can read
        return RunPlan(rate, rate, rate * self._config.interval.total_seconds())

    def _estimated_end(self, state: SweepState, facts: TableFacts, average: float, now: datetime) -> datetime | None:
        units_left = max(0.0, pass_read_units(facts.size_bytes) - state.counts.read_units)
        if average <= 0:
            return None
        return now + timedelta(seconds=units_left / average)

    def _work(self, holder: _Holder, facts: TableFacts, plan: RunPlan, deadline: Deadline, report: RunReport) -> None:
        stop = threading.Event()
        pace = limits(facts, self._config)
        shared = self._worker.limited(pace.read, pace.write, stop)
        slowest = [0.0]
        errors: list[BaseException] = []

        def quota_left() -> bool:  # a page in hand may pass it: at most one page per segment over
            return plan.quota is None or report.counts.read_units < plan.quota

        def segment(number: int) -> None:
            worker = shared.for_segment()
            request = SegmentRequest(
                facts.name, facts.key_names, number, len(holder.state.cursors), page_size=self._config.page_items
            )
            try:
                while not stop.is_set() and deadline.remaining() > slowest[0] and quota_left():
                    started = time.monotonic()
                    page = worker.page(request, holder.state.cursors[number].key, deadline)
                    slowest[0] = max(slowest[0], time.monotonic() - started)
                    done = holder.record(number, page, report)
                    if page.retry or done:
                        return
            except StateLost:
                stop.set()
            except BaseException as error:  # handed to the run, which raises it once the others have stopped
                errors.append(error)
                stop.set()
            finally:
                worker.close()

        threads = [
            threading.Thread(target=segment, args=(number,), name=f"sweep-{number}")
            for number, cursor in enumerate(holder.state.cursors)
            if not cursor.done
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        if holder.lost:
            raise StateLost

    def _finish(self, report: RunReport, state: SweepState, facts: TableFacts, duty: float, now: datetime) -> None:
        report.pass_number = state.pass_number
        report.percent = state.percent()
        report.estimated_end = _iso(state.estimated_end)
        if state.started_at is not None:
            report.pass_overdue = now - state.started_at > self._config.period * 1.5
        if state.urgent_since is not None:
            report.urgent_overdue = now - state.urgent_since > urgent_estimate(facts, self._config, duty)


def urgent_estimate(facts: TableFacts, config: SweepConfig, duty: float) -> timedelta:
    """How long an urgent request may take at most: the pass in hand and one more at the urgent rates, and a run's
    wait for the schedule on each side."""
    rate = limits(facts, config).read * max(duty, 0.01)
    return timedelta(seconds=2 * pass_read_units(facts.size_bytes) / rate) + 2 * config.interval


class StateWriteError(RuntimeError):
    """S3 refused a write of the state for another reason than a lost condition (a permission, the bucket, S3)."""


def _written(store: StateStore, state: SweepState, etag: str | None) -> str | None:
    try:
        return store.save(state, etag)
    except (ClientError, BotoCoreError) as error:
        raise StateWriteError(error_code(error)) from error


class _Holder:
    """The run's copy of the state and its ETag; every page's result is written back under one lock."""

    def __init__(self, store: StateStore, state: SweepState, etag: str, now: Callable[[], datetime]) -> None:
        self._store = store
        self._now = now
        self.state = state
        self._etag = etag
        self._lock = threading.Lock()
        self.lost = False

    def record(self, number: int, page: Any, report: RunReport) -> bool:
        """Take one page's cursor and counts into the state and write it; whether the segment is done. StateLost
        when another run has written the state since (this run then stops; the page is read again by the next)."""
        with self._lock:
            if self.lost:
                raise StateLost
            counts = page.finished_counts()
            state = self.state
            cursor = state.cursors[number]
            if not page.retry:
                cursor.key = page.last_evaluated_key
                cursor.done = page.last_evaluated_key is None
            state.counts.add(counts)
            report.counts.add(counts)
            now = self._now()
            state.updated_at = now
            if state.finished:
                state.finish_pass(now)
                report.passes_finished += 1
                state.start_pass(state.table, len(state.cursors), now)
                done = True
            else:
                done = cursor.done
            try:
                etag = _written(self._store, state, self._etag)
            except StateWriteError:
                self.lost = True
                raise
            if etag is None:
                self.lost = True
                raise StateLost
            self._etag = etag
            return done
