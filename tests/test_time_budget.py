"""The batch's time budget (docs/design.md §3): with DynamoDB slow or stalled, the handler answers before Lambda's
deadline, and its answer covers every item it did not write."""

from __future__ import annotations

import time
from urllib.parse import urlparse

import boto3
import pytest
from aws_lambda_powertools import Logger
from chalice.local import LambdaContext

from chalicelib.budget import ANSWER_MARGIN_SECONDS, budget_problem, request_worst_case_seconds
from chalicelib.dynamodb import DynamoDBGateway, client_config
from chalicelib.processor import BatchFailed, StreamProcessor
from chalicelib.records import DEFAULT_ATTRIBUTES
from chalicelib.runtime import SERVICE
from localdev.dynamodb_local import CREDENTIALS, REGION
from localdev.events import StreamEventFactory, to_wire
from localdev.slow_proxy import SlowProxy

ITEMS = 100


def processor_through(proxy: SlowProxy, report_batch_item_failures: bool, concurrency: int = 16) -> StreamProcessor:
    client = boto3.session.Session(region_name=REGION, **CREDENTIALS).client(
        "dynamodb", endpoint_url=proxy.endpoint, config=client_config(max_pool_connections=concurrency)
    )
    return StreamProcessor(
        classify=lambda email: email.endswith("@gmail.com"),
        gateway=DynamoDBGateway(client, DEFAULT_ATTRIBUTES, max_concurrency=concurrency),
        report_batch_item_failures=report_batch_item_failures,
        logger=Logger(service=SERVICE),
    )


def upstream(engine) -> tuple[str, int]:
    url = urlparse(engine.endpoint)
    return url.hostname, url.port


def seed(table, view_type: str = "NEW_AND_OLD_IMAGES"):
    """ITEMS users on gmail, already in the table, and a batch of their INSERT records (each needs a write)."""
    factory = StreamEventFactory(table_name=table.name)
    if view_type != "NEW_AND_OLD_IMAGES":
        factory.view_type = type(factory.view_type)(view_type)
    records = []
    for i in range(ITEMS):
        item = {"Id": f"u{i:03}", "Email": f"u{i}@gmail.com"}
        table.client.put_item(TableName=table.name, Item=to_wire(item))
        records.append(factory.insert(item))
    return factory.event(*records), records


def flagged(table) -> set[str]:
    items = table.client.scan(TableName=table.name, ConsistentRead=True)["Items"]
    return {item["Id"]["S"] for item in items if "IsPersonalEmail" in item}


def summary_line(log_sink) -> dict:
    [line] = [record for record in log_sink.records() if record.get("message") == "batch processed"]
    return line


def test_a_slow_dynamodb_gets_an_answer_in_time_that_covers_every_unwritten_item(engine, make_table, log_sink):
    table = make_table()
    event, records = seed(table)
    context = LambdaContext("sync_is_personal_email", 256, max_runtime_ms=5_000)
    with SlowProxy(upstream(engine), delay=1.0) as proxy:
        # 100 writes are 4 requests of 25, one at a time, each held 1 s or more (more when TCP splits it): the
        # fourth can't end before 4 s, past the 3 s deadline, however the requests are split.
        processor = processor_through(proxy, report_batch_item_failures=True, concurrency=1)
        began = time.monotonic()
        response = processor.handle(event, context)
        answered = time.monotonic() - began
    time.sleep(0.5)  # requests in flight at the deadline may still land: what counts is what the answer covers

    assert answered < 5.0 - ANSWER_MARGIN_SECONDS / 2, f"answered after {answered:.2f} s of a 5 s budget"
    summary = summary_line(log_sink)
    assert summary["out_of_time"] > 0 and summary["failed"] == summary["out_of_time"]
    assert summary["writes"] + summary["failed"] == ITEMS
    [failure] = response["batchItemFailures"]
    retry_from = int(failure["itemIdentifier"])
    sequence_of = {r["dynamodb"]["Keys"]["Id"]["S"]: int(r["dynamodb"]["SequenceNumber"]) for r in records}
    unwritten = set(sequence_of) - flagged(table)
    assert unwritten, "the proxy was too fast for this test to mean anything"
    # Lambda retries from `retry_from`: every item still without its flag must have its record at or after it.
    assert all(sequence_of[item] >= retry_from for item in unwritten)
    # And the retry, with DynamoDB fast again, leaves nothing behind (one request at a time: DynamoDB Local serves
    # one, and on a loaded machine four of 25 statements queued past the 2 s read timeout once in a full run).
    retry = {"Records": [r for r in records if int(r["dynamodb"]["SequenceNumber"]) >= retry_from]}
    with SlowProxy(upstream(engine), delay=0.0) as proxy:
        answer = processor_through(proxy, True, concurrency=1).handle(retry, context_with(30_000))
        assert answer == {"batchItemFailures": []}
    assert flagged(table) == set(sequence_of)


def context_with(milliseconds: int) -> LambdaContext:
    return LambdaContext("sync_is_personal_email", 256, max_runtime_ms=milliseconds)


@pytest.mark.parametrize("view_type", ["NEW_AND_OLD_IMAGES", "KEYS_ONLY"])
def test_a_stalled_dynamodb_still_gets_an_answer_and_a_summary_line(engine, make_table, log_sink, view_type, capsys):
    table = make_table(view_type=view_type)
    event, _ = seed(table, view_type)
    with SlowProxy(upstream(engine), stall=True) as proxy:
        processor = processor_through(proxy, report_batch_item_failures=False)
        began = time.monotonic()
        with pytest.raises(BatchFailed):
            processor.handle(event, context_with(4_000))
        answered = time.monotonic() - began
    with capsys.disabled():
        print(f"\n  stalled DynamoDB ({view_type}), 4 s left: answered (raised) after {answered:.2f} s")
    assert answered < 4.0 - ANSWER_MARGIN_SECONDS / 2
    summary = summary_line(log_sink)
    assert summary["out_of_time"] == ITEMS and summary["failed"] == ITEMS and summary["writes"] == 0
    assert flagged(table) == set()


def test_an_unexpected_error_still_logs_the_summary_line_and_is_raised(engine, make_table, log_sink):
    table = make_table()
    event, _ = seed(table)

    class Broken(Exception):
        pass

    def explode(email: str) -> bool:
        raise Broken("never in the log")

    with SlowProxy(upstream(engine)) as proxy:
        processor = processor_through(proxy, report_batch_item_failures=True)
        processor._classify = explode
        with pytest.raises(Broken):
            processor.handle(event, context_with(10_000))
    [line] = [record for record in log_sink.records() if record.get("message") == "batch processed"]
    assert line["level"] == "ERROR" and line["error"].startswith("Broken at test_time_budget.py:")
    assert line["records"] == ITEMS and line["function_request_id"]
    assert "never in the log" not in log_sink.getvalue()


def test_the_default_stage_fits_its_worst_case_and_a_batch_that_cannot_is_refused():
    assert request_worst_case_seconds() == 3 * (1 + 2) + (1 + 2)
    assert budget_problem(batch_size=100, concurrency=16, writes_per_request=25, lambda_timeout=60) is None
    problem = budget_problem(batch_size=10_000, concurrency=4, writes_per_request=25, lambda_timeout=60)
    assert problem is not None and "BATCH_SIZE=10000" in problem and "WRITE_CONCURRENCY=4" in problem
    assert budget_problem(batch_size=100, concurrency=16, writes_per_request=25, lambda_timeout=20) is not None
