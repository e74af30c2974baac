"""Wiring: one processor per distinct stage configuration, with its DynamoDB client, logger and metrics."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from chalicelib.config import Settings

if TYPE_CHECKING:
    from chalicelib.backfill import SegmentWorker
    from chalicelib.domains import EmailClassifier
    from chalicelib.processor import StreamProcessor

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
        gateway=DynamoDBGateway(client, max_concurrency=settings.write_concurrency),
        report_batch_item_failures=settings.report_batch_item_failures,
        logger=Logger(service=SERVICE, stage=settings.stage),
        metrics=metrics,
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
    """A DynamoDB client with the function's botocore settings (endpoint and region from the environment)."""
    import boto3

    from chalicelib.dynamodb import client_config

    return boto3.session.Session().client(
        "dynamodb", config=client_config(max_pool_connections=settings.write_concurrency)
    )


@lru_cache(maxsize=4)
def backfill_worker_for(settings: Settings) -> SegmentWorker:
    """The stage's backfill segment worker, built on first use: same classification and writes as the handler."""
    from chalicelib.backfill import SegmentWorker
    from chalicelib.dynamodb import DynamoDBGateway

    client = dynamodb_client(settings)
    return SegmentWorker(
        client,
        DynamoDBGateway(client, max_concurrency=settings.write_concurrency),
        classifier_for(settings).is_personal_email,
    )


def backfill_segment(settings: Settings, payload: Mapping[str, Any], remaining_ms: Callable[[], int]) -> dict[str, Any]:
    """Run one invocation of the backfill function and log its counts (segment numbers and counts only)."""
    from chalicelib.backfill import run_segment

    result = run_segment(payload, backfill_worker_for(settings), remaining_ms)
    _backfill_logger().info(
        "backfill segment",
        extra={
            "stage": settings.stage,
            "segment": result["segment"],
            "total_segments": result["total_segments"],
            "done": result["done"],
            "attempt": result.get("attempt"),
            **result["counts"],
        },
    )
    return result


@lru_cache(maxsize=1)
def _backfill_logger() -> Any:
    from aws_lambda_powertools import Logger

    return Logger(service=SERVICE)
