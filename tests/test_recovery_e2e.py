"""Recovery end to end, as `make run` runs it: writes whose handling keeps failing are bisected, retried and
discarded by the local mapping (the deployed settings, fewer retries) to the on-failure bucket on moto's S3, whose
ObjectCreated notifications reach the failure queue on moto's SQS; the reconciler, fed by the local SQS event source,
brings every item of each object's payload under the invariant from its current state, with the stream gone; a
pointer with no payload records an urgent pass, which the sweep on its local schedule makes."""

from __future__ import annotations

import json
import threading
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from chalicelib import dynamodb, runtime
from localdev.invoker import ChaliceInvoker
from localdev.mapping import LocalEventSourceMapping, MappingStats, serialized
from localdev.reconciler_runner import LocalReconciler, reported_failures, start_reconciler
from localdev.run import FailureQueue, start_failure_queue
from tests.faults import fail_statements
from tests.projects import APP_NAME, STAGE
from tests.reliability import FLAG, Model, Op, perform, scan, violations
from tests.test_reconciler import AllCalls, s3_notification
from tools.failure_handling import DEPLOYED_FUNCTION

# What the clients write: every kind of value the handler must get right. The failing keys each need a write.
ITEMS = [
    Op("put", "user-0", "ann@gmail.com"),
    Op("put", "user-1", "bob@example.com"),
    Op("put", "user-2", "cy@outlook.com", flag=False),  # a wrong flag put by hand
    Op("put", "user-3", "dee@hotmail.com"),
    Op("put", "user-4", "eve@example.com", flag=True),
    Op("put", "user-5", None),
    Op("put", "user-6", "fay@yahoo.com"),
    Op("put", "user-7", 7, flag=True),
    Op("put", "user-8", "gus@example.com"),
    Op("put", "user-9", "hal@gmail.com", flag=False),
    Op("put", "user-10", "ivy@gmail.com"),
    Op("put", "user-11", "jo@example.com", flag=True),
]
KEYS = [op.key for op in ITEMS]
FAILING = {"user-3", "user-4", "user-9"}


class Crash(RuntimeError):
    """What the handler's DynamoDB client raises for a request naming a failing key (the function fails)."""


def names_failing_key(statements) -> bool:
    return any({"S": key} in statement["Parameters"] for statement in statements for key in FAILING)


