"""Wiring: one processor per distinct stage configuration, with its DynamoDB client, logger and metrics."""

from __future__ import annotations

from functools import lru_cache

from chalicelib.config import Settings

SERVICE = "email-checker"


@lru_cache(maxsize=4)
def processor_for(settings: Settings):  # noqa: ANN201 - the import of StreamProcessor is deferred (cold start)
    """The stage's processor, built on first use and kept for the life of the execution environment."""
    import boto3
    from aws_lambda_powertools import Logger, Metrics

    from chalicelib.domains import EmailClassifier, personal_domain_set
    from chalicelib.dynamodb import DynamoDBGateway, client_config
    from chalicelib.processor import StreamProcessor

    domains = personal_domain_set(
        only=settings.personal_domains_only,
        add=settings.personal_domains_add,
        remove=settings.personal_domains_remove,
    )
    client = boto3.session.Session().client(
        "dynamodb", config=client_config(max_pool_connections=settings.write_concurrency)
    )
    return StreamProcessor(
        classify=EmailClassifier(domains).is_personal_email,
        gateway=DynamoDBGateway(client, max_concurrency=settings.write_concurrency),
        report_batch_item_failures=settings.report_batch_item_failures,
        logger=Logger(service=SERVICE),
        metrics=Metrics(service=SERVICE, namespace="EmailChecker"),
    )
