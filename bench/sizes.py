"""How much of each workload the benchmark runs, and which memory sizes its targets are read at."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tools.project import ROOT


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


def stage_memory(project_dir: Path = ROOT) -> int:
    """The app's lambda_memory_size (.chalice/config.json's top level, which a stage deploys with unless it sets its
    own): no stage of the config's is assumed to exist."""
    config = json.loads((project_dir / ".chalice" / "config.json").read_text())
    return int(config.get("lambda_memory_size", 128))


def memory_sizes_for(sizes: Sizes, asked: tuple[int, ...] | None = None) -> list[int]:
    """The memory sizes to measure: those asked (or the workload's), always with the stage's and the shard target's."""
    return sorted({*(asked or sizes.memory_sizes), stage_memory(), SHARD_TARGET_MB})
