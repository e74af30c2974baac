"""The mapping's filter on real stream records, and apply-failure-handling's waits (IAM propagation, mapping update)."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from localdev.mapping import RecordFilter
from tests.projects import copy_project, named_stages
from tools import failure_handling

UUID = "6b7c7f7e-0000-4000-8000-000000000000"
QUEUE_ARN = "arn:aws:sqs:eu-west-1:123456789012:email-checker-dev-stream-failures"
PROPAGATING = "The provided execution role does not have permissions to call SendMessage on SQS"

# The tests' own stages (tests/projects.py), named as the expectations below spell them.
STAGES = ("dev", "prod")


@pytest.fixture
def project_copy(tmp_path):
    """This module's own project, with the stages its expectations name (STAGES)."""
    return copy_project(tmp_path / "project", named_stages(*STAGES))


RECORDED_FILTER = Path(__file__).parent / "data" / "filters" / "c02_ddb_filter_content_or_filter.json"


def test_the_filter_is_the_one_real_aws_accepted_and_matched():
    recorded = json.loads(RECORDED_FILTER.read_text())
    [sent] = recorded["setup"]["FilterCriteria_sent"]["Filters"]
    assert failure_handling.filter_criteria() == {"Filters": [{"Pattern": sent["Pattern"]}]}
    accepted = recorded["recorded"]["create_event_source_mapping_response"]["FilterCriteria"]["Filters"]
    assert [rule["Pattern"] for rule in accepted] == [failure_handling.FILTER_PATTERN]
    # The records Lambda delivered through that filter: the local mapping's matcher passes each one.
    delivered = [r for event in recorded["recorded"]["lambda-multiple-log-events"] for r in event["Records"]]
    assert [r["eventName"] for r in delivered] == ["INSERT", "MODIFY"]
    matcher = RecordFilter(failure_handling.filter_criteria())
    assert all(matcher.matches(record) for record in delivered)


@pytest.mark.parametrize("view_type", ["KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES"])
@pytest.mark.parametrize("keys", [(("Id", "S"),), (("tenant", "S"), ("member_no", "N"))], ids=["hash-S", "S-N"])
def test_the_filter_passes_inserts_and_modifies_and_drops_removes(make_table, stream_records, keys, view_type):
    table = make_table(keys=keys, view_type=view_type)
    key = {"Id": {"S": "a@example.com"}} if len(keys) == 1 else {"tenant": {"S": "t"}, "member_no": {"N": "7"}}
    table.client.put_item(TableName=table.name, Item={**key, "Email": {"S": "a@gmail.com"}})
    table.client.update_item(
        TableName=table.name, Key=key, UpdateExpression="SET Email = :e", ExpressionAttributeValues={":e": {"S": "b"}}
    )
    table.client.delete_item(TableName=table.name, Key=key)
    records = stream_records(table)
    assert [r["eventName"] for r in records] == ["INSERT", "MODIFY", "REMOVE"]
    # Evaluated by the local mapping's maintained EventBridge matcher, on the records as Lambda's JSON has them.
    matcher = RecordFilter(failure_handling.mapping_failure_handling(QUEUE_ARN)["FilterCriteria"])
    assert [matcher.matches(record) for record in records] == [True, True, False]


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
    settings = failure_handling.mapping_failure_handling(QUEUE_ARN)
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
    settings = failure_handling.mapping_failure_handling(QUEUE_ARN)
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


def test_the_deploy_guard_refuses_a_merge_template_with_another_filter(project_copy):
    from tools.deploy_guard import deploy_refusal

    assert failure_handling.filter_refusal(project_copy) is None
    path = project_copy / "deploy" / "merge-template.json"
    template = json.loads(path.read_text())
    [event] = template["Resources"]["SyncIsPersonalEmail"]["Properties"]["Events"].values()
    old = {"dynamodb": {"NewImage": {"Id": {"S": [{"exists": True}]}}}}
    event["Properties"]["FilterCriteria"] = {"Filters": [{"Pattern": json.dumps(old)}]}
    path.write_text(json.dumps(template))
    refusal = deploy_refusal(
        project_copy, "dev", "arn:aws:dynamodb:eu-west-1:123456789012:table/Users/stream/2026-01-01T00:00:00.000"
    )
    assert refusal.startswith("deploy/merge-template.json's stream filter is not")
    assert "python -m tools.stage merge-template" in refusal


def test_update_mapping_waits_for_the_role_to_reach_the_bucket_too():
    client, stubber = lambda_stub()
    settings = failure_handling.mapping_failure_handling("arn:aws:s3:::b")
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


def test_update_mapping_waits_for_a_mapping_still_being_created():
    """Right after `chalice deploy` made it, a mapping may still be Creating: Lambda answers ResourceInUseException."""
    client, stubber = lambda_stub()
    stubber.add_client_error(
        "update_event_source_mapping",
        "ResourceInUseException",
        "Cannot update the event source mapping because it is in use.",
    )
    stubber.add_response(
        "update_event_source_mapping", {"UUID": UUID}, {"UUID": UUID, **failure_handling.RECONCILER_MAPPING}
    )
    slept = []
    with stubber:
        updated = failure_handling.update_mapping(client, UUID, failure_handling.RECONCILER_MAPPING, sleep=slept.append)
    assert updated["UUID"] == UUID and slept == [2]
    stubber.assert_no_pending_responses()
