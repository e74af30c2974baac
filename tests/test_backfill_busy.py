"""The local backfill on a slow or busy engine (issue 21): scan-sized timeouts and botocore's retries get it through
an engine slower than the stream handler's 2 s deadline; an error it can't get past is one `error:` line with the
command that resumes it; its summary adds up, each item counted once, and failed items make it exit non-zero.
On DynamoDB Local (behind the project's slow proxy for the slow engine), a table keyed tenant (S) + member_no (N)
with the e-mail in `email` and the flag in `is_personal`; the stage is built here, never read from the config."""

from __future__ import annotations

import re

import pytest
from botocore.exceptions import ReadTimeoutError

from chalicelib.budget import READ_TIMEOUT_SECONDS as HANDLER_READ_TIMEOUT
from chalicelib.config import Settings
from chalicelib.dynamodb import WriteOutcome
from localdev.slow_proxy import SlowProxy
from tests.adopter import EMAIL, FLAG, adopter_project
from tests.projects import backfill_tool
from tools.backfill import cli, local

KEYS = (("tenant", "S"), ("member_no", "N"))
# Known answers (docs/design.md's classification): gmail.com is a free-mail domain, acme-corp.example is not.
PERSONAL = {"gmail.com": True, "acme-corp.example": False}


def fill(table, count: int) -> dict[tuple[str, int], bool]:
    """`count` items, every third already correct, the others with a wrong or missing flag; the flag each must get."""
    expected = {}
    for number in range(count):
        domain = "gmail.com" if number % 2 else "acme-corp.example"
        item = {"tenant": {"S": f"t{number % 3}"}, "member_no": {"N": str(number)}, EMAIL: {"S": f"m{number}@{domain}"}}
        if number % 3 == 0:
            item[FLAG] = {"BOOL": PERSONAL[domain]}
        elif number % 3 == 1:
            item[FLAG] = {"BOOL": not PERSONAL[domain]}
        table.client.put_item(TableName=table.name, Item=item)
        expected[(f"t{number % 3}", number)] = PERSONAL[domain]
    return expected


def flags(table) -> dict[tuple[str, int], bool | None]:
    """Every item's flag as stored."""
    pages = table.client.get_paginator("scan").paginate(TableName=table.name, ConsistentRead=True)
    return {
        (item["tenant"]["S"], int(item["member_no"]["N"])): item.get(FLAG, {}).get("BOOL")
        for page in pages
        for item in page["Items"]
    }


def summary_numbers(output: str) -> dict[str, int]:
    """The summary's counts by label."""
    labels = ("scanned", "already correct", "needed a write", "fixed", "superseded", "gone", "rejected", "failed")
    return {label: int(re.search(rf"^  {label} +(\d+)", output, re.M).group(1)) for label in labels}


def assert_adds_up(numbers: dict[str, int]) -> None:
    assert numbers["scanned"] == numbers["already correct"] + numbers["needed a write"]
    assert numbers["needed a write"] == numbers["fixed"] + numbers["superseded"] + numbers["gone"] + numbers["rejected"]


@pytest.fixture
def stage_settings(monkeypatch):
    """The adopter's stage for in-process runs: its attribute names, nothing read from .chalice/config.json."""
    settings = Settings.from_environ({"EMAIL_ATTRIBUTE": EMAIL, "FLAG_ATTRIBUTE": FLAG})
    monkeypatch.setattr(cli, "stage_settings", lambda stage: settings)
    return settings


