"""The batch loop (docs/design.md §3, §6): decode, plan, read, write, count, log, and answer Lambda."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from chalicelib.budget import ANSWER_MARGIN_SECONDS
from chalicelib.deadline import NO_DEADLINE, Deadline
from chalicelib.dynamodb import ReadResult, WriteOutcome
from chalicelib.planner import Action, Write, plan_batch, plan_reads
from chalicelib.records import (
    AttributeNames,
    ChangeRecord,
    FlagInKey,
    ItemKey,
    MalformedRecord,
    decode_record,
    sequence_number_of,
)

LOGGED_SEQUENCE_NUMBERS = 20
"""A summary line lists at most this many sequence numbers per kind (their counts are always whole): a batch of
10,000 rejected records would otherwise make a line of ~250 KB, CloudWatch's limit for one event."""


class Gateway(Protocol):
    """What the processor needs of DynamoDB: conditional writes and consistent reads, on its attribute names."""

    @property
    def attributes(self) -> AttributeNames:
        """The e-mail and flag attribute names the writes and reads use (the records are decoded with them too)."""

    def apply(self, writes: Sequence[Write], deadline: Deadline = NO_DEADLINE) -> list[WriteOutcome]:
        """Apply the writes, sending none after the deadline; one outcome per write, in order."""

    def read_states(self, keys: Sequence[ItemKey], deadline: Deadline = NO_DEADLINE) -> ReadResult:
        """Read the keys' current items until the deadline; keys that could not be read are left out."""


class BatchFailed(RuntimeError):
    """Raised when writes failed and the mapping does not report partial failures: Lambda retries the batch."""


@dataclass(slots=True)
class BatchReport:
    """What happened to one batch: counts only, and sequence numbers; never an attribute value."""

    records: Counter[str] = field(default_factory=Counter)
    items: int = 0
    flags_set: int = 0
    flags_removed: int = 0
    superseded: int = 0
    already_correct: int = 0
    deleted: int = 0
    gone: int = 0
    failed: int = 0
    out_of_time: int = 0
    """Items not written (or read) before the batch's deadline: counted in `failed` too, and retried."""
    access_denied: int = 0
    """Items whose write DynamoDB denied (a policy to fix): counted in `failed` too, and retried."""
    rejected: int = 0
    rejected_sequence_numbers: list[str] = field(default_factory=list)
    """The records of items DynamoDB refused outright (e.g. a key that does not fit the table): not retried."""
    malformed: int = 0
    malformed_sequence_numbers: list[str] = field(default_factory=list)
    flag_in_key: int = 0
    flag_in_key_sequence_numbers: list[str] = field(default_factory=list)
    """Records whose key holds the flag attribute (FLAG_ATTRIBUTE names a key attribute): never written, not retried;
    the stage's setting is wrong for the table."""
    failed_sequence_number: str | None = None
    """The lowest sequence number among the records of the items that failed: where a retry must start."""
    duration_ms: float = 0.0
    error: str | None = None
    """The type of an unexpected exception that ended the batch (then Lambda retries it), and where it was raised."""

    @property
    def writes(self) -> int:
        """Writes that DynamoDB applied."""
        return self.flags_set + self.flags_removed

    def summary(self) -> dict[str, Any]:
        """The batch's structured log fields."""
        return {
            "records": sum(self.records.values()),
            "records_by_event": dict(self.records),
            "items": self.items,
            "writes": self.writes,
            "flags_set": self.flags_set,
            "flags_removed": self.flags_removed,
            "superseded": self.superseded,
            "already_correct": self.already_correct,
            "deleted": self.deleted,
            "gone": self.gone,
            "failed": self.failed,
            "out_of_time": self.out_of_time,
            "access_denied": self.access_denied,
            "rejected": self.rejected,
            "rejected_records": len(self.rejected_sequence_numbers),
            "rejected_sequence_numbers": self.rejected_sequence_numbers[:LOGGED_SEQUENCE_NUMBERS],
            "malformed": self.malformed,
            "malformed_sequence_numbers": self.malformed_sequence_numbers[:LOGGED_SEQUENCE_NUMBERS],
            "flag_in_key": self.flag_in_key,
            "flag_in_key_sequence_numbers": self.flag_in_key_sequence_numbers[:LOGGED_SEQUENCE_NUMBERS],
            "failed_sequence_number": self.failed_sequence_number,
            "error": self.error,
            "duration_ms": round(self.duration_ms, 3),
        }


