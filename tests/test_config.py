import json
from pathlib import Path

import pytest

from chalicelib.config import ConfigError, Settings

ROOT = Path(__file__).resolve().parent.parent


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


@pytest.mark.stage_config
@pytest.mark.parametrize("stage", list(json.loads((ROOT / ".chalice" / "config.json").read_text())["stages"]))
def test_every_stage_config_is_valid_and_sets_the_contract(stage):
    # The values are the user's (docs/configuration.md): whatever they are, each stage's must be valid.
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    settings = Settings.from_environ(config["stages"][stage]["environment_variables"])
    assert settings.stage == stage
    # Shards x factor concurrent batches stay under the handler's reserved concurrency.
    handler = config["stages"][stage]["lambda_functions"]["sync_is_personal_email"]
    assert handler.get("reserved_concurrency", settings.parallelization_factor) >= settings.parallelization_factor


def test_the_parallelization_factor_is_read():
    assert Settings.from_environ({"PARALLELIZATION_FACTOR": " 4 "}).parallelization_factor == 4
