"""The backfill's rate limits: explicit units per second, or a fraction of a provisioned table's capacity."""

from __future__ import annotations

# Without --read-units/--write-units/--capacity-fraction the backfill takes the sweep's defaults: a fraction of a
# provisioned table's capacity (the live traffic keeps the rest, and a 20 % scan of a table at its usual load stays
# clear of throttling), or on demand, where unlimited would let a parallel scan reach the table's (or account's)
# throughput limits and throttle the application, units small against an on-demand table's initial capacity.
from chalicelib.sweep import DEFAULT_CAPACITY_FRACTION, ON_DEMAND_READ_UNITS, ON_DEMAND_WRITE_UNITS, TableFacts

__all__ = ["DEFAULT_CAPACITY_FRACTION", "ON_DEMAND_READ_UNITS", "ON_DEMAND_WRITE_UNITS", "rate_limits"]


def rate_limits(
    facts: TableFacts, read_units: float | None, write_units: float | None, capacity_fraction: float | None
) -> tuple[float, float]:
    """(read, write) units per second for the whole backfill. Explicit rates win; otherwise a fraction of the
    provisioned capacity (default DEFAULT_CAPACITY_FRACTION), or on an on-demand table the ON_DEMAND_* defaults."""
    for name, value in (("--read-units", read_units), ("--write-units", write_units)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be more than 0")
    provisioned = bool(facts.read_capacity and facts.write_capacity)
    if capacity_fraction is not None:
        if not 0 < capacity_fraction <= 1:
            raise ValueError("--capacity-fraction must be more than 0 and at most 1")
        if not provisioned:
            raise ValueError(
                "--capacity-fraction needs a table with provisioned capacity; for an on-demand table give "
                "--read-units and --write-units"
            )
    if provisioned:
        fraction = capacity_fraction if capacity_fraction is not None else DEFAULT_CAPACITY_FRACTION
        return (read_units or facts.read_capacity * fraction, write_units or facts.write_capacity * fraction)
    return (read_units or ON_DEMAND_READ_UNITS, write_units or ON_DEMAND_WRITE_UNITS)
