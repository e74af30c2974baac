"""Shared fixtures: one DynamoDB Local per test session (started and stopped here), tables per test, the handler."""

from __future__ import annotations

import io
import json
import os
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from aws_lambda_powertools import Logger

from chalicelib.runtime import SERVICE
from tests.projects import without_aws


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
def invoker(engine):
    from localdev.invoker import ChaliceInvoker

    handler = ChaliceInvoker(stage="dev")
    yield handler
    handler.close()


@pytest.fixture
def stage_invoker(engine, tmp_path):
    """A handler invoker for a copy of the project config whose dev stage has some variables overridden."""
    import shutil

    from localdev.invoker import ROOT, ChaliceInvoker

    made = []

    def make(**overrides: str) -> ChaliceInvoker:
        project = tmp_path / f"project-{len(made)}"
        shutil.copytree(ROOT / ".chalice", project / ".chalice", ignore=shutil.ignore_patterns("deployments"))
        config_path = project / ".chalice" / "config.json"
        config = json.loads(config_path.read_text())
        config["stages"]["dev"]["environment_variables"].update(overrides)
        config_path.write_text(json.dumps(config))
        made.append(ChaliceInvoker(stage="dev", project_dir=project))
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
    from tests.projects import copy_project

    return copy_project(tmp_path / "project")


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