def test_an_engine_slower_than_the_handlers_deadline_is_backfilled(make_table, engine, tmp_path):
    table = make_table(keys=KEYS, stream=False)
    expected = fill(table, 12)
    project = adopter_project(tmp_path / "project", {"staging": ""})
    delay = HANDLER_READ_TIMEOUT + 0.5  # every request: the stream handler's client would time out on each
    with SlowProxy(("127.0.0.1", engine.port), delay=delay) as slow:
        environment = {**engine.environment(), "AWS_ENDPOINT_URL_DYNAMODB": slow.endpoint}
        arguments = ["run", "--table", table.name, "--stage", "staging", "--segments", "2", "--no-progress"]
        done = backfill_tool(project, *arguments, "--checkpoint", str(tmp_path / "c.json"), env=environment)
        assert slow.requests > 0
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
    assert flags(table) == expected
    numbers = summary_numbers(done.stdout)
    assert_adds_up(numbers)
    assert numbers["scanned"] == 12 and numbers["already correct"] == 4 and numbers["fixed"] == 8
    assert numbers["failed"] == 0


def test_an_error_past_every_retry_is_one_line_with_the_resume_command(
    make_table, stage_settings, monkeypatch, capsys, tmp_path
):
    table = make_table(keys=KEYS, stream=False)
    fill(table, 6)
    monkeypatch.setattr(local, "MAX_ATTEMPTS", 3)  # botocore's retries, fewer of them
    scans = []
    real_client = local.backfill_client

    def stalled_client(pool: int):
        client = real_client(pool)

        def time_out(request, **_):
            scans.append(request)
            raise ReadTimeoutError(endpoint_url=request.url)

        client.meta.events.register("before-send.dynamodb.Scan", time_out)
        return client

    monkeypatch.setattr(cli, "backfill_client", stalled_client)
    argv = ["run", "--table", table.name, "--stage", "staging", "--segments", "1", "--no-progress"]
    argv += ["--checkpoint", str(tmp_path / "c.json")]
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    [line] = err.splitlines()
    assert line.startswith("error: ") and "did not answer in time after every retry" in line
    assert line.endswith(f"resume with `.venv/bin/python -m tools.backfill {' '.join(argv)}`")
    assert len(scans) == 3  # botocore retried the timed-out Scan, as its config says
    assert "0/1 segments done" in out and (tmp_path / "c.json").exists()


class FailsFor:
    """The gateway, except that writes to the items in `keys` fail (as after every retry); with `once`, only the
    first write to each; with `applied`, they are made all the same (a write whose answer timed out)."""

    def __init__(self, gateway, keys: set[int], once: bool = False, applied: bool = False) -> None:
        self._gateway = gateway
        self.attributes = gateway.attributes
        self.keys = keys
        self.once = once
        self.applied = applied

    def apply(self, writes, deadline=None):
        doomed = [int(write.key.wire["member_no"]["N"]) in self.keys for write in writes]
        if self.once:
            self.keys -= {int(w.key.wire["member_no"]["N"]) for w, d in zip(writes, doomed, strict=True) if d}
        sent = [w for w, d in zip(writes, doomed, strict=True) if self.applied or not d]
        outcomes = iter(self._gateway.apply(sent, deadline))
        reported = []
        for fails in doomed:
            outcome = next(outcomes) if self.applied or not fails else None
            reported.append(WriteOutcome.FAILED if fails else outcome)
        return reported

    def close(self) -> None:
        self._gateway.close()


def failing_worker(doomed: set[int], once: bool = False, applied: bool = False):
    """`tools.backfill.local.local_worker`, its writes to the `doomed` items failing."""
    from chalicelib.backfill import SegmentWorker
    from chalicelib.dynamodb import DynamoDBGateway
    from chalicelib.runtime import classifier_for

    def worker(settings, client, write_concurrency):
        def new_gateway():
            return FailsFor(DynamoDBGateway(client, settings.attributes, max_concurrency=2), doomed, once, applied)

        return SegmentWorker(client, new_gateway(), classifier_for(settings).is_personal_email, new_gateway=new_gateway)

    return worker


def arguments(table, tmp_path) -> list[str]:
    return [
        "run", "--table", table.name, "--stage", "staging", "--segments", "4", "--page-size", "3", "--no-progress",
        "--checkpoint", str(tmp_path / "c.json"),
    ]  # fmt: skip


