"""Backfill: bring every existing item of a users table under the invariant (items written before the stream
existed, or whose records aged out of it), from this machine or fanned out over the Lambda function.

    python -m tools.backfill run --table Users --segments 8 [--dry-run] [--read-units 200 --write-units 100]
    python -m tools.backfill fanout --table Users --segments 64 --stage prod   # one async invocation per segment
    python -m tools.backfill setup-fanout --stage prod   # after `chalice deploy`: results queue + destination

Both read the table's key schema with DescribeTable, scan it with a parallel scan (Segment / TotalSegments), decide
each item with the stream handler's planner and write with the handler's conditional writes, so either can run
while the handler is live. Where it stands is kept in a checkpoint file (--checkpoint): run the same command again
after Ctrl-C or a crash and it resumes each segment from its last finished page.

The AWS account, region and endpoint come from the usual environment (AWS_PROFILE, AWS_REGION,
AWS_ENDPOINT_URL_DYNAMODB for DynamoDB Local, ...). Logs and output hold counts and segment numbers only; the
checkpoint file holds one key per segment (a key may be an e-mail address): keep it as private as the table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from chalicelib.backfill import (
    Counts,
    SegmentRequest,
    SegmentResult,
    SegmentWorker,
    key_from_json,
    key_to_json,
)
from chalicelib.config import Settings

ROOT = Path(__file__).resolve().parent.parent
FUNCTION_NAME = "backfill_segment"
CHECKPOINT_VERSION = 1
# Items per Scan page (Limit): small enough that the progress bar moves and a crash redoes little, large enough that
# a page's writes keep the write pool busy. (A 1 MB page of small items can hold tens of thousands.)
DEFAULT_PAGE_SIZE = 1000
# A segment whose page keeps failing (writes still failing after botocore's retries) is tried this often per run.
SEGMENT_ATTEMPTS = 3


# ---------------------------------------------------------------------------------------------------------------
# The checkpoint file


class CheckpointMismatch(ValueError):
    """The checkpoint file belongs to another backfill (table, segments or mode differ)."""


@dataclass
class SegmentState:
    """Where one segment stands: the key to resume after (None: from the start, or finished when `done`)."""

    last_evaluated_key: dict[str, Any] | None = None
    done: bool = False
    counts: Counts = field(default_factory=Counts)


@dataclass
class Checkpoint:
    """Per-segment resume points and counts, saved atomically as JSON (keys in DynamoDB JSON, binary as base64)."""

    path: Path | None
    table_name: str
    total_segments: int
    dry_run: bool
    segments: dict[int, SegmentState]
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(cls, path: Path | None, table_name: str, total_segments: int, dry_run: bool) -> Checkpoint:
        """The checkpoint at `path` if there is one for this backfill, a fresh one otherwise."""
        if path is not None and path.exists():
            raw = json.loads(path.read_text())
            found = (raw.get("table_name"), raw.get("total_segments"), raw.get("dry_run"))
            if found != (table_name, total_segments, dry_run) or raw.get("version") != CHECKPOINT_VERSION:
                raise CheckpointMismatch(
                    f"{path} is the checkpoint of another backfill (table, --segments or --dry-run differ): "
                    "use the same options to resume, or another --checkpoint to start afresh"
                )
            segments = {
                int(number): SegmentState(
                    key_from_json(state["last_evaluated_key"]), state["done"], Counts.from_dict(state["counts"])
                )
                for number, state in raw["segments"].items()
            }
            return cls(path, table_name, total_segments, dry_run, segments)
        return cls(path, table_name, total_segments, dry_run, {n: SegmentState() for n in range(total_segments)})

    def record(self, result: SegmentResult, counts: Counts) -> None:
        """Note where a segment stands and add what it did; then save."""
        with self._lock:
            state = self.segments[result.segment]
            state.last_evaluated_key = result.last_evaluated_key
            state.done = result.done
            state.counts.add(counts)
            self._save()

    def totals(self) -> Counts:
        """The counts of every segment added up."""
        with self._lock:
            total = Counts()
            for state in self.segments.values():
                total.add(state.counts)
            return total

    def unfinished(self) -> list[int]:
        """The segments not done yet, in order."""
        return sorted(number for number, state in self.segments.items() if not state.done)

    def to_json(self) -> dict[str, Any]:
        """The file's content."""
        totals = Counts()
        for state in self.segments.values():
            totals.add(state.counts)
        return {
            "version": CHECKPOINT_VERSION,
            "table_name": self.table_name,
            "total_segments": self.total_segments,
            "dry_run": self.dry_run,
            "totals": totals.to_dict(),
            "segments": {
                str(number): {
                    "last_evaluated_key": key_to_json(state.last_evaluated_key),
                    "done": state.done,
                    "counts": state.counts.to_dict(),
                }
                for number, state in sorted(self.segments.items())
            },
        }

    def save(self) -> None:
        """Write the file atomically (a crash leaves the old one or the new one, never half of one)."""
        with self._lock:
            self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, scratch = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as out:
                json.dump(self.to_json(), out, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(scratch, 0o600)  # it holds keys
            os.replace(scratch, self.path)
        except BaseException:
            Path(scratch).unlink(missing_ok=True)
            raise


# ---------------------------------------------------------------------------------------------------------------
# The table and the rate limits


@dataclass(frozen=True)
class TableFacts:
    """What DescribeTable says that the backfill needs."""

    name: str
    key_names: tuple[str, ...]
    item_count: int
    """DynamoDB's estimate (refreshed about every six hours): the progress bar's total."""
    read_capacity: int
    """Provisioned read units; 0 for an on-demand table."""
    write_capacity: int


def table_facts(description: Mapping[str, Any]) -> TableFacts:
    """The backfill's facts from a DescribeTable `Table`."""
    schema = sorted(description["KeySchema"], key=lambda element: element["KeyType"] != "HASH")
    throughput = description.get("ProvisionedThroughput", {})
    on_demand = description.get("BillingModeSummary", {}).get("BillingMode") == "PAY_PER_REQUEST"
    return TableFacts(
        name=description["TableName"],
        key_names=tuple(element["AttributeName"] for element in schema),
        item_count=int(description.get("ItemCount", 0)),
        read_capacity=0 if on_demand else int(throughput.get("ReadCapacityUnits", 0)),
        write_capacity=0 if on_demand else int(throughput.get("WriteCapacityUnits", 0)),
    )


def rate_limits(
    facts: TableFacts, read_units: float | None, write_units: float | None, capacity_fraction: float | None
) -> tuple[float | None, float | None]:
    """(read, write) units per second for the whole backfill; None: unlimited. Explicit rates win; otherwise a
    fraction of the provisioned capacity (an on-demand table has none, so it needs explicit rates)."""
    if capacity_fraction is not None:
        if not 0 < capacity_fraction <= 1:
            raise ValueError("--capacity-fraction must be more than 0 and at most 1")
        if not facts.read_capacity or not facts.write_capacity:
            raise ValueError(
                "--capacity-fraction needs a table with provisioned capacity; for an on-demand table give "
                "--read-units and --write-units"
            )
        read_units = read_units or facts.read_capacity * capacity_fraction
        write_units = write_units or facts.write_capacity * capacity_fraction
    return read_units, write_units


# ---------------------------------------------------------------------------------------------------------------
# Progress


class Progress:
    """The progress bar: items scanned, with written / already correct / superseded; tqdm when available."""

    def __init__(self, total: int | None, initial: Counts, enabled: bool, dry_run: bool) -> None:
        self._lock = threading.Lock()
        self._counts = Counts()
        self._counts.add(initial)
        self._dry_run = dry_run
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total or None, initial=initial.scanned, unit=" items", dynamic_ncols=True)
            self._bar.set_postfix_str(self.postfix(), refresh=False)

    def postfix(self) -> str:
        """The counts after the bar."""
        c = self._counts
        written = f"would write {c.to_write}" if self._dry_run else f"written {c.written}"
        return f"{written}, already correct {c.already_correct}, superseded {c.superseded}, failed {c.failed}"

    def add(self, counts: Counts) -> None:
        """Count a page."""
        with self._lock:
            self._counts.add(counts)
            if self._bar is not None:
                self._bar.update(counts.scanned)
                self._bar.set_postfix_str(self.postfix(), refresh=False)

    def close(self) -> None:
        """Finish the bar."""
        if self._bar is not None:
            self._bar.close()


