"""The attribute names are the stage's (EMAIL_ATTRIBUTE, FLAG_ATTRIBUTE): on DynamoDB Local, through the real stream,
the local event source mapping and the handler; names PartiQL must quote; a flag that is a key attribute; the backfill.

The adopter's table of issue 15: keyed `tenant` (S) + `member_no` (N), the address in `email`, the flag in
`is_personal`, and an unrelated `Email` attribute that clients write and the handler must never read or write."""

from __future__ import annotations

import os
import random
from decimal import Decimal

import pytest
from boto3.dynamodb.types import TypeDeserializer

from chalicelib.config import Settings
from chalicelib.dynamodb import DynamoDBGateway, WriteOutcome
from chalicelib.planner import Action, Write
from chalicelib.processor import StreamProcessor
from chalicelib.records import AttributeNames, ItemState, attribute_conflict, item_key
from chalicelib.sweep import table_facts
from localdev.events import StreamEventFactory, to_wire
from localdev.mapping import LocalEventSourceMapping
from tests.projects import STAGE, backfill_tool, copy_project
from tests.reliability import EMAILS, Layout, Model, Op, perform, scan, violations
from tests.test_reliability import follow, report, run_clients, settle
from tools.backfill.checkpoint import Checkpoint
from tools.backfill.local import Options, local_worker, run_local

ADOPTER = AttributeNames(email="email", flag="is_personal")
ADOPTER_KEYS = (("tenant", "S"), ("member_no", "N"))
ADOPTER_LAYOUT = Layout(key_names=("tenant", "member_no"), attributes=ADOPTER, other="Email")
ADOPTER_STAGE = {"EMAIL_ATTRIBUTE": ADOPTER.email, "FLAG_ATTRIBUTE": ADOPTER.flag}
_deserialize = TypeDeserializer().deserialize


def adopter_keys(count: int) -> list[str]:
    """Model keys over three tenants, member numbers shared between tenants (the range key tells them apart)."""
    return [f"tenant-{i % 3}#{i // 3}" for i in range(count)]


@pytest.mark.parametrize("view_type", ["NEW_AND_OLD_IMAGES", "KEYS_ONLY"])
def test_a_random_workload_on_the_adopters_table_ends_with_no_violation(
    engine, make_table, stage_invoker, capsys, view_type
):
    """Concurrent clients put, change and delete items, set the unrelated `Email` to e-mail addresses and set the
    flag by hand; the mapping follows the stream meanwhile. With KEYS_ONLY every decision reads the item (the
    projection and the read on the stage's names)."""
    handler = stage_invoker(**ADOPTER_STAGE)
    assert handler.settings.attributes == ADOPTER
    table = make_table(keys=ADOPTER_KEYS, view_type=view_type)
    keys = adopter_keys(18)
    mapping = LocalEventSourceMapping(engine.streams_client(), table.stream_arn, handler, batch_size=25)
    stop, thread = follow(mapping)
    model = run_clients(engine, table, keys, threads=3, operations=120, seed=15, model=Model(ADOPTER_LAYOUT))
    stats = settle(mapping, stop, thread)

    items = scan(table.client, table.name, ADOPTER_LAYOUT)
    found = violations(items, model, keys)
    report(
        capsys,
        f"adopter's table ({view_type}): {model.operations} client operations on {len(keys)} keys, "
        f"{stats.records} stream records in {stats.batches} batches, {len(found)} violations",
    )
    assert found == []
    # The workload did reach every case: flags set both ways, items with the unrelated `Email` the handler ignored.
    assert {item.get("is_personal") for item in items.values()} >= {True, False}
    assert any(isinstance(item.get("Email"), str) and "@" in item["Email"] for item in items.values())
    assert not any("IsPersonalEmail" in item for item in items.values()), "the default flag name was written"
    summaries = handler.collector.summaries
    assert sum(s["writes"] for s in summaries) > 0
    assert sum(s["rejected"] + s["malformed"] + s["flag_in_key"] for s in summaries) == 0


def test_the_unrelated_email_attribute_is_never_read(engine, make_table, stage_invoker):
    """The flag follows `email` only: an item whose `Email` is a personal address and `email` is not is flagged
    false, and one with no `email` at all loses a flag a client set, whatever its `Email` says."""
    handler = stage_invoker(**ADOPTER_STAGE)
    table = make_table(keys=ADOPTER_KEYS)
    rows = {
        ("acme", 1): ({"email": "ann@example.com", "Email": "ann@gmail.com"}, False),
        ("acme", 2): ({"email": "bob@gmail.com", "Email": "bob@example.com"}, True),
        ("acme", 3): ({"Email": "cy@gmail.com", "is_personal": True}, None),
    }
    for (tenant, number), (attributes, _) in rows.items():
        table.client.put_item(TableName=table.name, Item=to_wire({"tenant": tenant, "member_no": number, **attributes}))

    LocalEventSourceMapping(engine.streams_client(), table.stream_arn, handler).drain()

    for (tenant, number), (attributes, flag) in rows.items():
        item = get(table, tenant=tenant, member_no=number)
        assert item.get("is_personal") is flag, f"{tenant}/{number}: {item!r}"
        assert item.get("Email") == attributes["Email"] and "IsPersonalEmail" not in item


