"""The backfill's bounds (tools/backfill/): the fan-out gives up on a segment that makes no progress and on an
invocation that never answers, per-segment write concurrency, exact counts, the dry run's own checkpoint, --stage."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time

import pytest

from chalicelib.backfill import SegmentRequest, SegmentResult
from tests.projects import OTHER_STAGE, STAGE
from tests.reliability import Model, scan, violations
from tests.test_backfill import facts_of, populate
from tools.backfill.checkpoint import Checkpoint, default_checkpoint_path
from tools.backfill.fanout import FanoutOptions, backoff, fan_out
from tools.backfill.local import Options, local_worker, run_local, stage_settings
from tools.backfill.progress import Progress
from tools.backfill.table import TableFacts

FACTS = TableFacts("T", ("Id",), 10, 0, 0)


@pytest.fixture(scope="module")
def settings_dev(project):
    return stage_settings(STAGE, project)


class StuckInvoker:
    """Every invocation answers, but no page ever finishes (its writes keep failing): no progress."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float]] = []
        self.lock = threading.Lock()

    def invoke(self, payload):
        with self.lock:
            self.calls.append((payload["segment"], time.monotonic()))
        request = SegmentRequest.from_payload(payload)
        result = SegmentResult(request.segment, request.total_segments, request.start_key, done=False)
        result.counts.failed = 3
        return result.payload()


def test_a_segment_without_progress_backs_off_then_is_given_up_with_its_checkpoint_kept(tmp_path):
    path = tmp_path / "cp.json"
    checkpoint = Checkpoint.open(path, "T", 2, False)
    checkpoint.segments[0].done = True
    checkpoint.save()
    invoker = StuckInvoker()
    fanout = FanoutOptions(concurrency=2, max_failures=4, backoff_base_s=0.05, backoff_cap_s=0.1)
    report = fan_out(invoker, FACTS, checkpoint, Options(), fanout)
    assert list(report.given_up) == [1] and "no page finished" in report.given_up[1]
    times = [at for segment, at in invoker.calls if segment == 1]
    assert len(times) == 4 and report.invocations == 4  # given up after 4, not retried for ever
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.1  # doubling, capped
    assert [backoff(n, FanoutOptions()) for n in range(1, 7)] == [2, 4, 8, 16, 32, 60]
    kept = Checkpoint.open(path, "T", 2, False)
    assert kept.unfinished() == [1] and kept.totals().failed == 12 and kept.totals().scanned == 0


def test_an_invocation_that_never_answers_is_bounded_and_reported():
    release = threading.Event()

    class Hanging:
        calls = 0

        def invoke(self, payload):
            Hanging.calls += 1
            release.wait(30)
            return {}

    checkpoint = Checkpoint.open(None, "T", 1, False)
    fanout = FanoutOptions(max_failures=2, backoff_base_s=0.01, invocation_timeout_s=0.5)
    started = time.monotonic()
    try:
        report = fan_out(Hanging(), FACTS, checkpoint, Options(), fanout)
    finally:
        release.set()
    assert time.monotonic() - started < 5
    assert report.given_up == {0: "no answer within 0.5 s"} and Hanging.calls == 2
    assert checkpoint.unfinished() == [0]


def test_the_command_names_the_segments_given_up_and_ends_non_zero(make_table, project, tmp_path):
    table = make_table(stream=False)
    # No function to invoke in this environment: every invocation fails, and the fan-out gives up after one.
    command = [sys.executable, "-m", "tools.backfill", "fanout", "--table", table.name, "--stage", STAGE]
    command += ["--segments", "2", "--max-failures", "1", "--no-progress", "--checkpoint", str(tmp_path / "f.json")]
    command += ["--function-name", "no-such-function"]
    env = {**os.environ, "AWS_ENDPOINT_URL_LAMBDA": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}
    result = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "gave up on segment(s) 0, 1 after 1 invocations" in result.stderr
    assert "run the same command again" in result.stderr and (tmp_path / "f.json").exists()


def test_write_concurrency_is_per_segment(make_table, settings_dev):
    table = make_table(stream=False)
    model = Model()
    keys = populate(table.client, table, 400, model)
    in_flight, peak, lock = [0], [0], threading.Lock()

    def before(**_):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.2)  # long enough for every segment's writes to overlap

    def after(**_):
        with lock:
            in_flight[0] -= 1

    table.client.meta.events.register("before-call.dynamodb.BatchExecuteStatement", before)
    table.client.meta.events.register("after-call.dynamodb.BatchExecuteStatement", after)
    checkpoint = Checkpoint.open(None, table.name, 4, False)
    worker = local_worker(settings_dev, table.client, 2)
    run_local(worker, facts_of(table), checkpoint, Options(page_size=100), threads=4)
    assert peak[0] == 4 * 2  # segments x per segment (one shared pool peaked at 2)
    assert violations(scan(table.client, table.name), model, keys) == []


