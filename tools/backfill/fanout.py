"""The fan-out: the segment worker as the Lambda function `backfill_segment`, one synchronous invocation per segment
at a time from a thread pool, each segment invoked again from where it stopped until it is done or given up."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

from chalicelib.backfill import Counts, SegmentResult, key_from_json, key_to_json
from tools.backfill.checkpoint import Checkpoint
from tools.backfill.local import Options, segment_request
from tools.backfill.progress import Progress
from tools.backfill.table import TableFacts

# The function's timeout (.chalice/config.json: 900 s) plus a minute for Lambda's start and the answer's way back.
FUNCTION_TIMEOUT_S = 900
INVOCATION_TIMEOUT_S = FUNCTION_TIMEOUT_S + 60
# Invocations in flight: the backfill function's reserved concurrency (.chalice/config.json), so none is throttled.
DEFAULT_CONCURRENCY = 8
# Invocations in a row without progress (an error, a timeout, or a page whose writes failed again) before a segment
# is given up: with the backoff of 2, 4, 8, 16 s between them that is half a minute of waiting, enough for a throttle
# or a deploy to pass (botocore already retried every write inside each invocation); a fault that outlasts it (a
# permission, a missing table) is reported then instead of being retried for ever.
MAX_FAILURES = 5
BACKOFF_BASE_S = 2.0
BACKOFF_CAP_S = 60.0


class InvocationFailed(Exception):
    """An invocation that raised, ended in a function error, or did not answer in time (never a key in the text)."""


class Invoker(Protocol):
    """Runs the segment function once with a payload and returns its result (synchronously)."""

    def invoke(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The function's result for `payload`; InvocationFailed when it has none."""


