"""Follow one table's stream for as long as `make run` runs. DescribeTable is the source of truth: a table deleted,
recreated, or whose stream is turned off or on while it runs is noticed within `interval` seconds, and its new stream
is followed (or why it can't be is said in one line), instead of reading a disabled stream in silence."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from localdev.dynamodb_local import table_stream

FollowStream = Callable[[str, threading.Event], None]
"""Follow one stream ARN until the event is set."""
OnChange = Callable[[str | None], bool]
"""Told what the table's stream is now (an ARN, "" for no stream, None for no table); whether to follow it."""


def wait_for_change(
    client: Any, table_name: str, last: str | None, stop: threading.Event, interval: float
) -> str | None:
    """Block until `stop` is set (then `last`) or the table's stream is no longer `last` (what it is now: an ARN, ""
    for a stream turned off, None for no table)."""
    while not stop.wait(interval):
        now = table_stream(client, table_name)
        if now != last:
            return now
    return last


def follow_table(
    client: Any,
    table_name: str,
    stream_arn: str,
    follow_stream: FollowStream,
    on_change: OnChange,
    stop: threading.Event,
    interval: float = 1.0,
) -> None:
    """Follow the table's stream until `stop`; each time the table's stream changes, `on_change` is told and, if it
    agrees, the new stream is followed (the old one is left: once its table is gone it holds nothing new)."""
    known: str | None = stream_arn
    followed = stream_arn
    while not stop.is_set():
        until = threading.Event()
        seen: list[Any] = []
        arguments = (client, table_name, known, stop, interval, seen, until)
        watcher = threading.Thread(target=_watch, args=arguments, name="table-watch", daemon=True)
        watcher.start()
        if followed:
            follow_stream(followed, until)
        until.wait()
        watcher.join()
        if stop.is_set():
            return
        if isinstance(seen[0], Exception):
            raise seen[0]  # the engine stopped answering: the command's error, not a silent end
        known = seen[0]
        followed = known if on_change(known) and known else ""


def _watch(
    client: Any,
    table_name: str,
    last: str | None,
    stop: threading.Event,
    interval: float,
    seen: list[Any],
    until: threading.Event,
) -> None:
    """The watcher thread: put what the stream became (or the error that stopped it) in `seen`, then set `until`
    (the followed stream's end)."""
    try:
        seen.append(wait_for_change(client, table_name, last, stop, interval))
    except Exception as error:
        seen.append(error)
    finally:
        until.set()
