"""The event source mapping's failure handling and filter: one definition for both deploy paths and the local
mapping.

The keys are the Lambda API's parameter names, which are also the CloudFormation/SAM property names, so the same
dictionary is merged into the packaged template's DynamoDB event and passed to `update_event_source_mapping`.

Why these numbers (Lambda developer guide, "Retain discarded records for a DynamoDB event source in Lambda",
https://docs.aws.amazon.com/lambda/latest/dg/services-dynamodb-errors.html, and "Configuring partial batch response
with DynamoDB and Lambda", https://docs.aws.amazon.com/lambda/latest/dg/services-ddb-batchfailurereporting.html):
- a function error is retried until MaximumRetryAttempts or MaximumRecordAgeInSeconds; a partial batch response is
  a failure retried "up to the retry limit", so every retry after one counts; splitting a batch (bisect) "doesn't
  consume the retry quota"; throttles and other errors before invocation are bounded by the record age alone.
- a discarded batch reaches the on-failure bucket (tools/failure_bucket.py) as an object holding the batch's records
  (its `payload`), so the reconciler needs nothing from the stream; the role needs s3:PutObject and s3:ListBucket on
  it (the same guide). Discarding at 6 hours of age still leaves the stream's 24 hours for a look by hand.
- one poison record in a batch of 100 costs ceil(log2 100) = 7 failing halves plus their 7 succeeding siblings
  (free), then 1 + 100 attempts alone: about 115 invocations, at most 115 minutes if every one runs into the 60 s
  timeout, so the retry quota, not the age, ends it, and the shard moves on within 2 hours, not 6.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

BISECT_BATCH_ON_FUNCTION_ERROR = True
MAXIMUM_RETRY_ATTEMPTS = 100
MAXIMUM_RECORD_AGE_IN_SECONDS = 6 * 3600
STREAM_RETENTION_SECONDS = 24 * 3600
REPORT_BATCH_ITEM_FAILURES = "ReportBatchItemFailures"
# What both deploy paths set on the function once its mapping reports partial failures (the stage keeps it off, so
# a mapping recreated without FunctionResponseTypes falls back to raising); the local mapping's function gets it too.
DEPLOYED_FUNCTION = {"REPORT_BATCH_ITEM_FAILURES": "true"}
METRICS_CONFIG = {"Metrics": ["EventCount"]}
# Every INSERT and MODIFY reaches the handler, never a REMOVE, whatever the table's key and stream view (the handler
# reads the items themselves, so a KEYS_ONLY or OLD_IMAGE stream needs the same records). Recorded on real AWS:
# CreateEventSourceMapping accepted this top-level `eventName` pattern and delivered both an INSERT and a MODIFY
# (tests/data/filters/c02_ddb_filter_content_or_filter.json, with its source).
FILTER_PATTERN = {"eventName": ["INSERT", "MODIFY"]}
# The on-failure queue keeps a failure object's notification for the longest SQS allows (the objects' default life).
FAILURE_QUEUE_RETENTION_SECONDS = 1_209_600
# apply-failure-handling: IAM takes seconds to minutes to let a role use a new destination.
ROLE_PROPAGATION_DELAYS = (2, 4, 8, 16, 32, 64)
MAPPING_WAIT_SECONDS = 300
MAPPING_POLL_SECONDS = 5
# The reconciler (`reconcile_discarded_batches`) consumes the on-failure queue. A message it can't finish comes back
# after a doubling delay (chalicelib.reconciler.retry_delay_seconds: 30 s, 60 s, ... at most 12 h); after this many
# receives SQS moves it to the dead-letter queue, kept as long as SQS allows. A dead-letter queue's retention counts
# from the original enqueue time, so it must be no shorter than the source queue's.
RECONCILER_TIMEOUT_SECONDS = 120
# The reconciler's SQS event source reports batch item failures: a message to come back later is named in the
# function's answer, not raised, so it is no Lambda `Errors` (which stay for a crash or a timeout) and Lambda doesn't
# scale the polling down for it (Lambda developer guide, "Handling errors for an SQS event source in Lambda",
# https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-errorhandling.html). As for the stream handler, the
# function answers so only once its mapping does (DEPLOYED_FUNCTION): a mapping that doesn't would delete the message.
RECONCILER_MAPPING = {"FunctionResponseTypes": [REPORT_BATCH_ITEM_FAILURES]}
RECONCILER_MAX_RECEIVES = 10
DEAD_LETTER_RETENTION_SECONDS = 1_209_600
# Lambda refuses an SQS event source whose visibility timeout is below the function's timeout; AWS recommends six
# times it, so a message isn't redelivered while Lambda still retries a throttled invocation.
FAILURE_QUEUE_VISIBILITY_TIMEOUT_SECONDS = 6 * RECONCILER_TIMEOUT_SECONDS


def filter_criteria() -> dict[str, Any]:
    """The mapping's FilterCriteria, the pattern as the JSON string Lambda expects (a fresh copy each call)."""
    return {"Filters": [{"Pattern": json.dumps(FILTER_PATTERN)}]}


def stream_filters(template: dict[str, Any]) -> list[list[Any]]:
    """The filter patterns (parsed) of every DynamoDB stream event in a merge or packaged template."""
    found = []
    for resource in template.get("Resources", {}).values():
        for event in (resource.get("Properties") or {}).get("Events", {}).values():
            properties = event.get("Properties") or {}
            if "Stream" in properties:
                rules = (properties.get("FilterCriteria") or {}).get("Filters", [])
                found.append([json.loads(rule["Pattern"]) for rule in rules])
    return found


