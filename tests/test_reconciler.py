"""The reconciler: a discarded batch's on-failure record, its range read back from DynamoDB Local's stream, and its
items brought under the invariant from their current state; the backfill when the range is gone; retries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import boto3
import pytest
from aws_lambda_powertools import Logger
from botocore.stub import ANY, Stubber

from chalicelib.config import Settings
from chalicelib.deadline import Deadline
from chalicelib.dynamodb import DynamoDBGateway
from chalicelib.reconciler import (
    BACKFILL_SEGMENTS,
    InvalidMessage,
    MessageHandler,
    Outcome,
    ReconcileIncomplete,
    Reconciler,
    invoke_backfill,
    parse_message,
    queue_url_from_arn,
    retry_delay_seconds,
)
from chalicelib.records import DEFAULT_ATTRIBUTES
from chalicelib.runtime import SERVICE, classifier_for, metrics_for
from tests.faults import fail_statements

FUNCTION = "reconcile_discarded_batches"
QUEUE_ARN = "arn:aws:sqs:eu-west-1:123456789012:email-checker-dev-stream-failures"
# What DynamoDB Streams' API accepts (botocore validates a stubbed call's parameters too).
SHARD, START, END = "shardId-00000001764046800000-0a1b2c3d", "4" + "0" * 20, "4" + "0" * 19 + "9"
STREAM_ARN = "arn:aws:dynamodb:eu-west-1:123456789012:table/Users/stream/2026-01-01T00:00:00.000"


def on_failure_record(stream_arn: str, shard_id: str, start: str, end: str, **overrides: Any) -> dict[str, Any]:
    """Lambda's on-failure invocation record for a DynamoDB stream batch, as the developer guide shows it."""
    record = {
        "requestContext": {
            "requestId": "316aa6d0-8154-xmpl-9af7-85d5f4a6bc81",
            "functionArn": "arn:aws:lambda:eu-west-1:123456789012:function:email-checker-dev-sync_is_personal_email",
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": 1,
        },
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "version": "1.0",
        "timestamp": "2026-11-25T05:00:00.000Z",
        "DDBStreamBatchInfo": {
            "shardId": shard_id,
            "startSequenceNumber": start,
            "endSequenceNumber": end,
            "approximateArrivalOfFirstRecord": "2026-11-25T04:59:00Z",
            "approximateArrivalOfLastRecord": "2026-11-25T04:59:01Z",
            "batchSize": 3,
            "streamArn": stream_arn,
        },
    }
    for path, value in overrides.items():
        section, name = path.split(".")
        record[section][name] = value
    return record


def sqs_record(body: str, receive_count: int = 1) -> dict[str, Any]:
    """One SQS record as Lambda hands it to a function."""
    return {
        "messageId": "0f8b3c2e",
        "receiptHandle": "the-receipt-handle",
        "body": body,
        "attributes": {"ApproximateReceiveCount": str(receive_count), "SentTimestamp": "1764046800000"},
        "messageAttributes": {},
        "eventSource": "aws:sqs",
        "eventSourceARN": QUEUE_ARN,
        "awsRegion": "eu-west-1",
    }


# --- the message, pure ---


def test_the_developer_guide_record_parses_with_an_alias_arn_and_a_null_function_error():
    body = on_failure_record(
        STREAM_ARN,
        "shardId-00000001-abc",
        "100",
        "300",
        **{
            "requestContext.functionArn": "arn:aws:lambda:eu-west-1:123456789012:function:handler:live",
            "requestContext.condition": "RecordAgeExceeded",
            "responseContext.functionError": None,
        },
    )
    batch = parse_message(json.dumps(body))
    assert (batch.shard_id, batch.start_sequence_number, batch.end_sequence_number) == (
        "shardId-00000001-abc",
        "100",
        "300",
    )
    assert (batch.stream_arn, batch.table_name, batch.batch_size) == (STREAM_ARN, "Users", 3)
    assert batch.function_arn.endswith(":handler:live") and batch.condition == "RecordAgeExceeded"
    assert batch.function_error is None


