"""The sweep: one resumable, rate-limited pass at a time over the whole table (DynamoDB Local), its state one object
written only on its ETag (moto's S3, which checks If-Match and If-None-Match), and the reconciler's urgent request.

Settings are built here (never the committed config), with attribute names other than the defaults; the expected flag
comes from the domain list the test gives the stage (PERSONAL_DOMAINS_ONLY), not from the code's classifier."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import botocore.client
import botocore.exceptions
import pytest
from botocore.stub import Stubber

from chalicelib import runtime
from chalicelib.backfill import SegmentWorker
from chalicelib.config import Settings
from chalicelib.dynamodb import DynamoDBGateway
from chalicelib.reconciler import Outcome
from chalicelib.sweep import (
    BYTES_PER_READ_UNIT,
    MIN_BACKGROUND_READ_UNITS,
    STATE_KEY,
    StateStore,
    SweepConfig,
    Sweeper,
    SweepState,
    limits,
    table_facts,
)

EMAIL, FLAG = "mail", "is_personal"
PERSONAL = ("gmail.com", "outlook.com")
"""The stage's whole personal-domain list (PERSONAL_DOMAINS_ONLY): the oracle is membership in it."""
ON_FAILURE = Path(__file__).parent / "on_failure"
SCHEDULED_EVENT = {
    # EventBridge's scheduled event, as the EventBridge User Guide ("Amazon EventBridge events", scheduled events)
    # shows it; Lambda hands it to the function as is.
    "version": "0",
    "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "account": "123456789012",
    "time": "2026-12-06T12:00:00Z",
    "region": "us-east-1",
    "resources": ["arn:aws:events:us-east-1:123456789012:rule/email-checker-t-sweep_table-event"],
    "detail": {},
}


def expected_flag(email: str) -> bool:
    return email.rsplit("@", 1)[-1].lower() in PERSONAL


class LambdaContext:
    """What Lambda hands a function: its remaining time (a fixed budget here) and its name."""

    def __init__(self, budget_ms: int) -> None:
        self._budget_ms = budget_ms
        self.function_name = "email-checker-t-sweep_table"

    def get_remaining_time_in_millis(self) -> int:
        return self._budget_ms


@pytest.fixture
def bucket(emulator):
    s3 = emulator.client("s3")
    name = f"sweep-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def settings_for(table, bucket: str, **extra: str) -> Settings:
    return Settings.from_environ(stage_environ(table, bucket, **extra))


def fill(table, count: int, padding: int = 0, wrong_every: int = 3) -> dict[str, bool]:
    """`count` items, every `wrong_every`-th with the right flag and the rest wrong or missing; the expected flags."""
    expected = {}
    requests = []
    for number in range(count):
        key = f"user-{number:05d}"
        email = f"u{number}@{('gmail.com', 'example.org', 'Outlook.COM', 'notgmail.com')[number % 4]}"
        right = expected_flag(email)
        item = {"Id": {"S": key}, EMAIL: {"S": email}}
        if number % wrong_every == 0:
            item[FLAG] = {"BOOL": right}
        elif number % wrong_every == 1:
            item[FLAG] = {"BOOL": not right}
        if padding:
            item["padding"] = {"S": "x" * padding}
        expected[key] = right
        requests.append({"PutRequest": {"Item": item}})
    for start in range(0, len(requests), 25):
        table.client.batch_write_item(RequestItems={table.name: requests[start : start + 25]})
    return expected


def wrong_items(table, expected: dict[str, bool]) -> list[str]:
    wrong = []
    for page in table.client.get_paginator("scan").paginate(TableName=table.name, ConsistentRead=True):
        for item in page["Items"]:
            if item.get(FLAG) != {"BOOL": expected[item["Id"]["S"]]}:
                wrong.append(item["Id"]["S"])
    return wrong