def filter_refusal(project_dir: Path | str) -> str | None:
    """Why a merge template `chalice package` may use holds another stream filter than FILTER_PATTERN, or None.

    The deploy guard asks this: the committed deploy/merge-template.json (the plain `chalice package
    --merge-template` route) and the one `tools.stage package` writes into its scratch copy.
    """
    for relative in ("deploy/merge-template.json", "merge-template.json"):
        path = Path(project_dir) / relative
        if path.exists() and any(found != [FILTER_PATTERN] for found in stream_filters(json.loads(path.read_text()))):
            return (
                f"{relative}'s stream filter is not {json.dumps(FILTER_PATTERN)}: Lambda would drop records the "
                "handler needs. Run `python -m tools.stage merge-template` to regenerate it"
            )
    return None


def mapping_failure_handling(failure_destination_arn: Any, parallelization_factor: int = 1) -> dict[str, Any]:
    """Failure handling, metrics, filter and the stage's ParallelizationFactor for the mapping; the destination is an
    ARN or a CloudFormation intrinsic."""
    return {
        "BisectBatchOnFunctionError": BISECT_BATCH_ON_FUNCTION_ERROR,
        "MaximumRetryAttempts": MAXIMUM_RETRY_ATTEMPTS,
        "MaximumRecordAgeInSeconds": MAXIMUM_RECORD_AGE_IN_SECONDS,
        "DestinationConfig": {"OnFailure": {"Destination": failure_destination_arn}},
        "FunctionResponseTypes": [REPORT_BATCH_ITEM_FAILURES],
        "MetricsConfig": METRICS_CONFIG,
        "FilterCriteria": filter_criteria(),
        "ParallelizationFactor": parallelization_factor,
    }


def is_role_propagation_error(error: ClientError) -> bool:
    """Lambda refusing a destination because the role can't use it yet (IAM is still propagating): its message
    names the action (SendMessage on SQS, PutObject or ListBucket on S3)."""
    problem = error.response.get("Error", {})
    message = problem.get("Message", "")
    return problem.get("Code") == "InvalidParameterValueException" and any(
        action in message for action in ("SendMessage", "PutObject", "ListBucket")
    )


def is_settling_error(error: ClientError) -> bool:
    """Lambda refusing to update a mapping it is still creating or updating (ResourceInUseException, as right after
    the `chalice deploy` that made it: Lambda API Reference, UpdateEventSourceMapping, Errors)."""
    return error.response.get("Error", {}).get("Code") == "ResourceInUseException"


def with_role_propagation(
    call: Callable[[], dict[str, Any]],
    sleep: Callable[[float], None] = time.sleep,
    delays: tuple[float, ...] = ROLE_PROPAGATION_DELAYS,
) -> dict[str, Any]:
    """`call()`, retried with growing delays while Lambda says the role can't use the destination yet, or the mapping
    is still settling."""
    for delay in delays:
        try:
            return call()
        except ClientError as error:
            if not (is_role_propagation_error(error) or is_settling_error(error)):
                raise
        sleep(delay)
    return call()


def update_mapping(
    lambda_client: Any,
    uuid: str,
    settings: dict[str, Any],
    sleep: Callable[[float], None] = time.sleep,
    delays: tuple[float, ...] = ROLE_PROPAGATION_DELAYS,
) -> dict[str, Any]:
    """update_event_source_mapping, retried while the role's permission on the destination propagates."""
    return with_role_propagation(
        lambda: lambda_client.update_event_source_mapping(UUID=uuid, **settings), sleep, delays
    )


def wait_for_partial_failures(
    lambda_client: Any,
    uuid: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    timeout: float = MAPPING_WAIT_SECONDS,
    interval: float = MAPPING_POLL_SECONDS,
) -> dict[str, Any]:
    """Poll the mapping until it is Enabled and reports batch item failures; ValueError in one line on timeout."""
    give_up = clock() + timeout
    while True:
        mapping = lambda_client.get_event_source_mapping(UUID=uuid)
        if mapping.get("State") == "Enabled" and REPORT_BATCH_ITEM_FAILURES in (
            mapping.get("FunctionResponseTypes") or []
        ):
            return mapping
        if clock() >= give_up:
            raise ValueError(
                f"mapping {uuid} is still {mapping.get('State')} with FunctionResponseTypes "
                f"{mapping.get('FunctionResponseTypes') or []} after {timeout:.0f} s: the function was left raising on "
                "failures; run apply-failure-handling again"
            )
        sleep(interval)


def deny_without_tls(service: str, resources: Any) -> dict[str, Any]:
    """A resource policy that refuses any request to `service` not made over TLS (as Solutions Constructs do)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "HttpsOnly",
                "Effect": "Deny",
                "Principal": "*",
                "Action": f"{service}:*",
                "Resource": resources,
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }


def https_only_queue_policy(queue_arn: Any) -> dict[str, Any]:
    """The on-failure queue's resource policy: TLS only."""
    return deny_without_tls("sqs", queue_arn)


def redrive_policy(dead_letter_arn: Any) -> dict[str, Any]:
    """The on-failure queue's RedrivePolicy (an object in CloudFormation, a JSON string in SQS's API)."""
    return {"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": RECONCILER_MAX_RECEIVES}
