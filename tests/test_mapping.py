"""The local event source mapping behaves like Lambda's: order, batch size, retries, partial failures, checkpoints."""

from __future__ import annotations

import json

import pytest

from localdev.mapping import CheckpointStore, LocalEventSourceMapping
from tests.test_handler import put


class Recorder:
    """A handler that records what it is given and fails on demand."""

    def __init__(self, fail_times=0, report_from_index=None):
        self.batches = []
        self.fail_times = fail_times
        self.report_from_index = report_from_index

    def __call__(self, event):
        sequence_numbers = [r["dynamodb"]["SequenceNumber"] for r in event["Records"]]
        self.batches.append(sequence_numbers)
        if self.fail_times:
            self.fail_times -= 1
            if self.report_from_index is None:
                raise RuntimeError("function error")
            return {"batchItemFailures": [{"itemIdentifier": sequence_numbers[self.report_from_index]}]}
        return {"batchItemFailures": []}


def test_batches_respect_the_size_and_keep_stream_order(engine, make_table):
    table = make_table()
    for number in range(7):
        put(table, Id=f"k{number}", Other=number)
    handler = Recorder()
    mapping = LocalEventSourceMapping(engine.streams_client(), table.stream_arn, handler, batch_size=3)
    mapping.drain()
    assert [len(batch) for batch in handler.batches] == [3, 3, 1]
    flat = [int(s) for batch in handler.batches for s in batch]
    assert flat == sorted(flat) and mapping.stats.records == 7


def test_a_raising_handler_gets_the_whole_batch_again(engine, make_table):
    table = make_table()
    for number in range(3):
        put(table, Id=f"k{number}")
    handler = Recorder(fail_times=2)
    mapping = LocalEventSourceMapping(engine.streams_client(), table.stream_arn, handler)
    mapping.drain()
    assert handler.batches[0] == handler.batches[1] == handler.batches[2]
    assert mapping.stats.failed_attempts == 2 and mapping.stats.records == 3


def test_reported_failures_resume_from_the_reported_record(engine, make_table):
    table = make_table()
    for number in range(4):
        put(table, Id=f"k{number}")
    handler = Recorder(fail_times=1, report_from_index=2)
    mapping = LocalEventSourceMapping(
        engine.streams_client(), table.stream_arn, handler, report_batch_item_failures=True
    )
    mapping.drain()
    first, retry = handler.batches[:2]
    assert retry == first[2:]


def test_a_batch_that_keeps_failing_is_set_aside_after_max_attempts(engine, make_table):
    table = make_table()
    put(table, Id="poison")
    handler = Recorder(fail_times=99)
    mapping = LocalEventSourceMapping(engine.streams_client(), table.stream_arn, handler, max_attempts=3)
    mapping.drain()
    assert len(handler.batches) == 3
    assert len(mapping.stats.discarded_batches) == 1


def test_a_restarted_mapping_resumes_after_its_checkpoint(engine, make_table, tmp_path):
    table = make_table()
    store = CheckpointStore(tmp_path / "checkpoints.json")
    put(table, Id="before")
    first = Recorder()
    LocalEventSourceMapping(engine.streams_client(), table.stream_arn, first, checkpoints=store).drain()
    put(table, Id="after")
    second = Recorder()
    LocalEventSourceMapping(engine.streams_client(), table.stream_arn, second, checkpoints=store).drain()
    assert len(first.batches) == 1 and len(second.batches) == 1
    assert second.batches[0] != first.batches[0]
    assert int(second.batches[0][0]) > int(first.batches[0][-1])


def _cli_table(client, name):
    """A table as `aws dynamodb create-table` makes it on `make run`'s engine: outside the mapping, with a stream."""
    client.create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": "Id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "Id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100})


