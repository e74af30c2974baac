"""The benchmark's workloads and their bookkeeping, pure: client operations, a model of the table, the invariant.

The mixed workload is a list of rounds of client writes; each round makes at most one batch of stream records, and
the stream is drained after each round. Replaying the rounds on a model of the table, with a perfect handler
fixing every flag after each round, gives the lower bound on writes: an item whose flag is wrong after a round's
client writes needs at least one write, and one write fixes one item.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from chalicelib.records import DEFAULT_ATTRIBUTES

# The bench's attribute names, for both subjects: the baseline (bench/baseline) hard-codes the walkthrough's, and
# `bench.subjects.stage_environment` sets the same ones for email-checker whatever the stage's settings are.
ATTRIBUTES = DEFAULT_ATTRIBUTES
EMAIL = ATTRIBUTES.email
FLAG = ATTRIBUTES.flag
KEY = "Id"
NAME = "Name"
# The walkthrough's three domains: the baseline's list, and email-checker's through PERSONAL_DOMAINS_ONLY.
WALKTHROUGH_DOMAINS = ("gmail.com", "outlook.com", "hotmail.com")
PLAIN_DOMAINS = (*WALKTHROUGH_DOMAINS, "example.com", "acme.io", "corp.example.org")
# Addresses a suffix match gets wrong and exact, normalised matching gets right (docs/design.md §2).
TRICKY_DOMAINS = ("GMAIL.COM", "notgmail.com", "mail.hotmail.com", "outlook.com.", "myhotmail.com")

Item = dict[str, Any]
Table = dict[str, Item]
Classify = Callable[[str], bool]


@dataclass(frozen=True)
class Put:
    """PutItem: the whole item, replacing whatever was there."""

    item: Item


@dataclass(frozen=True)
class SetAttribute:
    """UpdateItem SET of one attribute (creates the item if it is missing, as DynamoDB does)."""

    key: str
    name: str
    value: Any


@dataclass(frozen=True)
class RemoveAttribute:
    """UpdateItem REMOVE of one attribute."""

    key: str
    name: str


@dataclass(frozen=True)
class Delete:
    """DeleteItem."""

    key: str


Operation = Put | SetAttribute | RemoveAttribute | Delete


@dataclass
class MixedWorkload:
    """Rounds of client operations, what each kind counts, and the lower bound on the handler's writes."""

    rounds: list[list[Operation]]
    kinds: Counter[str] = field(default_factory=Counter)
    lower_bound: int = 0
    expected: Table = field(default_factory=dict)
    """The table once every round is done and every flag is right: what a correct handler leaves."""

    @property
    def client_writes(self) -> int:
        """How many client operations the workload holds."""
        return sum(len(round_) for round_ in self.rounds)


def expected_flag(item: Mapping[str, Any], classify: Classify) -> bool | None:
    """The flag the invariant (docs/design.md §1) wants on an item; None when it wants the flag absent."""
    email = item.get(EMAIL)
    return classify(email) if type(email) is str else None


def flag_is_right(item: Mapping[str, Any], classify: Classify) -> bool:
    """Whether the item's `IsPersonalEmail` is what the invariant wants (a BOOL of the right value, or absent)."""
    wanted = expected_flag(item, classify)
    if wanted is None:
        return FLAG not in item
    return type(item.get(FLAG)) is bool and item[FLAG] is wanted


def apply(table: Table, operation: Operation) -> None:
    """Apply one client operation to the model, with DynamoDB's semantics."""
    match operation:
        case Put(item):
            table[item[KEY]] = dict(item)
        case SetAttribute(key, name, value):
            table.setdefault(key, {KEY: key})[name] = value
        case RemoveAttribute(key, name):
            if key in table:
                table[key].pop(name, None)
        case Delete(key):
            table.pop(key, None)


def fix_flags(table: Table, classify: Classify) -> int:
    """What a perfect handler does after a round: every wrong flag made right; the number of items it fixed."""
    fixed = 0
    for item in table.values():
        if not flag_is_right(item, classify):
            wanted = expected_flag(item, classify)
            if wanted is None:
                del item[FLAG]
            else:
                item[FLAG] = wanted
            fixed += 1
    return fixed


