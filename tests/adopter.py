"""The adopter of issue 21 as tests build their project (tests/projects.py's helpers, never the committed config):
stages of their own, the attribute names `email` and `is_personal`, a `Members` table keyed `tenant` (S) +
`member_no` (N)."""

from __future__ import annotations

from pathlib import Path

from tests.projects import ADOPTER_EMAIL, ADOPTER_FLAG, adopter_stages, copy_project, fixture_config

EMAIL, FLAG = ADOPTER_EMAIL, ADOPTER_FLAG
EU_STREAM = "arn:aws:dynamodb:eu-west-1:123456789012:table/Members/stream/2026-01-01T00:00:00.000"


def adopter_project(target: Path, stages: dict[str, str], with_localdev: bool = False) -> Path:
    """A project copy whose config holds only `stages` (name: STREAM_ARN, "" for unbound) with the adopter's names,
    policy files generated; with `with_localdev`, what the local commands need too."""
    return copy_project(target, fixture_config(adopter_stages(stages)), local=with_localdev)
