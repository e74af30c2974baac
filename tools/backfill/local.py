"""The backfill from this machine: a thread per segment, each with its own writes pool, sharing the rate limits."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chalicelib.backfill import Counts, PageResult, SegmentRequest, SegmentResult, SegmentWorker
from chalicelib.config import Settings
from chalicelib.sweep import TableFacts
from tools.backfill.checkpoint import Checkpoint
from tools.backfill.progress import Progress
from tools.project import ROOT, function_environment

FUNCTION_NAME = "sweep_table"
"""The deployed function whose settings a local run takes (the same domain overrides and attribute names)."""
# Items per Scan page (Limit): small enough that the progress bar moves and a crash redoes little, large enough that
# a page's writes keep the write pool busy. (A 1 MB page of small items can hold tens of thousands.)
DEFAULT_PAGE_SIZE = 1000
# A segment whose page keeps failing (writes still failing after botocore's retries) is tried this often per run.
SEGMENT_ATTEMPTS = 3
# A backfill has no Lambda deadline: its requests may wait for a slow or busy engine (a 1 MB Scan page on a loaded
# DynamoDB Local takes seconds), unlike the stream handler's, bounded to fit its batch (chalicelib/budget.py).
CONNECT_TIMEOUT_SECONDS = 10
READ_TIMEOUT_SECONDS = 30
"""15 times the handler's: a Scan page or a batch of writes that takes longer is a stall, retried on a new
connection (a stalled engine is given up after MAX_ATTEMPTS x 30 s, 5 minutes)."""
MAX_ATTEMPTS = 10
"""botocore's standard retry mode: the first try and 9 retries of a throttled, timed-out or dropped request, each
after a random wait of up to min(2 ** (retry - 1), 20) s when throttled (up to 111 s in all), 25 ms x 2 ** (retry - 1)
after a timeout or a dropped connection (DynamoDB's base in botocore/retries/standard.py)."""


def backfill_client(max_pool_connections: int) -> Any:
    """The backfill's DynamoDB client (endpoint and region from the environment, as the AWS CLI's): scan-sized
    timeouts, botocore's standard retries with backoff."""
    from chalicelib.dynamodb import dynamodb_client

    return dynamodb_client(
        max_pool_connections,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        max_attempts=MAX_ATTEMPTS,
    )


def settled_counts(page: PageResult, correct_before: int | None = None) -> Counts:
    """What a page adds to the backfill's counts, so that every item is counted once: all of it when it finished;
    when it is to be scanned again (failed writes, or a stop), only the units it consumed: its items are counted
    when it is redone, and its failures are counted only if the run ends with them (`failed_left`). A redone page
    whose first attempt found `correct_before` items correct counts the ones it finds correct beyond those as fixed:
    its earlier attempts wrote them (a write that timed out may still have been applied)."""
    if page.retry:
        return Counts(read_units=page.counts.read_units, write_units=page.counts.write_units)
    counts = Counts()
    counts.add(page.counts)
    carried = max(0, counts.already_correct - correct_before) if correct_before is not None else 0
    counts.already_correct -= carried
    counts.to_write += carried
    counts.written += carried
    return counts


@dataclass
class Options:
    """How a local backfill runs."""

    dry_run: bool = False
    page_size: int | None = None
    read_units: float | None = None
    write_units: float | None = None
    max_pages: int | None = None
    """Stop each segment after this many pages in this run (a partial run; the checkpoint resumes it)."""


def segment_request(facts: TableFacts, checkpoint: Checkpoint, number: int, options: Options) -> SegmentRequest:
    """The work order of one segment, from where the checkpoint has it."""
    return SegmentRequest(
        facts.name,
        facts.key_names,
        number,
        checkpoint.total_segments,
        checkpoint.segments[number].last_evaluated_key,
        options.dry_run,
        options.page_size,
    )


def run_local(
    worker: SegmentWorker,
    facts: TableFacts,
    checkpoint: Checkpoint,
    options: Options,
    threads: int,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> Counts:
    """Backfill the unfinished segments on this machine, `threads` at a time; what this run did, its `failed` the
    writes still failing on the pages it leaves to redo. An error a segment can't get past (after botocore's
    retries) stops every segment at its next page, and is raised once they have."""
    stop = stop or threading.Event()
    # One budget shared by every thread; its waits end when the run is stopped.
    limited = worker.limited(options.read_units, options.write_units, stop)
    this_run = Counts()
    lock = threading.Lock()
    failed_left: dict[int, int] = {}
    """Per segment, the failed writes of the page it stands at (0 once a page finishes)."""
    correct_before: dict[int, int] = {}
    """Per segment that is redoing a page: the items its first attempt found already correct."""

    def segment(number: int) -> None:
        pages = 0
        own = limited.for_segment()  # its own writes pool: --write-concurrency is per segment

        def on_page(page: PageResult, result: SegmentResult) -> None:
            nonlocal pages
            pages += 1
            counts = settled_counts(page, correct_before.get(number))
            checkpoint.record(result, counts)
            with lock:
                this_run.add(counts)
                failed_left[number] = page.counts.failed if page.retry else 0
            if page.retry:
                correct_before.setdefault(number, page.counts.already_correct)
            else:
                correct_before.pop(number, None)
            if progress is not None:
                progress.add(counts)

        def keep_going() -> bool:
            return not stop.is_set() and (options.max_pages is None or pages < options.max_pages)

        try:
            for attempt in range(SEGMENT_ATTEMPTS):
                if not keep_going():
                    return
                request = segment_request(facts, checkpoint, number, options)
                if own.run(request, keep_going, on_page).done or stop.is_set():
                    return
                if attempt + 1 < SEGMENT_ATTEMPTS:
                    stop.wait(2**attempt)
        except Exception:
            stop.set()  # the others stop at their next page; the checkpoint keeps where each stands
            raise
        finally:
            own.close()

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="segment") as pool:
        futures = [pool.submit(segment, number) for number in checkpoint.unfinished()]
        pending: set[Future[None]] = set(futures)
        try:
            while pending:
                _, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
        except KeyboardInterrupt:
            stop.set()  # each segment stops within one rate-limit step; an unfinished page is scanned again on resume
            print("stopping: the writes in hand finish, the checkpoint is kept", file=sys.stderr, flush=True)
            wait(pending)
            raise
        for future in futures:
            future.result()
    this_run.failed = sum(failed_left.values())
    return this_run


def stage_settings(stage: str, project_dir: Path = ROOT) -> Settings:
    """The stage's settings as its sweep function sees them (the domain overrides decide the same way)."""
    return Settings.from_environ(function_environment(stage, FUNCTION_NAME, project_dir))


def local_worker(settings: Settings, client: Any, write_concurrency: int) -> SegmentWorker:
    """A segment worker on this machine with the stage's classification and attribute names; each segment it works
    (`SegmentWorker.for_segment`) gets its own pool of `write_concurrency` writes."""
    from chalicelib.dynamodb import DynamoDBGateway
    from chalicelib.runtime import classifier_for

    def new_gateway() -> DynamoDBGateway:
        return DynamoDBGateway(client, settings.attributes, max_concurrency=write_concurrency)

    return SegmentWorker(client, new_gateway(), classifier_for(settings).is_personal_email, new_gateway=new_gateway)
