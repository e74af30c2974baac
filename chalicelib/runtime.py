"""Wiring: one processor per distinct stage configuration, with its DynamoDB client, logger and metrics."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from chalicelib.config import UNBOUND_STREAM_ARN, Settings, stage_failure_bucket_name

if TYPE_CHECKING:
    from chalicelib.domains import EmailClassifier
    from chalicelib.processor import StreamProcessor
    from chalicelib.reconciler import MessageHandler
    from chalicelib.sweep import RunReport, StateStore, Sweeper

SERVICE = "email-checker"
METRICS_NAMESPACE = "EmailChecker"
"""Every metric carries the dimensions `service` and `stage` (docs/design.md §7)."""


@lru_cache(maxsize=4)
def processor_for(settings: Settings) -> StreamProcessor:
    """The stage's processor, built on first use and kept for the life of the execution environment.

    boto3, Powertools and the domain list are imported here, not at module level, so importing `app.py` stays cheap.
    """
    from aws_lambda_powertools import Logger

    from chalicelib.dynamodb import DynamoDBGateway
    from chalicelib.processor import StreamProcessor

    client = dynamodb_client(settings)
    return StreamProcessor(
        classify=classifier_for(settings).is_personal_email,
        gateway=DynamoDBGateway(client, settings.attributes, max_concurrency=settings.write_concurrency),
        report_batch_item_failures=settings.report_batch_item_failures,
        logger=Logger(service=SERVICE, stage=settings.stage),
        metrics=metrics_for(settings),
    )


def metrics_for(settings: Settings) -> Any:
    """Powertools Metrics in the service's namespace with the stage's dimension."""
    from aws_lambda_powertools import Metrics

    metrics = Metrics(service=SERVICE, namespace=METRICS_NAMESPACE)
    metrics.set_default_dimensions(stage=settings.stage)
    return metrics


FAILURE_BUCKET_VARIABLE = "FAILURE_BUCKET"
"""The packaged stack's on-failure bucket (Settings.failure_bucket), which holds the sweep's state; on the `chalice
deploy` path the name is derived from the stream's ARN."""


def state_bucket(settings: Settings) -> str:
    """The stage's on-failure bucket, where the sweep's state lives."""
    # SERVICE is also the Chalice app's name, which the `chalice deploy` path's bucket is named after.
    return settings.failure_bucket or stage_failure_bucket_name(
        SERVICE, settings.stage, settings.stream_arn or UNBOUND_STREAM_ARN
    )


def state_store(settings: Settings, s3: Any) -> StateStore:
    """The stage's sweep state object."""
    from chalicelib.sweep import StateStore

    return StateStore(s3, state_bucket(settings))


@lru_cache(maxsize=4)
def reconciler_for(settings: Settings) -> MessageHandler:
    """The stage's failure-queue consumer, built on first use: the on-failure object read from S3, the handler's
    reads, planner and writes, and the sweep's urgent request as the last resort. It never reads the stream."""

    import boto3
    from aws_lambda_powertools import Logger

    from chalicelib.dynamodb import DynamoDBGateway, client_config
    from chalicelib.reconciler import MessageHandler, Reconciler

    session = boto3.session.Session()
    client = dynamodb_client(settings)
    config = client_config(max_pool_connections=settings.write_concurrency)
    s3 = session.client("s3", config=config)
    reconciler = Reconciler(
        gateway=DynamoDBGateway(client, settings.attributes, max_concurrency=settings.write_concurrency),
        classify=classifier_for(settings).is_personal_email,
        s3=s3,
        sweep=state_store(settings, s3),
    )
    return MessageHandler(
        reconciler,
        sqs=session.client("sqs", config=config),
        logger=Logger(service=SERVICE, stage=settings.stage),
        metrics=metrics_for(settings),
    )


