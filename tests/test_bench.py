"""The benchmark's bookkeeping (pure) and a smoke run of the whole harness: structure and correctness, not speed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections import Counter

import pytest

from bench import lambda_model, quota
from bench import sizes as bench_sizes
from bench.hooks import CallCounter
from bench.plot import plot
from bench.report import backfill_lines, memory_table, percentile, render, rows
from bench.subjects import BASELINE, OURS
from bench.workload import (
    WALKTHROUGH_DOMAINS,
    Delete,
    Put,
    RemoveAttribute,
    SetAttribute,
    mixed_workload,
    replay,
    violations,
)
from chalicelib.domains import EmailClassifier
from tests.documented import GROUP

CLASSIFY = EmailClassifier(frozenset(WALKTHROUGH_DOMAINS)).is_personal_email


def test_the_lower_bound_counts_each_item_left_wrong_by_a_round_once():
    rounds = [
        [
            Put({"Id": "a", "Email": "a@gmail.com"}),
            SetAttribute("a", "Email", "a@example.com"),  # two records, one item, one write
            Put({"Id": "b", "Email": "b@gmail.com"}),
            Delete("b"),  # gone before the batch is handled: no write
            Put({"Id": "c", "Email": "c@outlook.com", "IsPersonalEmail": True}),  # already right
        ],
        [SetAttribute("a", "Name", "n"), RemoveAttribute("c", "Email")],  # right / flag must go
    ]
    lower_bound, final = replay(rounds, CLASSIFY)
    assert lower_bound == 2
    assert final == {
        "a": {"Id": "a", "Email": "a@example.com", "IsPersonalEmail": False, "Name": "n"},
        "c": {"Id": "c"},
    }


def test_violations_name_what_is_wrong_with_each_item():
    expected = {
        "ok": {"Id": "ok", "Email": "x@gmail.com", "IsPersonalEmail": True},
        "stale": {"Id": "stale", "Email": "x@example.com", "IsPersonalEmail": False},
        "unflagged": {"Id": "unflagged", "Email": "x@GMAIL.COM", "IsPersonalEmail": True},
        "no-email": {"Id": "no-email"},
        "renamed": {"Id": "renamed", "Name": "a"},
        "lost": {"Id": "lost"},
    }
    actual = [
        {"Id": "ok", "Email": "x@gmail.com", "IsPersonalEmail": True},
        {"Id": "stale", "Email": "x@example.com", "IsPersonalEmail": True},
        {"Id": "unflagged", "Email": "x@GMAIL.COM"},
        {"Id": "no-email", "IsPersonalEmail": False},
        {"Id": "renamed", "Name": "b"},
        {"Id": "resurrected", "IsPersonalEmail": False},
    ]
    assert violations(expected, actual, CLASSIFY) == Counter(
        {
            "flag of the wrong value": 1,
            "flag missing": 1,
            "flag present without a string Email": 1,
            "another attribute changed": 1,
            "item brought back after its delete": 1,
            "item lost": 1,
        }
    )


def test_the_mixed_workload_is_deterministic_and_fits_one_batch_per_round():
    first = mixed_workload(CLASSIFY, seed_items=50, rounds=8, operations_per_round=60)
    again = mixed_workload(CLASSIFY, seed_items=50, rounds=8, operations_per_round=60)
    assert first.rounds == again.rounds and first.lower_bound == again.lower_bound
    assert all(len(round_) <= 100 for round_ in first.rounds)
    assert set(first.kinds) == {"insert", "email change", "other attribute", "re-put", "e-mail removed", "delete"}

    def keys(round_):
        return [operation.item["Id"] if isinstance(operation, Put) else operation.key for operation in round_]

    assert any(len(set(keys(round_))) < len(round_) for round_ in first.rounds), "no key has two records in a batch"
    assert 0 < first.lower_bound < first.client_writes


def test_percentile_is_the_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50 and percentile(values, 0.99) == 99 and percentile(values, 1.0) == 100
    assert percentile([3.0], 0.99) == 3.0


@pytest.fixture(scope="module")
def smoke(documented_runs):
    """The README tour's `python -m bench --smoke` (run once, in a fresh clone): the result document it wrote."""
    run = documented_runs.of(".venv/bin/python -m bench --smoke")
    assert run.returncode == 0, run.stdout[-3000:]
    return json.loads((documented_runs.temp / "email-checker-bench-smoke" / "results.json").read_text())


