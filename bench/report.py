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


def _median_row(measure: str, ours: Sequence[float], baseline: Sequence[float], limit: float | None = None) -> Row:
    return _ratio_row(measure, median(ours), median(baseline), limit)


def rows(results: dict[str, Any]) -> list[Row]:
    """The table's rows, the targets' verdicts included, from a full result document."""
    table: list[Row] = []
    writes = results["writes"]
    bound = writes["lower_bound"]
    ours, base = writes["handlers"][OURS], writes["handlers"][BASELINE]
    table.append(
        Row(
            f"writes / lower bound ({writes['client_writes']} client writes, lower bound {bound})",
            f"{ours['writes_per_lower_bound']:.2f} ({ours['writes']})",
            f"{base['writes_per_lower_bound']:.2f} ({base['writes']})",
            None,
            "= 1.00",
            ours["writes"] == bound,
        )
    )
    table.append(
        Row(
            "requests per write, the same workload",
            f"{ours['requests_per_write']:.3f} ({ours['requests']})",
            f"{base['requests_per_write']:.3f} ({base['requests']})",
            None,
            "reported",
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
        writes = f"writes_{label}"
        full = f"batch of {records} writes, {_latency_text(label)}, full CPU (median)"
        table.append(_median_row(full, ours_b[writes], base_b[writes]))
        cpu = f"writes_cpu_{label}"
        limit = 0.10 if label != "0ms" else None
        table.append(_median_row(f"client CPU of the above, {_latency_text(label)}", ours_b[cpu], base_b[cpu], limit))
    label = _labels(batch)[-1]
    per_write = median(ours_b[f"requests_per_write_{label}"])
    table.append(
        Row(
            f"requests per write, batch of {records} writes (write-heavy)",
            f"{per_write:.3f}",
            f"{median(base_b[f'requests_per_write_{label}']):.3f}",
            None,
            "<= 0.05",
            per_write <= 0.05,
        )
    )
    for label in _labels(batch):
        quiet, writes, latency = f"no_writes_{label}", f"writes_{label}", _latency_text(label)
        vs_writes = f"batch of {records} no-op records vs baseline's {records} writes, {latency}"
        table.append(_median_row(vs_writes, ours_b[quiet], base_b[writes], 0.05))
        table.append(_median_row(f"batch of {records} no-op records, both, {latency}", ours_b[quiet], base_b[quiet]))

    cold = results["cold_start"]
    ours_c, base_c = cold["handlers"][OURS], cold["handlers"][BASELINE]
    labels = _labels(cold)
    import_row = f"cold start: import of the handler's module (median of {cold['runs']})"
    table.append(_median_row(import_row, ours_c[labels[0]]["import_s"], base_c[labels[0]]["import_s"]))
    for label in labels:
        first = f"cold start: import + first batch of {cold['records']} writes, {_latency_text(label)}, full CPU"
        table.append(_median_row(first, ours_c[label]["first_batch_s"], base_c[label]["first_batch_s"]))
        cpu = f"cold start: CPU time of the above, {_latency_text(label)}"
        table.append(_median_row(cpu, ours_c[label]["cpu_s"], base_c[label]["cpu_s"]))

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
    table.append(
        _ratio_row("end-to-end lag p99", percentile(ours_l["lags_s"], 0.99), percentile(base_l["lags_s"], 0.99), None)
    )
    if "memory" in results:
        table += memory_rows(results["memory"])

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


def _memory_row(memory: dict[str, Any], memory_mb: int) -> dict[str, Any]:
    return next(row for row in memory["rows"] if row["memory_mb"] == memory_mb)


def memory_rows(memory: dict[str, Any]) -> list[Row]:
    """The targets read under Lambda's CPU share: at the stage's memory size, and one shard at 256 MB."""
    table: list[Row] = []
    stage_mb = memory["stage_memory_mb"]
    at_stage = _memory_row(memory, stage_mb)
    ours, base = at_stage["handlers"][OURS], at_stage["handlers"][BASELINE]
    where = f"{stage_mb} MB's CPU share ({at_stage['mode']})"
    records, latency = memory["records"], f"{memory['latency_ms']:g} ms round trip"
    table.append(
        _ratio_row(
            f"batch of {records} writes, {latency}, at {where}", ours["batch_median_s"], base["batch_median_s"], 0.10
        )
    )
    table.append(
        _ratio_row(
            f"cold start: import + first batch of {records} writes, {latency}, at {where}",
            ours["cold_start"]["median_s"],
            base["cold_start"]["median_s"],
            0.30,
        )
    )
    shard_mb = memory["shard_target_mb"]
    shard = _memory_row(memory, shard_mb)
    ours_s, base_s = shard["handlers"][OURS], shard["handlers"][BASELINE]
    target = memory["target_rate_per_s"]
    table.append(
        Row(
            f"one shard at {shard_mb} MB's CPU share: changes/s, each a write, lag p99 < 1 s",
            f"{ours_s['changes_per_s']:,.0f} ({ours_s['rate_source']})",
            f"{base_s['changes_per_s']:,.0f} ({base_s['rate_source']})",
            None,
            f">= {target:,.0f}/s",
            ours_s["changes_per_s"] >= target and ours_s["all_writes_right"],
        )
    )
    return table


def memory_table(memory: dict[str, Any]) -> str:
    """Both handlers at each memory size: batch, cold start, one shard's rate and the cost per million changes."""
    header = (
        "memory",
        "CPU share",
        "handler",
        f"{memory['records']} writes",
        "cold start",
        "CPU/change",
        "changes/s per shard",
        "Lambda GB-s $/M",
        "invocations $/M",
        "DynamoDB $/M",
        "total $/M",
    )
    lines = []
    for row in memory["rows"]:
        for name, handler in row["handlers"].items():
            cost = handler["cost"]
            lines.append(
                (
                    f"{row['memory_mb']} MB",
                    f"{row['cpu_share']:.3f}",
                    name,
                    _ms(handler["batch_median_s"]),
                    _ms(handler["cold_start"]["median_s"]),
                    f"{handler['cpu_per_change_s'] * 1e6:.0f} us",
                    f"{handler['changes_per_s']:,.0f} ({handler['rate_source']})",
                    f"{cost['lambda_duration_usd']:.4f}",
                    f"{cost['lambda_requests_usd']:.4f}",
                    f"{cost['dynamodb_writes_usd']:.4f}",
                    f"{cost['total_usd']:.4f}",
                )
            )
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    text = [
        f"at Lambda's CPU share per memory size ({memory['full_vcpu_mb']:,} MB = one vCPU), {memory['mode']}; "
        f"{memory['latency_ms']:g} ms round trip; cost at batches of {memory['records']}, prices of "
        f"{memory['prices']['read_on']} ({memory['prices']['region']}, x86, on-demand writes):"
    ]
    for cells in [header, tuple("-" * width for width in widths), *lines]:
        text.append(
            "  ".join(
                cell.ljust(width) if i == 2 else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()
        )
    recommended = memory["recommended"]
    text.append(
        "changes/s: measured = the highest rate of the lag ladder on DynamoDB Local with p99 < 1 s; computed = from "
        f"the batch times at the share (lag <= 2 x batch + {memory['poll_gap_s']:g} s), where the engine, not the "
        "handler, set the ladder's limit"
    )
    text.append(f"email-checker's memory size by this table: {recommended['memory_mb']} MB, {recommended['reason']}")
    return "\n".join(text)


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


def backfill_lines(backfill: Sequence[dict[str, Any]]) -> str:
    """The backfill's throughput by segment count (email-checker only: the walkthrough has no backfill)."""
    if not backfill:
        return ""
    lines = [
        f"backfill of {backfill[0]['items']} items written before the trigger (stream off, every flag missing), "
        "1,000-item pages:",
        f"  {'segments':>8}  {'scanned and fixed':>18}  {'re-run, nothing to fix':>23}",
    ]
    lines += [
        f"  {run['segments']:>8}  {run['fixed_per_second']:>12.0f} items/s  {run['rescan_per_second']:>17.0f} items/s"
        for run in backfill
    ]
    return "\n".join(lines)


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
