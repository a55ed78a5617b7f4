"""`ddk-student compare ARM...`: the final per-domain ratios of several runs side by side, every summary metric, and
a bar chart of them.

Each argument is one *arm* (one row of the table, one colour of bars):

- ``RUN_DIR``: a single run, labelled by its directory's name;
- ``LABEL=DIR[,DIR...]``: several runs of one setting, typically its seeds, labelled LABEL. Each cell is then the
  mean ± sample standard deviation over the arm's runs, the layout of docs/results*.md's tables.

Per run, the final ratios give the summary metrics of :mod:`stage2_student.summary` (equal-weighted mean, mean
weighted by the natural mixture, geometric mean, worst domain); an arm's cell is their mean (± sd) over its runs.
A run's natural mixture is the ``train_rows`` its records hold, else it is read from the store named in its
config.yaml; when neither is there, that column shows "–". Every run must be finished and have the same domains in
the same order; runs whose teacher perplexities differ were measured on different held-out rows, which is said.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddk_store.errors import DdkError, ReportError, describe

from . import plots
from .rundir import read_config, read_metrics
from .summary import METRICS, format_mean_sd, mean_sd, summarize

#: Where the bar chart goes without --out: this file in the current directory.
DEFAULT_PNG = "compare.png"


@dataclass(frozen=True)
class Run:
    path: Path
    domains: list[str]
    ratio: list[float]
    ppl_teacher: list[float]
    summary: dict[str, float | None]


@dataclass(frozen=True)
class Arm:
    label: str
    runs: list[Run]

    def per_domain(self, i: int) -> list[float]:
        return [r.ratio[i] for r in self.runs]

    def metric(self, key: str) -> list[float] | None:
        """One value per run, or None when a run lacks it (natural mean without the natural mixture)."""
        values = [r.summary[key] for r in self.runs]
        return None if any(v is None for v in values) else values  # type: ignore[return-value]


def parse_arm(spec: str) -> tuple[str, list[Path]]:
    """``DIR`` -> (DIR's name, [DIR]); ``LABEL=DIR[,DIR...]`` -> (LABEL, [DIR, ...]). An existing directory whose name
    holds '=' is taken as a directory."""
    if "=" not in spec or Path(spec).is_dir():
        return Path(spec).name or spec, [Path(spec)]
    label, _, dirs = spec.partition("=")
    paths = [Path(d) for d in dirs.split(",") if d.strip()]
    if not label.strip() or not paths:
        raise ReportError(f"compare: cannot read arm {spec!r}; give RUN_DIR or LABEL=DIR[,DIR...], "
                          f"e.g. KD=runs/kd-s0,runs/kd-s1")
    return label.strip(), paths


def natural_rows(run_dir: Path, final: dict[str, Any], cfg: dict[str, Any]) -> tuple[list[int] | None, str | None]:
    """(training rows per domain, None) from the run's records, else from its store; (None, why) when neither."""
    if final.get("train_rows"):
        return final["train_rows"], None
    store = cfg.get("store")
    if not store:
        return None, f"{run_dir}: records no train_rows and its config.yaml names no store"
    try:
        from ddk_store import open_store

        reader = open_store(store, storage_options=cfg.get("storage_options"))
        return [reader.num_rows(d, "train") for d in final["domains"]], None
    except (DdkError, OSError, KeyError, ValueError) as e:
        return None, f"{run_dir}: records no train_rows and its store {store} cannot be read ({describe(e)})"


def load_run(path: Path, notes: list[str]) -> Run:
    """A finished run's final evaluation and summary; the reason a natural mean is missing goes to ``notes``."""
    intervals, final = read_metrics(path)
    if final is None:
        raise ReportError(f"{path}: the run has not finished (no final evaluation in metrics.jsonl, last interval at "
                          f"step {intervals[-1]['step']}); compare finished runs, or resume this one first")
    rows, why = natural_rows(path, final, read_config(path))
    if why:
        notes.append(why)
    return Run(path, final["domains"], final["ratio"], final["ppl_teacher"], summarize(final["ratio"], rows))


def load_arms(specs: list[str]) -> tuple[list[Arm], list[str]]:
    """The arms of ``specs`` and the notes for the reader (missing natural mixtures, different held-out rows)."""
    if not specs:
        raise ReportError("compare: give at least one RUN_DIR or LABEL=DIR[,DIR...]")
    notes: list[str] = []
    arms = []
    for spec in specs:
        label, paths = parse_arm(spec)
        arms.append(Arm(label, [load_run(p, notes) for p in paths]))
    runs = [r for a in arms for r in a.runs]
    ref = runs[0]
    for r in runs[1:]:
        if r.domains != ref.domains:
            raise ReportError(f"{r.path}: its domains {r.domains} differ from {ref.path}'s {ref.domains}; compare runs "
                              f"on the same store")
    differ = [r for r in runs[1:] if any(abs(a - b) > 1e-6 * b for a, b in zip(r.ppl_teacher, ref.ppl_teacher))]
    if differ:
        notes.append(f"the teacher perplexities of {', '.join(str(r.path) for r in differ)} differ from "
                     f"{ref.path}'s: those runs were measured on other held-out rows, so their ratios are not "
                     f"comparable cell by cell")
    return arms, notes


def markdown(arms: list[Arm]) -> str:
    """The table of docs/results*.md: one row per arm, one column per domain then the summary metrics."""
    domains = arms[0].runs[0].domains
    cols = [label for key, label in METRICS]
    lines = [
        "Final student/teacher perplexity ratio on each domain's held-out rows (lower is better; 1.0 = the teacher). "
        "A cell is the mean ± sample standard deviation over an arm's runs (runs: "
        + ", ".join(f"{a.label} {len(a.runs)}" for a in arms) + "). `mean`: the mean over domains; `nat. mean`: "
        "weighted by the natural mixture (each domain's share of the training rows); `geo. mean`: the geometric mean; "
        "`worst`: the largest domain ratio; each computed per run, then over runs.",
        "",
        "| arm | " + " | ".join(domains + cols) + " |",
        "|---" + "|---:" * (len(domains) + len(cols)) + "|",
    ]
    for a in arms:
        cells = [format_mean_sd(a.per_domain(i)) for i in range(len(domains))]
        for key, _ in METRICS:
            values = a.metric(key)
            cells.append("–" if values is None else format_mean_sd(values))
        lines.append(f"| {a.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(arms: list[Arm], path: Path) -> Path:
    """Each domain's and each summary metric's bars, one per arm (mean over runs, error bar = sd)."""
    domains = arms[0].runs[0].domains
    metrics = [(key, label) for key, label in METRICS if all(a.metric(key) is not None for a in arms)]
    groups = domains + [label for _, label in metrics]
    series = []
    for a in arms:
        stats = [mean_sd(a.per_domain(i)) for i in range(len(domains))]
        stats += [mean_sd(a.metric(key)) for key, _ in metrics]  # type: ignore[arg-type]
        series.append((f"{a.label} ({len(a.runs)} run{'s' if len(a.runs) > 1 else ''})",
                       [m for m, _ in stats], [sd or 0.0 for _, sd in stats]))
    path.parent.mkdir(parents=True, exist_ok=True)
    plots.ratio_bars(groups, series, path, summary_from=len(domains),
                     title="Final student/teacher perplexity ratio: per domain, then summarized")
    return path
