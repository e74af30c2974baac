"""The sweep as an operator sees it: the pass line `status` and the backfill command print, the command's urgent
request followed until it is answered (moto's S3), the reconciler's newest log line, and the local schedule."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.stub import Stubber

from chalicelib.backfill import Counts
from chalicelib.sweep import StateStore, SweepState
from tools.cloudwatch_reads import newest_line
from tools.sweep_view import pass_line, sweep_line

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def test_the_pass_line_says_where_the_pass_stands():
    state = SweepState(table="T", item_count=2_000_000, counts=Counts(scanned=500_000, written=12, failed=1))
    state.start_pass("T", 4, NOW - timedelta(hours=2, minutes=5))
    state.counts = Counts(scanned=500_000, written=12, failed=1)
    state.estimated_end = NOW + timedelta(hours=6)
    line = pass_line(state, NOW)
    assert line.startswith("pass 1: 25.0% of ~2,000,000 items, started 2 h 5 min ago, estimated end 2026-12-06 18:00")
    assert "background" in line and "500,000 checked, 12 fixed, 1 failed" in line
    state.urgent_since = NOW - timedelta(minutes=30)
    assert "urgent since 30 min ago" in pass_line(state, NOW)
    assert pass_line(None, NOW) == "no pass yet (the scheduled sweep has not run)"
    asked = SweepState(urgent_since=NOW - timedelta(minutes=3))
    assert pass_line(asked, NOW).endswith("urgent pass requested 3 min ago")


def test_the_status_line_reads_the_state_and_says_when_it_cant():
    s3 = boto3.session.Session(region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x").client("s3")
    with Stubber(s3) as stub:
        stub.add_client_error("get_object", "AccessDenied", http_status_code=403)
        assert sweep_line(s3, "arn:aws:s3:::the-bucket") == "unknown: its state could not be read (AccessDenied)"
    assert sweep_line(s3, "") == "unknown: no on-failure bucket found"


def test_the_newest_log_line_is_found_on_the_last_page():
    """FilterLogEvents answers oldest first, page by page: the newest line is on the last page (Stubber: moto's logs
    don't page)."""
    logs = boto3.session.Session(region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x").client(
        "logs"
    )
    event = {"logStreamName": "s", "ingestionTime": 1, "eventId": "e"}
    with Stubber(logs) as stub:
        stub.add_response(
            "filter_log_events",
            {
                "events": [
                    {**event, "timestamp": 1_000, "message": "oldest"},
                    {**event, "timestamp": 2_000, "message": "older"},
                ],
                "nextToken": "page-2",
            },
        )
        stub.add_response("filter_log_events", {"events": [{**event, "timestamp": 3_000, "message": "newest\n"}]})
        assert newest_line(logs, "/aws/lambda/r", "reconciler message", NOW) == "newest"
        stub.assert_no_pending_responses()
    assert newest_line(logs, None, "reconciler message") is None


def test_the_urgent_command_asks_and_follows_until_a_later_pass_finishes(emulator, monkeypatch, capsys):
    from tools.backfill import urgent

    s3 = emulator.client("s3")
    bucket = f"urgent-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    for name, value in emulator.environment().items():
        monkeypatch.setenv(name, value)
    from chalicelib.config import Settings

    monkeypatch.setattr(urgent, "stage_settings", lambda stage: Settings.from_environ({"FAILURE_BUCKET": bucket}))
    store = StateStore(s3, bucket)
    stop = threading.Event()

    def sweep_answers_it() -> None:
        # What the scheduled sweep does meanwhile: a pass starts after the request and finishes.
        while store.load()[0] is None:
            stop.wait(0.05)
        state, etag = store.load()
        state.start_pass("T", 2, datetime.now(UTC) + timedelta(seconds=1))
        state.finish_pass(datetime.now(UTC) + timedelta(seconds=2))
        store.save(state, etag)

    answering = threading.Thread(target=sweep_answers_it)
    answering.start()
    assert urgent.request_and_follow("any", follow=True, poll_seconds=0.1, stop=stop) == 0
    answering.join()
    out = capsys.readouterr().out
    assert f"urgent pass requested in s3://{bucket}/sweep/state.json" in out
    assert "done: a pass that started after the request has finished" in out
    state, _ = store.load()
    assert state.urgent_requests == 1 and not state.urgent


def test_the_local_schedule_fires_on_its_interval_and_stops(monkeypatch):
    from localdev import reconciler_runner

    calls = []

    class Functions:
        app_name, stage = "email-checker", "t"

        def call(self, name, event, max_runtime_ms):
            calls.append((name, event["detail-type"], event["source"], max_runtime_ms))
            return {"pass": 1}

    schedule = reconciler_runner.LocalSchedule(Functions(), every=0.05).start()
    deadline = datetime.now(UTC) + timedelta(seconds=10)
    while len(calls) < 2 and datetime.now(UTC) < deadline:
        threading.Event().wait(0.05)
    schedule.stop()
    fired = len(calls)
    threading.Event().wait(0.2)
    assert fired >= 2 and len(calls) == fired  # nothing fires once stopped
    assert calls[0][:3] == ("sweep_table", "Scheduled Event", "aws.events")
    assert calls[0][3] == pytest.approx((10 + 3) * 1000)  # the sweep's margin and 3 s of work