def summary(totals: Counts, checkpoint: Checkpoint, seconds: float, interrupted: bool) -> str:
    """The closing report: counts, rates, and what is left (never a key)."""
    left = checkpoint.unfinished()
    lines = [
        f"backfill of {checkpoint.table_name}{' (dry run)' if checkpoint.dry_run else ''}: "
        f"{checkpoint.total_segments - len(left)}/{checkpoint.total_segments} segments done",
        f"  scanned          {totals.scanned}",
        f"  already correct  {totals.already_correct}",
        f"  {'would write' if checkpoint.dry_run else 'needed a write'}      {totals.to_write}",
    ]
    if not checkpoint.dry_run:
        lines += [
            f"  written          {totals.written}",
            f"  superseded       {totals.superseded}   (changed since the scan: the stream handler has them)",
            f"  failed           {totals.failed}",
            f"  rejected         {totals.rejected}",
        ]
    lines.append(f"  read units       {totals.read_units:.1f}   write units {totals.write_units:.1f}")
    if seconds > 0:
        lines.append(f"  this run: {seconds:.1f} s")
    if left:
        reason = "interrupted" if interrupted else "not finished"
        lines.append(f"  {reason}: {len(left)} segment(s) left; run the same command again to resume")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Local run: a thread per segment


@dataclass
class Options:
    """How a backfill runs (what both the local run and the fan-out take)."""

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
    limited = worker.limited(options.read_units, options.write_units)  # one budget shared by every thread
    this_run = Counts()
    lock = threading.Lock()

    def segment(number: int) -> None:
        pages = 0

        def on_page(page: Any, result: SegmentResult) -> None:
            nonlocal pages
            pages += 1
            checkpoint.record(result, page.counts)
            with lock:
                this_run.add(page.counts)
            if progress is not None:
                progress.add(page.counts)

        def keep_going() -> bool:
            return not stop.is_set() and (options.max_pages is None or pages < options.max_pages)

        for attempt in range(SEGMENT_ATTEMPTS):
            if not keep_going():
                return
            request = segment_request(facts, checkpoint, number, options)
            if limited.run(request, keep_going, on_page).done or stop.is_set():
                return
            if attempt + 1 < SEGMENT_ATTEMPTS:
                time.sleep(2**attempt)

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="segment") as pool:
        futures = [pool.submit(segment, number) for number in checkpoint.unfinished()]
        pending: set[Future[None]] = set(futures)
        try:
            while pending:
                _, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
        except KeyboardInterrupt:
            stop.set()  # each segment finishes its page (and checkpoint) and stops
            wait(pending)
            raise
        for future in futures:
            future.result()
    return this_run


