"""The reconciler run locally: the failure queue (moto's SQS), fed by the on-failure bucket's ObjectCreated
notifications (moto's S3 sends them as S3 does), consumed as Lambda's SQS event source consumes it, and the sweep on
its schedule, as EventBridge invokes it.

- `ReconcilerRunner` receives one message at a time (batch size 1, short polls), hands it to the app's
  `reconcile_discarded_batches` through `chalice.test.Client` in the SQS event Lambda builds (messageId,
  receiptHandle, body, attributes with ApproximateReceiveCount, eventSourceARN, ...), with the stage's environment
  and a context holding the function's configured timeout. As the deployed event source, it reports batch item
  failures (FunctionResponseTypes ReportBatchItemFailures, tools/failure_handling.RECONCILER_MAPPING, and the
  function's REPORT_BATCH_ITEM_FAILURES on): a message the function names in `batchItemFailures` is left, one it
  doesn't is deleted; a response naming no message of the batch, or an `itemIdentifier` that is empty, null or
  unknown, leaves the whole batch, as does a function that raises (Lambda developer guide, "Handling errors for an
  SQS event source in Lambda", https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-errorhandling.html).
  Without the response type, whatever the function returns deletes the batch. A message left comes back when its
  visibility timeout ends (the one the reconciler set with ChangeMessageVisibility, or the queue's), and the queue's
  RedrivePolicy moves it to the dead-letter queue after maxReceiveCount receives, as SQS does.
- `LocalSchedule` is EventBridge's rule for the scheduled sweep `sweep_table`: every `every` seconds (the stage's
  SWEEP_RATE_MINUTES, or shorter by `make run`'s flag), one call with the scheduled event Lambda hands over, never
  two at once (reserved concurrency 1). A local run is cut short (`run_seconds` after the sweep's margin) so the
  stream handler, which shares the test client's lock, waits seconds, not the function's 15 minutes.

Every client the functions build finds its local engine through the endpoint variables botocore honours
(`environment`): DynamoDB on DynamoDB Local, SQS and S3 on moto. Where this differs from Lambda: one message and one
function call at a time (Lambda runs several pollers and concurrent invocations); the calls share one lock with the
stream handler's, since the test client swaps os.environ for each call.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chalicelib.runtime import SERVICE
from localdev.events import json_round_trip

ROOT = Path(__file__).resolve().parent.parent
RECONCILER_FUNCTION = "reconcile_discarded_batches"
SWEEP_FUNCTION = "sweep_table"
SQS_ATTRIBUTES = ("ApproximateReceiveCount", "SentTimestamp", "SenderId", "ApproximateFirstReceiveTimestamp")
LOCAL_RUN_SECONDS = 3.0
"""What a local sweep run works for after the sweep's margin (chalicelib.sweep.MARGIN_SECONDS)."""


def scheduled_event(region: str, rule_arn: str) -> dict[str, Any]:
    """EventBridge's scheduled event (EventBridge User Guide, "Amazon EventBridge events": scheduled events)."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": rule_arn.split(":")[4],
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [rule_arn],
        "detail": {},
    }


class LocalFunctions:
    """The app's functions called as Lambda calls them, through `chalice.test.Client` with the stage's environment
    and each function's timeout, one call at a time (`lock`, shared with whatever else calls the test client)."""

    def __init__(
        self, stage: str, quiet: bool = True, lock: threading.Lock | None = None, project_dir: Path = ROOT
    ) -> None:
        from app import app
        from localdev.invoker import _StageTimeoutClient

        self.app_name = app.app_name
        self.stage = stage
        self.quiet = quiet
        self.lock = lock or threading.Lock()
        self._client = _StageTimeoutClient(app, stage_name=stage, project_dir=str(project_dir))
        self._client.overrides = {}  # its own: the Lambda test client keeps a reference to it
        self.names = frozenset(app.handler_map)

    def override(self, **variables: str) -> None:
        """Variables set on every function over the stage's (as a deploy sets STREAM_ARN: here, the table followed)."""
        self._client.overrides.update(variables)

    def resolve(self, function_name: str) -> str | None:
        """The app's function a Lambda function name or ARN means (deployed `APP-STAGE-NAME` or the bare name)."""
        name = function_name.rsplit(":function:", 1)[-1].split(":", 1)[0]
        name = name.removeprefix(f"{self.app_name}-{self.stage}-")
        return name if name in self.names else None

    def call(self, function_name: str, event: dict[str, Any], max_runtime_ms: int | None = None) -> Any:
        """Invoke one of the app's functions with the event, through JSON as across Lambda's boundary (with
        `max_runtime_ms`, a run cut short); what it returns (raises what it raises)."""
        event = json_round_trip(event)
        with self.lock:
            sink = io.StringIO() if self.quiet else None
            with contextlib.redirect_stdout(sink) if sink else contextlib.nullcontext():
                return self._client.lambda_.invoke(function_name, event, max_runtime_ms).payload


