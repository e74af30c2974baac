"""A model of what clients did to a table, client operations that keep it, and the invariant check
(docs/design.md §1)."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer

from chalicelib.records import DEFAULT_ATTRIBUTES, AttributeNames
from localdev.events import to_wire
from tests.oracle import expected_flag


@dataclass(frozen=True)
class Layout:
    """Where a table's items keep their key, e-mail and flag: the model's string keys mapped onto the table's key,
    and the stage's attribute names. The default is the walkthrough's table (`Id`, `Email`, `IsPersonalEmail`)."""

    key_names: tuple[str, ...] = ("Id",)
    attributes: AttributeNames = DEFAULT_ATTRIBUTES
    other: str = "Nickname"
    """An attribute clients write and the handler must leave alone."""

    def key(self, model_key: str) -> dict[str, Any]:
        """The item's key for a model key: `Id`, or for two key attributes `"<hash>#<number>"` (a numeric range)."""
        if len(self.key_names) == 1:
            return {self.key_names[0]: model_key}
        hash_value, number = model_key.rsplit("#", 1)
        return {self.key_names[0]: hash_value, self.key_names[1]: Decimal(number)}

    def model_key(self, item: dict[str, Any]) -> str:
        """The model key of a (deserialized) item: the inverse of `key`."""
        if len(self.key_names) == 1:
            return item[self.key_names[0]]
        return f"{item[self.key_names[0]]}#{item[self.key_names[1]]}"


DEFAULT_LAYOUT = Layout()
FLAG = DEFAULT_LAYOUT.attributes.flag
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
    "пользователь@mail.ru",
    "",
    Decimal(7),
    None,
    ["ann@gmail.com"],
]
# What clients put in the other attribute: e-mail-like strings too, so a handler reading it would be caught.
OTHERS = ["x", "ann@gmail.com", "bob@example.com", "Cy@OUTLOOK.COM."]
KINDS = ("put", "set_email", "set_other", "remove_email", "set_flag", "delete")
_deserialize = TypeDeserializer().deserialize


@dataclass(frozen=True)
class Op:
    """One client operation on one key."""

    kind: str
    key: str
    value: Any = None
    flag: bool | None = None
    """A flag a client puts by hand with the item (right or wrong); the handler owns it from then on."""
    other: Any = "x"
    """What a put writes into the layout's other attribute."""


@dataclass
class Model:
    """What the clients left in each item, flag aside (None: deleted or never written)."""

    layout: Layout = DEFAULT_LAYOUT
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
        email, other = self.layout.attributes.email, self.layout.other
        if op.kind == "put":
            self.items[op.key] = put_item(self.layout, op)
        elif op.kind == "delete":
            self.items[op.key] = None
        elif item is not None and op.kind == "set_email":
            item[email] = op.value
        elif item is not None and op.kind == "set_other":
            item[other] = op.value
        elif item is not None and op.kind == "remove_email":
            item.pop(email, None)


def put_item(layout: Layout, op: Op) -> dict[str, Any]:
    """The item a put writes, flag aside."""
    return {**layout.key(op.key), layout.attributes.email: op.value, layout.other: op.other}


def random_op(rng: random.Random, keys: list[str]) -> Op:
    """A random client operation."""
    kind = rng.choice(KINDS)
    key = rng.choice(keys)
    if kind == "put":
        return Op(kind, key, rng.choice(EMAILS), rng.choice([None, None, True, False]), rng.choice(OTHERS))
    if kind == "set_email":
        return Op(kind, key, rng.choice(EMAILS))
    if kind == "set_other":
        return Op(kind, key, rng.choice([*OTHERS, f"other-{rng.randrange(1_000_000)}"]))
    if kind == "set_flag":
        return Op(kind, key, rng.random() < 0.5)
    return Op(kind, key)


def perform(client: Any, table: str, op: Op, model: Model) -> None:
    """Do the operation as a client would; updates only touch existing items (so the model knows the outcome)."""
    layout = model.layout
    key = to_wire(layout.key(op.key))
    applied = True
    try:
        if op.kind == "put":
            item = put_item(layout, op)
            if op.flag is not None:
                item[layout.attributes.flag] = op.flag
            client.put_item(TableName=table, Item=to_wire(item))
        elif op.kind == "delete":
            client.delete_item(TableName=table, Key=key)
        else:
            expression, name, values = {
                "set_email": ("SET #n = :v", layout.attributes.email, {":v": op.value}),
                "set_other": ("SET #n = :v", layout.other, {":v": op.value}),
                "remove_email": ("REMOVE #n", layout.attributes.email, {}),
                "set_flag": ("SET #n = :v", layout.attributes.flag, {":v": op.value}),
            }[op.kind]
            request = {
                "TableName": table,
                "Key": key,
                "UpdateExpression": expression,
                "ConditionExpression": "attribute_exists(#k)",
                "ExpressionAttributeNames": {"#n": name, "#k": layout.key_names[0]},
            }
            if values:
                request["ExpressionAttributeValues"] = to_wire(values)
            client.update_item(**request)
    except client.exceptions.ConditionalCheckFailedException:
        applied = False
    model.apply(op, applied)


def scan(client: Any, table: str, layout: Layout = DEFAULT_LAYOUT) -> dict[str, dict[str, Any]]:
    """Every item of the table by its model key (`Id` by default), deserialized."""
    items: dict[str, dict[str, Any]] = {}
    request: dict[str, Any] = {"TableName": table, "ConsistentRead": True}
    while True:
        page = client.scan(**request)
        for item in page["Items"]:
            decoded = {name: _deserialize(value) for name, value in item.items()}
            items[layout.model_key(decoded)] = decoded
        if "LastEvaluatedKey" not in page:
            return items
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def violations(actual: dict[str, dict[str, Any]], model: Model, keys: list[str]) -> list[str]:
    """Every way the table differs from the clients' model plus the invariant; empty when all holds."""
    found = []
    email_name, flag_name = model.layout.attributes.email, model.layout.attributes.flag
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
        without_flag = {name: value for name, value in item.items() if name != flag_name}
        if without_flag != expected:
            found.append(f"{key}: attributes differ from the clients' last writes")
        email = item.get(email_name)
        if isinstance(email, str):
            needed = expected_flag(email)
            if item.get(flag_name) is not needed:
                found.append(f"{key}: flag {item.get(flag_name)!r} for a string e-mail that needs {needed!r}")
        elif flag_name in item:
            found.append(f"{key}: flag present although the e-mail is not a string")
    return found
