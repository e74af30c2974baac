"""Shared fixtures: one DynamoDB Local per test process (started and stopped here), tables per test, the tests' own
project (never the committed config) and the handler under its stage; and the guard that keeps tests off the committed
`.chalice/` (a test that reads it, or runs a command that would, fails)."""

from __future__ import annotations

import io
import json
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools import Logger

from chalicelib.runtime import SERVICE
from tests.projects import ROOT, STAGE, copy_project, without_aws

COMMITTED_CHALICE_DIR = str(ROOT / ".chalice")
# Commands that read the project's .chalice/ when run in it: the project's own modules, and Chalice's CLI.
PROJECT_MODULES = ("tools", "localdev", "bench", "app")


class CommittedConfigGuard:
    """Records what a test does with the committed `.chalice/`: opening a file in it, or starting one of the project's
    commands (or Chalice) in the checkout, which would read it. An audit hook sees every `open` and `Popen`."""

    def __init__(self) -> None:
        self.active = False
        self.seen: list[str] = []

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active:
            return
        if event == "open" and isinstance(args[0], (str, os.PathLike)):
            path = os.path.abspath(os.fspath(args[0]))
            if path == COMMITTED_CHALICE_DIR or path.startswith(COMMITTED_CHALICE_DIR + os.sep):
                self.seen.append(f"opened {path}")
        elif event == "subprocess.Popen":
            _, argv, cwd, _ = args
            argv = [os.fspath(a) for a in (argv if isinstance(argv, (list, tuple)) else [argv])]
            where = os.fspath(cwd) if cwd is not None else os.getcwd()
            if "--project-dir" in argv[:-1]:  # Chalice's CLI reads the project it is pointed at
                where = os.path.join(where, argv[argv.index("--project-dir") + 1])
            in_checkout = os.path.abspath(where) == str(ROOT)
            module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""
            runs_project = module.split(".")[0] in PROJECT_MODULES or any(Path(a).name == "chalice" for a in argv[:1])
            if in_checkout and runs_project:
                self.seen.append(f"ran {' '.join(argv[:4])} in the checkout")


GUARD = CommittedConfigGuard()
sys.addaudithook(GUARD)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Guard every test but those marked `committed_config` (they check the committed files themselves)."""
    GUARD.active, GUARD.seen = item.get_closest_marker("committed_config") is None, []
    try:
        return (yield)
    finally:
        GUARD.active = False


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under `--dist loadgroup`, a test with no xdist_group of its own that uses a module-scoped fixture (moto's
    server, a packaged stack, a `make run`) runs in its module's worker, so the fixture is made once, not once per
    worker; every other test goes to whichever worker is free."""
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        definitions = getattr(item, "_fixtureinfo", None)
        scopes = {d.scope for defs in (definitions.name2fixturedefs.values() if definitions else ()) for d in defs}
        if scopes & {"module", "class"}:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__.rsplit(".", 1)[-1]))


@pytest.fixture(autouse=True)
def _no_committed_config(request):
    """Fail a test that read the committed `.chalice/` or ran a command that would (during its setup or its call)."""
    yield
    seen, GUARD.seen = GUARD.seen, []
    if seen and request.node.get_closest_marker("committed_config") is None:
        pytest.fail(
            "this test reads the committed .chalice/ (the user's stages): build its own project or Settings instead "
            f"(tests/projects.py): {sorted(set(seen))[:5]}"
        )


class LogSink(io.StringIO):
    """Everything the handler's logger writes, as parsed JSON lines."""

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.getvalue().splitlines() if line.strip()]

    def clear(self) -> None:
        self.seek(0)
        self.truncate()


# Configure the service's Powertools logger before any processor exists, so every line it writes lands here.
LOG_SINK = LogSink()
Logger(service=SERVICE, stream=LOG_SINK)


@pytest.fixture
def log_sink():
    LOG_SINK.clear()
    yield LOG_SINK


@pytest.fixture(scope="session")
def engine():
    from localdev.dynamodb_local import DynamoDBLocal

    saved = dict(os.environ)
    with DynamoDBLocal() as running:
        os.environ.update(running.environment())
        yield running
    os.environ.clear()
    os.environ.update(saved)


@dataclass
class Table:
    name: str
    stream_arn: str
    client: Any
    key_names: tuple[str, ...]


