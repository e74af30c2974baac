"""`make run` on the adopter's own table (issue 21): `--table T --key tenant:S --key member_no:N` creates it with that
key and its stream, says so in one line, prints a put-item line for that key, and a table deleted and recreated under
it is noticed and followed; an existing table is followed as DescribeTable gives it, whatever --key says. On DynamoDB
Local, in a project copy whose only stage (not dev, not prod) names its attributes `email` and `is_personal`."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.adopter import EMAIL, FLAG, adopter_project

STAGE = "staging"


def own_project(target: Path) -> Path:
    """The adopter's project copy with localdev/: its stages only, attributes `email` and `is_personal`."""
    return adopter_project(target, {STAGE: ""}, with_localdev=True)


class Following:
    """A running `python -m localdev.run`, its output read line by line."""

    def __init__(self, project: Path, *arguments: str) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "localdev.run", "--stage", STAGE, *arguments],
            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip

    def until(self, pattern: str, timeout: float = 90) -> str:
        """Read output until a line matches `pattern` (a regex); that line."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if re.search(pattern, line):
                    self.lines.remove(line)
                    return line
            assert time.monotonic() < deadline and self.process.poll() is None, "\n".join(self.lines)
            line = self.process.stdout.readline()
            if line:
                self.lines.append(line.rstrip("\n"))

    def stop(self) -> str:
        """SIGINT, as Ctrl-C; the rest of the output."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        rest, _ = self.process.communicate(timeout=60)
        return "\n".join(self.lines) + rest


def put_the_printed_item(client, line: str) -> dict:
    """Write the item of a printed put-item line (its key, its e-mail) as the AWS CLI would; that item."""
    words = shlex.split(line.strip())
    table, item = words[words.index("--table-name") + 1], json.loads(words[words.index("--item") + 1])
    client.put_item(TableName=table, Item=item)
    return item


def flag_of(client, table: str, item: dict, key_names: list[str]):
    """The item's flag as stored, or None."""
    key = {name: item[name] for name in key_names}
    return client.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"].get(FLAG)


def wait_for_flag(client, table: str, item: dict, key_names: list[str]) -> dict:
    deadline = time.monotonic() + 30
    while (flag := flag_of(client, table, item, key_names)) is None:
        assert time.monotonic() < deadline, "the flag was never written"
        time.sleep(0.2)
    return flag


def test_make_run_creates_follows_and_refollows_the_adopters_table(engine, tmp_path):
    project = own_project(tmp_path / "project")
    client = engine.client()
    table = f"Members-{uuid.uuid4().hex[:8]}"
    arguments = ["--endpoint", engine.endpoint, "--checkpoints", str(tmp_path / "checkpoints.json")]
    run = Following(project, *arguments, "--table", table, "--key", "tenant:S", "--key", "member_no:N")
    try:
        created = run.until(r"^created table ")
        assert created == (
            f"created table {table}: key tenant (S) + member_no (N), stream NEW_AND_OLD_IMAGES; "
            f"stage {STAGE}'s attributes: e-mail 'email', flag 'is_personal'"
        )
        described = client.describe_table(TableName=table)["Table"]
        assert described["KeySchema"] == [
            {"AttributeName": "tenant", "KeyType": "HASH"},
            {"AttributeName": "member_no", "KeyType": "RANGE"},
        ]
        put_line = run.until(r"aws dynamodb put-item")
        run.until("Ctrl-C to stop")
        item = put_the_printed_item(client, put_line)
        assert set(item) == {"tenant", "member_no", EMAIL} and item["member_no"] == {"N": "1"}
        assert wait_for_flag(client, table, item, ["tenant", "member_no"]) == {"BOOL": True}  # gmail.com: personal
        run.until(r"\b1 write\(s\)")

        client.delete_table(TableName=table)
        assert "was deleted" in run.until(rf"table {table} was deleted")
        client.create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": "org", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "org", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"},
        )
        renewed = run.until(rf"table {table} is new")
        assert "key org (S), stream NEW_IMAGE" in renewed
        item = put_the_printed_item(client, run.until(r"aws dynamodb put-item"))
        assert set(item) == {"org", EMAIL}
        assert wait_for_flag(client, table, item, ["org"]) == {"BOOL": True}
    finally:
        rest = run.stop()
    assert run.process.returncode == 0 and "Traceback" not in rest, rest

    # A restart finds the recreated table: followed as it is, with its own key in the put-item line.
    again = Following(project, *arguments, "--table", table, "--key", "tenant:S", "--key", "member_no:N")
    try:
        found = again.until(rf"^found table {table}")
        assert "key org (S)" in found and "not the --key tenant:S member_no:N asked for" in found, found
        put_line = again.until(r"aws dynamodb put-item")
        assert set(json.loads(shlex.split(put_line.strip())[-1])) == {"org", EMAIL}
        again.until("Ctrl-C to stop")
    finally:
        rest = again.stop()
    assert again.process.returncode == 0 and "Traceback" not in rest, rest
    assert client.describe_table(TableName=table)["Table"]["KeySchema"] == [{"AttributeName": "org", "KeyType": "HASH"}]


@pytest.mark.parametrize(
    ("keys", "problem"),
    [(["tenant"], "expected NAME:TYPE"), (["a:S", "b:N", "c:S"], "not 3"), (["a:S", "a:N"], "different names")],
)
def test_a_bad_key_is_refused_before_anything_starts(keys, problem, capsys):
    from localdev.run import main

    arguments = [word for key in keys for word in ("--key", key)]
    with pytest.raises(SystemExit) as exited:
        main(["--table", "Members", *arguments])
    assert exited.value.code == 2
    assert problem in capsys.readouterr().err