@pytest.mark.xdist_group(GROUP)
def test_smoke_run_writes_and_invariant(smoke):
    writes = smoke["writes"]
    ours, baseline = writes["handlers"][OURS], writes["handlers"][BASELINE]
    assert ours["writes"] == writes["lower_bound"] > 0
    assert ours["requests"] > 0 and baseline["requests"] >= baseline["writes"]  # one request per UpdateItem, at least
    assert ours["writes_per_lower_bound"] == 1.0
    assert ours["violating_items"] == 0 and ours["violations"] == {}
    # The workload holds what the walkthrough's function gets wrong; the bench must see it.
    assert baseline["violating_items"] == sum(baseline["violations"].values()) > 0
    assert baseline["writes"] > 0 and ours["failed_invocations"] == baseline["failed_invocations"] == 0


@pytest.mark.xdist_group(GROUP)
def test_smoke_run_every_timed_measure_did_the_right_writes(smoke):
    sizes = smoke["sizes"]
    for name in (OURS, BASELINE):
        batch = smoke["batch_time"]["handlers"][name]
        assert batch["all_writes_right"]
        for key in ("writes_0ms", "writes_5ms", "writes_cpu_0ms", "writes_cpu_5ms", "no_writes_0ms", "no_writes_5ms"):
            assert len(batch[key]) == sizes["batch_repetitions"]
        assert all(0 < share <= 1.5 for share in batch["requests_per_write_5ms"])
        cold = smoke["cold_start"]["handlers"][name]
        assert cold["all_writes_right"]
        for latency in ("0ms", "5ms"):
            assert len(cold[latency]["first_batch_s"]) == sizes["cold_runs"]
            assert all(i < f for i, f in zip(cold[latency]["import_s"], cold[latency]["first_batch_s"], strict=True))
        lag = smoke["lag"]["handlers"][name]
        assert lag["all_writes_right"] and lag["not_visible"] == 0 and len(lag["lags_s"]) == sizes["lag_items"]
    assert smoke["package"][OURS]["bytes"] > smoke["package"][BASELINE]["bytes"] > 0
    assert smoke["cpu_profile"]["us_per_record_best"] > 0 and smoke["cpu_profile"]["profile_top_own_time"]
    engine = smoke["engine"]
    assert engine["with_stream"]["sequential_ms"] > 0 and engine["without_stream"]["concurrent_ms"] > 0
    # The backfill line: one run per segment count, each of which checked it scanned and fixed every item.
    assert [run["segments"] for run in smoke["backfill"]] == list(sizes["backfill_segments"])
    assert all(run["items"] == sizes["backfill_items"] and run["fixed_per_second"] > 0 for run in smoke["backfill"])
    assert "segments" in backfill_lines(smoke["backfill"])


@pytest.mark.xdist_group(GROUP)
def test_smoke_run_table_targets_and_figure(smoke, documented_runs, tmp_path):
    table = render(rows(smoke))
    assert OURS in table and BASELINE in table
    records = smoke["sizes"]["batch_records"]
    stage_mb = bench_sizes.stage_memory(documented_runs.clone)
    measures = {target["measure"] for target in smoke["targets"]}
    mode = smoke["memory"]["mode"]
    assert measures == {
        f"writes / lower bound ({smoke['writes']['client_writes']} client writes, "
        f"lower bound {smoke['writes']['lower_bound']})",
        "items left violating the invariant",
        "client CPU of the above, 5 ms round trip",
        f"requests per write, batch of {records} writes (write-heavy)",
        f"batch of {records} no-op records vs baseline's {records} writes, no added latency",
        f"batch of {records} no-op records vs baseline's {records} writes, 5 ms round trip",
        f"batch of {records} writes, 5 ms round trip, at {stage_mb} MB's CPU share ({mode})",
        f"cold start: import + first batch of {records} writes, 5 ms round trip, at {stage_mb} MB's CPU share ({mode})",
        "one shard at 256 MB's CPU share: changes/s, each a write, lag p99 < 1 s",
    }
    assert all(isinstance(target["passed"], bool) for target in smoke["targets"])
    figure = tmp_path / "results.png"
    plot(smoke, figure)
    assert figure.read_bytes().startswith(b"\x89PNG")


