"""Lambda-shaped DynamoDB stream events, as Lambda's event source mapping delivers them (Chalice's test client has
no generator for these): JSON, so binary values (B, BS, and inside M and L) are base64 text and
ApproximateCreationDateTime is a number of seconds."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from boto3.dynamodb.types import Binary, TypeSerializer

from chalicelib.records import EventName, StreamViewType

_serialize = TypeSerializer().serialize


def to_wire(item: Mapping[str, Any]) -> dict[str, Any]:
    """A Python item (str, Decimal/int, bytes, bool, None, list, dict, set) in DynamoDB JSON as boto3's low-level
    client takes and returns it (binary values as bytes): for requests, not for events."""
    return {name: _serialize(value) for name, value in item.items()}


def _base64(value: Any) -> str:
    raw = value.value if isinstance(value, Binary) else value
    if not isinstance(raw, bytes | bytearray):
        raise TypeError(f"a binary value must be bytes, not {type(raw).__name__}")
    return base64.b64encode(bytes(raw)).decode("ascii")


def value_to_json(value: Mapping[str, Any]) -> dict[str, Any]:
    """One attribute value from boto3's DynamoDB JSON (bytes) to the JSON DynamoDB Streams and Lambda send: B and
    BS as base64 text, through M and L too."""
    [(kind, inner)] = value.items()
    if kind == "B":
        return {"B": _base64(inner)}
    if kind == "BS":
        return {"BS": [_base64(member) for member in inner]}
    if kind == "M":
        return {"M": image_to_json(inner)}
    if kind == "L":
        return {"L": [value_to_json(member) for member in inner]}
    return {kind: inner}


def image_to_json(image: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Keys or an item image from boto3's DynamoDB JSON (bytes) to the JSON form a Lambda event carries."""
    return {name: value_to_json(value) for name, value in image.items()}


def to_event_image(item: Mapping[str, Any]) -> dict[str, Any]:
    """A Python item as a Lambda event's Keys/NewImage/OldImage carry it (TypeSerializer, then binary to base64)."""
    return image_to_json(to_wire(item))


def json_round_trip(event: Any) -> Any:
    """The event as the function receives it after Lambda's JSON serialization; a TypeError if it is not JSON."""
    return json.loads(json.dumps(event))


def keep_images(view_type: StreamViewType, new_image: Any, old_image: Any) -> tuple[Any, Any]:
    """The (new, old) images a stream of `view_type` carries."""
    carries_new = view_type in (StreamViewType.NEW_IMAGE, StreamViewType.NEW_AND_OLD_IMAGES)
    carries_old = view_type in (StreamViewType.OLD_IMAGE, StreamViewType.NEW_AND_OLD_IMAGES)
    return (new_image if carries_new else None), (old_image if carries_old else None)


def lambda_record(stream_record: Mapping[str, Any], stream_arn: str) -> dict[str, Any]:
    """A record from DynamoDB Streams' GetRecords as boto3 returns it (bytes for binary values, a datetime for
    ApproximateCreationDateTime), in the JSON shape Lambda hands to a function."""
    body = dict(stream_record["dynamodb"])
    created = body.get("ApproximateCreationDateTime")
    if isinstance(created, datetime):
        body["ApproximateCreationDateTime"] = int(created.timestamp())
    for part in ("Keys", "NewImage", "OldImage"):
        if part in body:
            body[part] = image_to_json(body[part])
    record = {key: value for key, value in stream_record.items() if key != "dynamodb"}
    record["dynamodb"] = body
    record["eventSourceARN"] = stream_arn
    return json_round_trip(record)


def lambda_event(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The event Lambda sends for a batch of records."""
    return {"Records": records}


class StreamEventFactory:
    """Builds the records one table's stream would carry, with rising sequence numbers, honouring the view type."""

    def __init__(
        self,
        table_name: str = "Users",
        key_names: tuple[str, ...] = ("Id",),
        view_type: StreamViewType = StreamViewType.NEW_AND_OLD_IMAGES,
        region: str = "us-east-1",
        account: str = "123456789012",
        first_sequence_number: int = 100_000_000_000_000_000_000,
    ) -> None:
        self.table_name = table_name
        self.key_names = key_names
        self.view_type = view_type
        self.region = region
        self.stream_arn = f"arn:aws:dynamodb:{region}:{account}:table/{table_name}/stream/2026-01-01T00:00:00.000"
        self._next_sequence_number = first_sequence_number

    def record(
        self,
        event_name: EventName,
        new_item: Mapping[str, Any] | None = None,
        old_item: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One record; the keys come from whichever image is given."""
        item = new_item if new_item is not None else old_item
        if item is None:
            raise ValueError("a record needs at least one image to take its keys from")
        keys = to_event_image({name: item[name] for name in self.key_names})
        new_image, old_image = keep_images(
            self.view_type,
            to_event_image(new_item) if new_item is not None else None,
            to_event_image(old_item) if old_item is not None else None,
        )
        body: dict[str, Any] = {"ApproximateCreationDateTime": 1_767_225_600, "Keys": keys}
        if new_image is not None:
            body["NewImage"] = new_image
        if old_image is not None:
            body["OldImage"] = old_image
        sequence_number = str(self._next_sequence_number)
        self._next_sequence_number += 100
        body["SequenceNumber"] = sequence_number
        body["SizeBytes"] = len(json.dumps([keys, new_image, old_image]))
        body["StreamViewType"] = self.view_type.value
        return {
            "eventID": f"{int(sequence_number):032x}",
            "eventName": event_name.value,
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": self.region,
            "eventSourceARN": self.stream_arn,
            "dynamodb": body,
        }

    def insert(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """The record of a new item."""
        return self.record(EventName.INSERT, new_item=item)

    def modify(self, old_item: Mapping[str, Any], new_item: Mapping[str, Any]) -> dict[str, Any]:
        """The record of a changed item."""
        return self.record(EventName.MODIFY, new_item=new_item, old_item=old_item)

    def remove(self, old_item: Mapping[str, Any]) -> dict[str, Any]:
        """The record of a deleted item."""
        return self.record(EventName.REMOVE, old_item=old_item)

    def event(self, *records: dict[str, Any]) -> dict[str, Any]:
        """A Lambda event holding the records."""
        return lambda_event(list(records))
