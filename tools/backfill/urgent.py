"""The deployed backfill: ask the stage's sweep for an urgent pass (the same request the reconciler records) and
follow it until a pass that started after the request has finished. Ctrl-C stops following, not the pass."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from chalicelib.runtime import state_store
from tools.backfill.local import stage_settings
from tools.sweep_view import pass_line


def request_and_follow(stage: str, follow: bool, poll_seconds: float, stop: threading.Event | None = None) -> int:
    """Record the urgent request, print the pass, and (with `follow`) print it again every `poll_seconds` until the
    request is answered; 0 when answered (or not followed), 1 when stopped first."""
    import boto3

    stop = stop or threading.Event()
    store = state_store(stage_settings(stage), boto3.session.Session().client("s3"))
    asked = datetime.now(UTC)
    state = store.request_urgent(asked)
    print(f"urgent pass requested in s3://{store.bucket}/{store.key}")
    print(pass_line(state))
    while follow:
        try:
            if stop.wait(poll_seconds):
                return 1
        except KeyboardInterrupt:
            print("stopped following: the sweep goes on")
            return 1
        state, _ = store.load()
        print(pass_line(state))
        if state is not None and state.last_started_at is not None and state.last_started_at > asked:
            print("done: a pass that started after the request has finished")
            return 0
    return 0
