"""The sweep's pass as an operator reads it (`status`, `python -m tools.backfill urgent`): one line from the state."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from chalicelib.sweep import StateStore, SweepState, error_code


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    seconds = int((now - moment).total_seconds())
    return f"{seconds // 3600} h {seconds % 3600 // 60} min ago" if seconds >= 3600 else f"{seconds // 60} min ago"


def pass_line(state: SweepState | None, now: datetime | None = None) -> str:
    """`pass 3: 41.2% of ~1,000,000 items, started 2 h 5 min ago, ends ~... (urgent since ...)`, or that none ran."""
    now = now or datetime.now(UTC)
    if state is None or state.pass_number == 0:
        urgent = f"; urgent pass requested {_ago(state.urgent_since, now)}" if state and state.urgent else ""
        return f"no pass yet (the scheduled sweep has not run){urgent}"
    mode = f"urgent since {_ago(state.urgent_since, now)}" if state.urgent else "background"
    end = state.estimated_end.strftime("%Y-%m-%d %H:%M UTC") if state.estimated_end else "unknown"
    last = f"; last pass finished {_ago(state.last_finished_at, now)}" if state.last_finished_at else ""
    return (
        f"pass {state.pass_number}: {state.percent():.1f}% of ~{state.item_count:,} items, started "
        f"{_ago(state.started_at, now)}, estimated end {end}, {mode}; {state.counts.scanned:,} checked, "
        f"{state.counts.written:,} fixed, {state.counts.failed:,} failed{last}"
    )


def sweep_line(s3: Any, bucket_arn: str) -> str:
    """The pass, read from the state object in the on-failure bucket (`status`'s sweep line)."""
    if not bucket_arn:
        return "unknown: no on-failure bucket found"
    try:
        state, _ = StateStore(s3, bucket_arn.rsplit(":", 1)[-1]).load()
    except (ClientError, ValueError) as error:
        return f"unknown: its state could not be read ({error_code(error)})"
    return pass_line(state)
