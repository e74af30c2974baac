"""A batch's time budget (docs/design.md §3): the point by which it must answer, and work mapped over a pool until
then."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True, slots=True)
class Deadline:
    """A point in `time.monotonic()` seconds after which no new request is sent; None means no limit."""

    at: float | None = None

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        """The deadline `seconds` from now."""
        return cls(time.monotonic() + seconds)

    @classmethod
    def from_remaining_ms(cls, remaining_ms: int, margin_seconds: float) -> Deadline:
        """The deadline for a Lambda invocation with `remaining_ms` left, keeping `margin_seconds` to answer."""
        return cls.after(remaining_ms / 1000 - margin_seconds)

    def remaining(self) -> float:
        """Seconds left (infinite without a limit; negative once passed)."""
        return math.inf if self.at is None else self.at - time.monotonic()

    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return self.at is not None and time.monotonic() >= self.at


NO_DEADLINE = Deadline()


def map_until(
    pool: ThreadPoolExecutor,
    work: Callable[[Item], Result],
    items: Sequence[Item],
    deadline: Deadline,
    out_of_time: Callable[[Item], Result],
) -> tuple[list[Result], bool]:
    """`work` over `items` on `pool`, results in the items' order; (results, whether the deadline cut it short).

    An item whose call has not started when the deadline passes is not started; one still running then is left to
    finish in the background (a request can't be called back): both get `out_of_time(item)`.
    """

    def guarded(item: Item) -> Result:
        return out_of_time(item) if deadline.expired() else work(item)

    futures: list[Future[Result]] = [pool.submit(guarded, item) for item in items]
    timeout = None if deadline.at is None else max(0.0, deadline.remaining())
    _, pending = wait(futures, timeout=timeout, return_when=FIRST_EXCEPTION)
    if any(f.done() and f.exception() is not None for f in futures):
        for future in pending:
            future.cancel()
        raise next(f.exception() for f in futures if f.done() and f.exception() is not None)  # type: ignore[misc]
    for future in pending:
        future.cancel()
    results = [
        out_of_time(item) if future in pending else future.result() for item, future in zip(items, futures, strict=True)
    ]
    return results, bool(pending)


def chunks(items: Iterable[Item], size: int) -> list[list[Item]]:
    """`items` in consecutive lists of at most `size`."""
    listed = list(items)
    return [listed[start : start + size] for start in range(0, len(listed), size)]
