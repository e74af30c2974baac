"""The audit of the invariant (chalicelib/audit.py, app.py's `audit_invariant`, tools/audit.py): planted drift of
every kind is found, counted by kind, fixed with the handler's writes and reported as metrics, on DynamoDB Local;
each run reads a bounded sample; the packaged stack and the stage's policies carry the function."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal

import pytest

from chalicelib.audit import (
    MAX_TOTAL_SEGMENTS,
    Auditor,
    TableShape,
    confirm,
    run_audit,
    sample_request,
    table_shape,
    total_segments,
)
from chalicelib.deadline import NO_DEADLINE
from chalicelib.dynamodb import DynamoDBGateway
from chalicelib.planner import Drift, decide, drift_of
from chalicelib.records import DEFAULT_ATTRIBUTES, ItemState, item_key
from chalicelib.runtime import classifier_for, metrics_for
from tests.projects import STAGE, copy_project, named_stages, stage_tool, write_config
from tools import policies, stage
from tools.audit import KIND_TEXT
from tools.backfill.local import stage_settings
from tools.deploy_guard import deploy_refusal

ARN = "arn:aws:dynamodb:eu-west-1:123456789012:table/Users/stream/2026-01-01T00:00:00.000"
OTHER_ARN = "arn:aws:dynamodb:eu-west-1:123456789012:table/Accounts/stream/2026-02-01T00:00:00.000"

# Key -> (the item as planted, the kind of drift it has or None, the flag §1 wants: True/False, or None for absent).
PLANTED = {
    "wrong": ({"Email": "ann@gmail.com", "IsPersonalEmail": False}, Drift.FLAG_WRONG, True),
    "missing": ({"Email": "bob@gmail.com"}, Drift.FLAG_MISSING, True),
    "number-flag": ({"Email": "cy@example.com", "IsPersonalEmail": Decimal(0)}, Drift.FLAG_NOT_BOOL, False),
    "string-flag": ({"Email": "di@gmail.com", "IsPersonalEmail": "true"}, Drift.FLAG_NOT_BOOL, True),
    "number-email": ({"Email": Decimal(5), "IsPersonalEmail": True}, Drift.FLAG_WITHOUT_EMAIL, None),
    "no-email": ({"IsPersonalEmail": False}, Drift.FLAG_WITHOUT_EMAIL, None),
    "right-personal": ({"Email": "eve@gmail.com", "IsPersonalEmail": True}, None, True),
    "right-work": ({"Email": "fay@example.com", "IsPersonalEmail": False}, None, False),
    "right-bare": ({"Name": "Gus"}, None, None),
    "right-number-email": ({"Email": Decimal(1)}, None, None),
}
DRIFT = sum(1 for _, kind, _ in PLANTED.values() if kind is not None)


def users(engine, table):
    """The table through boto3's resource (Python values in and out)."""
    import boto3

    from localdev.dynamodb_local import CREDENTIALS, REGION

    session = boto3.session.Session(region_name=REGION, **CREDENTIALS)
    return session.resource("dynamodb", endpoint_url=engine.endpoint).Table(table.name)


def plant(engine, table) -> None:
    """Write the planted items straight to the table (no handler runs: this is the drift it would have fixed)."""
    users_table = users(engine, table)
    for key, (item, _, _) in PLANTED.items():
        users_table.put_item(Item={"Id": key, **item})


def flags(engine, table) -> dict[str, object]:
    """Each planted item's flag now (None when absent), by a consistent scan."""
    items = users(engine, table).scan(ConsistentRead=True)["Items"]
    return {item["Id"]: item.get("IsPersonalEmail") for item in items}


def wanted() -> dict[str, object]:
    return {key: flag for key, (_, _, flag) in PLANTED.items()}


def emf(stdout: str) -> list[dict]:
    """The embedded-metric-format documents printed to stdout, each metric's values summed (Powertools lists them)."""
    documents = [doc for line in stdout.splitlines() if line.startswith("{") and "_aws" in (doc := json.loads(line))]
    for document in documents:
        for directive in document["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                values = document[metric["Name"]]
                document[metric["Name"]] = sum(values) if isinstance(values, list) else values
    return documents


# ---------------------------------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("state", "kind"),
    [
        (ItemState("a@gmail.com", False, True), Drift.FLAG_WRONG),
        (ItemState("a@gmail.com", None, False), Drift.FLAG_MISSING),
        (ItemState("a@gmail.com", None, True), Drift.FLAG_NOT_BOOL),
        (ItemState(None, None, True), Drift.FLAG_WITHOUT_EMAIL),
        (ItemState(None, True, True), Drift.FLAG_WITHOUT_EMAIL),
    ],
)
def test_each_kind_of_drift_is_named_from_the_planners_decision(state, kind):
    key = item_key("Users", {"Id": {"S": "x"}})
    write = decide(key, state, lambda email: email.endswith("@gmail.com"))
    assert write is not None and drift_of(state, write) is kind