def replay(rounds: Iterable[list[Operation]], classify: Classify) -> tuple[int, Table]:
    """The lower bound on writes, and the final table, from replaying the rounds with a perfect handler."""
    table: Table = {}
    lower_bound = 0
    for round_ in rounds:
        for operation in round_:
            apply(table, operation)
        lower_bound += fix_flags(table, classify)
    return lower_bound, table


def violations(expected: Table, actual: Iterable[Item], classify: Classify) -> Counter[str]:
    """How the items a handler left differ from what the invariant and the clients' writes say, by kind."""
    found: Counter[str] = Counter()
    seen = set()
    for item in actual:
        key = item[KEY]
        seen.add(key)
        wanted = expected.get(key)
        if wanted is None:
            found["item brought back after its delete"] += 1
        elif {k: v for k, v in item.items() if k != FLAG} != {k: v for k, v in wanted.items() if k != FLAG}:
            found["another attribute changed"] += 1
        elif not flag_is_right(item, classify):
            if expected_flag(item, classify) is None:
                found["flag present without a string Email"] += 1
            elif FLAG not in item:
                found["flag missing"] += 1
            else:
                found["flag of the wrong value"] += 1
    found["item lost"] += sum(1 for key in expected if key not in seen)
    return +found


def _email(rng: random.Random, number: int, tricky_share: float) -> str:
    domains = TRICKY_DOMAINS if rng.random() < tricky_share else PLAIN_DOMAINS
    return f"user{number}@{rng.choice(domains)}"


def mixed_workload(
    classify: Classify,
    seed_items: int = 200,
    rounds: int = 30,
    operations_per_round: int = 90,
    tricky_share: float = 0.1,
    seed: int = 20260101,
) -> MixedWorkload:
    """Seed rounds of inserts, then rounds mixing inserts, e-mail changes, other-attribute changes, re-puts of whole
    items (with or without the flag a client read), e-mail removals and deletes, a third of each round's operations
    on keys the round already touched (several records per key in one batch). Deterministic for a seed."""
    rng = random.Random(seed)
    model: Table = {}
    numbers = iter(range(1_000_000))
    workload = MixedWorkload(rounds=[])

    def new_item() -> Item:
        number = next(numbers)
        return {KEY: f"user-{number:06d}", EMAIL: _email(rng, number, tricky_share), NAME: f"name {number}"}

    for start in range(0, seed_items, 100):
        workload.rounds.append([Put(new_item()) for _ in range(min(100, seed_items - start))])
        workload.kinds["insert"] += len(workload.rounds[-1])
        for operation in workload.rounds[-1]:
            apply(model, operation)
        fix_flags(model, classify)

    kinds = ("insert", "email change", "other attribute", "re-put", "e-mail removed", "delete")
    weights = (20, 26, 20, 18, 4, 12)
    for _ in range(rounds):
        round_: list[Operation] = []
        touched: list[str] = []
        for _ in range(operations_per_round):
            kind = rng.choices(kinds, weights)[0]
            live = [key for key in touched if key in model]
            if kind != "insert" and not model:
                kind = "insert"
            key = rng.choice(live) if live and rng.random() < 0.35 else rng.choice(sorted(model)) if model else ""
            operation: Operation
            if kind == "insert":
                operation = Put(new_item())
            elif kind == "email change":
                operation = SetAttribute(key, EMAIL, _email(rng, next(numbers), tricky_share))
            elif kind == "other attribute":
                operation = SetAttribute(key, NAME, f"name {next(numbers)}")
            elif kind == "re-put":
                # A client saving the whole item after editing it: half keep the flag they read, half drop it.
                item = {**model[key], NAME: f"name {next(numbers)}"}
                if rng.random() < 0.5:
                    item[EMAIL] = _email(rng, next(numbers), tricky_share)
                if rng.random() < 0.5:
                    item.pop(FLAG, None)
                operation = Put(item)
            elif kind == "e-mail removed":
                operation = RemoveAttribute(key, EMAIL)
            else:
                operation = Delete(key)
            apply(model, operation)
            round_.append(operation)
            touched.append(operation.item[KEY] if isinstance(operation, Put) else operation.key)
            workload.kinds[kind] += 1
        workload.rounds.append(round_)
        fix_flags(model, classify)
    workload.lower_bound, workload.expected = replay(workload.rounds, classify)
    return workload
