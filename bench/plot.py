"""The figure in docs/performance.md: end-to-end lag, batch times and cold starts of both handlers, from a result
document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report import median, percentile
from bench.subjects import BASELINE, OURS

COLOURS = {OURS: "#1f77b4", BASELINE: "#d62728"}


def plot(results: dict[str, Any], path: Path) -> None:
    """Write the PNG: lag distribution (CDF), median batch times, median cold starts, and (when measured) both
    handlers' batch and cold start at each memory size's CPU share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    memory = results.get("memory")
    panels = 4 if memory else 3
    figure, axes = plt.subplots(1, panels, figsize=(5.4 * panels, 5.2))
    lag_axis, batch_axis, cold_axis = axes[:3]
    handlers = (OURS, BASELINE)

    lag = results["lag"]
    for name in handlers:
        lags = sorted(value * 1000 for value in lag["handlers"][name]["lags_s"])
        if lags:
            shares = [(i + 1) / len(lags) for i in range(len(lags))]
            label = f"{name} (p50 {percentile(lags, 0.5):.0f} ms, p99 {percentile(lags, 0.99):.0f} ms)"
            lag_axis.step(lags, shares, where="post", label=label, color=COLOURS[name])
    lag_axis.axvline(1000, color="grey", linestyle=":", linewidth=1)
    lag_axis.set(
        title=f"end-to-end lag, {lag['items']} writes at {lag['rate_per_s']:g}/s",
        xlabel=f"client write -> flag visible (ms); the mapping rests {lag['idle_seconds']:g} s after an empty poll",
        ylabel="share of writes",
        ylim=(0, 1.02),
    )
    lag_axis.legend(loc="lower right")

    batch = results["batch_time"]
    groups = []
    for milliseconds in batch["latencies_ms"]:
        label = f"{milliseconds:g}ms"
        groups += [
            (f"all need a write\n{_latency(milliseconds)}", f"writes_{label}"),
            (f"none does\n{_latency(milliseconds)}", f"no_writes_{label}"),
        ]
    _bars(
        batch_axis,
        groups,
        {name: batch["handlers"][name] for name in handlers},
        f"batch of {batch['records']} records (median of {batch['repetitions']})",
    )

    cold = results["cold_start"]
    first_label = f"{cold['latencies_ms'][0]:g}ms"
    groups = [("import", "import")]
    values = {name: {"import": cold["handlers"][name][first_label]["import_s"]} for name in handlers}
    for milliseconds in cold["latencies_ms"]:
        label = f"{milliseconds:g}ms"
        groups.append((f"import + first batch\n{_latency(milliseconds)}", label))
        for name in handlers:
            values[name][label] = cold["handlers"][name][label]["first_batch_s"]
    _bars(
        cold_axis,
        groups,
        values,
        f"cold start, {cold['records']} writes, fresh interpreter (median of {cold['runs']})",
    )

    if memory:
        _memory_panel(axes[3], memory, handlers)

    machine = results["machine"]
    figure.suptitle(
        f"email-checker vs the walkthrough's Lambda on DynamoDB Local - {machine['cpus']} x {machine['cpu_model']}, "
        f"Python {machine['python']}, {results['date']}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _memory_panel(axis: Any, memory: dict[str, Any], handlers: tuple[str, ...]) -> None:
    sizes = [row["memory_mb"] for row in memory["rows"]]
    for name in handlers:
        batch = [row["handlers"][name]["batch_median_s"] * 1000 for row in memory["rows"]]
        cold = [row["handlers"][name]["cold_start"]["median_s"] * 1000 for row in memory["rows"]]
        axis.plot(sizes, batch, marker="o", color=COLOURS[name], label=f"{name}: {memory['records']} writes")
        axis.plot(sizes, cold, marker="s", linestyle="--", color=COLOURS[name], label=f"{name}: cold start + batch")
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xticks(sizes, [str(size) for size in sizes], fontsize=8)
    axis.set(
        title=f"at each memory size's CPU share, {memory['latency_ms']:g} ms round trip",
        xlabel=f"memory size (MB); {memory['mode']}",
        ylabel="ms (log scale, median)",
    )
    axis.legend(loc="upper right", fontsize=7)


def _latency(milliseconds: float) -> str:
    return "no added latency" if not milliseconds else f"+{milliseconds:g} ms round trip"


def _short(milliseconds: float) -> str:
    return f"{milliseconds:.0f}" if milliseconds >= 100 else f"{milliseconds:.3g}"


def _bars(axis: Any, groups: list[tuple[str, str]], values: dict[str, dict[str, list[float]]], title: str) -> None:
    width = 0.38
    tallest = 0.0
    for offset, name in enumerate(values):
        heights = [median(values[name][key]) * 1000 for _, key in groups]
        positions = [i + (offset - 0.5) * width for i in range(len(groups))]
        bars = axis.bar(positions, heights, width, label=name, color=COLOURS[name])
        axis.bar_label(bars, labels=[_short(height) for height in heights], fontsize=7, padding=1)
        tallest = max(tallest, *heights)
    axis.set_xticks(range(len(groups)), [label for label, _ in groups], fontsize=8)
    axis.set_yscale("log")
    axis.set_ylim(top=tallest * 6)  # room for the labels and the legend above the bars
    axis.set(title=title, ylabel="ms (log scale)")
    axis.legend(loc="upper left", ncols=2)