def test_the_sample_puts_about_one_sample_in_each_segment_up_to_scans_limit():
    assert total_segments(0, 1000) == total_segments(1000, 1000) == 1
    assert total_segments(1001, 1000) == 2
    assert total_segments(10**12, 1000) == MAX_TOTAL_SEGMENTS
    shape = TableShape("Users", ("Id",), 5000)
    request = sample_request(shape, 1000, lambda total: total - 1)
    assert (request.segment, request.total_segments, request.page_size) == (4, 5, 1000)
    assert request.consistent_read is False  # half the read units of a consistent scan
    with pytest.raises(ValueError, match="not one of 5"):
        sample_request(shape, 1000, lambda total: total)


def test_the_key_schema_comes_from_describe_table_hash_key_first():
    description = {
        "TableName": "T",
        "KeySchema": [{"AttributeName": "b", "KeyType": "RANGE"}, {"AttributeName": "a", "KeyType": "HASH"}],
        "ItemCount": 7,
    }
    assert table_shape(description) == TableShape("T", ("a", "b"), 7)


def test_an_audit_without_a_stream_arn_says_which_setting_is_missing():
    with pytest.raises(ValueError, match="STREAM_ARN"):
        Auditor(None, None, None, "", 10, 0)  # type: ignore[arg-type]


def test_a_suspect_counts_as_drift_only_if_a_second_read_still_finds_it_wrong():
    def gmail(email: str) -> bool:
        return email.endswith("@gmail.com")

    keys = [item_key("Users", {"Id": {"S": name}}) for name in ("still", "fixed", "gone", "unread", "changed")]
    suspects = [decide(key, ItemState("a@gmail.com", None, False), gmail) for key in keys]
    current = {
        keys[0]: ItemState("a@gmail.com", None, False),  # still missing its flag
        keys[1]: ItemState("a@gmail.com", True, True),  # the handler set it meanwhile
        keys[2]: None,  # deleted meanwhile
        keys[4]: ItemState(None, False, True),  # its Email removed meanwhile: now a flag without an e-mail
    }
    confirmation = confirm(suspects, current, gmail)  # type: ignore[arg-type]
    assert (confirmation.settled, confirmation.unread) == (2, 1)
    assert [(w.key, w.action.value) for w in confirmation.writes] == [(keys[0], "SET"), (keys[4], "REMOVE")]
    assert confirmation.counts.to_write == 2
    assert confirmation.counts.drift() == {
        Drift.FLAG_WRONG: 0,
        Drift.FLAG_MISSING: 1,
        Drift.FLAG_NOT_BOOL: 0,
        Drift.FLAG_WITHOUT_EMAIL: 1,
    }


# ---------------------------------------------------------------------------------------- the scheduled function


@pytest.fixture
def audit_client(engine, tmp_path):
    """The app under Chalice's test client for a project whose dev stage is bound to `table` (faithful timeouts)."""
    from localdev.invoker import _StageTimeoutClient

    def make(table, **variables: str):
        config = named_stages("dev")
        stage_variables = config["stages"]["dev"]["environment_variables"]
        stage_variables.update(STREAM_ARN=table.stream_arn, AUDIT_CONFIRM_SECONDS="0", **variables)
        project = write_config(tmp_path / f"project-{table.name}", config, policies=False)
        from app import app

        return _StageTimeoutClient(app, stage_name="dev", project_dir=str(project))

    return make


def scheduled_event(client) -> dict:
    return client.events.generate_cw_event(
        source="aws.events", detail_type="Scheduled Event", detail={}, resources=["arn:aws:events:rule/audit"]
    )


