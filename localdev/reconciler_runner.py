"""The reconciler run locally: the failure queue (moto's SQS), fed by the on-failure bucket's ObjectCreated
notifications (moto's S3 sends them as S3 does), consumed as Lambda's SQS event source consumes it, and a local Lambda
Invoke endpoint for the backfill it may start.

- `ReconcilerRunner` receives one message at a time (batch size 1, short polls), hands it to the app's
  `reconcile_discarded_batches` through `chalice.test.Client` in the SQS event Lambda builds (messageId,
  receiptHandle, body, attributes with ApproximateReceiveCount, eventSourceARN, ...), with the stage's environment
  and a context holding the function's configured timeout; it deletes the message when the function returns and
  leaves it when it raises, so it comes back when its visibility timeout ends (the one the reconciler set with
  ChangeMessageVisibility, or the queue's), and the queue's RedrivePolicy moves it to the dead-letter queue after
  maxReceiveCount receives, as SQS does.
- `LocalLambda` answers Lambda's Invoke API on a loopback port: an asynchronous (`Event`) invocation of one of the
  app's functions is queued and run by one worker thread through the same test client, retried twice if it raises
  (Lambda's default for asynchronous invocations, here without the delay). The reconciler's backfill fallback and a
  backfill segment's own continuation reach it through AWS_ENDPOINT_URL_LAMBDA, so a self-continuing backfill goes
  on locally.

Every client the functions build finds its local engine through the endpoint variables botocore honours
(`environment`): DynamoDB on DynamoDB Local, SQS and S3 on moto, Lambda here. Where this differs from
Lambda: one message and one function call at a time (Lambda runs several pollers and concurrent invocations); the
calls share one lock with the stream handler's, since the test client swaps os.environ for each call; asynchronous
invocations still queued when the runner stops are dropped (Lambda's queue keeps them).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from chalicelib.runtime import SERVICE
from localdev.events import json_round_trip

ROOT = Path(__file__).resolve().parent.parent
RECONCILER_FUNCTION = "reconcile_discarded_batches"
ASYNC_ATTEMPTS = 3
"""Lambda runs an asynchronous invocation that raised twice more (MaximumRetryAttempts' default, 2)."""
SQS_ATTRIBUTES = ("ApproximateReceiveCount", "SentTimestamp", "SenderId", "ApproximateFirstReceiveTimestamp")
_INVOKE_PATH = re.compile(r"/2015-03-31/functions/(?P<name>[^/]+)/invocations")


class LocalFunctions:
    """The app's functions called as Lambda calls them, through `chalice.test.Client` with the stage's environment
    and each function's timeout, one call at a time (`lock`, shared with whatever else calls the test client)."""

    def __init__(
        self, stage: str = "dev", quiet: bool = True, lock: threading.Lock | None = None, project_dir: Path = ROOT
    ) -> None:
        from app import app
        from localdev.invoker import _StageTimeoutClient

        self.app_name = app.app_name
        self.stage = stage
        self.quiet = quiet
        self.lock = lock or threading.Lock()
        self._client = _StageTimeoutClient(app, stage_name=stage, project_dir=str(project_dir))
        self.names = frozenset(app.handler_map)

    def resolve(self, function_name: str) -> str | None:
        """The app's function a Lambda function name or ARN means (deployed `APP-STAGE-NAME` or the bare name)."""
        name = function_name.rsplit(":function:", 1)[-1].split(":", 1)[0]
        name = name.removeprefix(f"{self.app_name}-{self.stage}-")
        return name if name in self.names else None

    def call(self, function_name: str, event: dict[str, Any]) -> Any:
        """Invoke one of the app's functions with the event, through JSON as across Lambda's boundary; what it
        returns (raises what it raises)."""
        event = json_round_trip(event)
        with self.lock:
            sink = io.StringIO() if self.quiet else None
            with contextlib.redirect_stdout(sink) if sink else contextlib.nullcontext():
                return self._client.lambda_.invoke(function_name, event).payload


class LocalLambda:
    """Lambda's Invoke API for the app's functions on a loopback port; asynchronous invocations only (a synchronous
    one from inside a function would wait for the lock its caller holds)."""

    def __init__(
        self, functions: LocalFunctions, on_result: Callable[[str, dict[str, Any], Any], None] | None = None
    ) -> None:
        self._functions = functions
        self._on_result = on_result
        self._pending: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._stopping = threading.Event()
        self.invocations = 0
        self.errors = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _InvokeHandler)
        self._server.daemon_threads = True
        self._server.local_lambda = self  # type: ignore[attr-defined]
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name="local-lambda-http", daemon=True),
            threading.Thread(target=self._work, name="local-lambda-worker", daemon=True),
        ]

    def start(self) -> LocalLambda:
        """Answer invocations and run them."""
        for thread in self._threads:
            thread.start()
        return self

    def invoke(
        self, FunctionName: str, InvocationType: str = "RequestResponse", Payload: bytes | str = b""
    ) -> dict[str, int]:
        """Queue an asynchronous invocation (boto3's `invoke`); LookupError for a function the app doesn't have,
        ValueError for another invocation type."""
        name = self._functions.resolve(FunctionName)
        if name is None:
            raise LookupError(f"no function {FunctionName} in the app")
        if InvocationType != "Event":
            raise ValueError("only asynchronous (Event) invocations run locally")
        event = json.loads(Payload or b"{}")
        with self._busy_lock:
            self._busy += 1
        self._pending.put((name, event))
        return {"StatusCode": 202}

    def idle(self) -> bool:
        """No invocation queued or running."""
        with self._busy_lock:
            return self._busy == 0

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                name, event = self._pending.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                for attempt in range(ASYNC_ATTEMPTS):
                    self.invocations += 1
                    try:
                        result = self._functions.call(name, event)
                    except Exception as error:  # Lambda would retry it, then drop it (no destination here)
                        self.errors += 1
                        result = error
                        if attempt + 1 < ASYNC_ATTEMPTS and not self._stopping.is_set():
                            continue
                    if self._on_result is not None:
                        self._on_result(name, event, result)
                    break
            finally:
                with self._busy_lock:
                    self._busy -= 1

    def stop(self) -> int:
        """Finish the invocation in hand, stop answering; the number of queued invocations dropped."""
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=60)
        return self._pending.qsize()


