"""Can the stream handler run every shard at once? The stream's open shards x the mapping's ParallelizationFactor
against the handler's concurrency: its reserved concurrency if it has one, else the account's unreserved pool.

Lambda runs at most ParallelizationFactor batches of a shard at a time, and one shard's records never wait for
another's, so a stream needs shards x factor concurrent executions. A shard the function can't run is throttled; its
records age until the mapping discards them (MaximumRecordAgeInSeconds). A DynamoDB stream has about one open shard
per table partition, and a partition that splits doubles its shards: a reservation keeps SPLIT_HEADROOM for that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from tools.project import HANDLER

# A reservation sized at `bind` time keeps room for every open shard's partition to split once.
SPLIT_HEADROOM = 2


@dataclass(frozen=True)
class Concurrency:
    """The executions the handler may run at once, and where that limit is set."""

    limit: int | None
    reserved: bool
    note: str = ""


def open_shards(streams_client: Any, stream_arn: str) -> int:
    """How many of the stream's shards are open (no EndingSequenceNumber), over every DescribeStream page."""
    count, start = 0, None
    while True:
        page = streams_client.describe_stream(
            StreamArn=stream_arn, **({"ExclusiveStartShardId": start} if start else {})
        )["StreamDescription"]
        count += sum(1 for shard in page["Shards"] if "EndingSequenceNumber" not in shard["SequenceNumberRange"])
        start = page.get("LastEvaluatedShardId")
        if not start:
            return count


def handler_concurrency(lambda_client: Any, function_name: str) -> Concurrency:
    """The handler's reserved concurrency (GetFunctionConcurrency), or the account's unreserved pool
    (GetAccountSettings) it shares with every other unreserved function; limit None when the account can't be read."""
    reserved = lambda_client.get_function_concurrency(FunctionName=function_name).get("ReservedConcurrentExecutions")
    if reserved is not None:
        return Concurrency(int(reserved), True)
    try:
        limit = lambda_client.get_account_settings()["AccountLimit"]["UnreservedConcurrentExecutions"]
    except (ClientError, BotoCoreError) as error:
        return Concurrency(None, False, f"GetAccountSettings failed: {type(error).__name__}")
    return Concurrency(int(limit), False)


def recommended_reservation(shards: int, factor: int) -> int:
    """A reserved concurrency that runs every shard now and after each of their partitions splits once."""
    return SPLIT_HEADROOM * shards * factor


def concurrency_problem(shards: int, factor: int, concurrency: Concurrency, stage: str) -> str | None:
    """One line saying what to change and where when the handler can't run every shard at once; None when it can."""
    needed = shards * factor
    have = f"{shards} open shards x ParallelizationFactor {factor} = {needed} concurrent batches"
    if concurrency.limit is None:  # unknown is not ok: status must not say `verdict ok` without knowing
        return (
            f"{have}, but the account's unreserved concurrency could not be read ({concurrency.note}): grant "
            f"lambda:GetAccountSettings to whoever runs status, or reserve concurrency for {HANDLER}"
        )
    if concurrency.limit >= needed:
        return None
    if concurrency.reserved:
        return (
            f"{have}, but {HANDLER} reserves {concurrency.limit}: in .chalice/config.json, stages.{stage}."
            f"lambda_functions.{HANDLER}, set reserved_concurrency to at least "
            f"{recommended_reservation(shards, factor)} (or remove it), then deploy again"
        )
    return (
        f"{have}, but the account has {concurrency.limit} unreserved executions: raise the Lambda quota "
        f"'Concurrent executions' (Service Quotas) or lower other functions' reserved concurrency by "
        f"{needed - concurrency.limit}"
    )
