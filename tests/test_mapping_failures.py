"""The local mapping's failure handling as deployed: filter, bisection, retries, record age, the on-failure object
(invocation record plus `payload`) in a real S3 bucket (moto's server) under Lambda's key layout, and parallel lanes;
against DynamoDB Local."""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import datetime

import pytest
from chalice.local import LambdaContext

from chalicelib.config import Settings
from chalicelib.runtime import processor_for
from localdev.mapping import LocalEventSourceMapping, S3FailureDestination
from tests.reliability import scan
from tests.test_handler import put, set_attribute
from tools import failure_handling

NO_SLEEP = {"sleep": lambda seconds: None}


@pytest.fixture(scope="module")
def s3():
    from localdev.moto_server import MotoServer

    with MotoServer() as server:
        yield server.client("s3")


@pytest.fixture
def failure_bucket(s3, request):
    bucket = f"failures-{abs(hash(request.node.name)) % 10**10}"
    s3.create_bucket(Bucket=bucket)
    yield bucket
    for listed in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        s3.delete_object(Bucket=bucket, Key=listed["Key"])
    s3.delete_bucket(Bucket=bucket)


# Lambda's key for an on-failure object (recorded from real AWS: tests/on_failure/SOURCES.md, a03).
OBJECT_KEY = re.compile(
    r"aws/lambda/(?P<uuid>[0-9a-f-]{36})/(?P<shard>shardId-[^/]+)/(?P<day>\d{4}/\d{2}/\d{2})/"
    r"(?P<at>\d{4}-\d{2}-\d{2}T\d{2}\.\d{2}\.\d{2})-[0-9a-f-]{36}"
)


def received(s3, bucket):
    """Every on-failure object in the bucket, parsed, its key checked against Lambda's layout."""
    objects = []
    for listed in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        match = OBJECT_KEY.fullmatch(listed["Key"])
        assert match, listed["Key"]
        body = json.loads(s3.get_object(Bucket=bucket, Key=listed["Key"])["Body"].read())
        at = iso_z(body["timestamp"])
        assert (match["shard"], match["day"], match["at"]) == (
            body["DDBStreamBatchInfo"]["shardId"],
            at.strftime("%Y/%m/%d"),
            at.strftime("%Y-%m-%dT%H.%M.%S"),
        )
        objects.append(body)
    return objects


def record_of(message):
    """The invocation record without its payload."""
    return {name: value for name, value in message.items() if name != "payload"}


def keys_of(event):
    return [record["dynamodb"]["Keys"]["Id"]["S"] for record in event["Records"]]


def sequences_of(event):
    return [record["dynamodb"]["SequenceNumber"] for record in event["Records"]]


def only_shard(engine, stream_arn):
    [shard] = engine.streams_client().describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"]
    return shard["ShardId"]


