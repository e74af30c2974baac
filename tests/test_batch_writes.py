"""The gateway's writes as PartiQL BatchExecuteStatement requests: conditions and keys against DynamoDB Local, and
every per-statement error code (which a real engine won't give on demand) through botocore's Stubber."""

from __future__ import annotations

import math
import threading
import time

import boto3
import botocore.session
import pytest
from botocore.stub import Stubber

from chalicelib import dynamodb
from chalicelib.deadline import Deadline
from chalicelib.dynamodb import (
    BATCH_STATEMENT_LIMIT,
    STATEMENT_ATTEMPTS,
    DynamoDBGateway,
    WriteOutcome,
    quote_name,
    statement_text,
)
from chalicelib.planner import Action, Write
from chalicelib.records import DEFAULT_ATTRIBUTES, item_key
from localdev.events import to_wire
from tests.test_handler import get, put


def set_write(table, email: str | None, flag: bool = True, **key) -> Write:
    return Write(key=item_key(table.name, to_wire(key)), action=Action.SET, flag=flag, seen_email=email)


def remove_write(table, **key) -> Write:
    return Write(key=item_key(table.name, to_wire(key)), action=Action.REMOVE, flag=None, seen_email=None)


class Requests:
    """Counts the BatchExecuteStatement requests a client makes, and the statements in each."""

    def __init__(self, client) -> None:
        self.sizes: list[int] = []
        self._lock = threading.Lock()
        client.meta.events.register("before-parameter-build.dynamodb.BatchExecuteStatement", self._seen)

    def _seen(self, params, **_):
        with self._lock:
            self.sizes.append(len(params["Statements"]))


@pytest.fixture
def gateway_for(engine):
    made = []

    def make(max_concurrency: int = 4) -> DynamoDBGateway:
        made.append(DynamoDBGateway(engine.client(), DEFAULT_ATTRIBUTES, max_concurrency=max_concurrency))
        return made[-1]

    yield make
    for gateway in made:
        gateway.close()


def test_the_statements_quote_every_name_and_take_every_value_as_a_parameter():
    assert quote_name('user"id') == '"user""id"'
    assert statement_text("Users-1", ("Id",), Action.SET, DEFAULT_ATTRIBUTES) == (
        'UPDATE "Users-1" SET "IsPersonalEmail"=? WHERE "Id"=? AND attribute_exists("Id") AND "Email"=?'
    )
    assert statement_text("Users-1", ('a"b', "sort-key"), Action.REMOVE, DEFAULT_ATTRIBUTES) == (
        'UPDATE "Users-1" REMOVE "IsPersonalEmail" WHERE "a""b"=? AND "sort-key"=? AND attribute_exists("a""b") '
        'AND NOT attribute_type("Email", ?)'
    )


def test_set_applies_only_while_the_item_exists_with_the_email_the_decision_saw(make_table, gateway_for):
    table = make_table(stream=False)
    put(table, Id="same", Email="same@gmail.com")
    put(table, Id="changed", Email="new@example.com", IsPersonalEmail=False)
    writes = [
        set_write(table, "same@gmail.com", Id="same"),
        set_write(table, "old@gmail.com", Id="changed"),
        set_write(table, "gone@gmail.com", Id="missing"),
    ]
    outcomes = gateway_for().apply(writes)
    assert outcomes == [WriteOutcome.APPLIED, WriteOutcome.SUPERSEDED, WriteOutcome.SUPERSEDED]
    assert get(table, Id="same")["IsPersonalEmail"] is True
    assert get(table, Id="changed")["IsPersonalEmail"] is False
    assert get(table, Id="missing") is None, "a SET created a missing item"


def test_remove_applies_only_while_the_item_exists_without_a_string_email(make_table, gateway_for):
    table = make_table(stream=False)
    put(table, Id="number", Email=7, IsPersonalEmail=True)
    put(table, Id="absent", IsPersonalEmail=False)
    put(table, Id="string", Email="s@gmail.com", IsPersonalEmail=True)
    ids = ["number", "absent", "string", "missing"]
    outcomes = gateway_for().apply([remove_write(table, Id=item_id) for item_id in ids])
    assert outcomes == [WriteOutcome.APPLIED] * 2 + [WriteOutcome.SUPERSEDED] * 2
    assert "IsPersonalEmail" not in get(table, Id="number") and "IsPersonalEmail" not in get(table, Id="absent")
    assert get(table, Id="string")["IsPersonalEmail"] is True
    assert get(table, Id="missing") is None, "a REMOVE created a missing item"


