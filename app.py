"""email-checker: keeps `IsPersonalEmail` in sync with `Email` through the users table's DynamoDB stream."""

from __future__ import annotations

import os
from typing import Any

from chalice import Chalice
from chalice.app import DynamoDBEvent

from chalicelib.config import UNBOUND_STREAM_ARN, ConfigError, Settings
from chalicelib.runtime import processor_for

# Powertools owns the "email-checker" logger (structured JSON); Chalice would add a second, plain-text handler to it.
app = Chalice(app_name="email-checker", configure_logs=False)

SETTINGS = Settings.from_environ(os.environ)
if not SETTINGS.stream_arn and os.environ.get("AWS_CHALICE_CLI_MODE"):
    raise ConfigError(
        "STREAM_ARN is not set: put the users table's stream ARN in "
        '.chalice/config.json under stages.<stage>.environment_variables."STREAM_ARN" '
        "(aws dynamodb describe-table --table-name <table> --query Table.LatestStreamArn)"
    )


@app.on_dynamodb_record(
    stream_arn=SETTINGS.stream_arn or UNBOUND_STREAM_ARN,
    batch_size=SETTINGS.batch_size,
    starting_position=SETTINGS.starting_position,
    maximum_batching_window_in_seconds=SETTINGS.maximum_batching_window_in_seconds,
)
def sync_is_personal_email(event: DynamoDBEvent) -> dict[str, Any]:
    """Bring every item the batch touched under the invariant; report what failed so Lambda retries it."""
    return processor_for(Settings.from_environ(os.environ)).handle(event.to_dict())
