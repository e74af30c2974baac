"""Stopping a local backfill under a rate limit: it ends within a step of the limit, not after the page in hand,
and the resumed run finishes the table with nothing counted twice."""

from __future__ import annotations

import threading
import time

from tests.projects import STAGE
from tests.reliability import Model, scan, violations
from tests.test_backfill import facts_of, populate
from tools.backfill.checkpoint import Checkpoint
from tools.backfill.local import Options, local_worker, run_local, stage_settings


def test_a_stop_under_a_write_limit_ends_within_a_step_and_the_resume_finishes(make_table, project, tmp_path):
    table = make_table(stream=False)
    model = Model()
    keys = populate(table.client, table, 60, model)
    needed = len(violations(scan(table.client, table.name), model, keys))
    settings = stage_settings(STAGE, project)
    path = tmp_path / "cp.json"
    stop = threading.Event()
    done: dict = {}

    def backfill() -> None:
        checkpoint = Checkpoint.open(path, table.name, 1, dry_run=False)
        # One page of 60 items at 4 writes a second: the page alone would take ~10 s.
        options = Options(page_size=60, write_units=4)
        done["counts"] = run_local(
            local_worker(settings, table.client, 2), facts_of(table), checkpoint, options, 1, None, stop
        )

    runner = threading.Thread(target=backfill)
    runner.start()
    time.sleep(1.5)
    stopped_at = time.monotonic()
    stop.set()
    runner.join(timeout=10)
    took = time.monotonic() - stopped_at
    assert not runner.is_alive()
    assert took < 2.5, f"the stop took {took:.1f} s"
    first = done["counts"]
    left = len(violations(scan(table.client, table.name), model, keys))
    assert 0 < left < needed  # it wrote some, and stopped before the rest
    assert first.scanned == 0  # the page it stopped in is not counted: it is scanned again on resume
    assert Checkpoint.open(path, table.name, 1, dry_run=False).unfinished() == [0]

    resumed = run_local(
        local_worker(settings, table.client, 2),
        facts_of(table),
        Checkpoint.open(path, table.name, 1, dry_run=False),
        Options(page_size=60),
        1,
    )
    assert violations(scan(table.client, table.name), model, keys) == []
    assert resumed.scanned == 60 and resumed.written == left
