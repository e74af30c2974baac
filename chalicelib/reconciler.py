"""The reconciler: a discarded stream batch's items brought under the invariant from their current state.

Lambda writes each discarded batch to the stage's S3 bucket (its on-failure destination), with the whole invocation
event in `payload`; the bucket's ObjectCreated notification reaches the failure queue, which this consumes (one
message at a time). The object's records are decoded with the handler's own decoder, collapsed to keys, and each item
is decided from a consistent read of its current state with the handler's planner and conditional writes: old images
are never replayed, the stream is never read, the table never scanned.

Only when the batch's records can't be had (a pointer with no payload, an object gone or denied) does the table's
backfill start, as a last resort: one rate-limited, self-continuing chain per table at a time, under the lock in
chalicelib/backfill_lock.py (docs/design.md §6, docs/operations.md).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib import backfill_lock
from chalicelib.backfill_lock import LockDecision, LockStore, iso, lock_body, lock_key
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
from chalicelib.records import ItemKey, MalformedRecord, decode_record, table_name_from_stream_arn

RETRY_BASE_DELAY_SECONDS = 30
MAX_RETRY_DELAY_SECONDS = 12 * 3600
"""SQS's longest visibility timeout."""
LOGGED_RANGES = 20
WAIT_BASE_DELAY_SECONDS = 15 * 60
"""A message waiting for an older backfill run comes back after 15 min, doubling to 12 h: over the queue's 10
receives that is about 64 h, longer than a default run's lock (1 TB: ~58 h), so it is not dead-lettered first."""
ACCESS_DENIED_RECEIVES = 3
"""An object the reconciler may not read is asked for again this many times (a policy being deployed), then given
up for the backfill."""

BACKFILL_READ_UNITS_PER_SECOND = 1000
BACKFILL_WRITE_UNITS_PER_SECOND = 500
"""The last resort's rates: the backfill command's on-demand defaults (docs/backfill.md), small next to on-demand's
12,000 RCU / 4,000 WCU a table serves from the start; one chain never reads a partition faster than its 3,000 RCU."""
BACKFILL_MIN_CONTINUATIONS = 200
BACKFILL_INVOCATION_SECONDS = 900
"""The backfill function's timeout (its longest invocation): the unit of the lock's lifetime."""
BACKFILL_EFFECTIVE_SECONDS = 810
"""What an invocation scans for: its 900 s less the 30 s safety margin and a 60 s page (chalicelib/backfill.py)."""
BACKFILL_EVENT_AGE_SECONDS = 3600
"""How long a backfill invocation may wait in Lambda's asynchronous queue, retries included: its
MaximumEventAgeInSeconds on both deploy paths (tools/failure_handling.py sets it from here)."""
BYTES_PER_READ_UNIT = 8192
"""An eventually consistent Scan reads 8 KB per read unit (4 KB at half a unit)."""


class Outcome(StrEnum):
    """How one message ended, from the mildest to the gravest (a message of many objects ends as its gravest)."""

    RECONCILED = "reconciled"
    TEST_EVENT = "test_event"
    BACKFILL_COVERED = "backfill_covered"
    """A run that started after the batch was discarded holds the table's lock: it covers the batch."""
    BACKFILL_STARTED = "backfill_started"
    UNUSABLE = "unusable"
    BACKFILL_WAITING = "backfill_waiting"
    """A run that started before the discard holds the lock: the message comes back when it may have ended."""
    RETRY = "retry"


_SEVERITY = {outcome: rank for rank, outcome in enumerate(Outcome)}
KEPT = frozenset({Outcome.RETRY, Outcome.BACKFILL_WAITING})
"""Outcomes that leave the message in the queue, to come back after its delay."""


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
    backfill_segments: int = 0
    ranges: list[str] = field(default_factory=list)
    """Each discarded batch's `shard:start..end` (sequence numbers only), for the operator."""
    retry_in_seconds: int | None = None
    """The delay a waiting message asks for (otherwise the growing retry delay)."""

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
            "backfill_segments": self.backfill_segments,
            "ranges": self.ranges[:LOGGED_RANGES],
        }


def retry_delay_seconds(receive_count: int) -> int:
    """How long a message that could not be finished waits before its next try: doubling from 30 s, at most 12 h."""
    doublings = min(max(0, receive_count - 1), 16)  # 30 s * 2**16 is far past the cap already
    return min(RETRY_BASE_DELAY_SECONDS * 2**doublings, MAX_RETRY_DELAY_SECONDS)


