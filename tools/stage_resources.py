"""What a stage's deploy steps create beside `chalice deploy` (which `chalice delete` leaves): the failure queue, its
dead-letter queue and the on-failure bucket, made or brought up to date; and `cleanup`,
which lists them with the stage's alarms and dashboard and deletes them all."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from chalicelib.config import dead_letter_queue_name, failure_queue_name
from tools import alarms, failure_bucket, failure_handling
from tools.arns import split_stream_arn, stage_failure_bucket
from tools.template_parts import FAILURE_BUCKET


@dataclass(frozen=True)
class StageResources:
    """The ARNs (and the bucket's name) of what the deploy steps made for a stage."""

    failure_queue_arn: str
    dead_letter_queue_arn: str
    bucket_name: str
    bucket_arn: str


def ensure_failure_queue(
    sqs: Any,
    name: str,
    retention_seconds: int = failure_handling.FAILURE_QUEUE_RETENTION_SECONDS,
    extra_attributes: dict[str, str] | None = None,
    policy: Callable[[str], dict[str, Any]] = failure_handling.https_only_queue_policy,
) -> str:
    """Create the encrypted, TLS-only queue, or find it and bring its attributes up to date; its ARN. `policy` gives
    the queue's policy from its ARN."""
    # Created bare, then set: CreateQueue refuses an existing queue whose attributes differ from the ones it is given.
    queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    attributes = {
        "SqsManagedSseEnabled": "true",
        "MessageRetentionPeriod": str(retention_seconds),
        "Policy": json.dumps(policy(queue_arn)),
        **(extra_attributes or {}),
    }
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes=attributes)
    return queue_arn


def ensure_reconciler_queues(
    sqs: Any, app_name: str, stage: str, bucket_arn: str | None = None, account: str | None = None
) -> tuple[str, str]:
    """The on-failure queue, made the reconciler's event source (visibility timeout, redrive to its dead-letter
    queue) and, given the bucket, open to its notifications; and the dead-letter queue; (queue ARN, its DLQ's ARN)."""
    dead_letter_arn = ensure_failure_queue(
        sqs, dead_letter_queue_name(app_name, stage), failure_handling.DEAD_LETTER_RETENTION_SECONDS
    )
    policy = failure_handling.https_only_queue_policy
    if bucket_arn:
        policy = lambda queue_arn: failure_bucket.failure_queue_policy(queue_arn, bucket_arn, account)  # noqa: E731
    queue_arn = ensure_failure_queue(
        sqs,
        failure_queue_name(app_name, stage),
        extra_attributes={
            "VisibilityTimeout": str(failure_handling.FAILURE_QUEUE_VISIBILITY_TIMEOUT_SECONDS),
            "RedrivePolicy": json.dumps(failure_handling.redrive_policy(dead_letter_arn)),
        },
        policy=policy,
    )
    return queue_arn, dead_letter_arn


def ensure_failure_bucket(s3: Any, name: str, region: str, queue_arn: str, days: int, tls_only: bool = True) -> None:
    """Create the on-failure bucket (or find it) and set all of tools/failure_bucket.py on it; ValueError in one line
    if another account owns the name. `tls_only=False` leaves the bucket policy out, for moto only: it applies a
    policy's Deny to object requests without evaluating its aws:SecureTransport condition, and it speaks HTTP."""
    try:
        if region == "us-east-1":  # the one region S3 refuses as a LocationConstraint
            s3.create_bucket(Bucket=name)
        else:
            s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code")
        if code == "BucketAlreadyExists":
            raise ValueError(f"the bucket name {name} is taken by another account: S3 names are global") from None
        if code != "BucketAlreadyOwnedByYou":
            raise
    s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=failure_bucket.PUBLIC_ACCESS_BLOCK)
    s3.put_bucket_ownership_controls(Bucket=name, OwnershipControls=failure_bucket.OWNERSHIP)
    s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration=failure_bucket.api_encryption())
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration=failure_bucket.api_lifecycle(days))
    if tls_only:
        bucket_arn = f"arn:{partition_of(queue_arn)}:s3:::{name}"
        s3.put_bucket_policy(Bucket=name, Policy=json.dumps(failure_bucket.tls_only_policy(bucket_arn)))
    # Last: S3 checks that the queue's policy already lets the notifications in, with a test message (s3:TestEvent)
    # each time it is set: set only when it differs, so a rerun sends the reconciler nothing.
    wanted = failure_bucket.api_notification(queue_arn)
    current = s3.get_bucket_notification_configuration(Bucket=name)
    current.pop("ResponseMetadata", None)
    if current != wanted:
        s3.put_bucket_notification_configuration(Bucket=name, NotificationConfiguration=wanted)


def partition_of(arn: str) -> str:
    """The partition (aws, aws-cn, aws-us-gov) of an ARN."""
    return arn.split(":", 2)[1]


def ensure_stage_resources(
    session: Any, app_name: str, stage: str, stream_arn: str, variables: Mapping[str, str]
) -> StageResources:
    """Make (or bring up to date) the stage's queues and on-failure bucket, in its stream's account and region."""
    _, region, account, _ = split_stream_arn(stream_arn)
    sqs = session.client("sqs", region_name=region)
    bucket_name, bucket_arn = stage_failure_bucket(app_name, stage, stream_arn)
    queue_arn, dead_letter_arn = ensure_reconciler_queues(sqs, app_name, stage, bucket_arn, account)
    days = failure_bucket.retention_days(variables)
    ensure_failure_bucket(session.client("s3", region_name=region), bucket_name, region, queue_arn, days)
    return StageResources(queue_arn, dead_letter_arn, bucket_name, bucket_arn)