# ---------------------------------------------------------------------------------------------------------------
# Fan-out: the same worker as a Lambda function, one asynchronous invocation per segment


@dataclass
class Delivery:
    """An invocation's outcome: the payload it was given and what it returned (None: it failed)."""

    request: dict[str, Any]
    response: dict[str, Any] | None


class Transport(Protocol):
    """How the fan-out invokes the segment function and hears back."""

    def submit(self, payload: dict[str, Any]) -> None:
        """Start one invocation with `payload`."""

    def deliveries(self) -> list[Delivery]:
        """Outcomes that arrived since the last call (may wait a while for the first)."""


class ChaliceTestTransport:
    """Invokes the function the way Lambda would, through Chalice's test client, synchronously (tests, local)."""

    def __init__(self, stage: str = "dev", project_dir: Path = ROOT) -> None:
        from chalice.test import Client

        from app import app

        self._client = Client(app, stage_name=stage, project_dir=str(project_dir))
        self._submitted: list[dict[str, Any]] = []
        self.invocations = 0

    def submit(self, payload: dict[str, Any]) -> None:
        """Queue an invocation (run at the next `deliveries`)."""
        self._submitted.append(json.loads(json.dumps(payload)))  # what crosses Lambda's boundary is JSON

    def deliveries(self) -> list[Delivery]:
        """Run every queued invocation, one after another."""
        submitted, self._submitted = self._submitted, []
        arrived = []
        for payload in submitted:
            self.invocations += 1
            try:
                response = self._client.lambda_.invoke(FUNCTION_NAME, payload).payload
            except Exception:  # an invocation that raised: Lambda's on-failure destination would say so
                response = None
            arrived.append(Delivery(payload, json.loads(json.dumps(response)) if response is not None else None))
        return arrived


