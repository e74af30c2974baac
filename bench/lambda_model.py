"""What a batch's measured time means on Lambda, pure: the prices, the cost per million changes, one shard's rate.

Every price is here, with its source and the date it was read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

PRICES: dict[str, Any] = {
    "read_on": "2026-11-25",
    "region": "us-east-1",
    # x86, the first tier (up to 6 billion GB-s a month); billed per ms, rounded up.
    "lambda_usd_per_gb_second": 0.0000166667,
    "lambda_usd_per_request": 0.20 / 1_000_000,
    # On-demand: one write request unit per standard write of an item up to 1 KB, conditional or not, applied or
    # not; a PartiQL statement costs what the equivalent UpdateItem does.
    "dynamodb_usd_per_write_request_unit": 0.625 / 1_000_000,
    "sources": [
        "https://aws.amazon.com/lambda/pricing/",
        "https://aws.amazon.com/dynamodb/pricing/on-demand/",
        "https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/ql-reference.html",
        "https://docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html (1,769 MB = one vCPU)",
    ],
}
TARGET_RATE = 1000.0  # changes per second per shard, each needing a write
LAG_LIMIT_S = 1.0
# Between two batches of a busy shard: Lambda's GetRecords and the invoke itself (an assumption, not measured here).
POLL_GAP_S = 0.1


def batch_line(small_records: int, small_s: float, records: int, records_s: float) -> tuple[float, float]:
    """(fixed seconds per batch, seconds per change) through two measured batch sizes; neither below zero."""
    per_change = max(0.0, (records_s - small_s) / (records - small_records)) if records > small_records else 0.0
    fixed = max(0.0, small_s - small_records * per_change)
    if per_change == 0.0:
        per_change = records_s / records
        fixed = 0.0
    return fixed, per_change


def sustainable_rate(
    fixed_s: float, per_change_s: float, batch_size: int, lag_limit_s: float = LAG_LIMIT_S, gap_s: float = POLL_GAP_S
) -> float:
    """Changes per second one shard keeps up with, one batch at a time, with every change visible within the limit.

    A change waits for the batch in progress, then for its own: lag <= 2 x batch time + the gap. At a steady rate the
    changes that arrive during a batch make the next one, so the largest batch (up to the batch size) that fits in
    (limit - gap) / 2 gives the highest rate, `b / (fixed + b x per change)`.
    """
    longest = (lag_limit_s - gap_s) / 2
    if per_change_s <= 0:
        return math.inf if fixed_s <= longest else 0.0
    records = min(float(batch_size), (longest - fixed_s) / per_change_s)
    if records < 1:
        return 0.0
    return records / (fixed_s + records * per_change_s)


def cost_per_million(memory_mb: int, batch_s: float, batch_records: int, writes_per_change: float) -> dict[str, float]:
    """US dollars per million changes handled in batches of `batch_records` that each took `batch_s` at the memory size:
    Lambda duration (per ms, rounded up) and requests, and the DynamoDB write request units."""
    invocations = 1_000_000 / batch_records
    billed_s = math.ceil(batch_s * 1000) / 1000
    duration = invocations * billed_s * memory_mb / 1024 * PRICES["lambda_usd_per_gb_second"]
    requests = invocations * PRICES["lambda_usd_per_request"]
    writes = 1_000_000 * writes_per_change * PRICES["dynamodb_usd_per_write_request_unit"]
    return {
        "lambda_duration_usd": duration,
        "lambda_requests_usd": requests,
        "dynamodb_writes_usd": writes,
        "total_usd": duration + requests + writes,
    }


def recommend_memory(options: Sequence[tuple[int, float, float]], target_rate: float = TARGET_RATE) -> dict[str, Any]:
    """From (memory MB, changes per second, total cost per million) choices: the cheapest that meets the target rate,
    else the one nearest to it (the highest rate); with the reason."""
    meeting = [option for option in options if option[1] >= target_rate]
    if meeting:
        memory, rate, cost = min(meeting, key=lambda option: (option[2], option[0]))
        reason = f"the lowest cost per million changes (${cost:.4f}) that sustains >= {target_rate:,.0f} changes/s"
    else:
        memory, rate, cost = max(options, key=lambda option: (option[1], -option[2]))
        reason = f"no size sustains {target_rate:,.0f} changes/s; the nearest ({rate:,.0f}/s, ${cost:.4f} per million)"
    return {"memory_mb": memory, "changes_per_s": rate, "total_usd": cost, "reason": reason}
