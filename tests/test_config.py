import json

import pytest

from chalicelib.config import ConfigError, Settings
from chalicelib.records import DEFAULT_ATTRIBUTES, AttributeNames


def test_defaults_when_nothing_is_set():
    settings = Settings.from_environ({})
    assert settings.batch_size == 100
    assert settings.starting_position == "TRIM_HORIZON"
    assert settings.maximum_batching_window_in_seconds == 0
    assert settings.report_batch_item_failures is False
    assert settings.parallelization_factor == 1
    assert settings.personal_domains_only == frozenset()


def test_domain_lists_are_normalised():
    settings = Settings.from_environ({"PERSONAL_DOMAINS_ONLY": " Gmail.com., outlook.com ,,hotmail.com"})
    assert settings.personal_domains_only == {"gmail.com", "outlook.com", "hotmail.com"}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BATCH_SIZE", "0"),
        ("BATCH_SIZE", "ten"),
        ("BATCH_SIZE", "10001"),
        ("STARTING_POSITION", "AT_TIMESTAMP"),
        ("MAXIMUM_BATCHING_WINDOW_IN_SECONDS", "301"),
        ("WRITE_CONCURRENCY", "0"),
        ("REPORT_BATCH_ITEM_FAILURES", "maybe"),
        ("PARALLELIZATION_FACTOR", "0"),
        ("PARALLELIZATION_FACTOR", "11"),
        ("PARALLELIZATION_FACTOR", "two"),
    ],
)
def test_invalid_settings_name_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_environ({name: value})


def test_every_stage_config_is_valid_and_sets_the_contract(checked_project):
    # The values are the user's (docs/configuration.md): whatever they are, each stage's must be valid.
    config = json.loads((checked_project / ".chalice" / "config.json").read_text())
    assert config["stages"]
    for stage, entry in config["stages"].items():
        settings = Settings.from_environ(entry["environment_variables"])
        assert settings.stage == stage
        # A reservation, if the stage makes one, runs at least one shard's factor batches (`status` checks the
        # stream's shards x factor against it, or against the account's unreserved pool when there is none).
        handler = entry.get("lambda_functions", {}).get("sync_is_personal_email", {})
        assert handler.get("reserved_concurrency", settings.parallelization_factor) >= settings.parallelization_factor


def test_the_parallelization_factor_is_read():
    assert Settings.from_environ({"PARALLELIZATION_FACTOR": " 4 "}).parallelization_factor == 4


def test_the_attribute_names_default_to_the_walkthroughs():
    settings = Settings.from_environ({})
    assert (settings.email_attribute, settings.flag_attribute) == ("Email", "IsPersonalEmail")
    assert settings.attributes == DEFAULT_ATTRIBUTES


@pytest.mark.parametrize("name", ["email", 'e"mail', "flag.is personal", "correo electrónico", "x" * 255])
def test_any_legal_attribute_name_is_taken_verbatim(name):
    settings = Settings.from_environ({"EMAIL_ATTRIBUTE": "address", "FLAG_ATTRIBUTE": name})
    assert settings.attributes == AttributeNames(email="address", flag=name)


@pytest.mark.parametrize(
    ("variable", "value", "rule"),
    [
        ("EMAIL_ATTRIBUTE", "x" * 256, "256 bytes of UTF-8; an attribute name here may have at most 255"),
        ("FLAG_ATTRIBUTE", "é" * 128, "256 bytes of UTF-8; an attribute name here may have at most 255"),
        ("FLAG_ATTRIBUTE", "\ud800", "not valid Unicode text"),
    ],
)
def test_an_illegal_attribute_name_is_refused_with_the_rule(variable, value, rule):
    with pytest.raises(ConfigError, match=f"{variable} must be a DynamoDB attribute name") as refused:
        Settings.from_environ({variable: value})
    assert rule in str(refused.value)


def test_the_email_and_the_flag_must_be_two_attributes():
    with pytest.raises(ConfigError, match="EMAIL_ATTRIBUTE and FLAG_ATTRIBUTE must name two different attributes"):
        Settings.from_environ({"EMAIL_ATTRIBUTE": "IsPersonalEmail"})
    with pytest.raises(ConfigError, match="two different"):
        Settings.from_environ({"EMAIL_ATTRIBUTE": "mail", "FLAG_ATTRIBUTE": "mail"})


def test_every_stage_names_both_attributes(checked_project):
    config = json.loads((checked_project / ".chalice" / "config.json").read_text())
    for stage in config["stages"].values():
        variables = stage["environment_variables"]
        assert {"EMAIL_ATTRIBUTE", "FLAG_ATTRIBUTE"} <= set(variables)
        Settings.from_environ(variables)  # valid wherever a user set them