class LocalSchedule:
    """The sweep's EventBridge rule: `sweep_table` every `every` seconds with the scheduled event, one run at a time,
    each cut to `run_seconds` of work; a run that raises is counted and the next one resumes (as on AWS)."""

    def __init__(
        self,
        functions: LocalFunctions,
        every: float,
        on_result: Callable[[Any], None] | None = None,
        run_seconds: float = LOCAL_RUN_SECONDS,
    ) -> None:
        from chalicelib.sweep import MARGIN_SECONDS

        self.functions = functions
        self.every = every
        self._on_result = on_result
        self._run_ms = int((MARGIN_SECONDS + run_seconds) * 1000)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="local-schedule", daemon=True)
        self.runs = 0
        self.errors = 0
        self._rule = f"arn:aws:events:us-east-1:000000000000:rule/{functions.app_name}-{functions.stage}-sweep"

    def start(self) -> LocalSchedule:
        """Run on the schedule until `stop`."""
        self._thread.start()
        return self

    def run_once(self) -> Any:
        """One run now, as the rule fires it: what the function returned, or the exception it raised."""
        self.runs += 1
        try:
            result = self.functions.call(SWEEP_FUNCTION, scheduled_event("us-east-1", self._rule), self._run_ms)
        except Exception as error:  # Lambda counts it (Errors); the next run resumes from the state kept
            self.errors += 1
            result = error
        if self._on_result is not None:
            self._on_result(result)
        return result

    def _loop(self) -> None:
        while not self._stopping.wait(self.every):
            self.run_once()

    def stop(self) -> None:
        """Finish the run in hand and stop firing."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)


class ReportCollector(logging.Handler):
    """The structured fields of the reconciler's "reconciler message" lines and the sweep's "sweep run" lines, as an
    operator reads them (counts and sequence numbers only)."""

    MESSAGES = ("reconciler message", "sweep run")
    IGNORED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep a reconciler or backfill line's fields."""
        if record.getMessage() in self.MESSAGES:
            fields = {k: v for k, v in vars(record).items() if k not in self.IGNORED and not k.startswith("_")}
            self.lines.append({"message": record.getMessage(), **fields})

    def last(self, message: str, **match: Any) -> dict[str, Any] | None:
        """The latest line of the kind whose fields include `match`."""
        for line in reversed(self.lines):
            if line["message"] == message and all(line.get(k) == v for k, v in match.items()):
                return line
        return None


@dataclass
class RunnerStats:
    """What the runner did."""

    received: int = 0
    deleted: int = 0
    """Messages the function finished: deleted, as Lambda deletes them."""
    failed: int = 0
    """Deliveries that raised: the message stays and comes back after its visibility timeout."""
    reported: int = 0
    """Messages the function named in its partial batch response: they stay, with no function error."""
    outcomes: list[str] = field(default_factory=list)


def reported_failures(response: Any, message_ids: list[str]) -> set[str]:
    """The messages of a batch a function's answer leaves in the queue, as Lambda reads a partial batch response:
    none for no answer, no list or an empty one; the whole batch for an answer or a list of the wrong shape, or an
    `itemIdentifier` that is empty, null or unknown."""
    if response is None or response == {}:
        return set()
    if not isinstance(response, dict):
        return set(message_ids)
    failures = response.get("batchItemFailures")
    if failures is None or failures == []:
        return set()
    if not isinstance(failures, list):
        return set(message_ids)
    named = [failure.get("itemIdentifier") if isinstance(failure, dict) else None for failure in failures]
    if any(identifier not in message_ids for identifier in named):
        return set(message_ids)
    return set(named)


