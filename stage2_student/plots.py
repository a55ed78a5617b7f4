"""The PNG plots of `ddk-student report` (weights and ratios over a run) and `ddk-student compare` (final ratios of
several runs side by side). matplotlib only, Agg backend (no display on training hosts); no reading of run files.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ddk_store.paths import replace_file

from .summary import format_ratio

#: Wording every ratio plot shares.
RATIO_LABEL = "student / teacher perplexity (log scale; lower is better)"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig: Any, ax: Any, path: Path) -> None:
    """Grid, the legend outside the axes on the right (it never hides a line), save."""
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()  # before the legend: the axes keep the figure's width, the saved image grows to the right
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110, bbox_inches="tight")
    replace_file(path, png.getvalue())  # (a link planted at path is replaced, not written through)


def _teacher_line(ax: Any) -> None:
    ax.axhline(1.0, color="black", linewidth=1.2, linestyle="--", label="teacher (ratio 1)")


def _step_axis(ax: Any, steps: Sequence[int]) -> None:
    """Integer step ticks: at every evaluation when there are few, else matplotlib's integer choice."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("optimizer step")
    if len(steps) <= 16:
        ax.set_xticks(list(steps))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _log_ratio_axis(ax: Any, values: Sequence[float]) -> None:
    """Log y axis that always shows the teacher's ratio 1 and plain numbers as tick labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    lo, hi = min(min(values), 1.0), max(max(values), 1.0)
    ax.set_yscale("log")
    ax.set_ylim(lo / 1.25, hi * 1.25)
    # every integer multiple within about a decade (a warm student's ratios, 0.5-3), 1-2-5 ticks up to three
    # decades, powers of ten beyond (an untrained student starts at ratios ~1e5)
    subs = range(1, 10) if hi / lo <= 20 else (1, 2, 5) if hi / lo <= 2000 else (1,)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=[float(s) for s in subs]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: format_ratio(y) if y >= 1000 else f"{y:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: ""))


def weights_plot(records: Sequence[dict[str, Any]], path: Path, *, title: str, floor: float | None = None) -> None:
    """Sampling weight of each domain over the run, as steps: each interval's weights hold from its step until the
    next interval (``records`` are the interval records then the final one, whose weights close the last step).
    ``floor``: DDK's smallest weight (1 - alpha) / N, drawn as a dotted line."""
    plt = _pyplot()
    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    domains = records[0]["domains"]
    for i, d in enumerate(domains):  # widest first: domains with equal weights show as stacked bands, not one line
        ax.plot(steps, [r["weights"][i] for r in records], drawstyle="steps-post",
                linewidth=1.5 + 0.6 * (len(domains) - 1 - i), label=d)
    if floor is not None:
        ax.axhline(floor, color="grey", linewidth=1.0, linestyle=":", label=f"DDK floor (1-α)/N = {floor:.3f}")
    ax.set_ylim(0, min(1.0, max(max(r["weights"]) for r in records) * 1.15 + 0.02))
    _step_axis(ax, steps)
    ax.set_ylabel("share of the rows sampled")
    ax.set_title(title)
    _finish(fig, ax, path)
    plt.close(fig)


def ratios_plot(records: Sequence[dict[str, Any]], path: Path, *, title: str,
                baseline: Sequence[dict[str, Any]] | None = None, baseline_label: str = "baseline") -> None:
    """Student/teacher perplexity ratio of each domain at every evaluation (the final one included), log y axis, the
    teacher's ratio 1 marked; ``baseline``'s records dotted in the same colour per domain."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.6))
    values = [x for r in records for x in r["ratio"]]
    for i, d in enumerate(records[0]["domains"]):
        (line,) = ax.plot([r["step"] for r in records], [r["ratio"][i] for r in records], marker="o", markersize=3,
                          linewidth=1.6, label=d)
        if baseline:
            ax.plot([r["step"] for r in baseline], [r["ratio"][i] for r in baseline], linestyle=":", linewidth=1.4,
                    color=line.get_color())
    if baseline:
        values += [x for r in baseline for x in r["ratio"]]
        ax.plot([], [], linestyle=":", color="grey", label=f"{baseline_label} (dotted)")
    _teacher_line(ax)
    _log_ratio_axis(ax, values)
    _step_axis(ax, [r["step"] for r in records])
    ax.set_ylabel(RATIO_LABEL)
    ax.set_title(title)
    _finish(fig, ax, path)
    plt.close(fig)


def ratio_bars(groups: Sequence[str], arms: Sequence[tuple[str, Sequence[float], Sequence[float]]], path: Path, *,
               title: str, summary_from: int | None = None) -> None:
    """Grouped bars: for each group (a domain or a summary metric), one bar per arm of height ``mean`` with an error
    bar ``sd`` (0 for one run). ``arms`` is [(label, means per group, sds per group)]. Log y axis, teacher marked; a
    grey line before group ``summary_from`` (the first summary metric)."""
    plt = _pyplot()
    n = len(arms)
    width = 0.8 / max(1, n)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.0 + 0.55 * len(groups) * max(2, n)), 4.6))
    for j, (label, means, sds) in enumerate(arms):
        xs = [g + (j - (n - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, means, width, yerr=[s or 0.0 for s in sds], capsize=2, label=label)
    ax.set_xticks(range(len(groups)), groups, rotation=20 if len(groups) > 8 else 0)
    if summary_from is not None:
        ax.axvline(summary_from - 0.5, color="grey", linewidth=1.0)
    _teacher_line(ax)
    # the axis holds every error bar: mean + sd, and mean - sd where it stays above 0 (a log axis)
    _log_ratio_axis(ax, [v for _, means, sds in arms for m, sd in zip(means, sds)
                         for v in (m, m + (sd or 0.0), m - (sd or 0.0)) if v > 0])
    ax.set_ylabel(RATIO_LABEL)
    ax.set_title(title)
    _finish(fig, ax, path)
    plt.close(fig)
