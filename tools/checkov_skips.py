"""The security scan's accepted findings: each checkov check the packaged template does not pass on purpose, with
its reason, written into the resource's Metadata (`checkov: skip: [{id, comment}]`) by the merge template.

checkov 3.3.30 (requirements-checkov.txt) scans `chalice package`'s output in tests/test_checkov.py; docs/deploy.md
lists every skip below. A skip names one check on one resource: a new resource or a new check is scanned in full.
"""

from __future__ import annotations

from typing import Any

from tools.sweep_template import SWEEP_FUNCTION, SWEEP_LOG_GROUP
from tools.template_parts import (
    DEAD_LETTER_QUEUE,
    FAILURE_BUCKET,
    FUNCTION,
    LOG_GROUP,
    QUEUE,
    RECONCILER_FUNCTION,
    RECONCILER_LOG_GROUP,
    TABLE,
)

NO_VPC = (
    "CKV_AWS_117",
    "No VPC: the function reaches only AWS APIs (DynamoDB, SQS, S3, CloudWatch) over TLS with IAM-signed requests "
    "and no private resource; a VPC would add NAT or endpoints and cold-start time and protect nothing here.",
)
ENVIRONMENT_KEY = (
    "CKV_AWS_173",
    "The environment holds settings and resource names, no secret; Lambda encrypts it at rest with its AWS-managed "
    "key. A customer-managed key would add a key policy and KMS calls for no data worth it.",
)
LOG_KEY = (
    "CKV_AWS_158",
    "CloudWatch Logs encrypts log data at rest; the functions log no personal data (sequence numbers, counts and "
    "outcomes only: docs/design.md), so a customer-managed key protects nothing more.",
)
SQS_MANAGED_ENCRYPTION = (
    "CKV_AWS_27",
    "Encrypted at rest with SQS-managed keys (SqsManagedSseEnabled: true, explicit); this check reads only "
    "KmsMasterKeyId. S3's event notifications can't use the AWS-managed alias/aws/sqs key; a customer-managed key "
    "is an adopter's choice.",
)
STREAM_INVOKED = (
    "CKV_AWS_116",
    "Invoked synchronously by its event source mapping, where a dead-letter queue never applies: a failed batch goes "
    "to the mapping's on-failure destination (DestinationConfig.OnFailure).",
)
SQS_INVOKED = (
    "CKV_AWS_116",
    "Invoked synchronously by its SQS event source, where a dead-letter queue never applies: a message it can't "
    "finish goes to the queue's redrive dead-letter queue (StreamFailureDeadLetterQueue).",
)
SHARD_BOUNDED = (
    "CKV_AWS_115",
    "Unreserved on purpose: a stream runs at most open shards x ParallelizationFactor at once, so its concurrency is "
    "bounded by the stream; a reservation below that throttles shards until records are discarded. "
    "`tools.stage status` checks it against the stream (docs/performance.md, sizing).",
)
BUCKET_ACCESS_LOGS = (
    "CKV_AWS_18",
    "No access logging: only Lambda's role writes and the reconciler's reads; CloudTrail data events are the audit "
    "trail if one is required, and a log bucket would need a log bucket of its own.",
)
SCHEDULED = (
    "CKV_AWS_116",
    "Invoked by its schedule: a failed run is retried by Lambda, counted (SweepRunFailed, SweepErrors, alarmed) and "
    "resumed by the next run from the state it kept; a dead-letter queue would keep an empty scheduled event.",
)
SQS_SCALED = (
    "CKV_AWS_115",
    "Capped where AWS advises for an SQS event source: its ScalingConfig.MaximumConcurrency (RECONCILER_MAXIMUM_"
    "CONCURRENCY); a reservation below the poller's scaling throttles receives, which count toward the dead-letter "
    "queue's maxReceiveCount.",
)
TABLE_KEY = (
    "CKV_AWS_119",
    "Encrypted at rest with the DynamoDB-owned key (SSESpecification.SSEEnabled); a customer-managed key is an "
    "adopter's choice (cost, key policy for every function and for the stream) that the stack does not make for them.",
)

SKIPS: dict[str, tuple[tuple[str, str], ...]] = {
    FUNCTION: (STREAM_INVOKED, NO_VPC, SHARD_BOUNDED, ENVIRONMENT_KEY),
    RECONCILER_FUNCTION: (SQS_INVOKED, NO_VPC, ENVIRONMENT_KEY, SQS_SCALED),
    SWEEP_FUNCTION: (SCHEDULED, NO_VPC, ENVIRONMENT_KEY),
    SWEEP_LOG_GROUP: (LOG_KEY,),
    LOG_GROUP: (LOG_KEY,),
    RECONCILER_LOG_GROUP: (LOG_KEY,),
    QUEUE: (SQS_MANAGED_ENCRYPTION,),
    DEAD_LETTER_QUEUE: (SQS_MANAGED_ENCRYPTION,),
    FAILURE_BUCKET: (BUCKET_ACCESS_LOGS,),
    TABLE: (TABLE_KEY,),
}


def with_checkov_skips(resources: dict[str, Any]) -> dict[str, Any]:
    """The merge template's resources with each accepted finding in its Metadata (merged into Chalice's resource)."""
    for logical_id, skips in SKIPS.items():
        if logical_id in resources:
            metadata = resources[logical_id].setdefault("Metadata", {})
            metadata["checkov"] = {"skip": [{"id": check, "comment": comment} for check, comment in skips]}
    return resources