def test_the_documented_example_record_parses():
    """The invocation record in the Lambda developer guide (services-dynamodb-errors), as printed there."""
    documented = """{
        "requestContext": {"requestId": "316aa6d0-8154-xmpl-9af7-85d5f4a6bc81",
            "functionArn": "arn:aws:lambda:us-east-2:123456789012:function:myfunction",
            "condition": "RetryAttemptsExhausted", "approximateInvokeCount": 1},
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "version": "1.0", "timestamp": "2019-11-14T00:13:49.717Z",
        "DDBStreamBatchInfo": {"shardId": "shardId-00000001573689847184-864758bb",
            "startSequenceNumber": "800000000003126276362", "endSequenceNumber": "800000000003126276362",
            "approximateArrivalOfFirstRecord": "2019-11-14T00:13:19Z",
            "approximateArrivalOfLastRecord": "2019-11-14T00:13:19Z", "batchSize": 1,
            "streamArn": "arn:aws:dynamodb:us-east-2:123456789012:table/mytable/stream/2019-11-14T00:04:06.388"}
    }"""
    batch = parse_message(documented)
    assert (batch.table_name, batch.shard_id) == ("mytable", "shardId-00000001573689847184-864758bb")
    assert batch.start_sequence_number == batch.end_sequence_number == "800000000003126276362"
    assert (batch.condition, batch.function_error, batch.batch_size) == ("RetryAttemptsExhausted", "Unhandled", 1)


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({"requestContext": {}}), "DDBStreamBatchInfo"),
        (json.dumps(on_failure_record(STREAM_ARN, "", "1", "2")), "shardId"),
        (json.dumps(on_failure_record(STREAM_ARN, "s", "12a", "20")), "startSequenceNumber"),
        (json.dumps(on_failure_record(STREAM_ARN, "s", "30", "20")), "before startSequenceNumber"),
        (json.dumps(on_failure_record(STREAM_ARN, "s", "1", "2²")), "endSequenceNumber"),
        (json.dumps(on_failure_record("arn:aws:sqs:eu-west-1:1:q", "s", "1", "2")), "streamArn"),
    ],
)
def test_a_body_that_is_not_an_on_failure_record_is_invalid_and_named(body, names):
    with pytest.raises(InvalidMessage, match=names):
        parse_message(body)


def test_the_retry_delay_doubles_from_thirty_seconds_up_to_twelve_hours():
    assert [retry_delay_seconds(n) for n in range(1, 7)] == [30, 60, 120, 240, 480, 960]
    assert retry_delay_seconds(11) == 30_720 and retry_delay_seconds(12) == retry_delay_seconds(500) == 43_200
    assert retry_delay_seconds(0) == 30  # a missing or odd count is the first receive


def test_the_queue_url_comes_from_the_queue_arn():
    assert queue_url_from_arn(QUEUE_ARN) == (
        "https://sqs.eu-west-1.amazonaws.com/123456789012/email-checker-dev-stream-failures"
    )
    with pytest.raises(ValueError):
        queue_url_from_arn(STREAM_ARN)


# --- against DynamoDB Local ---


def shard_of(engine, table) -> str:
    [shard] = engine.streams_client().describe_stream(StreamArn=table.stream_arn)["StreamDescription"]["Shards"]
    return shard["ShardId"]


def put(table, **attributes):
    table.client.put_item(TableName=table.name, Item=boto3.dynamodb.types.TypeSerializer().serialize(attributes)["M"])


def get(table, **key):
    serializer = boto3.dynamodb.types.TypeSerializer()
    item = table.client.get_item(
        TableName=table.name, Key={k: serializer.serialize(v) for k, v in key.items()}, ConsistentRead=True
    ).get("Item")
    return None if item is None else boto3.dynamodb.types.TypeDeserializer().deserialize({"M": item})


def set_flag(table, value, **key):
    """Write the flag straight to the item, as if the batch that would have corrected it had been discarded."""
    serializer = boto3.dynamodb.types.TypeSerializer()
    table.client.update_item(
        TableName=table.name,
        Key={k: serializer.serialize(v) for k, v in key.items()},
        UpdateExpression="SET IsPersonalEmail = :v",
        ExpressionAttributeValues={":v": serializer.serialize(value)},
    )


@pytest.fixture
def reconciler_client(engine):
    """`chalice.test.Client` for the dev stage, whose Lambda context has the reconciler's configured timeout."""
    from app import app
    from localdev.invoker import ROOT, _StageTimeoutClient

    with _StageTimeoutClient(app, stage_name="dev", project_dir=str(ROOT)) as client:
        yield client


