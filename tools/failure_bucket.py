"""The on-failure bucket: one definition for both deploy paths, rendered for S3's API (`chalice deploy`'s steps) and
for CloudFormation (the merge template), whose shapes differ.

Lambda writes a discarded batch's record, with the batch's records in its `payload`, to
`aws/lambda/<mapping UUID>/<shardId>/YYYY/MM/DD/...` (the key layout real AWS was recorded writing); an ObjectCreated
notification for that prefix goes to the stage's failure queue, which the reconciler consumes. The sweep's state is
the one object `sweep/state.json` (chalicelib/sweep.py).

Choices (docs/deploy.md lists them):
- encryption: S3-managed keys (SSE-S3, AES256), stated explicitly. A customer-managed KMS key would let a key policy
  gate reads, at the cost of a key per stage and kms:GenerateDataKey/Decrypt for the writer and the reader; it is a
  choice for the adopter to make, not a default;
- public access: all four blocks on, ACLs disabled (bucket owner enforced), TLS-only bucket policy;
- versioning on: an object is the only copy of a discarded batch's records, so an overwrite or a delete (a script, a
  role gone wrong) keeps the earlier version until the lifecycle removes it;
- lifecycle: failure objects (under `aws/lambda/` only) expire after the stage's FAILURE_OBJECT_RETENTION_DAYS
  (default 14, the failure queue's retention, so no message outlives its object), their earlier versions the same
  number of days after they stop being current; the sweep's state never expires, and each of its earlier versions
  (one per page written) goes a day after it stops being current; expired delete markers and unfinished uploads are
  removed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chalicelib.on_failure import OBJECT_PREFIX as FAILURE_PREFIX
from chalicelib.sweep import STATE_KEY as STATE_KEY  # re-exported for the policies
from tools.failure_handling import deny_without_tls, https_only_queue_policy

RETENTION_SETTING = "FAILURE_OBJECT_RETENTION_DAYS"
DEFAULT_RETENTION_DAYS = 14
MAX_RETENTION_DAYS = 3650
SSE_ALGORITHM = "AES256"
CREATED = "s3:ObjectCreated:*"
INCOMPLETE_UPLOAD_DAYS = 1
PUBLIC_ACCESS_BLOCK = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}
OWNERSHIP = {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
EXPIRE_RULE = "expire-failure-records"
STATE_VERSIONS_RULE = "remove-old-sweep-states"
DELETE_MARKER_RULE = "remove-expired-delete-markers"
STATE_VERSION_DAYS = 1


def retention_days(variables: Mapping[str, str]) -> int:
    """The stage's FAILURE_OBJECT_RETENTION_DAYS (default 14); ValueError naming the variable if it isn't 1 to 3650."""
    raw = variables.get(RETENTION_SETTING, "").strip()
    if not raw:
        return DEFAULT_RETENTION_DAYS
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_RETENTION_DAYS:
        raise ValueError(
            f"{RETENTION_SETTING} must be a whole number of days from 1 to {MAX_RETENTION_DAYS}, not {raw!r}"
        )
    return int(raw)


def objects(bucket_arn: Any, prefix: str) -> Any:
    """The ARN of the bucket's objects under `prefix` (`<bucket ARN>/<prefix>*`); a string or an intrinsic."""
    if isinstance(bucket_arn, str):
        return f"{bucket_arn}/{prefix}*"
    return {"Fn::Join": ["", [bucket_arn, f"/{prefix}*"]]}


def tls_only_policy(bucket_arn: Any) -> dict[str, Any]:
    """The bucket's policy: refuse any request not made over TLS, on the bucket and its objects."""
    return deny_without_tls("s3", [bucket_arn, objects(bucket_arn, "")])


def notifications_allowed(bucket_arn: Any, account: Any) -> dict[str, Any]:
    """The failure queue's policy statement letting this bucket's notifications in (and no other bucket's)."""
    return {
        "Sid": "FailureBucketNotifications",
        "Effect": "Allow",
        "Principal": {"Service": "s3.amazonaws.com"},
        "Action": "sqs:SendMessage",
        "Condition": {"ArnEquals": {"aws:SourceArn": bucket_arn}, "StringEquals": {"aws:SourceAccount": account}},
    }


