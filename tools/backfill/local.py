"""The backfill from this machine: a thread per segment, each with its own writes pool, sharing the rate limits."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from chalicelib.backfill import Counts, PageResult, SegmentRequest, SegmentResult, SegmentWorker
from chalicelib.config import Settings
from tools.backfill.checkpoint import Checkpoint
from tools.backfill.progress import Progress
from tools.backfill.table import TableFacts
from tools.project import function_environment

FUNCTION_NAME = "sweep_table"
"""The deployed function whose settings a local run takes (the same domain overrides and attribute names)."""
# Items per Scan page (Limit): small enough that the progress bar moves and a crash redoes little, large enough that
# a page's writes keep the write pool busy. (A 1 MB page of small items can hold tens of thousands.)
DEFAULT_PAGE_SIZE = 1000
# A segment whose page keeps failing (writes still failing after botocore's retries) is tried this often per run.
SEGMENT_ATTEMPTS = 3


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
    """Backfill the unfinished segments on this machine, `threads` at a time; what this run did."""
    stop = stop or threading.Event()
    # One budget shared by every thread; its waits end when the run is stopped.
    limited = worker.limited(options.read_units, options.write_units, stop)
    this_run = Counts()
    lock = threading.Lock()

    def segment(number: int) -> None:
        pages = 0
        own = limited.for_segment()  # its own writes pool: --write-concurrency is per segment

        def on_page(page: PageResult, result: SegmentResult) -> None:
            nonlocal pages
            pages += 1
            counts = page.finished_counts()  # a page to be redone is counted when it is redone, not twice
            checkpoint.record(result, counts)
            with lock:
                this_run.add(counts)
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
    return this_run


def stage_settings(stage: str) -> Settings:
    """The stage's settings as its sweep function sees them (the domain overrides decide the same way)."""
    return Settings.from_environ(function_environment(stage, FUNCTION_NAME))


def local_worker(settings: Settings, client: Any, write_concurrency: int) -> SegmentWorker:
    """A segment worker on this machine with the stage's classification and attribute names; each segment it works
    (`SegmentWorker.for_segment`) gets its own pool of `write_concurrency` writes."""
    from chalicelib.dynamodb import DynamoDBGateway
    from chalicelib.runtime import classifier_for

    def new_gateway() -> DynamoDBGateway:
        return DynamoDBGateway(client, settings.attributes, max_concurrency=write_concurrency)

    return SegmentWorker(client, new_gateway(), classifier_for(settings).is_personal_email, new_gateway=new_gateway)
