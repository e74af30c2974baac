"""The adapter's behaviour on responses a real engine won't give on demand: partial reads, a throttled request."""

from __future__ import annotations

import boto3
import pytest
from botocore.retries.standard import ExponentialBackoff
from botocore.stub import Stubber

from chalicelib import dynamodb
from chalicelib.budget import MAX_ATTEMPTS
from chalicelib.dynamodb import DynamoDBGateway, WriteOutcome, client_config
from chalicelib.planner import Action, Write
from chalicelib.records import DEFAULT_ATTRIBUTES, item_key
from localdev.events import to_wire
from tests.faults import dynamodb_error
from tests.test_handler import get, put

KEY_A = item_key("Users", to_wire({"Id": "a"}))
KEY_B = item_key("Users", to_wire({"Id": "b"}))


def stubbed_gateway():
    client = boto3.session.Session(region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x").client(
        "dynamodb"
    )
    return DynamoDBGateway(client, DEFAULT_ATTRIBUTES), Stubber(client)


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(dynamodb, "UNPROCESSED_BACKOFF_SECONDS", 0)


def test_unprocessed_keys_are_read_again():
    gateway, stub = stubbed_gateway()
    stub.add_response(
        "batch_get_item",
        {
            "Responses": {"Users": [to_wire({"Id": "a", "Email": "a@gmail.com"})]},
            "UnprocessedKeys": {"Users": {"Keys": [to_wire({"Id": "b"})]}},
        },
    )
    stub.add_response("batch_get_item", {"Responses": {"Users": []}, "UnprocessedKeys": {}})
    with stub:
        result = gateway.read_states([KEY_A, KEY_B])
    stub.assert_no_pending_responses()
    assert result.states[KEY_A].email == "a@gmail.com"
    assert result.states[KEY_B] is None  # processed on the second pass, not returned: no such item


def test_keys_still_unprocessed_after_every_pass_are_left_out_as_failed():
    gateway, stub = stubbed_gateway()
    for _ in range(dynamodb.UNPROCESSED_PASSES):
        stub.add_response(
            "batch_get_item", {"Responses": {}, "UnprocessedKeys": {"Users": {"Keys": [to_wire({"Id": "a"})]}}}
        )
    with stub:
        result = gateway.read_states([KEY_A])
    assert KEY_A not in result.states and result.rejected == []


def throttle_first(attempts: int):
    """A before-send hook: the first `attempts` requests are answered with a throttling error, as DynamoDB would."""
    calls = {"count": 0}

    def hook(request, **_):
        calls["count"] += 1
        if calls["count"] <= attempts:
            return dynamodb_error(request.url, 400, "ThrottlingException")
        return None

    return hook, calls


@pytest.mark.parametrize(("throttled", "outcome"), [(2, WriteOutcome.APPLIED), (99, WriteOutcome.FAILED)])
def test_throttling_is_retried_by_the_standard_retry_mode(engine, make_table, throttled, outcome, monkeypatch):
    # Keep the retry mode and attempt count, shorten the back-off so the test is quick.
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0.01)
    table = make_table()
    put(table, Id="a", Email="a@gmail.com")
    client = engine.client(config=client_config(max_pool_connections=4))
    hook, calls = throttle_first(throttled)
    client.meta.events.register("before-send.dynamodb.BatchExecuteStatement", hook)
    key = item_key(table.name, to_wire({"Id": "a"}))
    write = Write(key=key, action=Action.SET, flag=True, seen_email="a@gmail.com")

    assert DynamoDBGateway(client, DEFAULT_ATTRIBUTES).apply([write]) == [outcome]

    assert calls["count"] == (throttled + 1 if outcome is WriteOutcome.APPLIED else MAX_ATTEMPTS)
    assert ("IsPersonalEmail" in get(table, Id="a")) is (outcome is WriteOutcome.APPLIED)
