"""The reconciler: a discarded stream batch's items brought under the invariant from their current state.

Lambda writes each discarded batch to the stage's S3 bucket (its on-failure destination), with the whole invocation
event in `payload`; the bucket's ObjectCreated notification reaches the failure queue, which this consumes (one
message at a time). The object's records are decoded with the handler's own decoder, collapsed to keys, and each item
is decided from a consistent read of its current state with the handler's planner and conditional writes: old images
are never replayed, the stream is never read, the table never scanned.

Only when the batch's records can't be had (a pointer with no payload, an object gone, or denied for good) does it
ask the sweep for an urgent pass, recording the batch's failure time in the sweep's state (chalicelib/sweep.py), and
the message is finished: no waiting, no lock, no invocation (docs/design.md §6, docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.budget import ANSWER_MARGIN_SECONDS
from chalicelib.deadline import Deadline
from chalicelib.dynamodb import OutcomeTally, WriteOutcome
from chalicelib.on_failure import (
    FailureRecord,
    Message,
    MessageKind,
    ObjectRef,
    Unusable,
    parse_message,
    parse_object,
)
from chalicelib.planner import Classify, decide
from chalicelib.records import ItemKey, MalformedRecord, decode_record
from chalicelib.sweep import error_code

RETRY_BASE_DELAY_SECONDS = 30
MAX_RETRY_DELAY_SECONDS = 12 * 3600
"""SQS's longest visibility timeout, counted from the receive: a message is never asked to wait longer."""
LOGGED_RANGES = 20
ACCESS_DENIED_RECEIVES = 3
"""An object the reconciler may not read is asked for again this many times (a policy being deployed), then left
to the sweep's urgent pass. (With s3:ListBucket granted, a deleted object answers 404, not 403.)"""


class Outcome(StrEnum):
    """How one message ended, from the mildest to the gravest (a message of many objects ends as its gravest)."""

    RECONCILED = "reconciled"
    TEST_EVENT = "test_event"
    SWEEP_REQUESTED = "sweep_requested"
    """The batch's records can't be had: an urgent pass of the sweep is recorded, and covers the batch."""
    UNUSABLE = "unusable"
    RETRY = "retry"


_SEVERITY = {outcome: rank for rank, outcome in enumerate(Outcome)}


@dataclass(slots=True)
class Report:
    """What one message came to: counts and sequence numbers only, never a key or an attribute value."""

    outcome: Outcome = Outcome.RECONCILED
    objects: int = 0
    records: int = 0
    malformed: int = 0
    items: int = 0
    fixed: int = 0
    already_correct: int = 0
    gone: int = 0
    superseded: int = 0
    failed: int = 0
    rejected: int = 0
    reason: str | None = None
    """Why the outcome is what it is when it isn't plain (an error code, "no_payload", "deadline")."""
    ranges: list[str] = field(default_factory=list)
    """Each discarded batch's `shard:start..end` (sequence numbers only), for the operator."""

    def escalate(self, outcome: Outcome, reason: str | None = None) -> None:
        """Take `outcome` if it is graver than the one so far (a message of many objects ends as its worst)."""
        if _SEVERITY[outcome] >= _SEVERITY[self.outcome]:
            self.outcome, self.reason = outcome, reason

    def fields(self) -> dict[str, Any]:
        """The log line's counts."""
        names = ("objects", "records", "malformed", "items", "fixed", "already_correct", "gone", "superseded")
        return {
            **{name: getattr(self, name) for name in names},
            "failed": self.failed,
            "rejected": self.rejected,
            "reason": self.reason,
            "ranges": self.ranges[:LOGGED_RANGES],
        }


def retry_delay_seconds(receive_count: int) -> int:
    """How long a message that could not be finished waits before its next try: doubling from 30 s, at most 12 h."""
    doublings = min(max(0, receive_count - 1), 16)  # 30 s * 2**16 is far past the cap already
    return min(RETRY_BASE_DELAY_SECONDS * 2**doublings, MAX_RETRY_DELAY_SECONDS)


def queue_url_from_arn(queue_arn: str) -> str:
    """An SQS queue's URL from its ARN (arn:PARTITION:sqs:REGION:ACCOUNT:NAME), as SQS's API takes it."""
    parts = queue_arn.split(":")
    if len(parts) != 6 or parts[2] != "sqs":
        raise ValueError("not an SQS queue ARN")
    suffix = "amazonaws.com.cn" if parts[1] == "aws-cn" else "amazonaws.com"
    return f"https://sqs.{parts[3]}.{suffix}/{parts[4]}/{parts[5]}"


