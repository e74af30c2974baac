"""What the backfill needs to know about the table, from DescribeTable."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TableFacts:
    """What DescribeTable says that the backfill needs."""

    name: str
    key_names: tuple[str, ...]
    item_count: int
    """DynamoDB's estimate (refreshed about every six hours): the progress bar's total."""
    read_capacity: int
    """Provisioned read units; 0 for an on-demand table."""
    write_capacity: int


def table_facts(description: Mapping[str, Any]) -> TableFacts:
    """The backfill's facts from a DescribeTable `Table`."""
    schema = sorted(description["KeySchema"], key=lambda element: element["KeyType"] != "HASH")
    throughput = description.get("ProvisionedThroughput", {})
    on_demand = description.get("BillingModeSummary", {}).get("BillingMode") == "PAY_PER_REQUEST"
    return TableFacts(
        name=description["TableName"],
        key_names=tuple(element["AttributeName"] for element in schema),
        item_count=int(description.get("ItemCount", 0)),
        read_capacity=0 if on_demand else int(throughput.get("ReadCapacityUnits", 0)),
        write_capacity=0 if on_demand else int(throughput.get("WriteCapacityUnits", 0)),
    )
