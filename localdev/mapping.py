"""A local event source mapping: reads a DynamoDB stream and invokes a handler the way Lambda's mapping does.

Every shard is followed (parents before children), records go out in stream order in batches of at most
`batch_size`, and a per-shard checkpoint, optionally kept on disk, lets a restarted poller resume after the last
finished record: at-least-once, like Lambda. `LocalEventSourceMapping.for_stage` applies the deployed mapping's
settings, read from tools/failure_handling.py (the one definition both deploy paths use):

- StartingPosition: where a new mapping begins in the shards open when it is created; a mapping with checkpoints
  resumes after them, and a shard it finds later (a child after a split) holds only records written since, so it is
  read from its first record. No record is skipped on a shard's way in: see `_read` for the DynamoDB Local numbering
  that once lost a table's first record after a restart.

- FilterCriteria (https://docs.aws.amazon.com/lambda/latest/dg/invocation-eventfiltering.html): up to five
  filters, ORed; a record none of them matches is never sent to the function and is checkpointed like a processed
  one. Lambda matches the pattern against the record as the function would receive it (`eventName`,
  `dynamodb.NewImage.<name>.S`, ...), with EventBridge pattern syntax, evaluated here by moto's EventBridge matcher.
- ReportBatchItemFailures (https://docs.aws.amazon.com/lambda/latest/dg/services-ddb-batchfailurereporting.html):
  the lowest reported sequence number is the checkpoint, everything from it is retried; an empty or null list is a
  full success; an empty, null or unknown itemIdentifier makes the whole batch a failure; without the response type
  on the mapping, Lambda ignores what the function returns and the batch counts as a success.
- BisectBatchOnFunctionError (same page, "Bisecting a batch", and
  https://docs.aws.amazon.com/lambda/latest/dg/with-ddb.html "Error handling": splitting a batch does not count
  towards the retry quota): a failed invocation splits the batch in two halves, each retried on its own; with a
  partial-failure report the split is at the returned sequence number (only the rest is retried).
- MaximumRetryAttempts and MaximumRecordAgeInSeconds
  (https://docs.aws.amazon.com/lambda/latest/dg/services-ddb-params.html; -1 is infinite): a batch still failing
  after the retries, or records older than the age, are discarded and described to the on-failure destination in
  the invocation record of https://docs.aws.amazon.com/lambda/latest/dg/services-dynamodb-errors.html
  (`DDBStreamBatchInfo`). The stage's destination is an S3 bucket: the object (`S3FailureDestination`) is that
  record plus `payload`, the event the function was given, under Lambda's key layout (recorded from real AWS:
  tests/on_failure/a03).
- ParallelizationFactor (with-ddb.html, "Polling and batching streams": up to 10 batches per shard at once, and
  "Lambda still ensures in-order processing at the partition-key level"): up to N lanes per shard; records with the
  same key (all its key attributes: a stream record doesn't say which is the partition key, so an item's records,
  not a whole partition's, share a lane) always go to the same lane, in order, and the shard's checkpoint only moves
  past records every lane has finished.

Where Lambda re-reads the stream to retry, this mapping retries from the records it holds: the same records.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from chalicelib.on_failure import OBJECT_PREFIX
from localdev.events import json_round_trip, lambda_event, lambda_record

logger = logging.getLogger(__name__)

Invoke = Callable[[dict[str, Any]], Any]
OnFailure = Callable[[dict[str, Any], dict[str, Any]], None]
"""An on-failure destination: given the invocation record and the event (`{"Records": [...]}`) of the discarded
records."""

RETRY_ATTEMPTS_EXHAUSTED = "RetryAttemptsExhausted"
# The developer guide's example shows only RetryAttemptsExhausted; RecordAgeExceeded is the value observed in the
# records Lambda sends for age discards (and the one LocalStack emulates).
RECORD_AGE_EXCEEDED = "RecordAgeExceeded"
LOCAL_FUNCTION_ARN = "arn:aws:lambda:us-east-1:000000000000:function:email-checker-local-sync_is_personal_email"
MAX_FILTERS = 5
GET_RECORDS_LIMIT = 1000  # DynamoDB Streams' GetRecords returns at most 1,000 records per call


@dataclass(slots=True)
class ShardState:
    """Where the mapping stands in one shard."""

    shard_id: str
    parent_id: str | None
    checkpoint: str | None = None
    """The last sequence number up to which every record is finished (processed, filtered out or discarded)."""
    iterator: str | None = None
    finished: bool = False
    """The shard is closed and every record of it was processed."""
    start: str = "TRIM_HORIZON"
    """Where to begin without a checkpoint: LATEST only for a shard that already held records when the mapping was
    first started (the stage's starting position); every other shard from its first record, since all it holds was
    written after the mapping started."""
    anchored: bool = False
    """The iterator chain stands after a record of the shard (read, checkpointed, or LATEST behind one): only then is
    it kept between reads."""


@dataclass(slots=True)
class MappingStats:
    """What the mapping has done so far."""

    batches: int = 0
    """Invocations of the function."""
    records: int = 0
    """Records the function finished (a batch's success, or the part before a reported failure)."""
    failed_attempts: int = 0
    """Invocations that failed (raised, or reported failures)."""
    bisections: int = 0
    filtered: int = 0
    """Records no filter matched: checkpointed without invoking."""
    discarded_batches: list[tuple[str, str]] = field(default_factory=list)
    """(first, last) sequence numbers of every discarded range, also sent to the on-failure destination."""
    failure_records: list[dict[str, Any]] = field(default_factory=list)
    """The invocation records describing the discarded ranges, as sent to the on-failure destination."""


class CheckpointStore:
    """Per-shard checkpoints in a JSON file, written atomically after every finished batch."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, stream_arn: str) -> dict[str, str]:
        """The stream's checkpoints by shard id."""
        if not self.path.exists():
            return {}
        return json.loads(self.path.read_text()).get(stream_arn, {})

    def save(self, stream_arn: str, checkpoints: dict[str, str]) -> None:
        """Replace the stream's checkpoints."""
        document = json.loads(self.path.read_text()) if self.path.exists() else {}
        document[stream_arn] = checkpoints
        partial = self.path.with_suffix(".tmp")
        partial.write_text(json.dumps(document, indent=2))
        os.replace(partial, self.path)


class RecordFilter:
    """A mapping's FilterCriteria, evaluated with moto's EventBridge pattern matcher (the syntax Lambda uses)."""

    def __init__(self, filter_criteria: dict[str, Any] | None) -> None:
        from moto.events.models import EventPattern, EventPatternParser

        patterns = [rule["Pattern"] for rule in (filter_criteria or {}).get("Filters", [])]
        self.patterns = patterns
        """The filters' patterns, as the mapping was given them (JSON text)."""
        if len(patterns) > MAX_FILTERS:
            raise ValueError(f"a mapping takes at most {MAX_FILTERS} filters, not {len(patterns)}")
        # The parser rejects what Lambda would reject (invalid JSON, a value that is neither an object nor an array).
        self._patterns = [EventPattern(raw, EventPatternParser(raw).parse()) for raw in patterns]

    def matches(self, record: dict[str, Any]) -> bool:
        """Whether the record (in Lambda's JSON shape) goes to the function: no filters, or any filter matches."""
        return not self._patterns or any(pattern.matches_event(record) for pattern in self._patterns)


def on_failure_object_key(mapping_uuid: str, shard_id: str, at: datetime, suffix: str) -> str:
    """Where Lambda puts a discarded batch's object: `aws/lambda/<ESM-UUID>/<shardId>/YYYY/MM/DD/<%Y-%m-%dT%H.%M.%S>`
    then a random UUID (the layout real AWS was seen to use: tests/on_failure/SOURCES.md, a03)."""
    return f"{OBJECT_PREFIX}{mapping_uuid}/{shard_id}/{at:%Y/%m/%d}/{at:%Y-%m-%dT%H.%M.%S}-{suffix}"


class S3FailureDestination:
    """An S3 on-failure destination: one object per discarded batch, the invocation record plus `payload` (the
    event), as Lambda writes it; the bucket's notification takes it on to the reconciler."""

    def __init__(self, s3_client: Any, bucket: str, mapping_uuid: str | None = None) -> None:
        self._s3 = s3_client
        self.bucket = bucket
        self.mapping_uuid = mapping_uuid or str(uuid.uuid4())
        self.keys: list[str] = []

    def __call__(self, failure_record: dict[str, Any], event: dict[str, Any]) -> None:
        """Write one object."""
        at = datetime.fromisoformat(failure_record["timestamp"].replace("Z", "+00:00"))
        shard_id = failure_record["DDBStreamBatchInfo"]["shardId"]
        key = on_failure_object_key(self.mapping_uuid, shard_id, at, str(uuid.uuid4()))
        body = json.dumps({**failure_record, "payload": event}).encode()
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=body)
        self.keys.append(key)


def serialized(invoke: Invoke, lock: threading.Lock | None = None) -> Invoke:
    """`invoke` behind a lock: for an invoker that must not run twice at once (the Chalice test client patches
    os.environ around each call, so two concurrent calls would undo each other's environment); pass the lock other
    test-client callers hold (the local reconciler's) to keep them apart too."""
    lock = lock or threading.Lock()

    def call(event: dict[str, Any]) -> Any:
        with lock:
            return invoke(event)

    return call


def mapping_options(properties: dict[str, Any]) -> dict[str, Any]:
    """The constructor's options for mapping properties named as in the Lambda API (CreateEventSourceMapping)."""
    names = {
        "BisectBatchOnFunctionError": "bisect_batch_on_function_error",
        "MaximumRetryAttempts": "maximum_retry_attempts",
        "MaximumRecordAgeInSeconds": "maximum_record_age_in_seconds",
        "FilterCriteria": "filter_criteria",
        "ParallelizationFactor": "parallelization_factor",
        "BatchSize": "batch_size",
        "StartingPosition": "starting_position",
        "MaximumBatchingWindowInSeconds": "maximum_batching_window_in_seconds",
    }
    options = {option: properties[name] for name, option in names.items() if name in properties}
    if "FunctionResponseTypes" in properties:
        options["report_batch_item_failures"] = "ReportBatchItemFailures" in properties["FunctionResponseTypes"]
    return options


def _iso_seconds(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_millis(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def invocation_record(
    records: list[dict[str, Any]],
    *,
    shard_id: str,
    stream_arn: str,
    function_arn: str,
    condition: str,
    function_error: str | None,
    invoke_count: int,
    now: float,
) -> dict[str, Any]:
    """What Lambda sends to an on-failure destination for discarded stream records (services-dynamodb-errors.html)."""
    created = [record["dynamodb"].get("ApproximateCreationDateTime") for record in (records[0], records[-1])]
    return {
        "requestContext": {
            "requestId": str(uuid.uuid4()),
            "functionArn": function_arn,
            "condition": condition,
            "approximateInvokeCount": invoke_count,
        },
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": function_error},
        "version": "1.0",
        "timestamp": _iso_millis(now),
        "DDBStreamBatchInfo": {
            "shardId": shard_id,
            "startSequenceNumber": _sequence(records[0]),
            "endSequenceNumber": _sequence(records[-1]),
            "approximateArrivalOfFirstRecord": _iso_seconds(created[0]),
            "approximateArrivalOfLastRecord": _iso_seconds(created[1]),
            "batchSize": len(records),
            "streamArn": stream_arn,
        },
    }


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One invocation's result: success, a partial failure from `retry_from`, or a whole-batch failure."""

    retry_from: int | None = None
    """Index of the first record to retry; None when the batch succeeded."""
    whole: bool = False
    """The function raised, or its report named no record of the batch: the whole batch failed."""
    function_error: str | None = None


class _Progress:
    """One read's records in stream order; the shard's checkpoint moves past a record once it and every record
    before it are finished, whichever lane finished them."""

    def __init__(self, sequence_numbers: list[str], on_advance: Callable[[str], None]) -> None:
        self._order = sequence_numbers
        self._done: set[str] = set()
        self._next = 0
        self._on_advance = on_advance
        self._lock = threading.Lock()

    def finish(self, sequence_numbers: Iterable[str]) -> None:
        """Mark records finished; checkpoint when the contiguous finished prefix grows."""
        with self._lock:
            self._done.update(sequence_numbers)
            start = self._next
            while self._next < len(self._order) and self._order[self._next] in self._done:
                self._next += 1
            if self._next > start:
                self._on_advance(self._order[self._next - 1])


class LocalEventSourceMapping:
    """Polls every shard of one stream and delivers Lambda events to `invoke`.

    The plain constructor keeps Lambda's defaults (no filter, no bisect, no age limit) except the retries: 9, so a
    record that always fails is given up after 10 attempts instead of blocking its shard for a day. `for_stage`
    applies the deployed mapping's settings.
    """

    def __init__(
        self,
        streams_client: Any,
        stream_arn: str,
        invoke: Invoke,
        *,
        batch_size: int = 100,
        starting_position: str = "TRIM_HORIZON",
        maximum_batching_window_in_seconds: float = 0,
        report_batch_item_failures: bool = False,
        bisect_batch_on_function_error: bool = False,
        maximum_retry_attempts: int = 9,
        maximum_record_age_in_seconds: int = -1,
        filter_criteria: dict[str, Any] | None = None,
        parallelization_factor: int = 1,
        on_failure: OnFailure | None = None,
        function_arn: str = LOCAL_FUNCTION_ARN,
        checkpoints: CheckpointStore | None = None,
        max_attempts: int | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 1 <= parallelization_factor <= 10:
            raise ValueError(f"parallelization_factor must be from 1 to 10, not {parallelization_factor}")
        self._streams = streams_client
        self.stream_arn = stream_arn
        self._invoke = invoke
        self.batch_size = batch_size
        self.starting_position = starting_position
        self.batching_window = maximum_batching_window_in_seconds
        self.report_batch_item_failures = report_batch_item_failures
        self.bisect = bisect_batch_on_function_error
        # `max_attempts` (attempts in all, the first included) is the former name; Lambda counts retries.
        self.maximum_retry_attempts = max_attempts - 1 if max_attempts is not None else maximum_retry_attempts
        self.maximum_record_age = maximum_record_age_in_seconds
        self.filter = RecordFilter(filter_criteria)
        self.parallelization_factor = parallelization_factor
        self._on_failure = on_failure
        self.function_arn = function_arn
        self._checkpoints = checkpoints
        self._clock = clock
        self._sleep = sleep
        self._shards: dict[str, ShardState] = {}
        self._saved = checkpoints.load(stream_arn) if checkpoints else {}
        # The starting position applies once, to the shards of a mapping with no checkpoint yet (as Lambda's applies
        # when the mapping is created); a restart with checkpoints is the same mapping resuming.
        self._first_refresh = not self._saved
        self._stats_lock = threading.Lock()
        self.stats = MappingStats()

    @classmethod
    def for_stage(
        cls,
        streams_client: Any,
        stream_arn: str,
        invoke: Invoke,
        settings: Any,
        *,
        on_failure: OnFailure | None = None,
        **options: Any,
    ) -> Self:
        """A mapping as the stage deploys it: its batch size, starting position and batching window, and the failure
        handling, filter and parallelization factor both deploy paths apply (tools/failure_handling.py)."""
        from tools.failure_handling import mapping_failure_handling

        deployed = mapping_options(mapping_failure_handling(None, settings.parallelization_factor))
        return cls(
            streams_client,
            stream_arn,
            invoke,
            **{
                "batch_size": settings.batch_size,
                "starting_position": settings.starting_position,
                "maximum_batching_window_in_seconds": settings.maximum_batching_window_in_seconds,
                **deployed,
                "on_failure": on_failure,
                **options,
            },
        )

    def _refresh_shards(self) -> None:
        request: dict[str, Any] = {"StreamArn": self.stream_arn}
        while True:
            description = self._streams.describe_stream(**request)["StreamDescription"]
            for shard in description.get("Shards", []):
                if shard["ShardId"] not in self._shards:
                    checkpoint = self._saved.get(shard["ShardId"])
                    state = ShardState(
                        shard_id=shard["ShardId"],
                        parent_id=shard.get("ParentShardId"),
                        checkpoint=checkpoint,
                        anchored=checkpoint is not None,
                    )
                    if self._first_refresh and self.starting_position == "LATEST" and self._holds_records(state):
                        state.start = "LATEST"
                    self._shards[state.shard_id] = state
            last = description.get("LastEvaluatedShardId")
            if not last:
                break
            request["ExclusiveStartShardId"] = last
        self._first_refresh = False

    def _holds_records(self, shard: ShardState) -> bool:
        """Whether the shard has a record now. On a shard with none, DynamoDB Local may number the first record below
        where LATEST stands (see `_read`); reading such a shard from its start loses nothing, as all it will hold is
        new."""
        iterator = self._streams.get_shard_iterator(
            StreamArn=self.stream_arn, ShardId=shard.shard_id, ShardIteratorType="TRIM_HORIZON"
        ).get("ShardIterator")
        return bool(iterator and self._streams.get_records(ShardIterator=iterator, Limit=1).get("Records"))

    def _ready(self, shard: ShardState) -> bool:
        if shard.finished:
            return False
        parent = self._shards.get(shard.parent_id) if shard.parent_id else None
        # A parent that is no longer listed has been trimmed away: nothing of it is left to process first.
        return parent is None or parent.finished

    def _iterator(self, shard: ShardState) -> str | None:
        if shard.iterator is None:
            if shard.checkpoint:
                request = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": shard.checkpoint}
            else:
                request = {"ShardIteratorType": shard.start}
                shard.anchored = shard.anchored or shard.start == "LATEST"
            shard.iterator = self._streams.get_shard_iterator(
                StreamArn=self.stream_arn, ShardId=shard.shard_id, **request
            ).get("ShardIterator")
        return shard.iterator

    def _read(self, shard: ShardState, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """Up to `limit` records, waiting up to the batching window to fill them; (records, closed)."""
        records: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.batching_window
        while True:
            iterator = self._iterator(shard)
            if iterator is None:
                return records, True
            wanted = min(GET_RECORDS_LIMIT, limit - len(records))
            response = self._streams.get_records(ShardIterator=iterator, Limit=wanted)
            records.extend(response.get("Records", []))
            shard.iterator = response.get("NextShardIterator")
            if shard.iterator is None:
                return records, True
            shard.anchored = shard.anchored or bool(records)
            if not shard.anchored:
                # DynamoDB Local places an iterator on a shard without records at the shard's StartingSequenceNumber,
                # and after a restart it numbers new records from its last stored one + 1, which can be below that:
                # the shard's first record would then sit behind this chain for good (and a checkpoint taken after
                # later records would pass it). Until the shard yields a record, every read starts afresh.
                shard.iterator = None
            if len(records) >= limit or time.monotonic() >= deadline:
                return records, False
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def _lane(self, record: dict[str, Any]) -> int:
        # A stable hash of the key, so an item's records always share a lane (Python's hash() varies by process).
        key = json.dumps(record["dynamodb"].get("Keys", {}), sort_keys=True).encode()
        return zlib.crc32(key) % self.parallelization_factor

    def _process_shard(self, shard: ShardState) -> int:
        # Each lane gets up to a batch per read: with a factor of N, N batches of one shard can run at once.
        raw, closed = self._read(shard, self.batch_size * self.parallelization_factor)
        if raw:
            records = [lambda_record(record, self.stream_arn) for record in raw]
            progress = _Progress([_sequence(r) for r in records], lambda last: self._checkpoint(shard, last))
            matched = [self.filter.matches(record) for record in records]
            kept = [record for record, match in zip(records, matched, strict=True) if match]
            with self._stats_lock:
                self.stats.filtered += len(records) - len(kept)
            # Filtered-out records are finished as they are read: checkpointed, never sent to the function.
            progress.finish(_sequence(r) for r, match in zip(records, matched, strict=True) if not match)
            lanes: dict[int, list[dict[str, Any]]] = {}
            for record in kept:
                lanes.setdefault(self._lane(record), []).append(record)
            work = [(shard, lane, progress) for lane in lanes.values()]
            if len(work) <= 1:
                for item in work:
                    self._run_lane(*item)
            else:
                with ThreadPoolExecutor(max_workers=len(work), thread_name_prefix="lane") as pool:
                    for future in [pool.submit(self._run_lane, *item) for item in work]:
                        future.result()
        if closed and shard.iterator is None:
            shard.finished = True
        return len(raw)

    def _run_lane(self, shard: ShardState, records: list[dict[str, Any]], progress: _Progress) -> None:
        for start in range(0, len(records), self.batch_size):
            self._handle(shard, records[start : start + self.batch_size], progress, retries=0, invocations=0)

    def _handle(
        self, shard: ShardState, batch: list[dict[str, Any]], progress: _Progress, retries: int, invocations: int
    ) -> None:
        """Deliver `batch` until every record of it succeeded or was discarded: retries, bisection, age limit."""
        function_error: str | None = None
        while batch:
            batch = self._discard_expired(shard, batch, progress, function_error, invocations)
            if not batch:
                return
            outcome = self._deliver(batch)
            invocations += 1
            if outcome.retry_from is None:
                self._succeeded(batch, progress)
                return
            with self._stats_lock:
                self.stats.failed_attempts += 1
            function_error = outcome.function_error
            if outcome.whole and self.bisect and len(batch) > 1:
                # Splitting does not count towards the retry quota: each half starts where this batch stood.
                with self._stats_lock:
                    self.stats.bisections += 1
                half = len(batch) // 2
                self._handle(shard, batch[:half], progress, retries, invocations)
                self._handle(shard, batch[half:], progress, retries, invocations)
                return
            # A partial failure: the records before the reported one are finished, the rest is retried.
            self._succeeded(batch[: outcome.retry_from], progress)
            batch = batch[outcome.retry_from :]
            if 0 <= self.maximum_retry_attempts <= retries:
                self._discard(shard, batch, progress, RETRY_ATTEMPTS_EXHAUSTED, function_error, invocations)
                return
            retries += 1
            self._sleep(min(0.05 * 2**retries, 1.0))

    def _deliver(self, batch: list[dict[str, Any]]) -> _Outcome:
        """Invoke the function once with the batch and classify what came back."""
        with self._stats_lock:
            self.stats.batches += 1
        # A fresh copy per invocation, through JSON as across Lambda's boundary: the handler may alter its event.
        event = json_round_trip(lambda_event(batch))
        try:
            response = self._invoke(event)
        except Exception as error:  # the function failed: the whole batch is retried (or bisected)
            logger.warning("batch from %s failed: %s", _sequence(batch[0]), type(error).__name__)
            return _Outcome(retry_from=0, whole=True, function_error="Unhandled")
        if not self.report_batch_item_failures or not isinstance(response, dict):
            return _Outcome()
        failures = response.get("batchItemFailures")
        if not failures:
            return _Outcome()
        if not isinstance(failures, list):
            return _Outcome(retry_from=0, whole=True)
        positions = {_sequence(record): index for index, record in enumerate(batch)}
        reported = [f.get("itemIdentifier") if isinstance(f, dict) else None for f in failures]
        if any(identifier not in positions for identifier in reported):
            logger.warning("batch from %s reported an unknown item identifier: a failure", _sequence(batch[0]))
            return _Outcome(retry_from=0, whole=True)
        return _Outcome(retry_from=min(positions[identifier] for identifier in reported))

    def _succeeded(self, records: list[dict[str, Any]], progress: _Progress) -> None:
        if records:
            with self._stats_lock:
                self.stats.records += len(records)
            progress.finish(_sequence(record) for record in records)

    def _discard_expired(
        self,
        shard: ShardState,
        batch: list[dict[str, Any]],
        progress: _Progress,
        function_error: str | None,
        invocations: int,
    ) -> list[dict[str, Any]]:
        if self.maximum_record_age < 0:
            return batch
        oldest_allowed = self._clock() - self.maximum_record_age
        created = [record["dynamodb"].get("ApproximateCreationDateTime", oldest_allowed) for record in batch]
        expired = [record for record, at in zip(batch, created, strict=True) if at < oldest_allowed]
        if expired:
            self._discard(shard, expired, progress, RECORD_AGE_EXCEEDED, function_error, invocations)
            return [record for record, at in zip(batch, created, strict=True) if at >= oldest_allowed]
        return batch

    def _discard(
        self,
        shard: ShardState,
        records: list[dict[str, Any]],
        progress: _Progress,
        condition: str,
        function_error: str | None,
        invocations: int,
    ) -> None:
        first, last = _sequence(records[0]), _sequence(records[-1])
        logger.error("discarding records %s..%s (%d): %s", first, last, len(records), condition)
        failure = invocation_record(
            records,
            shard_id=shard.shard_id,
            stream_arn=self.stream_arn,
            function_arn=self.function_arn,
            condition=condition,
            function_error=function_error,
            invoke_count=invocations,
            now=self._clock(),
        )
        if self._on_failure is not None:
            self._on_failure(failure, json_round_trip(lambda_event(records)))
        with self._stats_lock:
            self.stats.discarded_batches.append((first, last))
            self.stats.failure_records.append(failure)
        progress.finish(_sequence(record) for record in records)

    def _checkpoint(self, shard: ShardState, sequence_number: str) -> None:
        shard.checkpoint = sequence_number
        if self._checkpoints is not None:
            self._checkpoints.save(
                self.stream_arn, {s.shard_id: s.checkpoint for s in self._shards.values() if s.checkpoint}
            )

    def poll(self) -> int:
        """One pass: one read from every shard that is ready, delivered to the end; the number of records read."""
        self._refresh_shards()
        return sum(self._process_shard(shard) for shard in list(self._shards.values()) if self._ready(shard))

    def drain(self, quiet_polls: int = 2, timeout: float = 60.0) -> MappingStats:
        """Poll until `quiet_polls` passes in a row read nothing (the stream is caught up)."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < quiet_polls:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the stream was not caught up within {timeout:.0f} s")
            quiet = quiet + 1 if self.poll() == 0 else 0
        return self.stats

    def run(self, stop: threading.Event, idle_seconds: float = 0.25) -> MappingStats:
        """Poll until `stop` is set, resting `idle_seconds` after a pass that read nothing."""
        while not stop.is_set():
            if self.poll() == 0:
                stop.wait(idle_seconds)
        return self.stats


def _sequence(record: dict[str, Any]) -> str:
    return record["dynamodb"]["SequenceNumber"]