def test_a_retried_page_is_counted_once(make_table, settings_dev):
    from chalicelib.backfill import SegmentWorker
    from chalicelib.dynamodb import DynamoDBGateway, WriteOutcome
    from chalicelib.records import DEFAULT_ATTRIBUTES
    from chalicelib.runtime import classifier_for

    table = make_table(stream=False)
    populate(table.client, table, 60, Model())
    real = DynamoDBGateway(table.client, DEFAULT_ATTRIBUTES, max_concurrency=4)

    class FailsOnce:
        failed = False
        attributes = DEFAULT_ATTRIBUTES

        def apply(self, writes, deadline=None):
            if not FailsOnce.failed:
                FailsOnce.failed = True
                return [WriteOutcome.FAILED for _ in writes]
            return real.apply(writes, deadline)

    worker = SegmentWorker(table.client, FailsOnce(), classifier_for(settings_dev).is_personal_email)
    checkpoint = Checkpoint.open(None, table.name, 1, False)
    progress = Progress(60, checkpoint.totals(), enabled=False, dry_run=False)
    done = run_local(worker, facts_of(table), checkpoint, Options(page_size=20), 1, progress)
    assert checkpoint.unfinished() == [] and FailsOnce.failed
    assert done.scanned == checkpoint.totals().scanned == progress._counts.scanned == 60  # not 80: never past 100 %
    # The failed attempt's writes are not failures once the redone page finds them done (issue 21: a summary that
    # adds up); they count as fixed, once.
    assert done.failed == 0 and done.written == done.to_write == 60 - done.already_correct


def test_the_dry_run_has_its_own_checkpoint():
    assert default_checkpoint_path("Users", True) != default_checkpoint_path("Users", False)
    assert default_checkpoint_path("Users", True).name == "backfill-Users-dry-run.json"


def test_the_dry_run_does_not_block_the_real_run(make_table, project, tmp_path):
    table = make_table(stream=False)
    populate(table.client, table, 20, Model())
    base = [sys.executable, "-m", "tools.backfill", "run", "--table", table.name, "--stage", STAGE, "--no-progress"]
    dry = subprocess.run([*base, "--dry-run"], cwd=project, capture_output=True, text=True, timeout=120)
    real = subprocess.run(base, cwd=project, capture_output=True, text=True, timeout=120)
    # (Their default checkpoints are in the project copy's .state/, gone with it.)
    assert dry.returncode == 0 and real.returncode == 0, dry.stderr + real.stderr
    assert "another backfill" not in real.stderr


def test_the_stage_is_required(project):
    result = subprocess.run(
        [sys.executable, "-m", "tools.backfill", "run", "--table", "Users"], cwd=project, capture_output=True, text=True
    )
    assert result.returncode == 2 and "--stage" in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith(("error", "backfill: error", "usage"))]


def test_stage_settings_read_the_stage_config(project):
    assert stage_settings(OTHER_STAGE, project).stage == OTHER_STAGE


def test_the_lambda_invoker_waits_for_the_answer_and_names_a_function_error_by_type():
    import io
    import json

    import boto3
    from botocore.response import StreamingBody
    from botocore.stub import Stubber

    from tools.backfill.fanout import InvocationFailed, LambdaInvoker

    session = boto3.session.Session(region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x")
    client = session.client("lambda")
    payload = SegmentRequest("T", ("Id",), 1, 2).payload(run_id="r", attempt=1)
    answer = {"segment": 1, "total_segments": 2, "last_evaluated_key": None, "done": True, "counts": {}}
    expected = {"FunctionName": "fn", "InvocationType": "RequestResponse", "Payload": json.dumps(payload).encode()}

    def body(document) -> StreamingBody:
        raw = json.dumps(document).encode()
        return StreamingBody(io.BytesIO(raw), len(raw))

    error = {"errorType": "PayloadError", "errorMessage": "start_key a@gmail.com"}
    with Stubber(client) as stub:
        stub.add_response("invoke", {"StatusCode": 200, "Payload": body(answer)}, expected)
        stub.add_response("invoke", {"StatusCode": 200, "FunctionError": "Unhandled", "Payload": body(error)}, expected)
        invoker = LambdaInvoker(client, "fn")
        assert invoker.invoke(payload) == answer
        try:
            invoker.invoke(payload)
            raise AssertionError("a function error must raise")
        except InvocationFailed as failure:
            assert str(failure) == "function error PayloadError"  # never the message, which may quote a value
        stub.assert_no_pending_responses()


def test_an_invocation_starts_no_page_that_cannot_fit(make_table, settings_dev):
    from chalicelib.backfill import run_segment

    table = make_table(stream=False)
    populate(table.client, table, 20, Model())
    worker = local_worker(settings_dev, table.client, 4)
    payload = SegmentRequest(table.name, ("Id",), 0, 1, page_size=5).payload()
    # 50 s left, a 30 s margin and a page assumed to take 60 s: no page starts; the key handed back is the start.
    short = run_segment({**payload, "safety_margin_ms": 30_000}, worker, lambda: 50_000)
    assert (short["counts"]["pages"], short["done"], short["last_evaluated_key"]) == (0, False, None)
    # With 100 s left the same invocation works; a measured page (well under 60 s) doesn't lower the assumed one.
    roomy = run_segment({**payload, "safety_margin_ms": 30_000}, worker, lambda: 100_000)
    assert roomy["done"] and roomy["counts"]["scanned"] == 20
