"""The measurements, each against a running DynamoDB Local, both handlers in the same run on the same workload."""

from __future__ import annotations

import cProfile
import json
import logging
import math
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boto3.dynamodb.types import TypeDeserializer

from bench.hooks import DelayingProxy, added_latency
from bench.subjects import BASELINE, BASELINE_FILE, OURS, ROOT, Subject, environment, stage_environment, subject
from bench.workload import (
    ATTRIBUTES,
    EMAIL,
    FLAG,
    KEY,
    NAME,
    PLAIN_DOMAINS,
    WALKTHROUGH_DOMAINS,
    Delete,
    MixedWorkload,
    Operation,
    Put,
    RemoveAttribute,
    SetAttribute,
    flag_is_right,
    violations,
)
from chalicelib.domains import EmailClassifier
from chalicelib.dynamodb import client_config
from localdev.dynamodb_local import DynamoDBLocal, create_table, table_definition
from localdev.events import StreamEventFactory, json_round_trip, to_wire
from localdev.mapping import LocalEventSourceMapping

SUBJECTS = (OURS, BASELINE)
CLASSIFY = EmailClassifier(frozenset(WALKTHROUGH_DOMAINS)).is_personal_email
_deserialize = TypeDeserializer().deserialize


def progress(message: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    print(f"  {message}", file=sys.stderr, flush=True)


def new_table(engine: DynamoDBLocal, purpose: str, stream: bool = True) -> tuple[str, str]:
    """A fresh users table (the project's schema), with its NEW_AND_OLD_IMAGES stream or none: (name, stream ARN)."""
    name = f"{purpose}-{uuid.uuid4().hex[:8]}"
    overrides: dict[str, Any] = {"TableName": name}
    if not stream:
        overrides["StreamSpecification"] = {"StreamEnabled": False}
    return name, create_table(engine.client(), table_definition(**overrides))


def scan(client: Any, table_name: str) -> list[dict[str, Any]]:
    """Every item of a table, consistently read, as Python values."""
    items, request = [], {"TableName": table_name, "ConsistentRead": True}
    while True:
        page = client.scan(**request)
        items += [{name: _deserialize(value) for name, value in item.items()} for item in page["Items"]]
        if "LastEvaluatedKey" not in page:
            return items
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def perform(client: Any, table_name: str, operation: Operation) -> None:
    """One client write to DynamoDB."""
    match operation:
        case Put(item):
            client.put_item(TableName=table_name, Item=to_wire(item))
        case SetAttribute(key, name, value):
            client.update_item(
                TableName=table_name,
                Key=to_wire({KEY: key}),
                UpdateExpression="SET #a = :v",
                ExpressionAttributeNames={"#a": name},
                ExpressionAttributeValues={":v": to_wire({"v": value})["v"]},
            )
        case RemoveAttribute(key, name):
            client.update_item(
                TableName=table_name,
                Key=to_wire({KEY: key}),
                UpdateExpression="REMOVE #a",
                ExpressionAttributeNames={"#a": name},
            )
        case Delete(key):
            client.delete_item(TableName=table_name, Key=to_wire({KEY: key}))


def put_all(client: Any, table_name: str, items: Sequence[dict[str, Any]]) -> None:
    """Write the items as they are (untimed set-up), 25 to a request."""
    for start in range(0, len(items), 25):
        requests = [{"PutRequest": {"Item": to_wire(item)}} for item in items[start : start + 25]]
        client.batch_write_item(RequestItems={table_name: requests})


def wrong_flags(client: Any, table_name: str) -> int:
    """How many items of the table break the invariant's flag rule."""
    return sum(not flag_is_right(item, CLASSIFY) for item in scan(client, table_name))


# --- writes ------------------------------------------------------------------------------------------------------


def measure_writes(engine: DynamoDBLocal, workload: MixedWorkload) -> dict[str, Any]:
    """Run the mixed workload's rounds through each handler by the local mapping; count its item writes and requests,
    and what it left violating the invariant."""
    client = engine.client()
    runs = {}
    for name in SUBJECTS:
        table, stream_arn = new_table(engine, f"writes-{name}")
        handler = subject(name, table)
        mapping = LocalEventSourceMapping(engine.streams_client(), stream_arn, handler.invoke, batch_size=100)
        runs[name] = (table, handler, mapping, handler.writes.count, handler.writes.requests)
    for number, round_ in enumerate(workload.rounds, 1):
        for table, _, mapping, _, _ in runs.values():
            for operation in round_:
                perform(client, table, operation)
            mapping.drain()
        if number % 10 == 0:
            progress(f"writes: round {number}/{len(workload.rounds)}")
    results: dict[str, Any] = {}
    for name, (table, handler, mapping, writes_before, requests_before) in runs.items():
        writes = handler.writes.count - writes_before
        requests = handler.writes.requests - requests_before
        found = violations(workload.expected, scan(client, table), CLASSIFY)
        results[name] = {
            "writes": writes,
            "requests": requests,
            "requests_per_write": requests / writes if writes else None,
            "writes_per_lower_bound": writes / workload.lower_bound if workload.lower_bound else None,
            "violating_items": sum(found.values()),
            "violations": dict(found),
            "stream_records": mapping.stats.records,
            "batches": mapping.stats.batches,
            "failed_invocations": mapping.stats.failed_attempts,
        }
    return {
        "client_writes": workload.client_writes,
        "rounds": len(workload.rounds),
        "operations": dict(workload.kinds),
        "lower_bound": workload.lower_bound,
        "handlers": results,
    }


# --- the engine alone -------------------------------------------------------------------------------------------


def measure_engine(engine: DynamoDBLocal, writes: int, concurrency: int = 16, passes: int = 3) -> dict[str, Any]:
    """DynamoDB Local's own time per UpdateItem, by a plain client with no handler and no added latency: to a table
    with a stream and to one without, one after another and `concurrency` at once (median of `passes`)."""
    client = engine.client(client_config(concurrency))
    results: dict[str, Any] = {}
    with ThreadPoolExecutor(concurrency) as pool:
        for stream in (True, False):
            table, _ = new_table(engine, "engine", stream=stream)
            put_all(client, table, batch_workload(table, writes).items)

            def update(number: int, table: str = table) -> None:
                client.update_item(
                    TableName=table,
                    Key=to_wire({KEY: f"batch-{number:04d}"}),
                    UpdateExpression="SET #n = :n",
                    ExpressionAttributeNames={"#n": NAME},
                    ExpressionAttributeValues={":n": {"S": uuid.uuid4().hex}},
                )

            timings: dict[str, list[float]] = {"sequential_ms": [], "concurrent_ms": []}
            for _ in range(passes):
                started = time.perf_counter()
                for number in range(writes):
                    update(number)
                timings["sequential_ms"].append((time.perf_counter() - started) / writes * 1000)
                started = time.perf_counter()
                list(pool.map(update, range(writes)))
                timings["concurrent_ms"].append((time.perf_counter() - started) / writes * 1000)
            results["with_stream" if stream else "without_stream"] = {
                key: statistics.median(values) for key, values in timings.items()
            }
    return {"writes": writes, "concurrency": concurrency, **results}


# --- batch time --------------------------------------------------------------------------------------------------


@dataclass
class BatchWorkload:
    """Items and the two events of the batch-time measure: every record needs a write, or none does."""

    items: list[dict[str, Any]]
    needs_writes: dict[str, Any]
    needs_none: dict[str, Any]


def batch_workload(table_name: str, records: int) -> BatchWorkload:
    """`records` items on plain domains (both handlers agree on every flag), and the two events for them."""
    factory = StreamEventFactory(table_name=table_name)
    items = [
        {KEY: f"batch-{i:04d}", EMAIL: f"user{i}@{PLAIN_DOMAINS[i % len(PLAIN_DOMAINS)]}", NAME: "a"}
        for i in range(records)
    ]
    flagged = [{**item, FLAG: CLASSIFY(item[EMAIL])} for item in items]
    # Through JSON once, untimed, as Lambda delivers events: the timed invocations get exactly what Lambda sends.
    return BatchWorkload(
        items=items,
        needs_writes=json_round_trip(factory.event(*(factory.insert(item) for item in items))),
        needs_none=json_round_trip(factory.event(*(factory.modify(item, {**item, NAME: "b"}) for item in flagged))),
    )


def _timed_section(
    results: dict[str, Any], checks: dict[str, list[bool]], latencies: Sequence[float], **sizes: int
) -> dict[str, Any]:
    for name in SUBJECTS:
        results[name]["all_writes_right"] = all(checks[name])
    return {**sizes, "latencies_ms": [latency * 1000 for latency in latencies], "handlers": results}


def _time_batch(handler: Subject, event: dict[str, Any]) -> tuple[float, float, int, int]:
    """(wall seconds, CPU seconds of the whole process, item writes, requests) of one invocation."""
    writes, requests = handler.writes.count, handler.writes.requests
    cpu_started = time.process_time()
    started = time.perf_counter()
    handler.invoke(event)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return wall, cpu, handler.writes.count - writes, handler.writes.requests - requests


def measure_batch_times(
    engine: DynamoDBLocal, records: int, repetitions: int, latencies: Sequence[float]
) -> dict[str, Any]:
    """Wall time of one batch of `records` that all need a write (and the process's CPU time for it), and of
    `records` that need none, per handler and added round trip; repetitions interleave the handlers, and every write
    batch is checked afterwards."""
    client = engine.client()
    setups = {}
    for name in SUBJECTS:
        table, _ = new_table(engine, f"batch-{name}", stream=False)
        setups[name] = (table, subject(name, table), batch_workload(table, records))
    results: dict[str, Any] = {name: {} for name in SUBJECTS}
    checks: dict[str, list[bool]] = {name: [] for name in SUBJECTS}
    for latency in latencies:
        label = f"{latency * 1000:g}ms"
        for name in SUBJECTS:
            for kind in ("writes", "writes_cpu", "no_writes", "requests_per_write"):
                results[name][f"{kind}_{label}"] = []
        for repetition in range(repetitions + 1):  # the first is a warm-up, not kept
            for name, (table, handler, workload) in setups.items():
                put_all(client, table, workload.items)
                with added_latency(handler.client, latency):
                    seconds, cpu_seconds, writes, requests = _time_batch(handler, workload.needs_writes)
                    checks[name].append(writes == records and wrong_flags(client, table) == 0)
                    quiet_seconds, _, quiet_writes, _ = _time_batch(handler, workload.needs_none)
                    checks[name].append(quiet_writes == 0)
                if repetition:
                    results[name][f"writes_{label}"].append(seconds)
                    results[name][f"writes_cpu_{label}"].append(cpu_seconds)
                    results[name][f"no_writes_{label}"].append(quiet_seconds)
                    results[name][f"requests_per_write_{label}"].append(requests / writes if writes else math.nan)
        progress(f"batch time: {label} added round trip done")
    return _timed_section(results, checks, latencies, records=records, repetitions=repetitions)


# --- cold start --------------------------------------------------------------------------------------------------


def _engine_environment(engine: DynamoDBLocal, endpoint: str) -> dict[str, str]:
    variables = engine.environment()
    variables["AWS_ENDPOINT_URL_DYNAMODB"] = endpoint
    return variables


@contextmanager
def _endpoint(engine: DynamoDBLocal, latency: float) -> Iterator[str]:
    if latency <= 0:
        yield engine.endpoint
        return
    with DelayingProxy(engine.port, latency) as proxy:
        yield proxy.endpoint


def measure_cold_starts(engine: DynamoDBLocal, records: int, runs: int, latencies: Sequence[float]) -> dict[str, Any]:
    """In fresh interpreters: the import of the handler's module, and the import plus a first batch of `records`
    that all need a write, `runs` times per handler and added round trip (by a delaying proxy), interleaved."""
    client = engine.client()
    results: dict[str, Any] = {name: {} for name in SUBJECTS}
    right: dict[str, list[bool]] = {name: [] for name in SUBJECTS}
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as scratch:
        setups = {}
        for name in SUBJECTS:
            table, _ = new_table(engine, f"cold-{name}", stream=False)
            workload = batch_workload(table, records)
            event_path = Path(scratch) / f"{name}.json"
            event_path.write_text(json.dumps(workload.needs_writes))
            extra = stage_environment() if name == OURS else {"TABLE_NAME": table}
            setups[name] = (table, workload, event_path, extra)
        for latency in latencies:
            label = f"{latency * 1000:g}ms"
            samples = {
                name: {"import_s": [], "client_setup_s": [], "first_batch_s": [], "cpu_s": []} for name in SUBJECTS
            }
            with _endpoint(engine, latency) as endpoint:
                for _ in range(runs):
                    for name, (table, workload, event_path, extra) in setups.items():
                        put_all(client, table, workload.items)
                        result_path = Path(scratch) / "result.json"
                        variables = {**_engine_environment(engine, endpoint), **extra}
                        with environment(variables):
                            subprocess.run(
                                [sys.executable, "-m", "bench.coldstart", name, str(event_path), str(result_path)],
                                cwd=ROOT,
                                check=True,
                                stdout=subprocess.DEVNULL,
                                timeout=120,
                            )
                        result = json.loads(result_path.read_text())
                        for measure in samples[name]:
                            samples[name][measure].append(result[measure])
                        right[name].append(wrong_flags(client, table) == 0)
            for name in SUBJECTS:
                results[name][label] = samples[name]
            progress(f"cold start: {label} added round trip done")
    return _timed_section(results, right, latencies, records=records, runs=runs)


# --- end-to-end lag ----------------------------------------------------------------------------------------------


def lag_run(
    engine: DynamoDBLocal,
    name: str,
    items: int,
    rate: float,
    idle_seconds: float,
    timeout: float,
    invoker: Callable[[str, str], Callable[[dict[str, Any]], Any]] | None = None,
    warmup_items: int = 0,
) -> dict[str, Any]:
    """One lag run on a fresh table: `items` new items at `rate` per second through the local mapping, each flag
    read back until it shows; the handler is `invoker(name, table)` (default: in this process). `warmup_items`
    items are written and handled first, untimed: the handler's first batch on a table (its connections) and the
    engine's first requests of a kind are not the steady state a rate is about."""
    table, stream_arn = new_table(engine, f"lag-{name}")
    invoke = invoker(name, table) if invoker else subject(name, table).invoke
    mapping = LocalEventSourceMapping(engine.streams_client(), stream_arn, invoke, batch_size=100)
    if warmup_items:
        put_all(
            engine.client(),
            table,
            [{KEY: f"warm-{number:04d}", EMAIL: f"warm{number}@{PLAIN_DOMAINS[0]}"} for number in range(warmup_items)],
        )
        mapping.drain()
    stop = threading.Event()
    poller = threading.Thread(target=mapping.run, args=(stop,), kwargs={"idle_seconds": idle_seconds}, daemon=True)
    written: dict[str, float] = {}
    seen: dict[str, float] = {}
    done_writing: list[float] = []
    write_seconds: list[float] = []

    def write() -> None:
        writer = engine.client()
        started = time.perf_counter()
        for number in range(items):
            time.sleep(max(0.0, started + number / rate - time.perf_counter()))
            item = {KEY: f"lag-{number:05d}", EMAIL: f"user{number}@{PLAIN_DOMAINS[number % len(PLAIN_DOMAINS)]}"}
            writer.put_item(TableName=table, Item=to_wire(item))
            written[item[KEY]] = time.perf_counter()
        done_writing.append(time.monotonic())
        write_seconds.append(time.perf_counter() - started)

    writing = threading.Thread(target=write, daemon=True)
    poller.start()
    writing.start()
    reader = engine.client()
    hard_stop = time.monotonic() + 3 * items / rate + timeout
    while time.monotonic() < hard_stop:
        if done_writing and (len(seen) == len(written) or time.monotonic() > done_writing[0] + timeout):
            break
        pending = [key for key in list(written) if key not in seen][:100]
        if pending:
            response = reader.batch_get_item(
                RequestItems={
                    table: {
                        "Keys": [to_wire({KEY: key}) for key in pending],
                        "ConsistentRead": True,
                        "ProjectionExpression": "#k, #f",
                        "ExpressionAttributeNames": {"#k": KEY, "#f": FLAG},
                    }
                }
            )
            now = time.perf_counter()
            for item in response["Responses"].get(table, []):
                if FLAG in item:
                    seen[item[KEY]["S"]] = now
        time.sleep(0.005)
    stop.set()
    poller.join(timeout=30)
    writing.join(timeout=30)
    lags = sorted(seen[key] - written[key] for key in seen)
    return {
        "lags_s": lags,
        "not_visible": len(written) - len(seen),
        "batches": mapping.stats.batches,
        "all_writes_right": wrong_flags(engine.client(), table) == 0,
        # Below the asked rate when DynamoDB Local could not take the client's writes that fast.
        "write_rate_achieved": items / write_seconds[0] if write_seconds and write_seconds[0] > 0 else 0.0,
    }


def measure_lag(
    engine: DynamoDBLocal, items: int, rate: float, idle_seconds: float = 0.25, timeout: float = 10.0
) -> dict[str, Any]:
    """A client writes `items` new items at `rate` per second while the local mapping (default batching window,
    `idle_seconds` between empty polls) runs the handler; another thread reads them until each flag shows."""
    results = {}
    for name in SUBJECTS:
        results[name] = lag_run(engine, name, items, rate, idle_seconds, timeout)
        progress(f"lag: {name} done")
    return {"items": items, "rate_per_s": rate, "idle_seconds": idle_seconds, "handlers": results}


# --- package size ------------------------------------------------------------------------------------------------

PACKAGE_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/Users/stream/2026-01-01T00:00:00.000"
PACKAGE_STAGE = "bench-package"


def measure_package_sizes() -> dict[str, Any]:
    """The zip `chalice package` builds for a stage bound to a stream, and the zip of the baseline's one file."""
    with tempfile.TemporaryDirectory(prefix="bench-package-") as scratch:
        project = Path(scratch) / "project"
        project.mkdir()
        for name in ("app.py", "chalicelib", "requirements.txt", ".chalice", "tools"):
            source = ROOT / name
            if source.is_dir():
                ignore = shutil.ignore_patterns("deployments", "__pycache__")
                shutil.copytree(source, project / name, ignore=ignore)
            else:
                shutil.copy(source, project / name)
        # A stage of the bench's own, copied from the config's first (whatever the user's stages are called).
        subprocess.run(
            [sys.executable, "-m", "tools.stage", "add-stage", "--stage", PACKAGE_STAGE, "--stream-arn", PACKAGE_ARN],
            cwd=project,
            check=True,
            capture_output=True,
        )
        out = Path(scratch) / "out"
        chalice = Path(sys.executable).parent / "chalice"
        subprocess.run(
            [str(chalice), "--project-dir", str(project), "package", "--stage", PACKAGE_STAGE, str(out)],
            check=True,
            capture_output=True,
            timeout=600,
            env={**os.environ, "AWS_DEFAULT_REGION": "us-east-1"},
        )
        ours_zip = out / "deployment.zip"
        baseline_zip = Path(scratch) / "baseline.zip"
        with zipfile.ZipFile(baseline_zip, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(BASELINE_FILE, "lambda_function.py")
        with zipfile.ZipFile(ours_zip) as archive:
            files = len(archive.namelist())
        return {
            OURS: {"bytes": ours_zip.stat().st_size, "files": files},
            BASELINE: {"bytes": baseline_zip.stat().st_size, "files": 1},
        }


# --- per-record CPU ----------------------------------------------------------------------------------------------


def no_write_event(records: int) -> dict[str, Any]:
    """`records` MODIFY records of distinct items whose flag is already right (another attribute changed)."""
    factory = StreamEventFactory()
    built = []
    for i in range(records):
        item = {KEY: f"user-{i:06d}", EMAIL: f"user{i}@{PLAIN_DOMAINS[i % len(PLAIN_DOMAINS)]}", NAME: "a"}
        item[FLAG] = CLASSIFY(item[EMAIL])
        built.append(factory.modify(item, {**item, NAME: "b"}))
    return json_round_trip(factory.event(*built))


def cpu_per_record(records: int, repetitions: int, top: int = 8) -> dict[str, Any]:
    """email-checker's CPU per record that needs no write (decode, plan, count: no request), best and median of
    `repetitions` passes of StreamProcessor.process over one event, and where a profiled pass spends it."""
    from chalicelib.domains import personal_domain_set
    from chalicelib.dynamodb import DynamoDBGateway
    from chalicelib.processor import StreamProcessor

    processor = StreamProcessor(
        EmailClassifier(personal_domain_set()).is_personal_email,
        DynamoDBGateway(client=None, attributes=ATTRIBUTES),  # no record needs a write, so no request is made
        report_batch_item_failures=False,
        logger=logging.getLogger("bench.cpu"),
    )
    event = no_write_event(records)
    report = processor.process(event)
    if report.already_correct != records:
        raise RuntimeError(f"the no-write event needed something: {report.summary()}")
    passes = []
    for _ in range(repetitions):
        started = time.perf_counter()
        processor.process(event)
        passes.append((time.perf_counter() - started) / records * 1e6)
    profile = cProfile.Profile()
    profile.runcall(processor.process, event)
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    by_time = sorted(stats.items(), key=lambda entry: entry[1][2], reverse=True)[:top]
    return {
        "records": records,
        "repetitions": repetitions,
        "us_per_record_best": min(passes),
        "us_per_record_median": statistics.median(passes),
        "profile_top_own_time": [
            {"function": f"{Path(file).name}:{line}({function})", "us_per_record": own / records * 1e6}
            for (file, line, function), (_, _, own, _, _) in by_time
        ],
    }