def test_sixty_writes_go_in_three_requests_with_their_outcomes_in_order(make_table, gateway_for):
    table = make_table(stream=False)
    writes, expected = [], []
    for i in range(60):
        kind = i % 4
        if kind == 0:
            put(table, Id=f"u{i}", Email=f"u{i}@gmail.com")
            writes.append(set_write(table, f"u{i}@gmail.com", Id=f"u{i}"))
            expected.append(WriteOutcome.APPLIED)
        elif kind == 1:
            put(table, Id=f"u{i}", Email=f"u{i}@example.com")
            writes.append(set_write(table, f"u{i}@gmail.com", Id=f"u{i}"))
            expected.append(WriteOutcome.SUPERSEDED)
        elif kind == 2:
            put(table, Id=f"u{i}", IsPersonalEmail=True)
            writes.append(remove_write(table, Id=f"u{i}"))
            expected.append(WriteOutcome.APPLIED)
        else:
            writes.append(set_write(table, f"u{i}@gmail.com", Id=f"u{i}"))  # no such item
            expected.append(WriteOutcome.SUPERSEDED)
    gateway = gateway_for()
    requests = Requests(gateway.client)
    assert gateway.apply(writes) == expected
    assert sorted(requests.sizes) == [10, 25, 25]
    for i in range(0, 60, 4):
        assert get(table, Id=f"u{i}")["IsPersonalEmail"] is True
        assert "IsPersonalEmail" not in get(table, Id=f"u{i + 2}")
        assert get(table, Id=f"u{i + 3}") is None


@pytest.mark.parametrize("count", [1, 25, 26, 51, 100])
def test_one_request_per_twenty_five_writes(make_table, gateway_for, count):
    table = make_table(stream=False)
    gateway = gateway_for(max_concurrency=2)
    requests = Requests(gateway.client)
    outcomes = gateway.apply([set_write(table, f"{i}@gmail.com", Id=str(i)) for i in range(count)])
    assert outcomes == [WriteOutcome.SUPERSEDED] * count  # no such items: nothing is created either
    assert len(requests.sizes) == math.ceil(count / BATCH_STATEMENT_LIMIT)
    assert sum(requests.sizes) == count


def test_hash_and_range_keys_with_number_and_binary_values(make_table, gateway_for):
    table = make_table(keys=(("Tenant", "B"), ("Seq", "N")), stream=False)
    put(table, Tenant=b"\x00\xff", Seq=1, Email="a@gmail.com")
    put(table, Tenant=b"\x00\xff", Seq=2, Email=True, IsPersonalEmail=False)
    put(table, Tenant=b"\x01", Seq=1, Email="b@example.com")
    writes = [
        set_write(table, "a@gmail.com", Tenant=b"\x00\xff", Seq=1),
        remove_write(table, Tenant=b"\x00\xff", Seq=2),
        set_write(table, "b@example.com", flag=False, Tenant=b"\x01", Seq=1),
        set_write(table, "a@gmail.com", Tenant=b"\x00\xfe", Seq=1),  # one byte off: no such item
    ]
    assert gateway_for().apply(writes) == [WriteOutcome.APPLIED] * 3 + [WriteOutcome.SUPERSEDED]
    assert get(table, Tenant=b"\x00\xff", Seq=1)["IsPersonalEmail"] is True
    assert "IsPersonalEmail" not in get(table, Tenant=b"\x00\xff", Seq=2)
    assert get(table, Tenant=b"\x01", Seq=1)["IsPersonalEmail"] is False
    assert get(table, Tenant=b"\x00\xfe", Seq=1) is None


def test_names_that_need_quoting(make_table, gateway_for):
    # The table's own name has a dash (Users-<hex>); the key names have a double quote, a dash, a space, a `?`.
    table = make_table(keys=(('user"id', "S"), ("sort-key ?", "S")), stream=False)
    put(table, **{'user"id': "a", "sort-key ?": "x", "Email": "a@gmail.com"})
    put(table, **{'user"id': "b", "sort-key ?": "x", "Email": 3, "IsPersonalEmail": True})
    writes = [
        set_write(table, "a@gmail.com", **{'user"id': "a", "sort-key ?": "x"}),
        remove_write(table, **{'user"id': "b", "sort-key ?": "x"}),
    ]
    assert gateway_for().apply(writes) == [WriteOutcome.APPLIED, WriteOutcome.APPLIED]
    assert get(table, **{'user"id': "a", "sort-key ?": "x"})["IsPersonalEmail"] is True
    assert "IsPersonalEmail" not in get(table, **{'user"id': "b", "sort-key ?": "x"})


