"""The events the local tools build are exactly Lambda's JSON: binary values as base64 text, times as numbers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from boto3.dynamodb.types import Binary

from localdev.events import StreamEventFactory, lambda_record, to_event_image

ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/Users/stream/2026-01-01T00:00:00.000"


def test_a_get_records_record_becomes_lambdas_json():
    # As boto3's dynamodbstreams client returns it: bytes for binary values, a datetime for the creation time.
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    raw = {
        "eventID": "e1",
        "eventName": "INSERT",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "ApproximateCreationDateTime": created,
            "Keys": {"Blob": {"B": b"\x00\xff"}},
            "NewImage": {
                "Blob": {"B": b"\x00\xff"},
                "Set": {"BS": [b"\x01", b"\x02"]},
                "Nested": {"M": {"raw": {"B": b"hi"}, "list": {"L": [{"B": b"\xfe"}, {"S": "s"}]}}},
                "Number": {"N": "5"},
            },
            "SequenceNumber": "100",
            "SizeBytes": 40,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
    }

    record = lambda_record(raw, ARN)

    assert json.loads(json.dumps(record)) == record
    body = record["dynamodb"]
    assert body["ApproximateCreationDateTime"] == int(created.timestamp())
    assert body["Keys"] == {"Blob": {"B": "AP8="}}
    assert body["NewImage"] == {
        "Blob": {"B": "AP8="},
        "Set": {"BS": ["AQ==", "Ag=="]},
        "Nested": {"M": {"raw": {"B": "aGk="}, "list": {"L": [{"B": "/g=="}, {"S": "s"}]}}},
        "Number": {"N": "5"},
    }
    assert record["eventSourceARN"] == ARN and raw["dynamodb"]["Keys"] == {"Blob": {"B": b"\x00\xff"}}


def test_the_factory_builds_json_records_for_every_type():
    factory = StreamEventFactory(key_names=("Pk", "Sk"))
    item = {"Pk": Binary(b"\x00"), "Sk": Decimal(7), "Email": {"raw": b"\x01"}, "Tags": {b"a", b"b"}, "L": [b"c"]}

    record = factory.insert(item)

    assert json.loads(json.dumps(record)) == record
    assert record["dynamodb"]["Keys"] == {"Pk": {"B": "AA=="}, "Sk": {"N": "7"}}
    image = record["dynamodb"]["NewImage"]
    assert image["Email"] == {"M": {"raw": {"B": "AQ=="}}}
    assert sorted(image["Tags"]["BS"]) == ["YQ==", "Yg=="]
    assert image["L"] == {"L": [{"B": "Yw=="}]}
    assert to_event_image(item) == image


def test_the_invoker_refuses_an_event_that_is_not_json(invoker):
    seen = len(invoker.collector.summaries)
    with pytest.raises(TypeError):
        invoker({"Records": [{"dynamodb": {"Keys": {"Blob": {"B": b"\x00"}}}}]})
    assert len(invoker.collector.summaries) == seen, "the handler ran on an event Lambda could not have sent"
