"""Every local entry point stops on SIGINT (a terminal's Ctrl-C, sent to its process group) and SIGTERM (sent to the
process) at any moment, within seconds, without a traceback, and leaves no DynamoDB Local or moto running.

Each signal goes out when the output shows a phase has begun (no fixed sleeps), and the output must then show that
the work did not run to its end: a command that ignored the signal would finish (or keep going) and fail here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import suppress
from pathlib import Path

import pytest

from tests.projects import EMAIL, copy_project, named_stages

MARKER = "EMAIL_CHECKER_TEST_MARKER"
SERVERS = ("DynamoDBLocal", "moto.server")


def servers_started_by(marker: str) -> list[str]:
    """Command lines of DynamoDB Local and moto processes whose environment carries `marker` (inherited from the
    process under test, whichever session or group they run in)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environment = (entry / "environ").read_bytes()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours
            continue
        if f"{MARKER}={marker}".encode() in environment.split(b"\0") and any(s in command for s in SERVERS):
            found.append(f"{entry.name}: {command}")
    return found


def kill_servers_started_by(marker: str) -> list[str]:
    """Kill -9 what `servers_started_by` finds (so the next test does not meet it); what it found."""
    found = servers_started_by(marker)
    for line in found:
        with suppress(ProcessLookupError):
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
    return found


@pytest.fixture(scope="module")
def here(tmp_path_factory) -> Path:
    """Where the entry points run: the tests' project with this module's one stage (so `--stage` may be left out)."""
    return copy_project(tmp_path_factory.mktemp("here") / "project", named_stages("dev"), local=True)


def start(module_args: list[str], tmp_path: Path, here: Path) -> tuple[subprocess.Popen, str, Path]:
    """The entry point as a user starts it: its own process group, output to a file (a pipe could fill)."""
    marker = uuid.uuid4().hex
    output = tmp_path / f"{marker}.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", *module_args],
            cwd=here,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, MARKER: marker, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
    return process, marker, output


def interrupt(process: subprocess.Popen, number: int) -> None:
    """Ctrl-C goes to the terminal's foreground process group; `kill` (and most supervisors) to the process."""
    if number == signal.SIGINT:
        os.killpg(process.pid, number)
    else:
        process.send_signal(number)


