"""The handler through Chalice's test client, against DynamoDB Local: the invariant, the races, the bad input."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from boto3.dynamodb.types import Binary, TypeDeserializer
from chalice.test import Client

from app import app
from chalicelib.config import Settings
from chalicelib.processor import BatchFailed
from chalicelib.records import StreamViewType
from chalicelib.runtime import processor_for
from localdev.events import StreamEventFactory, lambda_event, to_wire
from localdev.invoker import FUNCTION_NAME, stage_environment
from tests.faults import fail_statements
from tests.projects import STAGE

_deserialize = TypeDeserializer().deserialize


def get(table, **key):
    item = table.client.get_item(TableName=table.name, Key=to_wire(key), ConsistentRead=True).get("Item")
    return None if item is None else {name: _deserialize(value) for name, value in item.items()}


def put(table, **item):
    table.client.put_item(TableName=table.name, Item=to_wire(item))


def set_attribute(table, key, name, value):
    table.client.update_item(
        TableName=table.name,
        Key=to_wire(key),
        UpdateExpression="SET #a = :v",
        ExpressionAttributeNames={"#a": name},
        ExpressionAttributeValues={":v": to_wire({"v": value})["v"]},
    )


def totals(summaries):
    return {field: sum(s[field] for s in summaries) for field in ("records", "writes", "superseded", "malformed")}


@pytest.mark.parametrize("view_type", ["NEW_AND_OLD_IMAGES", "NEW_IMAGE"])
def test_walkthrough(make_table, drain, view_type):
    table = make_table(view_type=view_type)
    put(table, Id="ID1", Email="john@example.com")
    put(table, Id="ID2", Email="john@gmail.com")
    first = drain(table)
    assert get(table, Id="ID1")["IsPersonalEmail"] is False
    assert get(table, Id="ID2")["IsPersonalEmail"] is True
    # Two inserts, then the handler's own two writes come back as records that need nothing: no loop.
    assert totals(first)["writes"] == 2

    set_attribute(table, {"Id": "ID1"}, "Email", "john@outlook.com")
    changed = drain(table)
    assert get(table, Id="ID1")["IsPersonalEmail"] is True
    assert totals(changed)["writes"] == 1

    set_attribute(table, {"Id": "ID2"}, "Name", "John")
    untouched = drain(table)
    assert totals(untouched) == {"records": 1, "writes": 0, "superseded": 0, "malformed": 0}
    assert get(table, Id="ID2") == {"Id": "ID2", "Email": "john@gmail.com", "IsPersonalEmail": True, "Name": "John"}


def test_a_delete_that_lands_before_the_late_insert_is_processed_stays_deleted(make_table, invoker, stream_records):
    table = make_table()
    put(table, Id="gone", Email="someone@gmail.com")
    [insert] = stream_records(table)
    table.client.delete_item(TableName=table.name, Key=to_wire({"Id": "gone"}))
    seen = len(invoker.collector.summaries)

    assert invoker(lambda_event([insert])) == {"batchItemFailures": []}

    assert get(table, Id="gone") is None
    [summary] = invoker.collector.summaries[seen:]
    assert summary["superseded"] == 1 and summary["writes"] == 0


def test_clearing_the_flag_of_a_deleted_item_does_not_bring_it_back(make_table, invoker, stream_records):
    table = make_table()
    put(table, Id="gone", IsPersonalEmail=True)
    [insert] = stream_records(table)
    table.client.delete_item(TableName=table.name, Key=to_wire({"Id": "gone"}))
    seen = len(invoker.collector.summaries)

    invoker(lambda_event([insert]))

    assert get(table, Id="gone") is None, "a write without its existence condition recreated the item"
    [summary] = invoker.collector.summaries[seen:]
    assert summary["superseded"] == 1


def test_a_stale_email_is_refused_and_counted_as_superseded(make_table, invoker, stream_records, drain):
    table = make_table()
    put(table, Id="u", Email="old@example.com")
    [insert] = stream_records(table)
    set_attribute(table, {"Id": "u"}, "Email", "new@gmail.com")
    seen = len(invoker.collector.summaries)

    invoker(lambda_event([insert]))

    assert "IsPersonalEmail" not in get(table, Id="u"), "a stale value was stamped"
    [summary] = invoker.collector.summaries[seen:]
    assert summary["superseded"] == 1
    drain(table)
    assert get(table, Id="u")["IsPersonalEmail"] is True


@pytest.mark.parametrize(
    ("keys", "item_keys"),
    [
        ((("Tenant", "S"), ("Seq", "N")), [{"Tenant": "t1", "Seq": 1}, {"Tenant": "t1", "Seq": 2}]),
        ((("UserNumber", "N"),), [{"UserNumber": 7}, {"UserNumber": Decimal("12345678901234567890")}]),
        ((("Blob", "B"),), [{"Blob": Binary(b"\x00\x01")}, {"Blob": Binary(b"\xff")}]),
    ],
    ids=["hash+range", "numeric", "binary"],
)
def test_any_key_schema(make_table, drain, keys, item_keys):
    table = make_table(keys=keys)
    for key, email in zip(item_keys, ["a@hotmail.com", "b@example.org"], strict=True):
        put(table, **key, Email=email)
    drain(table)
    assert get(table, **item_keys[0])["IsPersonalEmail"] is True
    assert get(table, **item_keys[1])["IsPersonalEmail"] is False


def test_email_removed_or_of_another_type_leaves_no_flag(make_table, drain):
    table = make_table()
    put(table, Id="removed", Email="x@gmail.com")
    put(table, Id="number", Email="y@gmail.com")
    put(table, Id="null", Email=None, IsPersonalEmail=True)
    drain(table)
    table.client.update_item(TableName=table.name, Key=to_wire({"Id": "removed"}), UpdateExpression="REMOVE Email")
    set_attribute(table, {"Id": "number"}, "Email", Decimal(5))
    drain(table)
    for item_id in ("removed", "number", "null"):
        assert "IsPersonalEmail" not in get(table, Id=item_id)


def test_a_hand_set_wrong_flag_is_corrected(make_table, drain):
    table = make_table()
    put(table, Id="u", Email="x@gmail.com", IsPersonalEmail=False)
    drain(table)
    assert get(table, Id="u")["IsPersonalEmail"] is True


def test_malformed_record_in_the_middle_of_a_batch(make_table, invoker, stream_records, log_sink):
    table = make_table()
    emails = ["first.person@gmail.com", "second.person@example.com", "third.person@outlook.com"]
    for number, email in enumerate(emails):
        put(table, Id=f"private-{number}@example.net", Email=email)
    records = stream_records(table)
    broken = json.loads(json.dumps(records[1]))
    broken["dynamodb"]["Keys"] = {"Id": {"NOPE": "x"}}
    seen = len(invoker.collector.summaries)

    response = invoker(lambda_event([records[0], broken, records[2]]))

    assert response == {"batchItemFailures": []}
    assert get(table, Id="private-0@example.net")["IsPersonalEmail"] is True
    assert get(table, Id="private-2@example.net")["IsPersonalEmail"] is True
    [summary] = invoker.collector.summaries[seen:]
    assert summary["malformed"] == 1 and summary["writes"] == 2
    lines = log_sink.records()
    warning = next(line for line in lines if line["message"] == "malformed record skipped")
    assert warning["sequence_number"] == broken["dynamodb"]["SequenceNumber"]
    everything = log_sink.getvalue()
    for value in [*emails, "private-0@example.net", "example.net", "gmail", "@"]:
        assert value not in everything, f"{value!r} leaked into the logs"


@pytest.mark.parametrize("view_type", ["NEW_AND_OLD_IMAGES", "KEYS_ONLY"])
def test_a_key_that_does_not_fit_the_table_is_rejected_and_the_shard_goes_on(make_table, invoker, view_type):
    table = make_table(view_type=view_type)
    good = StreamEventFactory(table_name=table.name, view_type=StreamViewType(view_type))
    alien = StreamEventFactory(table_name=table.name, key_names=("Tenant", "Seq"), view_type=StreamViewType(view_type))
    put(table, Id="a", Email="a@gmail.com")
    put(table, Id="b", Email="b@example.com")
    bad = alien.insert({"Tenant": "t", "Seq": 1, "Email": "t@gmail.com"})
    event = lambda_event(
        [good.insert({"Id": "a", "Email": "a@gmail.com"}), bad, good.insert({"Id": "b", "Email": "b@example.com"})]
    )
    seen = len(invoker.collector.summaries)

    assert invoker(event) == {"batchItemFailures": []}

    assert get(table, Id="a")["IsPersonalEmail"] is True
    assert get(table, Id="b")["IsPersonalEmail"] is False
    [summary] = invoker.collector.summaries[seen:]
    assert (summary["rejected"], summary["failed"], summary["writes"]) == (1, 0, 2)
    assert summary["rejected_sequence_numbers"] == [bad["dynamodb"]["SequenceNumber"]]


def test_factory_events_through_the_chalice_client(make_table, invoker):
    """Records the factory builds (every view type that carries a new image) are decided like real ones."""
    table = make_table()
    factory = StreamEventFactory(table_name=table.name)
    put(table, Id="a", Email="a@gmail.com")
    put(table, Id="b", Email="b@example.com", IsPersonalEmail=False)
    event = factory.event(
        factory.insert({"Id": "a", "Email": "a@gmail.com"}),
        factory.insert({"Id": "b", "Email": "b@example.com", "IsPersonalEmail": False}),
        factory.remove({"Id": "zzz", "Email": "z@gmail.com"}),
    )
    seen = len(invoker.collector.summaries)
    assert invoker(event) == {"batchItemFailures": []}
    [summary] = invoker.collector.summaries[seen:]
    assert (summary["writes"], summary["already_correct"], summary["records"]) == (1, 1, 3)
    assert get(table, Id="a")["IsPersonalEmail"] is True


@pytest.mark.parametrize("view_type", ["KEYS_ONLY", "OLD_IMAGE"])
def test_streams_without_new_images_read_the_current_items(make_table, drain, view_type):
    table = make_table(view_type=view_type)
    put(table, Id="p", Email="p@gmail.com")
    put(table, Id="w", Email="w@example.com")
    put(table, Id="gone", Email="g@gmail.com")
    table.client.delete_item(TableName=table.name, Key=to_wire({"Id": "gone"}))
    summaries = drain(table)
    assert get(table, Id="p")["IsPersonalEmail"] is True
    assert get(table, Id="w")["IsPersonalEmail"] is False
    assert get(table, Id="gone") is None
    assert sum(s["writes"] for s in summaries) == 2


def inject_update_failures(processor, failing_ids):
    """Make the writes of the given Ids fail with an InternalServerError on every try, before they reach the engine."""

    def code_for(statement):
        return (
            "InternalServerError" if any({"S": item_id} in statement["Parameters"] for item_id in failing_ids) else None
        )

    return fail_statements(processor.gateway.client, code_for)


def failing_batch(table):
    # Sequence numbers 800, 900, 1000, 1100: the failed ones (900 to 1100) sort differently as strings ("1000" first)
    # than as numbers, as real sequence numbers of different lengths do.
    factory = StreamEventFactory(table_name=table.name, first_sequence_number=800)
    for item_id, email in [("ok", "ok@gmail.com"), ("bad1", "b1@gmail.com"), ("bad2", "b2@gmail.com")]:
        put(table, Id=item_id, Email=email)
    records = [
        factory.insert({"Id": "ok", "Email": "ok@gmail.com"}),
        factory.insert({"Id": "bad2", "Email": "b2@example.com"}),
        factory.insert({"Id": "bad1", "Email": "b1@gmail.com"}),
        factory.modify({"Id": "bad2", "Email": "b2@example.com"}, {"Id": "bad2", "Email": "b2@gmail.com"}),
    ]
    return factory.event(*records), records


def test_partial_failure_names_the_lowest_failed_sequence_number(make_table, stage_invoker):
    reporting = stage_invoker(REPORT_BATCH_ITEM_FAILURES="true")
    table = make_table()
    event, records = failing_batch(table)
    processor = processor_for(reporting.settings)
    restore = inject_update_failures(processor, {"bad1", "bad2"})
    try:
        response = reporting(event)
    finally:
        restore()
    # bad2's first record (the second of the batch, "900") is numerically the lowest among the failed items' records.
    assert [r["dynamodb"]["SequenceNumber"] for r in records] == ["800", "900", "1000", "1100"]
    assert response == {"batchItemFailures": [{"itemIdentifier": "900"}]}
    assert get(table, Id="ok")["IsPersonalEmail"] is True
    assert "IsPersonalEmail" not in get(table, Id="bad1")


def test_without_partial_failure_reporting_the_handler_raises(make_table, invoker):
    table = make_table()
    event, _ = failing_batch(table)
    processor = processor_for(invoker.settings)
    restore = inject_update_failures(processor, {"bad1"})
    try:
        with pytest.raises(BatchFailed, match="REPORT_BATCH_ITEM_FAILURES"):
            invoker(event)
    finally:
        restore()
    assert get(table, Id="ok")["IsPersonalEmail"] is True


def test_metrics_are_emitted_in_embedded_metric_format(make_table, project, capsys):
    table = make_table()
    factory = StreamEventFactory(table_name=table.name)
    put(table, Id="m", Email="m@gmail.com")
    capsys.readouterr()
    Client(app, stage_name=STAGE, project_dir=str(project)).lambda_.invoke(
        FUNCTION_NAME, factory.event(factory.insert({"Id": "m", "Email": "m@gmail.com"}))
    )
    [emf] = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    [directive] = emf["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "EmailChecker"
    assert {m["Name"] for m in directive["Metrics"]} >= {"Records", "WritesApplied", "Superseded", "Failed"}
    assert emf["Records"] == [1.0] and emf["WritesApplied"] == [1.0] and emf["Failed"] == [0.0]
    # Each stage's metrics stand apart: a dev stage's failures never land in prod's alarms.
    assert ["service", "stage"] in [sorted(d) for d in directive["Dimensions"]]
    assert emf["stage"] == Settings.from_environ(stage_environment(STAGE, FUNCTION_NAME, project)).stage == STAGE


def test_a_summary_line_lists_at_most_twenty_sequence_numbers_and_counts_them_all(make_table, invoker, log_sink):
    table = make_table()
    factory = StreamEventFactory(table_name=table.name)
    broken = [factory.insert({"Id": f"m{i}", "Email": "m@gmail.com"}) for i in range(30)]
    for record in broken:
        record["eventName"] = "UPSERT"
    seen = len(invoker.collector.summaries)

    invoker(factory.event(*broken))

    [summary] = invoker.collector.summaries[seen:]
    assert summary["malformed"] == 30
    assert summary["malformed_sequence_numbers"] == [r["dynamodb"]["SequenceNumber"] for r in broken[:20]]
