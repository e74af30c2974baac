"""The reconciler: what a discarded stream batch touched is brought under the invariant from the items' current state.

When a batch exhausts its retries, Lambda sends an invocation record to the mapping's on-failure destination (our
SQS queue). For a DynamoDB stream that record is only a pointer, never the records themselves (only an S3
destination also gets the batch). Its shape, as the AWS Lambda Developer Guide shows it ("Retain discarded records
for a DynamoDB event source in Lambda", https://docs.aws.amazon.com/lambda/latest/dg/services-dynamodb-errors.html,
"Example invocation record"; the same example in awsdocs/aws-lambda-developer-guide, doc_source/with-ddb.md):

    {"requestContext": {"requestId": ..., "functionArn": "arn:aws:lambda:...:function:NAME[:ALIAS]",
                        "condition": "RetryAttemptsExhausted", "approximateInvokeCount": 1},
     "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled" | null},
     "version": "1.0", "timestamp": "...",
     "DDBStreamBatchInfo": {"shardId": ..., "startSequenceNumber": ..., "endSequenceNumber": ...,
                            "approximateArrivalOfFirstRecord": ..., "approximateArrivalOfLastRecord": ...,
                            "batchSize": 1, "streamArn": "arn:aws:dynamodb:...:table/NAME/stream/LABEL"}}

Only `DDBStreamBatchInfo`'s shard, sequence numbers and stream ARN are needed; the rest is accepted as it comes
(any `condition`, a null `functionError`, an alias on the function ARN). The stream keeps records for 24 hours, so
the range is read back (GetShardIterator AT_SEQUENCE_NUMBER, GetRecords until past the end sequence number), each
record's key is taken, and each item is decided from a consistent read of its current state with the handler's own
planner and conditional writes: old images are never replayed. When the range is gone (trimmed, stream or shard
deleted), the keys can't be known: the table's backfill is started instead.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.budget import ANSWER_MARGIN_SECONDS
from chalicelib.deadline import Deadline
from chalicelib.dynamodb import OutcomeTally, WriteOutcome
from chalicelib.planner import Classify, decide
from chalicelib.records import ItemKey, MalformedRecord, item_key, table_name_from_stream_arn

RETRY_BASE_DELAY_SECONDS = 30
MAX_RETRY_DELAY_SECONDS = 12 * 3600
"""SQS's longest visibility timeout."""
GET_RECORDS_LIMIT = 1000
EMPTY_PAGE_PAUSE_SECONDS = 0.25
"""GetRecords may answer an empty page short of the records that follow ("it might take multiple calls to get to a
portion of the shard that contains stream records", DynamoDB Streams API reference): the pause before asking again
keeps within the shard's 5 reads per second, shared with the mapping's own poller."""
BACKFILL_SEGMENTS = 4
BACKFILL_MAX_CONTINUATIONS = 200
"""Each segment invocation re-invokes itself at most this many times (200 x 15 min: over two days per segment)."""
RANGE_GONE_ERRORS = frozenset({"TrimmedDataAccessException", "ResourceNotFoundException"})


class InvalidMessage(ValueError):
    """A queue message that is not Lambda's on-failure record for a DynamoDB stream batch (logged and deleted)."""


class Outcome(StrEnum):
    """How one message ended."""

    RECONCILED = "reconciled"
    RETRY = "retry"
    BACKFILL_STARTED = "backfill_started"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class DiscardedBatch:
    """The stream range a discarded batch covered, from its on-failure record."""

    stream_arn: str
    shard_id: str
    start_sequence_number: str
    end_sequence_number: str
    batch_size: int | None = None
    condition: str | None = None
    function_arn: str | None = None
    function_error: str | None = None

    @property
    def table_name(self) -> str:
        """The table whose stream this is."""
        return table_name_from_stream_arn(self.stream_arn)


def _sequence_number(info: Mapping[str, Any], name: str) -> str:
    value = info.get(name)
    if not isinstance(value, str) or not (value.isascii() and value.isdigit()):
        raise InvalidMessage(f"DDBStreamBatchInfo.{name} is missing or not a sequence number")
    return value


def _optional_str(raw: Any, name: str) -> str | None:
    value = raw.get(name) if isinstance(raw, Mapping) else None
    return value if isinstance(value, str) else None


