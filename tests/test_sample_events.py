"""AWS's own sample DynamoDB stream events (tests/events/, see SOURCES.md) through `chalice.test.Client`, against
DynamoDB Local tables of the names and key schema the events give: as they are, and with an `Email` put in."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import pytest
from boto3.dynamodb.types import TypeDeserializer

EVENTS = Path(__file__).resolve().parent / "events"
# The defaults aws/aws-sam-cli's event-mapping.json gives `sam local generate-event dynamodb update` (SOURCES.md).
SAM_DEFAULTS = {
    "region": "us-east-1",
    "partition": "aws",
    "account_id": "123456789012",
    "table": "ExampleTableWithStream",
}
# Powertools' sample names no table (its eventSourceARN is "eventsource_arn"): its Email variant gets this one.
POWERTOOLS_ARN = "arn:aws:dynamodb:us-west-2:123456789012:table/PowertoolsSample/stream/2023-09-06T00:00:00.000"
KEYS = (("Id", "N"),)
_deserialize = TypeDeserializer().deserialize


def load(name: str) -> dict:
    text = (EVENTS / name).read_text()
    if name.startswith("sam-cli-"):
        for tag, value in SAM_DEFAULTS.items():
            text = text.replace("{{{" + tag + "}}}", value)
    return json.loads(text)


def table_of(arn: str) -> str | None:
    """The table a stream ARN names (arn:PARTITION:dynamodb:REGION:ACCOUNT:table/NAME/stream/LABEL), or None."""
    parts = arn.split(":", 5)
    resource = parts[5].split("/") if len(parts) == 6 and parts[0] == "arn" else []
    return resource[1] if len(resource) == 4 and resource[0] == "table" and resource[2] == "stream" else None


# What the handler must report for each file as it is: records by event name, malformed records, items, deletes.
AS_IS = {
    "sam-cli-DynamoDBUpdate.json": ({"INSERT": 1, "MODIFY": 1, "REMOVE": 1}, 0, 1, 1),
    "powertools-dynamoStreamEvent.json": ({}, 2, 0, 0),  # eventSourceARN is not an ARN: no table to write to
    "java-tests-dynamo_event.json": ({"INSERT": 1, "MODIFY": 1, "REMOVE": 1}, 0, 1, 1),
    "java-events-dynamodb_event.json": ({"INSERT": 2, "MODIFY": 1, "REMOVE": 1}, 0, 2, 1),
}
# The e-mail each (Id, eventName) gets in the Email variant; the last one of an item is what its table holds.
EMAILS = {
    ("101", "INSERT"): "first.owner@example.com",
    ("101", "MODIFY"): "second.owner@gmail.com",
    ("147", "INSERT"): "int.test@example.org",
}
FLAGS = {"101": True, "147": False}


@pytest.fixture
def sample_tables(make_table):
    """The tables an event's records name, created empty with the samples' key schema (a numeric `Id`)."""

    def make(event: dict) -> dict:
        names = {table_of(record["eventSourceARN"]) for record in event["Records"]} - {None}
        return {name: make_table(keys=KEYS, stream=False, name=name) for name in sorted(names)}

    return make


def invoke(invoker, event: dict) -> dict:
    seen = len(invoker.collector.summaries)
    assert invoker(event) == {"batchItemFailures": []}
    [summary] = invoker.collector.summaries[seen:]
    return summary


def items(table) -> list[dict]:
    found = table.client.scan(TableName=table.name, ConsistentRead=True)["Items"]
    return [{name: _deserialize(value) for name, value in item.items()} for item in found]


@pytest.mark.parametrize("name", sorted(AS_IS))
def test_a_sample_event_as_it_is(name, invoker, sample_tables):
    event = load(name)
    tables = sample_tables(event)
    by_event, malformed, item_count, deleted = AS_IS[name]

    summary = invoke(invoker, event)

    assert summary["records_by_event"] == by_event
    assert (summary["malformed"], summary["items"], summary["deleted"]) == (malformed, item_count, deleted)
    # No record carries an Email or a flag: nothing to write, and the handler never creates an item.
    assert (summary["writes"], summary["failed"], summary["rejected"], summary["superseded"]) == (0, 0, 0, 0)
    assert all(items(table) == [] for table in tables.values())


def with_emails(event: dict) -> dict:
    """The sample with an `Email` in every new image (powertools' records pointed at a real ARN)."""
    variant = copy.deepcopy(event)
    for record in variant["Records"]:
        if table_of(record["eventSourceARN"]) is None:
            record["eventSourceARN"] = POWERTOOLS_ARN
        body = record["dynamodb"]
        if "NewImage" in body:
            body["NewImage"]["Email"] = {"S": EMAILS[(body["Keys"]["Id"]["N"], record["eventName"])]}
    return variant


@pytest.mark.parametrize("name", sorted(AS_IS))
def test_a_sample_event_with_an_email_makes_the_handler_write(name, invoker, sample_tables):
    event = with_emails(load(name))
    tables = sample_tables(event)
    changes = [r for r in event["Records"] if r["eventName"] != "REMOVE"]
    removes = [r for r in event["Records"] if r["eventName"] == "REMOVE"]
    # The items as their last change left them (a REMOVE comes in a later batch, so they exist when it is handled).
    latest = {(r["eventSourceARN"], r["dynamodb"]["Keys"]["Id"]["N"]): r["dynamodb"]["NewImage"] for r in changes}
    for (arn, _), image in latest.items():
        item = {"Id": image["Id"], "Email": image["Email"], "Message": image.get("Message", {"S": "-"})}
        tables[table_of(arn)].client.put_item(TableName=table_of(arn), Item=item)

    summary = invoke(invoker, {"Records": changes})

    assert summary["records_by_event"] == dict(Counter(r["eventName"] for r in changes))
    assert (summary["malformed"], summary["failed"], summary["superseded"]) == (0, 0, 0)
    assert summary["writes"] == summary["flags_set"] == len(latest)
    for (arn, item_id), image in latest.items():
        [item] = [i for i in items(tables[table_of(arn)]) if str(i["Id"]) == item_id]
        assert item["Email"] == image["Email"]["S"] and item["IsPersonalEmail"] is FLAGS[item_id]

    if removes:
        after_remove = invoke(invoker, {"Records": removes})
        assert (after_remove["deleted"], after_remove["writes"], after_remove["malformed"]) == (1, 0, 0)
        # The handler never deletes: the table still holds the item with its flag.
        assert [i["IsPersonalEmail"] for t in tables.values() for i in items(t) if str(i["Id"]) == "101"] == [True]


def _shape(value):
    if isinstance(value, dict):
        return {key: _shape(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [_shape(inner) for inner in value[:1]]
    return "number" if isinstance(value, int | float) and not isinstance(value, bool) else type(value).__name__


def test_the_local_mapping_delivers_records_shaped_like_the_samples(make_table, stream_records):
    """A record from a real stream, as the local mapping hands it over, has the fields and JSON types of AWS's
    sample (binary values as base64 text, the creation time a number)."""
    [sample] = [r for r in load("java-tests-dynamo_event.json")["Records"] if r["eventName"] == "INSERT"]
    table = make_table(keys=KEYS)
    table.client.put_item(
        TableName=table.name,
        Item={"Id": {"N": "101"}, "Message": {"S": "New item!"}, "Blob": {"B": b"\x00\xff"}, "Set": {"BS": [b"\x01"]}},
    )
    [ours] = stream_records(table)

    assert json.loads(json.dumps(ours)) == ours
    expected = _shape({key: value for key, value in sample.items() if key != "userIdentity"})
    expected["dynamodb"]["NewImage"].update(Blob={"B": "str"}, Set={"BS": ["str"]})
    assert _shape(ours) == expected
    assert ours["dynamodb"]["NewImage"]["Blob"] == {"B": "AP8="}
    assert ours["dynamodb"]["NewImage"]["Set"] == {"BS": ["AQ=="]}
