"""Stream records, decoded (docs/design.md §4): the few facts the planner needs, typed, from Lambda's DynamoDB JSON."""

from __future__ import annotations

import binascii
from base64 import b64decode
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from operator import itemgetter
from typing import Any

from boto3.dynamodb.types import TypeDeserializer

# Re-exported: callers take the names from here, with the records they describe.
from chalicelib.attributes import DEFAULT_ATTRIBUTES as DEFAULT_ATTRIBUTES
from chalicelib.attributes import AttributeNames as AttributeNames
from chalicelib.attributes import attribute_conflict as attribute_conflict

# `dict` first: Lambda's records are dicts, and the check against the Mapping ABC alone is several times slower.
_MAPPINGS = (dict, Mapping)
# What the deserializer raises on a value that is not well-formed DynamoDB JSON.
_DECODE_ERRORS = (TypeError, ValueError, KeyError, AttributeError, ArithmeticError)


# boto3's deserializer for every value, as the team's standard says: skipping it for strings and BOOLs (which it
# returns as they are) measured 3.5 us per record and ~30 ms of cold start (the boto3 import) faster, see
# docs/performance.md; not worth a hand-parsed subset of DynamoDB JSON.
_deserialize_wire = TypeDeserializer().deserialize


def from_event_json(value: Mapping[str, Any]) -> Mapping[str, Any]:
    """An attribute value of Lambda's JSON event in the wire form boto3 takes: `B` and `BS` base64 text as bytes.

    Lambda's event is JSON, so binary arrives as base64 text; boto3's client and deserializer take bytes, and a key
    handed back as text would be base64-encoded again and address another item. Values that already hold bytes (a
    record read with boto3's GetRecords) are returned as they are.
    """
    if not isinstance(value, _MAPPINGS) or len(value) != 1:
        return value
    ((tag, inner),) = value.items()
    if tag == "B" and isinstance(inner, str):
        return {"B": _b64(inner)}
    if tag == "BS" and isinstance(inner, list) and any(isinstance(each, str) for each in inner):
        return {"BS": [_b64(each) if isinstance(each, str) else each for each in inner]}
    if tag == "M" and isinstance(inner, _MAPPINGS):
        return {"M": {name: from_event_json(each) for name, each in inner.items()}}
    if tag == "L" and isinstance(inner, list):
        return {"L": [from_event_json(each) for each in inner]}
    return value


def _b64(text: str) -> bytes:
    try:
        return b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedRecord("a binary value is not base64") from None


def _deserialize(value: Mapping[str, Any]) -> Any:
    return _deserialize_wire(from_event_json(value))


class EventName(StrEnum):
    """The change a stream record describes."""

    INSERT = "INSERT"
    MODIFY = "MODIFY"
    REMOVE = "REMOVE"


# EventName by a dict lookup: calling the Enum costs several times as much, once per record.
_EVENT_NAMES = {event_name.value: event_name for event_name in EventName}


class StreamViewType(StrEnum):
    """What a stream puts in each record besides the keys."""

    KEYS_ONLY = "KEYS_ONLY"
    NEW_IMAGE = "NEW_IMAGE"
    OLD_IMAGE = "OLD_IMAGE"
    NEW_AND_OLD_IMAGES = "NEW_AND_OLD_IMAGES"


class MalformedRecord(ValueError):
    """A record that can't be decoded; the message says what is wrong, never an attribute's value."""


@dataclass(frozen=True, slots=True)
class ItemState:
    """The two attributes the decision reads from an item image: the e-mail and the flag (`AttributeNames`)."""

    email: str | None
    """The e-mail when its attribute is a string; None when it is absent or of another type."""
    flag: bool | None
    """The flag when its attribute is a BOOL; None when it is absent or of another type."""
    has_flag: bool
    """Whether the flag's attribute is present at all, whatever its type."""


@dataclass(frozen=True, slots=True)
class ItemKey:
    """An item's primary key in one table: hashable for collapsing, with its wire form for writing."""

    table_name: str
    identity: tuple[tuple[str, Any], ...]
    wire: Mapping[str, Mapping[str, Any]] = field(compare=False, hash=False)

    @property
    def attribute_names(self) -> tuple[str, ...]:
        """The key schema's attribute names, in a stable order."""
        return tuple(name for name, _ in self.identity)


def decision_projection(key_names: tuple[str, ...], attributes: AttributeNames) -> tuple[str, dict[str, str]]:
    """(ProjectionExpression, ExpressionAttributeNames) reading an item's key and the decision's two attributes.

    Each attribute is named once: a table keyed by its e-mail must not project it twice ("Two document paths
    overlap").
    """
    unique = dict.fromkeys((*key_names, attributes.email, attributes.flag))
    names = {f"#a{i}": name for i, name in enumerate(unique)}
    return ", ".join(names), names


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """One decoded stream record."""

    sequence_number: str
    event_name: EventName
    key: ItemKey
    new_state: ItemState | None
    """The new image's state; None when the record carries no new image (REMOVE, KEYS_ONLY, OLD_IMAGE)."""