@lru_cache(maxsize=4)
def classifier_for(settings: Settings) -> EmailClassifier:
    """The stage's classifier: the default list with the stage's domain overrides."""
    from chalicelib.domains import EmailClassifier, personal_domain_set

    domains = personal_domain_set(
        only=settings.personal_domains_only,
        add=settings.personal_domains_add,
        remove=settings.personal_domains_remove,
    )
    return EmailClassifier(domains)


def dynamodb_client(settings: Settings) -> Any:
    """A DynamoDB client with the function's botocore settings, connections for its write concurrency."""
    from chalicelib.dynamodb import dynamodb_client as new_client

    return new_client(settings.write_concurrency)


SWEEP_READ_TIMEOUT_SECONDS = 20.0
"""A Scan page of 1 MB is not the handler's 100-key read: the sweep's clients wait longer before retrying."""


@lru_cache(maxsize=4)
def sweep_for(settings: Settings) -> Sweeper:
    """The stage's sweep, built on first use: the backfill's page, the handler's planner and conditional writes,
    segments in threads, the state in the on-failure bucket."""
    import boto3

    from chalicelib.backfill import SegmentWorker
    from chalicelib.dynamodb import DynamoDBGateway, client_config
    from chalicelib.records import stage_table_name
    from chalicelib.sweep import Sweeper

    table = stage_table_name(settings.stream_arn)
    if table is None:
        raise ValueError("the sweep needs the stage's STREAM_ARN (its table)")
    session = boto3.session.Session()
    segments = settings.sweep_segments
    config = client_config(segments * (settings.write_concurrency + 1), read_timeout=SWEEP_READ_TIMEOUT_SECONDS)
    client = session.client("dynamodb", config=config)

    def new_gateway() -> DynamoDBGateway:
        return DynamoDBGateway(client, settings.attributes, max_concurrency=settings.write_concurrency)

    worker = SegmentWorker(client, new_gateway(), classifier_for(settings).is_personal_email, new_gateway=new_gateway)
    store = state_store(settings, session.client("s3", config=config))
    return Sweeper(client, worker, store, table, settings.sweep_config())


SWEEP_METRICS = {
    "SweepItemsChecked": lambda report: report.counts.scanned,
    "SweepItemsFixed": lambda report: report.counts.written,
    "SweepWritesFailed": lambda report: report.counts.failed,
    "SweepPassesFinished": lambda report: report.passes_finished,
    "SweepPassOverdue": lambda report: int(report.pass_overdue),
    "SweepUrgentOverdue": lambda report: int(report.urgent_overdue),
    "SweepSuperseded": lambda report: int(report.outcome == "superseded"),
}


def sweep(settings: Settings, remaining_ms: Any) -> RunReport:
    """One scheduled run of the sweep, with its summary line and metrics; a run that fails is logged (the error's type
    and code), counted (SweepRunFailed, SweepStateWriteErrors) and raised, so Lambda counts it too."""
    from chalicelib.sweep import StateWriteError, error_code

    logger, metrics = _service_logger(), metrics_for(settings)
    try:
        report = sweep_for(settings).run(remaining_ms)
    except Exception as error:
        logger.error("sweep failed", extra={"stage": settings.stage, "error": error_code(error)})
        metrics.add_metric(name="SweepRunFailed", unit="Count", value=1)
        metrics.add_metric(name="SweepStateWriteErrors", unit="Count", value=int(isinstance(error, StateWriteError)))
        metrics.flush_metrics()
        raise
    logger.info("sweep run", extra={"stage": settings.stage, **report.summary()})
    for name, value in SWEEP_METRICS.items():
        metrics.add_metric(name=name, unit="Count", value=value(report))
    metrics.add_metric(name="SweepRunFailed", unit="Count", value=0)
    metrics.add_metric(name="SweepStateWriteErrors", unit="Count", value=0)
    metrics.flush_metrics()
    return report


@lru_cache(maxsize=1)
def _service_logger() -> Any:
    from aws_lambda_powertools import Logger

    return Logger(service=SERVICE)