def tally(report: Report, outcomes: Sequence[WriteOutcome]) -> None:
    """Count the writes' outcomes into the report."""
    tallied = OutcomeTally.of(outcomes)
    report.fixed += tallied.applied
    report.superseded += tallied.superseded
    report.rejected += tallied.rejected
    report.failed += tallied.failed


@dataclass(frozen=True, slots=True)
class Context:
    """One message's circumstances: its deadline, receive count and the time."""

    deadline: Deadline
    receives: int = 1
    now: Callable[[], datetime] = lambda: datetime.now(UTC)


class Reconciler:
    """Brings a discarded batch's items under the invariant from its S3 object, or asks the sweep for an urgent
    pass when the batch's records can't be had."""

    def __init__(self, gateway: Any, classify: Classify, s3: Any, sweep: Any | None) -> None:
        self._gateway = gateway
        self._classify = classify
        self._s3 = s3
        self._sweep = sweep
        """The stage's sweep state (chalicelib.sweep.StateStore); None where the stage has no bucket to hold it."""

    def handle(self, message: Message, context: Context) -> Report:
        """Every object (or the record) of one message, into one report."""
        report = Report()
        if message.record is not None:
            self._record(message.record, context, report)
        for ref in message.objects:
            report.objects += 1
            self._object(ref, context, report)
        return report

    def _object(self, ref: ObjectRef, context: Context, report: Report) -> None:
        try:
            body = self._s3.get_object(Bucket=ref.bucket, Key=ref.key)["Body"].read()
        except (ClientError, BotoCoreError) as error:
            code = error_code(error)
            gone = code in ("NoSuchKey", "404")  # S3 reads its writes: a key the notification named was deleted
            denied = code in ("AccessDenied", "403") and context.receives >= ACCESS_DENIED_RECEIVES
            if not (gone or denied):
                report.escalate(Outcome.RETRY, code)
                return
            self._request_sweep(ref.created_at, f"object_{code}", context, report)
            return
        try:
            record = parse_object(body)
        except Unusable as problem:
            report.escalate(Outcome.UNUSABLE, str(problem))
            return
        self._record(record, context, report)

    def _record(self, record: FailureRecord, context: Context, report: Report) -> None:
        report.ranges.append(f"{record.shard_id}:{record.start_sequence_number}..{record.end_sequence_number}")
        if record.payload_records is None:
            why = "payload_unusable" if record.payload_problem else "no_payload"
            self._request_sweep(record.failed_at, why, context, report)
            return
        keys = self._decode(record.payload_records, report)
        self.fix(keys, context.deadline, report)

    def _decode(self, raw_records: Iterable[Any], report: Report) -> list[ItemKey]:
        keys: dict[ItemKey, None] = {}
        for raw in raw_records:
            report.records += 1
            try:
                keys[decode_record(raw, self._gateway.attributes).key] = None
            except (MalformedRecord, TypeError, AttributeError, KeyError):
                report.malformed += 1  # the handler counted it malformed too: there is no key to fix
        return list(keys)

    def fix(self, keys: Sequence[ItemKey], deadline: Deadline, report: Report) -> None:
        """Decide each key from a consistent read of its current item and write what violates the invariant."""
        report.items += len(keys)
        read = self._gateway.read_states(keys, deadline)
        report.rejected += len(read.rejected)
        writes = []
        unread = 0
        for key in keys:
            if key not in read.states:
                unread += key not in read.rejected  # out of time, or still failing after retries
                continue
            state = read.states[key]
            if state is None:
                report.gone += 1  # deleted since: never written, so never resurrected
                continue
            write = decide(key, state, self._classify)
            if write is None:
                report.already_correct += 1
            else:
                writes.append(write)
        report.failed += unread
        tally(report, self._gateway.apply(writes, deadline))
        if report.failed:
            report.escalate(Outcome.RETRY, "deadline" if deadline.expired() else "failed")

    def _request_sweep(self, failed_at: datetime | None, why: str, context: Context, report: Report) -> None:
        """The batch's keys can't be known: record an urgent pass (one that starts after the failure covers every item
        the batch held); the message is then finished."""
        if self._sweep is None:
            report.escalate(Outcome.RETRY, f"{why}: no bucket for the sweep's state (FAILURE_BUCKET)")
            return
        try:
            self._sweep.request_urgent(failed_at or context.now())
        except (ClientError, BotoCoreError, RuntimeError, ValueError) as error:
            report.escalate(Outcome.RETRY, f"{why}: {error_code(error)}")
            return
        report.escalate(Outcome.SWEEP_REQUESTED, why)


