"""What a newcomer gets wrong gets one `error: ...` line on stderr and exit code 2, never a traceback: a missing
table, no region, an endpoint that does not answer, a busy port, a bad stage setting, an unknown stage, a stream ARN
the template would refuse. And the checks behind them: port_is_free, the ARN validator, the stage's queues."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from localdev.dynamodb_local import DynamoDBLocal, EngineFailed, free_port, last_error, port_is_free
from tests.projects import (
    copy_project,
    named_stages,
    port_8000_alone,
    project_config,
    stage_tool,
    unused_stage_name,
    without_aws,
)
from tools.merge_template import STREAM_ARN_PATTERN
from tools.stage import split_stream_arn

# The tests that share `make run` on a taken port 8000 run in one worker (one `make run`, one holder of the port).
MAKE_RUN_8000 = "make-run-8000"
GOOD_ARN = "arn:aws:dynamodb:eu-west-1:123456789012:table/Users/stream/2026-01-01T00:00:00.000"


def assert_one_error_line(result: subprocess.CompletedProcess, *expected: str) -> str:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 2, output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def local(engine, tmp_path: Path) -> dict[str, str]:
    return without_aws(tmp_path, **engine.environment())


@pytest.fixture(scope="module")
def here(tmp_path_factory) -> Path:
    """Where the commands run: the tests' project with this module's one stage, `dev` (so `--stage` may be left out)."""
    return copy_project(tmp_path_factory.mktemp("here") / "project", named_stages("dev"), local=True)


@pytest.fixture
def project_copy(tmp_path):
    """A project of the test's own with this module's one stage, `dev` (for the stage tools, which write to it)."""
    return copy_project(tmp_path / "project", named_stages("dev"))


def python(*args: str, env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


# ---------------------------------------------------------------------------------------------------------------
# A table that does not exist, no region, an endpoint nobody answers on


def test_backfill_of_a_missing_table(engine, tmp_path, here):
    result = python(
        "tools.backfill", "run", "--table", "NoSuchTable", "--stage", "dev", "--no-progress",
        "--checkpoint", str(tmp_path / "c.json"),
        env=local(engine, tmp_path), cwd=here)  # fmt: skip
    assert_one_error_line(result, "DescribeTable", "check the name and the region")


def test_enable_stream_on_a_missing_table(engine, tmp_path, project_copy):
    before = (project_copy / ".chalice" / "config.json").read_text()
    result = stage_tool(
        project_copy, "enable-stream", "--stage", "dev", "--table-name", "NoSuchTable", env=local(engine, tmp_path)
    )
    assert_one_error_line(result, "no table 'NoSuchTable' in us-east-1")
    assert (project_copy / ".chalice" / "config.json").read_text() == before


def test_no_region(tmp_path, project_copy, here):
    environment = without_aws(tmp_path, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x")
    backfill = python(
        "tools.backfill", "run", "--table", "Users", "--stage", "dev", "--no-progress", env=environment, cwd=here
    )
    assert_one_error_line(backfill, "no AWS region", "AWS_DEFAULT_REGION")
    enable = stage_tool(project_copy, "enable-stream", "--stage", "dev", "--table-name", "Users", env=environment)
    assert_one_error_line(enable, "no AWS region")


def test_an_endpoint_nobody_answers_on(tmp_path, here):
    nobody = f"http://127.0.0.1:{free_port()}"
    environment = without_aws(
        tmp_path, AWS_ENDPOINT_URL_DYNAMODB=nobody, AWS_DEFAULT_REGION="us-east-1", AWS_ACCESS_KEY_ID="x",
        AWS_SECRET_ACCESS_KEY="x",
    )  # fmt: skip
    backfill = python(
        "tools.backfill", "run", "--table", "Users", "--stage", "dev", "--no-progress", env=environment, cwd=here
    )
    assert_one_error_line(backfill, f"cannot reach {nobody}")
    following = python(
        "localdev.run", "--endpoint", nobody, "--checkpoints", str(tmp_path / "c.json"), env=environment, cwd=here
    )
    assert_one_error_line(following, f"cannot reach {nobody}")


# ---------------------------------------------------------------------------------------------------------------
# Ports


def test_make_run_on_a_busy_port(engine, tmp_path, here):
    result = python(
        "localdev.run", "--port", str(engine.port), "--data-dir", str(tmp_path / "d"), env=dict(os.environ), cwd=here
    )
    assert_one_error_line(result, f"port {engine.port} is in use", f"--endpoint http://127.0.0.1:{engine.port}")


def test_make_run_takes_no_port_another_make_run_has_claimed(tmp_path, here):
    """Two `make run`s started in the same second: the first claims its port before it looks, so the second finds it
    taken even while nothing listens there yet, and starts no engine on it."""
    from localdev import lifecycle
    from localdev.run import port_lock_path

    port = free_port()
    with lifecycle.exclusive(port_lock_path(port), "make run (this test, starting)"):
        process = subprocess.Popen(
            [sys.executable, "-m", "localdev.run", "--port", str(port), "--data-dir", str(tmp_path / "d")],
            cwd=here,
            env=without_aws(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own group: ended whole if it started an engine after all
        )
        try:
            stdout, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            stdout, stderr = process.communicate()
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert "starting DynamoDB Local" not in stdout
    assert_one_error_line(result, f"port {port} is in use")


def test_an_engine_on_a_taken_port_fails_in_one_line(engine):
    # Not started: the readiness probe would be answered by the engine already there.
    with pytest.raises(EngineFailed, match=f"^port {engine.port} is in use: DynamoDB Local can't listen on it$"):
        DynamoDBLocal(port=engine.port).start()


def test_the_line_that_says_why_the_engine_failed():
    # DynamoDB Local 3.3's output when another process took the port between the check and its start.
    stderr = """Exception in thread "main" java.io.IOException: Failed to bind to 0.0.0.0/0.0.0.0:36423