def failure_queue_policy(queue_arn: Any, bucket_arn: Any, account: Any) -> dict[str, Any]:
    """The failure queue's policy: TLS only, and the bucket's ObjectCreated notifications may send to it."""
    document = https_only_queue_policy(queue_arn)
    document["Statement"].append({**notifications_allowed(bucket_arn, account), "Resource": queue_arn})
    return document


# S3's API (put_bucket_*), for the `chalice deploy` path.


def api_encryption() -> dict[str, Any]:
    """put_bucket_encryption's ServerSideEncryptionConfiguration."""
    return {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": SSE_ALGORITHM}}]}


def api_lifecycle(days: int) -> dict[str, Any]:
    """put_bucket_lifecycle_configuration's LifecycleConfiguration."""
    return {
        "Rules": [
            {
                "ID": EXPIRE_RULE,
                "Filter": {"Prefix": FAILURE_PREFIX},
                "Status": "Enabled",
                "Expiration": {"Days": days},
                "NoncurrentVersionExpiration": {"NoncurrentDays": days},
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": INCOMPLETE_UPLOAD_DAYS},
            },
            {
                "ID": STATE_VERSIONS_RULE,
                "Filter": {"Prefix": STATE_KEY},
                "Status": "Enabled",
                "NoncurrentVersionExpiration": {"NoncurrentDays": STATE_VERSION_DAYS},
            },
            {
                "ID": DELETE_MARKER_RULE,
                "Filter": {"Prefix": ""},
                "Status": "Enabled",
                "Expiration": {"ExpiredObjectDeleteMarker": True},
            },
        ]
    }


def api_notification(queue_arn: str) -> dict[str, Any]:
    """put_bucket_notification_configuration's NotificationConfiguration: new failure records to the queue."""
    return {
        "QueueConfigurations": [
            {
                "Id": "failure-records-to-the-reconciler",
                "QueueArn": queue_arn,
                "Events": [CREATED],
                "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": FAILURE_PREFIX}]}},
            }
        ]
    }


# CloudFormation (AWS::S3::Bucket properties), for the merge template.


def cloudformation_properties(bucket_name: Any, queue_arn: Any, days: Any) -> dict[str, Any]:
    """The AWS::S3::Bucket properties; each argument a value or an intrinsic."""
    return {
        "BucketName": bucket_name,
        "BucketEncryption": {
            "ServerSideEncryptionConfiguration": [{"ServerSideEncryptionByDefault": {"SSEAlgorithm": SSE_ALGORITHM}}]
        },
        "PublicAccessBlockConfiguration": PUBLIC_ACCESS_BLOCK,
        "OwnershipControls": OWNERSHIP,
        "VersioningConfiguration": {"Status": "Enabled"},
        "LifecycleConfiguration": {
            "Rules": [
                {
                    "Id": EXPIRE_RULE,
                    "Prefix": FAILURE_PREFIX,
                    "Status": "Enabled",
                    "ExpirationInDays": days,
                    "NoncurrentVersionExpiration": {"NoncurrentDays": days},
                    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": INCOMPLETE_UPLOAD_DAYS},
                },
                {
                    "Id": STATE_VERSIONS_RULE,
                    "Prefix": STATE_KEY,
                    "Status": "Enabled",
                    "NoncurrentVersionExpiration": {"NoncurrentDays": STATE_VERSION_DAYS},
                },
                {"Id": DELETE_MARKER_RULE, "Status": "Enabled", "ExpiredObjectDeleteMarker": True},
            ]
        },
        "NotificationConfiguration": {
            "QueueConfigurations": [
                {
                    "Event": CREATED,
                    "Queue": queue_arn,
                    "Filter": {"S3Key": {"Rules": [{"Name": "prefix", "Value": FAILURE_PREFIX}]}},
                }
            ]
        },
    }