@dataclass
class Local:
    """`make run`'s pieces on the test session's DynamoDB Local: the queues on moto, the reconciler runner."""

    failures: FailureQueue
    reconciler: LocalReconciler
    lock: threading.Lock

    def queued(self, url: str | None = None) -> int:
        attributes = self.failures.sqs.get_queue_attributes(
            QueueUrl=url or self.failures.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return sum(int(value) for value in attributes.values())


@pytest.fixture
def local(engine, project, monkeypatch):
    lock = threading.Lock()
    with ExitStack() as cleanup:
        failures = start_failure_queue(cleanup, APP_NAME, STAGE)
        # moto's state outlives its server in this process: each test starts with empty queues and an empty bucket
        # (S3's test event, sent when the notification was set, included), and leaves none.
        for url in (failures.queue_url, failures.dead_letter_url):
            failures.sqs.purge_queue(QueueUrl=url)
            cleanup.callback(failures.sqs.delete_queue, QueueUrl=url)
        empty_bucket(failures)
        cleanup.callback(empty_bucket, failures)
        reconciler = start_reconciler(
            failures.sqs, failures.queue_url, failures.endpoint, bucket=failures.bucket, stage=STAGE, quiet=False,
            lock=lock, project_dir=project,
        )  # fmt: skip
        cleanup.callback(reconciler.close)
        for name, value in reconciler.environment.items():
            monkeypatch.setenv(name, value)
        # A fresh execution environment: the functions' clients are built from these endpoints, not an earlier test's.
        runtime.reconciler_for.cache_clear()
        runtime.sweep_for.cache_clear()
        cleanup.callback(runtime.reconciler_for.cache_clear)
        cleanup.callback(runtime.sweep_for.cache_clear)
        yield Local(failures, reconciler, lock)


def empty_bucket(failures: FailureQueue) -> None:
    for listed in failures.s3.list_objects_v2(Bucket=failures.bucket).get("Contents", []):
        failures.s3.delete_object(Bucket=failures.bucket, Key=listed["Key"])


def objects(failures: FailureQueue, prefix: str = "aws/lambda/") -> list[dict]:
    listed = failures.s3.list_objects_v2(Bucket=failures.bucket, Prefix=prefix).get("Contents", [])
    return [json.loads(failures.s3.get_object(Bucket=failures.bucket, Key=o["Key"])["Body"].read()) for o in listed]


@pytest.fixture
def deployed_invoker(engine, project):
    """The stream handler as deployed: it reports partial batch failures."""
    handler = ChaliceInvoker(STAGE, project_dir=project, deployed_overrides=DEPLOYED_FUNCTION)
    yield handler
    handler.close()


def fail_writes(client, mode: str):
    """Make the handler's writes of the failing keys fail on every try: each statement answered with an error
    (the handler reports the records: retried from there), or the request raising (the function fails: bisected)."""
    if mode == "reported":
        return fail_statements(
            client, lambda statement: "InternalServerError" if names_failing_key([statement]) else None
        )

    def crash(params, **_):
        if names_failing_key(params["Statements"]):
            raise Crash("the function fails on this item")

    client.meta.events.register("before-parameter-build.dynamodb.BatchExecuteStatement", crash)
    return lambda: client.meta.events.unregister("before-parameter-build.dynamodb.BatchExecuteStatement", crash)


def discard_the_failing_items(
    engine, table, local, invoker, mode
) -> tuple[Model, LocalEventSourceMapping, MappingStats]:
    """Write the items, run the mapping as deployed (2 retries) while the failing keys' writes fail; the model."""
    model = Model()
    for op in ITEMS:
        perform(table.client, table.name, op, model)
    remove = fail_writes(runtime.processor_for(invoker.settings).gateway.client, mode)
    try:
        mapping = LocalEventSourceMapping.for_stage(
            engine.streams_client(),
            table.stream_arn,
            serialized(invoker, local.lock),
            invoker.settings,
            on_failure=local.failures.destination(),
            maximum_retry_attempts=2,
            sleep=lambda seconds: None,
        )
        stats = mapping.drain()
    finally:
        remove()
    return model, mapping, stats


def sequence_numbers(engine, table) -> dict[str, str]:
    """Each key's INSERT record's sequence number."""
    streams = engine.streams_client()
    [shard] = streams.describe_stream(StreamArn=table.stream_arn)["StreamDescription"]["Shards"]
    iterator = streams.get_shard_iterator(
        StreamArn=table.stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    records = streams.get_records(ShardIterator=iterator)["Records"]
    return {
        r["dynamodb"]["Keys"]["Id"]["S"]: r["dynamodb"]["SequenceNumber"] for r in records if r["eventName"] == "INSERT"
    }


def emf_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if '"ReconcilerMessages"' in line]


@pytest.mark.parametrize("mode", ["reported", "raised"])
def test_a_discarded_batch_is_reconciled_through_the_queue(
    engine, make_table, local, deployed_invoker, monkeypatch, capsys, mode
):
    monkeypatch.setattr(dynamodb, "STATEMENT_BACKOFF_SECONDS", 0.001)
    table = make_table()
    model, mapping, stats = discard_the_failing_items(engine, table, local, deployed_invoker, mode)

    sequence = sequence_numbers(engine, table)
    ranges = [(int(first), int(last)) for first, last in stats.discarded_batches]
    if mode == "raised":
        # Bisected down to each failing record alone, retried twice, then discarded on its own.
        assert stats.bisections >= 3
        assert sorted(ranges) == sorted((int(sequence[k]),) * 2 for k in FAILING)
    else:
        # Reported: retried from the lowest failed record to the batch's end, twice, then that range discarded.
        assert ranges == [(int(sequence["user-3"]), int(sequence["user-11"]))] and stats.bisections == 0
    assert stats.failed_attempts >= 3
    # The bucket holds one object per record the mapping sent, each with its records; the queue one notification each.
    written = objects(local.failures)
    records = sorted(({k: v for k, v in o.items() if k != "payload"} for o in written), key=json.dumps)
    assert records == sorted(stats.failure_records, key=json.dumps)
    assert all(len(o["payload"]["Records"]) == o["DDBStreamBatchInfo"]["batchSize"] for o in written)
    assert local.queued() == len(written)
    assert {r["requestContext"]["condition"] for r in stats.failure_records} == {"RetryAttemptsExhausted"}
    wrong = violations(scan(table.client, table.name), model, KEYS)
    assert sorted(problem.split(":")[0] for problem in wrong) == sorted(FAILING), wrong

    # The fault is over. Meanwhile a client deleted one of the wrong items: the reconciler must not bring it back.
    perform(table.client, table.name, Op("delete", "user-9"), model)
    mapping.drain()  # its REMOVE is filtered out
    # The stream's records are gone for the reconciler (in AWS: trimmed after 24 hours); it never reads them anyway.
    table.client.update_table(TableName=table.name, StreamSpecification={"StreamEnabled": False})
    capsys.readouterr()
    calls = AllCalls(monkeypatch)
    runtime.reconciler_for.cache_clear()

    runner_stats = local.reconciler.runner.drain(timeout=30)

    items = scan(table.client, table.name)
    assert violations(items, model, KEYS) == []
    assert set(items) == {key for key, item in model.items.items() if item is not None}, "an item created or lost"
    assert runner_stats.received == runner_stats.deleted == len(stats.failure_records) and runner_stats.failed == 0
    assert set(runner_stats.outcomes) == {"reconciled"}
    assert local.queued() == 0 and local.queued(local.failures.dead_letter_url) == 0
    lines = [line for line in local.reconciler.collector.lines if line["message"] == "reconciler message"]
    assert sum(line["fixed"] for line in lines) == 2 and sum(line["gone"] for line in lines) == 1
    assert all(line["kind"] == "s3_objects" for line in lines)
    # From the objects alone: no Scan, no Invoke, no stream read.
    assert not {"dynamodb.Scan", "lambda.Invoke", "streams.dynamodb.GetRecords"} & set(calls.calls), calls.calls
    assert not [call for call in calls.calls if call.startswith("streams.")]
    assert calls.calls.count("s3.GetObject") == len(lines)
    emf = emf_lines(capsys.readouterr().out)
    assert len(emf) == len(lines) and sum(m["ReconcilerItemsFixed"][0] for m in emf) == 2
    assert local.reconciler.schedule.runs == 0


def test_a_pointer_with_no_payload_is_finished_at_once_and_the_scheduled_sweep_fixes_the_table(
    engine, make_table, local, deployed_invoker, monkeypatch, capsys
):
    monkeypatch.setattr(dynamodb, "STATEMENT_BACKOFF_SECONDS", 0.001)
    table = make_table()
    model, _, stats = discard_the_failing_items(engine, table, local, deployed_invoker, "reported")
    assert len(stats.failure_records) == 1
    # The object is lost (in AWS: deleted, or an SQS destination's pointer): the pointer alone, no payload.
    sqs, url = local.failures.sqs, local.failures.queue_url
    while notified := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        for message in notified:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    empty_bucket(local.failures)
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(stats.failure_records[0]))
    capsys.readouterr()

    runner_stats = local.reconciler.runner.drain(timeout=45)

    assert runner_stats.outcomes == ["sweep_requested"] and runner_stats.deleted == 1
    line = next(line for line in local.reconciler.collector.lines if line["message"] == "reconciler message")
    assert line["reason"] == "no_payload"
    assert violations(scan(table.client, table.name), model, KEYS) != []  # nothing fixed yet: the sweep does it
    emf = emf_lines(capsys.readouterr().out)
    [emf] = emf
    assert emf["ReconcilerSweepRequests"] == [1.0] and emf["ReconcilerFailed"] == [0.0]
    # The sweep's table is the one followed, as `make run` binds it.
    local.reconciler.schedule.functions.override(STREAM_ARN=table.stream_arn)
    for _ in range(5):
        result = local.reconciler.schedule.run_once()
        assert not isinstance(result, Exception), result
        if result["passes_finished"]:
            break
    assert result["mode"] == "urgent" and local.reconciler.schedule.errors == 0
    items = scan(table.client, table.name)
    assert violations(items, model, KEYS) == []
    assert set(items) == {key for key, item in model.items.items() if item is not None}
    assert local.queued() == 0


