"""What reaches the reconciler's queue after a stream batch is discarded, parsed (pure: no I/O).

The stage's on-failure destination is an S3 bucket: Lambda writes one object per discarded batch under
`aws/lambda/<ESM-UUID>/<shardId>/YYYY/MM/DD/<%Y-%m-%dT%H.%M.%S>-<uuid>`, and the bucket's ObjectCreated notification
brings its bucket and key to the queue. The object holds Lambda's invocation record plus `payload`, the whole
invocation event: `payload.Records` are the batch's stream records (recorded from real AWS; tests/on_failure/a03).

Other shapes are accepted as they come, because each has been recorded:
- the invocation record itself (an SQS destination): a pointer to the stream range, no records;
- an SNS notification whose `Message` is that record (an SNS destination; the stage never configures one, but the
  record inside is the same pointer, so it is taken rather than lost);
- S3's `s3:TestEvent`, sent once when the notification is configured: ignored.
Inside the record, `responseContext` may be missing (the record-age shape), `functionError` may be null (after a
partial-failure report), and `timestamp` has milliseconds or whole seconds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import unquote_plus

from chalicelib.records import MalformedRecord, table_name_from_stream_arn

OBJECT_PREFIX = "aws/lambda/"
"""Where Lambda writes a stream mapping's on-failure objects in its S3 destination (recorded on real AWS)."""


class Unusable(ValueError):
    """A message or object the reconciler can't use; the message names a field, never a value (logged, counted and
    deleted: retrying it can never succeed)."""


class MessageKind(StrEnum):
    """What a queue message turned out to be."""

    S3_OBJECTS = "s3_objects"
    RECORD = "record"
    SNS_RECORD = "sns_record"
    TEST_EVENT = "test_event"


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """One on-failure object an S3 notification names."""

    bucket: str
    key: str
    created_at: datetime | None = None
    """The notification's `eventTime`: when Lambda wrote the object, just after it gave up on the batch."""


@dataclass(frozen=True, slots=True)
class FailureRecord:
    """Lambda's invocation record for one discarded DynamoDB stream batch."""

    stream_arn: str
    shard_id: str | None
    start_sequence_number: str | None
    end_sequence_number: str | None
    batch_size: int | None
    condition: str | None
    function_error: str | None
    failed_at: datetime | None
    """The record's `timestamp`: when Lambda gave up on the batch (milliseconds or whole seconds)."""
    payload_records: tuple[Any, ...] | None
    """The batch's stream records from `payload.Records`; None for a pointer (no payload, or an unreadable one)."""
    payload_problem: str | None = None
    """Why a `payload` that was there could not be used."""

    @property
    def table_name(self) -> str:
        """The table whose stream this is."""
        return table_name_from_stream_arn(self.stream_arn)

    def log_fields(self) -> dict[str, Any]:
        """Shard, sequence numbers and condition for the log line (no key, no value)."""
        return {
            "shard_id": self.shard_id,
            "start_sequence_number": self.start_sequence_number,
            "end_sequence_number": self.end_sequence_number,
            "condition": self.condition,
            "function_error": self.function_error,
            "has_payload": self.payload_records is not None,
        }


@dataclass(frozen=True, slots=True)
class Message:
    """One queue message: the objects an S3 notification names, or a record that came by itself."""

    kind: MessageKind
    objects: tuple[ObjectRef, ...] = ()
    record: FailureRecord | None = None


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO 8601 UTC time as Lambda writes it (`...:49.717Z` or `...:49Z`); None if it isn't one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _text(raw: Any, name: str) -> str | None:
    value = raw.get(name) if isinstance(raw, Mapping) else None
    return value if isinstance(value, str) and value else None


def _payload_records(record: Mapping[str, Any]) -> tuple[tuple[Any, ...] | None, str | None]:
    if "payload" not in record:
        return None, None
    payload = record["payload"]
    if not isinstance(payload, Mapping) or not isinstance(payload.get("Records"), list):
        return None, "payload has no Records list"
    return tuple(payload["Records"]), None


