"""docs/adopting.md, run as the adopter of issue 21 runs it: every command of the page verbatim and in its order, in
a project whose only stage (not dev, not prod) names its attributes `email` and `is_personal`, for a `Members` table
keyed `tenant` (S) + `member_no` (N). The AWS commands run against moto (the table made there first, its stream off),
`make run`'s line against DynamoDB Local, until its first write; the trial starts its own moto."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess

import boto3

from tests.adopter import EMAIL, EU_STREAM, FLAG, adopter_project
from tests.documented import run_verbatim, shell_blocks
from tests.projects import ROOT, port_8000_alone, project_config, without_aws
from tools.trial import drop_test_events

PAGE = ROOT / "docs" / "adopting.md"
STAGE = "staging"  # the page's


def run_page_command(command: str, project, environment: dict[str, str]) -> str:
    """Run one of the page's commands as a user would; its output, after asserting it succeeded without a traceback."""
    done = run_verbatim(project, command, timeout=300, env=environment)
    assert done.returncode == 0 and "Traceback" not in done.stdout, f"`{command}`:\n{done.stdout[-3000:]}"
    return done.stdout


def follow_until_the_first_write(command: str, project, environment: dict[str, str]) -> str:
    """Start the page's `make run` line, write the item of the put-item line it prints, wait for the batch that
    writes its flag, stop it with Ctrl-C (SIGINT); all it printed."""
    process = subprocess.Popen(
        ["bash", "-c", command], cwd=project, env={**environment, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        while not any("Ctrl-C to stop" in line for line in lines):
            line = process.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        [put] = [line.strip() for line in lines if "aws dynamodb put-item" in line]
        words = shlex.split(put)
        endpoint = words[words.index("--endpoint-url") + 1]
        client = boto3.client(
            "dynamodb", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="local",
            aws_secret_access_key="local",
        )  # fmt: skip
        client.put_item(TableName=words[words.index("--table-name") + 1], Item=json.loads(words[-1]))
        while not any("write(s)" in line for line in lines):
            line = process.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    assert process.returncode == 0, "".join(lines) + rest
    return "".join(lines) + rest


def test_the_adopting_page_runs_verbatim_on_a_two_part_key_and_names_of_its_own(emulator, tmp_path):
    project = adopter_project(tmp_path / "project", {"prod-eu": EU_STREAM}, with_localdev=True)
    emulator.client("dynamodb").create_table(
        TableName="Members",
        AttributeDefinitions=[
            {"AttributeName": "tenant", "AttributeType": "S"},
            {"AttributeName": "member_no", "AttributeType": "N"},
        ],
        KeySchema=[{"AttributeName": "tenant", "KeyType": "HASH"}, {"AttributeName": "member_no", "KeyType": "RANGE"}],
        BillingMode="PAY_PER_REQUEST",
    )
    on_moto = without_aws(tmp_path, **emulator.environment())
    commands = [command for _, block in shell_blocks(PAGE) for command in block]
    outputs = {}
    for command in commands:
        if command.startswith(".venv/bin/python -m localdev.run"):
            with port_8000_alone():  # its `make run` prefers 8000
                outputs[command] = follow_until_the_first_write(command, project, without_aws(tmp_path))
            continue
        if re.search(r"tools\.stage status\b", command):
            drop_test_events(emulator, "email-checker", STAGE)  # moto runs no reconciler (see tools/trial.py)
        outputs[command] = run_page_command(command, project, on_moto)
    said = "\n".join(outputs.values())

    # What the page promised, with the adopter's names and key at each step.
    stage = project_config(project)["stages"][STAGE]["environment_variables"]
    assert (stage["EMAIL_ATTRIBUTE"], stage["FLAG_ATTRIBUTE"]) == (EMAIL, FLAG)  # add-stage carried them over
    assert stage["STREAM_ARN"].startswith("arn:aws:dynamodb:us-east-1:123456789012:table/Members/stream/")  # on moto
    assert re.search(
        r"^created table Members: key tenant \(S\) \+ member_no \(N\), stream NEW_AND_OLD_IMAGES; "
        rf"stage {STAGE}'s attributes: e-mail 'email', flag 'is_personal'$",
        said,
        re.M,
    ), said
    assert re.search(r"\b1 write\(s\)", said)
    assert f"trial: OK, stage {STAGE} deployed, checked and deleted on moto" in said
    assert re.search(r"^table +Members: key tenant, member_no; e-mail in email, flag in is_personal$", said, re.M)
    assert re.search(r"^verdict +ok$", said, re.M), said
    assert (project / "out" / "sam.json").exists()
    assert len(commands) >= 12