def failure_destination_arn(session: Any, app_name: str, stage: str, stream_arn: str, stack_name: str | None) -> str:
    """The bucket a stage's mapping should send discarded batches to: the stack's, or the deploy steps' own."""
    if not stack_name:
        return stage_failure_bucket(app_name, stage, stream_arn)[1]
    cloudformation = session.client("cloudformation")
    try:
        resource = cloudformation.describe_stack_resource(StackName=stack_name, LogicalResourceId=FAILURE_BUCKET)
    except ClientError:
        return ""
    partition = session.get_partition_for_region(cloudformation.meta.region_name)
    return f"arn:{partition}:s3:::{resource['StackResourceDetail']['PhysicalResourceId']}"


# cleanup: after `chalice delete`.


@dataclass(frozen=True)
class Leftovers:
    """What of a stage's own resources exists: queue URLs, the bucket, alarm names, the dashboard."""

    queue_urls: list[str]
    bucket: str | None
    alarm_names: list[str]
    dashboard: str | None

    def lines(self) -> list[str]:
        """One line per resource, as `cleanup` lists them."""
        return (
            [f"queue      {url}" for url in self.queue_urls]
            + ([f"bucket     {self.bucket} (every object version with it)"] if self.bucket else [])
            + [f"alarm      {name}" for name in self.alarm_names]
            + ([f"dashboard  {self.dashboard}"] if self.dashboard else [])
        )


def stage_queue_names(app_name: str, stage: str) -> tuple[str, ...]:
    """The names of the queues the deploy steps make for a stage."""
    return (failure_queue_name(app_name, stage), dead_letter_queue_name(app_name, stage))


def find_leftovers(session: Any, app_name: str, stage: str, stream_arn: str) -> Leftovers:
    """The stage's queues, bucket, alarms and dashboard that exist (by their exact names: another stage's whose
    name starts the same is never caught)."""
    region = split_stream_arn(stream_arn)[1]
    sqs = session.client("sqs", region_name=region)
    urls = []
    for name in stage_queue_names(app_name, stage):
        with contextlib.suppress(sqs.exceptions.QueueDoesNotExist):
            urls.append(sqs.get_queue_url(QueueName=name)["QueueUrl"])
    bucket_name, _ = stage_failure_bucket(app_name, stage, stream_arn)
    try:
        session.client("s3", region_name=region).head_bucket(Bucket=bucket_name)
    except ClientError:
        bucket_name = None
    cloudwatch = session.client("cloudwatch", region_name=region)
    prefix = f"{app_name}-{stage}"
    names = [alarms.alarm_name(prefix, alarm) for alarm in alarms.ALARMS]
    found = []
    for start in range(0, len(names), 100):
        found += cloudwatch.describe_alarms(AlarmNames=names[start : start + 100])["MetricAlarms"]
    dashboards = cloudwatch.list_dashboards(DashboardNamePrefix=prefix)["DashboardEntries"]
    dashboard = prefix if any(entry["DashboardName"] == prefix for entry in dashboards) else None
    return Leftovers(urls, bucket_name, sorted(alarm["AlarmName"] for alarm in found), dashboard)


def empty_bucket(s3: Any, name: str) -> int:
    """Delete every object version and delete marker of a bucket; how many were deleted."""
    deleted = 0
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
        versions = page.get("Versions", []) + page.get("DeleteMarkers", [])
        if versions:
            objects = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in versions]
            errors = s3.delete_objects(Bucket=name, Delete={"Objects": objects, "Quiet": True}).get("Errors", [])
            if errors:
                raise ValueError(f"bucket {name}: {len(errors)} object version(s) not deleted: {errors[0].get('Code')}")
            deleted += len(objects)
    return deleted


def delete_leftovers(session: Any, leftovers: Leftovers, region: str) -> None:
    """Delete what `find_leftovers` found."""
    sqs = session.client("sqs", region_name=region)
    for url in leftovers.queue_urls:
        sqs.delete_queue(QueueUrl=url)
    if leftovers.bucket:
        s3 = session.client("s3", region_name=region)
        # Its policy first: the bucket goes anyway, and a policy may deny the deletes (moto applies the TLS-only
        # Deny to them without evaluating its condition).
        s3.delete_bucket_policy(Bucket=leftovers.bucket)
        empty_bucket(s3, leftovers.bucket)
        s3.delete_bucket(Bucket=leftovers.bucket)
    cloudwatch = session.client("cloudwatch", region_name=region)
    for start in range(0, len(leftovers.alarm_names), 100):
        cloudwatch.delete_alarms(AlarmNames=leftovers.alarm_names[start : start + 100])
    if leftovers.dashboard:
        cloudwatch.delete_dashboards(DashboardNames=[leftovers.dashboard])


def ask(lines: list[str], assume_yes: bool) -> bool:
    """List what would be deleted and ask first (without a terminal, only --yes deletes)."""
    print("the stage's resources `chalice delete` leaves (messages and failure records are lost with them):")
    for line in lines:
        print(f"  {line}")
    if assume_yes:
        return True
    if not sys.stdin.isatty():
        print("not deleted: run again with --yes to delete them")
        return False
    try:
        return input("delete them? [y/N] ").strip().lower() in ("y", "yes")
    except (EOFError, KeyboardInterrupt):
        print()
        return False
