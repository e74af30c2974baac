"""The DynamoDB adapter (docs/design.md §3, §4): conditional writes in PartiQL batches, bounded and
concurrent, and consistent reads."""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from functools import lru_cache
from itertools import groupby
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.budget import CONNECT_TIMEOUT_SECONDS, MAX_ATTEMPTS, READ_TIMEOUT_SECONDS, READS_PER_REQUEST
from chalicelib.deadline import NO_DEADLINE, Deadline, chunks, map_until
from chalicelib.planner import Action, Write
from chalicelib.records import AttributeNames, ItemKey, ItemState, decision_projection, item_state, key_identity

# A child of the Powertools logger ("email-checker"), so these lines come out in the same structured format.
logger = logging.getLogger("email-checker.dynamodb")

BATCH_STATEMENT_LIMIT = 25
"""Statements one BatchExecuteStatement request carries (DynamoDB's limit; the time budget counts requests)."""
# Per-statement transient errors (throttling, a 500) are not retried by botocore: the request itself succeeded.
STATEMENT_ATTEMPTS = 5
STATEMENT_BACKOFF_SECONDS = 0.05
STATEMENT_BACKOFF_CAP_SECONDS = 1.0
# BatchGetItem's UnprocessedKeys are a partial success that botocore does not retry; a few passes, then failure.
UNPROCESSED_PASSES = 4
UNPROCESSED_BACKOFF_SECONDS = 0.05


class WriteOutcome(StrEnum):
    """How one conditional write ended."""

    APPLIED = "applied"
    SUPERSEDED = "superseded"
    """The condition failed: the item changed or went away, and a newer record for it is on its way."""
    FAILED = "failed"
    """Still failing after botocore's retries of the request, or the gateway's of the statement: reported so the
    batch is retried."""
    REJECTED = "rejected"
    """DynamoDB refused the request itself (a key that does not fit the table's schema, a table that is gone):
    a retry can't succeed, so it is counted and logged instead, and the shard goes on."""
    OUT_OF_TIME = "out_of_time"
    """Not written before the batch's deadline (not sent, or still in flight): counted as failed and retried."""
    ACCESS_DENIED = "access_denied"
    """DynamoDB denied the write (its statement or its whole request): an IAM policy, an SCP or a permissions boundary
    to fix. Counted on its own and as failed, and retried like any failure (a denial can be lifted; if it isn't, the
    batch ends on the on-failure path), never rejected: dropping it would leave the item wrong for good."""


@dataclass(slots=True)
class OutcomeTally:
    """How many writes ended each way; OUT_OF_TIME and ACCESS_DENIED count as failed (retried like a failed one)."""

    applied: int = 0
    superseded: int = 0
    rejected: int = 0
    failed: int = 0

    @classmethod
    def of(cls, outcomes: Iterable[WriteOutcome]) -> OutcomeTally:
        """The tally of `outcomes`."""
        tally = cls()
        for outcome in outcomes:
            if outcome is WriteOutcome.APPLIED:
                tally.applied += 1
            elif outcome is WriteOutcome.SUPERSEDED:
                tally.superseded += 1
            elif outcome is WriteOutcome.REJECTED:
                tally.rejected += 1
            else:
                tally.failed += 1
        return tally


# Errors that say the request can never succeed as it is; everything else is worth retrying (AccessDeniedException
# too: it is counted as ACCESS_DENIED, and a policy can be fixed).
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


def client_config(
    max_pool_connections: int,
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    read_timeout: float = READ_TIMEOUT_SECONDS,
    max_attempts: int = MAX_ATTEMPTS,
) -> Config:
    """botocore settings: standard retry mode, each request bounded; by default the function's (`chalicelib.budget`)."""
    return Config(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        max_pool_connections=max_pool_connections,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        tcp_keepalive=True,
    )


def dynamodb_client(max_pool_connections: int, **bounds: float) -> Any:
    """A DynamoDB client with these botocore settings (endpoint and region from the environment); `bounds` are
    `client_config`'s timeouts and attempts, the function's by default."""
    import boto3

    return boto3.session.Session().client("dynamodb", config=client_config(max_pool_connections, **bounds))


def quote_name(name: str) -> str:
    """A table or attribute name as a PartiQL quoted identifier (a double quote inside is doubled)."""
    return '"' + name.replace('"', '""') + '"'


