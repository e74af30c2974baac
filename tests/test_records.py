from decimal import Decimal

import pytest
from boto3.dynamodb.types import Binary

from chalicelib.records import (
    DEFAULT_ATTRIBUTES,
    AttributeNames,
    EventName,
    FlagInKey,
    ItemState,
    MalformedRecord,
    decision_projection,
    decode_record,
    item_state,
    table_name_from_stream_arn,
)
from localdev.events import StreamEventFactory, to_wire


def test_decodes_the_facts_the_planner_needs():
    factory = StreamEventFactory()
    raw = factory.modify({"Id": "ID1", "Email": "a@example.com"}, {"Id": "ID1", "Email": "a@gmail.com"})
    record = decode_record(raw, DEFAULT_ATTRIBUTES)
    assert record.event_name is EventName.MODIFY
    assert record.sequence_number == raw["dynamodb"]["SequenceNumber"]
    assert record.key.table_name == "Users"
    assert record.key.identity == (("Id", "ID1"),)
    assert record.new_state.email == "a@gmail.com"
    assert record.new_state.has_flag is False


def test_key_identity_for_every_key_type_and_schema():
    factory = StreamEventFactory(key_names=("Pk", "Sk"))
    record = decode_record(
        factory.insert({"Pk": Binary(b"\x00\xff"), "Sk": Decimal("7"), "Email": "x@y.z"}), DEFAULT_ATTRIBUTES
    )
    assert record.key.identity == (("Pk", Binary(b"\x00\xff")), ("Sk", Decimal("7")))
    assert record.key.attribute_names == ("Pk", "Sk")
    again = decode_record(
        factory.modify({"Pk": Binary(b"\x00\xff"), "Sk": 7}, {"Pk": Binary(b"\x00\xff"), "Sk": 7}), DEFAULT_ATTRIBUTES
    )
    assert again.key == record.key


def test_email_of_another_type_is_not_an_email():
    state = item_state(to_wire({"Email": Decimal(5), "IsPersonalEmail": True}), DEFAULT_ATTRIBUTES)
    assert state.email is None and state.flag is True and state.has_flag


def test_a_numeric_flag_is_not_a_bool_even_though_1_equals_true():
    state = item_state(to_wire({"Email": "a@gmail.com", "IsPersonalEmail": Decimal(1)}), DEFAULT_ATTRIBUTES)
    assert state.flag is None and state.has_flag


def test_remove_carries_no_new_state():
    factory = StreamEventFactory()
    record = decode_record(factory.remove({"Id": "ID1", "Email": "a@gmail.com"}), DEFAULT_ATTRIBUTES)
    assert record.event_name is EventName.REMOVE and record.new_state is None


def _valid():
    return StreamEventFactory().insert({"Id": "ID1", "Email": "a@gmail.com"})


def _broken(mutate):
    raw = _valid()
    mutate(raw)
    return raw


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        "a record",
        {},
        _broken(lambda r: r["dynamodb"].pop("SequenceNumber")),
        _broken(lambda r: r["dynamodb"].update(SequenceNumber="12a")),
        _broken(lambda r: r.update(eventName="UPSERT")),
        _broken(lambda r: r.pop("eventSourceARN")),
        _broken(lambda r: r.update(eventSourceARN="arn:aws:sqs:us-east-1:1:queue")),
        _broken(lambda r: r["dynamodb"].pop("Keys")),
        _broken(lambda r: r["dynamodb"].update(Keys={})),
        _broken(lambda r: r["dynamodb"].update(Keys={"Id": {"XX": "1"}})),
        _broken(lambda r: r["dynamodb"].update(Keys={"Id": {"L": [{"S": "a"}]}})),
        _broken(lambda r: r["dynamodb"].update(Keys={"A": {"S": "1"}, "B": {"S": "2"}, "C": {"S": "3"}})),
        _broken(lambda r: r["dynamodb"]["NewImage"].update(Email={"Q": "x"})),
        _broken(lambda r: r["dynamodb"].update(NewImage="an image")),
    ],
)
def test_malformed_records_are_refused_with_a_reason_and_no_value(raw):
    with pytest.raises(MalformedRecord) as refused:
        decode_record(raw, DEFAULT_ATTRIBUTES)
    assert "gmail" not in str(refused.value)


def test_table_name_from_stream_arn():
    arn = "arn:aws:dynamodb:eu-west-1:123456789012:table/Users/stream/2026-01-01T00:00:00.000"
    assert table_name_from_stream_arn(arn) == "Users"


ADOPTER = AttributeNames(email="email", flag="is_personal")


def test_only_the_stages_two_attributes_are_read():
    image = to_wire({"email": "a@example.com", "is_personal": True, "Email": "a@gmail.com", "IsPersonalEmail": False})
    assert item_state(image, ADOPTER) == ItemState(email="a@example.com", flag=True, has_flag=True)
    assert item_state(to_wire({"Email": "a@gmail.com", "IsPersonalEmail": True}), ADOPTER) == ItemState(
        email=None, flag=None, has_flag=False
    )


def test_a_record_whose_key_holds_the_flag_is_refused_on_its_own():
    factory = StreamEventFactory(key_names=("tenant", "is_personal"))
    raw = factory.insert({"tenant": "t", "is_personal": "x", "email": "a@gmail.com"})
    with pytest.raises(FlagInKey, match="FLAG_ATTRIBUTE names a key attribute"):
        decode_record(raw, ADOPTER)
    # The same record under names whose flag is not in the key decodes, the e-mail in the key included.
    keyed_by_email = StreamEventFactory(key_names=("email",)).insert({"email": "a@gmail.com"})
    assert decode_record(keyed_by_email, ADOPTER).new_state == ItemState("a@gmail.com", None, False)


def test_the_projection_names_each_attribute_once():
    projection, names = decision_projection(("email", "member_no"), ADOPTER)
    assert projection == "#a0, #a1, #a2" and list(names.values()) == ["email", "member_no", "is_personal"]
