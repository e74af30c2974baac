"""The ARNs of a stage's resources, derived from its stream's ARN (strictly parsed, as AWS would)."""

from __future__ import annotations

import re
from typing import Any

from chalicelib.config import UNBOUND_STREAM_ARN, failure_bucket_name, failure_queue_name

PARTITIONS = ("aws", "aws-cn", "aws-us-gov")
REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}")
ACCOUNT = re.compile(r"[0-9]{12}")
TABLE_NAME = re.compile(r"[a-zA-Z0-9_.-]{3,255}")
STREAM_LABEL = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?")
ARN_SHAPE = "arn:aws:dynamodb:REGION:ACCOUNT:table/NAME/stream/LABEL"


def split_stream_arn(stream_arn: str) -> tuple[str, str, str, str]:
    """(partition, region, account, table name) of a DynamoDB stream ARN; ValueError naming the part that is wrong.

    As strict as AWS (so the packaged template's parameter and cfn-lint accept what `bind` wrote): partition aws,
    aws-cn or aws-us-gov, a region, a 12-digit account, a table name of 3 to 255 letters, digits, `_`, `.` or `-`,
    and the stream's label (its creation time, e.g. 2026-01-01T00:00:00.000)."""
    parts = stream_arn.split(":", 5)
    resource = parts[5].split("/") if len(parts) == 6 else []
    shaped = len(parts) == 6 and parts[0] == "arn" and parts[2] == "dynamodb" and len(resource) == 4
    if not shaped or resource[0] != "table" or resource[2] != "stream":
        problem = f"expected {ARN_SHAPE}"
    elif parts[1] not in PARTITIONS:
        problem = f"partition {parts[1]!r} is not one of {', '.join(PARTITIONS)}"
    elif not REGION.fullmatch(parts[3]):
        problem = f"{parts[3]!r} is not a region (like eu-west-1)"
    elif not ACCOUNT.fullmatch(parts[4]):
        problem = f"account {parts[4]!r} is not 12 digits"
    elif not TABLE_NAME.fullmatch(resource[1]):
        problem = f"table name {resource[1]!r} is not 3 to 255 of a-z, A-Z, 0-9, '_', '.', '-'"
    elif not STREAM_LABEL.fullmatch(resource[3]) and stream_arn != UNBOUND_STREAM_ARN:
        problem = f"stream label {resource[3]!r} is not a stream's creation time (like 2026-01-01T00:00:00.000)"
    else:
        return parts[1], parts[3], parts[4], resource[1]
    raise ValueError(f"not a DynamoDB stream ARN: {problem}")


def function_arns(app_name: str, stage: str, stream_arn: str, function: str) -> tuple[str, str]:
    """(table ARN, log group ARN) of a `chalice deploy`ed function of the stage, from the stage's stream ARN."""
    partition, region, account, table = split_stream_arn(stream_arn)
    table_arn = f"arn:{partition}:dynamodb:{region}:{account}:table/{table}"
    log_group = f"arn:{partition}:logs:{region}:{account}:log-group:/aws/lambda/{app_name}-{stage}-{function}"
    return table_arn, log_group


def failure_queue_arn(app_name: str, stage: str, stream_arn: str) -> str:
    """The `chalice deploy` path's on-failure queue ARN: its name, in the stream's region and account."""
    partition, region, account, _ = split_stream_arn(stream_arn)
    return f"arn:{partition}:sqs:{region}:{account}:{failure_queue_name(app_name, stage)}"


def stage_failure_bucket(app_name: str, stage: str, stream_arn: str) -> tuple[str, str]:
    """(name, ARN) of the stage's on-failure bucket on the `chalice deploy` path, in the stream's account and region."""
    partition, region, account, _ = split_stream_arn(stream_arn)
    name = failure_bucket_name(app_name, stage, account, region)
    return name, f"arn:{partition}:s3:::{name}"


def stage_stream_arn(config: dict[str, Any], stage: str) -> str:
    """The stage's STREAM_ARN, or the unbound placeholder; ValueError naming the stage whose ARN is malformed."""
    stream_arn = config["stages"][stage].get("environment_variables", {}).get("STREAM_ARN") or UNBOUND_STREAM_ARN
    try:
        split_stream_arn(stream_arn)
    except ValueError as problem:
        raise ValueError(
            f"stage {stage}'s STREAM_ARN {stream_arn!r} is {problem}: run `python -m tools.stage bind --stage {stage} "
            "--stream-arn <its stream's ARN>`"
        ) from None
    return stream_arn