def test_statements_the_engine_refuses_are_rejected_alone(make_table, gateway_for):
    table = make_table(stream=False)
    put(table, Id="ok", Email="ok@gmail.com")
    gone = Write(
        key=item_key("No-such-table", to_wire({"Id": "ok"})), action=Action.SET, flag=True, seen_email="ok@gmail.com"
    )
    writes = [
        set_write(table, "x@gmail.com", Id=5),  # a number where the table's key is a string: ValidationError
        gone,  # ResourceNotFound
        set_write(table, "ok@gmail.com", Id="ok"),
    ]
    assert gateway_for().apply(writes) == [WriteOutcome.REJECTED, WriteOutcome.REJECTED, WriteOutcome.APPLIED]
    assert get(table, Id="ok")["IsPersonalEmail"] is True


def test_a_request_refused_as_a_whole_is_halved_until_it_goes_through(make_table, gateway_for):
    # DynamoDB refuses a request that names one key twice (ValidationException): the planner never sends one, but
    # the split must still give each write its own outcome rather than reject them all.
    table = make_table(stream=False)
    for item_id in "abc":
        put(table, Id=item_id, Email=f"{item_id}@gmail.com")
    writes = [set_write(table, f"{item_id}@gmail.com", Id=item_id) for item_id in "abca"]
    gateway = gateway_for()
    requests = Requests(gateway.client)
    assert gateway.apply(writes) == [WriteOutcome.APPLIED] * 4
    assert requests.sizes[0] == 4 and len(requests.sizes) > 1


def test_a_passed_deadline_sends_nothing(make_table, gateway_for):
    table = make_table(stream=False)
    put(table, Id="a", Email="a@gmail.com")
    gateway = gateway_for()
    requests = Requests(gateway.client)
    outcomes = gateway.apply([set_write(table, "a@gmail.com", Id="a")] * 1, Deadline.after(-1))
    assert outcomes == [WriteOutcome.OUT_OF_TIME] and requests.sizes == []
    assert "IsPersonalEmail" not in get(table, Id="a")


def test_requests_in_flight_or_not_started_at_the_deadline_are_out_of_time(make_table, gateway_for):
    table = make_table(stream=False)
    for i in range(30):
        put(table, Id=str(i), Email=f"{i}@gmail.com")
    writes = [set_write(table, f"{i}@gmail.com", Id=str(i)) for i in range(30)]
    gateway = gateway_for(max_concurrency=1)
    release = threading.Event()
    sent = []

    def stall_the_first(**_):
        sent.append(1)
        if len(sent) == 1:
            release.wait(10)

    gateway.client.meta.events.register("before-send.dynamodb.BatchExecuteStatement", stall_the_first)
    try:
        started = time.monotonic()
        outcomes = gateway.apply(writes, Deadline.after(0.2))
        # One worker: the first request is stalled in flight, the second never starts; apply answers at the deadline.
        assert outcomes == [WriteOutcome.OUT_OF_TIME] * 30
        assert time.monotonic() - started < 2 and len(sent) == 1
        # The stalled worker was left behind: the next batch gets a fresh pool, not a place behind it.
        started = time.monotonic()
        assert gateway.apply(writes[25:27]) == [WriteOutcome.APPLIED] * 2
        assert time.monotonic() - started < 2
    finally:
        release.set()
        gateway.client.meta.events.unregister("before-send.dynamodb.BatchExecuteStatement", stall_the_first)


def test_requests_run_concurrently_within_the_pool_bound(make_table, gateway_for):
    table = make_table(stream=False)
    gateway = gateway_for(max_concurrency=3)
    lock = threading.Lock()
    state = {"now": 0, "most": 0}

    def enter(**_):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.05)

    def leave(**_):
        with lock:
            state["now"] -= 1

    gateway.client.meta.events.register("before-send.dynamodb.BatchExecuteStatement", enter)
    gateway.client.meta.events.register("after-call.dynamodb.BatchExecuteStatement", leave)
    gateway.apply([set_write(table, f"{i}@gmail.com", Id=str(i)) for i in range(8 * BATCH_STATEMENT_LIMIT)])
    assert state["most"] == 3


