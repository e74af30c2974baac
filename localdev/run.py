"""Long-running local mode: DynamoDB Local (data kept on disk), the local event source mapping with the stage's
production settings (filter, retries, bisection, record age, parallelization), its on-failure bucket on moto's S3
whose ObjectCreated notifications reach the failure queue on moto's SQS, consumed by the reconciler as Lambda's SQS
event source would (localdev/reconciler_runner.py), until Ctrl-C or SIGTERM (both stop every process this starts).

    python -m localdev.run                 # or: make run
    python -m localdev.run --endpoint http://127.0.0.1:8000   # follow a DynamoDB Local that is already running
    python -m localdev.run --table Members --key tenant:S --key member_no:N   # your table's name and key

A table that doesn't exist is created (with `--key`, or schema/users-table.json's key, and its stream on); one that
exists is followed as DescribeTable gives it, and the put-item line uses its real key. A table deleted or recreated
while this runs is noticed within a second: its new stream is followed from its start, or why it can't be is said.

Write to the table with the AWS CLI or your own code and watch each batch's outcome: it prints the put-item command
for the endpoint in use (port 8000 when free; when it is taken, another, said loudly; a --port that is taken is an
error). Checkpoints are kept per shard, so a restart resumes after the last fully processed batch (at-least-once,
like Lambda). One run per data directory and per checkpoint file: a second one is refused while the first runs; two
runs started together never take the same port (each claims its port with a lock file before it looks).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from chalicelib.attributes import AttributeNames, attribute_conflict
from localdev import lifecycle

if TYPE_CHECKING:
    from localdev.mapping import S3FailureDestination

STATE_DIR = Path(__file__).resolve().parent.parent / ".state"
PREFERRED_PORT = 8000
LOCK_NAME = "make-run.lock"


class PortBusy(RuntimeError):
    """The port asked for is taken."""


class InUse(RuntimeError):
    """Another `make run` uses the same data directory or checkpoint file."""


def lock_path(data: Path, kind: str) -> Path:
    """The lock file of a data directory (inside it) or of a checkpoint file (beside it)."""
    return data / LOCK_NAME if kind == "data" else data.with_name(data.name + ".lock")


def hold(cleanup: ExitStack, path: Path, what: str, option: str) -> TextIO:
    """Lock `path` until `cleanup` closes (or every process holding it ends); InUse if another run holds it."""
    try:
        return cleanup.enter_context(lifecycle.exclusive(path, "make run"))
    except lifecycle.Locked as locked:
        raise InUse(
            f"{what} is in use by another `make run` ({locked}): stop that one first, or give this one its own {option}"
        ) from None


def put_item_command(endpoint: str, table: dict[str, Any], region: str, attributes: AttributeNames) -> str:
    """The AWS CLI command that writes `example_item` to the table through `endpoint`."""
    return (
        f"AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local aws dynamodb put-item --region {region} "
        f"--endpoint-url {endpoint} --table-name {table['TableName']} --item {example_item(table, attributes)}"
    )


def describe_batch(summary: dict[str, Any]) -> str:
    """One line per batch: counts and outcomes only, never an attribute value."""
    events = ", ".join(f"{name} {count}" for name, count in sorted((summary["records_by_event"] or {}).items()))
    line = (
        f"[{time.strftime('%H:%M:%S')}] batch of {summary['records']} record(s) ({events or 'none decodable'}): "
        f"{summary['writes']} write(s), {summary['already_correct']} already correct, "
        f"{summary['superseded']} superseded, {summary['failed']} failed"
    )
    kinds = ("rejected", "malformed", "access_denied", "flag_in_key")
    extras = [f"{summary[name]} {name}" for name in kinds if summary.get(name)]
    return line + (", " + ", ".join(extras) if extras else "") + f" in {summary['duration_ms']:.1f} ms"


def example_item(table: dict[str, Any], attributes: AttributeNames) -> str:
    """The printed put-item's `--item`, shell-quoted: the table's key (from DescribeTable) and the stage's e-mail."""
    types = {spec["AttributeName"]: spec["AttributeType"] for spec in table["AttributeDefinitions"]}
    samples = {"S": "ID1", "N": "1", "B": "SUQx"}  # B as the AWS CLI takes it: base64 ("ID1")
    item = {key["AttributeName"]: {types[key["AttributeName"]]: samples[types[key["AttributeName"]]]} for key in
            table["KeySchema"]}  # fmt: skip
    if types.get(attributes.email, "S") == "S":  # a table keyed by its e-mail: the key is the e-mail
        item[attributes.email] = {"S": "john@gmail.com"}
    return shlex.quote(json.dumps(item, ensure_ascii=False))


