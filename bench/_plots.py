"""The backlog benchmark's PNG figures (matplotlib, Agg backend; not a benchmark itself).

``throughput``: events/s over time (from successive committed-lag samples, ~2 s smoothing) of each
contender on one chart, RSS on a secondary axis. ``latency``: the end-to-end latency CDF of each
live rate, with p50 and p99 marked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from _common import percentiles
from _drain import MIB, SMOOTH_S, Drain

COLOURS = ("#2e86c1", "#e67e22", "#27ae60", "#8e44ad", "#c0392b")


def throughput(drains: Sequence[Drain], path: Path, title: str) -> None:
    """Events/s over time of every contender (solid) and their RSS (dotted, right axis); save as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 6), dpi=100)
    memory = axes.twinx()
    try:
        for colour, d in zip(COLOURS, drains, strict=False):
            rates = d.rates()
            label = f"{d.name}: events/s (steady {d.steady:,.0f}, start → lag zero {d.to_lag_zero:,.0f})"
            axes.plot([t for t, _ in rates], [r for _, r in rates], color=colour, linewidth=1.6, label=label)
            memory.plot(
                [s.t for s in d.samples],
                [s.rss / MIB for s in d.samples],
                color=colour,
                linestyle=":",
                linewidth=1.4,
                label=f"{d.name}: RSS (max {d.rss_max:,.0f} MiB)",
            )
        axes.set_xlabel("seconds since the process started")
        axes.set_ylabel(f"events/s (committed lag decrease, {SMOOTH_S:g} s smoothing)")
        memory.set_ylabel("resident set size (MiB)")
        axes.set_ylim(bottom=0)
        memory.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
        lines, labels = axes.get_legend_handles_labels()
        more, more_labels = memory.get_legend_handles_labels()
        figure.legend(lines + more, labels + more_labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
        axes.set_title(title, fontsize=10)
        figure.tight_layout(rect=(0, 0.1, 1, 1))
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)


def latency(by_rate: Mapping[str, Sequence[float]], path: Path, title: str) -> None:
    """The latency CDF (ms, log scale) of each live rate, p50 (circle) and p99 (diamond) marked; save as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    figure, axes = plt.subplots(figsize=(10, 5), dpi=100)
    try:
        for colour, (label, values) in zip(COLOURS, by_rate.items(), strict=False):
            if not values:
                continue
            ordered = sorted(max(v, 0.5) for v in values)  # log axis: 0 ms shown as 0.5 ms
            n = len(ordered)
            pct = percentiles(ordered)
            axes.step(
                ordered,
                [(i + 1) / n * 100 for i in range(n)],
                where="post",
                color=colour,
                linewidth=1.6,
                label=f"{label}: p50 {pct['p50']:,.0f} ms, p99 {pct['p99']:,.0f} ms, max {pct['max']:,.0f} ms "
                f"({n:,} outputs)",
            )
            for point, marker in (("p50", "o"), ("p99", "D")):
                axes.plot([max(pct[point], 0.5)], [float(point[1:])], marker=marker, color=colour, markersize=7)
                axes.annotate(
                    point,
                    (max(pct[point], 0.5), float(point[1:])),
                    textcoords="offset points",
                    xytext=(6, -12),
                    fontsize=8,
                    color=colour,
                )
        axes.set_xscale("log")
        axes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axes.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.set_xlabel("end-to-end latency (ms): a read_committed reader sees the output − the bench sent the event")
        axes.set_ylabel("outputs seen within that latency (%)")
        axes.set_ylim(0, 101)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(loc="lower right", fontsize=8, framealpha=0.9)
        axes.set_title(title, fontsize=10)
        figure.tight_layout()
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)