class LambdaInvoker:
    """Synchronous invocations (InvocationType=RequestResponse) of the deployed function."""

    def __init__(self, lambda_client: Any, function_name: str) -> None:
        self._lambda = lambda_client
        self._function_name = function_name

    def invoke(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Invoke and wait for the answer; a function error (its message may quote a value) is named by type only."""
        response = self._lambda.invoke(
            FunctionName=self._function_name, InvocationType="RequestResponse", Payload=json.dumps(payload).encode()
        )
        body = json.loads(response["Payload"].read() or b"null")
        if response.get("FunctionError"):
            kind = body.get("errorType", "unknown") if isinstance(body, dict) else "unknown"
            raise InvocationFailed(f"function error {kind}")
        if not isinstance(body, dict):
            raise InvocationFailed("the function returned no result")
        return body


def lambda_client(timeout_s: float = INVOCATION_TIMEOUT_S) -> Any:
    """A Lambda client that waits for a whole invocation and never retries one (the fan-out decides that)."""
    import boto3
    from botocore.config import Config

    config = Config(
        read_timeout=timeout_s, connect_timeout=10, retries={"total_max_attempts": 1}, max_pool_connections=64
    )
    return boto3.session.Session().client("lambda", config=config)


def call_with_timeout(
    invoker: Invoker, payload: dict[str, Any], timeout_s: float, stop: threading.Event
) -> dict[str, Any] | None:
    """`invoker.invoke(payload)` waited for at most `timeout_s`; None when `stop` is set first. An invocation that
    does not answer in time is left behind (its thread is a daemon) and reported as InvocationFailed."""
    outcome: dict[str, Any] = {}
    finished = threading.Event()

    def call() -> None:
        try:
            outcome["result"] = invoker.invoke(payload)
        except Exception as error:  # any failure of one invocation is the fan-out's to count, not to crash on
            outcome["error"] = error
        finally:
            finished.set()

    threading.Thread(target=call, name=f"invoke-{payload.get('segment')}", daemon=True).start()
    waited = 0.0
    while not finished.wait(min(0.5, timeout_s - waited)):
        waited += 0.5
        if stop.is_set():
            return None
        if waited >= timeout_s:
            raise InvocationFailed(f"no answer within {timeout_s:g} s")
    if "error" in outcome:
        error = outcome["error"]
        raise error if isinstance(error, InvocationFailed) else InvocationFailed(type(error).__name__)
    return outcome["result"]


@dataclass
class FanoutOptions:
    """How the fan-out drives its invocations."""

    concurrency: int = DEFAULT_CONCURRENCY
    """Segments invoked at once; the rate limits are split evenly between them."""
    safety_margin_ms: int = 30_000
    page_worst_case_ms: int | None = None
    """The time a page is assumed to take before one is timed (None: the function's default)."""
    max_failures: int = MAX_FAILURES
    backoff_base_s: float = BACKOFF_BASE_S
    backoff_cap_s: float = BACKOFF_CAP_S
    invocation_timeout_s: float = INVOCATION_TIMEOUT_S
    max_invocations: int | None = None
    """Stop starting invocations after this many (a partial run; the checkpoint resumes it)."""


@dataclass
class FanoutReport:
    """What a fan-out did: its counts, its invocations, and the segments it gave up on (with the last reason)."""

    counts: Counts = field(default_factory=Counts)
    invocations: int = 0
    given_up: dict[int, str] = field(default_factory=dict)


def backoff(failures: int, options: FanoutOptions) -> float:
    """Seconds to wait after the `failures`-th invocation in a row without progress: doubling, capped."""
    return min(options.backoff_cap_s, options.backoff_base_s * 2 ** (failures - 1))


def fan_out(
    invoker: Invoker,
    facts: TableFacts,
    checkpoint: Checkpoint,
    options: Options,
    fanout: FanoutOptions,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> FanoutReport:
    """Drive every unfinished segment to its end with invocations of the segment function, `fanout.concurrency`
    segments at once; a segment without progress `fanout.max_failures` times in a row is given up (its checkpoint
    stays, so a later run resumes it). Counts come from each invocation's result: the pages it finished."""
    stop = stop or threading.Event()
    run_id = uuid.uuid4().hex
    unfinished = checkpoint.unfinished()
    share = max(1, min(fanout.concurrency, len(unfinished)))
    report = FanoutReport()
    lock = threading.Lock()

    def may_invoke() -> bool:
        with lock:
            if stop.is_set() or (fanout.max_invocations is not None and report.invocations >= fanout.max_invocations):
                return False
            report.invocations += 1
            return True

    def drive(number: int) -> None:
        failures, attempt = 0, 0
        while may_invoke():
            attempt += 1
            request = segment_request(facts, checkpoint, number, options)
            extra: dict[str, Any] = {"run_id": run_id, "attempt": attempt, "safety_margin_ms": fanout.safety_margin_ms}
            if fanout.page_worst_case_ms is not None:
                extra["page_worst_case_ms"] = fanout.page_worst_case_ms
            extra["read_units_per_second"] = options.read_units / share if options.read_units else None
            extra["write_units_per_second"] = options.write_units / share if options.write_units else None
            try:
                response = call_with_timeout(invoker, request.payload(**extra), fanout.invocation_timeout_s, stop)
                if response is None:
                    return  # stopped: the invocation finishes on Lambda; the next run redoes its page
                result = segment_result(response, number, checkpoint.total_segments)
                counts = Counts.from_dict(response.get("counts") or {})
                checkpoint.record(result, counts)
                with lock:
                    report.counts.add(counts)
                if progress is not None:
                    progress.add(counts)
                if result.done:
                    return
                progressed = key_to_json(result.last_evaluated_key) != key_to_json(request.start_key)
                reason = "no page finished (writes failed or no time for a page)"
            except InvocationFailed as failure:
                progressed, reason = False, str(failure)
            if progressed:
                failures = 0
                continue
            failures += 1
            if failures >= fanout.max_failures:
                with lock:
                    report.given_up[number] = reason
                return
            stop.wait(backoff(failures, fanout))

    with ThreadPoolExecutor(max_workers=max(1, fanout.concurrency), thread_name_prefix="fanout") as pool:
        futures = [pool.submit(drive, number) for number in unfinished]
        pending: set[Future[None]] = set(futures)
        try:
            while pending:
                _, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
        except KeyboardInterrupt:
            stop.set()  # no new invocation; those in flight are left to finish on Lambda
            wait(pending)
            raise
        for future in futures:
            future.result()
    return report


def segment_result(response: dict[str, Any], number: int, total_segments: int) -> SegmentResult:
    """The function's answer as a SegmentResult; InvocationFailed when it is not this segment's."""
    if response.get("segment") != number or response.get("total_segments") != total_segments:
        raise InvocationFailed("the result names another segment")
    try:
        return SegmentResult(
            number, total_segments, key_from_json(response.get("last_evaluated_key")), bool(response["done"])
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise InvocationFailed("the result is not a segment result") from None
