"""Both handlers at Lambda memory sizes: each in its own process under the size's CPU share (bench.quota), DynamoDB
Local outside it. Per size and handler: a batch of writes and a cold start with a 5 ms round trip, the highest rate
one shard sustains with lag p99 under 1 s, and the cost per million changes.

python -m bench.memory [--sizes 128,256,...] [--smoke] [--model] [--json PATH]   (this table alone; `make bench` runs
it with everything else)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import lambda_model
from bench.measure import (
    SUBJECTS,
    _endpoint,
    _engine_environment,
    batch_workload,
    lag_run,
    new_table,
    progress,
    put_all,
    wrong_flags,
)
from bench.quota import CpuQuota, cpu_quota, cpu_share, modelled_seconds
from bench.report import median, memory_table, percentile
from bench.sizes import FULL, SHARD_TARGET_MB, SMOKE, Sizes, memory_sizes_for, stage_memory
from bench.subjects import OURS, ROOT, environment, stage_environment
from localdev.dynamodb_local import DynamoDBLocal, PrerequisiteMissing

KEPT_UP = 0.9  # the writer reached this share of the asked rate: DynamoDB Local served it
WARMUP = 30  # items handled before each lag run's clock starts


class Worker:
    """A `bench.worker` process started inside the quota (before it does anything), and its request channel."""

    def __init__(self, quota: CpuQuota, variables: dict[str, str]) -> None:
        self.quota = quota
        self._process = subprocess.Popen(
            quota.command([sys.executable, "-m", "bench.worker"]),
            cwd=ROOT,
            env={**os.environ, **variables},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker ended (exit status {self._process.wait(timeout=10)})")
        return json.loads(line)

    def load(self, name: str, table: str) -> None:
        """Build the handler for the table in the worker."""
        self._ask({"load": name, "table": table})

    def invoke(self, table: str, event: dict[str, Any], latency: float) -> dict[str, Any]:
        """One invocation: wall and CPU seconds, the wall time at the share (`seconds`), writes, requests, answer."""
        result = self._ask({"invoke": event, "table": table, "latency": latency})
        result["seconds"] = self.effective(result["wall_s"], result["cpu_s"])
        return result

    def effective(self, wall_s: float, cpu_s: float) -> float:
        """The wall time at the memory size's share: as measured under a quota, modelled from CPU time without one."""
        return wall_s if self.quota.enforced else modelled_seconds(wall_s, cpu_s, self.quota.memory_mb)

    def close(self) -> None:
        """End the worker (stdin closed: it returns), killing it if it does not."""
        assert self._process.stdin is not None
        self._process.stdin.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _batches(
    worker: Worker, engine: DynamoDBLocal, name: str, sizes: Sequence[int], repetitions: int, latency: float
) -> tuple[dict[str, Any], bool]:
    client = engine.client()
    samples: dict[str, Any] = {}
    right = True
    setups = []
    for records in sizes:
        table, _ = new_table(engine, f"quota-{name}-{records}", stream=False)
        worker.load(name, table)
        setups.append((records, table, batch_workload(table, records)))
        samples[str(records)] = {
            "seconds": [],
            "sustained_s": [],
            "wall_s": [],
            "cpu_s": [],
            "writes": [],
            "requests": [],
        }
    for repetition in range(repetitions + 1):  # the first is a warm-up, not kept
        for records, table, workload in setups:
            put_all(client, table, workload.items)
            result = worker.invoke(table, workload.needs_writes, latency)
            # CFS hands out the quota per 100 ms period: a batch shorter than one period's quota runs at full speed,
            # a shard kept busy can't. Back to back, a batch takes at least its CPU time at the share.
            result["sustained_s"] = max(result["seconds"], result["cpu_s"] / cpu_share(worker.quota.memory_mb))
            right = right and result["writes"] == records and wrong_flags(client, table) == 0
            if repetition:
                for key, values in samples[str(records)].items():
                    values.append(result[key])
    return samples, right


