"""The invariant under concurrent clients, faults and restarts, against DynamoDB Local (docs/design.md §1, §3).

Short versions run in `make test`; `make soak` runs the long ones (EMAIL_CHECKER_SOAK=1).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from botocore.retries.standard import ExponentialBackoff
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib import dynamodb
from chalicelib.runtime import processor_for
from localdev.mapping import CheckpointStore, LocalEventSourceMapping
from tests.faults import dynamodb_error, fail_statements
from tests.projects import STAGE
from tests.reliability import EMAILS, Model, Op, perform, random_op, scan, violations

SOAK = os.environ.get("EMAIL_CHECKER_SOAK") == "1"


def report(capsys, text: str) -> None:
    """Print a line past pytest's capture, so CI's output shows what was checked."""
    with capsys.disabled():
        print(f"\n  {text}")


# A history: client operations on a few keys, with "deliver" steps where the mapping hands the handler the next
# batch, so the handler sees records while later client writes are already in the table (stale records, deletes
# that land before the insert is processed, flip-flops inside a batch).
KEYS = st.sampled_from(["a", "b"])
_op = st.one_of(
    st.builds(Op, st.just("put"), KEYS, st.sampled_from(EMAILS), st.sampled_from([None, True, False])),
    st.builds(Op, st.just("set_email"), KEYS, st.sampled_from(EMAILS)),
    st.builds(Op, st.just("set_other"), KEYS, st.just("changed")),
    st.builds(Op, st.just("remove_email"), KEYS),
    st.builds(Op, st.just("set_flag"), KEYS, st.booleans()),
    st.builds(Op, st.just("delete"), KEYS),
    st.just(Op("deliver", "")),
)


@pytest.fixture(scope="module")
def history_table(engine):
    from localdev.dynamodb_local import create_table, table_definition

    client = engine.client()
    name = "History"
    arn = create_table(client, table_definition(TableName=name))
    yield client, name, arn
    client.delete_table(TableName=name)


@pytest.fixture(scope="module")
def history_mapping(engine, history_table, invoker):
    _, _, arn = history_table
    # Batches of 2 records: deliveries interleave finely with the clients' writes.
    return LocalEventSourceMapping(engine.streams_client(), arn, invoker, batch_size=2)


def test_any_history_ends_under_the_invariant(history_table, history_mapping, capsys):
    client, table, _ = history_table
    # Counted here, in the one test that runs the property, so the report doesn't depend on test order.
    totals = {"examples": 0, "operations": 0, "keys": 0, "violations": 0}

    @settings(max_examples=1000 if SOAK else 60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(history=st.lists(_op, min_size=1, max_size=25))
    def ends_under_the_invariant(history):
        prefix = f"h{totals['examples']}-"
        totals["examples"] += 1
        model = Model()
        for op in history:
            if op.kind == "deliver":
                history_mapping.poll()
            else:
                perform(client, table, Op(op.kind, prefix + op.key, op.value, op.flag), model)
        history_mapping.drain(quiet_polls=1)
        keys = [prefix + k for k in "ab"]
        totals["operations"] += model.operations
        totals["keys"] += len(keys)
        found = violations(scan(client, table), model, keys)
        totals["violations"] += len(found)
        assert found == []

    ends_under_the_invariant()
    report(
        capsys,
        f"history property: {totals['examples']} histories, {totals['operations']} client operations, "
        f"{totals['keys']} keys checked, {totals['violations']} violations "
        "(counted over every example hypothesis ran, shrinking included)",
    )
    assert totals["examples"] > 0


def run_clients(engine, table, keys, threads, operations, seed, model=None):
    """Client threads doing random operations on a shared key space; a per-key lock orders each key's operations
    so the model knows them (operations on different keys, and the handler's writes, still interleave freely).
    `model`: what the table already holds (a fresh model by default)."""
    model = model if model is not None else Model()
    locks = {key: threading.Lock() for key in keys}
    errors = []

    def client_thread(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        client = engine.client()
        try:
            for _ in range(operations):
                op = random_op(rng, keys)
                with locks[op.key]:
                    perform(client, table.name, op, model)
        except Exception as error:  # surfaced by the test
            errors.append(error)

    workers = [threading.Thread(target=client_thread, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors, errors
    return model


def follow(mapping):
    """Run the mapping in a thread until stopped; returns (stop, thread)."""
    stop = threading.Event()
    thread = threading.Thread(target=mapping.run, args=(stop, 0.02), daemon=True)
    thread.start()
    return stop, thread


def settle(mapping, stop, thread):
    """Stop following, then process whatever is left: the stream is quiescent afterwards."""
    stop.set()
    thread.join(timeout=60)
    assert not thread.is_alive()
    return mapping.drain(quiet_polls=2, timeout=120)


def test_concurrent_clients_while_the_handler_runs(engine, make_table, invoker, capsys):
    table = make_table()
    keys = [f"user-{i}" for i in range(60 if SOAK else 20)]
    threads, operations = (8, 1500) if SOAK else (4, 150)
    mapping = LocalEventSourceMapping(engine.streams_client(), table.stream_arn, invoker, batch_size=25)
    stop, thread = follow(mapping)
    model = run_clients(engine, table, keys, threads, operations, seed=1)
    stats = settle(mapping, stop, thread)

    found = violations(scan(table.client, table.name), model, keys)
    report(
        capsys,
        f"concurrent clients: {threads} threads, {model.operations} operations on {len(keys)} shared keys, "
        f"{stats.records} stream records in {stats.batches} batches, {len(found)} violations",
    )
    assert found == []
    assert model.operations == threads * operations


def transient_faults(client, stubborn: set[str], seed: int):
    """Fail writes as DynamoDB can, deterministically per key: statements answered with a transient per-statement
    code (throttling, a 500...), and every fourth request refused as a whole (botocore's retries absorb those). A
    `stubborn` key's statement fails its first 7 tries (more than the gateway's 5, so the failure must come back to
    the mapping as a batch failure and be retried there); any other key's may fail its first 2 (the gateway sends it
    again). Bounded faults keep botocore's retry quota from running dry, which would make the run a matter of luck."""
    rng = random.Random(seed)
    lock = threading.Lock()
    attempts: dict[str, int] = {}
    counts = {"sent": 0, "injected": 0, "requests": 0, "refused": 0}
    codes = ["ThrottlingError", "ProvisionedThroughputExceeded", "InternalServerError", "RequestLimitExceeded"]
    codes += ["TransactionConflict"]
    kinds = [(400, "ThrottlingException"), (500, "InternalServerError")]

    def code_for(statement):
        key = next(p["S"] for p in statement["Parameters"] if p.get("S", "").startswith("user-"))
        with lock:
            counts["sent"] += 1
            attempts[key] = attempts.get(key, 0) + 1
            if attempts[key] > (7 if key in stubborn else 2 * (rng.random() < 0.5)):
                return None
            counts["injected"] += 1
            return rng.choice(codes)

    def refuse_some(request, **_):
        with lock:
            counts["requests"] += 1
            if counts["requests"] % 4:
                return None
            counts["refused"] += 1
            status, code = rng.choice(kinds)
        return dynamodb_error(request.url, status, code)

    remove = fail_statements(client, code_for)
    client.meta.events.register("before-send.dynamodb.BatchExecuteStatement", refuse_some)

    def undo():
        client.meta.events.unregister("before-send.dynamodb.BatchExecuteStatement", refuse_some)
        remove()

    return undo, counts


