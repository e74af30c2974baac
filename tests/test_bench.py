"""The benchmark's bookkeeping (pure) and a smoke run of the whole harness: structure and correctness, not speed."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from bench import suite
from bench.plot import plot
from bench.report import backfill_lines, percentile, render, rows
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
def smoke(engine):
    return json.loads(json.dumps(suite.run(engine, suite.SMOKE)))  # what the JSON file holds


def test_smoke_run_writes_and_invariant(smoke):
    writes = smoke["writes"]
    ours, baseline = writes["handlers"][OURS], writes["handlers"][BASELINE]
    assert ours["update_item_calls"] == writes["lower_bound"] > 0
    assert ours["writes_per_lower_bound"] == 1.0
    assert ours["violating_items"] == 0 and ours["violations"] == {}
    # The workload holds what the walkthrough's function gets wrong; the bench must see it.
    assert baseline["violating_items"] == sum(baseline["violations"].values()) > 0
    assert baseline["update_item_calls"] > 0 and ours["failed_invocations"] == baseline["failed_invocations"] == 0


def test_smoke_run_every_timed_measure_did_the_right_writes(smoke):
    sizes = smoke["sizes"]
    for name in (OURS, BASELINE):
        batch = smoke["batch_time"]["handlers"][name]
        assert batch["all_writes_right"]
        for key in ("writes_0ms", "writes_5ms", "writes_cpu_0ms", "writes_cpu_5ms", "no_writes_0ms", "no_writes_5ms"):
            assert len(batch[key]) == sizes["batch_repetitions"]
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


def test_smoke_run_table_targets_and_figure(smoke, tmp_path):
    table = render(rows(smoke))
    assert OURS in table and BASELINE in table
    measures = {target["measure"].split(" (")[0].split(",")[0] for target in smoke["targets"]}
    assert measures == {
        "writes / lower bound",
        "items left violating the invariant",
        f"batch of {smoke['sizes']['batch_records']} writes",
        f"batch of {smoke['sizes']['batch_records']} no-op records vs baseline's "
        f"{smoke['sizes']['batch_records']} writes",
        f"cold start: import + first batch of {smoke['sizes']['batch_records']} writes",
        "end-to-end lag p99",
    }
    assert all(isinstance(target["passed"], bool) for target in smoke["targets"])
    figure = tmp_path / "results.png"
    plot(smoke, figure)
    assert figure.read_bytes().startswith(b"\x89PNG")