@pytest.mark.xdist_group(GROUP)
def test_smoke_run_memory_sizes_under_a_recorded_quota_mode(smoke, documented_runs):
    memory = smoke["memory"]
    assert memory["mode"] in (quota.CGROUP_V1, quota.CGROUP_V2, quota.MODEL)
    sizes = [row["memory_mb"] for row in memory["rows"]]
    configured = bench_sizes.stage_memory(documented_runs.clone)
    assert sizes == sorted({*smoke["sizes"]["memory_sizes"], configured, bench_sizes.SHARD_TARGET_MB})
    assert memory["stage_memory_mb"] == configured and memory["prices"]["sources"]
    for row in memory["rows"]:
        assert row["mode"] == memory["mode"] and row["cpu_share"] == row["memory_mb"] / quota.FULL_VCPU_MB
        # A real quota leaves its counters; the model has none (and says why no cgroup could be made).
        assert bool(row["throttling"]) == (row["mode"] != quota.MODEL)
        assert row["mode"] != quota.MODEL or row["mode_reason"]
        for name in (OURS, BASELINE):
            handler = row["handlers"][name]
            assert handler["all_writes_right"] and handler["writes_per_change"] == 1.0
            assert handler["requests_per_write"] > 0 and handler["rate_source"] in ("measured", "computed")
            batch = handler["batch"][str(memory["records"])]
            assert len(batch["seconds"]) == memory["repetitions"] and all(
                w == memory["records"] for w in batch["writes"]
            )
            assert len(handler["cold_start"]["samples"]["seconds"]) == smoke["sizes"]["memory_cold_runs"]
            assert (
                handler["changes_per_s"] > 0 and handler["cost"]["total_usd"] > handler["cost"]["dynamodb_writes_usd"]
            )
            if row["mode"] != quota.MODEL:
                assert handler["ladder"]["runs"] and all(run["all_writes_right"] for run in handler["ladder"]["runs"])
    assert memory["recommended"]["memory_mb"] in sizes
    text = memory_table(memory)
    assert memory["mode"] in text and all(f"{size} MB" in text for size in sizes)


def test_the_counter_counts_statements_and_requests_whatever_the_write_api(engine, make_table):
    table = make_table(stream=False)
    client = engine.client()
    counter = CallCounter(client)
    client.put_item(TableName=table.name, Item={"Id": {"S": "a"}, "Email": {"S": "a@example.com"}})
    client.update_item(
        TableName=table.name,
        Key={"Id": {"S": "a"}},
        UpdateExpression="SET IsPersonalEmail = :f",
        ExpressionAttributeValues={":f": {"BOOL": False}},
    )
    statement = f'UPDATE "{table.name}" SET IsPersonalEmail = ? WHERE Id = ? AND Email = ?'
    answer = client.batch_execute_statement(
        Statements=[
            {"Statement": statement, "Parameters": [{"BOOL": False}, {"S": key}, {"S": "a@example.com"}]}
            for key in ("a", "b", "c")
        ]
    )
    assert len(answer["Responses"]) == 3
    assert counter.count == 1 + 3  # the UpdateItem, and every statement: each is one conditional write
    assert counter.requests == 3  # PutItem, UpdateItem, one BatchExecuteStatement
    select = f'SELECT * FROM "{table.name}" WHERE Id = ?'
    client.batch_execute_statement(Statements=[{"Statement": select, "Parameters": [{"S": "a"}]}])
    assert counter.count == 4 and counter.requests == 4  # a read is a request, not a write