def parse_message(body: str) -> DiscardedBatch:
    """The discarded batch an on-failure record names; InvalidMessage (naming a field, not a value) if it isn't one."""
    try:
        record = json.loads(body)
    except (TypeError, ValueError):
        raise InvalidMessage("the message body is not JSON") from None
    if not isinstance(record, Mapping):
        raise InvalidMessage("the message body is not a JSON object")
    info = record.get("DDBStreamBatchInfo")
    if not isinstance(info, Mapping):
        raise InvalidMessage("the message has no DDBStreamBatchInfo: not a DynamoDB stream on-failure record")
    shard_id, stream_arn = info.get("shardId"), info.get("streamArn")
    if not isinstance(shard_id, str) or not shard_id:
        raise InvalidMessage("DDBStreamBatchInfo.shardId is missing")
    if not isinstance(stream_arn, str):
        raise InvalidMessage("DDBStreamBatchInfo.streamArn is missing")
    try:
        table_name_from_stream_arn(stream_arn)
    except MalformedRecord:
        raise InvalidMessage("DDBStreamBatchInfo.streamArn is not a DynamoDB stream ARN") from None
    start = _sequence_number(info, "startSequenceNumber")
    end = _sequence_number(info, "endSequenceNumber")
    if int(end) < int(start):
        raise InvalidMessage("DDBStreamBatchInfo.endSequenceNumber is before startSequenceNumber")
    batch_size = info.get("batchSize")
    return DiscardedBatch(
        stream_arn=stream_arn,
        shard_id=shard_id,
        start_sequence_number=start,
        end_sequence_number=end,
        batch_size=batch_size if type(batch_size) is int else None,
        condition=_optional_str(record.get("requestContext"), "condition"),
        function_arn=_optional_str(record.get("requestContext"), "functionArn"),
        function_error=_optional_str(record.get("responseContext"), "functionError"),
    )


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


@dataclass(slots=True)
class Report:
    """What one message came to: counts and sequence numbers only, never a key or an attribute value."""

    outcome: Outcome = Outcome.RECONCILED
    records: int = 0
    items: int = 0
    fixed: int = 0
    already_correct: int = 0
    gone: int = 0
    superseded: int = 0
    failed: int = 0
    rejected: int = 0
    range_complete: bool = False
    reason: str | None = None
    """Why the outcome is what it is when it isn't plain (an error code, "deadline", "trimmed")."""
    backfill_segments: int = 0

    def fields(self) -> dict[str, Any]:
        """The log line's counts."""
        return {
            "records": self.records,
            "items": self.items,
            "fixed": self.fixed,
            "already_correct": self.already_correct,
            "gone": self.gone,
            "superseded": self.superseded,
            "failed": self.failed,
            "rejected": self.rejected,
            "range_complete": self.range_complete,
            "reason": self.reason,
            "backfill_segments": self.backfill_segments,
        }


class RangeGone(Exception):
    """The stream no longer holds the range (trimmed, or the stream or shard deleted); the reason is an error code."""


@dataclass(slots=True)
class RangeKeys:
    """The distinct item keys read from a range, and whether the whole range was read."""

    keys: dict[ItemKey, None] = field(default_factory=dict)
    records: int = 0
    complete: bool = False


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def read_range_keys(streams: Any, batch: DiscardedBatch, deadline: Deadline) -> RangeKeys:
    """The keys of the records from the start to the end sequence number; RangeGone if the stream lost them.

    Reads until the end sequence number's record (or one past it, or the closed shard's end); stops early (complete
    False) when the deadline passes, and the message is then retried.
    """
    start, end = int(batch.start_sequence_number), int(batch.end_sequence_number)
    table_name = batch.table_name
    found = RangeKeys()
    try:
        iterator = streams.get_shard_iterator(
            StreamArn=batch.stream_arn,
            ShardId=batch.shard_id,
            ShardIteratorType="AT_SEQUENCE_NUMBER",
            SequenceNumber=batch.start_sequence_number,
        )["ShardIterator"]
    except ClientError as error:
        if _error_code(error) in RANGE_GONE_ERRORS:
            raise RangeGone(_error_code(error)) from None
        raise
    first = True
    while iterator and not deadline.expired():
        try:
            page = streams.get_records(ShardIterator=iterator, Limit=GET_RECORDS_LIMIT)
        except ClientError as error:
            code = _error_code(error)
            if code in RANGE_GONE_ERRORS or (code == "ExpiredIteratorException" and first):
                raise RangeGone(code) from None
            raise
        records = page.get("Records", [])
        for record in records:
            sequence_number = int(record["dynamodb"]["SequenceNumber"])
            if first and sequence_number > start:
                raise RangeGone("trimmed")  # the range's first record is no longer in the shard
            first = False
            if sequence_number > end:
                found.complete = True
                return found
            found.records += 1
            with contextlib.suppress(MalformedRecord, KeyError):  # no key to fix: the handler counted it malformed
                found.keys[item_key(table_name, record["dynamodb"]["Keys"])] = None
            if sequence_number == end:
                # The end sequence number is the batch's last record: once it is read, the range is.
                found.complete = True
                return found
        iterator = page.get("NextShardIterator")
        if not records and iterator:
            time.sleep(EMPTY_PAGE_PAUSE_SECONDS)
    if not iterator:
        # The shard is closed and was read to its end.
        if first:
            raise RangeGone("trimmed")  # not even the range's first record is there any more
        found.complete = True
    return found