def sweeper(engine, emulator, table, bucket: str, config: SweepConfig, hooks: dict[str, Any] | None = None):
    """A sweep on its own clients (so a test's hooks see only its own calls)."""
    client = engine.client()
    for event, hook in (hooks or {}).items():
        client.meta.events.register(event, hook)
    attributes = settings_for(table, bucket).attributes
    classify = runtime.classifier_for(settings_for(table, bucket)).is_personal_email

    def new_gateway() -> DynamoDBGateway:
        return DynamoDBGateway(client, attributes, max_concurrency=4)

    worker = SegmentWorker(client, new_gateway(), classify, new_gateway=new_gateway)
    return Sweeper(client, worker, StateStore(emulator.client("s3"), bucket), table.name, config)


def scanned_keys(counter: Counter) -> Any:
    """An after-call hook counting every item each Scan page returned, by key."""

    def hook(parsed: dict[str, Any], **_: Any) -> None:
        counter.update(item["Id"]["S"] for item in parsed.get("Items", []))

    return hook


def state_of(emulator, bucket: str) -> SweepState:
    return StateStore(emulator.client("s3"), bucket).load()[0]


@pytest.fixture
def lambda_environment(engine, emulator, monkeypatch):
    """The deployed functions' view: DynamoDB Local for the table, moto for S3 (and nothing else)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", emulator.endpoint)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "")
    calls: list[str] = []
    original = botocore.client.BaseClient._make_api_call

    def recording(self, operation_name, api_params):
        calls.append(f"{self.meta.service_model.service_name}:{operation_name}")
        return original(self, operation_name, api_params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    return calls


def environ_for(monkeypatch, settings_environ: dict[str, str]) -> None:
    for name, value in settings_environ.items():
        monkeypatch.setenv(name, value)


def stage_environ(table, bucket: str, **extra: str) -> dict[str, str]:
    return {
        "STAGE": "sweeptest",
        "STREAM_ARN": table.stream_arn,
        "FAILURE_BUCKET": bucket,
        "EMAIL_ATTRIBUTE": EMAIL,
        "FLAG_ATTRIBUTE": FLAG,
        "PERSONAL_DOMAINS_ONLY": ",".join(PERSONAL),
        **extra,
    }


def sqs_message(body: str) -> dict[str, Any]:
    """One SQS record as Lambda hands it to the reconciler."""
    return {
        "messageId": "4d2a1c3e",
        "receiptHandle": "handle",
        "body": body,
        "attributes": {"ApproximateReceiveCount": "1"},
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:email-checker-sweeptest-stream-failures",
    }


def pointer_for(table) -> str:
    """A recorded SQS on-failure record (a pointer, no payload) for the table's stream."""
    [path] = ON_FAILURE.glob("a01_*.json")
    body = json.loads(path.read_text())["body"]
    body["DDBStreamBatchInfo"]["streamArn"] = table.stream_arn
    return json.dumps(body)


def gone_object_notification(bucket: str) -> str:
    key = "aws/lambda/9e1c/shardId-00000001-ab/2026/12/04/2026-12-04T09.00.00-gone"
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2026-12-04T09:00:00.123Z",
        "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket}, "object": {"key": key, "size": 9}},
    }
    return json.dumps({"Records": [record]})


def run_scheduled(monkeypatch, environ: dict[str, str], budget_ms: int = 60_000) -> dict[str, Any]:
    import app

    environ_for(monkeypatch, environ)
    return app.sweep_table(SCHEDULED_EVENT, LambdaContext(budget_ms))