def sqs_event_record(message: dict[str, Any], queue_arn: str) -> dict[str, Any]:
    """One received SQS message as Lambda's SQS event source hands it to a function."""
    attributes = message.get("Attributes", {})
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": {name: attributes[name] for name in SQS_ATTRIBUTES if name in attributes},
        "messageAttributes": {},
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": queue_arn.split(":")[3],
    }


class ReconcilerRunner:
    """Lambda's SQS event source for the reconciler, on the local on-failure queue: batch size 1."""

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        functions: LocalFunctions,
        collector: ReportCollector | None = None,
        on_line: Callable[[str], None] | None = None,
        function_name: str = RECONCILER_FUNCTION,
        wait_seconds: int = 1,
        report_batch_item_failures: bool = True,
    ) -> None:
        self._sqs = sqs
        self.queue_url = queue_url
        self.queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        self._functions = functions
        self._collector = collector
        self._on_line = on_line
        self.function_name = function_name
        self.wait_seconds = wait_seconds
        self.report_batch_item_failures = report_batch_item_failures
        """The event source's FunctionResponseTypes holds ReportBatchItemFailures (the deployed one does)."""
        self.stats = RunnerStats()

    def poll(self, wait_seconds: int | None = None) -> int:
        """Receive at most one message and deliver it; the number received."""
        messages = self._sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=1,
            WaitTimeSeconds=self.wait_seconds if wait_seconds is None else wait_seconds,
            MessageSystemAttributeNames=["All"],
        ).get("Messages", [])
        for message in messages:
            self._deliver(message)
        return len(messages)

    def _deliver(self, message: dict[str, Any]) -> None:
        self.stats.received += 1
        record = sqs_event_record(message, self.queue_arn)
        seen = len(self._collector.lines) if self._collector else 0
        try:
            response = self._functions.call(self.function_name, {"Records": [record]})
        except Exception as error:  # Lambda leaves the message: it comes back when its visibility timeout ends
            self.stats.failed += 1
            kept = f"left in the queue ({type(error).__name__})"
        else:
            if self.report_batch_item_failures and reported_failures(response, [record["messageId"]]):
                self.stats.reported += 1
                kept = "left in the queue (reported)"
            else:
                self._sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
                self.stats.deleted += 1
                kept = "deleted"
        lines = [
            line
            for line in (self._collector.lines[seen:] if self._collector else [])
            if line["message"] == "reconciler message"
        ]
        report = lines[-1] if lines else {}
        self.stats.outcomes.append(str(report.get("outcome", "unknown")))
        if self._on_line is not None:
            self._on_line(describe_message(record, report, kept))

    def in_queue(self) -> int:
        """Messages in the queue, visible or in flight (not the delayed ones)."""
        attributes = self._sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])

    def run(self, stop: Any) -> RunnerStats:
        """Poll until `stop` (anything with `is_set`) is set."""
        from botocore.exceptions import BotoCoreError, ClientError

        while not stop.is_set():
            try:
                self.poll()
            except (BotoCoreError, ClientError) as error:  # the queue is unreachable for now: try again shortly
                if self._on_line is not None:
                    self._on_line(
                        f"[{time.strftime('%H:%M:%S')}] reconciler: the queue failed ({type(error).__name__})"
                    )
                stop.wait(1.0)
        return self.stats

    def drain(self, timeout: float = 60.0) -> RunnerStats:
        """Poll until the queue holds nothing, seen twice 0.2 s apart: the counts are read one after the other, so a
        message whose visibility ends between them can be in neither (seen on moto: a drain that stopped early)."""
        deadline = time.monotonic() + timeout
        empty_since: float | None = None
        while empty_since is None or time.monotonic() - empty_since < 0.2:
            if self.in_queue():
                empty_since = None
            elif empty_since is None:
                empty_since = time.monotonic()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the on-failure queue was not empty within {timeout:.0f} s")
            if not self.poll(wait_seconds=0):
                time.sleep(0.1)
        return self.stats