def test_the_scheduled_audit_finds_every_kind_of_drift_fixes_it_and_says_so(
    engine, make_table, audit_client, log_sink, capsys
):
    table = make_table()
    plant(engine, table)
    client = audit_client(table)
    capsys.readouterr()

    first = client.lambda_.invoke("audit_invariant", scheduled_event(client)).payload
    assert (first["checked"], first["drift"], first["fixed"]) == (len(PLANTED), DRIFT, DRIFT)
    for kind in Drift:
        assert first[kind.value] == sum(1 for _, k, _ in PLANTED.values() if k is kind), kind
    assert flags(engine, table) == wanted()

    [metrics] = emf(capsys.readouterr().out)
    assert (metrics["AuditChecked"], metrics["AuditDrift"], metrics["AuditFixed"]) == (len(PLANTED), DRIFT, DRIFT)
    assert metrics["AuditFailed"] == 0
    assert (metrics["service"], metrics["stage"]) == ("email-checker", "dev")
    [directive] = metrics["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "EmailChecker" and ["service", "stage"] in [
        sorted(d) for d in directive["Dimensions"]
    ]
    [line] = [r for r in log_sink.records() if r["message"] == "audit"]
    assert line["level"] == "WARNING" and line["drift"] == DRIFT and line["stage"] == "dev"
    # Counts and segment numbers only: no key and no e-mail of the planted items reaches the log.
    text = log_sink.getvalue()
    assert not [key for key in PLANTED if f'"{key}"' in text] and "@" not in text

    second = client.lambda_.invoke("audit_invariant", scheduled_event(client)).payload
    assert (second["checked"], second["drift"], second["fixed"]) == (len(PLANTED), 0, 0)
    assert emf(capsys.readouterr().out)[0]["AuditDrift"] == 0


def test_a_run_that_cannot_read_its_table_counts_a_failure_and_raises(engine, audit_client, log_sink, capsys):
    from types import SimpleNamespace

    gone = SimpleNamespace(
        name="Gone", stream_arn="arn:aws:dynamodb:ddblocal:000000000000:table/Gone/stream/2026-01-01"
    )
    client = audit_client(gone)
    capsys.readouterr()
    with pytest.raises(Exception, match="ResourceNotFound"):
        client.lambda_.invoke("audit_invariant", scheduled_event(client))
    [metrics] = emf(capsys.readouterr().out)
    assert metrics["AuditFailed"] == 1
    [line] = [r for r in log_sink.records() if r["message"] == "audit failed"]
    assert (line["code"], line["stage"]) == ("ResourceNotFoundException", "dev")


# ------------------------------------------------------------------------------------------ the bounded sample


class Scans:
    """The Scan requests a client sends and the items each one read (ScannedCount)."""

    def __init__(self, client) -> None:
        self.requests: list[dict] = []
        self.scanned: list[int] = []
        client.meta.events.register("provide-client-params.dynamodb.Scan", self._request)
        client.meta.events.register("after-call.dynamodb.Scan", self._response)

    def _request(self, params, **_):
        self.requests.append(dict(params))

    def _response(self, parsed, **_):
        self.scanned.append(parsed["ScannedCount"])


def test_each_run_reads_one_page_of_at_most_the_sample_from_a_random_segment(project, engine, make_table):
    table = make_table()
    with users(engine, table).batch_writer() as batch:
        for i in range(60):
            batch.put_item(Item={"Id": f"user-{i}", "Email": f"u{i}@gmail.com", "Pad": "x" * 300})
    client = engine.client()
    scans = Scans(client)
    settings = stage_settings(STAGE, project)
    classify = classifier_for(settings).is_personal_email
    picks = []

    def pick(total: int) -> int:
        picks.append(total)
        return len(picks) % total

    auditor = Auditor(
        client,
        DynamoDBGateway(client, DEFAULT_ATTRIBUTES, max_concurrency=4),
        classify,
        table.stream_arn,
        10,
        0,
        pick=pick,
    )
    reports = [auditor.run(NO_DEADLINE) for _ in range(6)]

    assert len(scans.requests) == 6 and all(n <= 10 for n in scans.scanned)
    assert all(report.checked <= 10 for report in reports)
    expected_total = total_segments(auditor.shape().item_count, 10)
    assert picks == [expected_total] * 6 and expected_total > 1
    for request, report in zip(scans.requests, reports, strict=True):
        assert request["Limit"] == 10 and request["ConsistentRead"] is False
        assert request["TotalSegments"] == expected_total and request["Segment"] == report.segment
        assert set(request["ExpressionAttributeNames"].values()) == {"Id", "Email", "IsPersonalEmail"}
    # Every missing flag it read, it fixed; what it did not read, it left for a later run.
    assert sum(r.fixed for r in reports) == sum(r.drift for r in reports) == sum(r.checked for r in reports) > 0
    flagged = sum(1 for flag in flags(engine, table).values() if flag is not None)
    assert flagged == sum(r.fixed for r in reports)


