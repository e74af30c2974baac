"""The DynamoDB adapter (DESIGN §3, §4): conditional writes, bounded and concurrent, and consistent reads."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import groupby
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.budget import CONNECT_TIMEOUT_SECONDS, MAX_ATTEMPTS, READ_TIMEOUT_SECONDS, READS_PER_REQUEST
from chalicelib.deadline import NO_DEADLINE, Deadline, chunks, map_until
from chalicelib.planner import Action, Write
from chalicelib.records import EMAIL, FLAG, ItemKey, ItemState, decision_projection, item_state, key_identity

# A child of the Powertools logger ("email-checker"), so these lines come out in the same structured format.
logger = logging.getLogger("email-checker.dynamodb")

WRITES_PER_REQUEST = 1
"""Writes one request carries (the time budget's worst case counts requests)."""
# BatchGetItem's UnprocessedKeys are a partial success that botocore does not retry; a few passes, then failure.
UNPROCESSED_PASSES = 4
UNPROCESSED_BACKOFF_SECONDS = 0.05


class WriteOutcome(StrEnum):
    """How one conditional write ended."""

    APPLIED = "applied"
    SUPERSEDED = "superseded"
    """The condition failed: the item changed or went away, and a newer record for it is on its way."""
    FAILED = "failed"
    """Still failing after botocore's retries: reported so the batch is retried."""
    REJECTED = "rejected"
    """DynamoDB refused the request itself (a key that does not fit the table's schema, a table that is gone):
    a retry can't succeed, so it is counted and logged instead, and the shard goes on."""
    OUT_OF_TIME = "out_of_time"
    """Not written before the batch's deadline (not sent, or still in flight): counted as failed and retried."""


# Errors that say the request can never succeed as it is; everything else is worth retrying.
PERMANENT_ERRORS = frozenset({"ValidationException", "ResourceNotFoundException"})


@dataclass(slots=True)
class ReadResult:
    """What a consistent read found: each read key's state (None: no such item), and the keys DynamoDB refused."""

    states: dict[ItemKey, ItemState | None] = field(default_factory=dict)
    rejected: list[ItemKey] = field(default_factory=list)
    out_of_time: list[ItemKey] = field(default_factory=list)
    """Keys not read before the batch's deadline."""

    def merge(self, other: ReadResult) -> None:
        """Add another read's findings to this one."""
        self.states.update(other.states)
        self.rejected.extend(other.rejected)
        self.out_of_time.extend(other.out_of_time)


def client_config(max_pool_connections: int) -> Config:
    """botocore settings for the function: standard retry mode, each request bounded (`chalicelib.budget`)."""
    return Config(
        retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
        max_pool_connections=max_pool_connections,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        tcp_keepalive=True,
    )


def update_request(write: Write) -> dict[str, Any]:
    """The UpdateItem parameters of one write, conditional on what the decision saw."""
    names = {"#flag": FLAG, "#email": EMAIL, "#key": write.key.attribute_names[0]}
    if write.action is Action.SET:
        return {
            "TableName": write.key.table_name,
            "Key": dict(write.key.wire),
            "UpdateExpression": "SET #flag = :flag",
            # `#email = :email` alone fails on a deleted item too; the existence test says so explicitly.
            "ConditionExpression": "attribute_exists(#key) AND #email = :email",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": {":flag": {"BOOL": bool(write.flag)}, ":email": {"S": write.seen_email}},
        }
    return {
        "TableName": write.key.table_name,
        "Key": dict(write.key.wire),
        "UpdateExpression": "REMOVE #flag",
        "ConditionExpression": "attribute_exists(#key) AND NOT attribute_type(#email, :string)",
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": {":string": {"S": "S"}},
    }


class DynamoDBGateway:
    """Applies a batch's writes and reads with one DynamoDB client and a bounded pool of worker threads."""

    def __init__(self, client: Any, max_concurrency: int = 16) -> None:
        self._client = client
        self._max_concurrency = max_concurrency
        self._pool: ThreadPoolExecutor | None = None

    @property
    def client(self) -> Any:
        """The boto3 DynamoDB client (its event hooks are how tests inject faults)."""
        return self._client

    def apply(self, writes: Sequence[Write], deadline: Deadline = NO_DEADLINE) -> list[WriteOutcome]:
        """Run the writes concurrently (at most `max_concurrency` at once); outcomes in the writes' order.

        None is sent once the deadline has passed, and the answer does not wait past it: those writes are OUT_OF_TIME.
        """
        return self._map(self._apply_one, writes, deadline, lambda _: WriteOutcome.OUT_OF_TIME)

    def _map(self, work: Any, items: Sequence[Any], deadline: Deadline, out_of_time: Any) -> list[Any]:
        if not items:
            return []
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._max_concurrency, thread_name_prefix="ddb")
        results, cut_short = map_until(self._pool, work, items, deadline, out_of_time)
        if cut_short:
            # Requests still in flight hold the workers until their own timeouts: the next batch gets fresh ones.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        return results

    def _apply_one(self, write: Write) -> WriteOutcome:
        try:
            self._client.update_item(**update_request(write))
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code == "ConditionalCheckFailedException":
                return WriteOutcome.SUPERSEDED
            if code in PERMANENT_ERRORS:
                return WriteOutcome.REJECTED
            logger.warning("update_item failed after retries: %s", code)
            return WriteOutcome.FAILED
        except BotoCoreError as error:
            logger.warning("update_item failed after retries: %s", type(error).__name__)
            return WriteOutcome.FAILED
        return WriteOutcome.APPLIED

    def read_states(self, keys: Sequence[ItemKey], deadline: Deadline = NO_DEADLINE) -> ReadResult:
        """The current state of each key by consistent BatchGetItem, requests concurrent and bounded by the deadline;
        keys that could not be read are left out of `states`."""
        requests = [
            (table_name, chunk)
            for table_name, table_keys in groupby(sorted(keys, key=_table_of), key=_table_of)
            for chunk in chunks(table_keys, READS_PER_REQUEST)
        ]
        result = ReadResult()
        for partial in self._map(
            lambda request: self._read_chunk(*request, deadline),
            requests,
            deadline,
            lambda request: ReadResult(out_of_time=list(request[1])),
        ):
            result.merge(partial)
        return result

    def _read_chunk(self, table_name: str, keys: list[ItemKey], deadline: Deadline) -> ReadResult:
        result = ReadResult()
        projection, names = decision_projection(keys[0].attribute_names)
        by_identity = {key.identity: key for key in keys}
        to_read = keys
        for attempt in range(UNPROCESSED_PASSES):
            if attempt:
                time.sleep(UNPROCESSED_BACKOFF_SECONDS * 2**attempt)
            if deadline.expired():
                result.out_of_time.extend(to_read)
                return result
            request = {
                table_name: {
                    "Keys": [dict(key.wire) for key in to_read],
                    "ConsistentRead": True,
                    "ProjectionExpression": projection,
                    "ExpressionAttributeNames": names,
                }
            }
            try:
                response = self._client.batch_get_item(RequestItems=request)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in PERMANENT_ERRORS:
                    result.merge(self._isolate_rejected(table_name, to_read, deadline))
                else:
                    logger.warning(
                        "batch_get_item failed after retries: %s", error.response.get("Error", {}).get("Code")
                    )
                return result
            except BotoCoreError as error:
                logger.warning("batch_get_item failed after retries: %s", type(error).__name__)
                return result
            returned = {}
            for item in response.get("Responses", {}).get(table_name, []):
                identity = key_identity({name: item[name] for name in keys[0].attribute_names})
                returned[identity] = item_state(item)
            unprocessed = response.get("UnprocessedKeys", {}).get(table_name, {}).get("Keys", [])
            unprocessed_identities = {key_identity(wire) for wire in unprocessed}
            for key in to_read:
                if key.identity not in unprocessed_identities:
                    # Processed and not returned: the item does not exist.
                    result.states[key] = returned.get(key.identity)
            to_read = [by_identity[identity] for identity in unprocessed_identities if identity in by_identity]
            if not to_read:
                return result
        return result

    def _isolate_rejected(self, table_name: str, keys: list[ItemKey], deadline: Deadline) -> ReadResult:
        """A refused request names no culprit: halve it until the keys DynamoDB refuses stand alone."""
        if len(keys) == 1:
            return ReadResult(rejected=[keys[0]])
        middle = len(keys) // 2
        result = self._read_chunk(table_name, keys[:middle], deadline)
        result.merge(self._read_chunk(table_name, keys[middle:], deadline))
        return result

    def close(self) -> None:
        """Stop the worker threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _table_of(key: ItemKey) -> str:
    return key.table_name