def tally(report: Report, outcomes: Sequence[WriteOutcome]) -> None:
    """Count the writes' outcomes into the report."""
    tallied = OutcomeTally.of(outcomes)
    report.fixed += tallied.applied
    report.superseded += tallied.superseded
    report.rejected += tallied.rejected
    report.failed += tallied.failed


class Reconciler:
    """Reads a discarded range back and brings its items under the invariant, or starts the table's backfill."""

    def __init__(
        self,
        streams: Any,
        gateway: Any,
        classify: Classify,
        start_backfill: Callable[[str, str], int],
    ) -> None:
        self._streams = streams
        self._gateway = gateway
        self._classify = classify
        self._start_backfill = start_backfill

    def reconcile(self, batch: DiscardedBatch, deadline: Deadline, run_id: str = "reconciler") -> Report:
        """Bring every item of the batch's range under the invariant from its current state, before the deadline."""
        report = Report()
        try:
            found = read_range_keys(self._streams, batch, deadline)
        except RangeGone as gone:
            return self._fall_back(batch, report, str(gone), run_id)
        except (ClientError, BotoCoreError) as error:
            report.outcome = Outcome.RETRY
            report.reason = _error_code(error) if isinstance(error, ClientError) else type(error).__name__
            return report
        report.records, report.items, report.range_complete = found.records, len(found.keys), found.complete
        keys = list(found.keys)
        read = self._gateway.read_states(keys, deadline)
        report.rejected += len(read.rejected)
        writes = []
        for key in keys:
            if key not in read.states:
                if key not in read.rejected:
                    report.failed += 1  # not read: out of time or still failing after retries
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
        tally(report, self._gateway.apply(writes, deadline))
        if report.failed or not found.complete:
            report.outcome = Outcome.RETRY
            report.reason = "failed" if report.failed else "deadline"
        return report

    def _fall_back(self, batch: DiscardedBatch, report: Report, why: str, run_id: str) -> Report:
        """The range is gone, so its keys are unknown: start the whole table's backfill (RETRY if it can't start)."""
        try:
            report.backfill_segments = self._start_backfill(batch.table_name, run_id)
        except (ClientError, BotoCoreError) as error:
            report.outcome = Outcome.RETRY
            report.reason = _error_code(error) if isinstance(error, ClientError) else type(error).__name__
            return report
        if report.backfill_segments:
            report.outcome, report.reason = Outcome.BACKFILL_STARTED, why
        else:
            report.outcome, report.reason = Outcome.RECONCILED, "table_gone"  # nothing left to fix
        return report


def backfill_payloads(
    table_name: str, key_names: Sequence[str], run_id: str, segments: int = BACKFILL_SEGMENTS
) -> list[dict[str, Any]]:
    """One self-continuing payload per segment of the table's backfill (see chalicelib.backfill.next_payload)."""
    from chalicelib.backfill import SegmentRequest

    return [
        SegmentRequest(table_name, tuple(key_names), segment, segments).payload(
            run_id=run_id, continue_until_done=True, continuation=0, max_continuations=BACKFILL_MAX_CONTINUATIONS
        )
        for segment in range(segments)
    ]


