"""Backfill throughput on DynamoDB Local: items per second scanned and fixed, by number of scan segments.

    python -m bench.backfill_bench                      # 20,000 items; 1, 2, 4, 8 segments; build/backfill-bench.json
    python -m bench.backfill_bench --items 2000 --segments 1 4 --out /tmp/bench.json

Each segment count gets a fresh table (stream off) of items that all lack the flag, as items written before the
trigger existed do, so every item scanned is also written; then the same backfill runs again over the fixed table
(every item already correct: the scan alone). The numbers measure this machine and DynamoDB Local (a
single Java process): they compare segment counts, they do not predict DynamoDB's own throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from chalicelib.dynamodb import dynamodb_client
from chalicelib.sweep import table_facts
from localdev.walkthrough import walkthrough_settings
from tools.backfill.checkpoint import Checkpoint
from tools.backfill.local import DEFAULT_PAGE_SIZE, Options, local_worker, run_local
from tools.project import ROOT

EMAILS = ("someone@gmail.com", "someone@example.com", "someone@outlook.com", "someone@corp.example.org")
BATCH = 25


def fill(client: Any, table_name: str, items: int, email_attribute: str, padding: int = 0) -> None:
    """Write `items` items without the flag (with `padding` bytes of another attribute), 25 to a BatchWriteItem, from
    a few threads."""
    extra = {"Profile": {"S": "x" * padding}} if padding else {}

    def write(start: int) -> None:
        requests = [
            {"PutRequest": {"Item": {"Id": {"S": f"user-{i:09d}"}, email_attribute: {"S": EMAILS[i % len(EMAILS)]}}}}
            for i in range(start, min(start + BATCH, items))
        ]
        for request in requests:
            request["PutRequest"]["Item"].update(extra)
        pending = {table_name: requests}
        while pending:
            pending = client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(0, items, BATCH)))


def measure(items: int, segments: int) -> dict[str, Any]:
    """Backfill a fresh table of `items` items with `segments` segments (a thread each); the rates."""
    from localdev.dynamodb_local import create_table, table_definition

    client = dynamodb_client(segments * 9)  # 8 writes in flight and a scan per segment
    name = f"Bench-{uuid.uuid4().hex[:8]}"
    create_table(client, table_definition(TableName=name, StreamSpecification={"StreamEnabled": False}))
    try:
        settings = walkthrough_settings()  # its attribute names too: the items are written as it names them
        fill(client, name, items, settings.attributes.email)
        facts = table_facts(client.describe_table(TableName=name)["Table"])
        worker = local_worker(settings, client, write_concurrency=8)
        options = Options(page_size=DEFAULT_PAGE_SIZE)  # as the command runs by default
        started = time.perf_counter()
        counts = run_local(worker, facts, Checkpoint.open(None, name, segments, False), options, segments)
        seconds = time.perf_counter() - started
        # The same table again: every item is right now, so this is the scan alone (what a re-run costs).
        started = time.perf_counter()
        again = run_local(worker, facts, Checkpoint.open(None, name, segments, False), options, segments)
        rescan_seconds = time.perf_counter() - started
    finally:
        client.delete_table(TableName=name)
    if counts.scanned != items or counts.written != items or again.already_correct != items or again.written:
        raise RuntimeError(f"expected {items} scanned and written, then {items} already correct")
    return {
        "segments": segments,
        "items": items,
        "seconds": round(seconds, 3),
        "scanned_per_second": round(counts.scanned / seconds, 1),
        "fixed_per_second": round(counts.written / seconds, 1),
        "pages": counts.pages,
        "rescan_seconds": round(rescan_seconds, 3),
        "rescan_per_second": round(items / rescan_seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark against a DynamoDB Local it starts, print and save the results."""
    from localdev import lifecycle
    from localdev.dynamodb_local import EngineFailed, PrerequisiteMissing

    return lifecycle.run_main(lambda: benchmark(argv), known=(PrerequisiteMissing, EngineFailed))


def benchmark(argv: list[str] | None = None) -> int:
    """Parse the command line, measure each segment count, write and print the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--segments", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "backfill-bench.json")
    args = parser.parse_args(argv)
    from localdev.dynamodb_local import DynamoDBLocal

    saved = dict(os.environ)
    results = []
    with DynamoDBLocal() as engine:
        os.environ.update(engine.environment())
        try:
            for segments in args.segments:
                print(f"measuring {args.items} items, {segments} segment(s) ...", file=sys.stderr, flush=True)
                result = measure(args.items, segments)
                results.append(result)
                print(
                    f"backfill {result['items']} items, {segments} segment(s): {result['scanned_per_second']:.0f} "
                    f"items/s scanned, {result['fixed_per_second']:.0f} items/s fixed ({result['seconds']:.1f} s); "
                    f"re-run, nothing to fix: {result['rescan_per_second']:.0f} items/s scanned"
                )
        finally:
            os.environ.clear()
            os.environ.update(saved)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"engine": "DynamoDB Local", "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
