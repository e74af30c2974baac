"""Stage settings, read from the environment variables Chalice sets from `.chalice/config.json`."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from chalicelib.attributes import DEFAULT_ATTRIBUTES, AttributeNames, name_problem
from chalicelib.domains import normalise_domain

if TYPE_CHECKING:
    from chalicelib.sweep import SweepConfig

STARTING_POSITIONS = ("TRIM_HORIZON", "LATEST")
# Where a stage has no STREAM_ARN yet: lets tests and the local mapping import the app (the handler takes each
# record's table from its eventSourceARN); `chalice deploy`/`package` refuse to run with it.
UNBOUND_STREAM_ARN = "arn:aws:dynamodb:us-east-1:000000000000:table/unbound/stream/unbound"
# Where no stage sets STAGE (a test or a script that builds the settings itself): its metrics stay apart from a stage's.
LOCAL_STAGE = "local"
_STAGE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def failure_queue_name(app_name: str, stage: str) -> str:
    """The stream's on-failure queue on the `chalice deploy` path, which the reconciler consumes."""
    return f"{app_name}-{stage}-stream-failures"


def dead_letter_queue_name(app_name: str, stage: str) -> str:
    """Where SQS moves an on-failure message the reconciler could not finish in its bounded number of receives."""
    return f"{failure_queue_name(app_name, stage)}-dead"


RECONCILER_MAXIMUM_CONCURRENCY = 5
"""Reconciler invocations the failure queue's event source runs at once (its ScalingConfig): each reads one object and
writes at most one batch's items, so 5 drain a burst of discarded batches without crowding the table's traffic."""


BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
BUCKET_NAME_LENGTH = 63


def failure_bucket_name(app_name: str, stage: str, account: str, region: str) -> str:
    """The `chalice deploy` path's on-failure bucket: `<app>-<stage>-failures-<account>-<region>`.

    Bucket names are global, hence the account and region. A name that would not be a legal bucket name (over 63
    characters, or a stage with capitals or `_`, which stages may have and buckets may not) keeps what fits of the
    lower-cased `<app>-<stage>-failures` and ends it with 8 hex digits of its SHA-256, so it stays one name per stage.
    """
    base = f"{app_name}-{stage}-failures"
    suffix = f"-{account}-{region}"
    if not BUCKET_NAME.fullmatch(base + suffix) or "--" in base:
        digest = hashlib.sha256(base.encode()).hexdigest()[:8]
        legal = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", base.lower())).strip("-")
        base = f"{legal[: BUCKET_NAME_LENGTH - len(suffix) - len(digest) - 1].strip('-')}-{digest}".lstrip("-")
    return base + suffix


def stage_failure_bucket_name(app_name: str, stage: str, stream_arn: str) -> str:
    """The `chalice deploy` path's on-failure bucket of a stage bound to `stream_arn` (its account and region)."""
    _, _, _, region, account, _ = stream_arn.split(":", 5)
    return failure_bucket_name(app_name, stage, account, region)


class ConfigError(ValueError):
    """A stage setting is missing or invalid; the message names the environment variable to fix."""