def _cold_starts(
    quota: CpuQuota, engine: DynamoDBLocal, name: str, records: int, runs: int, latency: float, scratch: Path
) -> tuple[dict[str, list[float]], bool]:
    client = engine.client()
    table, _ = new_table(engine, f"quota-cold-{name}", stream=False)
    workload = batch_workload(table, records)
    event_path, result_path = scratch / f"{name}.json", scratch / f"{name}-result.json"
    event_path.write_text(json.dumps(workload.needs_writes))
    extra = stage_environment() if name == OURS else {"TABLE_NAME": table}
    samples: dict[str, list[float]] = {"seconds": [], "first_batch_s": [], "cpu_s": [], "import_s": []}
    right = True
    with _endpoint(engine, latency) as endpoint:
        for _ in range(runs):
            put_all(client, table, workload.items)
            subprocess.run(
                quota.command([sys.executable, "-m", "bench.coldstart", name, str(event_path), str(result_path)]),
                cwd=ROOT,
                env={**os.environ, **_engine_environment(engine, endpoint), **extra},
                check=True,
                stdout=subprocess.DEVNULL,
                timeout=300,
            )
            result = json.loads(result_path.read_text())
            effective = (
                result["first_batch_s"]
                if quota.enforced
                else modelled_seconds(result["first_batch_s"], result["cpu_s"], quota.memory_mb)
            )
            samples["seconds"].append(effective)
            for key in ("first_batch_s", "cpu_s", "import_s"):
                samples[key].append(result[key])
            right = right and wrong_flags(client, table) == 0
    return samples, right


def _ladder(
    engine: DynamoDBLocal, name: str, invoker: Callable[[str, str], Any], rates: Sequence[float], seconds: float
) -> dict[str, Any]:
    """Lag runs at rising rates until the handler misses (lag p99 >= 1 s, or a flag not seen) or DynamoDB Local can't
    take the writes: the highest rate passed, and why the ladder stopped."""
    runs, best, stopped = [], 0.0, "ladder top"
    for rate in rates:
        items = max(10, round(rate * seconds))
        warmup = min(WARMUP, items)
        run = lag_run(engine, name, items, rate, idle_seconds=0.25, timeout=3.0, invoker=invoker, warmup_items=warmup)
        p99 = percentile(run["lags_s"], 0.99)
        kept_up = run["write_rate_achieved"] >= KEPT_UP * rate
        passed = kept_up and p99 < lambda_model.LAG_LIMIT_S and run["not_visible"] == 0 and run["all_writes_right"]
        runs.append(
            {
                "rate_per_s": rate,
                "items": items,
                "p99_s": p99,
                "not_visible": run["not_visible"],
                "write_rate_achieved": run["write_rate_achieved"],
                "all_writes_right": run["all_writes_right"],
                "passed": passed,
            }
        )
        if not kept_up:
            stopped = "engine"
            break
        if not passed:
            stopped = "handler"
            break
        best = rate
    return {"runs": runs, "highest_passed_per_s": best, "stopped_by": stopped}


def _sustained(ladder: dict[str, Any] | None, computed: float) -> tuple[float, str]:
    """The row's rate: measured where the handler itself set the limit on DynamoDB Local, computed where the engine
    (or the ladder's top) did, or where no quota could be enforced."""
    if ladder and ladder["stopped_by"] == "handler":
        return ladder["highest_passed_per_s"], "measured"
    if ladder and ladder["highest_passed_per_s"] >= computed:
        return ladder["highest_passed_per_s"], "measured"
    return computed, "computed"


