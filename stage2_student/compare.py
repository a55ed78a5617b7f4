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
Under the table: the passes each arm's sampler made over each domain's training rows, and for runs with
``--max-epochs-per-domain`` how many intervals the cap held each domain. ``bench/quality.py`` builds its results
pages from these same functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddk_store.errors import ReportError

from . import plots
from .repeats import rows_sampled
from .report import natural_rows
from .rundir import FINAL, INTERVAL, read_config, read_metrics
from .summary import METRICS, format_mean_sd, mean_sd, summarize

#: Where the bar chart goes without --out: this file in the current directory.
DEFAULT_PNG = "compare.png"

#: What each summary metric favours: the sentences under every results table (keys of summary.METRICS).
METRIC_MEANING = {
    "mean": "equal weights over domains: a small domain counts as much as a large one, so it rewards closing the "
            "gaps of the rare domains",
    "natural_mean": "domains weighted by the natural mixture (each domain's share of the store's training rows): "
                    "the ratio a user sampling the natural data would see, dominated by the large domains",
    "geo_mean": "exp of the mean log ratio: ratios count multiplicatively (halving one domain's ratio offsets "
                "doubling another's), so one bad domain dominates it less than the arithmetic means",
    "worst": "the largest domain ratio: the domain DDK's reweighting targets",
}


@dataclass(frozen=True)
class Run:
    path: Path
    domains: list[str]
    ratio: list[float]
    ppl_teacher: list[float]
    summary: dict[str, float | None]
    records: list[dict[str, Any]]  # the interval records, then the final one
    config: dict[str, Any]
    train_rows: list[int] | None

    def passes(self) -> list[float] | None:
        """Passes the run's sampler made over each domain's training rows (rows drawn / training rows); None when
        the run's row counts or batch size are unknown."""
        batch = self.config.get("batch_size")
        if not self.train_rows or not isinstance(batch, int):
            return None
        return [s / n if n else float("nan") for s, n in zip(rows_sampled(self.records, batch), self.train_rows)]

    def intervals_capped(self) -> list[int] | None:
        """How many intervals --max-epochs-per-domain held each domain at its cap; None for a run without the cap."""
        logged = [r["capped"] for r in self.records if r.get("event") == INTERVAL and r.get("capped") is not None]
        return [sum(bool(c[i]) for c in logged) for i in range(len(self.domains))] if logged else None


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


def load_run(path: Path, notes: list[str]) -> Run:
    """A finished run's final evaluation and summary; the reason a natural mean is missing goes to ``notes``."""
    intervals, final = read_metrics(path)
    if final is None:
        raise ReportError(f"{path}: the run has not finished (no final evaluation in metrics.jsonl, last interval at "
                          f"step {intervals[-1]['step']}); compare finished runs, or resume this one first")
    cfg = read_config(path)
    rows, why = natural_rows(path, final, cfg)
    if why:
        notes.append(why)
    return Run(path, final["domains"], final["ratio"], final["ppl_teacher"], summarize(final["ratio"], rows),
               intervals + [final], cfg, rows)


#: Settings every compared run should share (the same budget from the same start), and those the runs of one arm
#: should share too (what makes them the same arm): a difference is noted above the tables.
BUDGET_KEYS = ("steps", "batch_size", "lr", "student")
ARM_KEYS = ("store", "mixing", "gamma", "alpha", "interval", "max_epochs_per_domain", "temperature")


def _differ(key: str, ref: Run, runs: list[Run], why: str) -> str | None:
    """The note for the runs of ``runs`` whose config ``key`` is not ``ref``'s, or None."""
    odd = [r for r in runs if r.config.get(key) != ref.config.get(key)]
    return (f"{why}: {key} is {ref.config.get(key)!r} in {ref.path} but " +
            ", ".join(f"{r.config.get(key)!r} in {r.path}" for r in odd)) if odd else None


def check_arms(arms: list[Arm]) -> list[str]:
    """Refuse runs of other domains (ReportError); notes for runs measured on other held-out rows, runs of another
    budget or start, and arms whose runs differ in more than their seed."""
    runs = [r for a in arms for r in a.runs]
    ref = runs[0]
    for r in runs[1:]:
        if r.domains != ref.domains:
            raise ReportError(f"{r.path}: its domains {r.domains} differ from {ref.path}'s {ref.domains}; compare runs "
                              f"on the same store")
    notes = [_differ(k, ref, runs[1:], "not the same budget or start") for k in BUDGET_KEYS]
    notes += [_differ(k, a.runs[0], a.runs[1:], f"the runs of {a.label!r} differ in more than their seed")
              for a in arms for k in ARM_KEYS]
    differ = [r for r in runs[1:] if any(abs(a - b) > 1e-6 * b for a, b in zip(r.ppl_teacher, ref.ppl_teacher))]
    if differ:
        notes.append(f"the teacher perplexities of {', '.join(str(r.path) for r in differ)} differ from {ref.path}'s: "
                     "those runs were measured on other held-out rows, so their ratios are not comparable cell by "
                     "cell")
    return [n for n in notes if n]