@dataclass(frozen=True)
class FailureQueue:
    """The local on-failure destination: a bucket on moto's S3 whose ObjectCreated notifications (under `aws/lambda/`)
    go to the failure queue on moto's SQS, named as on the `chalice deploy` path, with its dead-letter queue."""

    endpoint: str
    queue_url: str
    sqs: Any
    dead_letter_url: str = ""
    bucket: str = ""
    s3: Any = None

    def destination(self) -> S3FailureDestination:
        """The mapping's `on_failure` writer for this bucket."""
        from localdev.mapping import S3FailureDestination

        return S3FailureDestination(self.s3, self.bucket)


def local_failure_bucket_name(app_name: str, stage: str) -> str:
    """The local on-failure bucket's name."""
    return f"{app_name}-{stage}-on-failure"


def start_failure_bucket(s3: Any, bucket: str, queue_arn: str) -> None:
    """Create the bucket and send its ObjectCreated notifications under `aws/lambda/` to the queue (moto delivers
    them to its SQS as S3 would, after one `s3:TestEvent`)."""
    from botocore.exceptions import ClientError

    from tools.failure_bucket import api_notification

    try:
        s3.create_bucket(Bucket=bucket)
    except ClientError as error:  # moto's state outlives its server in this process: a second start finds it
        if error.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
            raise
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=api_notification(queue_arn))