@pytest.mark.parametrize("message", ["pointer", "gone_object"])
def test_a_batch_whose_records_cant_be_had_is_finished_at_once_and_the_sweep_fixes_the_table(
    engine, emulator, make_table, bucket, lambda_environment, monkeypatch, message
):
    table = make_table()
    count = 3000 if message == "pointer" else 400
    expected = fill(table, count)
    assert wrong_items(table, expected)  # the oracle sees the damage first
    environ = stage_environ(table, bucket)
    environ_for(monkeypatch, environ)
    handler = runtime.reconciler_for(Settings.from_environ(environ))
    body = pointer_for(table) if message == "pointer" else gone_object_notification(bucket)
    report = handler.handle(sqs_message(body), lambda: 60_000)  # returns: the message is finished, nothing raised
    assert report.outcome is Outcome.SWEEP_REQUESTED
    assert not [call for call in lambda_environment if call.startswith("lambda:") or call.startswith("sqs:")]
    requested = state_of(emulator, bucket)
    assert requested.urgent and requested.urgent_requests == 1
    for _ in range(4):
        summary = run_scheduled(monkeypatch, environ)
        assert summary["mode"] == "urgent" or summary["passes_finished"] == 0
        if not wrong_items(table, expected):
            break
    assert wrong_items(table, expected) == []
    # The pass that covers the request (it started after the failure) finishes; then the sweep is background again.
    while state_of(emulator, bucket).urgent:
        run_scheduled(monkeypatch, environ)
    after = state_of(emulator, bucket)
    assert after.last_finished_at is not None and after.pass_number >= 2
    assert run_scheduled(monkeypatch, environ)["mode"] == "background"


def test_two_runs_at_once_one_advances_the_other_stops_and_no_item_is_skipped(engine, emulator, make_table, bucket):
    table = make_table()
    expected = fill(table, 300, wrong_every=2)
    config = SweepConfig(segments=1, page_items=40, margin_seconds=0.5)
    seen: Counter = Counter()
    second = sweeper(engine, emulator, table, bucket, config, {"after-call.dynamodb.Scan": scanned_keys(seen)})
    second_reports = []
    pages = {"first": 0}

    def take_over(parsed: dict[str, Any], **_: Any) -> None:
        scanned_keys(seen)(parsed)
        pages["first"] += 1
        if pages["first"] == 2:  # the first run has a page in hand: the second run starts now and takes the pass
            second_reports.append(second.run(lambda: 2_500))

    first = sweeper(engine, emulator, table, bucket, config, {"after-call.dynamodb.Scan": take_over})
    report = first.run(lambda: 60_000)
    assert report.outcome == "superseded" and pages["first"] == 2  # it stopped at its next write of the state
    [taken] = second_reports
    assert taken.outcome == "advanced" and taken.counts.pages >= 1
    # A run that read the state before the other's claim can't claim it: its conditional put fails.
    store = StateStore(emulator.client("s3"), bucket)
    state, etag = store.load()
    assert store.save(state, etag) is not None and store.save(state, etag) is None
    for _ in range(20):
        if state_of(emulator, bucket).pass_number > 1:
            break
        sweeper(engine, emulator, table, bucket, config, {"after-call.dynamodb.Scan": scanned_keys(seen)}).run(
            lambda: 60_000
        )
    assert set(seen) == set(expected)
    assert wrong_items(table, expected) == []


def test_a_run_killed_mid_page_skips_nothing_and_reads_at_most_that_page_again(engine, emulator, make_table, bucket):
    table = make_table()
    expected = fill(table, 250)
    config = SweepConfig(segments=1, page_items=30, margin_seconds=0.5)
    seen: Counter = Counter()
    pages = {"n": 0}

    class Killed(BaseException):
        """Lambda ending the invocation: nothing after it runs."""

    def killed_on_the_fourth_page(parsed: dict[str, Any], **_: Any) -> None:
        scanned_keys(seen)(parsed)
        pages["n"] += 1
        if pages["n"] == 4:
            raise Killed

    with pytest.raises(Killed):
        sweeper(engine, emulator, table, bucket, config, {"after-call.dynamodb.Scan": killed_on_the_fourth_page}).run(
            lambda: 60_000
        )
    assert sum(seen.values()) == 4 * 30
    resumed = sweeper(engine, emulator, table, bucket, config, {"after-call.dynamodb.Scan": scanned_keys(seen)})
    while state_of(emulator, bucket).pass_number == 1:
        resumed.run(lambda: 60_000)
    assert set(seen) == set(expected)
    twice = [key for key, times in seen.items() if times > 1]
    assert 0 < len(twice) <= 30  # the killed page, no more
    assert wrong_items(table, expected) == []