def destination_delivery(record: Mapping[str, Any]) -> Delivery:
    """An asynchronous invocation's destination record (what Lambda sends to SQS) as a Delivery."""
    succeeded = record.get("requestContext", {}).get("condition") == "Success" and not record.get(
        "responseContext", {}
    ).get("functionError")
    return Delivery(dict(record.get("requestPayload") or {}), record.get("responsePayload") if succeeded else None)


class LambdaTransport:
    """Asynchronous invocations (InvocationType=Event); outcomes through the function's on-success and on-failure
    destination, an SQS queue (`setup-fanout` creates it and points the function's EventInvokeConfig at it)."""

    def __init__(self, lambda_client: Any, sqs_client: Any, function_name: str, queue_url: str) -> None:
        self._lambda = lambda_client
        self._sqs = sqs_client
        self._function_name = function_name
        self._queue_url = queue_url

    def submit(self, payload: dict[str, Any]) -> None:
        """Invoke asynchronously: Lambda queues the event and answers 202 at once."""
        self._lambda.invoke(
            FunctionName=self._function_name, InvocationType="Event", Payload=json.dumps(payload).encode()
        )

    def deliveries(self) -> list[Delivery]:
        """Destination records from the queue (long poll of up to 20 s), deleted once read."""
        response = self._sqs.receive_message(QueueUrl=self._queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=20)
        arrived = []
        for message in response.get("Messages", []):
            arrived.append(destination_delivery(json.loads(message["Body"])))
            self._sqs.delete_message(QueueUrl=self._queue_url, ReceiptHandle=message["ReceiptHandle"])
        return arrived


@dataclass
class FanoutOptions:
    """How the fan-out drives its invocations."""

    concurrency: int = 100
    """At most this many invocations in flight; the rate limits are split evenly between them."""
    safety_margin_ms: int = 30_000
    max_attempts: int = 5
    """Failed invocations of one segment before the fan-out gives up on it (the checkpoint keeps it)."""
    max_invocations: int | None = None
    """Stop starting invocations after this many (a partial run; the checkpoint resumes it)."""


