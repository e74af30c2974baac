"""`python -m tools.audit`: the scheduled audit's check over the whole table, and its drift by kind.

It is the backfill run from this machine (tools/backfill/local.py: a parallel scan, rate-limited, the planner's
decision and the handler's conditional writes), in its dry-run mode unless `--fix`, with a report of what it found:

    python -m tools.audit --table Users --stage prod                # count the drift, write nothing
    python -m tools.audit --table Users --stage prod --fix          # and fix it (= python -m tools.backfill run)

Output holds counts and segment numbers only. Exit status: 0 when the table holds the invariant (or, with --fix,
every item found wrong was fixed or had changed since), 1 when drift is left, 2 for an error.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

from chalicelib.backfill import Counts
from chalicelib.dynamodb import dynamodb_client
from chalicelib.planner import Drift
from tools.backfill.checkpoint import Checkpoint, CheckpointMismatch
from tools.backfill.local import DEFAULT_PAGE_SIZE, Options, local_worker, run_local, stage_settings
from tools.backfill.progress import Progress
from tools.backfill.ratelimit import rate_limits
from tools.backfill.table import table_facts
from tools.errors import report_errors
from tools.project import UnknownStage

WRITE_CONCURRENCY = 8
"""Writes in flight per segment with --fix (the backfill's default)."""
KIND_TEXT = {
    Drift.FLAG_WRONG: "flag wrong (a string Email, the other BOOL)",
    Drift.FLAG_MISSING: "flag missing (a string Email, no flag)",
    Drift.FLAG_NOT_BOOL: "flag not a BOOL (a string Email, a flag of another type)",
    Drift.FLAG_WITHOUT_EMAIL: "flag without a string Email (Email absent or not a string)",
}


def parser() -> argparse.ArgumentParser:
    """The command line."""
    command = argparse.ArgumentParser(
        prog="python -m tools.audit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    command.add_argument("--table", required=True, help="the users table's name")
    command.add_argument("--stage", required=True, help="the Chalice stage whose domain settings apply")
    command.add_argument("--fix", action="store_true", help="fix what is wrong with the handler's conditional writes")
    command.add_argument("--segments", type=int, default=8, help="TotalSegments of the parallel scan (default 8)")
    command.add_argument(
        "--rate",
        type=float,
        help="read units per second for the whole scan (default: the backfill's, docs/backfill.md)",
    )
    command.add_argument("--write-rate", type=float, help="write units per second with --fix (default: the backfill's)")
    command.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE, help="items per Scan page (Limit)")
    command.add_argument(
        "--checkpoint", type=Path, help="keep where each segment stands here, to resume (default: none)"
    )
    command.add_argument("--no-progress", action="store_true", help="no progress bar (the report still prints)")
    return command


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    args = parser().parse_args(argv)
    return report_errors(lambda: audit(args), (ValueError, CheckpointMismatch, UnknownStage))


def audit(args: argparse.Namespace) -> int:
    """Scan the whole table (fixing with --fix), print the drift by kind; the exit status."""
    if not 1 <= args.segments <= 1_000_000:
        raise ValueError("--segments must be from 1 to 1000000")
    if args.page_size < 1:
        raise ValueError("--page-size must be at least 1")
    settings = stage_settings(args.stage)
    threads = min(args.segments, 32)
    client = dynamodb_client(threads * WRITE_CONCURRENCY + threads)
    facts = table_facts(client.describe_table(TableName=args.table)["Table"])
    read_units, write_units = rate_limits(facts, args.rate, args.write_rate, None)
    dry_run = not args.fix
    checkpoint = Checkpoint.open(args.checkpoint, facts.name, args.segments, dry_run)
    progress = Progress(facts.item_count, checkpoint.totals(), not args.no_progress, dry_run)
    stop = threading.Event()
    # SIGTERM as Ctrl-C: the pages under way finish, the report prints.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Ctrl-C's KeyboardInterrupt even when started with SIGINT ignored (a script's background job), where Python
    # installs no handler for it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    interrupted = False
    try:
        worker = local_worker(settings, client, WRITE_CONCURRENCY)
        run_local(
            worker,
            facts,
            checkpoint,
            Options(dry_run, args.page_size, read_units, write_units),
            threads,
            progress,
            stop,
        )
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
    totals = checkpoint.totals()
    left = checkpoint.unfinished()
    print(report(facts.name, totals, args.fix, args.segments - len(left), args.segments, time.monotonic() - started))
    if left:
        reason = "interrupted" if interrupted or stop.is_set() else "not finished"
        print(f"  {reason}: {len(left)} segment(s) not scanned to the end", file=sys.stderr)
    return 0 if not left and not drift_left(totals, args.fix) else 1


def drift_left(totals: Counts, fixed: bool) -> int:
    """Items still wrong after the run: every one found without --fix; with it, those whose write failed or was
    refused (a superseded write met a newer change, which the stream handler decides)."""
    return totals.failed + totals.rejected if fixed else totals.to_write


def report(table: str, totals: Counts, fix: bool, done: int, segments: int, seconds: float) -> str:
    """The drift report: what was checked, what was wrong by kind, and what was fixed (counts only)."""
    lines = [
        f"audit of {table}{'' if fix else ' (no writes: --fix to fix)'}: {done}/{segments} segments scanned",
        f"  checked          {totals.scanned}",
        f"  holds            {totals.already_correct}",
        f"  drift            {totals.to_write}",
    ]
    lines += [f"    {number:<8} {KIND_TEXT[kind]}" for kind, number in totals.drift().items()]
    if fix:
        lines += [
            f"  fixed            {totals.written}",
            f"  superseded       {totals.superseded}   (changed since the scan: the stream handler has them)",
            f"  failed           {totals.failed}",
            f"  rejected         {totals.rejected}",
        ]
    lines.append(f"  read units       {totals.read_units:.1f}   write units {totals.write_units:.1f}   {seconds:.1f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