def _int_setting(environ: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number from {low} to {high}, not {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be from {low} to {high}, not {value}")
    return value


def _float_setting(environ: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number from {low} to {high}, not {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be from {low} to {high}, not {value}")
    return value


def _bool_setting(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("true", "1", "yes"):
        return True
    if raw in ("false", "0", "no"):
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def _attribute_setting(environ: Mapping[str, str], name: str, default: str) -> str:
    # Taken verbatim, not stripped: a space, a dot or a quote is legal inside an attribute name.
    raw = environ.get(name, "")
    if not raw:
        return default
    problem = name_problem(raw)
    if problem is not None:
        raise ConfigError(f"{name} must be a DynamoDB attribute name: the value {problem}")
    if raw != raw.strip():
        # Legal in DynamoDB, but in a config file a typo: the flag would go to an attribute nobody reads.
        raise ConfigError(f"{name} {raw!r} starts or ends with a space: remove it (a space inside a name is fine)")
    return raw


def _domain_list(environ: Mapping[str, str], name: str) -> frozenset[str]:
    domains = (normalise_domain(d) for d in environ.get(name, "").split(","))
    return frozenset(d for d in domains if d)


@dataclass(frozen=True)
class Settings:
    """Everything a stage configures, validated."""

    stage: str
    """The Chalice stage: a dimension of every metric and a key of every log line, so stages never mix."""
    stream_arn: str
    batch_size: int
    starting_position: str
    maximum_batching_window_in_seconds: int
    personal_domains_only: frozenset[str]
    personal_domains_add: frozenset[str]
    personal_domains_remove: frozenset[str]
    write_concurrency: int
    report_batch_item_failures: bool
    """This function's event source mapping reports batch item failures (FunctionResponseTypes): set by the deploy
    paths on the stream handler and the reconciler once their mappings do; off, a failure raises instead."""
    parallelization_factor: int = 1
    """Batches of one shard the event source mapping runs at once (Lambda's ParallelizationFactor, 1-10)."""
    failure_bucket: str = ""
    """The on-failure bucket, where the packaged stack names it; on the `chalice deploy` path it is derived from the
    stream's ARN (`stage_failure_bucket_name`). It also holds the sweep's state."""
    email_attribute: str = DEFAULT_ATTRIBUTES.email
    """The attribute holding an item's e-mail address (read only; it may be a key attribute)."""
    flag_attribute: str = DEFAULT_ATTRIBUTES.flag
    """The attribute the handler sets to the derived flag and removes (never a key attribute)."""

    sweep_period_hours: float = 168.0
    """The sweep's bound: every item is checked at least once in this many hours (docs/operations.md)."""
    sweep_rate_minutes: int = 15
    """Minutes between two runs of the scheduled sweep (`sweep_table`)."""
    sweep_segments: int = 8
    """Segments of each pass, worked in parallel by one run."""
    sweep_capacity_fraction: float = 0.2
    """On a provisioned table: the share of its capacity the sweep uses at most."""
    sweep_read_units: int = 1000
    """On demand: read units per second the sweep uses at most (its urgent rate)."""
    sweep_write_units: int = 500
    """On demand: write units per second the sweep uses at most."""

    def sweep_config(self) -> SweepConfig:
        """The sweep's settings as chalicelib.sweep takes them."""
        from chalicelib.sweep import SweepConfig  # boto's modules stay out of the app's import

        return SweepConfig(
            period=timedelta(hours=self.sweep_period_hours),
            segments=self.sweep_segments,
            capacity_fraction=self.sweep_capacity_fraction,
            read_units=float(self.sweep_read_units),
            write_units=float(self.sweep_write_units),
            interval=timedelta(minutes=self.sweep_rate_minutes),
        )

    @property
    def attributes(self) -> AttributeNames:
        """The e-mail and flag attribute names, as the records, the writes and the backfill take them."""
        return AttributeNames(email=self.email_attribute, flag=self.flag_attribute)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """Read and validate the settings; raise ConfigError naming the first bad variable."""
        starting_position = environ.get("STARTING_POSITION", "").strip().upper() or "TRIM_HORIZON"
        if starting_position not in STARTING_POSITIONS:
            raise ConfigError(f"STARTING_POSITION must be one of {', '.join(STARTING_POSITIONS)}")
        stage = environ.get("STAGE", "").strip() or LOCAL_STAGE
        if not _STAGE_NAME.fullmatch(stage):
            raise ConfigError(f"STAGE must be a stage name (letters, digits, - and _), not {stage!r}")
        email_attribute = _attribute_setting(environ, "EMAIL_ATTRIBUTE", DEFAULT_ATTRIBUTES.email)
        flag_attribute = _attribute_setting(environ, "FLAG_ATTRIBUTE", DEFAULT_ATTRIBUTES.flag)
        if email_attribute == flag_attribute:
            raise ConfigError(
                f"EMAIL_ATTRIBUTE and FLAG_ATTRIBUTE must name two different attributes, not both {flag_attribute!r}"
            )
        return cls(
            stage=stage,
            stream_arn=environ.get("STREAM_ARN", "").strip(),
            batch_size=_int_setting(environ, "BATCH_SIZE", 100, 1, 10_000),
            starting_position=starting_position,
            maximum_batching_window_in_seconds=_int_setting(environ, "MAXIMUM_BATCHING_WINDOW_IN_SECONDS", 0, 0, 300),
            personal_domains_only=_domain_list(environ, "PERSONAL_DOMAINS_ONLY"),
            personal_domains_add=_domain_list(environ, "PERSONAL_DOMAINS_ADD"),
            personal_domains_remove=_domain_list(environ, "PERSONAL_DOMAINS_REMOVE"),
            write_concurrency=_int_setting(environ, "WRITE_CONCURRENCY", 16, 1, 128),
            report_batch_item_failures=_bool_setting(environ, "REPORT_BATCH_ITEM_FAILURES", False),
            parallelization_factor=_int_setting(environ, "PARALLELIZATION_FACTOR", 1, 1, 10),
            failure_bucket=environ.get("FAILURE_BUCKET", "").strip(),
            email_attribute=email_attribute,
            flag_attribute=flag_attribute,
            sweep_period_hours=_float_setting(environ, "SWEEP_PERIOD_HOURS", 168.0, 0.001, 8760.0),
            sweep_rate_minutes=_int_setting(environ, "SWEEP_RATE_MINUTES", 15, 1, 1440),
            sweep_segments=_int_setting(environ, "SWEEP_SEGMENTS", 8, 1, 64),
            sweep_capacity_fraction=_float_setting(environ, "SWEEP_CAPACITY_FRACTION", 0.2, 0.01, 1.0),
            sweep_read_units=_int_setting(environ, "SWEEP_READ_UNITS", 1000, 1, 1_000_000),
            sweep_write_units=_int_setting(environ, "SWEEP_WRITE_UNITS", 500, 1, 1_000_000),
        )