def _stream_sequence_numbers(streams, stream_arn):
    numbers = []
    for shard in streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"]:
        iterator = streams.get_shard_iterator(
            StreamArn=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        numbers += [r["dynamodb"]["SequenceNumber"] for r in streams.get_records(ShardIterator=iterator)["Records"]]
    return numbers


@pytest.mark.parametrize("starting_position", ["TRIM_HORIZON", "LATEST"])
def test_the_first_write_after_a_restart_is_delivered_on_a_table_made_outside_the_mapping(tmp_path, starting_position):
    """The lost first record (issue 15): `make run` wrote to its table, a table was created with the AWS CLI on the
    same engine, `make run --table <it>` restarted, one item written. The restarted engine numbers that item's record
    below the new shard's StartingSequenceNumber, where it places an iterator on a shard without records."""
    from chalicelib.config import Settings
    from localdev.dynamodb_local import DynamoDBLocal, ensure_table, table_definition

    data, store = tmp_path / "dynamodb", CheckpointStore(tmp_path / "checkpoints.json")
    with DynamoDBLocal(db_path=data) as first_run:
        client = first_run.client()
        users = table_definition()
        users_stream = ensure_table(client, users)
        client.put_item(TableName=users["TableName"], Item={"Id": {"S": "U1"}, "Email": {"S": "a@example.com"}})
        LocalEventSourceMapping(first_run.streams_client(), users_stream, Recorder(), checkpoints=store).drain()
        _cli_table(client, "FromTheCli")
    with DynamoDBLocal(db_path=data) as second_run:
        client, streams = second_run.client(), second_run.streams_client()
        stream_arn = client.describe_table(TableName="FromTheCli")["Table"]["LatestStreamArn"]
        handler = Recorder()
        settings = Settings.from_environ({"STARTING_POSITION": starting_position})
        mapping = LocalEventSourceMapping.for_stage(streams, stream_arn, handler, settings, checkpoints=store)
        assert mapping.poll() == 0  # following the stream before the write, as `make run` is
        client.put_item(TableName="FromTheCli", Item={"Id": {"S": "ID1"}, "Email": {"S": "john@gmail.com"}})
        mapping.drain()
        written = _stream_sequence_numbers(streams, stream_arn)
        client.put_item(TableName="FromTheCli", Item={"Id": {"S": "ID2"}, "Email": {"S": "jane@gmail.com"}})
        mapping.drain()
        everything = _stream_sequence_numbers(streams, stream_arn)
    assert len(written) == 1 and len(everything) == 2
    assert [number for batch in handler.batches for number in batch] == everything
    [checkpoint] = store.load(stream_arn).values()
    assert checkpoint == everything[-1]


def test_latest_skips_only_what_the_shard_held_when_the_mapping_first_started(engine, make_table, tmp_path):
    table = make_table()
    put(table, Id="before")
    store = CheckpointStore(tmp_path / "checkpoints.json")
    handler = Recorder()
    mapping = LocalEventSourceMapping(
        engine.streams_client(), table.stream_arn, handler, starting_position="LATEST", checkpoints=store
    )
    assert mapping.poll() == 0
    put(table, Id="after")
    mapping.drain()
    put(table, Id="while stopped")
    restarted = Recorder()
    LocalEventSourceMapping(
        engine.streams_client(), table.stream_arn, restarted, starting_position="LATEST", checkpoints=store
    ).drain()
    assert len(handler.batches) == 1 and len(handler.batches[0]) == 1
    assert len(restarted.batches) == 1 and int(restarted.batches[0][0]) > int(handler.batches[0][0])


PARENT = "shardId-00000001795494179909-aaaaaaaa"
CHILD = "shardId-00000001795494180000-bbbbbbbb"
FIRST, SECOND = "000000000000000000100", "000000000000000000200"


def _shard(shard_id, parent=None):
    shard = {"ShardId": shard_id, "SequenceNumberRange": {"StartingSequenceNumber": "000000000000000000001"}}
    if parent:
        shard["ParentShardId"] = parent
    return shard


def _stream_record(sequence_number):
    return {
        "eventID": f"event-{sequence_number}",
        "eventName": "INSERT",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "Keys": {"Id": {"S": "k"}},
            "SequenceNumber": sequence_number,
            "SizeBytes": 10,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
    }


def test_a_child_shard_waits_until_its_closed_parent_is_drained():
    """Shard rollover can't be produced on demand by DynamoDB Local: the Streams API is scripted with Stubber."""
    import boto3
    from botocore.stub import ANY, Stubber

    streams = boto3.session.Session(region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x").client(
        "dynamodbstreams"
    )
    arn = "arn:aws:dynamodb:us-east-1:1:table/Users/stream/label"
    # The child is listed first: order in DescribeStream must not matter, lineage must.
    description = {"StreamDescription": {"Shards": [_shard(CHILD, parent=PARENT), _shard(PARENT)]}}
    stub = Stubber(streams)
    # Poll 1: only the parent is ready; it returns a record and is then closed (no NextShardIterator).
    stub.add_response("describe_stream", description, {"StreamArn": arn})
    stub.add_response(
        "get_shard_iterator",
        {"ShardIterator": "p-it"},
        {"StreamArn": arn, "ShardId": PARENT, "ShardIteratorType": "TRIM_HORIZON"},
    )
    stub.add_response("get_records", {"Records": [_stream_record(FIRST)]}, {"ShardIterator": "p-it", "Limit": ANY})
    # Poll 2: the parent is drained, so now the child is read.
    stub.add_response("describe_stream", description, {"StreamArn": arn})
    stub.add_response(
        "get_shard_iterator",
        {"ShardIterator": "c-it"},
        {"StreamArn": arn, "ShardId": CHILD, "ShardIteratorType": "TRIM_HORIZON"},
    )
    stub.add_response(
        "get_records",
        {"Records": [_stream_record(SECOND)], "NextShardIterator": "c-it2"},
        {"ShardIterator": "c-it", "Limit": ANY},
    )
    handler = Recorder()
    mapping = LocalEventSourceMapping(streams, arn, handler)
    with stub:
        assert mapping.poll() == 1
        assert mapping.poll() == 1
    stub.assert_no_pending_responses()
    assert handler.batches == [[FIRST], [SECOND]]


def _record(event_name, new_image=None, old_image=None):
    body = {"Keys": {"Id": {"S": "k"}}, "SequenceNumber": "1"}
    if new_image is not None:
        body["NewImage"] = new_image
    if old_image is not None:
        body["OldImage"] = old_image
    return {"eventName": event_name, "eventSource": "aws:dynamodb", "dynamodb": body}


def _filter(*patterns):
    from localdev.mapping import RecordFilter

    return RecordFilter({"Filters": [{"Pattern": json.dumps(pattern)} for pattern in patterns]})


def test_filters_match_lambdas_dynamodb_json_shapes():
    with_email = _record("MODIFY", new_image={"Id": {"S": "k"}, "Email": {"S": "a@gmail.com"}})
    without_email = _record("MODIFY", new_image={"Id": {"S": "k"}})
    removed = _record("REMOVE", old_image={"Id": {"S": "k"}, "Email": {"S": "a@gmail.com"}})
    by_name = _filter({"eventName": ["INSERT", "MODIFY"]})
    assert by_name.matches(with_email) and not by_name.matches(removed)
    has_email = _filter({"dynamodb": {"NewImage": {"Email": {"S": [{"exists": True}]}}}})
    assert has_email.matches(with_email) and not has_email.matches(without_email) and not has_email.matches(removed)
    no_email = _filter({"dynamodb": {"NewImage": {"Email": {"S": [{"exists": False}]}}}})
    assert no_email.matches(without_email) and not no_email.matches(with_email)
    gmail = _filter({"dynamodb": {"NewImage": {"Email": {"S": [{"suffix": "@gmail.com"}]}}}})
    assert gmail.matches(with_email) and not gmail.matches(without_email)
    not_removed = _filter({"eventName": [{"anything-but": ["REMOVE"]}]})
    assert not_removed.matches(with_email) and not not_removed.matches(removed)


def test_filters_are_ored_and_no_filter_passes_everything():
    removed = _record("REMOVE", old_image={"Id": {"S": "k"}})
    inserted = _record("INSERT", new_image={"Id": {"S": "k"}})
    either = _filter({"eventName": ["INSERT"]}, {"eventName": ["REMOVE"]})
    assert either.matches(removed) and either.matches(inserted)
    assert not _filter({"eventName": ["MODIFY"]}).matches(inserted)
    assert _filter().matches(removed)


def test_more_than_five_filters_or_an_invalid_pattern_are_refused():
    from moto.events.exceptions import InvalidEventPatternException

    with pytest.raises(ValueError, match="at most 5"):
        _filter(*({"eventName": [name]} for name in "ABCDEF"))
    with pytest.raises(InvalidEventPatternException):
        _filter({"eventName": "INSERT"})  # a value must be an array or an object