def test_every_item_of_the_discarded_range_is_fixed_from_its_current_state(
    engine, make_table, stream_records, reconciler_client, log_sink, capsys
):
    table = make_table()
    for name, email in [
        ("before", "a@gmail.com"),
        ("p", "p@gmail.com"),
        ("w", "w@work.example"),
        ("ok", "ok@work.example"),
        ("deleted", "d@gmail.com"),
        ("changed", "c@work.example"),
        ("no-email", None),
        ("after", "z@gmail.com"),
    ]:
        put(table, Id=name, **({"Email": email} if email else {}))
    records = stream_records(table)
    by_id = {r["dynamodb"]["Keys"]["Id"]["S"]: r["dynamodb"]["SequenceNumber"] for r in records}
    # The discarded batch held the inserts from "p" to "no-email"; what it would have set is wrong or missing now.
    set_flag(table, False, Id="p")
    set_flag(table, True, Id="w")
    set_flag(table, False, Id="ok")
    table.client.delete_item(TableName=table.name, Key={"Id": {"S": "deleted"}})
    put(table, Id="changed", Email="c@gmail.com")  # changed since: decided from what it holds now
    set_flag(table, True, Id="no-email")
    set_flag(table, True, Id="before")
    set_flag(table, False, Id="after")
    body = json.dumps(on_failure_record(table.stream_arn, shard_of(engine, table), by_id["p"], by_id["no-email"]))
    capsys.readouterr()

    event = reconciler_client.events.generate_sqs_event([body], queue_name="email-checker-dev-stream-failures")
    reconciler_client.lambda_.invoke(FUNCTION, event)

    assert get(table, Id="p")["IsPersonalEmail"] is True
    assert get(table, Id="w")["IsPersonalEmail"] is False
    assert get(table, Id="ok")["IsPersonalEmail"] is False  # already correct: left alone
    assert get(table, Id="changed")["IsPersonalEmail"] is True
    assert "IsPersonalEmail" not in get(table, Id="no-email")
    assert get(table, Id="deleted") is None, "the reconciler resurrected a deleted item"
    # Outside the range: untouched, wrong as they are (their own records are the handler's).
    assert get(table, Id="before")["IsPersonalEmail"] is True
    assert get(table, Id="after")["IsPersonalEmail"] is False

    [line] = [r for r in log_sink.records() if r.get("message") == "reconciler message"]
    assert line["outcome"] == "reconciled" and line["range_complete"] is True
    assert (line["records"], line["items"], line["fixed"], line["already_correct"], line["gone"]) == (6, 6, 4, 1, 1)
    assert (line["failed"], line["rejected"], line["superseded"]) == (0, 0, 0)
    assert (line["start_sequence_number"], line["end_sequence_number"]) == (by_id["p"], by_id["no-email"])
    assert "gmail" not in json.dumps(line) and '"p"' not in json.dumps(line)  # no attribute values, no keys
    [emf] = [json.loads(out) for out in capsys.readouterr().out.splitlines() if '"ReconcilerMessages"' in out]
    assert (emf["ReconcilerMessages"], emf["ReconcilerItemsFixed"], emf["ReconcilerFailed"]) == ([1.0], [4.0], [0.0])
    assert emf["ReconcilerBackfillFallbacks"] == [0.0] and emf["stage"] == "dev" and emf["service"] == SERVICE


def test_binary_and_composite_keys_are_read_back_and_fixed(engine, make_table, stream_records):
    table = make_table(keys=(("Pk", "B"), ("Sk", "N")))
    put(table, Pk=b"\x00\xff", Sk=1, Email="x@gmail.com")
    put(table, Pk=b"\x00\xff", Sk=2, Email="y@work.example")
    records = stream_records(table)
    set_flag(table, False, Pk=b"\x00\xff", Sk=1)
    set_flag(table, True, Pk=b"\x00\xff", Sk=2)
    start, end = records[0]["dynamodb"]["SequenceNumber"], records[-1]["dynamodb"]["SequenceNumber"]
    batch = parse_message(json.dumps(on_failure_record(table.stream_arn, shard_of(engine, table), start, end)))
    report = reconciler(engine).reconcile(batch, Deadline.after(60))
    assert (report.outcome, report.fixed, report.items) == (Outcome.RECONCILED, 2, 2)
    assert get(table, Pk=b"\x00\xff", Sk=1)["IsPersonalEmail"] is True
    assert get(table, Pk=b"\x00\xff", Sk=2)["IsPersonalEmail"] is False