def get(table, **key) -> dict:
    found = table.client.get_item(TableName=table.name, Key=to_wire(key), ConsistentRead=True).get("Item")
    assert found is not None, "the item is gone"
    return {name: _deserialize(value) for name, value in found.items()}


# Names PartiQL must quote (a double quote, a dot, a space) and one that is not ASCII; each pair used by the
# statements, the read's projection and the decoding of a record.
QUOTED = [
    AttributeNames(email='e"mail', flag="flag.is personal"),
    AttributeNames(email="correo electrónico", flag='"personal"'),
]


@pytest.mark.parametrize("attributes", QUOTED, ids=["quote-dot-space", "non-ascii-quoted"])
def test_names_that_need_quoting_in_partiql(make_table, attributes):
    table = make_table(keys=(("pk", "S"),), stream=False)
    items = {
        "a": {attributes.email: "ann@gmail.com"},
        "b": {attributes.email: "bob@example.com", attributes.flag: True},
        "c": {attributes.flag: True},  # no e-mail: the flag must go
        "d": {attributes.email: "dee@gmail.com", "Email": "dee@example.com", "IsPersonalEmail": False},
    }
    for pk, attributes_of in items.items():
        table.client.put_item(TableName=table.name, Item=to_wire({"pk": pk, **attributes_of}))
    gateway = DynamoDBGateway(table.client, attributes)
    try:
        read = gateway.read_states([item_key(table.name, to_wire({"pk": pk})) for pk in items])
        states = {key.identity[0][1]: state for key, state in read.states.items()}
        assert states == {
            "a": ItemState(email="ann@gmail.com", flag=None, has_flag=False),
            "b": ItemState(email="bob@example.com", flag=True, has_flag=True),
            "c": ItemState(email=None, flag=True, has_flag=True),
            "d": ItemState(email="dee@gmail.com", flag=None, has_flag=False),
        }
        writes = [
            Write(item_key(table.name, to_wire({"pk": "a"})), Action.SET, True, "ann@gmail.com"),
            Write(item_key(table.name, to_wire({"pk": "b"})), Action.SET, False, "bob@example.com"),
            Write(item_key(table.name, to_wire({"pk": "c"})), Action.REMOVE, None, None),
            Write(item_key(table.name, to_wire({"pk": "d"})), Action.SET, True, "someone.else@gmail.com"),
        ]
        outcomes = gateway.apply(writes)
    finally:
        gateway.close()
    assert outcomes == [WriteOutcome.APPLIED] * 3 + [WriteOutcome.SUPERSEDED]
    flags = {pk: get(table, pk=pk).get(attributes.flag) for pk in items}
    assert flags == {"a": True, "b": False, "c": None, "d": None}
    assert get(table, pk="d") == {"pk": "d", **items["d"]}, "an attribute of the default names was touched"


@pytest.mark.parametrize("attributes", QUOTED, ids=["quote-dot-space", "non-ascii-quoted"])
def test_the_processor_decides_on_quoted_names_from_a_stream_event(make_table, attributes):
    """The records, decoded on the gateway's names: one event with a write of each kind."""
    import logging

    from chalicelib.domains import EmailClassifier, personal_domain_set

    table = make_table(keys=(("pk", "S"),), stream=False)
    factory = StreamEventFactory(table_name=table.name, key_names=("pk",))
    items = [
        {"pk": "a", attributes.email: "ann@gmail.com"},
        {"pk": "b", attributes.flag: True, "Email": "bob@gmail.com"},
    ]
    for item in items:
        table.client.put_item(TableName=table.name, Item=to_wire(item))
    gateway = DynamoDBGateway(table.client, attributes)
    processor = StreamProcessor(
        EmailClassifier(personal_domain_set()).is_personal_email, gateway, True, logging.getLogger("test")
    )
    try:
        result = processor.process(factory.event(*(factory.insert(item) for item in items)))
    finally:
        gateway.close()
    assert (result.flags_set, result.flags_removed, result.failed, result.rejected) == (1, 1, 0, 0)
    assert get(table, pk="a")[attributes.flag] is True
    assert attributes.flag not in get(table, pk="b")


def test_a_flag_that_is_a_key_attribute_is_counted_and_never_written(engine, make_table, stage_invoker, log_sink):
    """FLAG_ATTRIBUTE names the table's key: every record is counted as flag_in_key and logged by sequence number
    (with the setting's name, never a value), nothing is written, and the shard goes on."""
    handler = stage_invoker(FLAG_ATTRIBUTE="Id")
    table = make_table()
    for number in range(3):
        table.client.put_item(TableName=table.name, Item=to_wire({"Id": f"u{number}", "Email": "a@gmail.com"}))

    stats = LocalEventSourceMapping(engine.streams_client(), table.stream_arn, handler).drain()

    summaries = handler.collector.summaries
    assert sum(s["flag_in_key"] for s in summaries) == stats.records == 3
    assert sum(s["writes"] + s["failed"] + s["rejected"] for s in summaries) == 0
    assert stats.failed_attempts == 0 and stats.discarded_batches == []
    logged = [line for line in log_sink.records() if line.get("message", "").startswith("records skipped")]
    assert logged and logged[0]["flag_attribute"] == "Id" and len(logged[0]["sequence_numbers"]) == 3
    assert "a@gmail.com" not in log_sink.getvalue() and "u1" not in log_sink.getvalue()
    assert {name for number in range(3) for name in get(table, Id=f"u{number}")} == {"Id", "Email"}


