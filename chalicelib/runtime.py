"""Wiring: one processor per distinct stage configuration, with its DynamoDB client, logger and metrics."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from chalicelib.config import Settings

if TYPE_CHECKING:
    from chalicelib.processor import StreamProcessor

SERVICE = "email-checker"


@lru_cache(maxsize=4)
def processor_for(settings: Settings) -> StreamProcessor:
    """The stage's processor, built on first use and kept for the life of the execution environment.

    botocore, Powertools and the domain list are imported here, not at module level, so importing `app.py` stays
    cheap. The client comes from botocore directly: boto3 would add nothing to a DynamoDB client but its import
    (~0.1 s of the cold start, most of it s3transfer).
    """
    import botocore.session
    from aws_lambda_powertools import Logger, Metrics

    from chalicelib.domains import EmailClassifier, personal_domain_set
    from chalicelib.dynamodb import DynamoDBGateway, client_config
    from chalicelib.processor import StreamProcessor

    domains = personal_domain_set(
        only=settings.personal_domains_only,
        add=settings.personal_domains_add,
        remove=settings.personal_domains_remove,
    )
    client = botocore.session.get_session().create_client(
        "dynamodb", config=client_config(max_pool_connections=settings.write_concurrency)
    )
    return StreamProcessor(
        classify=EmailClassifier(domains).is_personal_email,
        gateway=DynamoDBGateway(client, max_concurrency=settings.write_concurrency),
        report_batch_item_failures=settings.report_batch_item_failures,
        logger=Logger(service=SERVICE),
        metrics=Metrics(service=SERVICE, namespace="EmailChecker"),
    )
