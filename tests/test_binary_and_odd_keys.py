"""Binary keys and attributes, and a table keyed by `Email`, end to end through the real stream: DynamoDB Local
table -> stream -> local event source mapping -> Lambda's JSON event -> the handler -> its writes; and the backfill
on such tables. The assertions are the outcome a user sees: the flags in the table, the items in it, the counts."""

from __future__ import annotations

import subprocess
import sys

import pytest
from boto3.dynamodb.types import Binary, TypeDeserializer

from localdev.events import to_wire
from tests.projects import STAGE

FLAG = "IsPersonalEmail"
_deserialize = TypeDeserializer().deserialize


def put(table, **item) -> None:
    table.client.put_item(TableName=table.name, Item=to_wire(item))


def get(table, **key) -> dict | None:
    found = table.client.get_item(TableName=table.name, Key=to_wire(key), ConsistentRead=True).get("Item")
    return None if found is None else {name: _deserialize(value) for name, value in found.items()}


def count(table) -> int:
    return table.client.scan(TableName=table.name, ConsistentRead=True, Select="COUNT")["Count"]


def totals(summaries, *fields) -> dict[str, int]:
    return {name: sum(summary[name] for summary in summaries) for name in fields}


# Binary values of every sort: not UTF-8, empty-looking, and bytes that read as text (and as base64 text).
BINARY_USERS = [
    (b"\x00\x01", "first.person@gmail.com", True),
    (b"\xff\xfe\xfd", "second.person@example.com", False),
    (b"AAE=", "third.person@outlook.com", True),
    (b"user-4", "fourth.person@example.org", False),
]


def test_a_binary_hash_key(make_table, drain):
    table = make_table(keys=(("Blob", "B"),))
    for blob, email, _ in BINARY_USERS:
        put(table, Blob=Binary(blob), Email=email)

    summaries = drain(table)

    for blob, email, personal in BINARY_USERS:
        item = get(table, Blob=Binary(blob))
        assert item is not None and item["Email"] == email
        assert item.get(FLAG) is personal, f"the item keyed {blob!r} has flag {item.get(FLAG)!r}"
    assert count(table) == len(BINARY_USERS), "the handler created an item"
    assert totals(summaries, "malformed", "rejected", "failed") == {"malformed": 0, "rejected": 0, "failed": 0}


def test_a_binary_range_key(make_table, drain):
    table = make_table(keys=(("Tenant", "S"), ("Blob", "B")))
    for tenant in ("t1", "t2"):
        for blob, email, _ in BINARY_USERS:
            put(table, Tenant=tenant, Blob=Binary(blob), Email=email)

    summaries = drain(table)

    for tenant in ("t1", "t2"):
        for blob, _, personal in BINARY_USERS:
            item = get(table, Tenant=tenant, Blob=Binary(blob))
            assert item is not None and item.get(FLAG) is personal, f"{tenant}/{blob!r}: {item!r}"
    assert count(table) == 2 * len(BINARY_USERS)
    assert totals(summaries, "malformed", "rejected", "failed") == {"malformed": 0, "rejected": 0, "failed": 0}


# Emails that are not strings, each with a flag a client set by hand: the invariant wants the flag gone.
NOT_STRINGS = {
    "binary": Binary(b"john@gmail.com"),
    "binary-set": {Binary(b"a@gmail.com"), Binary(b"\x00")},
    "list": ["john@gmail.com", "jane@gmail.com"],
    "map": {"address": "john@gmail.com"},
    "list-holding-binary": ["john@gmail.com", Binary(b"\x00\xff")],
    "map-holding-binary": {"address": "john@gmail.com", "raw": Binary(b"\x01")},
}


@pytest.mark.parametrize("view_type", ["NEW_AND_OLD_IMAGES", "KEYS_ONLY"])
def test_an_email_that_is_not_a_string_loses_its_hand_set_flag(make_table, drain, view_type):
    table = make_table(view_type=view_type)
    for item_id, email in NOT_STRINGS.items():
        put(table, Id=item_id, Email=email, IsPersonalEmail=True)
    put(table, Id="control", Email="control@gmail.com", IsPersonalEmail=False)

    drain(table)

    left = {item_id: get(table, Id=item_id).get(FLAG) for item_id in NOT_STRINGS}
    assert left == dict.fromkeys(NOT_STRINGS), f"flags left on items whose Email is not a string: {left}"
    assert get(table, Id="control")[FLAG] is True
    assert count(table) == len(NOT_STRINGS) + 1


