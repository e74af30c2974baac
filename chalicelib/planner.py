"""The pure decision (docs/design.md §1, §3): which items need a write, and which write. Knows nothing of boto3."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from chalicelib.records import ChangeRecord, EventName, ItemKey, ItemState

Classify = Callable[[str], bool]


class Action(StrEnum):
    """What one item needs."""

    SET = "SET"
    """Set the flag to the derived value."""
    REMOVE = "REMOVE"
    """Remove the flag: the item has no string `Email`."""


@dataclass(frozen=True, slots=True)
class Write:
    """One conditional write, decided from what a record or a read saw of the item."""

    key: ItemKey
    action: Action
    flag: bool | None
    """The value to SET; None for REMOVE."""
    seen_email: str | None
    """SET is conditional on `Email` still being this string; REMOVE on `Email` still not being a string."""


@dataclass(slots=True)
class KeyRecords:
    """The records of one item in a batch, in stream order: the latest decides, the lowest is reported."""

    key: ItemKey
    sequence_numbers: list[str] = field(default_factory=list)
    latest: ChangeRecord | None = None


@dataclass(slots=True)
class BatchPlan:
    """What a batch needs: writes, keys whose current item must be read, and the items that need nothing."""

    writes: list[Write] = field(default_factory=list)
    reads: list[ItemKey] = field(default_factory=list)
    already_correct: int = 0
    deleted: int = 0
    records_by_key: dict[ItemKey, KeyRecords] = field(default_factory=dict)


def decide(key: ItemKey, state: ItemState, classify: Classify) -> Write | None:
    """The write an item in `state` needs for the invariant to hold, or None when it already holds."""
    if state.email is not None:
        wanted = classify(state.email)
        if state.flag is wanted:
            return None
        return Write(key=key, action=Action.SET, flag=wanted, seen_email=state.email)
    if state.has_flag:
        return Write(key=key, action=Action.REMOVE, flag=None, seen_email=None)
    return None


def collapse(records: Iterable[ChangeRecord]) -> dict[ItemKey, KeyRecords]:
    """Group records by item, keeping every sequence number and the latest record (stream order is per key)."""
    by_key: dict[ItemKey, KeyRecords] = {}
    for record in records:
        group = by_key.get(record.key)
        if group is None:
            group = by_key[record.key] = KeyRecords(record.key)
        group.sequence_numbers.append(record.sequence_number)
        group.latest = record
    return by_key


def plan_batch(records: Sequence[ChangeRecord], classify: Classify) -> BatchPlan:
    """Collapse a batch to one decision per item: a write, a read (no new image), or nothing."""
    plan = BatchPlan(records_by_key=collapse(records))
    for key, group in plan.records_by_key.items():
        latest = group.latest
        assert latest is not None
        if latest.event_name is EventName.REMOVE:
            plan.deleted += 1
        elif latest.new_state is None:
            plan.reads.append(key)
        else:
            _add_decision(plan, decide(key, latest.new_state, classify))
    return plan


def plan_reads(plan: BatchPlan, current: Mapping[ItemKey, ItemState | None], classify: Classify) -> int:
    """Decide the read keys from their current items (None: the item is gone); return how many were gone."""
    gone = 0
    for key in plan.reads:
        if key not in current:
            continue
        state = current[key]
        if state is None:
            gone += 1
        else:
            _add_decision(plan, decide(key, state, classify))
    return gone


def _add_decision(plan: BatchPlan, write: Write | None) -> None:
    if write is None:
        plan.already_correct += 1
    else:
        plan.writes.append(write)


class Drift(StrEnum):
    """How an item breaks the invariant (docs/design.md §1), by what `decide` found: the audit counts each kind."""

    FLAG_WRONG = "flag_wrong"
    """A string `Email` and a BOOL flag of the other value."""
    FLAG_MISSING = "flag_missing"
    """A string `Email` and no flag."""
    FLAG_NOT_BOOL = "flag_not_bool"
    """A string `Email` and a flag of another type (a number 1, a string "true")."""
    FLAG_WITHOUT_EMAIL = "flag_without_email"
    """A flag on an item whose `Email` is absent or not a string."""


def drift_of(state: ItemState, write: Write) -> Drift:
    """The kind of drift `decide` found in an item in `state` when it decided `write`."""
    if write.action is Action.REMOVE:
        return Drift.FLAG_WITHOUT_EMAIL
    if not state.has_flag:
        return Drift.FLAG_MISSING
    return Drift.FLAG_WRONG if state.flag is not None else Drift.FLAG_NOT_BOOL
