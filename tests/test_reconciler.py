"""The reconciler: a discarded batch's S3 on-failure object (moto's S3, its notification on moto's SQS), its records
decoded and its items brought under the invariant from their current state on DynamoDB Local; every recorded
on-failure variant parsed; the sweep's urgent request when the records can't be had."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import boto3
import botocore.session
import pytest
from aws_lambda_powertools import Logger
from botocore.stub import Stubber

from chalicelib import runtime
from chalicelib.config import Settings
from chalicelib.deadline import Deadline
from chalicelib.dynamodb import DynamoDBGateway
from chalicelib.on_failure import MessageKind, Unusable, parse_message, parse_object
from chalicelib.reconciler import (
    Context,
    MessageHandler,
    Outcome,
    ReconcileIncomplete,
    Reconciler,
    queue_url_from_arn,
    retry_delay_seconds,
)
from chalicelib.records import DEFAULT_ATTRIBUTES, decode_record
from chalicelib.runtime import SERVICE, classifier_for, metrics_for
from chalicelib.sweep import StateStore
from localdev.mapping import S3FailureDestination
from localdev.run import start_failure_bucket
from tests.faults import fail_statements
from tests.projects import STAGE

FUNCTION = "reconcile_discarded_batches"
VECTORS = Path(__file__).parent / "on_failure"
BUCKET = "email-checker-dev-on-failure"
QUEUE = "email-checker-dev-stream-failures"


def vector(name: str) -> dict[str, Any]:
    [path] = VECTORS.glob(f"{name}_*.json")
    return json.loads(path.read_text())


def sqs_record(body: str, queue_arn: str, receive_count: int = 1, receipt: str = "the-receipt-handle") -> dict:
    """One SQS record as Lambda hands it to a function."""
    return {
        "messageId": "0f8b3c2e",
        "receiptHandle": receipt,
        "body": body,
        "attributes": {"ApproximateReceiveCount": str(receive_count), "SentTimestamp": "1764046800000"},
        "messageAttributes": {},
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": queue_arn.split(":")[3],
    }


# --- every recorded variant, pure ---


@pytest.mark.parametrize("path", sorted(VECTORS.glob("a*.json")), ids=lambda path: path.name[:3])
def test_every_recorded_on_failure_variant_parses_or_is_named_unusable(path):
    copied = json.loads(path.read_text())
    body = copied["body"]
    if copied["kind"] == "s3_object":
        record = parse_object(json.dumps(body).encode())
        assert (
            record.payload_records is not None
            and len(record.payload_records) == body["DDBStreamBatchInfo"]["batchSize"]
        )
        # the handler's own decoder takes them
        decoded = [decode_record(raw, DEFAULT_ATTRIBUTES) for raw in record.payload_records]
        assert decoded[0].key.identity == (("my_partition_key", "hello world"),)
        assert isinstance(record.payload_records[0]["dynamodb"]["ApproximateCreationDateTime"], float)
        return
    if "KinesisBatchInfo" in body:
        with pytest.raises(Unusable, match="Kinesis"):
            parse_message(json.dumps(body))
        return
    message = parse_message(json.dumps(body))
    inner = json.loads(body["Message"]) if copied["kind"] == "sqs_body_sns" else body
    assert message.kind is (MessageKind.SNS_RECORD if copied["kind"] == "sqs_body_sns" else MessageKind.RECORD)
    record = message.record
    assert record.payload_records is None  # a pointer: the sweep's urgent pass
    assert record.stream_arn == inner["DDBStreamBatchInfo"]["streamArn"] and record.table_name
    assert record.function_error == inner["responseContext"]["functionError"]  # null after a partial-failure report
    assert record.condition == inner["requestContext"]["condition"]
    text = inner["timestamp"]
    assert record.failed_at == datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_the_timestamps_precisions_and_a_record_without_response_context():
    with_ms = parse_message(json.dumps(vector("a01")["body"])).record
    whole = parse_message(json.dumps(vector("a15")["body"])).record
    assert with_ms.failed_at.microsecond == 512_000 and whole.failed_at.microsecond == 0
    assert whole.failed_at.tzinfo is not None
    # The record-age shape (a12, Kinesis: the same poller): no responseContext at all. On a DynamoDB stream's record:
    body = vector("a12")["body"]
    info = body.pop("KinesisBatchInfo")
    info["streamArn"] = "arn:aws:dynamodb:eu-west-1:123456789012:table/users-a12/stream/2025-11-25T15:54:30.123"
    body["DDBStreamBatchInfo"] = info
    assert "responseContext" not in body
    record = parse_message(json.dumps(body)).record
    assert (record.condition, record.function_error, record.table_name) == ("RecordAgeExceeded", None, "users-a12")
    assert record.start_sequence_number is not None


def s3_notification(bucket: str, key: str, event: str = "ObjectCreated:Put") -> str:
    """An S3 event notification as S3 sends it to SQS (the key URL-encoded)."""
    from urllib.parse import quote_plus

    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "eu-west-1",
        "eventTime": "2026-12-04T09:00:00.123Z",
        "eventName": event,
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket}, "object": {"key": quote_plus(key), "size": 9}},
    }
    return json.dumps({"Records": [record]})


def test_an_s3_notification_names_its_objects_with_the_key_decoded():
    key = "aws/lambda/9e1c/shardId-00000001-ab/2026/12/04/2026-12-04T09.00.00-a b:c"
    message = parse_message(s3_notification("the-bucket", key))
    assert message.kind is MessageKind.S3_OBJECTS
    assert [(ref.bucket, ref.key) for ref in message.objects] == [("the-bucket", key)]
    assert message.objects[0].created_at == datetime(2026, 12, 4, 9, 0, 0, 123_000, tzinfo=UTC)
    assert parse_message(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})).kind is MessageKind.TEST_EVENT
    with pytest.raises(Unusable, match="no created object"):
        parse_message(s3_notification("the-bucket", key, "ObjectRemoved:Delete"))


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ("not json", "not JSON"),
        ("[1]", "not a JSON object"),
        ('{"hello": "world"}', "DDBStreamBatchInfo"),
        ('{"DDBStreamBatchInfo": {"streamArn": "arn:aws:sqs:x"}}', "streamArn"),
        ('{"Records": [{"eventSource": "aws:dynamodb"}]}', "not an S3 event notification"),
        ('{"Type": "Notification", "Message": "{}"}', "DDBStreamBatchInfo"),
    ],
)
def test_a_body_of_no_known_shape_is_unusable_and_named(body, names):
    with pytest.raises(Unusable, match=names):
        parse_message(body)


def test_the_delays_and_the_queue_url():
    # Never past SQS's 12-hour visibility cap (counted from the receive, so asking more would fail).
    assert [retry_delay_seconds(n) for n in (1, 2, 3, 12, 100)] == [30, 60, 120, 43200, 43200]
    assert (
        queue_url_from_arn("arn:aws:sqs:eu-west-1:123456789012:q")
        == "https://sqs.eu-west-1.amazonaws.com/123456789012/q"
    )


# --- against DynamoDB Local and moto's S3 and SQS ---


@pytest.fixture(scope="module")
def moto():
    from localdev.moto_server import MotoServer

    with MotoServer() as server:
        yield server


@pytest.fixture
def aws(moto, monkeypatch, request):
    """The stage's on-failure bucket notifying its queue, on moto; the functions' S3 and SQS clients pointed there."""
    s3, sqs = moto.client("s3"), moto.client("sqs")
    queue_url = sqs.create_queue(QueueName=f"{QUEUE}-{request.node.name[:40]}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    bucket = f"{BUCKET}-{abs(hash(request.node.name)) % 10**8}"
    start_failure_bucket(s3, bucket, queue_arn)
    for name, value in {
        "AWS_ENDPOINT_URL_S3": moto.endpoint,
        "AWS_ENDPOINT_URL_SQS": moto.endpoint,
        runtime.FAILURE_BUCKET_VARIABLE: bucket,
    }.items():
        monkeypatch.setenv(name, value)
    runtime.reconciler_for.cache_clear()
    yield Aws(s3, sqs, bucket, queue_url, queue_arn)
    runtime.reconciler_for.cache_clear()
    sqs.delete_queue(QueueUrl=queue_url)
    for listed in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        s3.delete_object(Bucket=bucket, Key=listed["Key"])
    s3.delete_bucket(Bucket=bucket)


class Aws:
    def __init__(self, s3, sqs, bucket, queue_url, queue_arn) -> None:
        self.s3, self.sqs, self.bucket, self.queue_url, self.queue_arn = s3, sqs, bucket, queue_url, queue_arn

    def messages(self) -> list[dict[str, Any]]:
        """Every message the queue holds now (received: each invisible for 30 s)."""
        found = []
        while batch := self.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=30, MessageSystemAttributeNames=["All"]
        ).get("Messages", []):
            found += batch
        return found

    def lambda_records(self) -> list[dict[str, Any]]:
        """The queue's messages as Lambda's SQS event source hands them over, S3's test event dropped."""
        return [
            sqs_record(m["Body"], self.queue_arn, int(m["Attributes"]["ApproximateReceiveCount"]), m["ReceiptHandle"])
            for m in self.messages()
            if "s3:TestEvent" not in m["Body"]
        ]


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