METRICS = {
    "Records": lambda r: sum(r.records.values()),
    "WritesApplied": lambda r: r.writes,
    "Superseded": lambda r: r.superseded,
    "AlreadyCorrect": lambda r: r.already_correct,
    "Failed": lambda r: r.failed,
    "OutOfTime": lambda r: r.out_of_time,
    "AccessDenied": lambda r: r.access_denied,
    "BatchErrors": lambda r: int(r.error is not None),
    "Rejected": lambda r: r.rejected,
    "Malformed": lambda r: r.malformed,
    "FlagInKey": lambda r: r.flag_in_key,
}


class StreamProcessor:
    """Owns the batch loop: every record of an event is decoded, planned, written and counted, then answered. The
    records are decoded with the attribute names of the gateway that writes them, bound once here."""

    def __init__(
        self,
        classify: Callable[[str], bool],
        gateway: Gateway,
        report_batch_item_failures: bool,
        logger: Any,
        metrics: Any | None = None,
    ) -> None:
        self._classify = classify
        self._gateway = gateway
        self._attributes = gateway.attributes
        self._report_batch_item_failures = report_batch_item_failures
        self._logger = logger
        self._metrics = metrics

    @property
    def gateway(self) -> Gateway:
        """The DynamoDB adapter this processor writes through."""
        return self._gateway

    def process(
        self, event: Mapping[str, Any], deadline: Deadline = NO_DEADLINE, report: BatchReport | None = None
    ) -> BatchReport:
        """Bring every item in the event under the invariant, as far as DynamoDB and the deadline let it; count what
        happened (into `report` when given, so a caller still has the counts if an unexpected error ends it)."""
        started = time.perf_counter()
        report = report if report is not None else BatchReport()
        records = self._decode(event.get("Records") or [], report)
        plan = plan_batch(records, self._classify)
        report.items = len(plan.records_by_key)
        report.deleted = plan.deleted
        failed_keys: list[ItemKey] = []
        rejected_keys: list[ItemKey] = []
        if plan.reads:
            read = self._gateway.read_states(plan.reads, deadline)
            report.gone = plan_reads(plan, read.states, self._classify)
            rejected_keys.extend(read.rejected)
            failed_keys.extend(key for key in plan.reads if key not in read.states and key not in read.rejected)
            report.out_of_time += len(read.out_of_time)
        report.already_correct = plan.already_correct
        for write, outcome in zip(plan.writes, self._gateway.apply(plan.writes, deadline), strict=True):
            if outcome is WriteOutcome.APPLIED:
                if write.action is Action.SET:
                    report.flags_set += 1
                else:
                    report.flags_removed += 1
            elif outcome is WriteOutcome.SUPERSEDED:
                report.superseded += 1
            elif outcome is WriteOutcome.REJECTED:
                rejected_keys.append(write.key)
            else:
                report.out_of_time += outcome is WriteOutcome.OUT_OF_TIME
                report.access_denied += outcome is WriteOutcome.ACCESS_DENIED
                failed_keys.append(write.key)
        report.rejected = len(rejected_keys)
        report.rejected_sequence_numbers = [
            seq for key in rejected_keys for seq in plan.records_by_key[key].sequence_numbers
        ]
        report.failed = len(failed_keys)
        if failed_keys:
            report.failed_sequence_number = min(
                (seq for key in failed_keys for seq in plan.records_by_key[key].sequence_numbers), key=int
            )
        report.duration_ms = (time.perf_counter() - started) * 1000
        return report

    def _decode(self, raw_records: Sequence[Any], report: BatchReport) -> list[ChangeRecord]:
        records = []
        attributes = self._attributes
        for position, raw in enumerate(raw_records):
            try:
                record = decode_record(raw, attributes)
            except FlagInKey:
                # The setting, not the record, is wrong: counted apart, never written (a key can't be), and logged
                # once per batch below rather than once per record (every record of the table has the same key).
                report.flag_in_key += 1
                report.flag_in_key_sequence_numbers.append(sequence_number_of(raw) or f"position {position}")
                continue
            except (MalformedRecord, TypeError, AttributeError) as problem:
                # Counted and logged by sequence number, then skipped: blocking the shard on it would stop every
                # later change; the record stays in the stream (and the on-failure destination) to be looked at.
                sequence_number = sequence_number_of(raw)
                report.malformed += 1
                report.malformed_sequence_numbers.append(sequence_number or f"position {position}")
                reason = str(problem) if isinstance(problem, MalformedRecord) else type(problem).__name__
                self._logger.warning(
                    "malformed record skipped",
                    extra={"sequence_number": sequence_number, "position": position, "reason": reason},
                )
                continue
            report.records[record.event_name.value] += 1
            records.append(record)
        if report.flag_in_key:
            self._logger.error(
                "records skipped: FLAG_ATTRIBUTE names a key attribute of their table",
                extra={
                    "flag_attribute": attributes.flag,
                    "records": report.flag_in_key,
                    "sequence_numbers": report.flag_in_key_sequence_numbers[:LOGGED_SEQUENCE_NUMBERS],
                },
            )
        return records

    def respond(self, report: BatchReport) -> dict[str, Any]:
        """Lambda's answer: the partial-failure report, or an exception when the mapping can't take one."""
        if report.failed_sequence_number is None:
            return {"batchItemFailures": []}
        if self._report_batch_item_failures:
            return {"batchItemFailures": [{"itemIdentifier": report.failed_sequence_number}]}
        raise BatchFailed(
            f"{report.failed} item(s) failed from sequence number {report.failed_sequence_number}; "
            "the batch will be retried (REPORT_BATCH_ITEM_FAILURES is off)"
        )

    def handle(self, event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
        """Process one Lambda event before its deadline, log its summary line and metrics, and answer it.

        The summary line and the metrics come out on every path: an unexpected exception is counted (its type and
        place, never its message, which may hold a value), then raised so that Lambda retries the batch.
        """
        started = time.perf_counter()
        deadline = NO_DEADLINE
        if context is not None:
            self._logger.append_keys(function_request_id=getattr(context, "aws_request_id", None))
            deadline = Deadline.from_remaining_ms(context.get_remaining_time_in_millis(), ANSWER_MARGIN_SECONDS)
        report = BatchReport()
        try:
            self.process(event, deadline, report)
        except Exception as error:
            report.error = _where(error)
            report.duration_ms = (time.perf_counter() - started) * 1000
            self._logger.error("batch processed", extra=report.summary())
            self._publish(report)
            raise
        self._logger.info("batch processed", extra=report.summary())
        self._publish(report)
        return self.respond(report)

    def _publish(self, report: BatchReport) -> None:
        if self._metrics is None:
            return
        for name, value in METRICS.items():
            self._metrics.add_metric(name=name, unit="Count", value=value(report))
        self._metrics.add_metric(name="BatchDuration", unit="Milliseconds", value=report.duration_ms)
        self._metrics.flush_metrics()


def _where(error: BaseException) -> str:
    """`TypeName at file.py:line` of the innermost frame: enough to find the bug, with no value in it."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    place = f" at {frame.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.tb_lineno}" if frame else ""
    return f"{type(error).__name__}{place}"