@pytest.mark.parametrize(("count", "padding"), [(1200, 2000), (1000, 60)], ids=["2KB", "100B"])
def test_items_of_2kb_and_100b_every_item_is_checked_once_per_pass(
    engine, emulator, make_table, bucket, count, padding
):
    table = make_table()
    expected = fill(table, count, padding=padding)
    StateStore(emulator.client("s3"), bucket).request_urgent(datetime.now(UTC))  # at the stage's limits
    seen: Counter = Counter()
    run = sweeper(
        engine,
        emulator,
        table,
        bucket,
        SweepConfig(segments=2, margin_seconds=0.5),  # 1 MB pages (no Limit)
        {"after-call.dynamodb.Scan": scanned_keys(seen)},
    )
    failed_pages = 0
    while state_of(emulator, bucket).pass_number < 2:
        failed_pages += run.run(lambda: 60_000).counts.failed > 0
    assert set(seen) == set(expected)  # every item read in the pass
    # ... and each exactly once, unless a page's writes failed (a loaded engine timing out): then that page alone is
    # read again, by the segment's next run.
    assert failed_pages or seen == Counter(dict.fromkeys(expected, 1))
    assert wrong_items(table, expected) == []


def test_a_new_table_that_describes_itself_as_empty_is_still_swept_whole(engine, emulator, make_table, bucket):
    table = make_table()
    expected = fill(table, 300)

    def empty(parsed: dict[str, Any], **_: Any) -> None:  # DescribeTable's 6-hourly figures for a new table
        parsed["Table"]["ItemCount"] = 0
        parsed["Table"]["TableSizeBytes"] = 0

    seen: Counter = Counter()
    run = sweeper(
        engine,
        emulator,
        table,
        bucket,
        SweepConfig(segments=2, page_items=100, margin_seconds=0.5),
        {"after-call.dynamodb.DescribeTable": empty, "after-call.dynamodb.Scan": scanned_keys(seen)},
    )
    reports = []
    while state_of(emulator, bucket) is None or state_of(emulator, bucket).pass_number == 1:
        reports.append(run.run(lambda: 60_000))
    assert reports[0].mode == "background" and reports[0].read_units_per_second == 10.0  # the floor, not zero
    assert seen == Counter(dict.fromkeys(expected, 1))  # no page read again, none left out
    assert wrong_items(table, expected) == []


def test_a_provisioned_table_is_swept_at_a_fraction_of_its_capacity(engine, emulator, make_table, bucket):
    from localdev.dynamodb_local import create_table, table_definition

    name = f"Provisioned-{uuid.uuid4().hex[:8]}"
    definition = table_definition(
        TableName=name,
        BillingMode="PROVISIONED",
        ProvisionedThroughput={"ReadCapacityUnits": 50, "WriteCapacityUnits": 100},
    )
    client = engine.client()
    stream_arn = create_table(client, definition)
    try:
        table = type("T", (), {"name": name, "client": client, "stream_arn": stream_arn})()
        expected = fill(table, 90)
        facts = table_facts(client.describe_table(TableName=name)["Table"])
        rates = limits(facts, SweepConfig(capacity_fraction=0.3))
        assert (rates.read, rates.write) == (15.0, 30.0)  # 0.3 x 50 and 0.3 x 100
        StateStore(emulator.client("s3"), bucket).request_urgent(datetime.now(UTC))
        run = sweeper(engine, emulator, table, bucket, SweepConfig(capacity_fraction=0.3, margin_seconds=0.5))
        report = run.run(lambda: 60_000)
        assert report.mode == "urgent" and report.read_units_per_second == 15.0
        while state_of(emulator, bucket).pass_number == 1:
            run.run(lambda: 60_000)
        assert wrong_items(table, expected) == []
    finally:
        client.delete_table(TableName=name)


