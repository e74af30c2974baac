"""`chalice package` with the merge template (deploy/merge-template.json), for a stage."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from chalicelib.config import UNBOUND_STREAM_ARN, Settings
from tools.arns import split_stream_arn, stage_stream_arn
from tools.failure_bucket import retention_days
from tools.merge_template import (
    CREATE,
    EVENT_SOURCE,
    FUNCTION,
    RETENTION_PARAMETER,
    STAGE_PARAMETER,
    STREAM_PARAMETER,
    expected_merge_template,
)
from tools.policies import write_policies
from tools.project import CHALICE_DIR, ROOT, load_config, stage_variables, write_json

PACKAGED_PATHS = ("app.py", "chalicelib", "vendor", "requirements.txt")
ANY_REGION = "us-east-1"
"""What `chalice package` is given when the stage names no region and none is set: it calls no AWS API, and the
template is the same for every region of a partition (the stack's own region goes in as AWS::Region)."""


def package_environment(stream_arn: str) -> dict[str, str]:
    """This environment, with the region `chalice package` asks for although it calls no AWS API (it picks the
    partition's service principals with it): the stage's stream's, else the one set, else any of the `aws` partition."""
    region = split_stream_arn(stream_arn)[1] if stream_arn else os.environ.get("AWS_DEFAULT_REGION") or ANY_REGION
    return {**os.environ, "AWS_DEFAULT_REGION": region}


def package(stage: str, out: Path, create_table: bool) -> Path:
    """`chalice package` with deploy/merge-template.json, the stack parameter defaulting to this stage's choice.

    With `create_table` the stack makes the table, so the stage needs no STREAM_ARN: Chalice packages a scratch copy
    of the project whose stage names the unbound placeholder, which the merge template replaces everywhere.
    """
    config = load_config()
    variables = stage_variables(config, stage)
    stream_arn = variables.get("STREAM_ARN", "") and stage_stream_arn(config, stage)  # a bad one named with its stage
    if not create_table and not stream_arn:
        raise ValueError(f"stage {stage!r} has no STREAM_ARN: run enable-stream or bind first, or pass --create-table")
    merge_template = expected_merge_template()
    merge_template["Parameters"][STREAM_PARAMETER]["Default"] = CREATE if create_table else stream_arn
    merge_template["Parameters"][STAGE_PARAMETER]["Default"] = stage
    merge_template["Parameters"][RETENTION_PARAMETER]["Default"] = retention_days(variables)
    event = merge_template["Resources"][FUNCTION]["Properties"]["Events"][EVENT_SOURCE]["Properties"]
    event["ParallelizationFactor"] = Settings.from_environ(variables).parallelization_factor
    with tempfile.TemporaryDirectory() as scratch:
        project = Path(scratch)
        for name in PACKAGED_PATHS:
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
            elif (ROOT / name).exists():
                shutil.copy(ROOT / name, project / name)
        # Not packaged: app.py imports tools.deploy_guard when the Chalice CLI loads it.
        shutil.copytree(ROOT / "tools", project / "tools", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(CHALICE_DIR, project / ".chalice", ignore=shutil.ignore_patterns("deployed"))
        if create_table:
            stage_variables(config, stage)["STREAM_ARN"] = UNBOUND_STREAM_ARN
            write_json(project / ".chalice" / "config.json", config)
            # The merge template replaces the roles' policies; the files only have to agree with the placeholder.
            write_policies(config, project / ".chalice")
        write_json(project / "merge-template.json", merge_template)
        chalice = Path(sys.executable).parent / "chalice"
        command = [str(chalice), "--project-dir", str(project), "package", "--stage", stage]
        command += ["--merge-template", str(project / "merge-template.json"), str(out.resolve())]
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, env=package_environment(stream_arn)
        )
        if result.returncode != 0:
            raise ValueError(f"chalice package failed:\n{result.stdout}{result.stderr}")
    template = out / "sam.json"
    if UNBOUND_STREAM_ARN in template.read_text():
        raise ValueError(f"{template} still names the unbound placeholder stream: the merge template missed a place")
    return template