@lru_cache(maxsize=64)
def statement_text(table_name: str, key_names: tuple[str, ...], action: Action, attributes: AttributeNames) -> str:
    """The PartiQL UPDATE of one write: SET takes (flag, *key, seen e-mail), REMOVE takes (*key, "S")."""
    where = " AND ".join(f"{quote_name(name)}=?" for name in key_names)
    # Explicit, though an UPDATE does not create a missing item: the REMOVE condition alone would hold for one.
    where += f" AND attribute_exists({quote_name(key_names[0])})"
    flag, email = quote_name(attributes.flag), quote_name(attributes.email)
    if action is Action.SET:
        return f"UPDATE {quote_name(table_name)} SET {flag}=? WHERE {where} AND {email}=?"
    return f"UPDATE {quote_name(table_name)} REMOVE {flag} WHERE {where} AND NOT attribute_type({email}, ?)"


def batch_statement(write: Write, attributes: AttributeNames) -> dict[str, Any]:
    """One write as a BatchExecuteStatement entry, conditional on what the decision saw; every value a parameter."""
    names = write.key.attribute_names
    key_values = [write.key.wire[name] for name in names]
    if write.action is Action.SET:
        parameters = [{"BOOL": bool(write.flag)}, *key_values, {"S": write.seen_email}]
    else:
        parameters = [*key_values, {"S": "S"}]
    statement = statement_text(write.key.table_name, names, write.action, attributes)
    return {"Statement": statement, "Parameters": parameters}


class _Again(Enum):
    """A statement's transient error: send it again in a later request."""

    AGAIN = "again"


AGAIN = _Again.AGAIN
Verdict = WriteOutcome | _Again

# What each per-statement error code (BatchStatementError.Code) means for the write.
STATEMENT_ERRORS: dict[str, Verdict] = {
    "ConditionalCheckFailed": WriteOutcome.SUPERSEDED,
    "ThrottlingError": AGAIN,
    "ProvisionedThroughputExceeded": AGAIN,
    "RequestLimitExceeded": AGAIN,
    "InternalServerError": AGAIN,
    "TransactionConflict": AGAIN,
    "ValidationError": WriteOutcome.REJECTED,
    "ResourceNotFound": WriteOutcome.REJECTED,
    # Denied by a policy, which can be fixed: retried with the batch as the request-level AccessDeniedException is.
    "AccessDenied": WriteOutcome.ACCESS_DENIED,
    # An item collection (tables with a local index) at its size limit: not transient, but not the write's fault
    # either, so failed as UpdateItem's ItemCollectionSizeLimitExceededException was: the batch is retried.
    "ItemCollectionSizeLimitExceeded": WriteOutcome.FAILED,
    # An UPDATE can't meet an existing item as an INSERT does; unexpected, so failed (and retried by the batch).
    "DuplicateItem": WriteOutcome.FAILED,
}


