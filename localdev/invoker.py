"""Invoke the Chalice handler the way Lambda would, through `chalice.test.Client`, and read its summary lines."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aws_lambda_powertools import Logger
from chalice.cli.factory import CLIFactory
from chalice.local import LambdaContext
from chalice.test import Client, InvokeResponse, TestLambdaClient

from chalicelib.config import Settings
from chalicelib.processor import BatchReport
from chalicelib.runtime import SERVICE
from localdev.events import json_round_trip
from tools.stage import require_stage, stage_names

ROOT = Path(__file__).resolve().parent.parent
FUNCTION_NAME = "sync_is_personal_email"


def stage_environment(stage: str, function_name: str, project_dir: Path = ROOT, defined: bool = True) -> dict[str, str]:
    """The variables Lambda would see for one of the app's functions, resolved by Chalice itself (as its test client
    does), over this process's environment; UnknownStage for a stage the project does not define (unless `defined` is
    False: then the config's top level alone)."""
    if defined:
        require_stage(stage, stage_names(project_dir))
    config = CLIFactory(str(project_dir)).create_config_obj(chalice_stage_name=stage)
    return {**os.environ, **config.scope(stage, function_name).environment_variables}


class SummaryCollector(logging.Handler):
    """Keeps the structured fields of every "batch processed" log line, as an operator would read them."""

    FIELDS = tuple(BatchReport().summary())

    def __init__(self, on_summary: Callable[[dict[str, Any]], None] | None = None) -> None:
        super().__init__(level=logging.INFO)
        self.summaries: list[dict[str, Any]] = []
        self.on_summary = on_summary

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the summary fields of a batch line; ignore other lines."""
        if record.getMessage() == "batch processed":
            summary = {name: getattr(record, name, None) for name in self.FIELDS}
            self.summaries.append(summary)
            if self.on_summary is not None:
                self.on_summary(summary)


class _StageTimeoutLambdaClient(TestLambdaClient):
    """Chalice's test Lambda client, but the context's remaining time starts at the function's `lambda_timeout`, as
    on AWS (Chalice's test client gives every invocation 3 s, which the handler's time budget would obey), and the
    deploy steps' changes to the function's environment applied over the stage's."""

    def __init__(self, app: Any, config: Any, overrides: dict[str, str]) -> None:
        super().__init__(app, config)
        self._overrides = overrides

    def invoke(self, function_name: str, payload: Any = None, max_runtime_ms: int | None = None) -> InvokeResponse:
        """Call the function under its stage's environment with a Lambda-like context (its remaining time the
        function's timeout, or `max_runtime_ms`: a local run cut short)."""
        scoped = self._config.scope(self._config.chalice_stage, function_name)
        context = LambdaContext(
            function_name,
            memory_size=scoped.lambda_memory_size,
            max_runtime_ms=max_runtime_ms or scoped.lambda_timeout * 1000,
        )
        with self._patched_env_vars({**scoped.environment_variables, **self._overrides}):
            return InvokeResponse(payload=self._app.handler_map[function_name](payload or {}, context))


class _StageTimeoutClient(Client):
    """`chalice.test.Client` whose Lambda client honours the function's configured timeout."""

    overrides: dict[str, str] = {}

    @property
    def lambda_(self) -> TestLambdaClient:
        """The Lambda test client with faithful remaining time."""
        if self._lambda_client is None:
            self._lambda_client = _StageTimeoutLambdaClient(self._app, self._chalice_config, self.overrides)
        return self._lambda_client


class ChaliceInvoker:
    """Calls the app's stream handler with a Lambda event, under the stage's environment variables."""

    def __init__(
        self,
        stage: str,
        quiet: bool = True,
        project_dir: Path = ROOT,
        deployed_overrides: dict[str, str] | None = None,
        environment: dict[str, str] | None = None,
    ) -> None:
        """`deployed_overrides`: variables a deploy step sets on the function over the stage's (as both deploy paths
        set REPORT_BATCH_ITEM_FAILURES=true once the mapping reports partial failures). `environment`: the function's
        variables when they are not a stage's (the walkthrough's own): `stage` is then only a name, and need not be
        defined in the config."""
        from app import app

        self._client = _StageTimeoutClient(app, stage_name=stage, project_dir=str(project_dir))
        self._client.overrides = {**(environment or {}), **(deployed_overrides or {})}
        self.stage_environment = {
            **stage_environment(stage, FUNCTION_NAME, project_dir, defined=environment is None),
            **self._client.overrides,
        }
        self.settings = Settings.from_environ(self.stage_environment)
        self.quiet = quiet
        self.collector = SummaryCollector()
        if quiet:
            # The handler's JSON log lines go nowhere; the collector still reads every summary. (A Logger for the
            # service that is already configured keeps its stream: then the lines still print.)
            Logger(service=SERVICE, stream=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
        logging.getLogger(SERVICE).addHandler(self.collector)

    def __call__(self, event: dict[str, Any]) -> Any:
        """Invoke once with the event as Lambda would deliver it (through JSON: an event that is not JSON raises
        TypeError here, at its producer); the handler's response (raises what the handler raises)."""
        event = json_round_trip(event)
        sink = io.StringIO() if self.quiet else None
        with contextlib.redirect_stdout(sink) if sink else contextlib.nullcontext():
            return self._client.lambda_.invoke(FUNCTION_NAME, event).payload

    def close(self) -> None:
        """Stop collecting summaries."""
        logging.getLogger(SERVICE).removeHandler(self.collector)
