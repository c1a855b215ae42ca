"""The PNG histogram of ``policy risk --png``: records by equivalence-class size (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

from streams.policy.risk import RiskReport, size_bins


def write_histogram(report: RiskReport, path: Path) -> None:
    """Draw the share of records per class-size bin, bins below k in red, and save it as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = size_bins(report)
    labels = [label for label, _, _ in bins]
    shares = [100 * records / report.records if report.records else 0.0 for _, _, records in bins]
    below = [i < report.k - 1 for i in range(len(bins))]  # the first k-1 bins are the sizes 1..k-1
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        bars = axes.bar(labels, shares, color=["#c0392b" if b else "#2e86c1" for b in below])
        axes.bar_label(bars, fmt="%.1f", fontsize=8)
        axes.set_xlabel("equivalence-class size (records sharing all quasi-identifiers)")
        axes.set_ylabel("share of records (%)")
        scope = f" ({report.scope})" if report.scope else ""
        axes.set_title(
            f"{report.recipient}{scope}: {report.records:,} records, min k = {report.min_k}, "
            f"{100 * report.below_k_share:.1f} % in classes below k = {report.k}",
            fontsize=10,
        )
        figure.text(0.01, 0.01, "quasi-identifiers: " + ", ".join(report.quasi_identifiers), fontsize=7)
        figure.tight_layout(rect=(0, 0.04, 1, 1))
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)
