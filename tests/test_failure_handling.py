"""The mapping's filter on real stream records, and apply-failure-handling's waits (IAM propagation, mapping update)."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from localdev.mapping import RecordFilter
from tools import failure_handling, merge_template

UUID = "6b7c7f7e-0000-4000-8000-000000000000"
QUEUE_ARN = "arn:aws:sqs:eu-west-1:123456789012:email-checker-dev-stream-failures"
PROPAGATING = "The provided execution role does not have permissions to call SendMessage on SQS"


@pytest.mark.parametrize("view_type", ["NEW_IMAGE", "NEW_AND_OLD_IMAGES"])
@pytest.mark.parametrize("keys", [(("Id", "S"),), (("Id", "N"), ("At", "B"))], ids=["hash-S", "hash-N-range-B"])
def test_the_filter_passes_inserts_and_modifies_and_drops_removes(make_table, stream_records, keys, view_type):
    table = make_table(keys=keys, view_type=view_type)
    key = {"Id": {"S": "a@example.com"}} if len(keys) == 1 else {"Id": {"N": "7"}, "At": {"B": b"\x01"}}
    table.client.put_item(TableName=table.name, Item={**key, "Email": {"S": "a@gmail.com"}})
    table.client.update_item(
        TableName=table.name, Key=key, UpdateExpression="SET Email = :e", ExpressionAttributeValues={":e": {"S": "b"}}
    )
    table.client.delete_item(TableName=table.name, Key=key)
    description = table.client.describe_table(TableName=table.name)["Table"]
    criteria = failure_handling.stream_filter(description)
    [rule] = criteria["Filters"]
    assert set(json.loads(rule["Pattern"])) == {"dynamodb"}  # the one key Lambda's DynamoDB filtering page allows
    records = stream_records(table)
    assert [r["eventName"] for r in records] == ["INSERT", "MODIFY", "REMOVE"]
    # Evaluated by the local mapping's maintained EventBridge matcher, on the records as Lambda's JSON has them.
    assert [RecordFilter(criteria).matches(record) for record in records] == [True, True, False]


@pytest.mark.parametrize("view_type", ["KEYS_ONLY", "OLD_IMAGE"])
def test_no_filter_on_a_stream_without_new_images(view_type):
    table = {
        "KeySchema": [{"AttributeName": "Id", "KeyType": "HASH"}],
        "AttributeDefinitions": [{"AttributeName": "Id", "AttributeType": "S"}],
        "StreamSpecification": {"StreamEnabled": True, "StreamViewType": view_type},
    }
    # Every INSERT and MODIFY would fail the pattern: Lambda would checkpoint them unseen.
    assert failure_handling.stream_filter(table) is None
    assert failure_handling.mapping_failure_handling(QUEUE_ARN, None)["FilterCriteria"] == {}
    with pytest.raises(ValueError, match="NewImage"):
        merge_template.mapping_filter(table)


def test_the_numbers_leave_the_reconciler_hours_of_stream():
    age = failure_handling.MAXIMUM_RECORD_AGE_IN_SECONDS
    assert failure_handling.STREAM_RETENTION_SECONDS - age >= 12 * 3600
    # One poison record, every attempt running into the 60 s timeout: bisecting 100 records (free) then the retries
    # of the record alone end before the record age does.
    bisect_invocations = 2 * 7
    assert (bisect_invocations + 1 + failure_handling.MAXIMUM_RETRY_ATTEMPTS) * 60 < age


def lambda_stub():
    client = boto3.session.Session().client("lambda", region_name="eu-west-1")
    return client, Stubber(client)


def test_update_mapping_waits_for_the_role_to_propagate():
    client, stubber = lambda_stub()
    settings = failure_handling.mapping_failure_handling(QUEUE_ARN, None)
    for _ in range(2):
        stubber.add_client_error("update_event_source_mapping", "InvalidParameterValueException", PROPAGATING)
    stubber.add_response("update_event_source_mapping", {"UUID": UUID}, {"UUID": UUID, **settings})
    slept = []
    with stubber:
        assert failure_handling.update_mapping(client, UUID, settings, sleep=slept.append)["UUID"] == UUID
    stubber.assert_no_pending_responses()
    assert slept == [2, 4]


def test_update_mapping_gives_up_after_its_bounded_delays_and_never_retries_other_errors():
    client, stubber = lambda_stub()
    settings = failure_handling.mapping_failure_handling(QUEUE_ARN, None)
    for _ in range(3):
        stubber.add_client_error("update_event_source_mapping", "InvalidParameterValueException", PROPAGATING)
    stubber.add_client_error("update_event_source_mapping", "InvalidParameterValueException", "BatchSize too big")
    slept = []
    with stubber, pytest.raises(ClientError, match="SendMessage"):
        failure_handling.update_mapping(client, UUID, settings, sleep=slept.append, delays=(1, 2))
    assert slept == [1, 2]
    with stubber, pytest.raises(ClientError, match="BatchSize"):
        failure_handling.update_mapping(client, UUID, settings, sleep=slept.append, delays=(1, 2))
    assert slept == [1, 2]  # not a propagation error: raised at once


def test_the_function_switches_only_once_the_mapping_reports_partial_failures():
    client, stubber = lambda_stub()
    stubber.add_response("get_event_source_mapping", {"UUID": UUID, "State": "Updating"})
    stubber.add_response("get_event_source_mapping", {"UUID": UUID, "State": "Enabled"})
    ready = {"UUID": UUID, "State": "Enabled", "FunctionResponseTypes": ["ReportBatchItemFailures"]}
    stubber.add_response("get_event_source_mapping", ready)
    slept = []
    with stubber:
        mapping = failure_handling.wait_for_partial_failures(client, UUID, sleep=slept.append, clock=lambda: 0.0)
    assert mapping["State"] == "Enabled" and slept == [5, 5]


def test_waiting_for_the_mapping_ends_with_one_clear_line():
    client, stubber = lambda_stub()
    for _ in range(3):
        stubber.add_response("get_event_source_mapping", {"UUID": UUID, "State": "Updating"})
    ticks = iter([0.0, 100.0, 200.0, 301.0])
    with stubber, pytest.raises(ValueError) as raised:
        failure_handling.wait_for_partial_failures(client, UUID, sleep=lambda _: None, clock=lambda: next(ticks))
    message = str(raised.value)
    assert "\n" not in message and UUID in message and "Updating" in message and "300 s" in message


def test_update_mapping_waits_for_the_role_to_reach_the_bucket_too():
    client, stubber = lambda_stub()
    settings = failure_handling.mapping_failure_handling("arn:aws:s3:::b", None)
    stubber.add_client_error(
        "update_event_source_mapping",
        "InvalidParameterValueException",
        "The provided execution role does not have permissions to call PutObject on S3",
    )
    stubber.add_response("update_event_source_mapping", {"UUID": UUID}, {"UUID": UUID, **settings})
    slept = []
    with stubber:
        assert failure_handling.update_mapping(client, UUID, settings, sleep=slept.append)["UUID"] == UUID
    assert slept == [2]


def test_the_backfill_async_invocations_end_in_its_failure_queue_within_an_hour():
    config = failure_handling.backfill_invoke_config("arn:aws:sqs:eu-west-1:123456789012:q")
    assert config["DestinationConfig"] == {"OnFailure": {"Destination": "arn:aws:sqs:eu-west-1:123456789012:q"}}
    # Lambda's bounds: 0-2 retries, 60 s to 6 h of age; the queue keeps a failed event longer than Lambda keeps trying.
    assert 0 <= config["MaximumRetryAttempts"] <= 2
    assert 60 <= config["MaximumEventAgeInSeconds"] <= 6 * 3600
    assert config["MaximumEventAgeInSeconds"] < failure_handling.BACKFILL_FAILURE_RETENTION_SECONDS
    # The same keys put_function_event_invoke_config takes (botocore's model says so).
    import botocore.session

    model = botocore.session.get_session().get_service_model("lambda")
    members = model.operation_model("PutFunctionEventInvokeConfig").input_shape.members
    assert set(config) <= set(members)
