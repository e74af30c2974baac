"""A local event source mapping: reads a DynamoDB stream and invokes a handler the way Lambda's mapping does.

Every shard is followed (parents before children), records go out in stream order in batches of at most
`batch_size`, a failed batch is retried from where it failed (the whole batch when the handler raised, from the
reported sequence number when it reports partial failures), and a per-shard checkpoint, optionally kept on disk,
lets a restarted poller resume after the last fully processed record: at-least-once, like Lambda.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from localdev.events import json_round_trip, lambda_event, lambda_record

logger = logging.getLogger(__name__)

Invoke = Callable[[dict[str, Any]], Any]


@dataclass(slots=True)
class ShardState:
    """Where the mapping stands in one shard."""

    shard_id: str
    parent_id: str | None
    checkpoint: str | None = None
    """The last sequence number whose batch the handler finished."""
    iterator: str | None = None
    finished: bool = False
    """The shard is closed and every record of it was processed."""
    attempts: int = 0


@dataclass(slots=True)
class MappingStats:
    """What the mapping has done so far."""

    batches: int = 0
    records: int = 0
    failed_attempts: int = 0
    discarded_batches: list[tuple[str, str]] = field(default_factory=list)
    """(first, last) sequence numbers of batches given up after `max_attempts`, like an on-failure destination."""


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


class LocalEventSourceMapping:
    """Polls every shard of one stream and delivers Lambda events to `invoke`."""

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
        max_attempts: int = 10,
        checkpoints: CheckpointStore | None = None,
    ) -> None:
        self._streams = streams_client
        self.stream_arn = stream_arn
        self._invoke = invoke
        self.batch_size = batch_size
        self.starting_position = starting_position
        self.batching_window = maximum_batching_window_in_seconds
        self.report_batch_item_failures = report_batch_item_failures
        self.max_attempts = max_attempts
        self._checkpoints = checkpoints
        self._shards: dict[str, ShardState] = {}
        self._saved = checkpoints.load(stream_arn) if checkpoints else {}
        self.stats = MappingStats()

    @classmethod
    def for_stage(cls, streams_client: Any, stream_arn: str, invoke: Invoke, settings: Any, **options: Any) -> Self:
        """A mapping with the stage's batch size, starting position, batching window and failure reporting."""
        return cls(
            streams_client,
            stream_arn,
            invoke,
            batch_size=settings.batch_size,
            starting_position=settings.starting_position,
            maximum_batching_window_in_seconds=settings.maximum_batching_window_in_seconds,
            report_batch_item_failures=settings.report_batch_item_failures,
            **options,
        )

    def _refresh_shards(self) -> None:
        request: dict[str, Any] = {"StreamArn": self.stream_arn}
        while True:
            description = self._streams.describe_stream(**request)["StreamDescription"]
            for shard in description.get("Shards", []):
                if shard["ShardId"] not in self._shards:
                    self._shards[shard["ShardId"]] = ShardState(
                        shard_id=shard["ShardId"],
                        parent_id=shard.get("ParentShardId"),
                        checkpoint=self._saved.get(shard["ShardId"]),
                    )
            last = description.get("LastEvaluatedShardId")
            if not last:
                return
            request["ExclusiveStartShardId"] = last

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
                request = {"ShardIteratorType": self.starting_position}
            shard.iterator = self._streams.get_shard_iterator(
                StreamArn=self.stream_arn, ShardId=shard.shard_id, **request
            ).get("ShardIterator")
        return shard.iterator

    def _read_batch(self, shard: ShardState) -> tuple[list[dict[str, Any]], bool]:
        """Up to `batch_size` records, waiting up to the batching window to fill the batch; (records, closed)."""
        records: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.batching_window
        while True:
            iterator = self._iterator(shard)
            if iterator is None:
                return records, True
            response = self._streams.get_records(ShardIterator=iterator, Limit=self.batch_size - len(records))
            records.extend(response.get("Records", []))
            shard.iterator = response.get("NextShardIterator")
            if shard.iterator is None:
                return records, True
            if len(records) >= self.batch_size or time.monotonic() >= deadline:
                return records, False
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def _deliver(self, records: list[dict[str, Any]]) -> str | None:
        """Invoke the handler; the sequence number to retry from, or None when the whole batch is done."""
        # What crosses Lambda's boundary is JSON: the handler gets base64 text for binary values, never bytes.
        event = json_round_trip(lambda_event([lambda_record(record, self.stream_arn) for record in records]))
        try:
            response = self._invoke(event)
        except Exception as error:  # the function failed: Lambda retries the whole batch
            logger.warning("batch from %s failed: %s", _sequence(records[0]), type(error).__name__)
            return _sequence(records[0])
        failures = (response or {}).get("batchItemFailures") if self.report_batch_item_failures else None
        if failures:
            return min((failure["itemIdentifier"] for failure in failures), key=int)
        return None

    def _process_shard(self, shard: ShardState) -> int:
        records, closed = self._read_batch(shard)
        if records:
            self.stats.batches += 1
            retry_from = self._deliver(records)
            done = records if retry_from is None else [r for r in records if int(_sequence(r)) < int(retry_from)]
            if done:
                self._checkpoint(shard, _sequence(done[-1]))
            self.stats.records += len(done)
            if retry_from is None:
                shard.attempts = 0
            else:
                self._retry_or_discard(shard, retry_from, records[len(done) :])
        if closed and shard.iterator is None and shard.attempts == 0:
            shard.finished = True
        return len(records)

    def _retry_or_discard(self, shard: ShardState, retry_from: str, rest: list[dict[str, Any]]) -> None:
        self.stats.failed_attempts += 1
        shard.attempts += 1
        if shard.attempts < self.max_attempts:
            # Re-read from the failed record on the next poll, as Lambda does.
            shard.iterator = self._streams.get_shard_iterator(
                StreamArn=self.stream_arn,
                ShardId=shard.shard_id,
                ShardIteratorType="AT_SEQUENCE_NUMBER",
                SequenceNumber=retry_from,
            )["ShardIterator"]
            time.sleep(min(0.05 * 2**shard.attempts, 1.0))
            return
        logger.error(
            "giving up on records %s..%s after %d attempts", _sequence(rest[0]), _sequence(rest[-1]), shard.attempts
        )
        self.stats.discarded_batches.append((_sequence(rest[0]), _sequence(rest[-1])))
        self._checkpoint(shard, _sequence(rest[-1]))
        shard.attempts = 0

    def _checkpoint(self, shard: ShardState, sequence_number: str) -> None:
        shard.checkpoint = sequence_number
        if self._checkpoints is not None:
            self._checkpoints.save(
                self.stream_arn, {s.shard_id: s.checkpoint for s in self._shards.values() if s.checkpoint}
            )

    def poll(self) -> int:
        """One pass: one batch from every shard that is ready; the number of records read."""
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
