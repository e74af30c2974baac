"""A batch's time budget in numbers (docs/design.md §3): each request's timeouts and attempts, and the worst
case they allow.

Lambda kills an invocation at its timeout with no answer, no summary line and no metrics, and the whole batch is
retried. So every request is bounded (timeouts and attempts below), the batch stops sending when its deadline comes
(`chalicelib.deadline`), and a stage whose batch could not finish inside the function's timeout even with every
request at its worst case is refused at deploy time.
"""

from __future__ import annotations

from math import ceil

CONNECT_TIMEOUT_SECONDS = 1.0
READ_TIMEOUT_SECONDS = 2.0
"""DynamoDB answers in milliseconds; 2 s per read is a stall, better retried on a fresh connection."""
MAX_ATTEMPTS = 3
"""botocore's `total_max_attempts`: the first try and two retries."""
MAX_BACKOFF_SECONDS = 20
"""botocore's standard mode: before retry i (1-based), a random wait of up to min(2 ** (i - 1), 20) s when
throttled (DynamoDB sends no `x-amz-retry-after`, which could add to it)."""
ANSWER_MARGIN_SECONDS = 2.0
"""Kept back from Lambda's remaining time: the summary line, the metrics and the answer must fit in it."""
READS_PER_REQUEST = 100
"""BatchGetItem's limit."""


def request_worst_case_seconds() -> float:
    """The longest one request can take: every attempt times out after connecting, with the longest backoffs."""
    backoff = sum(min(2 ** (retry - 1), MAX_BACKOFF_SECONDS) for retry in range(1, MAX_ATTEMPTS))
    return MAX_ATTEMPTS * (CONNECT_TIMEOUT_SECONDS + READ_TIMEOUT_SECONDS) + backoff


def batch_worst_case_seconds(batch_size: int, concurrency: int, writes_per_request: int) -> float:
    """The longest a full batch can take with every request at its worst: its read rounds, then its write rounds.

    A read pass that returns UnprocessedKeys has answered (it did not stall), so only one stalled pass is counted.
    """
    reads = ceil(batch_size / READS_PER_REQUEST)
    writes = ceil(batch_size / writes_per_request)
    rounds = ceil(reads / concurrency) + ceil(writes / concurrency)
    return rounds * request_worst_case_seconds() + ANSWER_MARGIN_SECONDS


def budget_problem(batch_size: int, concurrency: int, writes_per_request: int, lambda_timeout: int) -> str | None:
    """Why a stage's batch can't fit its function's timeout at worst, or None when it fits."""
    worst = batch_worst_case_seconds(batch_size, concurrency, writes_per_request)
    if worst <= lambda_timeout:
        return None
    return (
        f"a batch of BATCH_SIZE={batch_size} with WRITE_CONCURRENCY={concurrency} can take up to {worst:.0f} s "
        f"when DynamoDB stalls ({request_worst_case_seconds():.0f} s per request: {MAX_ATTEMPTS} attempts of "
        f"{CONNECT_TIMEOUT_SECONDS:.0f} s to connect and {READ_TIMEOUT_SECONDS:.0f} s to read, with backoff), more "
        f"than the function's lambda_timeout of {lambda_timeout} s: lower BATCH_SIZE or raise WRITE_CONCURRENCY"
    )