# Per-statement error codes, stubbed: BatchStatementError.Code's valid values, and one DynamoDB may add later.
FINAL = {
    "ConditionalCheckFailed": WriteOutcome.SUPERSEDED,
    "ValidationError": WriteOutcome.REJECTED,
    "ResourceNotFound": WriteOutcome.REJECTED,
    "AccessDenied": WriteOutcome.ACCESS_DENIED,
    "ItemCollectionSizeLimitExceeded": WriteOutcome.FAILED,
    "DuplicateItem": WriteOutcome.FAILED,
    "SomeCodeAddedLater": WriteOutcome.FAILED,
}
TRANSIENT = ["ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded", "InternalServerError"]
TRANSIENT += ["TransactionConflict"]


def test_every_documented_code_is_mapped():
    documented = botocore.session.get_session().get_service_model("dynamodb").shape_for("BatchStatementErrorCodeEnum")
    documented = documented.enum
    assert set(documented) == set(FINAL) - {"SomeCodeAddedLater"} | set(TRANSIENT)
    assert set(documented) == set(dynamodb.STATEMENT_ERRORS)


def stubbed_gateway():
    client = boto3.session.Session(region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x").client(
        "dynamodb"
    )
    return DynamoDBGateway(client, DEFAULT_ATTRIBUTES, max_concurrency=2), Stubber(client)


KEY_WRITES = [
    Write(key=item_key("Users", to_wire({"Id": name})), action=Action.SET, flag=True, seen_email=f"{name}@gmail.com")
    for name in ("a", "b", "c")
]


def entries(*codes: str | None) -> dict:
    return {"Responses": [{} if code is None else {"Error": {"Code": code, "Message": "m"}} for code in codes]}


@pytest.fixture
def quick_backoff(monkeypatch):
    monkeypatch.setattr(dynamodb, "STATEMENT_BACKOFF_SECONDS", 0.001)


@pytest.mark.parametrize(("code", "outcome"), FINAL.items())
def test_final_statement_codes_end_in_their_outcome_without_a_retry(code, outcome):
    gateway, stub = stubbed_gateway()
    stub.add_response("batch_execute_statement", entries(None, code, None))
    with stub:
        assert gateway.apply(KEY_WRITES) == [WriteOutcome.APPLIED, outcome, WriteOutcome.APPLIED]
    stub.assert_no_pending_responses()


@pytest.mark.parametrize("code", TRANSIENT)
def test_transient_statement_codes_are_sent_again_alone(code, quick_backoff):
    gateway, stub = stubbed_gateway()
    first = {"Statements": [dynamodb.batch_statement(write, DEFAULT_ATTRIBUTES) for write in KEY_WRITES]}
    stub.add_response("batch_execute_statement", entries(None, code, "ConditionalCheckFailed"), first)
    stub.add_response(
        "batch_execute_statement",
        entries(None),
        {"Statements": [dynamodb.batch_statement(KEY_WRITES[1], DEFAULT_ATTRIBUTES)]},
    )
    with stub:
        assert gateway.apply(KEY_WRITES) == [WriteOutcome.APPLIED, WriteOutcome.APPLIED, WriteOutcome.SUPERSEDED]
    stub.assert_no_pending_responses()


@pytest.mark.parametrize("code", TRANSIENT)
def test_transient_statement_codes_fail_after_every_attempt(code, quick_backoff):
    gateway, stub = stubbed_gateway()
    stub.add_response("batch_execute_statement", entries(code, None, None))
    for _ in range(STATEMENT_ATTEMPTS - 1):
        stub.add_response("batch_execute_statement", entries(code))
    with stub:
        assert gateway.apply(KEY_WRITES) == [WriteOutcome.FAILED, WriteOutcome.APPLIED, WriteOutcome.APPLIED]
    stub.assert_no_pending_responses()