\tat org.eclipse.jetty.server.ServerConnector.openAcceptChannel(ServerConnector.java:349)
\tat software.amazon.dynamodb.services.local.main.ServerRunner.main(ServerRunner.java:106)
Caused by: java.net.BindException: Address already in use
\tat java.base/sun.nio.ch.Net.bind0(Native Method)
\t... 16 more
"""
    assert last_error(stderr) == (
        "java.io.IOException: Failed to bind to 0.0.0.0/0.0.0.0:36423 (java.net.BindException: Address already in use)"
    )
    assert last_error("") == "no output"


def test_a_port_in_time_wait_is_free_and_a_listened_one_is_not():
    # A server that closes first (as DynamoDB Local does when it stops) leaves its side in TIME_WAIT on its port.
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Jetty's connector does
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not port_is_free(port)
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()
        client.close()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # the port is in TIME_WAIT: a bind without SO_REUSEADDR fails
    assert port_is_free(port)


def test_dynamodb_local_restarts_on_its_port_at_once():
    # `make run` stopped and started again within a minute: the engine's side of its connections is in TIME_WAIT.
    with DynamoDBLocal() as first:
        client = first.client()
        client.list_tables()
        port = first.port
    client.close()  # the engine closed first: its side of the connection is now in TIME_WAIT
    assert port_is_free(port)
    with DynamoDBLocal(port=port) as second:
        assert second.client().list_tables()["TableNames"] == []


# ---------------------------------------------------------------------------------------------------------------
# Stages: unknown ones and bad settings


def test_an_unknown_stage_is_refused_everywhere(tmp_path, project_copy, here):
    environment = without_aws(tmp_path, AWS_DEFAULT_REGION="us-east-1")
    name, stages = unused_stage_name(here), ", ".join(project_config(here)["stages"])
    expected = (f"no stage {name!r} in .chalice/config.json", stages, f"add-stage --stage {name}")
    run = python("localdev.run", "--stage", name, "--data-dir", str(tmp_path / "d"), env=environment, cwd=here)
    assert_one_error_line(run, *expected)
    backfill = python("tools.backfill", "run", "--table", "Users", "--stage", name, env=environment, cwd=here)
    assert_one_error_line(backfill, *expected)
    bind = stage_tool(project_copy, "bind", "--stage", name, "--stream-arn", GOOD_ARN, env=environment)
    assert_one_error_line(bind, *expected)


@pytest.fixture
def project_with_a_bad_setting(tmp_path):
    """A runnable copy of the project (localdev and the engine's jar too) whose one stage has BATCH_SIZE=lots."""
    config = named_stages("dev")
    config["stages"]["dev"]["environment_variables"]["BATCH_SIZE"] = "lots"
    return copy_project(tmp_path / "project", config, local=True)


def test_a_bad_stage_setting_under_run(project_with_a_bad_setting, tmp_path):
    # (The demo runs with the walkthrough's own settings, whatever the stages hold: tests/test_independence.py.)
    environment = without_aws(tmp_path)
    run = python(
        "localdev.run", "--port", str(free_port()), "--data-dir", str(tmp_path / "d"),
        "--checkpoints", str(tmp_path / "c.json"), env=environment, cwd=project_with_a_bad_setting,
    )  # fmt: skip
    assert_one_error_line(run, "BATCH_SIZE", "'lots'")


# ---------------------------------------------------------------------------------------------------------------
# Stream ARNs: as strict as the template's parameter


@pytest.mark.parametrize(
    ("arn", "problem"),
    [
        (GOOD_ARN.replace("123456789012", "12345"), "account '12345' is not 12 digits"),
        (GOOD_ARN.replace("table/Users", "table/My Users"), "table name 'My Users'"),
        (GOOD_ARN.replace("table/Users", "table/ab"), "table name 'ab'"),
        (GOOD_ARN.replace("arn:aws:", "arn:aws-xx:"), "partition 'aws-xx'"),
        (GOOD_ARN.replace("eu-west-1", "europe"), "'europe' is not a region"),
        (GOOD_ARN.replace("2026-01-01T00:00:00.000", "latest"), "stream label 'latest'"),
        ("arn:aws:sqs:eu-west-1:123456789012:q", "expected arn:aws:dynamodb:"),
    ],
)
def test_bind_refuses_an_arn_the_template_would_refuse(arn, problem, tmp_path, project_copy):
    before = (project_copy / ".chalice" / "config.json").read_text()
    result = stage_tool(project_copy, "bind", "--stage", "dev", "--stream-arn", arn, env=without_aws(tmp_path))
    assert_one_error_line(result, "not a DynamoDB stream ARN", problem)
    assert (project_copy / ".chalice" / "config.json").read_text() == before
    assert not re.fullmatch(STREAM_ARN_PATTERN, arn) or problem.startswith(("partition", "'europe'", "stream label"))


@pytest.mark.parametrize(
    "arn",
    [
        GOOD_ARN,
        "arn:aws-cn:dynamodb:cn-north-1:123456789012:table/a.b-c_d/stream/2026-01-01T00:00:00.000",
        "arn:aws-us-gov:dynamodb:us-gov-west-1:123456789012:table/Users/stream/2026-11-25T05:32:12.123456",
    ],
)
def test_what_bind_accepts_the_template_accepts(arn):
    assert split_stream_arn(arn)[2] == "123456789012"
    assert re.fullmatch(STREAM_ARN_PATTERN, arn)


# ---------------------------------------------------------------------------------------------------------------
# make run: port 8000 taken, one run per data directory, a relative data directory


@pytest.fixture(scope="module")
def port_8000_taken():
    """make run's preferred port, busy for the module: held here, or by whatever holds it already."""
    import time

    from localdev.run import PREFERRED_PORT

    with port_8000_alone(), socket.socket() as listener:
        # SO_REUSEADDR, as the engine and make run's probe set it: an earlier test's connections to 8000 may still be in
        # TIME_WAIT, which fails a plain bind although nothing listens (then make run would take the port after all).
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Held here for the whole module: another holder (a parallel run's) may let it go while the tests run.
        deadline = time.monotonic() + 30
        while True:
            try:
                listener.bind(("", PREFERRED_PORT))
                listener.listen()
                break
            except OSError:
                if time.monotonic() > deadline:
                    break  # held by something that keeps it: busy all the same
                time.sleep(0.5)
        yield PREFERRED_PORT


@pytest.fixture(scope="module")
def following(port_8000_taken, here, tmp_path_factory):
    """`make run` with a relative --data-dir and port 8000 taken, followed until Ctrl-C: (its output file, the data
    directory, the checkpoint file, the arguments it was given)."""
    import signal
    import time

    folder = tmp_path_factory.mktemp("following")
    data, checkpoints = folder / "data", folder / "checkpoints.json"
    arguments = ["--data-dir", os.path.relpath(data, here), "--checkpoints", os.path.relpath(checkpoints, here)]
    output = folder / "out.txt"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "localdev.run", *arguments],
            cwd=here, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C to stop" not in output.read_text():
            assert process.poll() is None and time.monotonic() < deadline, output.read_text()
            time.sleep(0.2)
        yield output, data, checkpoints, arguments
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)