def invocation_record(table, records: list[dict[str, Any]], at: str = "2026-12-04T09:00:00.123Z") -> dict[str, Any]:
    """Lambda's invocation record for a discarded batch of `records`, its shard one the stream no longer has."""
    return {
        "requestContext": {
            "requestId": "0b7c6a1e-4f2d-4e8a-9c3b-5d6e7f800003",
            "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:email-checker-dev-sync_is_personal_email",
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": 3,
        },
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": None},
        "version": "1.0",
        "timestamp": at,
        "DDBStreamBatchInfo": {
            "shardId": "shardId-00000001700000000000-0000dead",
            "startSequenceNumber": records[0]["dynamodb"]["SequenceNumber"],
            "endSequenceNumber": records[-1]["dynamodb"]["SequenceNumber"],
            "approximateArrivalOfFirstRecord": "2026-12-04T08:59:58Z",
            "approximateArrivalOfLastRecord": "2026-12-04T08:59:59Z",
            "batchSize": len(records),
            "streamArn": table.stream_arn,
        },
    }


class AllCalls:
    """Every AWS operation any client created from now on sends (a `before-call` hook on each new client)."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[str] = []
        original = botocore.session.Session.create_client

        def create_client(session, *args, **kwargs):
            client = original(session, *args, **kwargs)
            client.meta.events.register("before-call", self._record)
            return client

        monkeypatch.setattr(botocore.session.Session, "create_client", create_client)

    def _record(self, model, **_: Any) -> None:
        self.calls.append(f"{model.service_model.endpoint_prefix}.{model.name}")


@pytest.fixture
def reconciler_client(engine, aws, project):
    """`chalice.test.Client` for the tests' stage, whose Lambda context has the reconciler's configured timeout."""
    from app import app
    from localdev.invoker import _StageTimeoutClient

    with _StageTimeoutClient(app, stage_name=STAGE, project_dir=str(project)) as client:
        yield client


def test_a_discarded_batch_whose_range_is_gone_is_fixed_from_its_s3_object_alone(
    engine, make_table, stream_records, aws, reconciler_client, log_sink, capsys, monkeypatch
):
    """Done when (issue 16): no Scan, no Invoke, no GetRecords; the object and its notification are moto's."""
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
    batch = records[1:7]  # the inserts from "p" to "no-email"
    batch.insert(2, {**batch[0], "eventName": "GARBLED"})  # a malformed record: counted, not fatal
    # What the discarded batch would have set is wrong or missing now; one item changed since, one was deleted.
    set_flag(table, False, Id="p")
    set_flag(table, True, Id="w")
    set_flag(table, False, Id="ok")
    table.client.delete_item(TableName=table.name, Key={"Id": {"S": "deleted"}})
    put(table, Id="changed", Email="c@gmail.com")
    set_flag(table, True, Id="no-email")
    set_flag(table, True, Id="before")
    set_flag(table, False, Id="after")
    # The stream no longer has the range: its shard is one the stream never had, and the stream is switched off.
    table.client.update_table(TableName=table.name, StreamSpecification={"StreamEnabled": False})
    S3FailureDestination(aws.s3, aws.bucket)(invocation_record(table, batch), {"Records": batch})
    [message] = aws.lambda_records()  # moto's own ObjectCreated notification
    # moto encodes the key's slashes too (S3 leaves them): decoded, it is Lambda's layout either way.
    assert unquote_plus(json.loads(message["body"])["Records"][0]["s3"]["object"]["key"]).startswith("aws/lambda/")
    capsys.readouterr()
    calls = AllCalls(monkeypatch)
    runtime.reconciler_for.cache_clear()

    reconciler_client.lambda_.invoke(FUNCTION, {"Records": [message]})

    assert get(table, Id="p")["IsPersonalEmail"] is True
    assert get(table, Id="w")["IsPersonalEmail"] is False
    assert get(table, Id="ok")["IsPersonalEmail"] is False  # already correct: left alone
    assert get(table, Id="changed")["IsPersonalEmail"] is True  # decided from what it holds now
    assert "IsPersonalEmail" not in get(table, Id="no-email")
    assert get(table, Id="deleted") is None, "the reconciler resurrected a deleted item"
    assert get(table, Id="before")["IsPersonalEmail"] is True  # outside the batch: untouched
    assert get(table, Id="after")["IsPersonalEmail"] is False
    sent = set(calls.calls)
    assert sent == {"s3.GetObject", "dynamodb.BatchGetItem", "dynamodb.BatchExecuteStatement"}, sent
    assert calls.calls.count("s3.GetObject") == 1

    [line] = [r for r in log_sink.records() if r.get("message") == "reconciler message"]
    assert (line["outcome"], line["kind"], line["objects"]) == ("reconciled", "s3_objects", 1)
    assert (line["records"], line["malformed"], line["items"], line["fixed"]) == (7, 1, 6, 4)
    assert (line["already_correct"], line["gone"], line["failed"], line["rejected"]) == (1, 1, 0, 0)
    first, last = batch[0]["dynamodb"]["SequenceNumber"], batch[-1]["dynamodb"]["SequenceNumber"]
    assert line["ranges"] == [f"shardId-00000001700000000000-0000dead:{first}..{last}"]
    assert "gmail" not in json.dumps(line) and '"p"' not in json.dumps(line)  # no attribute values, no keys
    [emf] = [json.loads(out) for out in capsys.readouterr().out.splitlines() if '"ReconcilerMessages"' in out]
    assert (emf["ReconcilerMessages"], emf["ReconcilerItemsFixed"], emf["ReconcilerFailed"]) == ([1.0], [4.0], [0.0])
    assert emf["ReconcilerMalformedRecords"] == [1.0] and emf["ReconcilerSweepRequests"] == [0.0]
    assert emf["stage"] == STAGE and emf["service"] == SERVICE


