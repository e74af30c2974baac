"""Wiring: one processor per distinct stage configuration, with its DynamoDB client, logger and metrics."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from chalicelib.config import UNBOUND_STREAM_ARN, Settings, stage_failure_bucket_name

if TYPE_CHECKING:
    from chalicelib.audit import Auditor, AuditReport
    from chalicelib.backfill import SegmentWorker
    from chalicelib.domains import EmailClassifier
    from chalicelib.processor import StreamProcessor
    from chalicelib.reconciler import MessageHandler

SERVICE = "email-checker"
METRICS_NAMESPACE = "EmailChecker"
"""Every metric carries the dimensions `service` and `stage` (docs/design.md §7)."""


@lru_cache(maxsize=4)
def processor_for(settings: Settings) -> StreamProcessor:
    """The stage's processor, built on first use and kept for the life of the execution environment.

    boto3, Powertools and the domain list are imported here, not at module level, so importing `app.py` stays cheap.
    """
    from aws_lambda_powertools import Logger, Metrics

    from chalicelib.dynamodb import DynamoDBGateway
    from chalicelib.processor import StreamProcessor

    client = dynamodb_client(settings)
    metrics = Metrics(service=SERVICE, namespace=METRICS_NAMESPACE)
    metrics.set_default_dimensions(stage=settings.stage)
    return StreamProcessor(
        classify=classifier_for(settings).is_personal_email,
        gateway=DynamoDBGateway(client, settings.attributes, max_concurrency=settings.write_concurrency),
        report_batch_item_failures=settings.report_batch_item_failures,
        logger=Logger(service=SERVICE, stage=settings.stage),
        metrics=metrics,
    )


def metrics_for(settings: Settings) -> Any:
    """Powertools Metrics in the service's namespace with the stage's dimension."""
    from aws_lambda_powertools import Metrics

    metrics = Metrics(service=SERVICE, namespace=METRICS_NAMESPACE)
    metrics.set_default_dimensions(stage=settings.stage)
    return metrics


FAILURE_BUCKET_VARIABLE = "FAILURE_BUCKET"
"""The packaged stack's on-failure bucket (Settings.failure_bucket): where a pointer that came with no bucket (an SQS
or SNS destination's record) takes the backfill lock; on the `chalice deploy` path the name is derived from the
stream's ARN. Objects' own notifications name their bucket."""


@lru_cache(maxsize=4)
def reconciler_for(settings: Settings) -> MessageHandler:
    """The stage's failure-queue consumer, built on first use: the on-failure object read from S3, the handler's
    reads, planner and writes, and the locked backfill as the last resort. It never reads the stream."""

    import boto3
    from aws_lambda_powertools import Logger

    from chalicelib.dynamodb import DynamoDBGateway, client_config
    from chalicelib.reconciler import LambdaBackfill, MessageHandler, Reconciler, stage_table_name

    session = boto3.session.Session()
    client = dynamodb_client(settings)
    config = client_config(max_pool_connections=settings.write_concurrency)
    reconciler = Reconciler(
        gateway=DynamoDBGateway(client, settings.attributes, max_concurrency=settings.write_concurrency),
        classify=classifier_for(settings).is_personal_email,
        s3=session.client("s3", config=config),
        backfill=LambdaBackfill(session.client("lambda", config=config), client, settings.backfill_function_name),
        stage_table=stage_table_name(settings.stream_arn),
        # SERVICE is also the Chalice app's name, which the `chalice deploy` path's bucket is named after.
        lock_bucket=settings.failure_bucket
        or stage_failure_bucket_name(SERVICE, settings.stage, settings.stream_arn or UNBOUND_STREAM_ARN),
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


@lru_cache(maxsize=4)
def backfill_worker_for(settings: Settings) -> SegmentWorker:
    """The stage's backfill segment worker, built on first use: same classification and writes as the handler."""
    from chalicelib.backfill import SegmentWorker
    from chalicelib.dynamodb import DynamoDBGateway

    client = dynamodb_client(settings)
    return SegmentWorker(
        client,
        DynamoDBGateway(client, settings.attributes, max_concurrency=settings.write_concurrency),
        classifier_for(settings).is_personal_email,
    )


@lru_cache(maxsize=4)
def audit_for(settings: Settings) -> Auditor:
    """The stage's audit, built on first use: the backfill's page, the handler's reads, planner and writes, on a
    random sample of the stage's table; the table's key schema is read on its first run and kept."""
    from chalicelib.audit import Auditor
    from chalicelib.dynamodb import DynamoDBGateway

    client = dynamodb_client(settings)
    return Auditor(
        client,
        DynamoDBGateway(client, settings.attributes, max_concurrency=settings.write_concurrency),
        classifier_for(settings).is_personal_email,
        settings.stream_arn,
        settings.audit_sample_items,
        settings.audit_confirm_seconds,
    )


def audit(settings: Settings, remaining_ms: int) -> AuditReport:
    """One run of the scheduled audit, with its summary line and metrics."""
    from chalicelib.audit import run_audit

    return run_audit(audit_for(settings), remaining_ms, settings.stage, _service_logger(), metrics_for(settings))


def backfill_segment(
    settings: Settings,
    payload: Mapping[str, Any],
    remaining_ms: Callable[[], int],
    function_name: str | None = None,
    lambda_client: Any = None,
) -> dict[str, Any]:
    """Run one invocation of the backfill function and log its counts (segment numbers and counts only); a
    self-continuing segment that isn't done re-invokes `function_name` asynchronously from where it stopped."""
    from chalicelib.backfill import next_payload, run_segment
    from chalicelib.backfill_lock import finish_chain

    try:
        result = run_segment(payload, backfill_worker_for(settings), remaining_ms)
        following = next_payload(payload, result)
    except Exception:
        finish_chain(payload, None, False, _s3_client, _service_logger())  # a locked run's lock is left to expire
        raise
    _service_logger().info(
        "backfill segment",
        extra={
            "stage": settings.stage,
            "segment": result["segment"],
            "total_segments": result["total_segments"],
            "done": result["done"],
            "attempt": result.get("attempt"),
            "run_id": payload.get("run_id"),
            "continuation": payload.get("continuation"),
            "continues": following is not None and bool(function_name),
            **result["counts"],
        },
    )
    if following is not None and function_name:
        client = lambda_client if lambda_client is not None else _lambda_client()
        client.invoke(FunctionName=function_name, InvocationType="Event", Payload=json.dumps(following).encode())
    finish_chain(payload, result, following is not None and bool(function_name), _s3_client, _service_logger())
    return result


@lru_cache(maxsize=1)
def _lambda_client() -> Any:
    import boto3

    return boto3.session.Session().client("lambda")


@lru_cache(maxsize=1)
def _s3_client() -> Any:
    import boto3

    return boto3.session.Session().client("s3")


@lru_cache(maxsize=1)
def _service_logger() -> Any:
    from aws_lambda_powertools import Logger

    return Logger(service=SERVICE)
