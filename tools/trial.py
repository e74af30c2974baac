"""The `chalice deploy` path end to end on moto's AWS emulator, without AWS: a table with the key schema you choose,
then every command docs/deploy.md runs, each printed with its output.

python -m tools.trial --stage staging --table Accounts --key tenant:S --key member_no:N

It works on a copy of the project in build/trial/ (your .chalice/config.json, policy files and .chalice/deployed/ are
never touched; a stage the config lacks is added to the copy with `add-stage`), starts moto on a free loopback port
with dummy credentials (no AWS profile or endpoint of yours is read), and stops moto and any running step on every
exit, Ctrl-C and SIGTERM included. moto runs no Lambda code: the trial checks what is deployed, not the handler.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from subprocess import STDOUT
from typing import Any

from localdev.dynamodb_local import key_schema
from tools.project import ROOT, chosen_stage, copy_project, load_config

TRIAL_DIR = ROOT / "build" / "trial"
VIEW_TYPES = ("NEW_AND_OLD_IMAGES", "NEW_IMAGE", "OLD_IMAGE", "KEYS_ONLY")


class StepFailed(RuntimeError):
    """A step of the trial exited non-zero; its output was printed."""


def forget_aws_account(scratch: Path) -> None:
    """Drop every AWS_ variable of the user's from this process (and so from moto and the steps): no profile, keys,
    region or endpoint of theirs is read, and no credentials or config file either."""
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        del os.environ[name]
    missing = str(scratch / "no-aws-config")
    os.environ.update(AWS_CONFIG_FILE=missing, AWS_SHARED_CREDENTIALS_FILE=missing)


def steps(stage: str, table: str, added: bool) -> list[tuple[str, list[str]]]:
    """(what a user types, the arguments after the program) of each step, in order."""
    tool = [".venv/bin/python", "-m", "tools.stage"]
    chalice = [".venv/bin/chalice"]
    listed = [([*tool, "add-stage", "--stage", stage], "")] if added else []
    listed += [
        ([*tool, "enable-stream", "--stage", stage, "--table-name", table], "the stream on, bind, the queues"),
        ([*chalice, "deploy", "--stage", stage], ""),
        ([*tool, "apply-failure-handling", "--stage", stage], ""),
        ([*tool, "status", "--stage", stage], ""),
        ([*chalice, "delete", "--stage", stage], ""),
        ([*tool, "cleanup", "--stage", stage, "--yes"], ""),
    ]
    return [(" ".join(words) + (f"   # {note}" if note else ""), words) for words, note in listed]


def run_step(shown: str, words: list[str], project: Path, environment: dict[str, str]) -> None:
    """Run one step in the project copy, print it and its output indented; StepFailed if it exits non-zero."""
    from localdev import lifecycle

    print(f"$ {shown}", flush=True)
    program = [sys.executable] if words[0].endswith("python") else [str(Path(sys.executable).parent / "chalice")]
    arguments = words[1:] if program[0] == sys.executable else ["--project-dir", str(project), *words[1:]]
    with tempfile.TemporaryFile() as output:
        # Recorded like a server: a signal stops it with moto, and it is never left running against a dead emulator.
        command = [*program, *arguments]
        process = lifecycle.spawn(command, "trial step", cwd=project, env=environment, stdout=output, stderr=STDOUT)
        process.wait()
        lifecycle.forget(process)
        output.seek(0)
        text = output.read().decode(errors="replace")
    for line in text.rstrip().splitlines():
        print(f"    {line}")
    if process.returncode != 0:
        raise StepFailed(f"`{shown.split('   #')[0]}` exited with {process.returncode} (the copy is in {project})")


def drop_test_events(emulator: Any, app_name: str, stage: str) -> int:
    """Do the reconciler's part that moto can't run (it runs no Lambda): delete S3's `s3:TestEvent` messages, which
    setting the bucket's notification sends to the failure queue; how many were deleted."""
    from chalicelib.config import failure_queue_name

    sqs = emulator.client("sqs")
    url = sqs.get_queue_url(QueueName=failure_queue_name(app_name, stage))["QueueUrl"]
    dropped = 0
    for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        if json.loads(message["Body"]).get("Event") == "s3:TestEvent":
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            dropped += 1
    return dropped