def reconciler(engine, streams=None, gateway_client=None, start_backfill=None) -> Reconciler:
    client = gateway_client or engine.client()
    return Reconciler(
        streams=streams or engine.streams_client(),
        gateway=DynamoDBGateway(client, DEFAULT_ATTRIBUTES),
        classify=classifier_for(Settings.from_environ({})).is_personal_email,
        start_backfill=start_backfill or (lambda table_name, run_id: pytest.fail("no backfill expected")),
    )


class Captured:
    """The parameters of every call a client makes to one operation (the Stubber answers it)."""

    def __init__(self, client: Any, operation: str) -> None:
        self.calls: list[dict[str, Any]] = []
        client.meta.events.register(
            f"before-parameter-build.{client.meta.service_model.endpoint_prefix}.{operation}",
            lambda params, **_: self.calls.append(dict(params)),
        )


def stubbed(service: str) -> tuple[Any, Stubber]:
    client = boto3.session.Session(region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x").client(
        service
    )
    return client, Stubber(client)


def handler_with(engine, streams, lambda_client, sqs=None) -> MessageHandler:
    dynamodb = engine.client()
    return MessageHandler(
        reconciler(
            engine,
            streams=streams,
            start_backfill=lambda table_name, run_id: invoke_backfill(
                lambda_client, dynamodb, "email-checker-dev-backfill_segment", table_name, run_id
            ),
        ),
        sqs=sqs or stubbed("sqs")[0],
        logger=Logger(service=SERVICE),
        metrics=metrics_for(Settings.from_environ({"STAGE": "dev"})),
    )


@pytest.mark.parametrize(
    ("operation", "error"),
    [
        ("get_shard_iterator", "TrimmedDataAccessException"),
        ("get_shard_iterator", "ResourceNotFoundException"),
        ("get_records", "ExpiredIteratorException"),
        ("get_records", "trimmed"),
    ],
)
def test_a_range_that_left_the_stream_starts_the_tables_backfill(
    engine, make_table, operation, error, log_sink, capsys
):
    table = make_table(keys=(("Org", "S"), ("Id", "N")))
    streams, streams_stub = stubbed("dynamodbstreams")
    iterator = {"ShardIterator": "iterator-1"}
    if operation == "get_shard_iterator":
        streams_stub.add_client_error("get_shard_iterator", service_error_code=error)
    else:
        streams_stub.add_response("get_shard_iterator", iterator)
        if error == "trimmed":  # the first record the shard still has is past the range's start
            record = {
                "eventName": "INSERT",
                "dynamodb": {"SequenceNumber": str(int(START) + 7), "Keys": {"Org": {"S": "o"}, "Id": {"N": "1"}}},
            }
            streams_stub.add_response("get_records", {"Records": [record], "NextShardIterator": "iterator-2"})
        else:
            streams_stub.add_client_error("get_records", service_error_code=error)
    lambda_client, lambda_stub = stubbed("lambda")
    for _ in range(BACKFILL_SEGMENTS):
        lambda_stub.add_response(
            "invoke", {"StatusCode": 202}, {"FunctionName": ANY, "InvocationType": "Event", "Payload": ANY}
        )
    invoked = Captured(lambda_client, "Invoke")
    body = json.dumps(on_failure_record(table.stream_arn, SHARD, START, END))
    capsys.readouterr()

    with streams_stub, lambda_stub:
        report = handler_with(engine, streams, lambda_client).handle(sqs_record(body), lambda: 60_000)
        lambda_stub.assert_no_pending_responses()

    assert report.outcome is Outcome.BACKFILL_STARTED and report.backfill_segments == BACKFILL_SEGMENTS
    payloads = [json.loads(call["Payload"]) for call in invoked.calls]
    assert {call["FunctionName"] for call in invoked.calls} == {"email-checker-dev-backfill_segment"}
    assert sorted(p["segment"] for p in payloads) == list(range(BACKFILL_SEGMENTS))
    for payload in payloads:
        assert (payload["table_name"], payload["key_names"]) == (table.name, ["Org", "Id"])  # from DescribeTable
        assert (payload["total_segments"], payload["start_key"]) == (BACKFILL_SEGMENTS, None)
        assert payload["continue_until_done"] is True and payload["continuation"] == 0
        assert payload["max_continuations"] > 0 and payload["run_id"] == "reconciler-0f8b3c2e"
    [line] = [r for r in log_sink.records() if r.get("message") == "reconciler message"]
    assert (line["outcome"], line["reason"], line["backfill_segments"]) == ("backfill_started", error, 4)
    [emf] = [json.loads(out) for out in capsys.readouterr().out.splitlines() if '"ReconcilerMessages"' in out]
    assert emf["ReconcilerBackfillFallbacks"] == [1.0] and emf["ReconcilerFailed"] == [0.0]