def key_names_of(dynamodb: Any, table_name: str) -> tuple[str, ...]:
    """The table's key attribute names, hash key first (DescribeTable)."""
    schema = dynamodb.describe_table(TableName=table_name)["Table"]["KeySchema"]
    return tuple(part["AttributeName"] for part in sorted(schema, key=lambda part: part["KeyType"] != "HASH"))


def invoke_backfill(
    lambda_client: Any,
    dynamodb: Any,
    function_name: str,
    table_name: str,
    run_id: str,
    segments: int = BACKFILL_SEGMENTS,
) -> int:
    """Start the table's backfill: one asynchronous invocation per segment, each continuing itself; the count (0: the
    table itself is gone)."""
    try:
        key_names = key_names_of(dynamodb, table_name)
    except ClientError as error:
        if _error_code(error) == "ResourceNotFoundException":
            return 0
        raise
    payloads = backfill_payloads(table_name, key_names, run_id, segments)
    for payload in payloads:
        lambda_client.invoke(FunctionName=function_name, InvocationType="Event", Payload=json.dumps(payload).encode())
    return len(payloads)


MARGIN_SECONDS = ANSWER_MARGIN_SECONDS + 3.0
"""Time kept back from the function's remaining time: to answer, and to change the message's visibility first."""
METRICS = {
    "ReconcilerMessages": lambda report: 1,
    "ReconcilerItemsFixed": lambda report: report.fixed,
    "ReconcilerFailed": lambda report: int(report.outcome is Outcome.RETRY),
    "ReconcilerBackfillFallbacks": lambda report: int(report.outcome is Outcome.BACKFILL_STARTED),
}


class ReconcileIncomplete(RuntimeError):
    """Raised after a message's visibility was pushed back: Lambda leaves it in the queue for a later try."""


class MessageHandler:
    """One on-failure queue message: parse, reconcile, log one line and the metrics; push back what isn't done."""

    def __init__(self, reconciler: Reconciler, sqs: Any, logger: Any, metrics: Any | None = None) -> None:
        self._reconciler = reconciler
        self._sqs = sqs
        self._logger = logger
        self._metrics = metrics

    def handle(self, message: Mapping[str, Any], remaining_ms: Callable[[], int]) -> Report:
        """Handle one SQS record (Lambda's shape); raise ReconcileIncomplete when it must come back later."""
        deadline = Deadline.from_remaining_ms(remaining_ms(), MARGIN_SECONDS)
        where: dict[str, Any] = {"message_id": message.get("messageId")}
        try:
            batch = parse_message(message.get("body"))
        except InvalidMessage as problem:
            # Deleted (the handler returns): retrying a body that isn't an on-failure record can never succeed.
            report = Report(outcome=Outcome.INVALID, reason=str(problem))
            self._finish(report, where)
            return report
        where |= {
            "shard_id": batch.shard_id,
            "start_sequence_number": batch.start_sequence_number,
            "end_sequence_number": batch.end_sequence_number,
            "condition": batch.condition,
        }
        try:
            report = self._reconciler.reconcile(batch, deadline, run_id=f"reconciler-{message.get('messageId', '')}")
        except Exception as error:  # anything unexpected: counted, logged and retried like an unfinished message
            report = Report(outcome=Outcome.RETRY, reason=type(error).__name__)
        if report.outcome is Outcome.RETRY:
            where["retry_in_seconds"] = self._push_back(message)
        self._finish(report, where)
        if report.outcome is Outcome.RETRY:
            raise ReconcileIncomplete(f"message not finished ({report.reason}); it comes back later")
        return report

    def _push_back(self, message: Mapping[str, Any]) -> int | None:
        """Delay the message's next delivery by its growing backoff; the delay, or None if SQS refused."""
        attributes = message.get("attributes") or {}
        try:
            receives = int(attributes.get("ApproximateReceiveCount", "1"))
        except (TypeError, ValueError):
            receives = 1
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
        if report.outcome in (Outcome.RETRY, Outcome.INVALID):
            self._logger.warning("reconciler message", extra=fields)
        else:
            self._logger.info("reconciler message", extra=fields)
        if self._metrics is not None:
            for name, value in METRICS.items():
                self._metrics.add_metric(name=name, unit="Count", value=value(report))
            self._metrics.flush_metrics()