def leftovers(emulator: Any, app_name: str, stage: str) -> list[str]:
    """What the stage still has on the emulator after `chalice delete` and `cleanup`, as `<count> <kind>` parts."""
    prefix = f"{app_name}-{stage}-"
    lambda_client = emulator.client("lambda")
    found = {
        "function(s)": [f for f in lambda_client.list_functions()["Functions"] if f["FunctionName"].startswith(prefix)],
        "event source mapping(s)": lambda_client.list_event_source_mappings()["EventSourceMappings"],
        "queue(s)": [q for q in emulator.client("sqs").list_queues().get("QueueUrls", []) if prefix in q],
        "alarm(s)": emulator.client("cloudwatch").describe_alarms(AlarmNamePrefix=prefix)["MetricAlarms"],
        "dashboard(s)": emulator.client("cloudwatch").list_dashboards(DashboardNamePrefix=prefix[:-1])[
            "DashboardEntries"
        ],
        "role(s)": [r for r in emulator.client("iam").list_roles()["Roles"] if r["RoleName"].startswith(prefix)],
        "bucket(s)": [b for b in emulator.client("s3").list_buckets()["Buckets"] if prefix[:-1] in b["Name"]],
    }
    return [f"{len(items)} {kind}" for kind, items in found.items() if items]


def trial(stage: str, table: str, keys: list[str], view_type: str | None, work_dir: Path = TRIAL_DIR) -> int:
    """Run the trial in a fresh copy of the project under `work_dir`; 0 when every step passed."""
    from localdev.moto_server import MotoServer

    definitions, schema = key_schema(keys)
    shutil.rmtree(work_dir / "project", ignore_errors=True)
    project = copy_project(work_dir / "project")
    added = stage not in load_config()["stages"]
    print(f"project copy: {project} (your .chalice/ is not touched)")
    forget_aws_account(work_dir)
    with MotoServer() as emulator:
        environment = {**os.environ, **emulator.environment()}
        print(f"moto: {emulator.endpoint} (dummy credentials, region {environment['AWS_DEFAULT_REGION']})")
        stream = {"StreamSpecification": {"StreamEnabled": True, "StreamViewType": view_type}} if view_type else {}
        emulator.client("dynamodb").create_table(
            TableName=table, AttributeDefinitions=definitions, KeySchema=schema, BillingMode="PAY_PER_REQUEST", **stream
        )
        pairs = zip(schema, definitions, strict=True)
        keys_shown = ", ".join(f"{k['AttributeName']} ({k['KeyType']}, {d['AttributeType']})" for k, d in pairs)
        print(f"table {table} on moto: key {keys_shown}" + (f", stream {view_type}" if view_type else ", no stream"))
        app_name = load_config()["app_name"]
        for shown, words in steps(stage, table, added):
            if "status" in words:
                dropped = drop_test_events(emulator, app_name, stage)
                print(f"(moto runs no Lambda: {dropped} s3:TestEvent message(s) deleted, as the reconciler would)")
            run_step(shown, words, project, environment)
        left = leftovers(emulator, app_name, stage)
    if left:
        raise StepFailed(f"left on moto after chalice delete and cleanup: {', '.join(left)}")
    print(f"trial: OK, stage {stage} deployed, checked and deleted on moto; moto stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--stage", help="the stage to deploy (added to the copy if new; default: the config's only stage)"
    )
    parser.add_argument("--table", default="Users", help="the table to create on moto (default Users)")
    parser.add_argument("--key", action="append", help="NAME:TYPE (S, N or B), hash then range (default Id:S)")
    parser.add_argument("--stream-view-type", choices=VIEW_TYPES, help="create the table with its stream on")
    parser.add_argument("--work-dir", type=Path, default=TRIAL_DIR, help="where the project copy goes (build/trial)")
    args = parser.parse_args(argv)
    from localdev import lifecycle

    return lifecycle.run_main(
        lambda: trial(
            chosen_stage(args.stage), args.table, args.key or ["Id:S"], args.stream_view_type, args.work_dir.resolve()
        ),
        known=(ValueError, StepFailed),
    )


if __name__ == "__main__":
    sys.exit(main())