EMAIL_KEYED = [
    ("first.person@gmail.com", None, True),
    ("second.person@example.com", None, False),
    ("third.person@outlook.com", False, True),  # a wrong flag a client set
    ("fourth.person@example.org", True, False),
]


@pytest.mark.parametrize("view_type", ["NEW_AND_OLD_IMAGES", "NEW_IMAGE", "KEYS_ONLY"])
def test_a_table_whose_hash_key_is_email(make_table, drain, view_type):
    """With KEYS_ONLY the handler reads each current item (a consistent BatchGetItem) before deciding."""
    table = make_table(keys=(("Email", "S"),), view_type=view_type)
    for email, flag, _ in EMAIL_KEYED:
        put(table, Email=email, **({} if flag is None else {FLAG: flag}))

    summaries = drain(table)

    flags = {email: (get(table, Email=email) or {}).get(FLAG) for email, _, _ in EMAIL_KEYED}
    assert flags == {email: personal for email, _, personal in EMAIL_KEYED}
    assert count(table) == len(EMAIL_KEYED)
    assert totals(summaries, "malformed", "rejected", "failed") == {"malformed": 0, "rejected": 0, "failed": 0}


def backfill_table(make_table, keyed_by: str):
    """A table with no stream keyed by `Email` or by a binary value, its items' keys, and the flags they must end
    with (items without the flag, or with a wrong one, as items written before the trigger existed)."""
    if keyed_by == "Email":
        table = make_table(keys=(("Email", "S"),), stream=False)
        keys = [{"Email": email} for email, _, _ in EMAIL_KEYED]
        for (_, flag, _), key in zip(EMAIL_KEYED, keys, strict=True):
            put(table, **key, **({} if flag is None else {FLAG: flag}))
        return table, keys, [personal for *_, personal in EMAIL_KEYED]
    table = make_table(keys=(("Blob", "B"),), stream=False)
    keys = [{"Blob": Binary(blob)} for blob, _, _ in BINARY_USERS]
    for (_, email, personal), key in zip(BINARY_USERS, keys, strict=True):
        put(table, **key, Email=email, **({FLAG: not personal} if key["Blob"].value == b"AAE=" else {}))
    return table, keys, [personal for *_, personal in BINARY_USERS]


@pytest.mark.parametrize("keyed_by", ["Email", "binary"])
def test_the_backfill_command_on_a_table_keyed_by_email_or_binary(make_table, project, tmp_path, keyed_by):
    table, keys, wanted = backfill_table(make_table, keyed_by)
    command = [
        sys.executable,
        "-m",
        "tools.backfill",
        "run",
        "--table",
        table.name,
        "--stage",
        STAGE,
        "--segments",
        "2",
    ]
    command += ["--page-size", "3", "--no-progress", "--checkpoint", str(tmp_path / "backfill.json")]

    finished = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=120)

    assert "Traceback" not in finished.stderr, finished.stderr[-2000:]
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "2/2 segments done" in finished.stdout
    assert [(get(table, **key) or {}).get(FLAG) for key in keys] == wanted
    assert count(table) == len(keys)


@pytest.mark.parametrize("keyed_by", ["Email", "binary"])
def test_the_sweep_on_a_table_keyed_by_email_or_binary(make_table, emulator, keyed_by):
    """Through the sweep, whose state object keeps each segment's start key as JSON between pages and runs."""
    from chalicelib import runtime
    from chalicelib.backfill import SegmentWorker
    from chalicelib.config import Settings
    from chalicelib.dynamodb import DynamoDBGateway
    from chalicelib.sweep import StateStore, SweepConfig, Sweeper

    table, keys, wanted = backfill_table(make_table, keyed_by)
    s3 = emulator.client("s3")
    bucket = f"odd-keys-{keyed_by.lower()}-{table.name.lower()[-10:]}"
    s3.create_bucket(Bucket=bucket)
    settings = Settings.from_environ({"PERSONAL_DOMAINS_ONLY": "gmail.com,outlook.com"})
    gateway = DynamoDBGateway(table.client, settings.attributes)
    worker = SegmentWorker(table.client, gateway, runtime.classifier_for(settings).is_personal_email)
    store = StateStore(s3, bucket)
    sweep = Sweeper(table.client, worker, store, table.name, SweepConfig(segments=2, page_items=3, margin_seconds=0))
    runs = 0
    while (store.load()[0] is None or store.load()[0].pass_number < 2) and runs < 20:
        sweep.run(lambda: 60_000)
        runs += 1
    assert store.load()[0].pass_number == 2  # one whole pass, resumed from the keys kept in the state
    assert [(get(table, **key) or {}).get(FLAG) for key in keys] == wanted
    assert count(table) == len(keys)