MARGIN_SECONDS = ANSWER_MARGIN_SECONDS + 3.0
"""Time kept back from the function's remaining time: to answer, and to change the message's visibility first."""
METRICS = {
    "ReconcilerMessages": lambda report: 1,
    "ReconcilerItemsFixed": lambda report: report.fixed,
    "ReconcilerFailed": lambda report: int(report.outcome is Outcome.RETRY),
    "ReconcilerSweepRequests": lambda report: int(report.outcome is Outcome.SWEEP_REQUESTED),
    "ReconcilerUnusable": lambda report: int(report.outcome is Outcome.UNUSABLE),
    "ReconcilerTestEvents": lambda report: int(report.outcome is Outcome.TEST_EVENT),
    "ReconcilerMalformedRecords": lambda report: report.malformed,
}


class ReconcileIncomplete(RuntimeError):
    """Raised, where the event source can't be told which messages to keep, after the unfinished messages'
    visibility was pushed back: Lambda leaves the batch in the queue for a later try."""


class MessageHandler:
    """One failure-queue message: parse, reconcile, log one line and the metrics; push back what isn't done."""

    def __init__(self, reconciler: Reconciler, sqs: Any, logger: Any, metrics: Any | None = None) -> None:
        self._reconciler = reconciler
        self._sqs = sqs
        self._logger = logger
        self._metrics = metrics

    def answer(
        self, messages: Iterable[Mapping[str, Any]], remaining_ms: Callable[[], int], report_item_failures: bool
    ) -> dict[str, Any] | None:
        """Every message of an SQS event; Lambda's partial batch response naming the unfinished ones when the event
        source reports item failures (nothing raised: a message that comes back later is routine), else
        ReconcileIncomplete after the batch if any is unfinished."""
        unfinished = [
            message.get("messageId")
            for message in messages
            if self.handle(message, remaining_ms).outcome is Outcome.RETRY
        ]
        if report_item_failures:
            return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in unfinished]}
        if unfinished:
            raise ReconcileIncomplete(f"{len(unfinished)} message(s) not finished; they come back later")
        return None

    def handle(self, message: Mapping[str, Any], remaining_ms: Callable[[], int]) -> Report:
        """Handle one SQS record (Lambda's shape): its report; one to retry was pushed back first."""
        deadline = Deadline.from_remaining_ms(remaining_ms(), MARGIN_SECONDS)
        where: dict[str, Any] = {"message_id": message.get("messageId")}
        receives = _receive_count(message)
        try:
            parsed = parse_message(message.get("body"))
        except Unusable as problem:
            # Deleted (the handler returns): retrying a body that is none of the known shapes can never succeed.
            report = Report(outcome=Outcome.UNUSABLE, reason=str(problem))
            self._finish(report, where)
            return report
        where["kind"] = parsed.kind.value
        if parsed.record is not None:
            where |= parsed.record.log_fields()
        if parsed.kind is MessageKind.TEST_EVENT:
            report = Report(outcome=Outcome.TEST_EVENT, reason="s3:TestEvent")
            self._finish(report, where)
            return report
        context = Context(deadline, receives)
        try:
            report = self._reconciler.handle(parsed, context)
        except Exception as error:  # anything unexpected: counted, logged and retried like an unfinished message
            report = Report(outcome=Outcome.RETRY, reason=type(error).__name__)
        if report.outcome is Outcome.RETRY:
            where["retry_in_seconds"] = self._push_back(message, receives)
        self._finish(report, where)
        return report

    def _push_back(self, message: Mapping[str, Any], receives: int) -> int | None:
        """Delay the message's next delivery by its growing backoff; None if SQS refused."""
        delay = retry_delay_seconds(receives)
        try:
            self._sqs.change_message_visibility(
                QueueUrl=queue_url_from_arn(str(message.get("eventSourceARN", ""))),
                ReceiptHandle=message["receiptHandle"],
                VisibilityTimeout=delay,
            )
        except (ClientError, BotoCoreError, ValueError, KeyError) as error:
            # The queue's own visibility timeout brings it back instead.
            self._logger.warning("reconciler could not delay the message: %s", type(error).__name__)
            return None
        return delay

    def _finish(self, report: Report, where: Mapping[str, Any]) -> None:
        fields = {"outcome": report.outcome.value, **where, **report.fields()}
        if report.outcome in (Outcome.RETRY, Outcome.UNUSABLE):
            self._logger.warning("reconciler message", extra=fields)
        else:
            self._logger.info("reconciler message", extra=fields)
        if self._metrics is not None:
            for name, value in METRICS.items():
                self._metrics.add_metric(name=name, unit="Count", value=value(report))
            self._metrics.flush_metrics()


def _receive_count(message: Mapping[str, Any]) -> int:
    attributes = message.get("attributes") or {}
    try:
        return max(1, int(attributes.get("ApproximateReceiveCount", "1")))
    except (TypeError, ValueError):
        return 1
