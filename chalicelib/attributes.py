"""The two attribute names the product reads and writes (stage settings, docs/configuration.md), and their rules.

Kept apart from `chalicelib.records` (which re-exports them) so that reading the settings imports no boto3.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

MAX_NAME_BYTES = 255
"""DynamoDB's limit for a key attribute's or an index's projected attribute's name: 255 bytes of UTF-8. Other names
may be longer, but a name within it can serve in any role, so the settings hold both to it."""


@dataclass(frozen=True, slots=True)
class AttributeNames:
    """Where an item keeps its e-mail address, and where the derived flag goes."""

    email: str
    """Read only: the handler never writes it, so it may be a key attribute."""
    flag: str
    """Set and removed by the handler: it can never be a key attribute."""


DEFAULT_ATTRIBUTES = AttributeNames(email="Email", flag="IsPersonalEmail")


def name_problem(name: str) -> str | None:
    """Why `name` can't be a DynamoDB attribute name (non-empty, at most 255 bytes of UTF-8), or None when it can."""
    if not name:
        return "is empty; an attribute name has at least one character"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid Unicode text; an attribute name is UTF-8"
    if size > MAX_NAME_BYTES:
        return f"is {size} bytes of UTF-8; an attribute name here may have at most {MAX_NAME_BYTES}"
    return None


def attribute_conflict(key_names: Iterable[str], attributes: AttributeNames) -> str | None:
    """Why these attribute names can't be used on a table with this key schema (DescribeTable's key attribute names),
    or None when they can: the flag is written, and a key attribute can't be SET or REMOVEd."""
    if attributes.flag == attributes.email:
        return (
            f"EMAIL_ATTRIBUTE and FLAG_ATTRIBUTE are both {attributes.flag!r}: the flag needs an attribute of its own"
        )
    if attributes.flag in tuple(key_names):
        return (
            f"FLAG_ATTRIBUTE {attributes.flag!r} is a key attribute of the table: the handler sets and removes the "
            "flag, and a key can't be changed; name an attribute outside the key (the e-mail may be a key)"
        )
    return None
