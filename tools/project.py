"""The project's files: where it is, its Chalice config, its stages and the environment a function of a stage sees."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHALICE_DIR = ROOT / ".chalice"
CONFIG = CHALICE_DIR / "config.json"
DEPLOYED_DIR = CHALICE_DIR / "deployed"
# The app's functions, as app.py names them.
HANDLER = "sync_is_personal_email"
RECONCILER = "reconcile_discarded_batches"
SWEEP = "sweep_table"
# What Chalice and the stage tools need in a scratch copy of the project (tests, the moto trial).
PROJECT_PATHS = ("app.py", "chalicelib", "requirements.txt", ".chalice", "tools", "deploy", "schema")


class UnknownStage(ValueError):
    """A stage that .chalice/config.json does not define (Chalice itself accepts any name, with no settings)."""


def load_config() -> dict[str, Any]:
    """The Chalice project config."""
    return json.loads(CONFIG.read_text())


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write JSON the way the repo keeps it: two-space indent, trailing newline."""
    path.write_text(json.dumps(document, indent=2) + "\n")


def stage_names(project_dir: Path = ROOT) -> list[str]:
    """The stages defined in the project's .chalice/config.json, in its order."""
    return list(json.loads((project_dir / ".chalice" / "config.json").read_text()).get("stages", {}))


def require_stage(stage: str, names: Iterable[str] | None = None) -> str:
    """`stage` if it is one of `names` (default: this project's stages); UnknownStage listing them otherwise."""
    names = list(names) if names is not None else stage_names()
    if stage not in names:
        raise UnknownStage(
            f"no stage {stage!r} in .chalice/config.json (stages: {', '.join(names) or 'none'}; "
            f"`python -m tools.stage add-stage --stage {stage}` adds it)"
        )
    return stage


def chosen_stage(given: str | None, project_dir: Path = ROOT) -> str:
    """`given` if a stage was named, else the config's only stage; UnknownStage, in one line naming the stages, when
    there are several (no stage is assumed to be called anything) or none."""
    if given:
        return given
    names = stage_names(project_dir)
    if len(names) == 1:
        return names[0]
    if not names:
        raise UnknownStage("no stage in .chalice/config.json: add one (docs/adopting.md), then give it with --stage")
    raise UnknownStage(
        f"no --stage given, and .chalice/config.json has {len(names)} stages: {', '.join(names)} "
        f'(choose one: --stage {names[0]}; with make, ARGS="--stage {names[0]}")'
    )


def stage_variables(config: dict[str, Any], stage: str) -> dict[str, str]:
    """The stage's environment variables with STAGE set to its name; ValueError for an unknown stage."""
    require_stage(stage, config["stages"])
    variables = config["stages"][stage].setdefault("environment_variables", {})
    # Every command that writes a stage keeps STAGE (the function's metrics dimension, the deploy guard's stage).
    variables["STAGE"] = stage
    return variables


def function_environment(stage: str, function: str, project_dir: Path = ROOT) -> dict[str, str]:
    """The variables one of the app's functions sees in a stage, merged as Chalice does (top level, its function,
    the stage, the stage's function) over this process's environment; UnknownStage for a stage not defined."""
    config = json.loads((project_dir / ".chalice" / "config.json").read_text())
    require_stage(stage, config.get("stages", {}))
    scopes = (config, config.get("lambda_functions", {}).get(function, {}), config["stages"][stage])
    scopes += (config["stages"][stage].get("lambda_functions", {}).get(function, {}),)
    merged = dict(os.environ)
    for scope in scopes:
        merged.update(scope.get("environment_variables", {}))
    return merged


def copy_project(target: Path, source: Path = ROOT, paths: Iterable[str] = PROJECT_PATHS) -> Path:
    """Copy what Chalice and the tools need (`paths`) into `target`, without deployment records or caches."""
    target.mkdir(parents=True, exist_ok=True)
    for name in paths:
        if (source / name).is_dir():
            ignored = shutil.ignore_patterns("deployments", "deployed", "__pycache__")
            shutil.copytree(source / name, target / name, ignore=ignored)
        else:
            shutil.copy(source / name, target / name)
    return target
