"""How every local entry point (demo, run, bench, the backfill bench) starts server processes and stops on SIGINT or
SIGTERM: never a traceback, never a server left running (errors: one line, `tools.errors.report_errors`).

Server processes (DynamoDB Local, moto) start in their own session, so a terminal's Ctrl-C does not reach them and
only this process stops them. `spawn` records each one; `handle_signals` installs the handlers:

- outside `graceful()` a signal stops every recorded server at once (SIGTERM, then SIGKILL after a few seconds) and
  exits with 128 + the signal's number, without unwinding the interrupted code: an exception raised at an arbitrary
  point can leave a lock held that the unwinding then waits for (a walkthrough once hung for minutes that way);
- inside `graceful()` the first signal only sets the returned flag (the loop finishes what it has in hand and
  returns, and the `with` blocks stop the servers); a second one stops at once as above.

An `atexit` hook stops any server still recorded when the interpreter exits normally.

`exclusive(path, holder)` holds a lock for a command's lifetime (one `make run` per data directory): an flock, which
the kernel releases once every process holding it has ended, however it ended (a return, an error, a signal's
`os._exit`, kill -9).
"""

from __future__ import annotations

import atexit
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TextIO

SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_SECONDS = 5.0

_children: dict[int, str] = {}
_spawning = False
_pending: int | None = None


class StopFlag:
    """A `threading.Event` look-alike (set, is_set, wait) without a lock, so a signal handler can set it: an Event's
    lock may be held by the very code the handler interrupted, and the handler would wait for it forever."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        """Ask the loop to stop."""
        self._set = True

    def is_set(self) -> bool:
        """Whether a stop was asked for."""
        return self._set

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` s, in short steps, returning early once set; whether it is set."""
        deadline = time.monotonic() + timeout
        while not self._set and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(0.05, left))
        return self._set


_graceful: StopFlag | None = None


def spawn(command: list[str], name: str, **options: Any) -> subprocess.Popen[bytes]:
    """Start a server process in its own session and record it, so a signal or the exit stops it."""
    global _spawning, _pending
    _spawning = True  # a signal in the gap between fork and record is held until the process is recorded
    try:
        process = subprocess.Popen(command, start_new_session=True, **options)
        _children[process.pid] = name
    finally:
        _spawning = False
    if _pending is not None:
        _stop_now(_pending)
    return process


def forget(process: subprocess.Popen[bytes]) -> None:
    """The process has been stopped and reaped by its owner."""
    _children.pop(process.pid, None)


def stop_children(timeout: float = STOP_SECONDS) -> None:
    """SIGTERM every recorded server's process group, SIGKILL what is left after `timeout` s, and reap them.

    Only system calls: it runs inside a signal handler, where the interrupted code may hold Python-level locks."""
    pids = list(_children)
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if not _reaped(pid)}
        if alive:
            time.sleep(0.05)
    for pid in alive:
        _signal_group(pid, signal.SIGKILL)
        with suppress(ChildProcessError):
            os.waitpid(pid, 0)
    for pid in pids:
        _children.pop(pid, None)


def _signal_group(pid: int, number: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, number)  # the server is its session's leader: its group id is its pid


def _reaped(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:  # already reaped (by its owner's Popen)
        return True


def _stop_now(number: int) -> None:
    """Stop every server and exit with 128 + the signal's number."""
    names = sorted(set(_children.values()))
    os.write(2, f"\n{signal.Signals(number).name}: stopping{' ' + ', '.join(names) if names else ''}\n".encode())
    stop_children()
    for stream in (sys.stdout, sys.stderr):
        # The interrupted code may be writing to it (a reentrant flush raises): what is lost is output only.
        with suppress(Exception):
            stream.flush()
    os._exit(128 + number)


def _on_signal(number: int, frame: Any) -> None:
    global _pending
    if _spawning:
        _pending = number
    elif _graceful is not None and not _graceful.is_set():
        _graceful.set()
    else:
        _stop_now(number)


@contextmanager
def handle_signals() -> Iterator[None]:
    """SIGINT and SIGTERM stop the recorded servers and exit at once, for the duration of the block (main thread).

    Installed even over a disposition inherited as ignored: a shell starts a script's background job with SIGINT
    ignored (and Python then installs no KeyboardInterrupt handler), yet whoever started it stops it with either."""
    previous = {number: signal.signal(number, _on_signal) for number in SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextmanager
def graceful() -> Iterator[StopFlag]:
    """Inside `handle_signals`: the first signal sets the flag instead; a second one still stops at once."""
    global _graceful
    stop = StopFlag()
    _graceful = stop
    try:
        yield stop
    finally:
        _graceful = None


class Locked(RuntimeError):
    """Another process holds the lock."""


@contextmanager
def exclusive(path: Path, holder: str) -> Iterator[TextIO]:
    """Hold an exclusive lock on `path` for the block; `Locked`, naming its holders, if another process holds it.

    The file (created if missing) says who holds it: `holder` and this process's id, then whatever the caller adds
    to the yielded file (a server it passes the descriptor to, which then holds the lock as long as it runs). It is
    never deleted: a third process could lock a new file while the second still holds the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Other processes get the descriptor only when passed it (Popen closes the rest): with it they hold the lock too.
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holders = ", ".join(line.strip() for line in handle if line.strip()) or "a process"
            raise Locked(f"held by {holders}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{holder} (process {os.getpid()})\n")
        handle.flush()
        yield handle


def run_main(body: Callable[[], int], known: tuple[type[BaseException], ...] = ()) -> int:
    """`body()` under `handle_signals`, its errors of the known kinds reported (see `tools.errors.report_errors`)."""
    from tools.errors import report_errors

    with handle_signals():
        return report_errors(body, known)


atexit.register(stop_children)