def test_an_item_the_stream_handler_fixes_during_the_grace_period_is_not_drift(project, engine, make_table):
    table = make_table()
    users_table = users(engine, table)
    users_table.put_item(Item={"Id": "in-flight", "Email": "ann@gmail.com"})  # its record not handled yet
    users_table.put_item(Item={"Id": "stuck", "Email": "bob@gmail.com"})  # a record the handler never saw
    client = engine.client()
    statements = []
    client.meta.events.register(
        "provide-client-params.dynamodb.BatchExecuteStatement",
        lambda params, **_: statements.extend(params["Statements"]),
    )
    waits = []

    def grace(seconds: float) -> None:
        waits.append(seconds)
        users_table.update_item(  # the stream handler's write, during the audit's grace period
            Key={"Id": "in-flight"}, UpdateExpression="SET IsPersonalEmail = :t", ExpressionAttributeValues={":t": True}
        )

    classify = classifier_for(stage_settings(STAGE, project)).is_personal_email
    auditor = Auditor(
        client,
        DynamoDBGateway(client, DEFAULT_ATTRIBUTES, max_concurrency=4),
        classify,
        table.stream_arn,
        10,
        20,
        sleep=grace,
    )
    report = auditor.run(NO_DEADLINE)
    assert waits == [20]
    assert (report.checked, report.settled, report.drift, report.fixed) == (2, 1, 1, 1)
    assert report.counts.drift()[Drift.FLAG_MISSING] == 1 and report.counts.already_correct == 1
    assert len(statements) == 1  # the stuck item's write only
    assert flags(engine, table) == {"in-flight": True, "stuck": True}


def test_run_audit_logs_one_line_of_counts(project, engine, make_table, log_sink, capsys):
    from aws_lambda_powertools import Logger

    table = make_table()
    plant(engine, table)
    client = engine.client()
    settings = stage_settings(STAGE, project)
    classify = classifier_for(settings).is_personal_email
    auditor = Auditor(
        client,
        DynamoDBGateway(client, DEFAULT_ATTRIBUTES, max_concurrency=4),
        classify,
        table.stream_arn,
        3,
        0,
        pick=lambda total: 0,
    )
    report = run_audit(auditor, 60_000, STAGE, Logger(service="email-checker"), metrics_for(settings))
    assert report.checked <= 3
    [line] = [r for r in log_sink.records() if r["message"] == "audit"]
    assert line["checked"] == report.checked and line["total_segments"] == total_segments(len(PLANTED), 3)


# ----------------------------------------------------------------------------------------------------- the CLI


