"""The DynamoDB adapter (DESIGN §3, §4): conditional writes, bounded and concurrent, and consistent reads."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import groupby
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.planner import Action, Write
from chalicelib.records import EMAIL, FLAG, ItemKey, ItemState, item_state, key_identity

# A child of the Powertools logger ("email-checker"), so these lines come out in the same structured format.
logger = logging.getLogger("email-checker.dynamodb")

BATCH_GET_LIMIT = 100
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


def client_config(max_pool_connections: int) -> Config:
    """botocore settings for the function: standard retry mode, timeouts well inside Lambda's 60 s."""
    return Config(
        retries={"mode": "standard", "total_max_attempts": 5},
        max_pool_connections=max_pool_connections,
        connect_timeout=2,
        read_timeout=5,
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

    def apply(self, writes: Sequence[Write]) -> list[WriteOutcome]:
        """Run the writes concurrently (at most `max_concurrency` at once); outcomes in the writes' order."""
        if len(writes) <= 1:
            return [self._apply_one(write) for write in writes]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._max_concurrency, thread_name_prefix="ddb-write")
        return list(self._pool.map(self._apply_one, writes))

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

    def read_states(self, keys: Sequence[ItemKey]) -> ReadResult:
        """The current state of each key by consistent BatchGetItem; keys that could not be read are left out."""
        result = ReadResult()
        for table_name, table_keys in groupby(sorted(keys, key=_table_of), key=_table_of):
            for chunk in _chunks(list(table_keys), BATCH_GET_LIMIT):
                self._read_chunk(table_name, chunk, result)
        return result

    def _read_chunk(self, table_name: str, keys: list[ItemKey], result: ReadResult) -> None:
        names = {f"#k{i}": name for i, name in enumerate(keys[0].attribute_names)}
        names.update({"#email": EMAIL, "#flag": FLAG})
        by_identity = {key.identity: key for key in keys}
        to_read = keys
        for attempt in range(UNPROCESSED_PASSES):
            if attempt:
                time.sleep(UNPROCESSED_BACKOFF_SECONDS * 2**attempt)
            request = {
                table_name: {
                    "Keys": [dict(key.wire) for key in to_read],
                    "ConsistentRead": True,
                    "ProjectionExpression": ", ".join(names),
                    "ExpressionAttributeNames": names,
                }
            }
            try:
                response = self._client.batch_get_item(RequestItems=request)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in PERMANENT_ERRORS:
                    self._isolate_rejected(table_name, to_read, result)
                else:
                    logger.warning(
                        "batch_get_item failed after retries: %s", error.response.get("Error", {}).get("Code")
                    )
                return
            except BotoCoreError as error:
                logger.warning("batch_get_item failed after retries: %s", type(error).__name__)
                return
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
                return

    def _isolate_rejected(self, table_name: str, keys: list[ItemKey], result: ReadResult) -> None:
        """A refused request names no culprit: halve it until the keys DynamoDB refuses stand alone."""
        if len(keys) == 1:
            result.rejected.append(keys[0])
            return
        middle = len(keys) // 2
        self._read_chunk(table_name, keys[:middle], result)
        self._read_chunk(table_name, keys[middle:], result)

    def close(self) -> None:
        """Stop the worker threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _table_of(key: ItemKey) -> str:
    return key.table_name


def _chunks(items: list[ItemKey], size: int) -> Iterator[list[ItemKey]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