def describe_message(record: dict[str, Any], report: dict[str, Any], kept: str) -> str:
    """One line per reconciler message: outcome and counts only, never a key or an attribute value."""
    counts = ", ".join(
        f"{report[name]} {name.replace('_', ' ')}"
        for name in (
            "objects",
            "records",
            "malformed",
            "items",
            "fixed",
            "already_correct",
            "gone",
            "superseded",
            "failed",
            "rejected",
        )
        if name in report
    )
    reason = f" ({report['reason']})" if report.get("reason") else ""
    extra = ", urgent sweep requested" if report.get("outcome") == "sweep_requested" else ""
    back = f", back in {report['retry_in_seconds']} s" if report.get("retry_in_seconds") else ""
    return (
        f"[{time.strftime('%H:%M:%S')}] reconciler message {record['messageId']} "
        f"(receive {record['attributes'].get('ApproximateReceiveCount', '?')}): "
        f"{report.get('outcome', 'no report')}{reason}: {counts or 'no counts'}{extra}; {kept}{back}"
    )


def describe_sweep(result: Any) -> str:
    """One line per local sweep run: its pass, mode, percent and counts, and the passes it finished (no key, no
    value). A run that finishes a pass starts the next at 0 %, so the line names the finished one."""
    if isinstance(result, Exception):
        return f"[{time.strftime('%H:%M:%S')}] sweep run failed: {type(result).__name__}"
    pass_number, finished = result.get("pass"), result.get("passes_finished") or 0
    if finished and isinstance(pass_number, int):
        done = f"pass {pass_number - 1}" if finished == 1 else f"passes {pass_number - finished}-{pass_number - 1}"
        progress = f"{done} finished, pass {pass_number} begun ({result.get('mode')})"
    else:
        progress = f"pass {pass_number} ({result.get('mode')}, {result.get('percent')}%)"
    return (
        f"[{time.strftime('%H:%M:%S')}] sweep {progress}: {result.get('scanned')} checked, "
        f"{result.get('written')} fixed, {result.get('failed')} failed; {result.get('outcome')}"
    )


def environment(moto_endpoint: str, bucket: str = "") -> dict[str, str]:
    """The variables that point the reconciler's and the sweep's SQS and S3 clients at moto and name the on-failure
    bucket (which holds the sweep's state); DynamoDB's come from `localdev.dynamodb_local.endpoint_environment`."""
    from chalicelib.runtime import FAILURE_BUCKET_VARIABLE

    variables = {"AWS_ENDPOINT_URL_SQS": moto_endpoint, "AWS_ENDPOINT_URL_S3": moto_endpoint}
    return variables | ({FAILURE_BUCKET_VARIABLE: bucket} if bucket else {})


@dataclass
class LocalReconciler:
    """The running pieces: the runner, the sweep's schedule, and what they log."""

    runner: ReconcilerRunner
    schedule: LocalSchedule
    collector: ReportCollector
    environment: dict[str, str]

    def close(self) -> None:
        """Stop the schedule and stop collecting."""
        self.schedule.stop()
        logging.getLogger(SERVICE).removeHandler(self.collector)


def start_reconciler(
    sqs: Any,
    queue_url: str,
    moto_endpoint: str,
    bucket: str,
    stage: str,
    quiet: bool = True,
    lock: threading.Lock | None = None,
    on_line: Callable[[str], None] | None = None,
    sweep_every: float | None = None,
    project_dir: Path = ROOT,
    report_batch_item_failures: bool = True,
) -> LocalReconciler:
    """The runner for the stage's on-failure queue and the sweep's schedule (every `sweep_every` seconds; None: not
    started, `schedule.run_once()` fires it); the caller applies `environment` to os.environ before the first message
    (the functions' clients are built from it). With `report_batch_item_failures`, as deployed: the event source
    reports batch item failures and the functions run with the deployed REPORT_BATCH_ITEM_FAILURES."""
    from tools.failure_handling import DEPLOYED_FUNCTION

    functions = LocalFunctions(stage=stage, quiet=quiet, lock=lock, project_dir=project_dir)
    if report_batch_item_failures:
        functions.override(**DEPLOYED_FUNCTION)
    collector = ReportCollector()
    logging.getLogger(SERVICE).addHandler(collector)

    def on_result(result: Any) -> None:
        if on_line is not None:
            on_line(describe_sweep(result))

    schedule = LocalSchedule(functions, sweep_every or 0.0, on_result)
    if sweep_every:
        schedule.start()
    runner = ReconcilerRunner(
        sqs, queue_url, functions, collector, on_line, report_batch_item_failures=report_batch_item_failures
    )
    return LocalReconciler(runner, schedule, collector, environment(moto_endpoint, bucket))