@pytest.mark.parametrize("reporting", [True, False], ids=["partial-failures", "raise"])
def test_throttling_and_transient_errors_lose_nothing(engine, make_table, stage_invoker, monkeypatch, reporting):
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0.001)
    monkeypatch.setattr(dynamodb, "STATEMENT_BACKOFF_SECONDS", 0.001)
    handler = stage_invoker(REPORT_BATCH_ITEM_FAILURES=str(reporting).lower())
    table = make_table()
    keys = [f"user-{i}" for i in range(40)]
    model = Model()
    client = engine.client()
    for i, key in enumerate(keys):
        perform(client, table.name, Op("put", key, EMAILS[i % 6]), model)
    undo, counts = transient_faults(
        processor_for(handler.settings).gateway.client, stubborn={"user-3", "user-17", "user-30"}, seed=7
    )
    try:
        mapping = LocalEventSourceMapping(
            engine.streams_client(),
            table.stream_arn,
            handler,
            batch_size=10,
            report_batch_item_failures=reporting,
            max_attempts=10,
        )
        stats = mapping.drain(timeout=120)
    finally:
        undo()
    assert counts["injected"] > 0 and counts["sent"] > counts["injected"] and counts["refused"] > 0
    # The stubborn keys outlast the gateway's tries once each: the mapping had to retry their batches.
    assert stats.failed_attempts >= 3
    assert stats.discarded_batches == []
    assert violations(scan(table.client, table.name), model, keys) == []