def test_failing_writes_put_the_message_back_with_a_growing_delay_and_raise(
    engine, make_table, stream_records, log_sink, capsys
):
    table = make_table()
    put(table, Id="a", Email="a@gmail.com")
    put(table, Id="b", Email="b@gmail.com")
    [first, last] = [r["dynamodb"]["SequenceNumber"] for r in stream_records(table)]
    client = engine.client()

    # Every write fails with a 500 the statement retries can't get past.
    fail_statements(client, lambda statement: "InternalServerError")
    sqs, sqs_stub = stubbed("sqs")
    sqs_stub.add_response(
        "change_message_visibility",
        {},
        {
            "QueueUrl": "https://sqs.eu-west-1.amazonaws.com/123456789012/email-checker-dev-stream-failures",
            "ReceiptHandle": "the-receipt-handle",
            "VisibilityTimeout": 120,  # the third receive: 30 s doubled twice
        },
    )
    handler = MessageHandler(
        reconciler(engine, gateway_client=client),
        sqs=sqs,
        logger=Logger(service=SERVICE),
        metrics=metrics_for(Settings.from_environ({"STAGE": "dev"})),
    )
    body = json.dumps(on_failure_record(table.stream_arn, shard_of(engine, table), first, last))
    capsys.readouterr()

    with sqs_stub, pytest.raises(ReconcileIncomplete):
        handler.handle(sqs_record(body, receive_count=3), lambda: 60_000)
    sqs_stub.assert_no_pending_responses()

    [line] = [r for r in log_sink.records() if r.get("message") == "reconciler message"]
    assert (line["outcome"], line["failed"], line["fixed"], line["retry_in_seconds"]) == ("retry", 2, 0, 120)
    assert (line["message_id"], line["shard_id"]) == ("0f8b3c2e", shard_of(engine, table))
    [emf] = [json.loads(out) for out in capsys.readouterr().out.splitlines() if '"ReconcilerMessages"' in out]
    assert emf["ReconcilerFailed"] == [1.0] and emf["ReconcilerItemsFixed"] == [0.0]
    assert "IsPersonalEmail" not in get(table, Id="a")


def test_an_invalid_body_is_logged_and_not_retried(reconciler_client, log_sink):
    event = reconciler_client.events.generate_sqs_event(['{"hello": "world"}'])
    reconciler_client.lambda_.invoke(FUNCTION, event)  # no exception: Lambda deletes the message
    [line] = [r for r in log_sink.records() if r.get("message") == "reconciler message"]
    assert line["outcome"] == "invalid" and "DDBStreamBatchInfo" in line["reason"]
    assert "world" not in json.dumps(line)


def test_a_deadline_that_passes_before_the_range_is_read_is_a_retry(engine, make_table, stream_records):
    table = make_table()
    put(table, Id="a", Email="a@gmail.com")
    [only] = [r["dynamodb"]["SequenceNumber"] for r in stream_records(table)]
    batch = parse_message(json.dumps(on_failure_record(table.stream_arn, shard_of(engine, table), only, only)))
    report = reconciler(engine).reconcile(batch, Deadline.after(0))
    assert report.outcome is Outcome.RETRY and report.fixed == 0
    assert "IsPersonalEmail" not in get(table, Id="a")


def backfill_settings() -> Settings:
    return Settings.from_environ({"STAGE": "dev"})