def measure_memory(
    engine: DynamoDBLocal,
    memory_sizes: Sequence[int],
    records: int,
    repetitions: int,
    cold_runs: int,
    lag_rates: Sequence[float],
    lag_seconds: float,
    latency: float = 0.005,
    allow_cgroups: bool = True,
) -> dict[str, Any]:
    """Every memory size, both handlers: batches of `records` and of a tenth of it (the line through the two gives
    fixed and per-change time), cold starts, the lag ladder, rates and costs."""
    small = max(1, records // 10)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-quota-") as folder:
        scratch = Path(folder)
        for memory in memory_sizes:
            with cpu_quota(memory, allow_cgroups) as quota:
                row: dict[str, Any] = {
                    "memory_mb": memory,
                    "cpu_share": cpu_share(memory),
                    "mode": quota.mode,
                    "mode_reason": quota.reason,
                    "handlers": {},
                }
                for name in SUBJECTS:
                    row["handlers"][name] = _measure_one(
                        engine, quota, name, records, small, repetitions, cold_runs, lag_rates, lag_seconds, latency
                    )
                    cold, right = _cold_starts(quota, engine, name, records, cold_runs, latency, scratch)
                    row["handlers"][name]["cold_start"] = {
                        "runs": cold_runs,
                        "samples": cold,
                        "median_s": median(cold["seconds"]),
                    }
                    row["handlers"][name]["all_writes_right"] &= right
                row["throttling"] = quota.throttling()
            rows.append(row)
            progress(f"memory: {memory} MB done ({quota.mode})")
    modes = sorted({row["mode"] for row in rows})
    recommendation = lambda_model.recommend_memory(
        [
            (row["memory_mb"], row["handlers"][OURS]["changes_per_s"], row["handlers"][OURS]["cost"]["total_usd"])
            for row in rows
        ]
    )
    return {
        "records": records,
        "small_records": small,
        "repetitions": repetitions,
        "latency_ms": latency * 1000,
        "mode": modes[0] if len(modes) == 1 else " / ".join(modes),
        "full_vcpu_mb": 1769,
        "lag_rates": list(lag_rates),
        "lag_seconds": lag_seconds,
        "poll_gap_s": lambda_model.POLL_GAP_S,
        "prices": lambda_model.PRICES,
        "target_rate_per_s": lambda_model.TARGET_RATE,
        "rows": rows,
        "recommended": recommendation,
    }


def _measure_one(
    engine: DynamoDBLocal,
    quota: CpuQuota,
    name: str,
    records: int,
    small: int,
    repetitions: int,
    cold_runs: int,
    lag_rates: Sequence[float],
    lag_seconds: float,
    latency: float,
) -> dict[str, Any]:
    with Worker(quota, {}) as worker:
        batches, right = _batches(worker, engine, name, (records, small), repetitions, latency)
        big, little = batches[str(records)], batches[str(small)]
        big_s, small_s = median(big["sustained_s"]), median(little["sustained_s"])
        fixed, per_change = lambda_model.batch_line(small, small_s, records, big_s)
        computed = lambda_model.sustainable_rate(fixed, per_change, records)
        ladder = None
        if quota.enforced and lag_rates:

            def invoker(handler: str, table: str) -> Callable[[dict[str, Any]], Any]:
                worker.load(handler, table)
                return lambda event: worker.invoke(table, event, latency)["answer"]

            ladder = _ladder(engine, name, invoker, lag_rates, lag_seconds)
            right = right and all(run["all_writes_right"] for run in ladder["runs"])
    rate, source = _sustained(ladder, computed)
    writes = sum(big["writes"]) / (records * len(big["writes"]))
    requests = sum(big["requests"]) / max(1, sum(big["writes"]))
    return {
        "batch": batches,
        "batch_median_s": median(big["seconds"]),
        "sustained_median_s": big_s,
        "cpu_per_change_s": median(big["cpu_s"]) / records,
        "fixed_s": fixed,
        "per_change_s": per_change,
        "writes_per_change": writes,
        "requests_per_write": requests,
        "computed_per_s": computed,
        "ladder": ladder,
        "changes_per_s": rate,
        "rate_source": source,
        "cost": lambda_model.cost_per_million(quota.memory_mb, big_s, records, writes),
        "cold_start": {},
        "all_writes_right": right,
    }


def measure_at_sizes(
    engine: DynamoDBLocal, sizes: Sizes, memory_sizes: Sequence[int], **options: Any
) -> dict[str, Any]:
    """`measure_memory` with a workload's batch, cold-start and ladder sizes."""
    return measure_memory(
        engine,
        memory_sizes,
        sizes.batch_records,
        sizes.memory_repetitions,
        sizes.memory_cold_runs,
        sizes.shard_rates,
        sizes.shard_seconds,
        **options,
    )


def main(argv: list[str] | None = None) -> int:
    """Measure the memory table alone (the sizes of `make bench` by default) and print it."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", help="memory sizes in MB, comma-separated")
    parser.add_argument("--smoke", action="store_true", help="the smoke run's sizes: checks the harness only")
    parser.add_argument("--model", action="store_true", help="no cgroup: the CPU-time model")
    parser.add_argument("--json", type=Path, help="write the section as JSON here")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    memory_sizes = memory_sizes_for(sizes, tuple(int(size) for size in args.sizes.split(",")) if args.sizes else None)
    try:
        with DynamoDBLocal() as engine, environment({**engine.environment(), **stage_environment()}):
            section = measure_at_sizes(engine, sizes, memory_sizes, allow_cgroups=not args.model)
    except PrerequisiteMissing as missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    section["stage_memory_mb"] = stage_memory()
    section["shard_target_mb"] = SHARD_TARGET_MB
    print(memory_table(section))
    if args.json:
        args.json.write_text(json.dumps(section, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
