"""python -m bench.stall [--writes 100] [--timeout 60]

How long the handler takes to answer one batch when DynamoDB is slow or has stopped answering, with Lambda's full
time budget: DynamoDB Local behind a loopback proxy that delays every request, or holds it forever. Prints, per case,
when the answer came, how many writes landed and how many were counted out of time (and so retried by Lambda).
"""

from __future__ import annotations

import argparse
import sys
import time
from urllib.parse import urlparse

import boto3
from aws_lambda_powertools import Logger
from chalice.local import LambdaContext

from bench.workload import ATTRIBUTES, EMAIL
from chalicelib.budget import ANSWER_MARGIN_SECONDS, request_worst_case_seconds
from chalicelib.config import Settings
from chalicelib.deadline import Deadline
from chalicelib.dynamodb import DynamoDBGateway, client_config
from chalicelib.processor import BatchReport, StreamProcessor
from chalicelib.runtime import SERVICE
from localdev import lifecycle
from localdev.dynamodb_local import (
    CREDENTIALS,
    REGION,
    DynamoDBLocal,
    EngineFailed,
    PrerequisiteMissing,
    create_table,
)
from localdev.dynamodb_local import table_definition as users_table
from localdev.events import StreamEventFactory, to_wire
from localdev.slow_proxy import SlowProxy

CASES = (
    ("fast (no delay)", 0.0, False),
    ("slow (1 s per request)", 1.0, False),
    ("stalled (never answers)", 0.0, True),
)


def run_case(
    engine: DynamoDBLocal, delay: float, stall: bool, writes: int, timeout_s: int
) -> tuple[float, BatchReport]:
    """One batch of `writes` needed writes through a proxy; (seconds to the answer, the batch's report)."""
    client = engine.client()
    name = f"Stall{time.monotonic_ns()}"
    create_table(client, users_table(TableName=name))
    factory = StreamEventFactory(table_name=name)
    records = []
    for i in range(writes):
        item = {"Id": f"u{i}", EMAIL: f"u{i}@gmail.com"}
        client.put_item(TableName=name, Item=to_wire(item))
        records.append(factory.insert(item))
    url = urlparse(engine.endpoint)
    settings = Settings.from_environ({})
    with SlowProxy((url.hostname, url.port), delay=delay, stall=stall) as proxy:
        proxied = boto3.session.Session(region_name=REGION, **CREDENTIALS).client(
            "dynamodb", endpoint_url=proxy.endpoint, config=client_config(settings.write_concurrency)
        )
        processor = StreamProcessor(
            classify=lambda email: email.endswith("@gmail.com"),
            gateway=DynamoDBGateway(proxied, ATTRIBUTES, max_concurrency=settings.write_concurrency),
            report_batch_item_failures=True,
            logger=Logger(service=SERVICE, stream=open("/dev/null", "w")),  # noqa: SIM115 - process-long
        )
        report = BatchReport()
        context = LambdaContext("sync_is_personal_email", 256, max_runtime_ms=timeout_s * 1000)
        remaining = context.get_remaining_time_in_millis()
        began = time.monotonic()
        processor.process(factory.event(*records), Deadline.from_remaining_ms(remaining, ANSWER_MARGIN_SECONDS), report)
        answered = time.monotonic() - began
    client.delete_table(TableName=name)
    return answered, report


def main(argv: list[str] | None = None) -> int:
    """Run the three cases and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=100, help="writes the batch needs (default 100)")
    parser.add_argument("--timeout", type=int, default=60, help="the function's lambda_timeout in seconds")
    args = parser.parse_args(argv)
    settings = Settings.from_environ({})
    print(
        f"one batch of {args.writes} writes, WRITE_CONCURRENCY {settings.write_concurrency}, lambda_timeout "
        f"{args.timeout} s (answer due by {args.timeout - ANSWER_MARGIN_SECONDS:.0f} s); worst case of one request "
        f"{request_worst_case_seconds():.0f} s"
    )
    try:
        with lifecycle.handle_signals(), DynamoDBLocal() as engine:
            for label, delay, stall in CASES:
                answered, report = run_case(engine, delay, stall, args.writes, args.timeout)
                print(
                    f"  {label:<26} answered after {answered:6.2f} s: {report.writes:4} written, "
                    f"{report.out_of_time:4} out of time, {report.failed:4} failed in all"
                )
    except (PrerequisiteMissing, EngineFailed) as missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