@pytest.mark.xdist_group(MAKE_RUN_8000)
def test_make_run_says_loudly_that_port_8000_is_taken_and_prints_the_command_for_its_port(following):
    import time

    output, *_ = following
    text = output.read_text()
    [warning] = [line for line in text.splitlines() if line.startswith("warning:")]
    port = int(re.search(r"listens on port (\d+) instead", warning).group(1))
    assert "port 8000 is in use" in warning and "use the put-item command printed below" in warning
    assert f"DynamoDB Local: http://127.0.0.1:{port} (data in" in text
    [command] = [line.strip() for line in text.splitlines() if "aws dynamodb put-item" in line]
    assert f"--endpoint-url http://127.0.0.1:{port} " in command and ":8000" not in command
    # Verbatim, with the AWS CLI requirements-dev.txt pins (in this interpreter's venv) first on the PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    wrote = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": path}
    )
    assert wrote.returncode == 0, wrote.stderr
    deadline = time.monotonic() + 60
    while "1 write(s)" not in output.read_text():
        assert time.monotonic() < deadline, output.read_text()
        time.sleep(0.2)


@pytest.mark.xdist_group(MAKE_RUN_8000)
def test_a_relative_data_dir_is_where_the_engine_keeps_its_data(following):
    output, data, *_ = following
    assert f"(data in {data})" in output.read_text()
    assert (data / "shared-local-instance.db").is_file()