def test_binary_and_composite_keys_are_fixed_from_the_payload(engine, make_table, stream_records, aws):
    table = make_table(keys=(("Pk", "B"), ("Sk", "N")))
    put(table, Pk=b"\x00\xff", Sk=1, Email="x@gmail.com")
    put(table, Pk=b"\x00\xff", Sk=2, Email="y@work.example")
    records = stream_records(table)
    set_flag(table, False, Pk=b"\x00\xff", Sk=1)
    set_flag(table, True, Pk=b"\x00\xff", Sk=2)
    S3FailureDestination(aws.s3, aws.bucket)(invocation_record(table, records), {"Records": records})
    [message] = aws.lambda_records()
    report = reconciler(engine, aws).handle(parse_message(message["body"]), Context(Deadline.after(60)))
    assert (report.outcome, report.fixed, report.items) == (Outcome.RECONCILED, 2, 2)
    assert get(table, Pk=b"\x00\xff", Sk=1)["IsPersonalEmail"] is True
    assert get(table, Pk=b"\x00\xff", Sk=2)["IsPersonalEmail"] is False


def reconciler(engine, aws, gateway_client=None, s3=None) -> Reconciler:
    return Reconciler(
        gateway=DynamoDBGateway(gateway_client or engine.client(), DEFAULT_ATTRIBUTES),
        classify=classifier_for(Settings.from_environ({})).is_personal_email,
        s3=s3 or aws.s3,
        sweep=StateStore(aws.s3, aws.bucket),
    )