def start_failure_queue(cleanup: ExitStack, app_name: str, stage: str) -> FailureQueue:
    """Start moto's server (stopped when `cleanup` closes) and create the stage's failure queue in it, with the
    deployed queue's visibility timeout and redrive to its dead-letter queue, and the on-failure bucket notifying it."""
    import boto3
    from moto.server import ThreadedMotoServer

    from chalicelib.config import dead_letter_queue_name
    from localdev import moto_server
    from tools.stage import ensure_reconciler_queues, failure_queue_name

    # In this process, not a child: a poller that is killed (-9 included) can't leave a server behind. Its web
    # server would log every request on stderr, between the batch lines.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    cleanup.callback(server.stop)
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    session = boto3.session.Session(region_name=moto_server.REGION, **moto_server.CREDENTIALS)
    sqs = session.client("sqs", endpoint_url=endpoint)
    ensure_reconciler_queues(sqs, app_name, stage)
    queue_url = sqs.get_queue_url(QueueName=failure_queue_name(app_name, stage))["QueueUrl"]
    dead_letter_url = sqs.get_queue_url(QueueName=dead_letter_queue_name(app_name, stage))["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3 = session.client("s3", endpoint_url=endpoint)
    bucket = local_failure_bucket_name(app_name, stage)
    start_failure_bucket(s3, bucket, queue_arn)
    return FailureQueue(endpoint, queue_url, sqs, dead_letter_url, bucket, s3)


def port_lock_path(port: int) -> Path:
    """The lock file by which one `make run` at a time claims a port for its engine (the user's own: another user's
    file in the shared temporary directory could not be opened)."""
    return Path(tempfile.gettempdir()) / f"email-checker-make-run-port-{port}-uid{os.getuid()}.lock"


def claim_port(cleanup: ExitStack, port: int) -> bool:
    """Whether this run may start DynamoDB Local on `port`: no other `make run` claims it and nothing listens there.
    The claim is held until `cleanup` closes, so two runs started in the same second never both find it free."""
    claim = ExitStack()
    try:
        claim.enter_context(lifecycle.exclusive(port_lock_path(port), "make run"))
    except lifecycle.Locked:
        return False
    from localdev.dynamodb_local import port_is_free

    if not port_is_free(port):
        claim.close()
        return False
    cleanup.enter_context(claim)
    return True


def start_engine(
    cleanup: ExitStack, data_dir: Path, requested_port: int | None, lock: TextIO
) -> tuple[str, int | None]:
    """Start DynamoDB Local on `data_dir` (stopped when `cleanup` closes), holding `lock` too; (its endpoint, the
    preferred port it had to move from, if it did). A requested port that is taken is an error, not a move."""
    from localdev.dynamodb_local import DynamoDBLocal, free_port

    if requested_port and not claim_port(cleanup, requested_port):
        # Asked for by name: moving it would break whatever the user pointed at it.
        raise PortBusy(
            f"port {requested_port} is in use (a DynamoDB Local or `make run` still running?): choose another "
            f"--port, or follow what listens there with --endpoint http://127.0.0.1:{requested_port}"
        )
    port, moved_from = requested_port or PREFERRED_PORT, None
    if not requested_port and not claim_port(cleanup, port):
        moved_from, port = port, free_port()
        print(
            f"warning: port {moved_from} is in use (another DynamoDB Local or `make run`?), so DynamoDB Local "
            f"listens on port {port} instead: use the put-item command printed below, not the docs' :{moved_from} "
            "(or stop what holds it, or pass --port)",
            file=sys.stderr,
            flush=True,
        )
    print(f"starting DynamoDB Local on port {port} (data in {data_dir}) ...", flush=True)
    # The engine inherits the data directory's lock: one left running by a `kill -9` still holds it.
    engine = cleanup.enter_context(DynamoDBLocal(db_path=data_dir, port=port, pass_fds=(lock.fileno(),)))
    lock.write(f"DynamoDB Local (process {engine.pid})\n")
    lock.flush()
    return engine.endpoint, moved_from


def describe_table(table: dict[str, Any]) -> str:
    """A table's key and stream, from DescribeTable: `key tenant (S) + member_no (N), stream NEW_AND_OLD_IMAGES`."""
    from localdev.dynamodb_local import key_attributes, stream_arn_of

    key = " + ".join(f"{name} ({kind})" for name, kind in key_attributes(table))
    view = table.get("StreamSpecification", {}).get("StreamViewType") if stream_arn_of(table) else None
    return f"key {key}, " + (f"stream {view}" if view else "no stream")


def table_line(table: dict[str, Any], created: bool, keys: list[str] | None, stage: str, names: AttributeNames) -> str:
    """The one line that says what `make run` made, or found and follows as it is."""
    from localdev.dynamodb_local import describe_key

    shown = f"table {table['TableName']}: {describe_table(table)}"
    names_used = f"stage {stage}'s attributes: e-mail {names.email!r}, flag {names.flag!r}"
    if created:
        return f"created {shown}; {names_used}"
    asked = " ".join(keys or [])
    differs = (
        f" (not the --key {asked} asked for: DescribeTable is the source of truth)"
        if keys and asked != describe_key(table)
        else ""
    )
    return f"found {shown}{differs}: following it as it is; {names_used}"


def follow_problem(table: dict[str, Any], stage: str, names: AttributeNames) -> str | None:
    """Why `make run` can't follow this table (no stream, or the flag is a key attribute), or None."""
    from localdev.dynamodb_local import stream_arn_of

    name = table["TableName"]
    if not stream_arn_of(table):
        return f"table {name} has no stream; turn NEW_AND_OLD_IMAGES on for it (or give another --table)"
    if conflict := attribute_conflict([key["AttributeName"] for key in table["KeySchema"]], names):
        return f"stage {stage}: {conflict}"
    return None


def changed(client: Any, table_name: str, now: str | None, stage: str, names: AttributeNames, endpoint: str) -> bool:
    """Say in one line what became of the followed table's stream (and the put-item line for a new table's key);
    whether to follow its stream now."""
    from localdev.dynamodb_local import REGION

    stamp = time.strftime("%H:%M:%S")
    if now is None:
        print(f"[{stamp}] table {table_name} was deleted: waiting for a table of that name to follow", flush=True)
        return False
    table = client.describe_table(TableName=table_name)["Table"]
    if problem := follow_problem(table, stage, names):
        print(f"[{stamp}] table {table_name} changed, and can't be followed: {problem}", flush=True)
        return False
    print(
        f"[{stamp}] table {table_name} is new ({describe_table(table)}): following its stream {now} from its start",
        flush=True,
    )
    print(f"  {put_item_command(endpoint, table, REGION, names)}", flush=True)
    return True


def run(args: argparse.Namespace) -> int:
    """Start (or attach to) the engine, ensure the table, and follow its stream until SIGINT or SIGTERM."""
    import boto3

    from localdev.dynamodb_local import (
        CREDENTIALS,
        REGION,
        endpoint_environment,
        open_table,
        stream_arn_of,
        table_definition,
        table_stream,
    )
    from tools.project import chosen_stage
    from tools.stage import require_stage

    # Before the engine starts (Chalice would take any name, with no settings).
    args.stage = require_stage(chosen_stage(args.stage))
    definition = table_definition(args.key, **({"TableName": args.table} if args.table else {}))  # --key checked
    data_dir, checkpoints = args.data_dir.resolve(), args.checkpoints.resolve()
    with ExitStack() as cleanup:
        # Before the port is chosen: a second run on the same data is refused, not moved to another port.
        data_lock = (
            None
            if args.endpoint
            else hold(cleanup, lock_path(data_dir, "data"), f"the data directory {data_dir}", "--data-dir")
        )
        hold(cleanup, lock_path(checkpoints, "checkpoints"), f"the checkpoint file {checkpoints}", "--checkpoints")
        if data_lock is None:
            endpoint, moved_from = args.endpoint, None
        else:
            endpoint, moved_from = start_engine(cleanup, data_dir, args.port, data_lock)
        os.environ.update(endpoint_environment(endpoint))
        session = boto3.session.Session(region_name=REGION, **CREDENTIALS)
        client = session.client("dynamodb", endpoint_url=endpoint)

        from localdev.invoker import ChaliceInvoker
        from localdev.mapping import CheckpointStore, LocalEventSourceMapping, serialized
        from localdev.reconciler_runner import start_reconciler
        from localdev.table_watch import follow_table
        from tools.failure_handling import DEPLOYED_FUNCTION, RECONCILER_MAX_RECEIVES
        from tools.project import load_config

        invoker = ChaliceInvoker(stage=args.stage, quiet=not args.verbose, deployed_overrides=DEPLOYED_FUNCTION)
        cleanup.callback(invoker.close)
        settings = invoker.settings
        # Before a table is made: one keyed by the flag would be refused once created.
        new_key = [key["AttributeName"] for key in definition["KeySchema"]]
        conflict = attribute_conflict(new_key, settings.attributes)
        if conflict and table_stream(client, definition["TableName"]) is None:
            print(f"error: stage {args.stage}: {conflict}", file=sys.stderr)
            return 2
        table, created = open_table(client, definition)
        print(table_line(table, created, args.key, args.stage, settings.attributes), flush=True)
        if problem := follow_problem(table, args.stage, settings.attributes):
            print(f"error: {problem}", file=sys.stderr)
            return 2
        stream_arn = stream_arn_of(table)
        # Once the stage's settings are known to be valid.
        failures = start_failure_queue(cleanup, load_config()["app_name"], args.stage)
        console = sys.stdout  # the summaries arrive while the quiet invoker has stdout redirected
        invoker.collector.on_summary = lambda summary: print(describe_batch(summary), file=console, flush=True)
        checkpoints.parent.mkdir(parents=True, exist_ok=True)
        one_at_a_time = threading.Lock()  # the handler's and the reconciler's calls alike
        reconciler = start_reconciler(
            failures.sqs,
            failures.queue_url,
            failures.endpoint,
            bucket=failures.bucket,
            stage=args.stage,
            quiet=not args.verbose,
            lock=one_at_a_time,
            on_line=lambda line: print(line, file=console, flush=True),
            sweep_every=args.sweep_every or settings.sweep_rate_minutes * 60,
        )
        cleanup.callback(reconciler.close)
        reconciler.schedule.functions.override(STREAM_ARN=stream_arn)  # the sweep's table: the one followed
        os.environ.update(reconciler.environment)
        streams = session.client("dynamodbstreams", endpoint_url=endpoint)
        mappings: list[LocalEventSourceMapping] = []

        def mapping_for(stream: str, recreated: bool) -> LocalEventSourceMapping:
            """The local mapping of one of the table's streams; a recreated table's is read from its first record."""
            mapping = LocalEventSourceMapping.for_stage(
                streams,
                stream,
                # Lanes run in threads; the Chalice test client must be called one at a time.
                serialized(invoker, one_at_a_time),
                settings,
                on_failure=failures.destination(),
                checkpoints=CheckpointStore(checkpoints),
                **({"starting_position": "TRIM_HORIZON"} if recreated else {}),
            )
            mappings.append(mapping)
            return mapping

        mapping = mapping_for(stream_arn, recreated=False)
        if args.endpoint:
            print(f"DynamoDB: {endpoint} (an engine this command did not start: where it keeps its data is unknown)")
        else:
            print(f"DynamoDB Local: {endpoint} (data in {data_dir})")
        print(f"stream {stream_arn}")
        print(
            f"following it as stage {args.stage}: batch size {settings.batch_size}, from "
            f"{settings.starting_position}, batching window {settings.maximum_batching_window_in_seconds} s, "
            f"{mapping.parallelization_factor} batch(es) per shard at once; checkpoints in {checkpoints}"
        )
        print(
            f"failure handling as deployed: bisect {'on' if mapping.bisect else 'off'}, "
            f"{mapping.maximum_retry_attempts} retries, records older than {mapping.maximum_record_age} s discarded, "
            f"partial failures {'reported' if mapping.report_batch_item_failures else 'ignored'}, "
            f"filter {' or '.join(mapping.filter.patterns) or 'none'}"
        )
        print(
            f"discarded batches go to the S3 bucket {failures.bucket} (moto on {failures.endpoint}), whose "
            f"notifications reach {failures.queue_url}, where the reconciler takes them (one line each; after "
            f"{RECONCILER_MAX_RECEIVES} tries: {failures.dead_letter_url}); list them:"
        )
        print(
            f"  AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing aws s3 ls --recursive --region {REGION} "
            f"--endpoint-url {failures.endpoint} s3://{failures.bucket}/"
        )
        print(
            f"the sweep runs every {reconciler.schedule.every:g} s, as its schedule would (--sweep-every SECONDS for "
            f"another); its state: s3://{failures.bucket}/sweep/state.json"
        )
        moved = f" (port {moved_from} was taken: this one is on {endpoint})" if moved_from else ""
        print(f"try, from another terminal{moved}:")
        print(f"  {put_item_command(endpoint, table, REGION, settings.attributes)}")
        # Ctrl-C and SIGTERM finish the batch in hand, then the engine stops cleanly; a second one stops at once.
        with lifecycle.graceful() as stop:
            print("Ctrl-C to stop", flush=True)  # once it does: a Ctrl-C from this line on is a clean stop
            consumer = threading.Thread(target=reconciler.runner.run, args=(stop,), name="reconciler", daemon=True)
            consumer.start()
            follow_table(
                client,
                table["TableName"],
                stream_arn,
                lambda stream, until: (mapping if stream == stream_arn else mapping_for(stream, True)).run(until),
                lambda now: changed(client, table["TableName"], now, args.stage, settings.attributes, endpoint),
                stop,
            )
            consumer.join()
        batches, records, filtered, discarded = (
            sum(getattr(m.stats, name) if name != "discarded_batches" else len(m.stats.discarded_batches)
                for m in mappings)
            for name in ("batches", "records", "filtered", "discarded_batches")
        )  # fmt: skip
        print(
            f"stopped after {batches} batch(es), {records} record(s), {filtered} filtered out, "
            f"{discarded} range(s) discarded; reconciler: {reconciler.runner.stats.received} "
            f"message(s), {reconciler.runner.stats.deleted} finished",
            flush=True,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", help="the Chalice stage whose settings to use (default: the config's only stage)")
    parser.add_argument("--table", help="the table to follow (default: schema/users-table.json's TableName)")
    parser.add_argument(
        "--key",
        action="append",
        help="NAME:TYPE (S, N or B), hash then range, of a table this creates (default: schema/users-table.json's)",
    )
    parser.add_argument("--port", type=int, help=f"DynamoDB Local's port (default {PREFERRED_PORT} if free)")
    parser.add_argument("--data-dir", type=Path, default=STATE_DIR / "dynamodb", help="where DynamoDB Local keeps data")
    parser.add_argument("--endpoint", help="follow an already running DynamoDB Local instead of starting one")
    parser.add_argument("--checkpoints", type=Path, default=STATE_DIR / "checkpoints.json")
    parser.add_argument("--verbose", action="store_true", help="also print the handler's JSON log lines and metrics")
    parser.add_argument(
        "--sweep-every", type=float, help="seconds between the sweep's runs (default: the stage's SWEEP_RATE_MINUTES)"
    )
    args = parser.parse_args(argv)
    with lifecycle.handle_signals():
        # Imported once the handlers are in place (boto3 takes a while): a Ctrl-C while it loads exits cleanly too.
        from localdev.dynamodb_local import key_schema

        try:
            key_schema(args.key or ["Id:S"])
        except ValueError as problem:
            parser.error(str(problem))
        from chalicelib.config import ConfigError
        from localdev.dynamodb_local import EngineFailed, PrerequisiteMissing
        from tools.errors import report_errors
        from tools.stage import UnknownStage

        known = (PrerequisiteMissing, EngineFailed, PortBusy, InUse, ConfigError, UnknownStage)
        return report_errors(lambda: run(args), known)


if __name__ == "__main__":
    sys.exit(main())