def test_a_shard_keeps_up_while_two_batches_fit_the_lag_limit():
    # 10 ms fixed and 1 ms per change: 100 records take 110 ms, well inside (1 s - gap) / 2.
    assert lambda_model.sustainable_rate(0.010, 0.001, 100) == pytest.approx(100 / 0.110)
    # 20 ms per change: the batch that fits is (0.45 - 0.05) / 0.02 = 20 records.
    assert lambda_model.sustainable_rate(0.050, 0.020, 100) == pytest.approx(20 / 0.450)
    assert lambda_model.sustainable_rate(0.600, 0.001, 100) == 0.0
    fixed, per_change = lambda_model.batch_line(10, 0.020, 100, 0.110)
    assert fixed == pytest.approx(0.010) and per_change == pytest.approx(0.001)


def test_cost_per_million_changes_adds_lambda_duration_requests_and_write_units():
    cost = lambda_model.cost_per_million(1024, 0.0995, 100, 1.0)
    prices = lambda_model.PRICES
    assert cost["lambda_duration_usd"] == pytest.approx(10_000 * 0.1 * prices["lambda_usd_per_gb_second"])
    assert cost["lambda_requests_usd"] == pytest.approx(10_000 * prices["lambda_usd_per_request"])
    assert cost["dynamodb_writes_usd"] == pytest.approx(0.625)
    assert cost["total_usd"] == pytest.approx(sum(v for k, v in cost.items() if k != "total_usd"))
    options = [(128, 300.0, 0.70), (256, 1200.0, 0.66), (512, 2400.0, 0.68)]
    assert lambda_model.recommend_memory(options)["memory_mb"] == 256
    assert lambda_model.recommend_memory(options, target_rate=5000)["memory_mb"] == 512


def test_without_cgroups_the_quota_falls_back_to_the_cpu_time_model(monkeypatch, tmp_path):
    monkeypatch.setattr(quota, "V1_ROOT", tmp_path / "no-v1")
    monkeypatch.setattr(quota, "V2_ROOT", tmp_path / "no-v2")
    with quota.cpu_quota(256) as modelled:
        assert modelled.mode == quota.MODEL and not modelled.enforced and "absent" in modelled.reason
        assert modelled.command(["python", "-V"]) == ["python", "-V"]
    # 0.1 s of CPU at 256 MB's share takes 0.1 x 1769/256 s; the 0.2 s spent waiting stays.
    assert quota.modelled_seconds(0.3, 0.1, 256) == pytest.approx(0.2 + 0.1 * 1769 / 256)
    assert quota.modelled_seconds(0.3, 0.1, 1769) == pytest.approx(0.3)


@pytest.mark.skipif(not os.access(quota.V1_ROOT, os.W_OK), reason="no writable cgroup v1 cpu controller here")
def test_a_cgroup_quota_throttles_its_process_and_is_removed_even_on_error():
    spin = "import time\nend = time.process_time() + 0.1\nwhile time.process_time() < end: pass"
    with pytest.raises(RuntimeError), quota.cpu_quota(128) as limited:
        assert limited.mode == quota.CGROUP_V1
        path = limited.path
        started = time.perf_counter()
        subprocess.run(limited.command([sys.executable, "-c", spin]), check=True)
        took = time.perf_counter() - started
        assert limited.throttling()["nr_throttled"] > 0
        # 0.1 s of CPU at 128/1769 of a CPU: over a second of wall time (at full speed, a tenth of one).
        assert took > 0.1 * 1769 / 128 * 0.7
        raise RuntimeError("the measure failed")
    assert not path.exists() and not math.isnan(took)


def test_on_cgroup_v2_the_quota_is_written_to_cpu_max(monkeypatch, tmp_path):
    # A stand-in for a v2 hierarchy's files (the real one needs a cgroup2 mount this test can't assume).
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    monkeypatch.setattr(quota, "V1_ROOT", tmp_path / "no-v1")
    monkeypatch.setattr(quota, "V2_ROOT", root)
    with quota.cpu_quota(256) as limited:
        assert limited.mode == quota.CGROUP_V2 and limited.enforced
        assert (limited.path / "cpu.max").read_text() == f"{round(100_000 * 256 / 1769)} 100000"
        assert (root / "cgroup.subtree_control").read_text() == "+cpu"
        assert limited.command(["python", "-V"])[-2:] == ["python", "-V"]
        (limited.path / "cpu.max").unlink()  # cgroupfs removes its own files with the group; a plain folder can't
        path = limited.path
    assert not path.exists()