def handler(engine, aws, **options) -> MessageHandler:
    return MessageHandler(
        reconciler(engine, aws, **options),
        sqs=aws.sqs,
        logger=Logger(service=SERVICE),
        metrics=metrics_for(Settings.from_environ({"STAGE": "dev"})),
    )


def pointer(table, at: str) -> str:
    """An SQS destination's record for the table (no payload): the sweep's case."""
    body = vector("a15")["body"]
    body["DDBStreamBatchInfo"]["streamArn"] = table.stream_arn
    body["timestamp"] = at
    return json.dumps(body)


def iso_ms(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_two_pointer_messages_each_record_an_urgent_sweep_and_are_finished(engine, make_table, aws, log_sink, capsys):
    table = make_table(keys=(("Org", "S"), ("Id", "N")))
    handle = handler(engine, aws).handle
    first_failure = datetime.now(UTC) - timedelta(seconds=30)
    second_failure = first_failure + timedelta(seconds=10)
    aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=pointer(table, iso_ms(second_failure)))
    aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=pointer(table, iso_ms(first_failure)))
    first, second = aws.lambda_records()

    # Each returns (Lambda deletes it): no wait, no raise, no lock, no invocation.
    assert handle(first, lambda: 60_000).outcome is Outcome.SWEEP_REQUESTED
    assert handle(second, lambda: 60_000).outcome is Outcome.SWEEP_REQUESTED

    state, _ = StateStore(aws.s3, aws.bucket).load()
    # The later failure is kept: a pass that starts after it covers both batches.
    assert state.urgent_since == second_failure.replace(microsecond=second_failure.microsecond // 1000 * 1000)
    assert state.urgent_requests == 1 and state.pass_number == 0
    assert [o["Key"] for o in aws.s3.list_objects_v2(Bucket=aws.bucket)["Contents"]] == ["sweep/state.json"]
    lines = [r for r in log_sink.records() if r.get("message") == "reconciler message"]
    assert [line["outcome"] for line in lines] == ["sweep_requested", "sweep_requested"]
    assert lines[0]["reason"] == "no_payload" and lines[0]["kind"] == "record"
    emf = [json.loads(out) for out in capsys.readouterr().out.splitlines() if '"ReconcilerMessages"' in out]
    assert [m["ReconcilerSweepRequests"] for m in emf] == [[1.0], [1.0]]


def test_an_object_gone_from_the_bucket_records_an_urgent_sweep(engine, make_table, aws):
    key = "aws/lambda/9e1c/shardId-1/2026/12/04/2026-12-04T09.00.00-3f2a"
    message = parse_message(s3_notification(aws.bucket, key))
    report = reconciler(engine, aws).handle(message, Context(Deadline.after(60)))
    assert (report.outcome, report.reason) == (Outcome.SWEEP_REQUESTED, "object_NoSuchKey")
    # The request is the object's creation time (the notification's eventTime), not the time it was handled.
    assert StateStore(aws.s3, aws.bucket).load()[0].urgent_since == message.objects[0].created_at


def test_an_object_that_is_denied_is_retried_then_given_up_for_the_sweep(engine, make_table, aws):
    """AccessDenied: an error moto's S3 can't be made to answer on demand (it enforces no IAM), so Stubber answers
    the object's GetObject; the state is moto's."""
    denying = boto3.session.Session(region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    s3 = denying.client("s3")
    reconciling = reconciler(engine, aws, s3=_DeniedGet(s3, aws.s3))
    message = parse_message(s3_notification(aws.bucket, "aws/lambda/9e1c/shardId-1/2026/12/04/2026-12-04T09.00.00-3f"))
    outcomes = []
    with Stubber(s3) as stub:
        for receives in (1, 2, 3):
            stub.add_client_error("get_object", "AccessDenied", http_status_code=403)
            report = reconciling.handle(message, Context(Deadline.after(60), receives=receives))
            outcomes.append((report.outcome, report.reason))
    assert outcomes == [(Outcome.RETRY, "AccessDenied")] * 2 + [(Outcome.SWEEP_REQUESTED, "object_AccessDenied")]


def test_a_state_that_cant_be_written_is_a_retry_and_never_a_request(engine, make_table, aws):
    table = make_table()
    s3 = boto3.session.Session(region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x").client("s3")
    broken = Reconciler(
        DynamoDBGateway(engine.client(), DEFAULT_ATTRIBUTES),
        classifier_for(Settings.from_environ({})).is_personal_email,
        s3,
        StateStore(s3, aws.bucket),
    )
    with Stubber(s3) as stub:
        stub.add_client_error("get_object", "NoSuchKey", http_status_code=404)
        stub.add_client_error("put_object", "AccessDenied", http_status_code=403)
        report = broken.handle(parse_message(pointer(table, iso_ms(datetime.now(UTC)))), Context(Deadline.after(60)))
    assert (report.outcome, report.reason) == (Outcome.RETRY, "no_payload: AccessDenied")


class _DeniedGet:
    """An S3 client whose GetObject of on-failure objects goes to a stubbed client; the rest to moto."""

    def __init__(self, denied, real) -> None:
        self._denied, self._real = denied, real

    def get_object(self, **params):
        client = self._denied if params["Key"].startswith("aws/lambda/") else self._real
        return client.get_object(**params)

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_s3s_test_event_and_unusable_bodies_are_counted_and_deleted(engine, aws, reconciler_client, log_sink, capsys):
    [test_event] = [m for m in aws.messages() if "s3:TestEvent" in m["Body"]]  # moto sent it, as S3 does
    record = sqs_record(test_event["Body"], aws.queue_arn, receipt=test_event["ReceiptHandle"])
    capsys.readouterr()
    reconciler_client.lambda_.invoke(FUNCTION, {"Records": [record]})  # returns: Lambda deletes it
    reconciler_client.lambda_.invoke(FUNCTION, {"Records": [sqs_record('{"hello": "world"}', aws.queue_arn)]})
    lines = [r for r in log_sink.records() if r.get("message") == "reconciler message"]
    assert [(line["outcome"], line["level"]) for line in lines] == [("test_event", "INFO"), ("unusable", "WARNING")]
    assert "DDBStreamBatchInfo" in lines[1]["reason"] and "world" not in json.dumps(lines[1])
    emf = [json.loads(out) for out in capsys.readouterr().out.splitlines() if '"ReconcilerMessages"' in out]
    assert [(m["ReconcilerTestEvents"], m["ReconcilerUnusable"], m["ReconcilerFailed"]) for m in emf] == [
        ([1.0], [0.0], [0.0]),
        ([0.0], [1.0], [0.0]),
    ]


@pytest.mark.parametrize("reporting", [True, False], ids=["reported", "raised"])
def test_failing_writes_put_the_message_back_with_a_growing_delay(
    engine, make_table, stream_records, aws, log_sink, reporting
):
    """With the event source reporting batch item failures the message is named in the answer, nothing raised (no
    Lambda Errors for a routine retry); without, the function raises so Lambda keeps it."""
    table = make_table()
    put(table, Id="a", Email="a@gmail.com")
    records = stream_records(table)
    S3FailureDestination(aws.s3, aws.bucket)(invocation_record(table, records), {"Records": records})
    [message] = aws.lambda_records()
    message = {**message, "messageId": "the-unfinished-one", "attributes": {"ApproximateReceiveCount": "3"}}
    client = engine.client()
    remove = fail_statements(client, lambda statement: "InternalServerError")
    try:
        answering = handler(engine, aws, gateway_client=client)
        if reporting:
            answer = answering.answer([message], lambda: 60_000, report_item_failures=True)
            assert answer == {"batchItemFailures": [{"itemIdentifier": "the-unfinished-one"}]}
        else:
            with pytest.raises(ReconcileIncomplete):
                answering.answer([message], lambda: 60_000, report_item_failures=False)
    finally:
        remove()
    line = log_sink.records()[-1]
    assert (line["outcome"], line["failed"], line["retry_in_seconds"], line["reason"]) == ("retry", 1, 120, "failed")
    assert "IsPersonalEmail" not in get(table, Id="a")
    assert aws.messages() == [], "pushed back on moto's SQS"


@pytest.mark.parametrize("reporting", ["true", "false"])
def test_the_function_names_only_its_unfinished_messages_when_its_event_source_reports_them(
    engine, aws, project, reporting
):
    """Through the app's function: a batch of a finished message (S3's test event) and one whose object can't be
    read (its bucket doesn't exist: a retry). REPORT_BATCH_ITEM_FAILURES is what the deploy paths set once the
    mapping reports; the answer then names only the unfinished message; off, the batch raises."""
    from app import app
    from localdev.invoker import _StageTimeoutClient

    [test_event] = [m for m in aws.messages() if "s3:TestEvent" in m["Body"]]
    finished = {**sqs_record(test_event["Body"], aws.queue_arn), "messageId": "finished"}
    missing = s3_notification("no-such-bucket", "aws/lambda/x/shardId-1/2026/12/04/2026-12-04T09.00.00-1")
    unfinished = {**sqs_record(missing, aws.queue_arn), "messageId": "unfinished"}
    with _StageTimeoutClient(app, stage_name=STAGE, project_dir=str(project)) as client:
        client.overrides = {"REPORT_BATCH_ITEM_FAILURES": reporting}
        if reporting == "true":
            answer = client.lambda_.invoke(FUNCTION, {"Records": [finished, unfinished]}).payload
            assert answer == {"batchItemFailures": [{"itemIdentifier": "unfinished"}]}
            assert client.lambda_.invoke(FUNCTION, {"Records": [finished]}).payload == {"batchItemFailures": []}
        else:
            with pytest.raises(ReconcileIncomplete):
                client.lambda_.invoke(FUNCTION, {"Records": [finished, unfinished]})
            assert client.lambda_.invoke(FUNCTION, {"Records": [finished]}).payload is None


def test_a_deadline_that_passes_before_the_items_are_read_is_a_retry(engine, make_table, stream_records, aws):
    table = make_table()
    put(table, Id="a", Email="a@gmail.com")
    records = stream_records(table)
    body = {**invocation_record(table, records), "payload": {"Records": records}}
    aws.s3.put_object(
        Bucket=aws.bucket, Key="aws/lambda/x/shardId-1/2026/12/04/2026-12-04T09.00.00-1", Body=json.dumps(body)
    )
    [message] = aws.lambda_records()
    report = reconciler(engine, aws).handle(parse_message(message["body"]), Context(Deadline.after(0)))
    assert report.outcome is Outcome.RETRY and report.fixed == 0
    assert "IsPersonalEmail" not in get(table, Id="a")


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