def wait_delay_seconds(receive_count: int, until_expiry: timedelta) -> int:
    """How long a message waits for an older run: doubling from 15 min, at most 12 h, never past the lock's expiry."""
    doublings = min(max(0, receive_count - 1), 16)
    delay = min(WAIT_BASE_DELAY_SECONDS * 2**doublings, MAX_RETRY_DELAY_SECONDS)
    return max(1, min(delay, math.ceil(until_expiry.total_seconds()) + 1))


def queue_url_from_arn(queue_arn: str) -> str:
    """An SQS queue's URL from its ARN (arn:PARTITION:sqs:REGION:ACCOUNT:NAME), as SQS's API takes it."""
    parts = queue_arn.split(":")
    if len(parts) != 6 or parts[2] != "sqs":
        raise ValueError("not an SQS queue ARN")
    suffix = "amazonaws.com.cn" if parts[1] == "aws-cn" else "amazonaws.com"
    return f"https://sqs.{parts[3]}.{suffix}/{parts[4]}/{parts[5]}"


def _error_code(error: Exception) -> str:
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", "")) or type(error).__name__
    return type(error).__name__


def tally(report: Report, outcomes: Sequence[WriteOutcome]) -> None:
    """Count the writes' outcomes into the report."""
    tallied = OutcomeTally.of(outcomes)
    report.fixed += tallied.applied
    report.superseded += tallied.superseded
    report.rejected += tallied.rejected
    report.failed += tallied.failed


@dataclass(frozen=True, slots=True)
class BackfillPlan:
    """A table's last-resort backfill: its key names and how long its one chain may run."""

    table_name: str
    key_names: tuple[str, ...]
    max_continuations: int

    @property
    def lock_lifetime(self) -> timedelta:
        """How long the run may hold the table's lock."""
        return backfill_lock.lifetime(self.max_continuations, BACKFILL_INVOCATION_SECONDS, BACKFILL_EVENT_AGE_SECONDS)


def continuations_for(table_size_bytes: int, read_units_per_second: float = BACKFILL_READ_UNITS_PER_SECOND) -> int:
    """Continuations enough for one chain to scan the table at the read rate, with half again as headroom."""
    per_invocation = read_units_per_second * BYTES_PER_READ_UNIT * BACKFILL_EFFECTIVE_SECONDS
    needed = math.ceil(1.5 * max(0, table_size_bytes) / per_invocation)
    from chalicelib.backfill import MAX_CONTINUATIONS_LIMIT

    return min(MAX_CONTINUATIONS_LIMIT, max(BACKFILL_MIN_CONTINUATIONS, needed))


def plan_backfill(dynamodb: Any, table_name: str) -> BackfillPlan | None:
    """The table's backfill from DescribeTable (key names, size); None when the table itself is gone."""
    try:
        table = dynamodb.describe_table(TableName=table_name)["Table"]
    except ClientError as error:
        if _error_code(error) == "ResourceNotFoundException":
            return None
        raise
    schema = sorted(table["KeySchema"], key=lambda part: part["KeyType"] != "HASH")
    key_names = tuple(part["AttributeName"] for part in schema)
    return BackfillPlan(table_name, key_names, continuations_for(int(table.get("TableSizeBytes", 0))))


def backfill_payload(plan: BackfillPlan, run_id: str, lock: Mapping[str, Any]) -> dict[str, Any]:
    """The first payload of the run's one self-continuing, rate-limited chain; it carries the lock to release."""
    from chalicelib.backfill import SegmentRequest

    return SegmentRequest(plan.table_name, plan.key_names, 0, 1).payload(
        run_id=run_id,
        continue_until_done=True,
        continuation=0,
        max_continuations=plan.max_continuations,
        read_units_per_second=BACKFILL_READ_UNITS_PER_SECOND,
        write_units_per_second=BACKFILL_WRITE_UNITS_PER_SECOND,
        lock=dict(lock),
    )


class Backfill(Protocol):
    """How the reconciler plans and starts a table's backfill."""

    def plan(self, table_name: str) -> BackfillPlan | None:
        """The table's plan; None when the table is gone."""

    def start(self, payload: Mapping[str, Any]) -> None:
        """Start the chain with its first payload."""