def test_a_self_continuing_segment_invokes_itself_from_where_it_stopped(engine, make_table):
    from chalicelib.backfill import SegmentRequest
    from chalicelib.runtime import backfill_segment

    table = make_table()
    for name in ("a", "b", "c"):
        put(table, Id=name, Email=f"{name}@gmail.com")
    lambda_client, lambda_stub = stubbed("lambda")
    lambda_stub.add_response(
        "invoke", {"StatusCode": 202}, {"FunctionName": "bf", "InvocationType": "Event", "Payload": ANY}
    )
    invoked = Captured(lambda_client, "Invoke")
    payload = SegmentRequest(table.name, ("Id",), 0, 1, page_size=1).payload(
        run_id="r", continue_until_done=True, continuation=0, max_continuations=5
    )

    with lambda_stub:
        # Time for one page (asked for the deadline, then before the page), then out: a page starts only if it fits.
        left = iter([10_000_000, 10_000_000])
        result = backfill_segment(backfill_settings(), payload, lambda: next(left, 0), "bf", lambda_client)
    lambda_stub.assert_no_pending_responses()

    assert result["done"] is False and result["counts"]["written"] == 1
    [call] = invoked.calls
    following = json.loads(call["Payload"])
    assert following["continuation"] == 1 and following["start_key"] == result["last_evaluated_key"]
    assert {k: v for k, v in following.items() if k not in ("continuation", "start_key")} == {
        k: v for k, v in payload.items() if k not in ("continuation", "start_key")
    }
    # The continuation resumes after the first page; run to the end, it stops invoking once done.
    with Stubber(lambda_client) as silent:  # no responses queued: any invoke would fail the test
        final = backfill_segment(backfill_settings(), following, lambda: 10_000_000, "bf", lambda_client)
        silent.assert_no_pending_responses()
    assert final["done"] is True and final["counts"]["written"] == 2
    assert all(get(table, Id=name)["IsPersonalEmail"] is True for name in ("a", "b", "c"))


def test_a_segment_stops_continuing_at_its_bound_and_without_the_flag():
    from chalicelib.backfill import PayloadError, next_payload

    unfinished = {"done": False, "last_evaluated_key": {"Id": {"S": "k"}}}
    assert next_payload({"continue_until_done": True, "continuation": 5, "max_continuations": 5}, unfinished) is None
    assert next_payload({"segment": 0}, unfinished) is None  # the local fan-out's payloads don't continue
    assert (
        next_payload({"continue_until_done": True, "continuation": 0, "max_continuations": 5}, {"done": True}) is None
    )
    with pytest.raises(PayloadError):
        next_payload({"continue_until_done": True, "continuation": 6, "max_continuations": 5}, unfinished)


@pytest.mark.parametrize(
    ("function_name", "built"),
    [
        ("email-checker-dev-reconcile_discarded_batches", "reconciler"),
        ("email-checker-prod-ReconcileDiscardedBatches-1A2B3C4D", "reconciler"),
        ("email-checker-dev-sync_is_personal_email", "processor"),
    ],
)
def test_the_reconciler_is_built_in_the_init_phase_of_its_own_function(engine, function_name, built):
    from localdev.invoker import ROOT

    probe = (
        "import app; from chalicelib import runtime; "
        "print(runtime.reconciler_for.cache_info().currsize, runtime.processor_for.cache_info().currsize)"
    )
    environment = {**engine.environment(), "AWS_LAMBDA_FUNCTION_NAME": function_name, "STAGE": "dev"}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **environment},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == (["1", "0"] if built == "reconciler" else ["0", "1"])


def test_an_empty_page_short_of_the_range_is_read_past_and_a_closed_shard_ends_it(engine, make_table):
    table = make_table()
    put(table, Id="a", Email="a@gmail.com")
    put(table, Id="b", Email="b@gmail.com")
    streams, stub = stubbed("dynamodbstreams")

    def record(sequence_number: str, key: str) -> dict[str, Any]:
        return {"eventName": "INSERT", "dynamodb": {"SequenceNumber": sequence_number, "Keys": {"Id": {"S": key}}}}

    stub.add_response("get_shard_iterator", {"ShardIterator": "i1"})
    stub.add_response("get_records", {"Records": [record(START, "a")], "NextShardIterator": "i2"})
    stub.add_response("get_records", {"Records": [], "NextShardIterator": "i3"})  # short of what follows
    stub.add_response("get_records", {"Records": [record(str(int(START) + 1), "b")]})  # the shard closes here
    batch = parse_message(json.dumps(on_failure_record(table.stream_arn, SHARD, START, END)))
    with stub:
        report = reconciler(engine, streams=streams).reconcile(batch, Deadline.after(60))
        stub.assert_no_pending_responses()
    assert (report.outcome, report.records, report.fixed, report.range_complete) == (Outcome.RECONCILED, 2, 2, True)
    assert get(table, Id="b")["IsPersonalEmail"] is True
