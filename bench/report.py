"""The benchmark's verdict, pure: medians and percentiles, the targets as ratios to the baseline, the printed table."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.subjects import BASELINE, OURS


def percentile(values: Sequence[float], share: float) -> float:
    """The `share` (0..1) percentile by the nearest-rank method; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def median(values: Sequence[float]) -> float:
    """The median; NaN for no values."""
    return statistics.median(values) if values else math.nan


@dataclass(frozen=True)
class Row:
    """One line of the table: both handlers' values, their ratio, and the target with its verdict if it has one."""

    measure: str
    ours: str
    baseline: str
    ratio: float | None = None
    target: str = ""
    passed: bool | None = None


def _ms(seconds: float) -> str:
    milliseconds = seconds * 1000
    return f"{milliseconds:.3f} ms" if milliseconds < 10 else f"{milliseconds:.1f} ms"


def _ratio_row(measure: str, ours: float, baseline: float, limit: float | None) -> Row:
    ratio = ours / baseline if baseline else math.nan
    if limit is None:
        return Row(measure, _ms(ours), _ms(baseline), ratio, "reported")
    return Row(measure, _ms(ours), _ms(baseline), ratio, f"<= {limit:g} x", ratio <= limit)


def rows(results: dict[str, Any]) -> list[Row]:
    """The table's rows, the targets' verdicts included, from a full result document."""
    table: list[Row] = []
    writes = results["writes"]
    bound = writes["lower_bound"]
    ours, base = writes["handlers"][OURS], writes["handlers"][BASELINE]
    table.append(
        Row(
            f"writes / lower bound ({writes['client_writes']} client writes, lower bound {bound})",
            f"{ours['writes_per_lower_bound']:.2f} ({ours['update_item_calls']})",
            f"{base['writes_per_lower_bound']:.2f} ({base['update_item_calls']})",
            None,
            "= 1.00",
            ours["update_item_calls"] == bound,
        )
    )
    table.append(
        Row(
            "items left violating the invariant",
            str(ours["violating_items"]),
            str(base["violating_items"]),
            None,
            "0",
            ours["violating_items"] == 0,
        )
    )

    batch = results["batch_time"]
    records = batch["records"]
    ours_b, base_b = batch["handlers"][OURS], batch["handlers"][BASELINE]
    for label in _labels(batch):
        limit = 0.25 if label != "0ms" else None
        table.append(
            _ratio_row(
                f"batch of {records} writes, {_latency_text(label)} (median)",
                median(ours_b[f"writes_{label}"]),
                median(base_b[f"writes_{label}"]),
                limit,
            )
        )
    for label in _labels(batch):
        table.append(
            _ratio_row(
                f"batch of {records} no-op records vs baseline's {records} writes, {_latency_text(label)}",
                median(ours_b[f"no_writes_{label}"]),
                median(base_b[f"writes_{label}"]),
                0.05,
            )
        )
        table.append(
            _ratio_row(
                f"batch of {records} no-op records, both, {_latency_text(label)}",
                median(ours_b[f"no_writes_{label}"]),
                median(base_b[f"no_writes_{label}"]),
                None,
            )
        )

    cold = results["cold_start"]
    ours_c, base_c = cold["handlers"][OURS], cold["handlers"][BASELINE]
    labels = _labels(cold)
    table.append(
        _ratio_row(
            f"cold start: import of the handler's module (median of {cold['runs']})",
            median(ours_c[labels[0]]["import_s"]),
            median(base_c[labels[0]]["import_s"]),
            None,
        )
    )
    for label in labels:
        table.append(
            _ratio_row(
                f"cold start: import + first batch of {cold['records']} writes, {_latency_text(label)}",
                median(ours_c[label]["first_batch_s"]),
                median(base_c[label]["first_batch_s"]),
                0.4,
            )
        )
        table.append(
            _ratio_row(
                f"cold start: CPU time of the above, {_latency_text(label)}",
                median(ours_c[label]["cpu_s"]),
                median(base_c[label]["cpu_s"]),
                None,
            )
        )

    lag = results["lag"]
    ours_l, base_l = lag["handlers"][OURS], lag["handlers"][BASELINE]
    table.append(
        _ratio_row(
            f"end-to-end lag p50 ({lag['items']} writes at {lag['rate_per_s']:g}/s)",
            percentile(ours_l["lags_s"], 0.5),
            percentile(base_l["lags_s"], 0.5),
            None,
        )
    )
    p99 = percentile(ours_l["lags_s"], 0.99)
    table.append(
        Row(
            "end-to-end lag p99",
            _ms(p99),
            _ms(percentile(base_l["lags_s"], 0.99)),
            None,
            "< 1 s",
            p99 < 1.0 and ours_l["not_visible"] == 0,
        )
    )

    package = results["package"]
    table.append(
        Row(
            "deployment package (zip)",
            f"{package[OURS]['bytes'] / 1e6:.2f} MB",
            f"{package[BASELINE]['bytes'] / 1e3:.1f} kB",
            package[OURS]["bytes"] / package[BASELINE]["bytes"],
            "reported",
        )
    )
    cpu = results["cpu_profile"]
    table.append(
        Row(
            f"CPU per record needing no write (best of {cpu['repetitions']} x {cpu['records']})",
            f"{cpu['us_per_record_best']:.2f} us",
            "-",
            None,
            "reported",
        )
    )
    return table


def _labels(section: dict[str, Any]) -> list[str]:
    return [f"{milliseconds:g}ms" for milliseconds in section["latencies_ms"]]


def _latency_text(label: str) -> str:
    return "no added latency" if label == "0ms" else f"{label.removesuffix('ms')} ms round trip"


def engine_line(engine: dict[str, Any]) -> str:
    """What DynamoDB Local itself takes per UpdateItem, the bound on every batch time measured against it."""
    streamed, plain = engine["with_stream"], engine["without_stream"]
    return (
        f"DynamoDB Local alone (plain client, no handler, {engine['writes']} UpdateItems): "
        f"{streamed['sequential_ms']:.2f} ms per write one at a time and {streamed['concurrent_ms']:.2f} ms "
        f"{engine['concurrency']} at a time to a table with a stream; {plain['sequential_ms']:.2f} and "
        f"{plain['concurrent_ms']:.2f} ms without one (batch time and cold start use tables without a stream)"
    )


def render(table: Sequence[Row]) -> str:
    """The rows as a plain-text table."""
    header = ("measure", OURS, BASELINE, "ratio", "target", "result")
    lines = [
        (
            row.measure,
            row.ours,
            row.baseline,
            "" if row.ratio is None else f"{row.ratio:.3f}",
            row.target,
            "" if row.passed is None else ("PASS" if row.passed else "MISS"),
        )
        for row in table
    ]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    aligned = []
    for cells in [header, tuple("-" * width for width in widths), *lines]:
        aligned.append(
            "  ".join(
                cell.ljust(width) if i == 0 or i == 4 else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()
        )
    return "\n".join(aligned)


def targets(table: Sequence[Row]) -> list[dict[str, Any]]:
    """The rows that carry a target, as JSON-ready records."""
    return [asdict(row) for row in table if row.passed is not None]
