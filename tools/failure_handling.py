"""The event source mapping's failure handling and filter: one definition for both deploy paths.

The values are the defaults AWS Solutions Constructs ship for `aws-dynamodbstreams-lambda` (core library,
`lambda-event-source-mapping-defaults.ts`: bisectBatchOnError true, retryAttempts 500, maxRecordAge 24 h, an SQS
on-failure destination), plus partial batch responses and a filter that keeps REMOVE records away from the function.

The keys are the Lambda API's parameter names, which are also the CloudFormation/SAM property names, so the same
dictionary is merged into the packaged template's DynamoDB event and passed to `update_event_source_mapping`.
"""

from __future__ import annotations

import json
from typing import Any

BISECT_BATCH_ON_FUNCTION_ERROR = True
MAXIMUM_RETRY_ATTEMPTS = 500
MAXIMUM_RECORD_AGE_IN_SECONDS = 86_400
REPORT_BATCH_ITEM_FAILURES = "ReportBatchItemFailures"
# REMOVE needs nothing (DESIGN §4); listing the two event names that do need work, rather than `anything-but REMOVE`,
# keeps an event name DynamoDB might add later away from the handler until someone decides what it means.
FILTER_PATTERN = {"eventName": ["INSERT", "MODIFY"]}
# The on-failure queue keeps a discarded batch's pointer (shard, sequence numbers) for the longest SQS allows.
FAILURE_QUEUE_RETENTION_SECONDS = 1_209_600
# The reconciler (`reconcile_discarded_batches`) consumes the on-failure queue. A message it can't finish comes back
# after a doubling delay (chalicelib.reconciler.retry_delay_seconds: 30 s, 60 s, ... at most 12 h); after this many
# receives SQS moves it to the dead-letter queue, kept as long as SQS allows. A dead-letter queue's retention counts
# from the original enqueue time, so it must be no shorter than the source queue's.
RECONCILER_TIMEOUT_SECONDS = 120
RECONCILER_MAX_RECEIVES = 10
DEAD_LETTER_RETENTION_SECONDS = 1_209_600
# Lambda refuses an SQS event source whose visibility timeout is below the function's timeout; AWS recommends six
# times it, so a message isn't redelivered while Lambda still retries a throttled invocation.
FAILURE_QUEUE_VISIBILITY_TIMEOUT_SECONDS = 6 * RECONCILER_TIMEOUT_SECONDS


def filter_criteria() -> dict[str, Any]:
    """The mapping's FilterCriteria: the pattern as the JSON string Lambda expects."""
    return {"Filters": [{"Pattern": json.dumps(FILTER_PATTERN)}]}


def mapping_failure_handling(failure_destination_arn: Any) -> dict[str, Any]:
    """Failure handling and filter for the mapping; the destination is an ARN string or a CloudFormation intrinsic."""
    return {
        "BisectBatchOnFunctionError": BISECT_BATCH_ON_FUNCTION_ERROR,
        "MaximumRetryAttempts": MAXIMUM_RETRY_ATTEMPTS,
        "MaximumRecordAgeInSeconds": MAXIMUM_RECORD_AGE_IN_SECONDS,
        "DestinationConfig": {"OnFailure": {"Destination": failure_destination_arn}},
        "FunctionResponseTypes": [REPORT_BATCH_ITEM_FAILURES],
        "FilterCriteria": filter_criteria(),
    }


def https_only_queue_policy(queue_arn: Any) -> dict[str, Any]:
    """The on-failure queue's resource policy: refuse any request not made over TLS (as Solutions Constructs do)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "HttpsOnly",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "sqs:*",
                "Resource": queue_arn,
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }


def redrive_policy(dead_letter_arn: Any) -> dict[str, Any]:
    """The on-failure queue's RedrivePolicy (an object in CloudFormation, a JSON string in SQS's API)."""
    return {"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": RECONCILER_MAX_RECEIVES}
