"""The region comes from the stage's stream (issue 21): `tools.stage package` and `policies` need none in the
environment, and `chalice deploy` to another region than the stream's is refused in one line before any AWS call.
On the adopter's own project (tests/adopter.py): stages prod-eu (eu-west-1) and staging, never the committed config."""

from __future__ import annotations

import json
import socket

import pytest

from tests.adopter import EU_STREAM, adopter_project
from tests.projects import chalice, stage_tool, without_aws
from tools.deploy_guard import chalice_command, region_refusal


def closed_port_endpoint() -> str:
    """An endpoint nothing listens on: any AWS call through it fails with a connection error, never silently."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return adopter_project(tmp_path_factory.mktemp("adopter") / "project", {"prod-eu": EU_STREAM, "staging": ""})


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["chalice", "deploy", "--stage", "prod-eu"], ("deploy", None)),
        (["chalice", "--project-dir", "deploy", "deploy", "--profile", "eu"], ("deploy", "eu")),
        (["chalice", "--debug", "deploy", "--profile=ops", "--stage", "s"], ("deploy", "ops")),
        (["chalice", "package", "--stage", "s", "out"], ("package", None)),
        (["chalice"], ("", None)),
    ],
)
def test_the_chalice_command_and_its_profile_are_read_from_argv(argv, expected):
    assert chalice_command(argv) == expected


def test_deploy_refuses_another_region_than_the_streams_before_any_aws_call(project, tmp_path):
    """The deploy goes through an endpoint nothing answers on: any AWS call would end in a connection error."""
    environment = without_aws(
        tmp_path, AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=closed_port_endpoint(),
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
    )  # fmt: skip
    done = chalice(project, "deploy", "--stage", "prod-eu", env=environment)
    output = (done.stdout + done.stderr).strip()
    assert done.returncode != 0
    assert output.count("\n") == 0, output  # one line
    assert "us-east-1" in output and "eu-west-1" in output and "AWS_DEFAULT_REGION=eu-west-1 chalice deploy" in output
    assert "Creating deployment package" not in output and not (project / ".chalice" / "deployed").exists()


def test_deploy_with_no_region_names_the_streams(project, tmp_path):
    done = chalice(project, "deploy", "--stage", "prod-eu", env=without_aws(tmp_path))
    assert done.returncode != 0
    assert "no AWS region" in done.stderr and "AWS_DEFAULT_REGION=eu-west-1" in done.stderr, done.stderr


def test_the_streams_own_region_passes_and_other_commands_need_none(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert region_refusal("prod-eu", EU_STREAM, ["chalice", "deploy", "--stage", "prod-eu"], {}) is None
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert "ap-south-1" in region_refusal("prod-eu", EU_STREAM, ["chalice", "deploy"], {"AWS_DEFAULT_REGION": "x"})
    assert region_refusal("prod-eu", EU_STREAM, ["chalice", "package", "out"], {}) is None


def test_a_profiles_region_counts_as_chalice_reads_it(monkeypatch, tmp_path):
    config = tmp_path / "config"
    config.write_text("[profile eu]\nregion = eu-west-1\n[default]\nregion = us-east-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    assert region_refusal("prod-eu", EU_STREAM, ["chalice", "deploy", "--profile", "eu"], {}) is None
    refusal = region_refusal("prod-eu", EU_STREAM, ["chalice", "deploy"], {})
    assert "us-east-1 (profile default's region)" in refusal


def test_package_and_policies_need_no_region(project, tmp_path):
    environment = without_aws(tmp_path)
    assert stage_tool(project, "policies", env=environment).returncode == 0
    bound = stage_tool(project, "package", "--stage", "prod-eu", str(tmp_path / "eu"), env=environment)
    assert bound.returncode == 0, bound.stderr
    unbound = stage_tool(
        project, "package", "--stage", "staging", "--create-table", str(tmp_path / "new"), env=environment
    )
    assert unbound.returncode == 0, unbound.stderr
    template = json.loads((tmp_path / "eu" / "sam.json").read_text())
    assert template["Parameters"]["UsersTableStreamArn"]["Default"] == EU_STREAM


def test_a_bad_hand_edited_arn_names_its_stage(project, tmp_path):
    config_path = project / ".chalice" / "config.json"
    saved = config_path.read_text()
    config = json.loads(saved)
    config["stages"]["staging"]["environment_variables"]["STREAM_ARN"] = "arn:aws:dynamodb:eu-west-1:123:table/M"
    config_path.write_text(json.dumps(config))
    try:
        done = stage_tool(project, "policies", env=without_aws(tmp_path))
    finally:
        config_path.write_text(saved)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: stage staging's STREAM_ARN") and "bind --stage staging" in done.stderr
