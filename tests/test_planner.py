from decimal import Decimal

from chalicelib.domains import EmailClassifier, personal_domain_set
from chalicelib.planner import Action, plan_batch, plan_reads
from chalicelib.records import DEFAULT_ATTRIBUTES, ItemState, decode_record
from localdev.events import StreamEventFactory

classify = EmailClassifier(personal_domain_set(only={"gmail.com", "outlook.com", "hotmail.com"})).is_personal_email


def plan(*raw_records):
    return plan_batch([decode_record(r, DEFAULT_ATTRIBUTES) for r in raw_records], classify)


def test_insert_needs_the_flag_set():
    f = StreamEventFactory()
    result = plan(f.insert({"Id": "1", "Email": "a@gmail.com"}))
    [write] = result.writes
    assert (write.action, write.flag, write.seen_email) == (Action.SET, True, "a@gmail.com")


def test_several_records_per_key_collapse_to_the_latest():
    f = StreamEventFactory()
    first = f.insert({"Id": "1", "Email": "a@example.com"})
    second = f.modify({"Id": "1", "Email": "a@example.com"}, {"Id": "1", "Email": "a@gmail.com"})
    other = f.insert({"Id": "2", "Email": "b@example.com"})
    third = f.modify({"Id": "1", "Email": "a@gmail.com"}, {"Id": "1", "Email": "a@hotmail.com"})
    result = plan(first, second, other, third)
    assert len(result.writes) == 2
    by_id = {w.key.identity[0][1]: w for w in result.writes}
    assert by_id["1"].seen_email == "a@hotmail.com" and by_id["1"].flag is True
    assert by_id["2"].flag is False
    sequence_numbers = result.records_by_key[by_id["1"].key].sequence_numbers
    assert sequence_numbers == [r["dynamodb"]["SequenceNumber"] for r in (first, second, third)]


def test_flip_flop_inside_one_batch_ends_where_it_started_and_needs_nothing():
    f = StreamEventFactory()
    start = {"Id": "1", "Email": "a@gmail.com", "IsPersonalEmail": True}
    away = {"Id": "1", "Email": "a@example.com", "IsPersonalEmail": True}
    result = plan(f.modify(start, away), f.modify(away, start))
    assert result.writes == [] and result.already_correct == 1


def test_flag_already_right_costs_no_write():
    f = StreamEventFactory()
    result = plan(f.insert({"Id": "1", "Email": "a@example.com", "IsPersonalEmail": False}))
    assert result.writes == [] and result.already_correct == 1


def test_hand_set_wrong_flag_is_corrected():
    f = StreamEventFactory()
    old = {"Id": "1", "Email": "a@gmail.com", "IsPersonalEmail": True}
    result = plan(f.modify(old, {**old, "IsPersonalEmail": False}))
    [write] = result.writes
    assert (write.action, write.flag) == (Action.SET, True)


def test_flag_of_the_wrong_type_is_corrected():
    f = StreamEventFactory()
    result = plan(f.insert({"Id": "1", "Email": "a@gmail.com", "IsPersonalEmail": Decimal(1)}))
    [write] = result.writes
    assert (write.action, write.flag) == (Action.SET, True)


def test_email_removed_removes_the_flag():
    f = StreamEventFactory()
    old = {"Id": "1", "Email": "a@gmail.com", "IsPersonalEmail": True}
    result = plan(f.modify(old, {"Id": "1", "IsPersonalEmail": True}))
    [write] = result.writes
    assert (write.action, write.seen_email) == (Action.REMOVE, None)


def test_email_of_type_number_or_null_gets_no_flag():
    f = StreamEventFactory()
    number = plan(f.insert({"Id": "1", "Email": Decimal(42)}))
    null = plan(f.insert({"Id": "1", "Email": None}))
    assert number.writes == [] and null.writes == []
    flagged = plan(f.insert({"Id": "1", "Email": None, "IsPersonalEmail": False}))
    assert [w.action for w in flagged.writes] == [Action.REMOVE]


def test_latest_remove_needs_nothing():
    f = StreamEventFactory()
    item = {"Id": "1", "Email": "a@gmail.com"}
    result = plan(f.insert(item), f.remove(item))
    assert result.writes == [] and result.deleted == 1


def test_records_without_a_new_image_are_read_then_decided():
    f = StreamEventFactory(view_type=StreamEventFactory().view_type.KEYS_ONLY)
    result = plan(f.insert({"Id": "1", "Email": "a@gmail.com"}), f.insert({"Id": "2", "Email": "b@gmail.com"}))
    assert result.writes == [] and len(result.reads) == 2
    one, two = result.reads
    gone = plan_reads(result, {one: ItemState(email="a@gmail.com", flag=None, has_flag=False), two: None}, classify)
    assert gone == 1
    [write] = result.writes
    assert write.key == one and write.flag is True