def wait_for(path: Path, text: str, timeout: float, process: subprocess.Popen | None = None) -> bool:
    """Whether `text` appeared in the output within `timeout` s (polled every 20 ms); False once `process` ended
    without it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return True
        if process is not None and process.poll() is not None:
            return text in path.read_text(errors="replace")
        time.sleep(0.02)
    return False


def interrupt_at(process: subprocess.Popen, marker: str, output: Path, phase: str, number: int) -> None:
    """Send the signal once the output shows `phase`: a line printed as a phase begins, with seconds of work after it
    (imports, starting DynamoDB Local, the steps), far more than the few milliseconds it takes to see it."""
    if not wait_for(output, phase, 120, process):
        with suppress(ProcessLookupError):  # it may have ended (an error) before the phase began
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        kill_servers_started_by(marker)
        pytest.fail(f"no {phase!r} in the output:\n{output.read_text(errors='replace')[-3000:]}")
    interrupt(process, number)


def assert_stopped_cleanly(
    process: subprocess.Popen, marker: str, output: Path, number: int, code: int | None = None, unfinished: str = ""
) -> str:
    """It ended within 20 s, left no server and no traceback, exited with `code` (default 128 + the signal's number),
    and its output lacks `unfinished`, the line it prints once its work is done: the signal stopped it, it did not
    run to the end (a process that ignores the signal does)."""
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        kill_servers_started_by(marker)
        pytest.fail(f"still running 20 s after {signal.Signals(number).name}:\n{output.read_text()[-3000:]}")
    text = output.read_text(errors="replace")
    leftovers = kill_servers_started_by(marker)
    assert not leftovers, f"left running after {signal.Signals(number).name}: {leftovers}\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    assert not unfinished or unfinished not in text, f"it ran to the end:\n{text[-3000:]}"
    assert process.returncode == (128 + number if code is None else code), (process.returncode, text[-3000:])
    return text


# Each phase's first line: while DynamoDB Local starts (a server being spawned), during the walkthrough's steps.
@pytest.mark.parametrize(
    ("number", "phase"),
    [
        (signal.SIGINT, "starting DynamoDB Local"),
        (signal.SIGTERM, "starting DynamoDB Local"),
        (signal.SIGINT, "1. create ID1"),
    ],
    ids=str,
)
def test_the_demo_stops_on_a_signal_at_any_moment(number, phase, tmp_path, here):
    process, marker, output = start(["localdev.demo"], tmp_path, here)
    interrupt_at(process, marker, output, phase, number)
    assert_stopped_cleanly(process, marker, output, number, unfinished="walkthrough:")


# While the imports run (the banner is printed before them), while it measures on the engine it started.
@pytest.mark.parametrize(
    ("number", "phase"), [(signal.SIGTERM, "benchmark:"), (signal.SIGINT, "per-record CPU profile")], ids=str
)
def test_the_bench_stops_on_a_signal_at_any_moment(number, phase, tmp_path, here):
    process, marker, output = start(
        ["bench", "--smoke", "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")], tmp_path, here
    )
    interrupt_at(process, marker, output, phase, number)
    assert_stopped_cleanly(process, marker, output, number, unfinished="wrote ")
    assert not (tmp_path / "r.json").exists()


def run_arguments(tmp_path: Path) -> list[str]:
    """`make run` on a free port, with its data and checkpoints in the test's folder."""
    from localdev.dynamodb_local import free_port

    return ["localdev.run", "--port", str(free_port()), "--data-dir", str(tmp_path / "data"),
            "--checkpoints", str(tmp_path / "checkpoints.json")]  # fmt: skip


RUN_LOCKS = ("data/make-run.lock", "checkpoints.json.lock")


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_stops_at_once_while_starting(number, tmp_path, here):
    starting, marker, output = start(run_arguments(tmp_path), tmp_path, here)
    interrupt_at(starting, marker, output, "starting DynamoDB Local on port", number)
    assert_stopped_cleanly(starting, marker, output, number, unfinished="Ctrl-C to stop")
    assert_unlocked(*(tmp_path / lock for lock in RUN_LOCKS))


def stop_following(process: subprocess.Popen, marker: str, output: Path, number: int, tmp_path: Path) -> None:
    """Once it follows the stream, the signal lets it finish the batch in hand, then it exits 0 and frees its locks."""
    interrupt_at(process, marker, output, "Ctrl-C to stop", number)
    text = assert_stopped_cleanly(process, marker, output, number, code=0)
    assert "stopped after" in text, text
    assert_unlocked(*(tmp_path / lock for lock in RUN_LOCKS))


# SIGINT while following: the end of the kill -9 test below.
def test_run_finishes_its_batch_on_sigterm_while_following(tmp_path, here):
    following, marker, output = start(run_arguments(tmp_path), tmp_path, here)
    stop_following(following, marker, output, signal.SIGTERM, tmp_path)


def assert_unlocked(*paths: Path) -> None:
    """Each lock file exists (the run took it) and nobody holds it any more."""
    import fcntl

    for path in paths:
        with path.open() as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError while held


def test_run_releases_its_lock_on_an_error(tmp_path, here):
    from localdev.dynamodb_local import free_port

    checkpoints = tmp_path / "checkpoints.json"
    nobody = f"http://127.0.0.1:{free_port()}"
    failing, _, output = start(
        ["localdev.run", "--endpoint", nobody, "--checkpoints", str(checkpoints)], tmp_path, here
    )
    assert failing.wait(timeout=120) == 2, output.read_text()
    assert f"cannot reach {nobody}" in output.read_text()
    assert_unlocked(tmp_path / "checkpoints.json.lock")


def test_after_a_kill_9_the_engine_left_running_keeps_the_data_until_it_is_stopped(tmp_path, here):
    arguments = run_arguments(tmp_path)
    killed, marker, output = start(arguments, tmp_path, here)
    assert wait_for(output, "Ctrl-C to stop", 120, killed), output.read_text()
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=20)
    [left] = servers_started_by(marker)  # the engine runs in its own session: kill -9 can't reach it
    try:
        refused, _, second = start([*arguments[:1], *arguments[3:]], tmp_path, here)
        assert refused.wait(timeout=120) == 2, second.read_text()
        assert (
            "is in use by another `make run`" in second.read_text() and "DynamoDB Local (process" in second.read_text()
        )
    finally:
        os.kill(int(left.split(":")[0]), signal.SIGKILL)
    # Once the engine is gone, the data is free again and a restart resumes.
    deadline = time.monotonic() + 20
    while servers_started_by(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    restarted, marker, output = start(arguments, tmp_path, here)
    stop_following(restarted, marker, output, signal.SIGINT, tmp_path)


def test_the_backfill_bench_stops_on_sigterm(tmp_path, here):
    process, marker, output = start(
        ["bench.backfill_bench", "--items", "2000", "--segments", "1", "--out", str(tmp_path / "b.json")],
        tmp_path,
        here,
    )
    interrupt_at(process, marker, output, "measuring 2000 items", signal.SIGTERM)
    assert_stopped_cleanly(process, marker, output, signal.SIGTERM, unfinished="wrote ")
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_the_backfill_stops_on_a_signal_keeping_its_checkpoint(number, make_table, tmp_path, here):
    table = make_table(stream=False)
    items = [{"PutRequest": {"Item": {"Id": {"S": f"user-{i}"}, EMAIL: {"S": "someone@gmail.com"}}}} for i in range(60)]
    for first in range(0, len(items), 25):
        table.client.batch_write_item(RequestItems={table.name: items[first : first + 25]})
    # 60 writes at 2 a second: half a minute, longer than the 20 s it is given to stop.
    process, marker, output = start(
        ["tools.backfill", "run", "--table", table.name, "--stage", "dev", "--segments", "1", "--page-size", "10",
         "--write-units", "2", "--no-progress", "--checkpoint", str(tmp_path / "c.json")],
        tmp_path,
        here,
    )  # fmt: skip
    interrupt_at(process, marker, output, "segment(s) to do", number)
    text = assert_stopped_cleanly(process, marker, output, number, code=1, unfinished="1/1 segments done")
    assert "interrupted: 1 segment(s) left" in text and (tmp_path / "c.json").exists(), text


@pytest.mark.parametrize(
    ("number", "moment"), [(signal.SIGINT, "$ .venv/bin/chalice deploy"), (signal.SIGTERM, "table Users on moto")]
)
def test_the_moto_trial_stops_on_a_signal_with_its_step_and_moto(number, moment, tmp_path, here):
    process, marker, output = start(["tools.trial", "--work-dir", str(tmp_path / "trial")], tmp_path, here)
    interrupt_at(process, marker, output, moment, number)
    assert_stopped_cleanly(process, marker, output, number, unfinished="trial: OK")
    # Not only the servers: the step that was running (chalice deploy) is stopped too.
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and _carries(p, marker)]


def _carries(entry: Path, marker: str) -> bool:
    try:
        return f"{MARKER}={marker}".encode() in (entry / "environ").read_bytes().split(b"\0")
    except OSError:
        return False
