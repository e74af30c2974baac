"""python -m bench [--smoke] [--json PATH] [--plot PATH]   (or: make bench)

Starts DynamoDB Local on a loopback port, runs every measure for email-checker and the walkthrough's Lambda, prints
the table, and writes the result document and the figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from localdev import lifecycle


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark: 0 once it ran (the table says PASS or MISS per target), 2 when a prerequisite is missing."""
    args = arguments(argv)
    with lifecycle.handle_signals():
        print("benchmark: email-checker vs the walkthrough's Lambda, on DynamoDB Local", file=sys.stderr, flush=True)
        # Imported once the handlers are in place (boto3 takes a while): a Ctrl-C while it loads exits cleanly too.
        from localdev.dynamodb_local import EngineFailed, PrerequisiteMissing
        from tools.errors import report_errors

        return report_errors(lambda: benchmark(args), (PrerequisiteMissing, EngineFailed))


def arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny workloads: checks the harness, not the speed")
    parser.add_argument("--json", type=Path, help="result document (default bench/results.json)")
    parser.add_argument("--plot", type=Path, help="figure (default bench/results.png)")
    return parser.parse_args(argv)


def benchmark(args: argparse.Namespace) -> int:
    """Run every measure, write and print the results."""
    from bench import suite
    from bench.plot import plot
    from bench.report import backfill_lines, engine_line, memory_table, render, rows
    from bench.sizes import FULL, SMOKE
    from bench.subjects import ROOT
    from localdev.dynamodb_local import DynamoDBLocal

    # A smoke run's numbers mean nothing: by default they go to the temporary folder, not over the committed results.
    folder = Path(tempfile.gettempdir()) / "email-checker-bench-smoke" if args.smoke else ROOT / "bench"
    folder.mkdir(exist_ok=True)
    args.json = args.json or folder / "results.json"
    args.plot = args.plot or folder / "results.png"
    started = time.monotonic()
    with DynamoDBLocal() as engine:
        results = suite.run(engine, SMOKE if args.smoke else FULL)
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.plot)
    machine = results["machine"]
    print(
        f"\n{machine['cpus']} x {machine['cpu_model']}, Python {machine['python']}, "
        f"DynamoDB Local {machine['dynamodb_local']}, {results['date']}"
    )
    print(suite.CLASSIFICATION)
    print()
    print(render(rows(results)))
    print()
    print(memory_table(results["memory"]))
    print()
    print(engine_line(results["engine"]))
    print(backfill_lines(results.get("backfill", [])))
    print(f"\nwrote {args.json} and {args.plot} in {results['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