def test_failed_items_exit_non_zero_and_a_resume_counts_each_item_once(
    make_table, stage_settings, monkeypatch, capsys, tmp_path
):
    table = make_table(keys=KEYS, stream=False)
    expected = fill(table, 40)
    monkeypatch.setattr(local, "SEGMENT_ATTEMPTS", 1)
    monkeypatch.setattr(cli, "local_worker", failing_worker({7, 8}))  # both need a write
    assert cli.main(arguments(table, tmp_path)) == 1
    first = summary_numbers(capsys.readouterr().out)
    assert_adds_up(first)
    assert first["failed"] == 2 and first["scanned"] < 40

    monkeypatch.setattr(cli, "local_worker", failing_worker(set()))
    assert cli.main(arguments(table, tmp_path)) == 0
    resumed = summary_numbers(capsys.readouterr().out)
    assert_adds_up(resumed)
    assert resumed["scanned"] == 40 and resumed["failed"] == 0  # each item once over both runs
    assert resumed["already correct"] + resumed["fixed"] == 40 and resumed["fixed"] <= 40 - 14  # 14 were correct
    # (A page left failing ends the run: what its attempt wrote is found correct by the next run, not counted fixed.)
    assert flags(table) == expected


@pytest.mark.parametrize("applied", [False, True], ids=["not-applied", "applied-but-timed-out"])
def test_writes_that_fail_then_succeed_within_the_run_are_not_counted_failed(
    make_table, stage_settings, monkeypatch, capsys, tmp_path, applied
):
    table = make_table(keys=KEYS, stream=False)
    expected = fill(table, 40)
    # The segment's next attempt passes.
    monkeypatch.setattr(cli, "local_worker", failing_worker({7, 8}, once=True, applied=applied))
    assert cli.main(arguments(table, tmp_path)) == 0
    numbers = summary_numbers(capsys.readouterr().out)
    assert_adds_up(numbers)
    assert (numbers["scanned"], numbers["already correct"], numbers["failed"]) == (40, 14, 0)
    assert numbers["fixed"] == 26  # the failed attempt's writes included: found correct when the page is redone
    assert flags(table) == expected


def test_throttling_past_every_retry_is_one_line_with_the_resume_command(stage_settings, monkeypatch, capsys, tmp_path):
    """What DynamoDB can send but DynamoDB Local never does: a Scan still throttled once botocore's retries are spent
    (Stubber hands the command the error those retries end with)."""
    from botocore.stub import Stubber

    for name, value in (
        ("AWS_DEFAULT_REGION", "eu-west-1"),
        ("AWS_ACCESS_KEY_ID", "x"),
        ("AWS_SECRET_ACCESS_KEY", "x"),
    ):
        monkeypatch.setenv(name, value)
    client = local.backfill_client(4)
    stub = Stubber(client)
    stub.add_response(
        "describe_table",
        {
            "Table": {
                "TableName": "Members",
                "KeySchema": [
                    {"AttributeName": "tenant", "KeyType": "HASH"},
                    {"AttributeName": "member_no", "KeyType": "RANGE"},
                ],
                "ItemCount": 1000,
                "ProvisionedThroughput": {"ReadCapacityUnits": 5, "WriteCapacityUnits": 5},
            }
        },
    )
    stub.add_client_error(
        "scan", "ProvisionedThroughputExceededException", "The level of configured provisioned throughput for the "
        "table was exceeded.", http_status_code=400,
    )  # fmt: skip
    monkeypatch.setattr(cli, "backfill_client", lambda pool: client)
    argv = ["run", "--table", "Members", "--stage", "staging", "--segments", "1", "--no-progress"]
    argv += ["--checkpoint", str(tmp_path / "c.json")]
    with stub:
        code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    [line] = err.splitlines()
    assert line.startswith("error: Scan failed: ProvisionedThroughputExceededException")
    assert line.endswith(f"resume with `.venv/bin/python -m tools.backfill {' '.join(argv)}`")
    assert "0/1 segments done" in out
    stub.assert_no_pending_responses()