def fan_out(
    transport: Transport,
    facts: TableFacts,
    checkpoint: Checkpoint,
    options: Options,
    fanout: FanoutOptions,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> Counts:
    """Drive every unfinished segment to its end with invocations of the segment function; what this run did.

    A segment that comes back unfinished is invoked again from where it stopped; a failed invocation is invoked
    again from the same key (its writes were conditional, so redoing a page is harmless). Deliveries that don't
    match the segment's current invocation (a duplicate from Lambda's at-least-once delivery, a stale run) are
    ignored."""
    stop = stop or threading.Event()
    run_id = uuid.uuid4().hex
    concurrency = max(1, fanout.concurrency)
    share = min(concurrency, len(checkpoint.unfinished()) or 1)
    attempts = {number: 0 for number in checkpoint.unfinished()}
    failures = dict.fromkeys(attempts, 0)
    waiting = list(attempts)
    in_flight: set[int] = set()
    invocations = 0
    this_run = Counts()

    def submit(number: int) -> None:
        nonlocal invocations
        attempts[number] += 1
        invocations += 1
        transport.submit(
            segment_request(facts, checkpoint, number, options).payload(
                run_id=run_id,
                attempt=attempts[number],
                safety_margin_ms=fanout.safety_margin_ms,
                read_units_per_second=options.read_units / share if options.read_units else None,
                write_units_per_second=options.write_units / share if options.write_units else None,
            )
        )
        in_flight.add(number)

    def may_start() -> bool:
        return not stop.is_set() and (fanout.max_invocations is None or invocations < fanout.max_invocations)

    while waiting or in_flight:
        while waiting and len(in_flight) < concurrency and may_start():
            submit(waiting.pop(0))
        if not in_flight:
            break
        for delivery in transport.deliveries():
            request = delivery.request
            number = request.get("segment")
            if request.get("run_id") != run_id or number not in in_flight or request.get("attempt") != attempts[number]:
                continue
            in_flight.discard(number)
            response = delivery.response
            if response is None:
                failures[number] += 1
                if failures[number] < fanout.max_attempts:
                    waiting.append(number)
                continue
            result = SegmentResult(
                number, checkpoint.total_segments, key_from_json(response["last_evaluated_key"]), response["done"]
            )
            counts = Counts.from_dict(response["counts"])
            checkpoint.record(result, counts)
            this_run.add(counts)
            if progress is not None:
                progress.add(counts)
            if not result.done:
                waiting.append(number)
    return this_run


# ---------------------------------------------------------------------------------------------------------------
# Command line


def stage_settings(stage: str, project_dir: Path = ROOT) -> Settings:
    """The stage's settings as its functions see them (the domain overrides decide the same way)."""
    from localdev.invoker import stage_environment

    return Settings.from_environ(stage_environment(stage, FUNCTION_NAME, project_dir))


def local_worker(settings: Settings, client: Any, write_concurrency: int) -> SegmentWorker:
    """A segment worker on this machine with the stage's classification."""
    from chalicelib.dynamodb import DynamoDBGateway
    from chalicelib.runtime import classifier_for

    return SegmentWorker(
        client, DynamoDBGateway(client, max_concurrency=write_concurrency), classifier_for(settings).is_personal_email
    )


def dynamodb_client(pool: int) -> Any:
    """A DynamoDB client from the environment, with connections enough for every thread."""
    import boto3

    from chalicelib.dynamodb import client_config

    return boto3.session.Session().client("dynamodb", config=client_config(max_pool_connections=pool))


def parser() -> argparse.ArgumentParser:
    """The command line."""
    top = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True)
    for name, text in (("run", "backfill from this machine"), ("fanout", "backfill with the Lambda function")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--table", required=True, help="the users table's name")
        command.add_argument("--stage", default="dev", help="the Chalice stage whose domain settings apply")
        command.add_argument("--segments", type=int, default=8, help="TotalSegments of the parallel scan")
        command.add_argument("--checkpoint", type=Path, help="default: .state/backfill-<table>.json")
        command.add_argument("--dry-run", action="store_true", help="count what would change; write nothing")
        command.add_argument(
            "--page-size", type=int, default=DEFAULT_PAGE_SIZE, help="items per Scan page (Limit; at most 1 MB a page)"
        )
        command.add_argument("--read-units", type=float, help="read units per second, for the whole backfill")
        command.add_argument("--write-units", type=float, help="write units per second, for the whole backfill")
        command.add_argument("--capacity-fraction", type=float, help="a fraction of a provisioned table's capacity")
        command.add_argument("--no-progress", action="store_true", help="no progress bar (the summary still prints)")
        if name == "run":
            command.add_argument("--threads", type=int, help="segments worked at once (default: --segments, max 32)")
            command.add_argument("--write-concurrency", type=int, default=8, help="writes in flight per segment")
            command.add_argument("--max-pages", type=int, help="stop each segment after this many pages")
        else:
            command.add_argument("--function-name", help="default: email-checker-<stage>-backfill_segment")
            command.add_argument("--queue-url", help="the destination queue (default: from `setup-fanout`)")
            command.add_argument("--concurrency", type=int, default=100, help="invocations in flight at most")
            command.add_argument("--safety-margin-ms", type=int, default=30_000, help="time each invocation keeps")
            command.add_argument("--max-invocations", type=int, help="stop starting invocations after this many")
    setup = commands.add_parser("setup-fanout", help="create the results queue, point the function's destinations")
    setup.add_argument("--stage", required=True)
    return top


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    args = parser().parse_args(argv)
    try:
        if args.command == "setup-fanout":
            from tools.stage import apply_backfill_destinations

            queue_url = apply_backfill_destinations(args.stage)
            print(f"stage {args.stage}: backfill results go to {queue_url}; policies updated")
            return 0
        return backfill(args)
    except (ValueError, CheckpointMismatch) as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    except Exception as error:
        from tools.errors import describe

        message = describe(error)  # no region, an endpoint that does not answer, a missing table: one line
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


def backfill(args: argparse.Namespace) -> int:
    """`run` or `fanout`: open the checkpoint, run, print the summary; 0 when every segment is done."""
    if args.segments < 1 or args.segments > 1_000_000:
        raise ValueError("--segments must be from 1 to 1000000")
    if args.page_size < 1:
        raise ValueError("--page-size must be at least 1")
    settings = stage_settings(args.stage)
    threads = min(args.threads or args.segments, 32) if args.command == "run" else 1
    client = dynamodb_client(pool=threads * (args.write_concurrency if args.command == "run" else 1) + threads)
    facts = table_facts(client.describe_table(TableName=args.table)["Table"])
    read_units, write_units = rate_limits(facts, args.read_units, args.write_units, args.capacity_fraction)
    options = Options(args.dry_run, args.page_size, read_units, write_units, getattr(args, "max_pages", None))
    path = args.checkpoint or ROOT / ".state" / f"backfill-{args.table}.json"
    checkpoint = Checkpoint.open(path, facts.name, args.segments, args.dry_run)
    checkpoint.save()
    progress = Progress(facts.item_count, checkpoint.totals(), not args.no_progress, args.dry_run)
    stop = threading.Event()
    # SIGTERM as Ctrl-C: finish the pages under way, keep the checkpoint, print the summary.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started = time.monotonic()
    interrupted = False
    try:
        if args.command == "run":
            worker = local_worker(settings, client, args.write_concurrency)
            run_local(worker, facts, checkpoint, options, threads, progress, stop)
        else:
            fan_out(fanout_transport(args), facts, checkpoint, options, fanout_options(args), progress, stop)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
    interrupted = interrupted or stop.is_set()
    print(summary(checkpoint.totals(), checkpoint, time.monotonic() - started, interrupted))
    print(f"checkpoint: {path} (holds keys: keep it private)")
    return 0 if not checkpoint.unfinished() else 1


def fanout_options(args: argparse.Namespace) -> FanoutOptions:
    """The fan-out's options from the command line."""
    return FanoutOptions(args.concurrency, args.safety_margin_ms, max_invocations=args.max_invocations)


def fanout_transport(args: argparse.Namespace) -> Transport:
    """The real transport: asynchronous invocations, results from the stage's destination queue."""
    import boto3

    from tools.stage import backfill_queue_name, load_config

    session = boto3.session.Session()
    app_name = load_config()["app_name"]
    function_name = args.function_name or f"{app_name}-{args.stage}-{FUNCTION_NAME}"
    sqs = session.client("sqs")
    queue_url = args.queue_url or sqs.get_queue_url(QueueName=backfill_queue_name(app_name, args.stage))["QueueUrl"]
    return LambdaTransport(session.client("lambda"), sqs, function_name, queue_url)


if __name__ == "__main__":
    sys.exit(main())