def parse_record(record: Any) -> FailureRecord:
    """The discarded batch an invocation record (with or without `payload`) describes; Unusable if it isn't one."""
    if not isinstance(record, Mapping):
        raise Unusable("the record is not a JSON object")
    info = record.get("DDBStreamBatchInfo")
    if not isinstance(info, Mapping):
        if "KinesisBatchInfo" in record:
            raise Unusable("a Kinesis stream's on-failure record, not a DynamoDB stream's")
        raise Unusable("the record has no DDBStreamBatchInfo: not a DynamoDB stream on-failure record")
    stream_arn = info.get("streamArn")
    if not isinstance(stream_arn, str):
        raise Unusable("DDBStreamBatchInfo.streamArn is missing")
    try:
        table_name_from_stream_arn(stream_arn)
    except MalformedRecord:
        raise Unusable("DDBStreamBatchInfo.streamArn is not a DynamoDB stream ARN") from None
    batch_size = info.get("batchSize")
    payload_records, payload_problem = _payload_records(record)
    return FailureRecord(
        stream_arn=stream_arn,
        shard_id=_text(info, "shardId"),
        start_sequence_number=_sequence_number(info, "startSequenceNumber"),
        end_sequence_number=_sequence_number(info, "endSequenceNumber"),
        batch_size=batch_size if type(batch_size) is int else None,
        condition=_text(record.get("requestContext"), "condition"),
        function_error=_text(record.get("responseContext"), "functionError"),
        failed_at=parse_timestamp(record.get("timestamp")),
        payload_records=payload_records,
        payload_problem=payload_problem,
    )


def _sequence_number(info: Mapping[str, Any], name: str) -> str | None:
    value = info.get(name)
    return value if isinstance(value, str) and value.isascii() and value.isdigit() else None


def _json_object(text: Any, what: str) -> Mapping[str, Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        raise Unusable(f"{what} is not JSON") from None
    if not isinstance(value, Mapping):
        raise Unusable(f"{what} is not a JSON object")
    return value


def _s3_objects(records: Sequence[Any]) -> tuple[ObjectRef, ...]:
    objects = []
    for record in records:
        if not isinstance(record, Mapping) or record.get("eventSource") != "aws:s3":
            raise Unusable("a Records entry is not an S3 event notification")
        if not str(record.get("eventName", "")).startswith("ObjectCreated:"):
            continue  # another event on the prefix (a lifecycle expiry, a delete): nothing was discarded
        s3 = record.get("s3")
        bucket = _text(s3.get("bucket") if isinstance(s3, Mapping) else None, "name")
        key = _text(s3.get("object") if isinstance(s3, Mapping) else None, "key")
        if bucket is None or key is None:
            raise Unusable("an S3 event notification has no bucket name or object key")
        # S3 URL-encodes the key in notifications.
        objects.append(ObjectRef(bucket, unquote_plus(key), parse_timestamp(record.get("eventTime"))))
    if not objects:
        raise Unusable("the S3 event notification names no created object")
    return tuple(objects)


def parse_message(body: Any) -> Message:
    """What one queue message is; Unusable (naming a field, never a value) if it is none of the known shapes."""
    message = _json_object(body, "the message body")
    if message.get("Event") == "s3:TestEvent":
        return Message(MessageKind.TEST_EVENT)
    if isinstance(message.get("Records"), list):
        return Message(MessageKind.S3_OBJECTS, objects=_s3_objects(message["Records"]))
    if message.get("Type") == "Notification" and "Message" in message:
        return Message(MessageKind.SNS_RECORD, record=parse_record(_json_object(message["Message"], "SNS Message")))
    return Message(MessageKind.RECORD, record=parse_record(message))


def parse_object(body: bytes) -> FailureRecord:
    """The invocation record an on-failure object holds; Unusable if it isn't one."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Unusable("the object is not UTF-8 text") from None
    return parse_record(_json_object(text, "the object"))