@lru_cache(maxsize=64)  # every record of a batch carries the same ARN
def table_name_from_stream_arn(arn: str) -> str:
    """`arn:aws:dynamodb:REGION:ACCOUNT:table/NAME/stream/LABEL` -> NAME."""
    parts = arn.split(":", 5)
    resource = parts[5].split("/") if len(parts) == 6 else []
    if len(resource) < 4 or resource[0] != "table" or resource[2] != "stream" or not resource[1]:
        raise MalformedRecord("eventSourceARN is not a DynamoDB stream ARN")
    return resource[1]


def stage_table_name(stream_arn: str | None) -> str | None:
    """The stage's table from its STREAM_ARN, if it has a real one."""
    try:
        return table_name_from_stream_arn(stream_arn) if stream_arn else None
    except MalformedRecord:
        return None


def key_identity(wire_keys: Mapping[str, Mapping[str, Any]]) -> tuple[tuple[str, Any], ...]:
    """A key's attributes as (name, value) pairs sorted by name: the same key always gives the same tuple."""
    pairs = [(name, _deserialize(value)) for name, value in wire_keys.items()]
    if len(pairs) > 1:
        pairs.sort(key=itemgetter(0))
    return tuple(pairs)


def item_key(table_name: str, wire_keys: Mapping[str, Mapping[str, Any]]) -> ItemKey:
    """The key of an item from its key attributes in DynamoDB JSON (any schema: hash or hash+range, S/N/B)."""
    if not isinstance(wire_keys, _MAPPINGS) or not 1 <= len(wire_keys) <= 2:
        raise MalformedRecord("Keys must hold one or two key attributes")
    try:
        wire = {name: from_event_json(value) for name, value in wire_keys.items()}
        identity = key_identity(wire)
    except _DECODE_ERRORS:
        raise MalformedRecord("Keys hold a value that is not DynamoDB JSON") from None
    for _, value in identity:
        # A key is a string, a number or binary; anything else (a list, a map) can't be hashed or written back.
        try:
            hash(value)
        except TypeError:
            raise MalformedRecord("Keys hold a value of a type a key can't have") from None
    return ItemKey(table_name=table_name, identity=identity, wire=wire)


def item_state(image: Mapping[str, Mapping[str, Any]], attributes: AttributeNames) -> ItemState:
    """The decision's inputs from an item image; only the e-mail and the flag attribute are deserialized."""
    if not isinstance(image, _MAPPINGS):
        raise MalformedRecord("an image is not a map")
    email_name, flag_name = attributes.email, attributes.flag
    try:
        email = _deserialize(image[email_name]) if email_name in image else None
        flag = _deserialize(image[flag_name]) if flag_name in image else None
    except _DECODE_ERRORS:
        raise MalformedRecord("the e-mail or the flag attribute is not DynamoDB JSON") from None
    return ItemState(
        email=email if type(email) is str else None,
        # `type(...) is bool`: a number 1 compares equal to True, but it is not a BOOL and must be corrected.
        flag=flag if type(flag) is bool else None,
        has_flag=flag_name in image,
    )


def sequence_number_of(raw: Any) -> str | None:
    """The record's sequence number if it has a readable one, for logging a record that fails to decode."""
    try:
        sequence_number = raw["dynamodb"]["SequenceNumber"]
    except (TypeError, KeyError):
        return None
    return sequence_number if isinstance(sequence_number, str) and sequence_number.isdigit() else None


class FlagInKey(MalformedRecord):
    """A record whose key holds the flag attribute: FLAG_ATTRIBUTE names a key attribute of the record's table, and a
    key can't be written. A setting to fix, not a bad record; never written."""


def decode_record(raw: Mapping[str, Any], attributes: AttributeNames) -> ChangeRecord:
    """Decode one record of a Lambda DynamoDB stream event; raise MalformedRecord if it can't be, FlagInKey if its
    key holds the flag attribute."""
    sequence_number = sequence_number_of(raw)
    if sequence_number is None:
        raise MalformedRecord("dynamodb.SequenceNumber is missing or not a number")
    try:
        event_name = _EVENT_NAMES[raw.get("eventName")]
    except (KeyError, TypeError):
        raise MalformedRecord("eventName is not INSERT, MODIFY or REMOVE") from None
    source_arn = raw.get("eventSourceARN")
    if not isinstance(source_arn, str):
        raise MalformedRecord("eventSourceARN is missing")
    body = raw["dynamodb"]
    wire_keys = body.get("Keys")
    key = item_key(table_name_from_stream_arn(source_arn), wire_keys)
    if attributes.flag in wire_keys:
        raise FlagInKey("FLAG_ATTRIBUTE names a key attribute of the record's table")
    new_image = body.get("NewImage")
    new_state = (
        item_state(new_image, attributes) if new_image is not None and event_name is not EventName.REMOVE else None
    )
    return ChangeRecord(sequence_number=sequence_number, event_name=event_name, key=key, new_state=new_state)
