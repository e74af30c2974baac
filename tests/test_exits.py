"""Every local entry point stops on SIGINT (a terminal's Ctrl-C, sent to its process group) and SIGTERM (sent to the
process) at any moment, within seconds, without a traceback, and leaves no DynamoDB Local or moto running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.projects import copy_project, named_stages

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


def wait_for(path: Path, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return True
        time.sleep(0.1)
    return False


def assert_stopped_cleanly(
    process: subprocess.Popen, marker: str, output: Path, number: int, finished: str | None = None
) -> str:
    """It ended within 20 s, left no server and no traceback, and exited 0 or 128 + the signal's number; or, when its
    output says it had `finished` its work, killed by the signal itself (it came during the interpreter's exit, after
    the handlers were restored: nothing was left to stop)."""
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"still running 20 s after {signal.Signals(number).name}:\n{output.read_text()[-3000:]}")
    text = output.read_text(errors="replace")
    leftovers = servers_started_by(marker)
    for line in leftovers:  # don't leave them running for the next test
        os.kill(int(line.split(":")[0]), signal.SIGKILL)
    assert not leftovers, f"left running after {signal.Signals(number).name}: {leftovers}\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    allowed = (0, 128 + number, -number) if finished and finished in text else (0, 128 + number)
    assert process.returncode in allowed, (process.returncode, text[-3000:])
    return text


# Before and while the imports, while DynamoDB Local starts, and while the walkthrough's steps run.
@pytest.mark.parametrize("delay", [0.5, 2.0, 5.0])
@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_the_demo_stops_on_a_signal_at_any_moment(number, delay, tmp_path, here):
    process, marker, output = start(["localdev.demo"], tmp_path, here)
    time.sleep(delay)
    interrupt(process, number)
    assert_stopped_cleanly(process, marker, output, number, finished="walkthrough: OK")


@pytest.mark.parametrize(
    ("number", "delay"), [(signal.SIGTERM, 0.5), (signal.SIGINT, 2.0), (signal.SIGTERM, 6.0)], ids=str
)
def test_the_bench_stops_on_a_signal_at_any_moment(number, delay, tmp_path, here):
    process, marker, output = start(
        ["bench", "--smoke", "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")], tmp_path, here
    )
    time.sleep(delay)
    interrupt(process, number)
    assert_stopped_cleanly(process, marker, output, number)
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_stops_while_starting_and_finishes_its_batch_while_following(number, tmp_path, here):
    from localdev.dynamodb_local import free_port

    arguments = ["localdev.run", "--port", str(free_port()), "--data-dir", str(tmp_path / "data")]
    arguments += ["--checkpoints", str(tmp_path / "checkpoints.json")]
    starting, marker, output = start(arguments, tmp_path, here)
    time.sleep(1.0)
    interrupt(starting, number)
    assert_stopped_cleanly(starting, marker, output, number)

    assert_unlocked(tmp_path / "data" / "make-run.lock", tmp_path / "checkpoints.json.lock")

    following, marker, output = start(arguments, tmp_path, here)
    assert wait_for(output, "Ctrl-C to stop", 60), output.read_text()
    interrupt(following, number)
    text = assert_stopped_cleanly(following, marker, output, number)
    assert following.returncode == 0 and "stopped after" in text, text
    assert_unlocked(tmp_path / "data" / "make-run.lock", tmp_path / "checkpoints.json.lock")


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
    from localdev.dynamodb_local import free_port

    arguments = ["localdev.run", "--port", str(free_port()), "--data-dir", str(tmp_path / "data")]
    arguments += ["--checkpoints", str(tmp_path / "checkpoints.json")]
    killed, marker, output = start(arguments, tmp_path, here)
    assert wait_for(output, "Ctrl-C to stop", 60), output.read_text()
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
    assert wait_for(output, "Ctrl-C to stop", 60), output.read_text()
    interrupt(restarted, signal.SIGINT)
    assert_stopped_cleanly(restarted, marker, output, signal.SIGINT)


def test_the_backfill_bench_stops_on_sigterm(tmp_path, here):
    process, marker, output = start(
        ["tools.backfill_bench", "--items", "2000", "--segments", "1", "--out", str(tmp_path / "b.json")],
        tmp_path,
        here,
    )
    time.sleep(4.0)
    interrupt(process, signal.SIGTERM)
    assert_stopped_cleanly(process, marker, output, signal.SIGTERM)


@pytest.mark.parametrize(
    ("number", "moment"), [(signal.SIGINT, "$ .venv/bin/chalice deploy"), (signal.SIGTERM, "table Users on moto")]
)
def test_the_moto_trial_stops_on_a_signal_with_its_step_and_moto(number, moment, tmp_path, here):
    process, marker, output = start(["tools.trial", "--work-dir", str(tmp_path / "trial")], tmp_path, here)
    assert wait_for(output, moment, 120), output.read_text()
    interrupt(process, number)
    assert_stopped_cleanly(process, marker, output, number)
    # Not only the servers: the step that was running (chalice deploy) is stopped too.
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and _carries(p, marker)]


def _carries(entry: Path, marker: str) -> bool:
    try:
        return f"{MARKER}={marker}".encode() in (entry / "environ").read_bytes().split(b"\0")
    except OSError:
        return False
