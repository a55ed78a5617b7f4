"""Summary metrics of per-domain student/teacher perplexity ratios: the one definition used by report, compare and
the TensorBoard sink.

A ratio is ``ppl_student / ppl_teacher`` on a domain's held-out rows: lower is better, 1.0 is the teacher. Which
summary a reader picks changes which method looks best, so every one is reported (docs/stage2.md, "Reading a run:
`report`, `compare`, TensorBoard"):

- ``mean``: equal-weighted mean over domains; every domain counts the same, however small.
- ``natural_mean``: weighted by the store's natural training-row mixture; the large domains dominate, as they do
  the pooled corpus that plain KD samples.
- ``geo_mean``: geometric mean, exp(mean over domains of log ratio), i.e. exp of the domains' mean per-token
  log-loss gap to the teacher; one very bad domain weighs less than in the arithmetic mean.
- ``worst``: the largest domain ratio; what DDK's reweighting targets.

Pure functions of numbers; no I/O.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def format_ratio(x: float) -> str:
    """A ratio or perplexity for a table, a report or an axis: 3 decimals; a thousands-grouped integer from 1,000;
    scientific from a million (the values of an untrained or diverged student, which would be 30 digits long); 3
    significant digits for a non-zero value that 3 decimals would show as 0.000 (a student far past a weak teacher)."""
    if not math.isfinite(x) or abs(round(x)) >= 1e6 or (x != 0 and round(x, 3) == 0):
        return f"{x:.3g}"
    return f"{x:,.0f}" if abs(round(x, 3)) >= 1000 else f"{x:.3f}"


#: (key, column label) of every summary metric, in the order tables show them.
METRICS = (("mean", "mean"), ("natural_mean", "nat. mean"), ("geo_mean", "geo. mean"), ("worst", "worst"))


def natural_mixture(train_rows: Sequence[int]) -> list[float]:
    """Each domain's share of the training rows (the natural mixture)."""
    total = sum(train_rows)
    if total <= 0 or any(n < 0 for n in train_rows):
        raise ValueError(f"train_rows must be non-negative with a positive sum, got {list(train_rows)}")
    return [n / total for n in train_rows]


def summarize(ratio: Sequence[float], train_rows: Sequence[int] | None = None) -> dict[str, float | None]:
    """Every metric of :data:`METRICS` for one run's ratios; ``natural_mean`` is None without ``train_rows``."""
    if not ratio or any(not (x > 0 and math.isfinite(x)) for x in ratio):
        raise ValueError(f"ratios must be finite and > 0, got {list(ratio)}")
    natural = None
    if train_rows is not None:
        if len(train_rows) != len(ratio):
            raise ValueError(f"{len(train_rows)} train_rows for {len(ratio)} ratios")
        natural = sum(w * x for w, x in zip(natural_mixture(train_rows), ratio))
    return {"mean": statistics.fmean(ratio), "natural_mean": natural,
            "geo_mean": math.exp(statistics.fmean(math.log(x) for x in ratio)), "worst": max(ratio)}


def mean_sd(xs: Sequence[float]) -> tuple[float, float | None]:
    """(mean, sample standard deviation) over runs; the deviation is None for a single run."""
    if not xs:
        raise ValueError("mean_sd of no values")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def format_mean_sd(xs: Sequence[float], digits: int = 3) -> str:
    """``1.234 ± 0.056`` over several runs, ``1.234`` for one (the cells of docs/results*.md)."""
    m, sd = mean_sd(xs)

    def fmt(v: float) -> str:  # 3 digits: as format_ratio (so an untrained student's ratio is not 30 digits long)
        return format_ratio(v) if digits == 3 else f"{v:.{digits}f}"

    return fmt(m) if sd is None else f"{fmt(m)} ± {fmt(sd)}"