class DynamoDBGateway:
    """Applies a batch's writes and reads with one DynamoDB client and a bounded pool of worker threads, on the
    stage's two attributes (the names are bound here, once, for every statement and read)."""

    def __init__(self, client: Any, attributes: AttributeNames, max_concurrency: int = 16) -> None:
        self._client = client
        self._attributes = attributes
        self._max_concurrency = max_concurrency
        self._pool: ThreadPoolExecutor | None = None

    @property
    def attributes(self) -> AttributeNames:
        """The e-mail and flag attribute names every write and read uses."""
        return self._attributes

    @property
    def client(self) -> Any:
        """The boto3 DynamoDB client (its event hooks are how tests inject faults)."""
        return self._client

    def apply(self, writes: Sequence[Write], deadline: Deadline = NO_DEADLINE) -> list[WriteOutcome]:
        """Run the writes as BatchExecuteStatement requests of up to 25, at most `max_concurrency` at once, until
        `deadline`; outcomes in the writes' order. At most one write per item (a request can't name a key twice).

        Statements that fail transiently are sent again, regrouped, after a jittered exponential backoff: FAILED
        after `STATEMENT_ATTEMPTS` tries, OUT_OF_TIME if the deadline comes first.
        """
        outcomes: dict[int, WriteOutcome] = {}
        pending = list(range(len(writes)))
        errors: Counter[str] = Counter()
        attempt = 0
        while pending:
            if attempt == STATEMENT_ATTEMPTS:
                outcomes.update(dict.fromkeys(pending, WriteOutcome.FAILED))
                break
            if attempt:
                ceiling = min(STATEMENT_BACKOFF_CAP_SECONDS, STATEMENT_BACKOFF_SECONDS * 2 ** (attempt - 1))
                delay = random.uniform(0, ceiling)  # full jitter: retries of concurrent batches spread out
                if deadline.remaining() <= delay:
                    outcomes.update(dict.fromkeys(pending, WriteOutcome.OUT_OF_TIME))
                    break
                time.sleep(delay)
            attempt += 1
            groups = chunks(pending, BATCH_STATEMENT_LIMIT)
            results = self._map(
                lambda group: self._execute([writes[index] for index in group], deadline),
                groups,
                deadline,
                lambda group: ([WriteOutcome.OUT_OF_TIME] * len(group), Counter()),
            )
            pending = []
            for group, (verdicts, codes) in zip(groups, results, strict=True):
                errors.update(codes)
                for index, verdict in zip(group, verdicts, strict=True):
                    if verdict is AGAIN:
                        pending.append(index)
                    else:
                        outcomes[index] = verdict
        if errors:
            # Codes and counts only: an error's message can quote a key, and a key can be an e-mail address.
            logger.warning("batch_execute_statement errors by code: %s", dict(errors))
        return [outcomes[index] for index in range(len(writes))]

    def _workers(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._max_concurrency, thread_name_prefix="ddb")
        return self._pool

    def _map(self, work: Any, items: Sequence[Any], deadline: Deadline, out_of_time: Any) -> list[Any]:
        """`work` over `items` on the pool until the deadline (`map_until`), abandoning the pool if it was cut short."""
        if not items:
            return []
        results, cut_short = map_until(self._workers(), work, items, deadline, out_of_time)
        if cut_short:
            self._abandon_pool()
        return results

    def _abandon_pool(self) -> None:
        """Leave requests still in flight at the deadline to finish on their own; the next batch gets new workers."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _execute(self, writes: list[Write], deadline: Deadline) -> tuple[list[Verdict], Counter[str]]:
        """One BatchExecuteStatement request: each statement's verdict in order, and the error codes met."""
        codes: Counter[str] = Counter()
        try:
            statements = [batch_statement(write, self._attributes) for write in writes]
            response = self._client.batch_execute_statement(Statements=statements)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in PERMANENT_ERRORS and len(writes) > 1:
                # A refused request names no culprit: halve it until the writes DynamoDB refuses stand alone.
                return self._execute_halves(writes, deadline)
            codes[code] += len(writes)
            return [_request_outcome(code)] * len(writes), codes
        except BotoCoreError as error:
            codes[type(error).__name__] += len(writes)
            return [WriteOutcome.FAILED] * len(writes), codes
        responses = response.get("Responses", [])
        if len(responses) != len(writes):
            codes["ResponseCountMismatch"] += len(writes)
            return [WriteOutcome.FAILED] * len(writes), codes
        verdicts: list[Verdict] = []
        for entry in responses:
            failure = entry.get("Error")
            if failure is None:
                verdicts.append(WriteOutcome.APPLIED)
                continue
            code = failure.get("Code", "")
            if code != "ConditionalCheckFailed":
                codes[code] += 1
            verdicts.append(STATEMENT_ERRORS.get(code, WriteOutcome.FAILED))
        return verdicts, codes

    def _execute_halves(self, writes: list[Write], deadline: Deadline) -> tuple[list[Verdict], Counter[str]]:
        middle = len(writes) // 2
        verdicts: list[Verdict] = []
        codes: Counter[str] = Counter()
        for half in (writes[:middle], writes[middle:]):
            if deadline.expired():
                verdicts.extend([WriteOutcome.OUT_OF_TIME] * len(half))
                continue
            half_verdicts, half_codes = self._execute(half, deadline)
            verdicts.extend(half_verdicts)
            codes.update(half_codes)
        return verdicts, codes

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
        projection, names = decision_projection(keys[0].attribute_names, self._attributes)
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
                returned[identity] = item_state(item, self._attributes)
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


def _request_outcome(code: str) -> WriteOutcome:
    """What a request refused as a whole (after botocore's retries) means for each of its writes."""
    if code in PERMANENT_ERRORS:
        return WriteOutcome.REJECTED
    return WriteOutcome.ACCESS_DENIED if code == "AccessDeniedException" else WriteOutcome.FAILED


def _table_of(key: ItemKey) -> str:
    return key.table_name
