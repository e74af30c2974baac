"""email-checker: keeps `IsPersonalEmail` in sync with `Email` through the users table's DynamoDB stream."""

from __future__ import annotations

import os
import sys
from typing import Any

from chalice import Chalice
from chalice.app import CloudWatchEvent, DynamoDBEvent, Rate, SQSEvent

from chalicelib.config import (
    RECONCILER_MAXIMUM_CONCURRENCY,
    UNBOUND_STREAM_ARN,
    ConfigError,
    Settings,
    failure_queue_name,
)
from chalicelib.runtime import processor_for, reconciler_for, sweep, sweep_for

# Powertools owns the "email-checker" logger (structured JSON); Chalice would add a second, plain-text handler to it.
app = Chalice(app_name="email-checker", configure_logs=False)

CLI_MODE = bool(os.environ.get("AWS_CHALICE_CLI_MODE"))  # set by `chalice deploy`, `package` and `local`
try:
    SETTINGS = Settings.from_environ(os.environ)
except ConfigError as problem:
    if CLI_MODE:
        raise SystemExit(f"email-checker: {problem}") from None  # a message for the CLI user, not a traceback
    raise
if CLI_MODE:
    # Imported here only: tools/ is not deployed, and tests and Lambda import the app without it. It refuses a stage
    # with no STREAM_ARN, or whose policy files were generated for another one (AWS would deny every write), a deploy
    # to another region than the stream's, or a batch that could not answer inside the function's timeout if DynamoDB
    # stalled (docs/design.md §3).
    from tools.deploy_guard import budget_refusal, deploy_refusal, region_refusal

    _project_dir = os.path.dirname(os.path.abspath(__file__))
    _stage = os.environ.get("STAGE", "")
    _refusal = (
        deploy_refusal(_project_dir, _stage, SETTINGS.stream_arn)
        or region_refusal(_stage, SETTINGS.stream_arn, sys.argv, dict(os.environ))
        or budget_refusal(_project_dir, _stage, SETTINGS)
    )
    if _refusal:
        raise SystemExit(f"email-checker: {_refusal}")


if os.environ.get("AWS_LAMBDA_FUNCTION_NAME") and not CLI_MODE:
    # In Lambda, build the function's clients, domain list and Powertools in the init phase, not in the first batch's
    # time budget. Tests and the CLI import this module without it, so importing it stays cheap.
    _name = os.environ["AWS_LAMBDA_FUNCTION_NAME"]
    if _name.endswith("-sweep_table") or "-SweepTable-" in _name:  # deploy, package
        sweep_for(SETTINGS)
    elif _name.endswith("-reconcile_discarded_batches") or "-ReconcileDiscardedBatches-" in _name:  # deploy, package
        reconciler_for(SETTINGS)
    else:
        processor_for(SETTINGS)


@app.on_dynamodb_record(
    # Tests and the local mapping import the app with no STREAM_ARN: the handler takes each record's table from its
    # eventSourceARN, so only the deployed mapping needs the real one.
    stream_arn=SETTINGS.stream_arn or UNBOUND_STREAM_ARN,
    batch_size=SETTINGS.batch_size,
    starting_position=SETTINGS.starting_position,
    maximum_batching_window_in_seconds=SETTINGS.maximum_batching_window_in_seconds,
)
def sync_is_personal_email(event: DynamoDBEvent) -> dict[str, Any]:
    """Bring every item the batch touched under the invariant before the deadline; report what failed for a retry."""
    return processor_for(Settings.from_environ(os.environ)).handle(event.to_dict(), event.context)


# The stream's on-failure queue by name: `chalice deploy` subscribes to it in the deploying account and region (the
# queue must exist first: `tools.stage enable-stream` or `queues` makes it); the packaged template's merge points
# the event source at its own `StreamFailureQueue` instead.
@app.on_sqs_message(
    queue=failure_queue_name(app.app_name, SETTINGS.stage),
    batch_size=1,
    maximum_concurrency=RECONCILER_MAXIMUM_CONCURRENCY,
)
def reconcile_discarded_batches(event: SQSEvent) -> dict[str, Any] | None:
    """Bring every item of a discarded batch under the invariant from its S3 on-failure object (when the batch's
    records can't be had: an urgent pass of the sweep); name the messages to come back later."""
    settings = Settings.from_environ(os.environ)
    messages = [record.to_dict() for record in event]
    return reconciler_for(settings).answer(
        messages, event.context.get_remaining_time_in_millis, settings.report_batch_item_failures
    )


@app.schedule(Rate(SETTINGS.sweep_rate_minutes, unit=Rate.MINUTES), name="sweep_table")
def sweep_table(event: CloudWatchEvent) -> dict[str, Any]:
    """Work the sweep's pass over the whole table until the run's time is nearly up; where it stands, for the log."""
    return sweep(Settings.from_environ(os.environ), event.context.get_remaining_time_in_millis).summary()