@pytest.mark.xdist_group(MAKE_RUN_8000)
def test_a_second_make_run_on_the_same_data_or_checkpoints_is_refused(following, tmp_path, here):
    output, data, checkpoints, arguments = following
    second = python("localdev.run", *arguments, env=dict(os.environ), cwd=here)
    assert_one_error_line(
        second, f"the data directory {data} is in use by another `make run`", "DynamoDB Local (process", "--data-dir"
    )
    endpoint = re.search(r"DynamoDB Local: (\S+)", output.read_text()).group(1)
    attached = python("localdev.run", "--endpoint", endpoint, *arguments[2:], env=dict(os.environ), cwd=here)
    assert_one_error_line(attached, f"the checkpoint file {checkpoints} is in use", "--checkpoints")


def test_the_missing_jar_says_to_run_make(monkeypatch, tmp_path):
    from localdev import dynamodb_local

    monkeypatch.setattr(dynamodb_local, "NPM_PACKAGE", tmp_path / "nothing")
    with pytest.raises(dynamodb_local.PrerequisiteMissing, match="run `make deps`") as missing:
        dynamodb_local.find_jar()
    assert "npm ci" not in str(missing.value)


@pytest.mark.xdist_group(MAKE_RUN_8000)
def test_following_another_engine_says_its_storage_is_unknown(following, here, tmp_path):
    import signal
    import time

    output, *_ = following
    endpoint = re.search(r"DynamoDB Local: (\S+)", output.read_text()).group(1)
    attached = tmp_path / "attached.txt"
    with attached.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "localdev.run", "--endpoint", endpoint, "--checkpoints", str(tmp_path / "c.json")],
            cwd=here, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C to stop" not in attached.read_text():
            assert process.poll() is None and time.monotonic() < deadline, attached.read_text()
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)
    text = attached.read_text()
    assert f"DynamoDB: {endpoint} (an engine this command did not start: where it keeps its data is unknown)" in text
    assert "in memory" not in text and f"--endpoint-url {endpoint} " in text


def test_the_put_item_example_names_every_key_attribute_with_its_type():
    from chalicelib.attributes import AttributeNames
    from localdev.run import example_item, put_item_command

    table = {
        "TableName": "Members",
        "KeySchema": [
            {"AttributeName": "tenant", "KeyType": "HASH"},
            {"AttributeName": "member_no", "KeyType": "RANGE"},
        ],
        "AttributeDefinitions": [
            {"AttributeName": "tenant", "AttributeType": "S"},
            {"AttributeName": "member_no", "AttributeType": "N"},
        ],
    }
    names = AttributeNames(email="email", flag="is_personal")
    assert json.loads(shlex.split(example_item(table, names))[0]) == {
        "tenant": {"S": "ID1"}, "member_no": {"N": "1"}, "email": {"S": "john@gmail.com"}
    }  # fmt: skip
    command = put_item_command("http://127.0.0.1:9", table, "us-east-1", names)
    assert '--endpoint-url http://127.0.0.1:9 --table-name Members --item \'{"tenant"' in command
