"""The once-per-table lock of the reconciler's last-resort backfill: an S3 object `backfill-lock/<table name>`.

The reconciler creates it with a conditional put (`If-None-Match: *`: only one creator wins) holding the run's id,
its start and an expiry; the backfill chain's last invocation deletes it (`If-Match` its ETag: never a newer run's).
A chain that ends early leaves it to expire. A discarded batch whose failure is older than a held run's start is
covered by that run; a newer one waits for it to end (docs/operations.md, "The last resort").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

LOCK_PREFIX = "backfill-lock/"
RUN_FINISHED = "backfill run finished"
CHAIN_ENDED_EARLY = "backfill chain ended before the table was done; the lock is left to expire"


def lock_key(table_name: str) -> str:
    """The lock object's key for a table."""
    return f"{LOCK_PREFIX}{table_name}"


def iso(moment: datetime) -> str:
    """A UTC time as `2026-12-04T09:41:33.123Z`."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class HeldLock:
    """A lock as read back: its run, when that run started and when the lock lapses, and its ETag."""

    run_id: str
    started_at: datetime
    expires_at: datetime
    etag: str


def lock_body(run_id: str, started_at: datetime, expires_at: datetime) -> bytes:
    """The lock object's JSON body."""
    return json.dumps({"run_id": run_id, "started_at": iso(started_at), "expires_at": iso(expires_at)}).encode()


def parse_lock(body: bytes, etag: str) -> HeldLock | None:
    """The lock an object holds; None if it isn't one (then it is treated as lapsed and taken over)."""
    try:
        raw = json.loads(body)
        started = datetime.fromisoformat(raw["started_at"].replace("Z", "+00:00"))
        expires = datetime.fromisoformat(raw["expires_at"].replace("Z", "+00:00"))
        return HeldLock(str(raw["run_id"]), started, expires, etag)
    except (TypeError, ValueError, KeyError, AttributeError):
        return None


class LockDecision(StrEnum):
    """What a discarded batch does about a table's lock."""

    START = "start"
    """No run holds it (or the run's lock lapsed): start one."""
    COVERED = "covered"
    """A run that started after the batch was discarded holds it: that run brings the batch's items right."""
    WAIT = "wait"
    """A run that started before the discard holds it: it may have passed the items already; wait, then start."""


def decide(held: HeldLock | None, failed_at: datetime | None, now: datetime) -> LockDecision:
    """The decision for a batch discarded at `failed_at` (None: unknown, so never covered) given the held lock."""
    if held is None or now >= held.expires_at:
        return LockDecision.START
    if failed_at is not None and held.started_at >= failed_at:
        return LockDecision.COVERED
    return LockDecision.WAIT


def _code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


PRECONDITION_FAILED = frozenset({"PreconditionFailed", "412"})
MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
DENIED = frozenset({"AccessDenied", "403"})


class LockStore:
    """The table locks in one bucket, through an S3 client."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self._s3 = s3
        self.bucket = bucket

    def create(self, table_name: str, body: bytes, replacing: HeldLock | None = None) -> str | None:
        """Put the lock if there is none (or if it is still `replacing`, a lapsed lock); its ETag, None if another
        writer got there first."""
        from botocore.exceptions import ClientError

        condition = {"IfMatch": replacing.etag} if replacing is not None else {"IfNoneMatch": "*"}
        try:
            response = self._s3.put_object(
                Bucket=self.bucket, Key=lock_key(table_name), Body=body, ContentType="application/json", **condition
            )
        except ClientError as error:
            # 412: the lock exists (or changed); 409 ConditionalRequestConflict: a concurrent put, ask again later.
            if _code(error) in PRECONDITION_FAILED or (replacing is not None and _code(error) in MISSING):
                return None
            raise
        return str(response["ETag"])

    def lapse(self, table_name: str, etag: str) -> None:
        """Put the lock `etag` back as a lapsed one (a run that never started): the next reader takes it over."""
        self.create(table_name, lock_body("", _LAPSED, _LAPSED), replacing=HeldLock("", _LAPSED, _LAPSED, etag))

    def read(self, table_name: str) -> HeldLock | None:
        """The held lock; None when there is none. An object that isn't a lock reads as a lapsed one (taken over)."""
        from botocore.exceptions import ClientError

        try:
            response = self._s3.get_object(Bucket=self.bucket, Key=lock_key(table_name))
        except ClientError as error:
            # Without s3:ListBucket (the reconciler has none) S3 answers a missing key with 403, not 404. A lock that
            # does exist is readable (s3:GetObject on backfill-lock/*): the conditional create then says so (412).
            if _code(error) in MISSING or _code(error) in DENIED:
                return None
            raise
        etag = str(response["ETag"])
        return parse_lock(response["Body"].read(), etag) or HeldLock("", _LAPSED, _LAPSED, etag)


_LAPSED = datetime.min.replace(tzinfo=UTC)


def release(s3: Any, lock: Mapping[str, Any]) -> bool:
    """Delete the lock a backfill payload carries, only if it is still that run's (If-Match its ETag); whether it
    was deleted (False: already gone, or a newer run's)."""
    from botocore.exceptions import ClientError

    try:
        s3.delete_object(Bucket=lock["bucket"], Key=lock["key"], IfMatch=lock["etag"])
    except ClientError as error:
        if _code(error) in PRECONDITION_FAILED | MISSING:
            return False
        raise
    return True


def finish_chain(
    payload: Mapping[str, Any],
    result: Mapping[str, Any] | None,
    continues: bool,
    s3: Callable[[], Any],
    logger: Any,
) -> None:
    """After one backfill invocation of a locked run: the chain's last invocation (segment done) releases the lock;
    a chain that ends without finishing (its continuations used up, or an error) leaves it to lapse, and says so."""
    lock = payload.get("lock")
    if not isinstance(lock, Mapping) or continues:
        return
    fields = {"run_id": payload.get("run_id"), "lock_key": lock.get("key"), "lock_expires_at": lock.get("expires_at")}
    if result is not None and result.get("done"):
        released = release(s3(), lock)
        logger.info(RUN_FINISHED, extra={**fields, "lock_released": released})
        return
    if result is None:
        why = "error"  # Lambda may retry this invocation; if its retries fail too, the chain has ended here
    elif payload.get("continuation", 0) >= payload.get("max_continuations", 0):
        why = "continuations used up"
    else:
        why = "no function to continue with"
    logger.warning(
        CHAIN_ENDED_EARLY,
        extra={**fields, "reason": why, "continuation": payload.get("continuation")},
    )


def lifetime(max_continuations: int, invocation_seconds: int, event_age_seconds: int) -> timedelta:
    """How long a run may hold the lock: every invocation of its chain at its longest, plus one asynchronous
    event's longest wait in Lambda's queue."""
    return timedelta(seconds=(max_continuations + 1) * invocation_seconds + event_age_seconds)