def test_statement_retries_stop_at_the_deadline(monkeypatch):
    # The next try's backoff would end past the deadline: the write is not sent again and is out of time.
    monkeypatch.setattr(dynamodb, "STATEMENT_BACKOFF_SECONDS", 5.0)
    monkeypatch.setattr(dynamodb, "STATEMENT_BACKOFF_CAP_SECONDS", 10.0)
    monkeypatch.setattr(dynamodb.random, "uniform", lambda low, high: high)
    gateway, stub = stubbed_gateway()
    stub.add_response("batch_execute_statement", entries("ThrottlingError", None, None))
    with stub:
        started = time.monotonic()
        outcomes = gateway.apply(KEY_WRITES, Deadline.after(2.0))
    assert outcomes == [WriteOutcome.OUT_OF_TIME, WriteOutcome.APPLIED, WriteOutcome.APPLIED]
    assert time.monotonic() - started < 1.0, "it slept towards a retry it could not make"
    stub.assert_no_pending_responses()


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        ("InternalServerError", WriteOutcome.FAILED),
        ("ThrottlingException", WriteOutcome.FAILED),
        ("AccessDeniedException", WriteOutcome.ACCESS_DENIED),
        ("ResourceNotFoundException", WriteOutcome.REJECTED),
    ],
)
def test_a_request_failing_as_a_whole_keeps_the_request_level_mapping(code, outcome):
    # botocore's standard retry mode has already retried such a request; a single write's refusal stands.
    gateway, stub = stubbed_gateway()
    stub.add_client_error("batch_execute_statement", service_error_code=code, http_status_code=400)
    with stub:
        assert gateway.apply(KEY_WRITES[:1]) == [outcome]
    stub.assert_no_pending_responses()


class Metrics:
    """Powertools Metrics' two calls the processor makes, kept: the values it published, by name."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def add_metric(self, name: str, unit: str, value: float) -> None:
        self.values[name] = value

    def flush_metrics(self) -> None:
        pass


def test_a_statement_denied_access_fails_and_is_retried_never_rejected(log_sink):
    """A per-statement AccessDenied (a missing PartiQLUpdate, an SCP, a permissions boundary) can be lifted: the item
    is failed and reported for the batch's retry, counted as AccessDenied; nothing is rejected."""
    from aws_lambda_powertools import Logger

    from chalicelib.processor import StreamProcessor
    from chalicelib.runtime import SERVICE
    from localdev.events import StreamEventFactory

    gateway, stub = stubbed_gateway()
    factory = StreamEventFactory(table_name="Users", first_sequence_number=500)
    records = [factory.insert({"Id": name, "Email": f"{name}@gmail.com"}) for name in ("a", "b", "c")]
    denied_sequence_number = records[1]["dynamodb"]["SequenceNumber"]
    stub.add_response("batch_execute_statement", entries(None, "AccessDenied", None))
    metrics = Metrics()
    processor = StreamProcessor(
        classify=lambda email: email.endswith("@gmail.com"),
        gateway=gateway,
        report_batch_item_failures=True,
        logger=Logger(service=SERVICE),
        metrics=metrics,
    )
    with stub:
        answer = processor.handle(factory.event(*records))
    stub.assert_no_pending_responses()

    assert answer == {"batchItemFailures": [{"itemIdentifier": denied_sequence_number}]}
    [summary] = [line for line in log_sink.records() if line.get("message") == "batch processed"]
    assert (summary["access_denied"], summary["failed"], summary["rejected"]) == (1, 1, 0)
    assert summary["failed_sequence_number"] == denied_sequence_number and summary["flags_set"] == 2
    assert (metrics.values["AccessDenied"], metrics.values["Failed"], metrics.values["Rejected"]) == (1, 1, 0)


def test_a_refused_request_is_halved_down_to_the_write_refused():
    gateway, stub = stubbed_gateway()
    stub.add_client_error("batch_execute_statement", service_error_code="ValidationException")  # a, b, c
    stub.add_response("batch_execute_statement", entries(None))  # a
    stub.add_client_error("batch_execute_statement", service_error_code="ValidationException")  # b, c
    stub.add_client_error("batch_execute_statement", service_error_code="ValidationException")  # b
    stub.add_response("batch_execute_statement", entries("ConditionalCheckFailed"))  # c
    with stub:
        outcomes = gateway.apply(KEY_WRITES)
    assert outcomes == [WriteOutcome.APPLIED, WriteOutcome.REJECTED, WriteOutcome.SUPERSEDED]
    stub.assert_no_pending_responses()


def test_a_response_that_does_not_match_the_request_fails_its_writes():
    gateway, stub = stubbed_gateway()
    stub.add_response("batch_execute_statement", entries(None, None))
    with stub:
        assert gateway.apply(KEY_WRITES) == [WriteOutcome.FAILED] * 3


def test_errors_are_logged_by_code_only(caplog, make_table, gateway_for):
    table = make_table(stream=False)
    secret = "secret-person@gmail.com"
    with caplog.at_level("WARNING", logger="email-checker.dynamodb"):
        outcomes = gateway_for().apply([set_write(table, secret, Id=5), set_write(table, secret, Id=secret)])
    assert outcomes == [WriteOutcome.REJECTED, WriteOutcome.SUPERSEDED]
    assert "ValidationError" in caplog.text and secret not in caplog.text