@pytest.fixture
def make_table(engine):
    from localdev.dynamodb_local import create_table, table_definition

    client = engine.client()
    created = []

    def make(keys=(("Id", "S"),), view_type="NEW_AND_OLD_IMAGES", stream=True, name=None) -> Table:
        """A table with the key schema; a fresh name unless `name` is given (a sample event names its table)."""
        name = name or f"Users-{uuid.uuid4().hex[:10]}"
        definition = table_definition(
            TableName=name,
            AttributeDefinitions=[{"AttributeName": n, "AttributeType": t} for n, t in keys],
            KeySchema=[{"AttributeName": n, "KeyType": ("HASH", "RANGE")[i]} for i, (n, _) in enumerate(keys)],
            StreamSpecification={"StreamEnabled": True, "StreamViewType": view_type}
            if stream
            else {"StreamEnabled": False},
        )
        created.append(name)
        return Table(name, create_table(client, definition), client, tuple(n for n, _ in keys))

    yield make
    for name in created:
        client.delete_table(TableName=name)


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> Path:
    """The tests' own project (tests/projects.py's config, stages STAGE and OTHER_STAGE), with what the local commands
    need: run the project's commands here (cwd), never in the checkout."""
    return copy_project(tmp_path_factory.mktemp("project") / "project", local=True)


@pytest.fixture(scope="session")
def adopter_project(tmp_path_factory) -> Path:
    """A project whose config is an adopter's (tests/projects.py: no committed stage, other names, other sizes)."""
    from tests.projects import adopter_config

    return copy_project(tmp_path_factory.mktemp("adopter") / "project", adopter_config(), local=True)


@pytest.fixture(params=[pytest.param("committed", marks=pytest.mark.committed_config), "adopter"])
def checked_project(request) -> Path:
    """For the checks a user's config must pass: the committed project itself, then an adopter's."""
    return ROOT if request.param == "committed" else request.getfixturevalue("adopter_project")


@pytest.fixture(scope="session")
def invoker(engine, project):
    from localdev.invoker import ChaliceInvoker

    handler = ChaliceInvoker(stage=STAGE, project_dir=project)
    yield handler
    handler.close()


@pytest.fixture
def stage_invoker(engine, tmp_path):
    """A handler invoker for the tests' stage with some variables overridden."""
    from localdev.invoker import ChaliceInvoker
    from tests.projects import fixture_config, write_config

    made = []

    def make(**overrides: str) -> ChaliceInvoker:
        config = fixture_config()
        config["stages"][STAGE]["environment_variables"].update(overrides)
        project = write_config(tmp_path / f"project-{len(made)}", config)
        made.append(ChaliceInvoker(stage=STAGE, project_dir=project))
        return made[-1]

    yield make
    for handler in made:
        handler.close()


@pytest.fixture
def drain(engine, invoker):
    """Run a local event source mapping (one per stream, kept across calls) until the stream is caught up; the
    summaries of the batches it delivered."""
    from localdev.mapping import LocalEventSourceMapping

    mappings = {}

    def run(table: Table, **options) -> list[dict[str, Any]]:
        seen = len(invoker.collector.summaries)
        if table.stream_arn not in mappings:
            mappings[table.stream_arn] = LocalEventSourceMapping(
                engine.streams_client(), table.stream_arn, invoker, **options
            )
        mappings[table.stream_arn].drain()
        return invoker.collector.summaries[seen:]

    return run


@pytest.fixture
def stream_records(engine):
    """Every record now in a table's stream, shaped as Lambda delivers them (JSON: binary values as base64 text)."""
    from localdev.events import lambda_record

    streams = engine.streams_client()

    def read(table: Table) -> list[dict[str, Any]]:
        records = []
        for shard in streams.describe_stream(StreamArn=table.stream_arn)["StreamDescription"]["Shards"]:
            iterator = streams.get_shard_iterator(
                StreamArn=table.stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            while iterator:
                response = streams.get_records(ShardIterator=iterator)
                records += [lambda_record(r, table.stream_arn) for r in response["Records"]]
                iterator = response.get("NextShardIterator") if response["Records"] else None
        return sorted(records, key=lambda r: int(r["dynamodb"]["SequenceNumber"]))

    return read


@pytest.fixture
def project_copy(tmp_path):
    """A copy of the tests' project of the test's own, for a test that changes its files (the stage tools do)."""
    return copy_project(tmp_path / "project")


@pytest.fixture
def port_8000():
    """Port 8000 for this test alone among every test process (tests/projects.py's port_8000_alone)."""
    from tests.projects import port_8000_alone

    with port_8000_alone():
        yield


@pytest.fixture(scope="session")
def documented_runs(tmp_path_factory):
    """The docs' marked commands, each run once in a fresh clone (tests using it are in xdist group GROUP)."""
    from tests.documented import run_marked

    return run_marked(tmp_path_factory.mktemp("documented"))


@pytest.fixture(scope="module")
def emulator():
    """moto's AWS emulator on a loopback port, for the module."""
    from localdev.moto_server import MotoServer

    with MotoServer() as server:
        yield server


@pytest.fixture
def aws_environment(emulator, tmp_path):
    """Only the emulator's endpoint and dummy credentials: no profile, no other endpoint, no real account."""
    return without_aws(tmp_path, **emulator.environment())