class _InvokeHandler(BaseHTTPRequestHandler):
    """POST /2015-03-31/functions/NAME/invocations, as Lambda's REST API takes it."""

    def do_POST(self) -> None:
        """One Invoke request."""
        local: LocalLambda = self.server.local_lambda  # type: ignore[attr-defined]
        match = _INVOKE_PATH.fullmatch(urlsplit(self.path).path)
        payload = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if match is None:
            return self._error(404, "UnknownOperationException", "not an Invoke request")
        invocation_type = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        try:
            response = local.invoke(unquote(match["name"]), invocation_type, payload)
        except LookupError as problem:
            return self._error(404, "ResourceNotFoundException", str(problem))
        except ValueError as problem:
            return self._error(400, "InvalidParameterValueException", str(problem))
        self.send_response(response["StatusCode"])
        self.send_header("Content-Length", "0")
        self.end_headers()
        return None

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"Type": "User", "message": message}).encode()
        self.send_response(status)
        self.send_header("x-amzn-ErrorType", code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the runner prints one line per message itself."""


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
    """Messages the function finished (returned): deleted, as Lambda deletes them."""
    failed: int = 0
    """Deliveries that raised: the message stays and comes back after its visibility timeout."""
    outcomes: list[str] = field(default_factory=list)


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
            self._functions.call(self.function_name, {"Records": [record]})
        except Exception as error:  # Lambda leaves the message: it comes back when its visibility timeout ends
            self.stats.failed += 1
            kept = f"left in the queue ({type(error).__name__})"
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

    def drain(self, local_lambda: LocalLambda | None = None, timeout: float = 60.0) -> RunnerStats:
        """Poll until the queue holds nothing and the local Lambda has nothing left to run."""
        deadline = time.monotonic() + timeout
        while self.in_queue() or (local_lambda is not None and not local_lambda.idle()):
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


def describe_backfill(name: str, event: dict[str, Any], result: Any) -> str:
    """One line per local backfill invocation: its segment, whether it is done, its counts."""
    if isinstance(result, Exception):
        return f"[{time.strftime('%H:%M:%S')}] {name} failed: {type(result).__name__}"
    shown = ("scanned", "written", "already_correct", "superseded", "failed", "rejected")
    counts = ", ".join(
        f"{result['counts'][name]} {name.replace('_', ' ')}" for name in shown if name in (result.get("counts") or {})
    )
    return (
        f"[{time.strftime('%H:%M:%S')}] {name} segment {result.get('segment')}/{result.get('total_segments')} "
        f"(continuation {event.get('continuation')}): {'done' if result.get('done') else 'continues'}: {counts}"
    )


def environment(moto_endpoint: str, lambda_endpoint: str, bucket: str = "") -> dict[str, str]:
    """The variables that point the reconciler's SQS and S3 clients at moto, its Lambda client (and a backfill
    segment's continuation) at `LocalLambda`, and name the on-failure bucket (the lock's, for a pointer that came
    with none); DynamoDB's come from `localdev.dynamodb_local.endpoint_environment`."""
    from chalicelib.runtime import FAILURE_BUCKET_VARIABLE

    variables = {
        "AWS_ENDPOINT_URL_SQS": moto_endpoint,
        "AWS_ENDPOINT_URL_S3": moto_endpoint,
        "AWS_ENDPOINT_URL_LAMBDA": lambda_endpoint,
    }
    return variables | ({FAILURE_BUCKET_VARIABLE: bucket} if bucket else {})


@dataclass
class LocalReconciler:
    """The running pieces: the runner, the local Lambda, and what they log."""

    runner: ReconcilerRunner
    local_lambda: LocalLambda
    collector: ReportCollector
    environment: dict[str, str]

    def close(self) -> int:
        """Stop the local Lambda and stop collecting; the number of asynchronous invocations dropped."""
        dropped = self.local_lambda.stop()
        logging.getLogger(SERVICE).removeHandler(self.collector)
        return dropped


def start_reconciler(
    sqs: Any,
    queue_url: str,
    moto_endpoint: str,
    bucket: str = "",
    stage: str = "dev",
    quiet: bool = True,
    lock: threading.Lock | None = None,
    on_line: Callable[[str], None] | None = None,
) -> LocalReconciler:
    """The runner for the stage's on-failure queue and the local Lambda, started; the caller applies
    `environment` to os.environ before the first message (the functions' clients are built from it)."""
    functions = LocalFunctions(stage=stage, quiet=quiet, lock=lock)
    collector = ReportCollector()
    logging.getLogger(SERVICE).addHandler(collector)

    def on_result(name: str, event: dict[str, Any], result: Any) -> None:
        if on_line is not None:
            on_line(describe_backfill(name, event, result))

    local_lambda = LocalLambda(functions, on_result).start()
    runner = ReconcilerRunner(sqs, queue_url, functions, collector, on_line)
    return LocalReconciler(runner, local_lambda, collector, environment(moto_endpoint, local_lambda.endpoint, bucket))