class LambdaBackfill:
    """The backfill function, started asynchronously (InvocationType Event)."""

    def __init__(self, lambda_client: Any, dynamodb: Any, function_name: str | None) -> None:
        self._lambda = lambda_client
        self._dynamodb = dynamodb
        self._function_name = function_name

    def plan(self, table_name: str) -> BackfillPlan | None:
        """The table's plan from DescribeTable."""
        return plan_backfill(self._dynamodb, table_name)

    def start(self, payload: Mapping[str, Any]) -> None:
        """Invoke the backfill function once; it continues itself."""
        if not self._function_name:
            raise ValueError("BACKFILL_FUNCTION_NAME is not set: the reconciler can't start the backfill")
        self._lambda.invoke(
            FunctionName=self._function_name, InvocationType="Event", Payload=json.dumps(payload).encode()
        )


@dataclass(frozen=True, slots=True)
class Context:
    """One message's circumstances: its deadline, receive count, id and the time."""

    deadline: Deadline
    receives: int = 1
    run_id: str = "reconciler"
    now: Callable[[], datetime] = lambda: datetime.now(UTC)


class Reconciler:
    """Brings a discarded batch's items under the invariant from its S3 object, or starts the table's backfill."""

    def __init__(
        self,
        gateway: Any,
        classify: Classify,
        s3: Any,
        backfill: Backfill,
        stage_table: str | None = None,
        lock_bucket: str | None = None,
    ) -> None:
        self._gateway = gateway
        self._classify = classify
        self._s3 = s3
        self._backfill = backfill
        self._stage_table = stage_table
        """The stage's table (from its stream ARN): whose backfill an object that can't be read starts."""
        self._lock_bucket = lock_bucket
        """Where a record that came with no bucket (an SQS or SNS pointer) takes its lock."""

    def handle(self, message: Message, context: Context) -> Report:
        """Every object (or the record) of one message, into one report."""
        report = Report()
        if message.record is not None:
            self._record(message.record, self._lock_bucket, context, report)
        for ref in message.objects:
            report.objects += 1
            self._object(ref, context, report)
        return report

    def _object(self, ref: ObjectRef, context: Context, report: Report) -> None:
        try:
            body = self._s3.get_object(Bucket=ref.bucket, Key=ref.key)["Body"].read()
        except (ClientError, BotoCoreError) as error:
            code = _error_code(error)
            gone = code in ("NoSuchKey", "404")  # S3 reads its writes: a key the notification named was deleted
            denied = code in ("AccessDenied", "403") and context.receives >= ACCESS_DENIED_RECEIVES
            if not (gone or denied):
                report.escalate(Outcome.RETRY, code)
                return
            if self._stage_table is None:
                report.escalate(Outcome.RETRY, f"{code}: no STREAM_ARN, so no table to backfill")
                return
            self._fall_back(self._stage_table, ref.created_at, ref.bucket, f"object_{code}", context, report)
            return
        try:
            record = parse_object(body)
        except Unusable as problem:
            report.escalate(Outcome.UNUSABLE, str(problem))
            return
        self._record(record, ref.bucket, context, report)

    def _record(self, record: FailureRecord, bucket: str | None, context: Context, report: Report) -> None:
        report.ranges.append(f"{record.shard_id}:{record.start_sequence_number}..{record.end_sequence_number}")
        if record.payload_records is None:
            why = "payload_unusable" if record.payload_problem else "no_payload"
            self._fall_back(record.table_name, record.failed_at, bucket, why, context, report)
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

    def _fall_back(
        self,
        table_name: str,
        failed_at: datetime | None,
        bucket: str | None,
        why: str,
        context: Context,
        report: Report,
    ) -> None:
        """The batch's keys can't be known: the table's backfill, once per table at a time (the lock decides)."""
        if bucket is None:
            report.escalate(Outcome.RETRY, f"{why}: no bucket for the backfill lock (FAILURE_BUCKET)")
            return
        try:
            self._lock_and_start(LockStore(self._s3, bucket), table_name, failed_at, why, context, report)
        except (ClientError, BotoCoreError, ValueError) as error:
            report.escalate(Outcome.RETRY, f"{why}: {_error_code(error)}")

    def _lock_and_start(
        self,
        store: LockStore,
        table_name: str,
        failed_at: datetime | None,
        why: str,
        context: Context,
        report: Report,
    ) -> None:
        plan = self._backfill.plan(table_name)
        if plan is None:
            report.escalate(Outcome.RECONCILED, "table_gone")  # nothing left to fix
            return
        for _ in range(3):  # a lock released or taken over between our put and our read: look again
            now = context.now()
            held = store.read(table_name)
            decision = backfill_lock.decide(held, failed_at, now)
            if decision is LockDecision.COVERED:
                report.escalate(Outcome.BACKFILL_COVERED, f"{why}: run {held.run_id} started after the failure")
                return
            if decision is LockDecision.WAIT:
                report.escalate(Outcome.BACKFILL_WAITING, f"{why}: run {held.run_id} started before the failure")
                report.retry_in_seconds = wait_delay_seconds(context.receives, held.expires_at - now)
                return
            expires = now + plan.lock_lifetime
            etag = store.create(table_name, lock_body(context.run_id, now, expires), replacing=held)
            if etag is not None:
                self._start(store, plan, context.run_id, etag, expires, why, report)
                return
        report.escalate(Outcome.RETRY, f"{why}: the lock kept changing")

    def _start(
        self, store: LockStore, plan: BackfillPlan, run_id: str, etag: str, expires: datetime, why: str, report: Report
    ) -> None:
        lock = {"bucket": store.bucket, "key": lock_key(plan.table_name), "etag": etag, "expires_at": iso(expires)}
        try:
            self._backfill.start(backfill_payload(plan, run_id, lock))
        except (ClientError, BotoCoreError, ValueError) as error:
            # Not started: the lock is put back as a lapsed one (a put on its ETag, which the role may do), so the
            # next try takes it again and never reads it as a run that covers this batch.
            with contextlib.suppress(ClientError, BotoCoreError):
                store.lapse(plan.table_name, etag)
            report.escalate(Outcome.RETRY, f"{why}: {_error_code(error)}")
            return
        report.backfill_segments = 1
        report.escalate(Outcome.BACKFILL_STARTED, why)