def test_a_handler_that_dies_half_way_through_a_batch_is_retried_harmlessly(engine, make_table, invoker):
    table = make_table()
    keys = [f"user-{i}" for i in range(30)]
    model = Model()
    for i, key in enumerate(keys):
        perform(table.client, table.name, Op("put", key, EMAILS[i % 6]), model)
    calls = {"count": 0}

    def die_once(**_):
        calls["count"] += 1
        if calls["count"] == 1:  # the first request's writes are in the table, the rest of the batch's are not
            raise RuntimeError("the function died half-way")

    events = processor_for(invoker.settings).gateway.client.meta.events
    events.register("after-call.dynamodb.BatchExecuteStatement", die_once)
    try:
        mapping = LocalEventSourceMapping(engine.streams_client(), table.stream_arn, invoker)
        stats = mapping.drain()
    finally:
        events.unregister("after-call.dynamodb.BatchExecuteStatement", die_once)
    # At least once: on a loaded machine the engine may also answer a retry after the function's 2 s read timeout.
    assert calls["count"] > 1 and stats.failed_attempts >= 1, "the batch was not retried"
    assert stats.discarded_batches == []
    assert violations(scan(table.client, table.name), model, keys) == []


def test_a_poison_record_does_not_stop_the_shard(engine, make_table, invoker):
    table = make_table()
    model = Model()
    for i in range(10):
        perform(table.client, table.name, Op("put", f"user-{i}", "x@gmail.com"), model)
    poisoned = []

    def poison(event):
        # The record of user-3 arrives with a body the handler can't decode.
        for record in event["Records"]:
            if record["dynamodb"].get("Keys") == {"Id": {"S": "user-3"}} and not poisoned:
                record["dynamodb"]["Keys"] = {"Id": {"BROKEN": "?"}}
                poisoned.append(record["dynamodb"]["SequenceNumber"])
        return invoker(event)

    seen = len(invoker.collector.summaries)
    mapping = LocalEventSourceMapping(engine.streams_client(), table.stream_arn, poison, batch_size=4)
    stats = mapping.drain()
    summaries = invoker.collector.summaries[seen:]
    assert len(poisoned) == 1 and stats.failed_attempts == 0
    assert sum(s["malformed"] for s in summaries) == 1
    items = scan(table.client, table.name)
    assert all(items[f"user-{i}"]["IsPersonalEmail"] is True for i in range(10) if i != 3)
    assert "IsPersonalEmail" not in items["user-3"]  # its only record was the poisoned one


def _start_poller(engine, table, checkpoints: Path, project: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localdev.run",
            "--endpoint",
            engine.endpoint,
            "--table",
            table.name,
            "--checkpoints",
            str(checkpoints),
            "--stage",
            STAGE,
        ],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def _checkpoint_is_last_record(records, checkpoints, table) -> bool:
    """All 120 records are in the stream and the poller's checkpoint is the last of them."""
    saved = CheckpointStore(checkpoints).load(table.stream_arn)
    return len(records) == 120 and list(saved.values()) == [records[-1]["dynamodb"]["SequenceNumber"]]


def test_a_killed_poller_resumes_from_its_checkpoints(engine, make_table, stream_records, project, tmp_path):
    table = make_table()
    checkpoints = tmp_path / "checkpoints.json"
    model = Model()
    keys = [f"user-{i}" for i in range(60)]
    for i, key in enumerate(keys[:30]):
        perform(table.client, table.name, Op("put", key, EMAILS[i % 6]), model)

    first = _start_poller(engine, table, checkpoints, project)
    try:
        assert _wait_until(lambda: CheckpointStore(checkpoints).load(table.stream_arn), 60), "no checkpoint written"
    finally:
        first.send_signal(signal.SIGKILL)  # no chance to clean up: a crash
        first.communicate(timeout=30)
    [(_shard, checkpoint_at_kill)] = CheckpointStore(checkpoints).load(table.stream_arn).items()
    for i, key in enumerate(keys[30:]):
        perform(table.client, table.name, Op("put", key, EMAILS[i % 6]), model)

    second = _start_poller(engine, table, checkpoints, project)
    try:
        settled = _wait_until(lambda: violations(scan(table.client, table.name), model, keys) == [], 90)
        # Every item needed a write, so the stream ends with the handler's 60 writes coming back; the poller has
        # taken the last of them once its checkpoint is the stream's last record (one shard, as above).
        caught_up = _wait_until(lambda: _checkpoint_is_last_record(stream_records(table), checkpoints, table), 60)
    finally:
        second.send_signal(signal.SIGTERM)
        output, _ = second.communicate(timeout=30)
    assert settled, violations(scan(table.client, table.name), model, keys)
    assert caught_up, (len(stream_records(table)), CheckpointStore(checkpoints).load(table.stream_arn), output)
    assert second.returncode == 0, output
    records = stream_records(table)
    assert len(records) == 120
    covered = sum(1 for r in records if int(r["dynamodb"]["SequenceNumber"]) <= int(checkpoint_at_kill))
    delivered = sum(int(line.split("batch of ")[1].split()[0]) for line in output.splitlines() if "batch of" in line)
    # Resumed right after the checkpoint: nothing before it again, everything after it once.
    assert 0 < covered < 120
    assert delivered == len(records) - covered, output
