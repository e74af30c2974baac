"""The time budget's primitives: a deadline, and work mapped over a pool that stops at it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from chalicelib.deadline import NO_DEADLINE, Deadline, chunks, map_until


def test_a_deadline_from_lambdas_remaining_time_keeps_the_margin():
    deadline = Deadline.from_remaining_ms(5_000, margin_seconds=2.0)
    assert 2.9 < deadline.remaining() <= 3.0
    assert not deadline.expired()
    assert Deadline.after(-0.001).expired()
    assert NO_DEADLINE.remaining() == float("inf") and not NO_DEADLINE.expired()


def test_map_until_returns_every_result_in_order_when_there_is_time():
    with ThreadPoolExecutor(4) as pool:
        results, cut = map_until(pool, lambda n: n * 2, list(range(10)), NO_DEADLINE, lambda n: None)
    assert results == [n * 2 for n in range(10)] and not cut


def test_map_until_answers_at_the_deadline_and_marks_what_did_not_finish():
    release = threading.Event()
    started = []

    def slow(n: int) -> str:
        started.append(n)
        if n >= 2:
            release.wait(5)
        return "done"

    with ThreadPoolExecutor(3) as pool:
        begun = time.monotonic()
        results, cut = map_until(pool, slow, list(range(8)), Deadline.after(0.3), lambda n: "late")
        waited = time.monotonic() - begun
        release.set()
    assert cut
    assert results[:2] == ["done", "done"]
    assert results[2:] == ["late"] * 6
    assert waited < 2.0  # answered at the deadline, not when the stuck calls ended
    assert sorted(started)[:3] == [0, 1, 2] and len(started) < 8  # items queued behind the stuck ones never started


def test_map_until_raises_what_a_call_raised():
    def boom(n: int) -> int:
        if n == 3:
            raise RuntimeError("boom")
        return n

    with ThreadPoolExecutor(2) as pool, pytest.raises(RuntimeError, match="boom"):
        map_until(pool, boom, list(range(5)), NO_DEADLINE, lambda n: -1)


def test_chunks_keep_order_and_bound_size():
    assert chunks(range(7), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert chunks([], 25) == []