@pytest.mark.parametrize("reporting", [True, False], ids=["reported", "raised"])
def test_a_message_whose_handling_fails_comes_back_after_the_delay_and_ends_in_the_dead_letter_queue(
    engine, make_table, local, monkeypatch, reporting
):
    """Lambda's SQS semantics: not deleted when the function names it in its partial batch response (as deployed:
    no function error) or, where the event source doesn't report item failures, raises; back once the visibility
    the reconciler set ends, with a growing receive count; after maxReceiveCount receives, SQS moves it to the
    dead-letter queue."""
    from chalicelib import reconciler

    delays = []
    monkeypatch.setattr(reconciler, "retry_delay_seconds", lambda receives: delays.append(receives) or 1)
    sqs, url = local.failures.sqs, local.failures.queue_url
    sqs.set_queue_attributes(
        QueueUrl=url,
        Attributes={
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dead_letter_arn(local), "maxReceiveCount": 3}  # the stage's is 10
            )
        },
    )
    table = make_table()
    perform(table.client, table.name, Op("put", "user-0", "ann@gmail.com"), Model())
    # An object in a bucket that doesn't exist (NoSuchBucket): the reconciler can't read it, and retries.
    body = json.loads(s3_notification("no-such-bucket", "aws/lambda/x/shardId-1/2026/12/04/2026-12-04T09.00.00-1"))
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))
    runner = local.reconciler.runner
    if not reporting:
        runner.report_batch_item_failures = False
        local.reconciler.schedule.functions.override(REPORT_BATCH_ITEM_FAILURES="false")

    runner.drain(timeout=30)

    kept = (runner.stats.reported, runner.stats.failed)
    assert runner.stats.received == 3 and kept == ((3, 0) if reporting else (0, 3)) and runner.stats.deleted == 0
    assert delays == [1, 2, 3], "the reconciler saw the receive count grow"
    assert set(runner.stats.outcomes) == {"retry"}
    [moved] = sqs.receive_message(QueueUrl=local.failures.dead_letter_url)["Messages"]
    assert json.loads(moved["Body"]) == body
    assert FLAG not in scan(table.client, table.name)["user-0"]
    line = local.reconciler.collector.last("reconciler message")
    assert (line["outcome"], line["reason"], line["retry_in_seconds"]) == ("retry", "NoSuchBucket", 1)
    assert line["message_id"] == moved["MessageId"]


