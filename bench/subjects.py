"""The two handlers under test, invoked in-process the way Lambda invokes them: `handler(event, context)`."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.hooks import CallCounter
from bench.workload import ATTRIBUTES, WALKTHROUGH_DOMAINS
from localdev.walkthrough import WALKTHROUGH_ENVIRONMENT

ROOT = Path(__file__).resolve().parent.parent
BASELINE_FILE = ROOT / "bench" / "baseline" / "lambda_function.py"
OURS = "email-checker"
BASELINE = "baseline"
# Both print (the baseline every record, email-checker its metrics): into the void, as Lambda's stdout is not read here.
_DEVNULL = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


def stage_environment() -> dict[str, str]:
    """The walkthrough's settings (no stage of the config's), with its three domains (the fair comparison) and the
    bench's attribute names (the baseline's)."""
    return {
        **WALKTHROUGH_ENVIRONMENT,
        "PERSONAL_DOMAINS_ONLY": ",".join(WALKTHROUGH_DOMAINS),
        "EMAIL_ATTRIBUTE": ATTRIBUTES.email,
        "FLAG_ATTRIBUTE": ATTRIBUTES.flag,
    }


@contextlib.contextmanager
def environment(variables: Mapping[str, str]) -> Iterator[None]:
    """os.environ with the variables set, restored afterwards."""
    saved = dict(os.environ)
    os.environ.update(variables)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass
class Subject:
    """One handler, its DynamoDB client (for hooks) and a count of the writes it asks DynamoDB for."""

    name: str
    handler: Callable[[dict[str, Any], Any], Any]
    client: Any
    writes: CallCounter = field(init=False)

    def __post_init__(self) -> None:
        self.writes = CallCounter(self.client)

    def invoke(self, event: dict[str, Any]) -> Any:
        """One invocation, as Lambda makes it (no context object is used by either handler)."""
        with contextlib.redirect_stdout(_DEVNULL):
            return self.handler(event, None)


def ours() -> Subject:
    """email-checker's handler, as deployed: `app.sync_is_personal_email`, under the current os.environ."""
    from aws_lambda_powertools import Logger

    from chalicelib.config import Settings
    from chalicelib.runtime import SERVICE, processor_for

    # The JSON log lines go nowhere (a Logger already configured for the service, as in the tests, keeps its stream).
    Logger(service=SERVICE, stream=_DEVNULL)
    import app

    processor = processor_for(Settings.from_environ(os.environ))
    return Subject(OURS, app.sync_is_personal_email, processor.gateway.client)


def baseline(table_name: str) -> Subject:
    """A fresh copy of the walkthrough's function bound to one table, as a function bound to its table would be."""
    with environment({"TABLE_NAME": table_name}):
        spec = importlib.util.spec_from_file_location(f"baseline_{table_name.replace('-', '_')}", BASELINE_FILE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return Subject(BASELINE, module.lambda_handler, module.DDB.meta.client)


def subject(name: str, table_name: str) -> Subject:
    """The named handler, ready for a table."""
    return ours() if name == OURS else baseline(table_name)
