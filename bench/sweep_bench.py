"""The sweep's throughput on DynamoDB Local and moto's S3: items per second one run checks, and the client CPU each
item costs, by segment count; then the arithmetic for a pass over a large table at Lambda's memory sizes.

    python -m bench.sweep_bench                          # 20,000 items of ~1 KB; 1, 4, 8 segments
    python -m bench.sweep_bench --items 5000 --segments 8 --out build/sweep-bench.json

Each segment count gets a fresh table (stream off) whose items all lack the flag (every item needs a write: the
worst case), swept by one run at rates no table would allow (so the machine, not the rate limit, is measured); then
a second pass over the fixed table (every item already correct: the common case, reads only), then one background
run at the stage defaults, timed against the 900 s it is given (its billed time). DynamoDB Local is one
Java process on this machine: wall-clock items/s compare segment counts here. What carries over to Lambda is the
client's CPU per item (this process's user+system time, botocore's parsing and the planner): Lambda gives a function
one vCPU at 1,769 MB and a share in proportion below it, so items/s on Lambda is at most vCPU share / CPU per item.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.backfill_bench import fill

PADDING = 950
"""Bytes of another attribute, so an item is about 1 KB (the issue's 1 TB = 10^9 items of 1 KB)."""
BACKGROUND_BUDGET_MS = 900_000
"""The sweep function's timeout: what a run is given (before its margin)."""
FULL_VCPU_MB = 1769
"""Lambda's memory at which a function has one full vCPU (Lambda Developer Guide, "Configure Lambda function
memory"); below it, CPU is proportional to memory."""


def cpu_seconds() -> float:
    """This process's user and system CPU time so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def sweep_pass(client: Any, s3: Any, bucket: str, table: str, segments: int) -> dict[str, Any]:
    """One urgent pass by runs of the sweep until it finishes; wall time, CPU time, items, writes."""
    from chalicelib.backfill import SegmentWorker
    from chalicelib.config import Settings
    from chalicelib.dynamodb import DynamoDBGateway
    from chalicelib.runtime import classifier_for
    from chalicelib.sweep import StateStore, SweepConfig, Sweeper

    settings = Settings.from_environ({})
    classify = classifier_for(settings).is_personal_email

    def new_gateway() -> DynamoDBGateway:
        return DynamoDBGateway(client, settings.attributes, max_concurrency=16)

    worker = SegmentWorker(client, new_gateway(), classify, new_gateway=new_gateway)
    store = StateStore(s3, bucket)
    store.request_urgent(datetime.now(UTC))
    config = SweepConfig(segments=segments, read_units=1e9, write_units=1e9, interval=timedelta(minutes=15))
    sweeper = Sweeper(client, worker, store, table, config)
    started, cpu = time.monotonic(), cpu_seconds()
    scanned = written = runs = 0
    while True:
        report = sweeper.run(lambda: 900_000)
        runs += 1
        scanned += report.counts.scanned
        written += report.counts.written
        if report.passes_finished:
            break
    return {
        "seconds": time.monotonic() - started,
        "cpu_seconds": cpu_seconds() - cpu,
        "items": scanned,
        "written": written,
        "runs": runs,
    }


def background_run(client: Any, s3: Any, bucket: str, table: str, segments: int) -> dict[str, Any]:
    """One background run at the stage defaults (168 h period, 15 min schedule, on-demand limits) given Lambda's
    900 s: how long it lasts (the function's billed time) and what it reads."""
    from chalicelib.backfill import SegmentWorker
    from chalicelib.config import Settings
    from chalicelib.dynamodb import DynamoDBGateway
    from chalicelib.runtime import classifier_for
    from chalicelib.sweep import StateStore, SweepConfig, Sweeper

    settings = Settings.from_environ({})
    gateway = DynamoDBGateway(client, settings.attributes, max_concurrency=16)
    worker = SegmentWorker(client, gateway, classifier_for(settings).is_personal_email)
    sweeper = Sweeper(client, worker, StateStore(s3, bucket), table, SweepConfig(segments=segments))
    started = time.monotonic()
    report = sweeper.run(lambda: BACKGROUND_BUDGET_MS)
    return {
        "seconds": round(time.monotonic() - started, 2),
        "budget_seconds": BACKGROUND_BUDGET_MS / 1000,
        "mode": report.mode,
        "read_units": round(report.counts.read_units, 1),
        "read_units_quota": report.read_units_quota,
        "passes_finished": report.passes_finished,
    }


def measure(items: int, segments: int, engine: Any, moto: Any) -> dict[str, Any]:
    """A fresh table of `items` items swept twice with `segments` segments: every item fixed, then none."""
    from chalicelib.dynamodb import dynamodb_client
    from localdev.dynamodb_local import create_table, table_definition

    client = dynamodb_client(segments * 17)
    name = f"SweepBench-{uuid.uuid4().hex[:8]}"
    create_table(client, table_definition(TableName=name, StreamSpecification={"StreamEnabled": False}))
    s3 = moto.client("s3")
    bucket = f"sweep-bench-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    try:
        fill(client, name, items, "Email", PADDING)
        size = client.describe_table(TableName=name)["Table"].get("TableSizeBytes", 0)
        fixing = sweep_pass(client, s3, bucket, name, segments)
        checking = sweep_pass(client, s3, bucket, name, segments)
        fresh = f"{bucket}-background"  # a state of its own: no urgent request left by the passes above
        s3.create_bucket(Bucket=fresh)
        background = background_run(client, s3, fresh, name, segments)
    finally:
        client.delete_table(TableName=name)
    result = {"items": items, "segments": segments, "table_bytes": size, "background_run": background}
    for label, run in (("fixing", fixing), ("checking", checking)):
        result[label] = {
            **run,
            "items_per_second": round(run["items"] / run["seconds"], 1),
            "cpu_ms_per_1000_items": round(1000 * 1000 * run["cpu_seconds"] / max(1, run["items"]), 1),
        }
    return result


def lambda_items_per_second(cpu_ms_per_1000_items: float, memory_mb: int) -> float:
    """Items per second one run can check on Lambda at `memory_mb`, bounded by its vCPU share (Python's threads
    share one core for parsing: at most one vCPU counts)."""
    vcpu = min(1.0, memory_mb / FULL_VCPU_MB)
    return vcpu / (cpu_ms_per_1000_items / 1e6)


def one_terabyte(cpu_ms_per_1000_items: float, read_units: float) -> dict[str, Any]:
    """The issue's 1 TB (10^9 items of 1 KB): read units, and hours at each memory size and the read rate."""
    items, item_bytes = 10**9, 1024
    units = items * item_bytes / 8192
    hours_by_memory = {}
    for memory in (256, 1024, FULL_VCPU_MB):
        by_cpu = lambda_items_per_second(cpu_ms_per_1000_items, memory)
        by_rate = read_units * 8192 / item_bytes
        hours_by_memory[memory] = round(items / min(by_cpu, by_rate) / 3600, 1)
    return {
        "read_units": units,
        "read_units_per_second_for_24_h": round(units / 86400),
        "items_per_second_for_24_h": round(items / 86400),
        "hours_by_memory_mb": hours_by_memory,
    }


def main(argv: list[str] | None = None) -> int:
    """Measure, print one line per segment count and the 1 TB arithmetic, write the JSON."""
    from localdev.dynamodb_local import DynamoDBLocal
    from localdev.moto_server import MotoServer

    parser = argparse.ArgumentParser(prog="python -m bench.sweep_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--segments", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--read-units", type=float, default=2000.0, help="the urgent read rate for the arithmetic")
    parser.add_argument("--out", type=Path, default=Path("build") / "sweep-bench.json")
    args = parser.parse_args(argv)
    import os

    results = []
    with DynamoDBLocal() as engine, MotoServer() as moto:
        os.environ.update(engine.environment())
        os.environ["AWS_ENDPOINT_URL_S3"] = moto.endpoint
        for segments in args.segments:
            result = measure(args.items, segments, engine, moto)
            results.append(result)
            fixing, checking = result["fixing"], result["checking"]
            print(
                f"{segments} segment(s), {args.items} items of ~1 KB: fixing {fixing['items_per_second']} items/s "
                f"({fixing['cpu_ms_per_1000_items']} CPU ms per 1,000), checking {checking['items_per_second']} "
                f"items/s ({checking['cpu_ms_per_1000_items']} CPU ms per 1,000)",
                flush=True,
            )
            background = result["background_run"]
            print(
                f"  a background run ({background['mode']}): {background['seconds']} s of its "
                f"{background['budget_seconds']:g} s, {background['read_units']} read units (its share "
                f"{background['read_units_quota']}), {background['passes_finished']} pass(es) finished",
                flush=True,
            )
    best = min(r["checking"]["cpu_ms_per_1000_items"] for r in results)
    worst = max(r["fixing"]["cpu_ms_per_1000_items"] for r in results)
    arithmetic = {
        "checking": one_terabyte(best, args.read_units),
        "fixing_every_item": one_terabyte(worst, args.read_units),
    }
    for label, numbers in arithmetic.items():
        print(
            f"1 TB ({label}): {numbers['read_units']:.3g} read units; 24 h needs "
            f"{numbers['read_units_per_second_for_24_h']} RRU/s and {numbers['items_per_second_for_24_h']} items/s; "
            f"hours by memory (MB) at "
            f"{args.read_units:g} RRU/s: {numbers['hours_by_memory_mb']}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "one_terabyte": arithmetic}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