def test_the_background_bound_every_item_is_checked_within_a_short_period(engine, emulator, make_table, bucket):
    import time

    table = make_table()
    # About 600 KB, 68 read units: the background's floor (10 a second) takes about two runs of 3 s for them, well
    # inside the 45 s period even on a loaded machine, and more than the first run can read.
    expected = fill(table, 600, padding=900)
    period = timedelta(seconds=45)
    config = SweepConfig(period=period, segments=2, page_items=25, interval=timedelta(seconds=4), margin_seconds=0.2)
    seen: Counter = Counter()
    run = sweeper(engine, emulator, table, bucket, config, {"after-call.dynamodb.Scan": scanned_keys(seen)})
    started = time.monotonic()
    first = run.run(lambda: 3_000)
    assert first.mode == "background" and first.passes_finished == 0  # paced over the period, not all at once
    while time.monotonic() - started < period.total_seconds() and state_of(emulator, bucket).pass_number == 1:
        time.sleep(1.0)
        run.run(lambda: 3_000)
    assert state_of(emulator, bucket).pass_number == 2, "the pass did not finish within its period"
    assert set(seen) == set(expected)


def test_a_background_run_reads_its_share_of_the_pass_then_ends(engine, emulator, make_table, bucket):
    """A background run is not billed for sleeping: it reads one interval's worth of the pass's rate at the stage's
    limits, then ends, though it had a minute left; the next runs go on from its cursors."""
    table = make_table()
    # About 600 KB, 68 read units, a week's period: the rate is the floor (10 units/s), and an interval of 2 s makes
    # a share of 20 units, a third of the table.
    expected = fill(table, 600, padding=900)
    config = SweepConfig(segments=2, page_items=10, interval=timedelta(seconds=2), margin_seconds=0.2)
    seen: Counter = Counter()
    run = sweeper(engine, emulator, table, bucket, config, {"after-call.dynamodb.Scan": scanned_keys(seen)})
    first = run.run(lambda: 60_000)
    share = MIN_BACKGROUND_READ_UNITS * config.interval.total_seconds()
    assert (first.mode, first.read_units_quota, first.passes_finished) == ("background", share, 0)
    one_page_each = 2 * 10 * 1_000 / BYTES_PER_READ_UNIT * 2  # a page in hand may pass the share, with room
    assert share <= first.counts.read_units <= share + one_page_each
    runs = 1
    while state_of(emulator, bucket).pass_number == 1:
        report = run.run(lambda: 60_000)
        assert report.counts.read_units <= share + one_page_each
        runs += 1
    assert 3 <= runs <= 5 and seen == Counter(dict.fromkeys(expected, 1))
    assert wrong_items(table, expected) == []


def test_a_conflicting_write_of_the_state_409_is_a_lost_write_and_the_urgent_request_reads_again():
    s3 = boto3.session.Session(region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x").client("s3")
    store = StateStore(s3, "the-bucket")
    body = SweepState(table="T", pass_number=3).to_json()
    with Stubber(s3) as stub:
        # S3 answers 409 ConditionalRequestConflict to a conditional put racing another (moto never does).
        stub.add_response(
            "get_object", {"Body": _Body(body), "ETag": '"e1"'}, {"Bucket": "the-bucket", "Key": STATE_KEY}
        )
        stub.add_client_error("put_object", "ConditionalRequestConflict", http_status_code=409)
        stub.add_response(
            "get_object", {"Body": _Body(body), "ETag": '"e2"'}, {"Bucket": "the-bucket", "Key": STATE_KEY}
        )
        stub.add_response("put_object", {"ETag": '"e3"'})
        state = store.request_urgent(datetime(2026, 12, 6, tzinfo=UTC))
        stub.assert_no_pending_responses()
    assert state.urgent_since == datetime(2026, 12, 6, tzinfo=UTC) and state.pass_number == 3
    with Stubber(s3) as stub:
        stub.add_client_error("get_object", "AccessDenied", http_status_code=403)  # no s3:ListBucket, or denied
        with pytest.raises(botocore.exceptions.ClientError):
            store.load()


class _Body:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self) -> bytes:
        return self._data


def test_the_state_round_trips_and_an_urgent_request_is_answered_only_by_a_pass_started_after_it():
    failed = datetime(2026, 12, 6, 10, tzinfo=UTC)
    state = SweepState()
    state.urgent_since = failed
    state.start_pass("T", 2, failed - timedelta(minutes=5))  # started before the failure: can't cover it
    state.finish_pass(failed + timedelta(hours=1))
    assert state.urgent
    state.start_pass("T", 2, failed + timedelta(hours=1))
    state.finish_pass(failed + timedelta(hours=2))
    assert not state.urgent
    state.cursors[1].key = {"Id": {"B": b"\x00\xff"}}
    assert SweepState.from_json(state.to_json()) == state


