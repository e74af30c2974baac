"""A model of what clients did to a table, client operations that keep it, and the invariant check
(docs/design.md §1)."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer

from chalicelib.domains import EmailClassifier, personal_domain_set
from localdev.events import to_wire

FLAG = "IsPersonalEmail"
# Strings of every kind the classifier must get right, and values of other types.
EMAILS: list[Any] = [
    "ann@gmail.com",
    "bob@example.com",
    "Cy@OUTLOOK.COM.",
    "dee@hotmail.com",
    "eve@notgmail.com",
    " fay@yahoo.com ",
    "no-at-sign",
    "leser@bücher.de",
    "",
    Decimal(7),
    None,
    ["ann@gmail.com"],
]
KINDS = ("put", "set_email", "set_other", "remove_email", "set_flag", "delete")
_deserialize = TypeDeserializer().deserialize
classify = EmailClassifier(personal_domain_set()).is_personal_email


@dataclass(frozen=True)
class Op:
    """One client operation on one key."""

    kind: str
    key: str
    value: Any = None
    flag: bool | None = None
    """A flag a client puts by hand with the item (right or wrong); the handler owns it from then on."""


@dataclass
class Model:
    """What the clients left in each item, flag aside (None: deleted or never written)."""

    items: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    operations: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def apply(self, op: Op, applied: bool) -> None:
        """Record an operation that DynamoDB applied (a conditional one may not have been)."""
        with self._lock:
            self.operations += 1
            if applied:
                self._apply(op)

    def _apply(self, op: Op) -> None:
        item = self.items.get(op.key)
        if op.kind == "put":
            self.items[op.key] = {"Id": op.key, "Email": op.value, "Nickname": "x"}
        elif op.kind == "delete":
            self.items[op.key] = None
        elif item is not None and op.kind == "set_email":
            item["Email"] = op.value
        elif item is not None and op.kind == "set_other":
            item["Nickname"] = op.value
        elif item is not None and op.kind == "remove_email":
            item.pop("Email", None)


def random_op(rng: random.Random, keys: list[str]) -> Op:
    """A random client operation."""
    kind = rng.choice(KINDS)
    key = rng.choice(keys)
    if kind == "put":
        return Op(kind, key, rng.choice(EMAILS), rng.choice([None, None, True, False]))
    if kind == "set_email":
        return Op(kind, key, rng.choice(EMAILS))
    if kind == "set_other":
        return Op(kind, key, f"other-{rng.randrange(1_000_000)}")
    if kind == "set_flag":
        return Op(kind, key, rng.random() < 0.5)
    return Op(kind, key)


def perform(client: Any, table: str, op: Op, model: Model) -> None:
    """Do the operation as a client would; updates only touch existing items (so the model knows the outcome)."""
    key = to_wire({"Id": op.key})
    applied = True
    try:
        if op.kind == "put":
            item = {"Id": op.key, "Email": op.value, "Nickname": "x"}
            if op.flag is not None:
                item[FLAG] = op.flag
            client.put_item(TableName=table, Item=to_wire(item))
        elif op.kind == "delete":
            client.delete_item(TableName=table, Key=key)
        else:
            expression, values = {
                "set_email": ("SET Email = :v", {":v": op.value}),
                "set_other": ("SET Nickname = :v", {":v": op.value}),
                "remove_email": ("REMOVE Email", {}),
                "set_flag": ("SET IsPersonalEmail = :v", {":v": op.value}),
            }[op.kind]
            request = {
                "TableName": table,
                "Key": key,
                "UpdateExpression": expression,
                "ConditionExpression": "attribute_exists(Id)",
            }
            if values:
                request["ExpressionAttributeValues"] = to_wire(values)
            client.update_item(**request)
    except client.exceptions.ConditionalCheckFailedException:
        applied = False
    model.apply(op, applied)


def scan(client: Any, table: str) -> dict[str, dict[str, Any]]:
    """Every item of the table by Id, deserialized."""
    items: dict[str, dict[str, Any]] = {}
    request: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = client.scan(**request)
        for item in page["Items"]:
            decoded = {name: _deserialize(value) for name, value in item.items()}
            items[decoded["Id"]] = decoded
        if "LastEvaluatedKey" not in page:
            return items
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def violations(actual: dict[str, dict[str, Any]], model: Model, keys: list[str]) -> list[str]:
    """Every way the table differs from the clients' model plus the invariant; empty when all holds."""
    found = []
    for key in keys:
        expected = model.items.get(key)
        item = actual.get(key)
        if expected is None:
            if item is not None:
                found.append(f"{key}: deleted or never written, but present (resurrected)")
            continue
        if item is None:
            found.append(f"{key}: written by a client, but missing")
            continue
        without_flag = {name: value for name, value in item.items() if name != FLAG}
        if without_flag != expected:
            found.append(f"{key}: attributes differ from the clients' last writes")
        email = item.get("Email")
        if isinstance(email, str):
            if item.get(FLAG) is not classify(email):
                found.append(f"{key}: flag {item.get(FLAG)!r} for a string Email that needs {classify(email)!r}")
        elif FLAG in item:
            found.append(f"{key}: flag present although Email is not a string")
    return found