def dead_letter_arn(local: Local) -> str:
    return local.failures.sqs.get_queue_attributes(
        QueueUrl=local.failures.dead_letter_url, AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]


@pytest.mark.parametrize(
    ("response", "kept"),
    [
        # Lambda developer guide, "Handling errors for an SQS event source in Lambda": a complete success.
        (None, set()),
        ({}, set()),
        ({"batchItemFailures": []}, set()),
        ({"batchItemFailures": None}, set()),
        # Only the named message comes back.
        ({"batchItemFailures": [{"itemIdentifier": "b"}]}, {"b"}),
        # A complete failure: an empty, null or unknown identifier, a bad key name, a response of the wrong shape.
        ({"batchItemFailures": [{"itemIdentifier": ""}]}, {"a", "b"}),
        ({"batchItemFailures": [{"itemIdentifier": None}]}, {"a", "b"}),
        ({"batchItemFailures": [{"itemIdentifier": "c"}]}, {"a", "b"}),
        ({"batchItemFailures": [{"foo": "b"}]}, {"a", "b"}),
        ({"batchItemFailures": "b"}, {"a", "b"}),
        ({"batchItemFailures": {}}, {"a", "b"}),
        (["b"], {"a", "b"}),
        ("b", {"a", "b"}),
    ],
)
def test_the_local_event_source_reads_a_partial_batch_response_as_lambda_does(response, kept):
    assert reported_failures(response, ["a", "b"]) == kept