def test_the_sweep_settings_are_read_and_checked():
    settings = Settings.from_environ({"SWEEP_PERIOD_HOURS": "24", "SWEEP_CAPACITY_FRACTION": "0.5"})
    assert settings.sweep_config().period == timedelta(hours=24) and settings.sweep_config().capacity_fraction == 0.5
    from chalicelib.config import ConfigError

    with pytest.raises(ConfigError, match="SWEEP_PERIOD_HOURS"):
        Settings.from_environ({"SWEEP_PERIOD_HOURS": "forever"})


def test_every_call_a_sweep_makes_is_one_its_role_grants(engine, emulator, make_table, bucket, monkeypatch):
    """moto and DynamoDB Local check no IAM: the calls of a run that meets a deleted and a changed item (the read that
    tells them apart included) are each matched against the sweep's generated policy."""
    from tests.test_reconciler import AllCalls
    from tools.policies import TABLE_WRITE_ACTION, sweep_policy_document

    table = make_table()
    fill(table, 30)
    calls = AllCalls(monkeypatch)
    meddled = []

    def between_the_scan_and_the_writes(**_: Any) -> None:
        if not meddled:
            meddled.append(True)
            table.client.delete_item(TableName=table.name, Key={"Id": {"S": "user-00001"}})
            table.client.update_item(
                TableName=table.name,
                Key={"Id": {"S": "user-00002"}},
                UpdateExpression="SET #e = :e",
                ExpressionAttributeNames={"#e": EMAIL},
                ExpressionAttributeValues={":e": {"S": "changed@example.org"}},
            )

    run = sweeper(
        engine,
        emulator,
        table,
        bucket,
        SweepConfig(segments=1, margin_seconds=0.5),
        {"before-call.dynamodb.BatchExecuteStatement": between_the_scan_and_the_writes},
    )
    report = run.run(lambda: 60_000)
    assert (report.counts.gone, report.counts.superseded) == (1, 1)  # the read that needs BatchGetItem was made

    arn = "arn:aws:dynamodb:eu-west-1:123456789012:table/Users/stream/2026-01-01T00:00:00.000"
    granted = {
        action for statement in sweep_policy_document("email-checker", "qa", arn)["Statement"] for action in
        (statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]])
    }  # fmt: skip
    actions = {
        TABLE_WRITE_ACTION if call == "dynamodb.BatchExecuteStatement" else call.replace(".", ":", 1)
        for call in calls.calls  # the sweep's clients only: the meddling one was made before
    }
    assert {"dynamodb:BatchGetItem", "s3:PutObject"} <= actions
    assert actions <= granted, actions - granted


def test_the_local_line_of_a_run_that_finishes_a_pass_names_that_pass(engine, emulator, make_table, bucket):
    """`make run` prints a line per sweep run; on a small table one run finishes a pass and begins the next at 0 %,
    and the line says so rather than "pass N (0.0%)". The pass numbers are the state's."""
    from localdev.reconciler_runner import describe_sweep

    table = make_table()
    fill(table, 30)
    run = sweeper(engine, emulator, table, bucket, SweepConfig(segments=2, page_items=100, margin_seconds=0.5))
    assert state_of(emulator, bucket) is None
    line = describe_sweep(run.run(lambda: 60_000).summary())
    state = state_of(emulator, bucket)  # 30 items are well within a background run's share: pass 1 ends, 2 begins
    assert state.last_finished_at is not None and state.pass_number == 2
    assert "sweep pass 1 finished, pass 2 begun (background): 30 checked, 20 fixed, 0 failed; advanced" in line
    assert "sweep pass 2 finished, pass 3 begun (background): 30 checked, 0 fixed" in describe_sweep(
        run.run(lambda: 60_000).summary()
    )
