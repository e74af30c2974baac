"""The backfill (tools/backfill/, chalicelib/backfill.py): every existing item ends under the invariant, from this
machine or fanned out over the Lambda function, against DynamoDB Local."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
from decimal import Decimal

import pytest

from chalicelib.backfill import (
    Counts,
    SegmentRequest,
    SegmentWorker,
    TokenBucket,
    key_from_json,
    key_to_json,
    scan_request,
)
from chalicelib.dynamodb import DynamoDBGateway, WriteOutcome
from chalicelib.records import DEFAULT_ATTRIBUTES
from chalicelib.runtime import classifier_for
from chalicelib.sweep import TableFacts, table_facts
from localdev.events import to_wire
from localdev.mapping import LocalEventSourceMapping
from tests.oracle import expected_flag
from tests.projects import STAGE
from tests.reliability import EMAILS, Model, Op, perform, scan, violations
from tests.test_reliability import follow, report, run_clients, settle
from tools.backfill.checkpoint import Checkpoint, CheckpointMismatch
from tools.backfill.local import Options, local_worker, run_local, stage_settings
from tools.backfill.ratelimit import ON_DEMAND_READ_UNITS, ON_DEMAND_WRITE_UNITS, rate_limits


@pytest.fixture(scope="module")
def settings(project):
    return stage_settings(STAGE, project)


class Calls:
    """Counts the writes (PartiQL statements) a client sends, and which keys they name."""

    def __init__(self, client) -> None:
        self.keys: list[str] = []
        self._lock = threading.Lock()
        client.meta.events.register("before-parameter-build.dynamodb.BatchExecuteStatement", self._seen)

    def _seen(self, params, **_):
        with self._lock:
            for statement in params["Statements"]:
                # A SET's parameters are (flag, *key, e-mail), a REMOVE's (*key, "S").
                parameters = statement["Parameters"]
                key = parameters[1:-1] if statement["Statement"].split()[2] == "SET" else parameters[:-1]
                self.keys.append(json.dumps(key_to_json(dict(enumerate(key))), sort_keys=True))

    @property
    def count(self) -> int:
        return len(self.keys)


def populate(client, table, count: int, model: Model, prefix: str = "user-") -> list[str]:
    """Items of every kind (string e-mails, other types, none) with right, wrong and missing flags."""
    keys = [f"{prefix}{i}" for i in range(count)]
    for i, key in enumerate(keys):
        perform(client, table.name, Op("put", key, EMAILS[i % len(EMAILS)], [None, True, False][i % 3]), model)
    return keys


def facts_of(table) -> TableFacts:
    return table_facts(table.client.describe_table(TableName=table.name)["Table"])


# ---------------------------------------------------------------------------------------------------- pure parts


def test_the_token_bucket_waits_for_what_was_taken():
    now = [100.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(10, clock=lambda: now[0], sleep=sleep)
    assert bucket.take(10) == 0 and slept == []  # a second's burst is there at once
    bucket.take(25)  # the bucket is not in debt, so this goes through at once and leaves it 25 in debt
    assert sum(slept) == pytest.approx(0.0, abs=1e-6)
    slept.clear()
    bucket.take(0)  # the next taker pays the debt: 2.5 s at 10 units/s
    assert sum(slept) == pytest.approx(2.5, abs=1e-6)
    now[0] += 60  # an idle minute refills one second's worth, no more
    slept.clear()
    bucket.take(10)
    bucket.take(1)
    assert sum(slept) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        TokenBucket(0)


def test_rate_limits_from_units_or_a_fraction_of_provisioned_capacity():
    provisioned = TableFacts("T", ("Id",), size_bytes=0, item_count=10, read_capacity=400, write_capacity=100)
    assert rate_limits(provisioned, None, None, None) == (80, 20)  # a fifth of the capacity by default
    assert rate_limits(provisioned, None, None, 0.25) == (100, 25)
    assert rate_limits(provisioned, 50, None, 0.5) == (50, 50)
    on_demand = TableFacts("T", ("Id",), size_bytes=0, item_count=10, read_capacity=0, write_capacity=0)
    with pytest.raises(ValueError, match="on-demand"):
        rate_limits(on_demand, None, None, 0.5)
    assert rate_limits(on_demand, None, None, None) == (ON_DEMAND_READ_UNITS, ON_DEMAND_WRITE_UNITS)
    assert rate_limits(on_demand, 30, None, None) == (30, ON_DEMAND_WRITE_UNITS)
    with pytest.raises(ValueError, match="at most 1"):
        rate_limits(provisioned, None, None, 1.5)


def test_key_schema_comes_hash_first_from_describe_table():
    facts = table_facts(
        {
            "TableName": "T",
            "KeySchema": [{"AttributeName": "Sk", "KeyType": "RANGE"}, {"AttributeName": "Pk", "KeyType": "HASH"}],
            "BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"},
            "ProvisionedThroughput": {"ReadCapacityUnits": 0, "WriteCapacityUnits": 0},
            "ItemCount": 7,
            "TableSizeBytes": 700,
        }
    )
    assert facts == TableFacts("T", ("Pk", "Sk"), size_bytes=700, item_count=7, read_capacity=0, write_capacity=0)


def test_a_binary_key_round_trips_through_json():
    """As checkpoints and the sweep's state keep a segment's place: binary values base64-encoded, others as they are."""
    key = {"Pk": {"B": b"\x00\xff"}, "Sk": {"N": "5"}}
    assert key_to_json(key) == {"Pk": {"B": "AP8="}, "Sk": {"N": "5"}}
    assert key_from_json(json.loads(json.dumps(key_to_json(key)))) == key
    assert key_from_json(key_to_json({"Pk": {"S": "a"}})) == {"Pk": {"S": "a"}}
    assert key_to_json(None) is None and key_from_json(None) is None


def test_the_scan_reads_only_the_keys_and_the_two_attributes():
    request = SegmentRequest("T", ("Pk", "Sk"), 1, 4, {"Pk": {"S": "a"}, "Sk": {"N": "1"}}, page_size=10)
    parameters = scan_request(request, request.start_key, DEFAULT_ATTRIBUTES)
    projected = {
        parameters["ExpressionAttributeNames"][name] for name in parameters["ProjectionExpression"].split(", ")
    }
    assert projected == {"Pk", "Sk", "Email", "IsPersonalEmail"}
    assert (parameters["Segment"], parameters["TotalSegments"], parameters["Limit"]) == (1, 4, 10)
    assert parameters["ExclusiveStartKey"] == request.start_key
    assert parameters["ReturnConsumedCapacity"] == "TOTAL"


def test_a_table_written_with_no_stream_ends_under_the_invariant(make_table, settings, tmp_path):
    table = make_table(stream=False)
    model = Model()
    keys = populate(table.client, table, 120, model)
    needed = len(violations(scan(table.client, table.name), model, keys))
    assert needed > 60  # most items were written with no flag or a wrong one

    calls = Calls(table.client)
    checkpoint = Checkpoint.open(tmp_path / "cp.json", table.name, 4, dry_run=False)
    done = run_local(local_worker(settings, table.client, 4), facts_of(table), checkpoint, Options(page_size=20), 4)
    assert violations(scan(table.client, table.name), model, keys) == []
    assert (done.scanned, done.to_write, done.written, done.superseded) == (120, needed, needed, 0)
    assert done.already_correct == 120 - needed and calls.count == needed
    assert (
        checkpoint.unfinished() == [] and json.loads((tmp_path / "cp.json").read_text())["totals"]["written"] == needed
    )

    # A second backfill finds nothing to do and writes nothing.
    again = run_local(
        local_worker(settings, table.client, 4),
        facts_of(table),
        Checkpoint.open(None, table.name, 3, False),
        Options(),
        2,
    )
    assert (again.scanned, again.already_correct, again.to_write, calls.count) == (120, 120, 0, needed)


def test_the_dry_run_writes_nothing_and_counts_what_it_would(make_table, settings):
    table = make_table(stream=False)
    model = Model()
    keys = populate(table.client, table, 90, model)
    needed = len(violations(scan(table.client, table.name), model, keys))
    calls = Calls(table.client)
    checkpoint = Checkpoint.open(None, table.name, 3, dry_run=True)
    done = run_local(
        local_worker(settings, table.client, 4), facts_of(table), checkpoint, Options(dry_run=True, page_size=7), 3
    )
    assert calls.count == 0 and done.written == 0
    assert (done.scanned, done.to_write, done.already_correct) == (90, needed, 90 - needed)
    assert len(violations(scan(table.client, table.name), model, keys)) == needed


def test_a_resumed_backfill_writes_nothing_twice(make_table, settings, tmp_path):
    # A composite key with a binary hash key: the checkpoint must carry any key type through JSON.
    table = make_table(keys=(("Pk", "B"), ("Sk", "N")), stream=False)
    rng = random.Random(5)
    for i in range(150):
        email = EMAILS[i % 6]
        item = {"Pk": bytes([i % 50, 255]), "Sk": Decimal(i), "Email": email}
        if rng.random() < 0.4:
            item["IsPersonalEmail"] = expected_flag(email)  # already right
        table.client.put_item(TableName=table.name, Item=to_wire(item))

    def wrong(items):
        return [i for i in items if i.get("IsPersonalEmail", {}).get("BOOL") is not expected_flag(i["Email"]["S"])]

    needed = len(wrong(table.client.scan(TableName=table.name)["Items"]))
    calls = Calls(table.client)
    path = tmp_path / "resume.json"
    first = Checkpoint.open(path, table.name, 2, dry_run=False)
    partial = run_local(
        local_worker(settings, table.client, 4), facts_of(table), first, Options(page_size=10, max_pages=3), 2
    )
    assert partial.pages == 6 and first.unfinished() == [0, 1]  # stopped after 3 pages a segment

    resumed = Checkpoint.open(path, table.name, 2, dry_run=False)  # as a new process finds it
    assert resumed.totals().written == partial.written > 0
    rest = run_local(local_worker(settings, table.client, 4), facts_of(table), resumed, Options(page_size=10), 2)
    assert resumed.unfinished() == []
    assert partial.scanned + rest.scanned == 150
    assert wrong(table.client.scan(TableName=table.name)["Items"]) == []
    assert calls.count == needed and len(set(calls.keys)) == needed, "an item was written twice"
    with pytest.raises(CheckpointMismatch):
        Checkpoint.open(path, table.name, 4, dry_run=False)


def test_a_page_scanned_again_writes_only_what_is_still_wrong(make_table, settings):
    table = make_table(stream=False)
    populate(table.client, table, 30, Model())
    worker = local_worker(settings, table.client, 4)
    request = SegmentRequest(table.name, ("Id",), 0, 1, page_size=30)
    calls = Calls(table.client)
    first = worker.page(request, None)
    assert first.counts.written == calls.count > 0
    again = worker.page(request, None)  # a crash after the writes, before the checkpoint
    assert (again.counts.to_write, again.counts.already_correct, calls.count) == (0, 30, first.counts.written)


def test_an_item_deleted_since_the_scan_counts_as_gone_and_one_changed_as_superseded(make_table, settings):
    table = make_table(stream=False)
    for name in ("fixed-1", "fixed-2", "deleted", "changed"):  # each needs a write: a personal address, no flag
        table.client.put_item(TableName=table.name, Item={"Id": {"S": name}, "Email": {"S": f"{name}@gmail.com"}})
    meddled = []

    def between_the_scan_and_the_writes(**_):
        if not meddled:  # a client deletes one item and changes another's e-mail before the writes land
            meddled.append(True)
            table.client.delete_item(TableName=table.name, Key={"Id": {"S": "deleted"}})
            table.client.put_item(TableName=table.name, Item={"Id": {"S": "changed"}, "Email": {"S": "c@example.com"}})

    table.client.meta.events.register("before-call.dynamodb.BatchExecuteStatement", between_the_scan_and_the_writes)
    counts = local_worker(settings, table.client, 4).page(SegmentRequest(table.name, ("Id",), 0, 1), None).counts
    assert (counts.scanned, counts.to_write) == (4, 4)
    assert (counts.written, counts.superseded, counts.gone, counts.failed) == (2, 1, 1, 0)
    assert table.client.get_item(TableName=table.name, Key={"Id": {"S": "deleted"}}).get("Item") is None  # not back


def test_failed_writes_stop_the_segment_at_the_page_that_must_be_redone(make_table, settings):
    table = make_table(stream=False)
    populate(table.client, table, 40, Model())
    real = local_worker(settings, table.client, 4)

    class FailingGateway:
        attributes = DEFAULT_ATTRIBUTES

        def apply(self, writes, deadline=None):
            return [WriteOutcome.FAILED for _ in writes]

    worker = SegmentWorker(table.client, FailingGateway(), classifier_for(settings).is_personal_email)
    request = SegmentRequest(table.name, ("Id",), 0, 1, page_size=10)
    result = worker.run(request, lambda: True)
    assert (result.done, result.last_evaluated_key, result.counts.pages) == (False, None, 0)
    # The page is to be redone: only its failures count now, its items when it is redone (never twice).
    assert result.counts.failed > 0 and (result.counts.scanned, result.counts.to_write) == (0, 0)
    assert real.run(request, lambda: True).done  # the same segment with working writes finishes


def test_the_rate_limits_pace_reads_and_writes(make_table, settings):
    table = make_table(stream=False)
    model = Model()
    keys = populate(table.client, table, 120, model)
    needed = len(violations(scan(table.client, table.name), model, keys))
    now = [0.0]
    slept = {"read": 0.0, "write": 0.0}

    def sleeper(kind):
        def sleep(seconds):
            slept[kind] += seconds
            now[0] += seconds  # a virtual clock: nothing really waits

        return sleep

    chunks = []
    gateway = DynamoDBGateway(table.client, DEFAULT_ATTRIBUTES, max_concurrency=4)

    class Recording:
        attributes = gateway.attributes

        def apply(self, writes, deadline=None):
            chunks.append(len(writes))
            return gateway.apply(writes)

    reads = TokenBucket(4, clock=lambda: now[0], sleep=sleeper("read"))
    writes = TokenBucket(10, clock=lambda: now[0], sleep=sleeper("write"))
    worker = SegmentWorker(table.client, Recording(), classifier_for(settings).is_personal_email, reads, writes)
    result = worker.run(SegmentRequest(table.name, ("Id",), 0, 1, page_size=30), lambda: True)
    assert result.done and result.counts.written == needed == sum(chunks)
    assert max(chunks) <= 10  # never more than a second's worth of writes at once
    # Virtual seconds waited: what was used beyond the first second's burst, at the rate, give or take one step.
    assert needed / 10 - 2 <= now[0] and slept["write"] >= (needed - 10) / 10 - 1
    assert slept["read"] >= (result.counts.read_units - 4) / 4 - 2
    assert result.counts.read_units > 0


def test_the_command_runs_stops_resumes_and_summarises(make_table, project, tmp_path):
    table = make_table(stream=False)
    model = Model()
    keys = populate(table.client, table, 60, model)
    path = tmp_path / "cli.json"
    command = [sys.executable, "-m", "tools.backfill", "run", "--table", table.name, "--segments", "2"]
    command += ["--stage", STAGE, "--page-size", "10", "--checkpoint", str(path)]
    partial = subprocess.run(
        [*command, "--max-pages", "1", "--no-progress"], cwd=project, capture_output=True, text=True, timeout=120
    )
    assert partial.returncode == 1, partial.stderr
    assert "2 segment(s) left" in partial.stdout and "scanned          20" in partial.stdout
    assert partial.stderr == ""  # no progress bar asked for
    finished = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert "2/2 segments done" in finished.stdout and "scanned          60" in finished.stdout
    # The progress bar (on stderr) starts from the checkpoint's 20 and counts the outcomes.
    assert "60/60" in finished.stderr and "already correct" in finished.stderr and "superseded 0" in finished.stderr
    assert violations(scan(table.client, table.name), model, keys) == []
    text = finished.stdout + finished.stderr + partial.stdout + partial.stderr
    assert not any(key in text for key in keys) and "gmail" not in text  # counts only, never a key or an e-mail
    refused = subprocess.run([*command, "--segments", "3"], cwd=project, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "another backfill" in refused.stderr


def test_a_backfill_racing_clients_and_the_handler_leaves_no_violation(engine, make_table, invoker, settings, capsys):
    table = make_table(stream=False)
    model = Model()
    keys = populate(table.client, table, 120, model)
    # The stream goes on after the items exist: only the backfill can fix them, unless a client touches them.
    updated = table.client.update_table(
        TableName=table.name, StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    )
    stream_arn = updated["TableDescription"]["LatestStreamArn"]
    mapping = LocalEventSourceMapping(engine.streams_client(), stream_arn, invoker, batch_size=25)
    stop, thread = follow(mapping)
    checkpoint = Checkpoint.open(None, table.name, 4, dry_run=False)
    backfilled = {}

    def backfill():
        worker = local_worker(settings, engine.client(), 4)
        backfilled["counts"] = run_local(worker, facts_of(table), checkpoint, Options(page_size=5), 4)

    backfill_thread = threading.Thread(target=backfill)
    backfill_thread.start()
    # Clients work on the first 40 keys (the model continues from the populated items) while the backfill scans.
    clients = run_clients(engine, table, keys[:40], threads=4, operations=60, seed=11, model=model)
    backfill_thread.join(timeout=120)
    assert not backfill_thread.is_alive()
    stats = settle(mapping, stop, thread)

    found = violations(scan(table.client, table.name), model, keys)
    counts = backfilled["counts"]
    report(
        capsys,
        f"backfill racing clients: {counts.scanned} scanned, {counts.written} written, {counts.superseded} "
        f"superseded, {clients.operations} client operations, {stats.records} stream records, {len(found)} violations",
    )
    assert found == []
    assert checkpoint.unfinished() == [] and counts.written > 0
    assert counts.scanned >= len(keys) - 40  # at least every item no client touched


def test_counts_add_and_survive_json():
    counts = Counts(pages=1, scanned=10, written=3, read_units=1.5)
    counts.add(Counts.from_dict(json.loads(json.dumps(counts.to_dict()))))
    assert (counts.pages, counts.scanned, counts.written, counts.read_units) == (2, 20, 6, 3.0)


def test_the_benchmark_measures_a_fresh_table(engine):
    from bench.backfill_bench import measure

    result = measure(items=60, segments=2)
    assert (result["segments"], result["items"]) == (2, 60)
    assert result["scanned_per_second"] == result["fixed_per_second"] > 0 and result["rescan_per_second"] > 0
    assert not [name for name in engine.client().list_tables()["TableNames"] if name.startswith("Bench-")]
