"""python -m bench.batch_writes [--writes N] [--runs N]

The client CPU of one batch's conditional writes: the gateway's BatchExecuteStatement path (25 statements a request)
against the per-item UpdateItem path it replaced (kept here only as the reference), on a DynamoDB Local it starts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.hooks import CallCounter
from bench.workload import ATTRIBUTES, EMAIL, FLAG
from chalicelib.dynamodb import DynamoDBGateway, WriteOutcome, client_config
from chalicelib.planner import Action, Write
from chalicelib.records import item_key
from localdev.dynamodb_local import DynamoDBLocal, create_table, table_definition

CONCURRENCY = 16


def update_item_request(write: Write) -> dict[str, Any]:
    """The UpdateItem parameters of one write, as the replaced path built them."""
    return {
        "TableName": write.key.table_name,
        "Key": dict(write.key.wire),
        "UpdateExpression": "SET #flag = :flag",
        "ConditionExpression": "attribute_exists(#key) AND #email = :email",
        "ExpressionAttributeNames": {"#flag": FLAG, "#email": EMAIL, "#key": write.key.attribute_names[0]},
        "ExpressionAttributeValues": {":flag": {"BOOL": bool(write.flag)}, ":email": {"S": write.seen_email}},
    }


def per_item(client: Any, pool: ThreadPoolExecutor) -> Callable[[Sequence[Write]], None]:
    """The replaced path: one UpdateItem a write, `CONCURRENCY` at once."""
    return lambda writes: list(pool.map(lambda write: client.update_item(**update_item_request(write)), writes))


def batched(gateway: DynamoDBGateway) -> Callable[[Sequence[Write]], None]:
    """The gateway's path; a write that is not applied would make the comparison meaningless, so it stops the run."""

    def apply(writes: Sequence[Write]) -> None:
        outcomes = gateway.apply(writes)
        if any(outcome is not WriteOutcome.APPLIED for outcome in outcomes):
            raise RuntimeError(f"not every write was applied: {Counter(outcomes)}")

    return apply


def median_cpu_ms(apply: Callable[[Sequence[Write]], Any], batches: list[list[Write]]) -> float:
    """The median client CPU (every thread of this process) of applying each batch, in milliseconds."""
    spent = []
    for writes in batches:
        started = time.process_time()
        apply(writes)
        spent.append((time.process_time() - started) * 1000)
    return statistics.median(spent)


def main(argv: list[str] | None = None) -> int:
    """Print the median client CPU and the request count of both paths for one batch of writes."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=100)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args(argv)
    with DynamoDBLocal() as engine:
        client = engine.client(config=client_config(max_pool_connections=CONCURRENCY))
        name = "batch-writes"
        definition = table_definition(
            TableName=name,
            AttributeDefinitions=[{"AttributeName": "Id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "Id", "KeyType": "HASH"}],
            StreamSpecification={"StreamEnabled": False},
        )
        create_table(client, definition)
        for i in range(args.writes):
            client.put_item(TableName=name, Item={"Id": {"S": f"user-{i}"}, EMAIL: {"S": f"user-{i}@gmail.com"}})
        keys = [item_key(name, {"Id": {"S": f"user-{i}"}}) for i in range(args.writes)]
        # Each run flips the flag, so every write changes its item and every condition holds: all are applied.
        batches = [
            [Write(key, Action.SET, run % 2 == 0, f"user-{i}@gmail.com") for i, key in enumerate(keys)]
            for run in range(args.runs + 1)
        ]
        counter = CallCounter(client)
        gateway = DynamoDBGateway(client, ATTRIBUTES, max_concurrency=CONCURRENCY)
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            old, new = per_item(client, pool), batched(gateway)
            old(batches[0]), new(batches[0])  # warm: connections, threads, botocore's caches
            results = {}
            for label, apply in (("UpdateItem, one a write", old), ("BatchExecuteStatement, 25 a request", new)):
                before = counter.requests
                results[label] = (median_cpu_ms(apply, batches[1:]), (counter.requests - before) / args.runs)
        gateway.close()
    print(f"{args.writes} conditional writes, median of {args.runs} runs, client CPU (process_time):")
    for label, (cpu_ms, requests) in results.items():
        print(f"  {label:38} {cpu_ms:7.1f} ms  {requests:5.0f} requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