def iso_z(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# The invocation record's fields, as in the developer guide's example for a DynamoDB stream
# (https://docs.aws.amazon.com/lambda/latest/dg/services-dynamodb-errors.html).
DOCUMENTED_SHAPE = {
    "requestContext": {"requestId", "functionArn", "condition", "approximateInvokeCount"},
    "responseContext": {"statusCode", "executedVersion", "functionError"},
    "version": None,
    "timestamp": None,
    "DDBStreamBatchInfo": {
        "shardId",
        "startSequenceNumber",
        "endSequenceNumber",
        "approximateArrivalOfFirstRecord",
        "approximateArrivalOfLastRecord",
        "batchSize",
        "streamArn",
    },
}


def assert_documented_shape(message, now=None):
    assert set(message) == set(DOCUMENTED_SHAPE) | {"payload"}
    sequences = [record["dynamodb"]["SequenceNumber"] for record in message["payload"]["Records"]]
    info = message["DDBStreamBatchInfo"]
    assert (sequences[0], sequences[-1], len(sequences)) == (
        info["startSequenceNumber"],
        info["endSequenceNumber"],
        info["batchSize"],
    )
    for part, fields in DOCUMENTED_SHAPE.items():
        if fields is not None:
            assert set(message[part]) == fields, part
    assert message["version"] == "1.0"
    assert message["responseContext"]["statusCode"] == 200
    assert message["responseContext"]["executedVersion"] == "$LATEST"
    assert abs(iso_z(message["timestamp"]).timestamp() - (now or time.time())) < 120
    assert isinstance(message["requestContext"]["requestId"], str) and message["requestContext"]["requestId"]
    assert isinstance(message["DDBStreamBatchInfo"]["batchSize"], int)


def test_a_record_that_always_fails_is_bisected_retried_and_discarded_to_the_bucket(
    engine, make_table, invoker, s3, failure_bucket
):
    table = make_table()
    for number in range(8):
        put(table, Id=f"k{number}", Email=f"user{number}@gmail.com")
    calls = []

    def poisoned(event):
        calls.append((keys_of(event), sequences_of(event)))
        if "k5" in keys_of(event):
            raise RuntimeError("k5 can't be processed")
        return invoker(event)

    mapping = LocalEventSourceMapping.for_stage(
        engine.streams_client(),
        table.stream_arn,
        poisoned,
        invoker.settings,
        on_failure=S3FailureDestination(s3, failure_bucket),
        maximum_retry_attempts=2,
        **NO_SLEEP,
    )
    stats = mapping.drain()

    with_k5 = [(keys, sequences) for keys, sequences in calls if "k5" in keys]
    # 8 -> 4 -> 2 -> 1 by bisection (no retry used), then the record alone: the first attempt and 2 retries.
    assert [len(keys) for keys, _ in with_k5] == [8, 4, 2, 1, 1, 1]
    k5_sequence = with_k5[-1][1][0]
    [message] = received(s3, failure_bucket)
    assert_documented_shape(message)
    info = message["DDBStreamBatchInfo"]
    assert (info["startSequenceNumber"], info["endSequenceNumber"], info["batchSize"]) == (k5_sequence,) * 2 + (1,)
    assert info["shardId"] == only_shard(engine, table.stream_arn)
    assert info["streamArn"] == table.stream_arn
    assert info["approximateArrivalOfFirstRecord"] == info["approximateArrivalOfLastRecord"]
    assert abs(iso_z(info["approximateArrivalOfFirstRecord"]).timestamp() - time.time()) < 120
    assert message["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert message["requestContext"]["functionArn"] == mapping.function_arn
    assert message["requestContext"]["approximateInvokeCount"] == len(with_k5)
    assert message["responseContext"]["functionError"] == "Unhandled"
    assert stats.discarded_batches == [(k5_sequence, k5_sequence)]
    assert stats.failure_records == [record_of(message)]
    assert keys_of(message["payload"]) == ["k5"]  # the event the function was last given
    # The rest of the batch was processed and checkpointed: every other item is right, k5 never got its flag.
    items = scan(table.client, table.name)
    assert all(items[f"k{n}"]["IsPersonalEmail"] is True for n in range(8) if n != 5)
    assert "IsPersonalEmail" not in items["k5"]
    assert mapping.poll() == 0, "the checkpoint is past every record"


def test_the_production_filter_drops_remove_without_invoking(engine, make_table):
    table = make_table()
    put(table, Id="a", Email="a@gmail.com")
    table.client.delete_item(TableName=table.name, Key={"Id": {"S": "a"}})
    put(table, Id="b", Email="b@example.com")
    events = []
    settings = Settings.from_environ({})
    mapping = LocalEventSourceMapping.for_stage(engine.streams_client(), table.stream_arn, events.append, settings)
    stats = mapping.drain()
    names = [record["eventName"] for event in events for record in event["Records"]]
    assert names == ["INSERT", "INSERT"]
    assert stats.filtered == 1 and stats.records == 2
    assert mapping.poll() == 0, "the REMOVE record is checkpointed: nothing is read again"


def test_records_older_than_the_maximum_age_are_discarded_without_invoking(engine, make_table, s3, failure_bucket):
    table = make_table()
    put(table, Id="old-1")
    put(table, Id="old-2")
    events = []
    an_hour_later = {"clock": lambda: time.time() + 3600}
    mapping = LocalEventSourceMapping(
        engine.streams_client(),
        table.stream_arn,
        events.append,
        maximum_record_age_in_seconds=60,
        on_failure=S3FailureDestination(s3, failure_bucket),
        **an_hour_later,
    )
    stats = mapping.drain()
    assert events == []
    [message] = received(s3, failure_bucket)
    assert_documented_shape(message, now=an_hour_later["clock"]())
    assert message["requestContext"]["condition"] == "RecordAgeExceeded"
    assert message["requestContext"]["approximateInvokeCount"] == 0
    assert message["responseContext"]["functionError"] is None
    assert message["DDBStreamBatchInfo"]["batchSize"] == 2
    info = message["DDBStreamBatchInfo"]
    assert stats.discarded_batches == [(info["startSequenceNumber"], info["endSequenceNumber"])]
    assert int(info["startSequenceNumber"]) < int(info["endSequenceNumber"])
    # The same records, read now, are young enough. (A record's ApproximateCreationDateTime may be rounded down, to the
    # minute in DynamoDB Local: a 60 s limit read a minute boundary later would discard them. 600 s leaves room.)
    young = []
    LocalEventSourceMapping(
        engine.streams_client(), table.stream_arn, young.append, maximum_record_age_in_seconds=600
    ).drain()
    assert [keys_of(event) for event in young] == [["old-1", "old-2"]]


class Reporter:
    """A handler that reports the record of one key as failed, every time."""

    def __init__(self, failing_key, identifier=None):
        self.failing_key = failing_key
        self.identifier = identifier
        self.events = []

    def __call__(self, event):
        self.events.append(event)
        for record in event["Records"]:
            if record["dynamodb"]["Keys"]["Id"]["S"] == self.failing_key:
                identifier = self.identifier if self.identifier is not None else record["dynamodb"]["SequenceNumber"]
                return {"batchItemFailures": [{"itemIdentifier": identifier}]}
        return {"batchItemFailures": []}


def test_retries_after_partial_failures_count_against_the_maximum(engine, make_table, s3, failure_bucket):
    table = make_table()
    for key in ("p0", "p1", "p2", "p3"):
        put(table, Id=key)
    handler = Reporter("p2")
    mapping = LocalEventSourceMapping(
        engine.streams_client(),
        table.stream_arn,
        handler,
        report_batch_item_failures=True,
        bisect_batch_on_function_error=True,
        maximum_retry_attempts=2,
        on_failure=S3FailureDestination(s3, failure_bucket),
        **NO_SLEEP,
    )
    stats = mapping.drain()
    # Checkpoint before the reported record, retry from it: the first attempt and two retries, then discarded.
    assert [keys_of(event) for event in handler.events] == [["p0", "p1", "p2", "p3"]] + [["p2", "p3"]] * 2
    [message] = received(s3, failure_bucket)
    assert_documented_shape(message)
    retried = sequences_of(handler.events[-1])
    info = message["DDBStreamBatchInfo"]
    assert (info["startSequenceNumber"], info["endSequenceNumber"], info["batchSize"]) == (retried[0], retried[1], 2)
    assert message["responseContext"]["functionError"] is None  # it reported, it did not raise
    assert message["requestContext"]["approximateInvokeCount"] == 3
    assert stats.records == 2 and stats.failed_attempts == 3


def test_reported_failures_are_ignored_when_the_mapping_does_not_ask_for_them(engine, make_table):
    table = make_table()
    for key in ("q0", "q1", "q2"):
        put(table, Id=key)
    handler = Reporter("q1")
    stats = LocalEventSourceMapping(engine.streams_client(), table.stream_arn, handler, **NO_SLEEP).drain()
    assert len(handler.events) == 1
    assert stats.records == 3 and stats.failed_attempts == 0 and stats.discarded_batches == []


@pytest.mark.parametrize("identifier", ["", "not-a-sequence-number"], ids=["empty", "unknown"])
def test_an_empty_or_unknown_item_identifier_fails_the_whole_batch(engine, make_table, identifier):
    table = make_table()
    for key in ("r0", "r1", "r2"):
        put(table, Id=key)
    handler = Reporter("r1", identifier=identifier)
    mapping = LocalEventSourceMapping(
        engine.streams_client(),
        table.stream_arn,
        handler,
        report_batch_item_failures=True,
        maximum_retry_attempts=1,
        **NO_SLEEP,
    )
    stats = mapping.drain()
    assert [keys_of(event) for event in handler.events] == [["r0", "r1", "r2"]] * 2
    assert stats.records == 0 and len(stats.discarded_batches) == 1


def test_for_stage_applies_the_deployed_settings_and_the_stage_factor(engine, make_table):
    table = make_table()
    settings = Settings.from_environ({"PARALLELIZATION_FACTOR": "3", "BATCH_SIZE": "7"})
    mapping = LocalEventSourceMapping.for_stage(engine.streams_client(), table.stream_arn, print, settings)
    assert mapping.parallelization_factor == 3 and mapping.batch_size == 7
    assert mapping.bisect is failure_handling.BISECT_BATCH_ON_FUNCTION_ERROR
    assert mapping.maximum_retry_attempts == failure_handling.MAXIMUM_RETRY_ATTEMPTS
    assert mapping.maximum_record_age == failure_handling.MAXIMUM_RECORD_AGE_IN_SECONDS
    assert mapping.report_batch_item_failures is True


def test_parallel_lanes_keep_each_items_records_in_order(engine, make_table, invoker):
    table = make_table()
    keys = [f"lane-{n}" for n in range(6)]
    final = {}
    for round_number in range(8):
        for n, key in enumerate(keys):
            # Alternate personal and company addresses, so a record applied out of order leaves a wrong flag.
            domain = "gmail.com" if (round_number + n) % 2 else "example.com"
            final[key] = f"{key}.{round_number}@{domain}"
            if round_number == 0:
                put(table, Id=key, Email=final[key])
            else:
                set_attribute(table, {"Id": key}, "Email", final[key])
    processor = processor_for(invoker.settings)
    seen: dict[str, list[int]] = {}
    running = {"now": 0, "most": 0}
    lock = threading.Lock()

    def handler(event):
        # The processor is called directly: the Chalice test client swaps os.environ per call and is not thread-safe.
        with lock:
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
            for record in event["Records"]:
                seen.setdefault(record["dynamodb"]["Keys"]["Id"]["S"], []).append(
                    int(record["dynamodb"]["SequenceNumber"])
                )
        try:
            time.sleep(0.02)
            return processor.handle(event, LambdaContext("sync_is_personal_email", 256, max_runtime_ms=60_000))
        finally:
            with lock:
                running["now"] -= 1

    mapping = LocalEventSourceMapping(
        engine.streams_client(), table.stream_arn, handler, batch_size=4, parallelization_factor=4, **NO_SLEEP
    )
    stats = mapping.drain(timeout=120)
    assert running["most"] > 1, "lanes ran one after another"
    for key in keys:
        assert seen[key] == sorted(seen[key]), f"{key}'s records were delivered out of order"
    items = scan(table.client, table.name)
    for key in keys:
        assert items[key]["Email"] == final[key]
        assert items[key]["IsPersonalEmail"] is final[key].endswith("@gmail.com"), key
    assert stats.discarded_batches == [] and mapping.poll() == 0
    [shard] = mapping._shards.values()
    assert int(shard.checkpoint) == max(max(sequences) for sequences in seen.values())


def test_the_checkpoint_waits_for_the_slowest_lane(engine, make_table):
    """A lane that is still retrying holds the shard's checkpoint before its record, though later lanes finished."""
    table = make_table()
    for n in range(8):
        put(table, Id=f"c{n}")
    mapping_box = {}
    checkpoints_seen_while_failing = []
    failures = {"left": 2}
    finished_elsewhere = []

    def handler(event):
        if "c0" in keys_of(event) and failures["left"]:
            failures["left"] -= 1
            time.sleep(0.2)  # the other lanes finish meanwhile
            [shard] = mapping_box["mapping"]._shards.values()
            checkpoints_seen_while_failing.append(shard.checkpoint)
            finished_elsewhere.append(mapping_box["mapping"].stats.records)
            raise RuntimeError("not yet")
        return None

    mapping = LocalEventSourceMapping(
        engine.streams_client(), table.stream_arn, handler, batch_size=8, parallelization_factor=4, **NO_SLEEP
    )
    mapping_box["mapping"] = mapping
    stats = mapping.drain()
    assert checkpoints_seen_while_failing and all(c is None for c in checkpoints_seen_while_failing)
    assert max(finished_elsewhere) > 0, "no other lane had finished: the test shows nothing"
    assert stats.records == 8 and stats.discarded_batches == []
