"""The adopter's smaller findings of issue 21, point 5: each a line the user reads, checked as they would read it."""

from __future__ import annotations

import pytest

from chalicelib.config import ConfigError, Settings
from tools import sizing
from tools.stage import next_steps
from tools.status import Status, check_table


@pytest.mark.parametrize("value", [" email", "email ", "\temail"])
def test_an_attribute_name_with_a_space_at_either_end_is_refused_naming_the_variable(value):
    with pytest.raises(ConfigError) as refused:
        Settings.from_environ({"EMAIL_ATTRIBUTE": value})
    assert str(refused.value).startswith("EMAIL_ATTRIBUTE ") and repr(value) in str(refused.value)


def test_a_space_inside_a_name_is_still_fine():
    assert Settings.from_environ({"FLAG_ATTRIBUTE": "is personal"}).flag_attribute == "is personal"


@pytest.mark.parametrize("bound", [True, False])
def test_add_stages_next_steps_end_with_the_failure_handling(bound):
    steps = next_steps("staging", bound)
    assert steps.index("chalice deploy --stage staging") < steps.index(
        "tools.stage apply-failure-handling --stage staging"
    )


def test_an_unreadable_account_concurrency_is_not_ok():
    unknown = sizing.Concurrency(None, False, "GetAccountSettings failed: AccessDeniedException")
    problem = sizing.concurrency_problem(4, 1, unknown, "staging")
    assert problem is not None and "AccessDeniedException" in problem and "lambda:GetAccountSettings" in problem


def test_a_flag_in_the_key_is_said_once_in_the_verdict(make_table):
    table = make_table(keys=(("tenant", "S"), ("member_no", "N")))
    status = Status()
    settings = Settings.from_environ({"EMAIL_ATTRIBUTE": "email", "FLAG_ATTRIBUTE": "member_no"})
    check_table(status, table.client, table.stream_arn, settings)
    [problem] = status.problems
    assert problem.count("FLAG_ATTRIBUTE") == 1 and problem.startswith("FLAG_ATTRIBUTE 'member_no' is a key attribute")