def test_attribute_conflict():
    assert attribute_conflict(("tenant", "member_no"), ADOPTER) is None
    assert attribute_conflict(("email",), ADOPTER) is None  # a table keyed by its e-mail works
    assert "FLAG_ATTRIBUTE 'is_personal' is a key attribute" in attribute_conflict(("tenant", "is_personal"), ADOPTER)
    assert "both 'x'" in attribute_conflict(("Id",), AttributeNames(email="x", flag="x"))


def adopter_backfill_table(make_table):
    """The adopter's table with no stream: items written before the trigger (flags missing or wrong)."""
    table = make_table(keys=ADOPTER_KEYS, stream=False)
    model = Model(ADOPTER_LAYOUT)
    rng = random.Random(16)
    keys = adopter_keys(40)
    for i, key in enumerate(keys):
        flag = [None, True, False][i % 3]
        op = Op("put", key, EMAILS[i % len(EMAILS)], flag, rng.choice(["ann@gmail.com", "bob@example.com"]))
        perform(table.client, table.name, op, model)
    return table, model, keys


def test_the_backfill_on_the_adopters_table(make_table):
    table, model, keys = adopter_backfill_table(make_table)
    needed = len(violations(scan(table.client, table.name, ADOPTER_LAYOUT), model, keys))
    settings = Settings.from_environ(ADOPTER_STAGE)
    facts = table_facts(table.client.describe_table(TableName=table.name)["Table"])
    worker = local_worker(settings, table.client, 4)
    counts = run_local(worker, facts, Checkpoint.open(None, table.name, 2, False), Options(page_size=7), 2)
    assert needed > 0 and counts.written == needed and (counts.failed, counts.rejected) == (0, 0)
    assert violations(scan(table.client, table.name, ADOPTER_LAYOUT), model, keys) == []


def stage_project(tmp_path, **variables):
    """A project of the test's own whose stage STAGE sets these variables."""
    from tests.projects import fixture_config

    config = fixture_config()
    config["stages"][STAGE]["environment_variables"].update(variables)
    return copy_project(tmp_path / "project", config)


def test_the_backfill_command_takes_the_stages_names(make_table, tmp_path):
    table, model, keys = adopter_backfill_table(make_table)
    project = stage_project(tmp_path, **ADOPTER_STAGE)
    done = backfill_tool(
        project,
        "run",
        "--table",
        table.name,
        "--stage",
        STAGE,
        "--segments",
        "2",
        "--no-progress",
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert violations(scan(table.client, table.name, ADOPTER_LAYOUT), model, keys) == []


def test_the_backfill_command_refuses_a_flag_that_is_a_key_attribute(make_table, tmp_path):
    table = make_table(keys=ADOPTER_KEYS, stream=False)
    table.client.put_item(TableName=table.name, Item=to_wire({"tenant": "a", "member_no": Decimal(1), "email": "x"}))
    project = stage_project(tmp_path, EMAIL_ATTRIBUTE="email", FLAG_ATTRIBUTE="member_no")
    done = backfill_tool(project, "run", "--table", table.name, "--stage", STAGE, "--no-progress", env=dict(os.environ))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "FLAG_ATTRIBUTE 'member_no' is a key attribute" in done.stderr
    assert get(table, tenant="a", member_no=1) == {"tenant": "a", "member_no": 1, "email": "x"}


def test_make_runs_example_put_item_uses_the_tables_key_and_the_stages_email():
    from localdev.run import example_item

    adopter_table = {
        "AttributeDefinitions": [
            {"AttributeName": "tenant", "AttributeType": "S"},
            {"AttributeName": "member_no", "AttributeType": "N"},
        ],
        "KeySchema": [
            {"AttributeName": "tenant", "KeyType": "HASH"},
            {"AttributeName": "member_no", "KeyType": "RANGE"},
        ],
    }
    assert example_item(adopter_table, ADOPTER) == (
        """'{"tenant": {"S": "ID1"}, "member_no": {"N": "1"}, "email": {"S": "john@gmail.com"}}'"""
    )
    keyed_by_email = {
        "AttributeDefinitions": [{"AttributeName": "email", "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": "email", "KeyType": "HASH"}],
    }
    assert example_item(keyed_by_email, ADOPTER) == """'{"email": {"S": "john@gmail.com"}}'"""
    quoted = AttributeNames(email="it's", flag="f")
    assert example_item(keyed_by_email, quoted) == """'{"email": {"S": "ID1"}, "it'"'"'s": {"S": "john@gmail.com"}}'"""