MARGIN_SECONDS = ANSWER_MARGIN_SECONDS + 3.0
"""Time kept back from the function's remaining time: to answer, and to change the message's visibility first."""
METRICS = {
    "ReconcilerMessages": lambda report: 1,
    "ReconcilerItemsFixed": lambda report: report.fixed,
    "ReconcilerFailed": lambda report: int(report.outcome is Outcome.RETRY),
    "ReconcilerBackfillFallbacks": lambda report: int(report.outcome is Outcome.BACKFILL_STARTED),
    "ReconcilerBackfillCovered": lambda report: int(report.outcome is Outcome.BACKFILL_COVERED),
    "ReconcilerBackfillWaiting": lambda report: int(report.outcome is Outcome.BACKFILL_WAITING),
    "ReconcilerUnusable": lambda report: int(report.outcome is Outcome.UNUSABLE),
    "ReconcilerTestEvents": lambda report: int(report.outcome is Outcome.TEST_EVENT),
    "ReconcilerMalformedRecords": lambda report: report.malformed,
}


class ReconcileIncomplete(RuntimeError):
    """Raised after a message's visibility was pushed back: Lambda leaves it in the queue for a later try."""


class MessageHandler:
    """One failure-queue message: parse, reconcile, log one line and the metrics; push back what isn't done."""

    def __init__(self, reconciler: Reconciler, sqs: Any, logger: Any, metrics: Any | None = None) -> None:
        self._reconciler = reconciler
        self._sqs = sqs
        self._logger = logger
        self._metrics = metrics

    def handle(self, message: Mapping[str, Any], remaining_ms: Callable[[], int]) -> Report:
        """Handle one SQS record (Lambda's shape); raise ReconcileIncomplete when it must come back later."""
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
        context = Context(deadline, receives, run_id=f"reconciler-{message.get('messageId', '')}")
        try:
            report = self._reconciler.handle(parsed, context)
        except Exception as error:  # anything unexpected: counted, logged and retried like an unfinished message
            report = Report(outcome=Outcome.RETRY, reason=type(error).__name__)
        if report.outcome in KEPT:
            where["retry_in_seconds"] = self._push_back(message, receives, report.retry_in_seconds)
        self._finish(report, where)
        if report.outcome in KEPT:
            raise ReconcileIncomplete(f"message not finished ({report.outcome.value}); it comes back later")
        return report

    def _push_back(self, message: Mapping[str, Any], receives: int, asked: int | None) -> int | None:
        """Delay the message's next delivery (the asked delay, or its growing backoff); None if SQS refused."""
        delay = asked if asked is not None else retry_delay_seconds(receives)
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


def stage_table_name(stream_arn: str | None) -> str | None:
    """The stage's table from its STREAM_ARN, if it has a real one."""
    try:
        return table_name_from_stream_arn(stream_arn) if stream_arn else None
    except MalformedRecord:
        return None