def load_arms(specs: list[str]) -> tuple[list[Arm], list[str]]:
    """The arms of ``specs`` and the notes for the reader (missing natural mixtures, different held-out rows).
    Two arms with one label, or a run given twice, are refused (ReportError)."""
    if not specs:
        raise ReportError("compare: give at least one RUN_DIR or LABEL=DIR[,DIR...]")
    notes: list[str] = []
    arms: list[Arm] = []
    seen: dict[Path, str] = {}
    for spec in specs:
        label, paths = parse_arm(spec)
        if label in {a.label for a in arms}:
            raise ReportError(f"compare: two arms are labelled {label!r}; give each arm its own label "
                              f"(LABEL=DIR[,DIR...])")
        for p in paths:
            if p.resolve() in seen:
                raise ReportError(f"compare: run {p} is given twice ({seen[p.resolve()]!r} and {label!r}); a run "
                                  f"counted twice would weigh double in its arm's mean")
            seen[p.resolve()] = label
        arms.append(Arm(label, [load_run(p, notes) for p in paths]))
    return arms, notes + check_arms(arms)


def png_path(out: str | Path) -> Path:
    """The bar chart's file: ``out`` as given when it ends in .png, with .png added when it has no suffix.

    Raises:
        ReportError: another suffix (the chart is a PNG), before any run is read.
    """
    path = Path(out)
    if not path.suffix:
        return path.with_name(path.name + ".png")
    if path.suffix.lower() != ".png":
        raise ReportError(f"--out {out}: the bar chart is written as PNG; give a FILE.png")
    return path


def ratio_table(arms: list[Arm]) -> str:
    """The table of docs/results*.md: one row per arm, one column per domain then the summary metrics, and a
    sentence per metric on what it favours."""
    domains = arms[0].runs[0].domains
    cols = [label for key, label in METRICS]
    lines = [
        "Final student/teacher perplexity ratio on each domain's held-out rows (lower is better; 1.0 = the teacher). "
        "A cell is the mean ± sample standard deviation over an arm's runs (runs: "
        + ", ".join(f"{a.label} {len(a.runs)}" for a in arms) + "). Each summary metric is computed per run over "
        "its domains' ratios, then averaged over the arm's runs.",
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
    lines += ["", "What each summary metric favours:", ""]
    lines += [f"- `{label}`: {METRIC_MEANING[key]}." for key, label in METRICS]
    return "\n".join(lines)


def passes_table(arms: list[Arm]) -> str:
    """Passes over each domain's training rows, per arm (mean ± sample sd over its runs); "" when no run can say."""
    known = [(a, [p for p in (r.passes() for r in a.runs) if p is not None]) for a in arms]
    known = [(a, ps) for a, ps in known if ps]
    if not known:
        return ""
    run = known[0][0].runs[0]
    counts = {tuple(r.train_rows) for a, _ in known for r in a.runs if r.train_rows}
    same = len(counts) == 1
    header = [f"{d} ({n} rows)" for d, n in zip(run.domains, next(iter(counts)))] if same else list(run.domains)
    logged = all("rows_trained" in rec for a, _ in known for r in a.runs for rec in r.records)
    source = "as the records count them" if logged else "rebuilt from the logged weights"
    lines = ["Passes each arm's sampler made over each domain's training rows during the run (rows drawn / training "
             f"rows, {source}; mean ± sample sd over runs). Several passes over a small domain mean its gap "
             "is bounded by its data rather than by how often it is sampled."
             + ("" if same else " The runs' stores hold different numbers of training rows: each run's passes are "
                "over its own."),
             "",
             "| arm | " + " | ".join(header) + " |",
             "|---" + "|---:" * len(run.domains) + "|"]
    for a, ps in known:
        lines.append(f"| {a.label} | " + " | ".join(format_mean_sd([p[i] for p in ps], 2)
                                                  for i in range(len(run.domains))) + " |")
    return "\n".join(lines)


def cap_table(arms: list[Arm]) -> str:
    """For the arms run with --max-epochs-per-domain: the intervals the cap held each domain (mean ± sample sd over runs,
    out of the run's intervals); "" when no arm has the cap."""
    capped = [(a, [c for c in (r.intervals_capped() for r in a.runs) if c is not None]) for a in arms]
    capped = [(a, cs) for a, cs in capped if cs]
    if not capped:
        return ""
    domains = arms[0].runs[0].domains
    lines = ["Intervals at the epoch cap (--max-epochs-per-domain): in how many of a run's intervals the cap held each "
             "domain below its DDK weight, the excess going to the other domains (mean ± sample sd over runs).",
             "",
             "| arm | intervals | " + " | ".join(domains) + " |",
             "|---|---:" + "|---:" * len(domains) + "|"]
    for a, cs in capped:
        n = format_mean_sd([sum(1 for r in run.records if r.get("event") == INTERVAL) for run in a.runs], 1)
        lines.append(f"| {a.label} | {n} | " + " | ".join(format_mean_sd([c[i] for c in cs], 1)
                                                        for i in range(len(domains))) + " |")
    return "\n".join(lines)


def weights_table(run: Run) -> str:
    """The sampling weights of each interval of one run (from its step on). Where the epoch cap held a domain, the
    cell is ``weight (cap; DDK w)``: the capped weight sampled and the uncapped DDK weight of that interval."""
    lines = ["| step | " + " | ".join(run.domains) + " |", "|---" * (len(run.domains) + 1) + "|"]
    for rec in run.records:
        if rec.get("event") == FINAL:
            continue
        held = rec.get("capped") or [False] * len(run.domains)
        factor = rec.get("factor") or rec["weights"]
        cells = [f"{w:.3f} (cap; DDK {f:.3f})" if h else f"{w:.3f}"
                 for w, f, h in zip(rec["weights"], factor, held)]
        lines.append(f"| {rec['step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(arms: list[Arm]) -> str:
    """What `ddk-student compare` prints: the ratio table with what each metric favours, then the passes and the
    epoch-cap tables when the runs hold what they need."""
    return "\n\n".join(filter(None, [ratio_table(arms), passes_table(arms), cap_table(arms)]))


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