def audit_cli(project, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tools.audit", "--stage", STAGE, "--no-progress", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_cli_prints_the_drift_by_kind_and_fixes_it_with_fix(project, engine, make_table):
    table = make_table()
    plant(engine, table)
    found = audit_cli(project, "--table", table.name, "--segments", "3")
    assert found.returncode == 1, found.stderr
    lines = found.stdout.splitlines()
    assert f"  checked          {len(PLANTED)}" in lines and f"  drift            {DRIFT}" in lines
    for kind in Drift:
        number = sum(1 for _, k, _ in PLANTED.values() if k is kind)
        assert f"    {number:<8} {KIND_TEXT[kind]}" in lines, found.stdout
    assert flags(engine, table) != wanted()  # without --fix it writes nothing

    fixed = audit_cli(project, "--table", table.name, "--segments", "3", "--fix")
    assert fixed.returncode == 0, fixed.stderr
    assert f"  fixed            {DRIFT}" in fixed.stdout.splitlines()
    assert flags(engine, table) == wanted()

    clean = audit_cli(project, "--table", table.name)
    assert clean.returncode == 0 and "  drift            0" in clean.stdout.splitlines()


def test_the_cli_names_a_missing_table_in_one_line(project, engine):
    done = audit_cli(project, "--table", "NoSuchTable")
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr


# ------------------------------------------------------------------------------------- IAM and the packaged stack


def test_the_audit_policy_describes_scans_and_fixes_the_table_only():
    policy = policies.audit_policy_document("email-checker", "prod", ARN)
    by_sid = {statement["Sid"]: statement for statement in policy["Statement"]}
    assert set(by_sid) == {"AuditTheTable", "WriteLogs"}
    assert by_sid["AuditTheTable"]["Action"] == [
        "dynamodb:DescribeTable",
        "dynamodb:Scan",
        "dynamodb:BatchGetItem",
        stage.TABLE_WRITE_ACTION,
    ]
    assert by_sid["AuditTheTable"]["Resource"] == "arn:aws:dynamodb:eu-west-1:123456789012:table/Users"
    assert all("email-checker-prod-audit_invariant" in r for r in by_sid["WriteLogs"]["Resource"])


def test_every_stage_has_its_audit_policy_file_generated_from_its_stream_arn(checked_project):
    config = json.loads((checked_project / ".chalice" / "config.json").read_text())
    for name in config["stages"]:
        on_disk = json.loads((checked_project / ".chalice" / policies.audit_policy_file(config, name)).read_text())
        stream_arn = policies.stage_stream_arn(config, name)
        assert on_disk == policies.audit_policy_document(config["app_name"], name, stream_arn), "run `make policies`"


def test_a_stale_audit_policy_alone_is_refused(tmp_path):
    config = named_stages("prod")
    stage.stage_variables(config, "prod")["STREAM_ARN"] = ARN
    write_config(tmp_path, config)
    assert deploy_refusal(tmp_path, "prod", ARN) is None
    stale = policies.audit_policy_document("email-checker", "prod", OTHER_ARN)
    stage.write_json(tmp_path / ".chalice" / "policy-prod-audit.json", stale)
    message = deploy_refusal(tmp_path, "prod", ARN)
    assert message is not None and ".chalice/policy-prod-audit.json" in message and "policy-prod.json" not in message


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """prod packaged with `--create-table`, its audit every 5 minutes (a stage setting)."""
    config = named_stages("prod")
    config["stages"]["prod"]["environment_variables"]["AUDIT_RATE_MINUTES"] = "5"
    project = copy_project(tmp_path_factory.mktemp("audit") / "project", config)
    out = project.parent / "out"
    result = stage_tool(project, "package", "--stage", "prod", "--create-table", str(out))
    assert result.returncode == 0, result.stderr
    return json.loads((out / "sam.json").read_text())


def test_the_packaged_stack_runs_the_audit_on_its_schedule_with_its_own_role(packaged):
    resources = packaged["Resources"]
    function = resources["AuditInvariant"]["Properties"]
    assert function["Handler"] == "app.audit_invariant"
    assert function["Events"] == {
        "AuditInvariantEvent": {"Type": "Schedule", "Properties": {"Schedule": "rate(5 minutes)"}}
    }
    assert function["Role"] == {"Fn::GetAtt": ["AuditInvariantRole", "Arn"]}
    assert function["LoggingConfig"] == {"LogGroup": {"Ref": "AuditInvariantLogGroup"}}
    variables = function["Environment"]["Variables"]
    assert variables["STAGE"] == {"Ref": "Stage"}  # the dimension the AuditDrift alarm watches
    assert variables["STREAM_ARN"] == {
        "Fn::If": ["CreateUsersTable", {"Fn::GetAtt": ["UsersTable", "StreamArn"]}, {"Ref": "UsersTableStreamArn"}]
    }
    [policy] = resources["AuditInvariantRole"]["Properties"]["Policies"]
    statements = {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}
    assert statements["AuditTheTable"]["Action"] == [
        "dynamodb:DescribeTable",
        "dynamodb:Scan",
        "dynamodb:BatchGetItem",
        "dynamodb:PartiQLUpdate",
    ]
    assert statements["AuditTheTable"]["Resource"]["Fn::If"][1] == {"Fn::GetAtt": ["UsersTable", "Arn"]}
    assert statements["WriteLogs"]["Resource"] == {"Fn::GetAtt": ["AuditInvariantLogGroup", "Arn"]}
    alarm = resources["AuditDriftAlarm"]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Threshold"]) == ("EmailChecker", "AuditDrift", 1)
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert [d["Name"] for d in alarm["Dimensions"]] == ["service", "stage"]


def test_the_audit_settings_have_defaults_and_are_validated():
    from chalicelib.config import ConfigError, Settings

    defaults = Settings.from_environ({})
    assert (defaults.audit_rate_minutes, defaults.audit_sample_items) == (15, 1000)
    with pytest.raises(ConfigError, match="AUDIT_RATE_MINUTES must be from 1 to 1440"):
        Settings.from_environ({"AUDIT_RATE_MINUTES": "0"})
    with pytest.raises(ConfigError, match="AUDIT_SAMPLE_ITEMS must be a whole number"):
        Settings.from_environ({"AUDIT_SAMPLE_ITEMS": "many"})
