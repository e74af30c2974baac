"""The backfill's command line: `python -m tools.backfill run --table T --stage S ...` (from this machine) and
`python -m tools.backfill urgent --stage S` (the deployed sweep: ask for an urgent pass and follow it)."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from chalicelib.records import attribute_conflict
from chalicelib.sweep import table_facts
from tools.backfill.checkpoint import Checkpoint, CheckpointMismatch, default_checkpoint_path
from tools.backfill.local import (
    DEFAULT_PAGE_SIZE,
    Options,
    backfill_client,
    local_worker,
    run_local,
    stage_settings,
)
from tools.backfill.progress import Progress, summary
from tools.backfill.ratelimit import rate_limits

DOC = """Backfill: bring every existing item of a users table under the invariant (items written before the stream
existed, or whose records aged out of it), from this machine, or by the deployed sweep's urgent pass.

    python -m tools.backfill run --table Users --stage prod --segments 8 [--dry-run] [--read-units 200 ...]
    python -m tools.backfill urgent --stage prod [--no-follow]   # the deployed sweep: an urgent pass, followed

Docs: docs/backfill.md. Output holds counts and segment numbers only; the checkpoint file holds one key per segment
(a key may be an e-mail address): keep it as private as the table.
"""


def parser() -> argparse.ArgumentParser:
    """The command line."""
    top = argparse.ArgumentParser(
        prog="python -m tools.backfill", description=DOC, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = top.add_subparsers(dest="command", required=True)
    urgent = commands.add_parser("urgent", help="ask the deployed sweep for an urgent pass and follow it")
    urgent.add_argument("--stage", required=True, help="the Chalice stage whose sweep (and bucket) to use")
    urgent.add_argument("--no-follow", action="store_true", help="ask, print the pass, and return")
    urgent.add_argument("--poll-seconds", type=float, default=60.0, help="how often to read the pass (default 60)")
    command = commands.add_parser("run", help="backfill from this machine")
    command.add_argument("--table", required=True, help="the users table's name")
    command.add_argument("--stage", required=True, help="the Chalice stage whose domain and attribute settings apply")
    command.add_argument("--segments", type=int, default=8, help="TotalSegments of the parallel scan")
    command.add_argument("--checkpoint", type=Path, help="default: .state/backfill-<table>[-dry-run].json")
    command.add_argument("--dry-run", action="store_true", help="count what would change; write nothing")
    command.add_argument(
        "--page-size", type=int, default=DEFAULT_PAGE_SIZE, help="items per Scan page (Limit; at most 1 MB a page)"
    )
    command.add_argument("--read-units", type=float, help="read units per second, for the whole backfill")
    command.add_argument("--write-units", type=float, help="write units per second, for the whole backfill")
    command.add_argument(
        "--capacity-fraction", type=float, help="a fraction of a provisioned table's capacity (default 0.2)"
    )
    command.add_argument("--no-progress", action="store_true", help="no progress bar (the summary still prints)")
    command.add_argument("--threads", type=int, help="segments worked at once (default: --segments, max 32)")
    command.add_argument("--write-concurrency", type=int, default=8, help="writes in flight per segment")
    command.add_argument("--max-pages", type=int, help="stop each segment after this many pages")
    return top


class Stopped(RuntimeError):
    """The run met an error it can't get past (after botocore's retries); the checkpoint keeps where it stood."""


def resume_command(argv: list[str]) -> str:
    """The command that resumes this backfill from its checkpoint: the same one."""
    return shlex.join([".venv/bin/python", "-m", "tools.backfill", *argv])


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    try:
        if args.command == "urgent":
            from tools.backfill.urgent import request_and_follow

            return request_and_follow(args.stage, not args.no_follow, args.poll_seconds)
        return backfill(args)
    except (ValueError, CheckpointMismatch) as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    except Stopped as stopped:
        print(f"error: {stopped}; the checkpoint is kept: resume with `{resume_command(argv)}`", file=sys.stderr)
        return 2
    except Exception as error:
        from tools.errors import describe

        message = describe(error)  # no region, an endpoint that does not answer, a missing table: one line
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


def backfill(args: argparse.Namespace) -> int:
    """`run`: open the checkpoint, run, print the summary; 0 when every segment is done."""
    if args.segments < 1 or args.segments > 1_000_000:
        raise ValueError("--segments must be from 1 to 1000000")
    if args.page_size < 1:
        raise ValueError("--page-size must be at least 1")
    settings = stage_settings(args.stage)
    threads = min(args.threads or args.segments, 32)
    client = backfill_client(threads * args.write_concurrency + threads)
    facts = table_facts(client.describe_table(TableName=args.table)["Table"])
    conflict = attribute_conflict(facts.key_names, settings.attributes)
    if conflict:
        raise ValueError(f"stage {args.stage}: {conflict}")
    read_units, write_units = rate_limits(facts, args.read_units, args.write_units, args.capacity_fraction)
    options = Options(args.dry_run, args.page_size, read_units, write_units, args.max_pages)
    path = args.checkpoint or default_checkpoint_path(args.table, args.dry_run)
    checkpoint = Checkpoint.open(path, facts.name, args.segments, args.dry_run)
    checkpoint.save()
    progress = Progress(facts.item_count, checkpoint.totals(), not args.no_progress, args.dry_run)
    stop = threading.Event()
    # SIGTERM as Ctrl-C: finish the pages under way, keep the checkpoint, print the summary.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Ctrl-C's KeyboardInterrupt even when started with SIGINT ignored (a script's background job), where Python
    # installs no handler for it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(
        f"backfill of {facts.name}{' (dry run)' if args.dry_run else ''}: {len(checkpoint.unfinished())}/"
        f"{args.segments} segment(s) to do; Ctrl-C or SIGTERM stops it, the checkpoint keeps its place",
        flush=True,
    )
    started = time.monotonic()
    interrupted = False
    failed_left = 0
    stopped_by: str | None = None
    try:
        worker = local_worker(settings, client, args.write_concurrency)
        try:
            failed_left = run_local(worker, facts, checkpoint, options, threads, progress, stop).failed
        except Exception as error:
            from tools.errors import describe

            stopped_by = describe(error)  # a timeout, throttling or an engine gone, past every retry: one line
            if stopped_by is None:
                raise
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
    interrupted = interrupted or (stop.is_set() and stopped_by is None)
    print(summary(checkpoint.totals(), checkpoint, time.monotonic() - started, interrupted, failed_left))
    print(f"checkpoint: {path} (holds keys: keep it private)")
    if stopped_by is not None:
        raise Stopped(stopped_by)
    return 0 if not checkpoint.unfinished() and not failed_left else 1
