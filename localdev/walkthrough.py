"""The original walkthrough's own settings: what `make demo`, the benchmark and the backfill benchmark run with.

They are the walkthrough's, not a stage's: the committed stages are examples an adopter may rename or remove, and these
commands must work whatever the config holds. They match Settings' defaults (docs/configuration.md), spelled out."""

from __future__ import annotations

from chalicelib.config import Settings

# The metrics dimension and the name the Chalice test client runs under: no stage of the config's.
WALKTHROUGH_STAGE = "walkthrough"
WALKTHROUGH_ENVIRONMENT = {
    "STAGE": WALKTHROUGH_STAGE,
    "EMAIL_ATTRIBUTE": "Email",
    "FLAG_ATTRIBUTE": "IsPersonalEmail",
    "BATCH_SIZE": "100",
    "STARTING_POSITION": "TRIM_HORIZON",
    "MAXIMUM_BATCHING_WINDOW_IN_SECONDS": "0",
    "WRITE_CONCURRENCY": "16",
    "PARALLELIZATION_FACTOR": "1",
    "REPORT_BATCH_ITEM_FAILURES": "false",
}


def walkthrough_settings() -> Settings:
    """The walkthrough's settings, as its handler reads them."""
    return Settings.from_environ(WALKTHROUGH_ENVIRONMENT)
