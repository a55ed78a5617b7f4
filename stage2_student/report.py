"""`ddk-student report DIR [--baseline DIR2]`: report.md, weights.png and ratios.png of one training run.

report.md explains itself to someone who reads only it: what the ratio is (lower is better, 1.0 is the teacher), each
domain's ratio before and after with every summary metric (:mod:`stage2_student.summary`), the mixture before and
after (with the passes over each domain's rows and the domains whose repeated rows stopped paying,
:mod:`stage2_student.repeats`), the raw perplexities, and with ``--baseline`` the final ratios of
another run of the same budget (plain KD, say) next to this one's. The run directory is read through
:mod:`stage2_student.rundir`; the plots are :mod:`stage2_student.plots`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ddk_store.errors import DdkError, ReportError, describe
from ddk_store.paths import replace_file

from . import plots
from .rundir import METRICS_FILE, RATIOS_PNG, REPORT_FILE, WEIGHTS_PNG, read_config, read_metrics
from .repeats import RISE_TOL, find_repeats, rows_sampled
from .summary import METRICS, format_ratio, natural_mixture, summarize

METRIC_ROW = {"mean": "mean (equal weights)", "natural_mean": "mean (natural weights)", "geo_mean": "geometric mean",
              "worst": "worst domain"}


def _pct(new: float, old: float) -> str:
    """``new`` against ``old``: a signed percentage, or a factor (``÷1,250``, ``×12.0``) beyond tenfold."""
    r = new / old
    if 0.1 <= r <= 10:
        pct = f"{100.0 * (r - 1.0):+.1f}%"
        return "0.0%" if pct in ("+0.0%", "-0.0%") else pct  # no sign on a change that rounds away
    return f"÷{1 / r:,.0f}" if r < 0.1 else f"×{r:,.1f}"


def _mix(domains: list[str], weights: list[float]) -> str:
    return ", ".join(f"{d} {w:.3f}" for d, w in zip(domains, weights))


def natural_rows(run_dir: Path, final: dict[str, Any], cfg: dict[str, Any]) -> tuple[list[int] | None, str | None]:
    """(training rows per domain, None) from the run's record ``final`` (any interval record), else from the store its
    config names; (None, why) when neither. The one place that finds a run's natural mixture."""
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


def ddk_floor(cfg: dict[str, Any], num_domains: int) -> float | None:
    """DDK's smallest sampling weight, (1 - alpha) / N (Eq. 2), for a run of ``--mixing ddk``; None otherwise."""
    alpha = cfg.get("alpha")
    return (1.0 - alpha) / num_domains if cfg.get("mixing") == "ddk" and isinstance(alpha, (int, float)) else None


def load_run(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None, dict[str, Any]]:
    """(interval records then the final one if any, the final record or None, the saved config)."""
    intervals, final = read_metrics(run_dir)
    return intervals + ([final] if final else []), final, read_config(run_dir)


def repeats_lines(records: list[dict[str, Any]], batch_size: int, rows: list[int], steps: int | None = None
                  ) -> list[str]:
    """The report's paragraph on repeated rows (:mod:`stage2_student.repeats`): the flagged domains, or that there
    are none. ``steps``: the run's steps (no suggested cap below what they allow)."""
    found = find_repeats(records, batch_size, rows, steps=steps)
    rule = (f"its held-out ratio ended more than {100 * RISE_TOL:g}% above its lowest while it had more than one "
            "pass over its training rows and was sampled at least at its natural pace since that lowest")
    if not found:
        return [f"**Repeated rows**: no domain is flagged (flagged: {rule})."]
    return [f"**Repeated rows**: {len(found)} domain(s) flagged ({rule}). More weight on such a domain buys repeats "
            "of its rows, not a smaller gap:", "", *(f"- {f.message()}" for f in found)]


def _budget(cfg: dict[str, Any]) -> str:
    steps, batch = cfg.get("steps"), cfg.get("batch_size")
    return f"{steps} steps x {batch} rows" if steps and batch else "?"


def _baseline(path: Path, domains: list[str], cfg: dict[str, Any], first: dict[str, Any]
              ) -> tuple[list[dict[str, Any]], str, list[str]]:
    """(the baseline's records, its label, notes on what differs from this run)."""
    records, final, bcfg = load_run(path)
    if records[0]["domains"] != domains:
        raise ReportError(f"--baseline {path}: its domains {records[0]['domains']} differ from this run's {domains}; "
                          f"pass a run on the same store")
    label = f"`{path.name}` ({bcfg.get('mixing', '?')}, gamma {bcfg.get('gamma', '?')})"
    notes = []
    if not final:
        notes.append(f"the baseline has not finished: its last evaluation (step {records[-1]['step']}) is shown")
    if _budget(bcfg) != _budget(cfg):
        notes.append(f"budgets differ: this run {_budget(cfg)}, the baseline {_budget(bcfg)}")
    if any(abs(a - b) > 1e-6 * b for a, b in zip(records[0]["ppl_teacher"], first["ppl_teacher"])):
        notes.append("the teacher perplexities differ, so the two runs were not measured on the same held-out rows")
    return records, label, notes


def _origin(student: Any) -> str:
    """Where the student came from, when it is itself the output of a finished `ddk-student train` run (a
    cross-entropy warm-up, say): that run's recipe and its mean ratio before and after. Empty otherwise, or when that
    run's files cannot be read (the report is about this run)."""
    if not isinstance(student, str) or not (Path(student) / METRICS_FILE).is_file():
        return ""
    try:
        records, final, scfg = load_run(Path(student))
        mean = [summarize(r["ratio"])["mean"] for r in (records[0], final)] if final else None
    except (ValueError, KeyError, OSError):  # DdkError is a ValueError
        return ""
    if not mean:
        return ""
    gamma = scfg.get("gamma")
    loss = "cross-entropy only (gamma 0)" if gamma == 0 else f"CE + {gamma} KL"
    return (f" (itself a `ddk-student train` run: {final['step']} steps of {loss} on the "
            f"{scfg.get('mixing', '?')} mixture, which took its mean ratio from {format_ratio(mean[0])} to "
            f"{format_ratio(mean[1])}; "
            f"*before* below is that trained student)")


def write_report(run_dir: str | Path, baseline: str | Path | None = None) -> Path:
    """Write report.md, weights.png and ratios.png into ``run_dir``; return the report path. ``baseline``: another
    run of the same store whose final ratios are shown next to this run's."""
    run_dir = Path(run_dir)
    records, final, cfg = load_run(run_dir)
    first, last = records[0], records[-1]
    domains = first["domains"]
    base, base_label, base_notes = (_baseline(Path(baseline), domains, cfg, first) if baseline
                                    else (None, "", []))
    mixing = cfg.get("mixing", "?")
    cap = cfg.get("max_epochs_per_domain")
    floor = ddk_floor(cfg, len(domains))
    plots.weights_plot(records, run_dir / WEIGHTS_PNG, floor=floor,
                       title=f"{run_dir.name}: domain sampling weights ({mixing})")
    plots.ratios_plot(records, run_dir / RATIOS_PNG, baseline=base,
                      baseline_label="baseline " + base_label.replace("`", ""),
                      title=f"{run_dir.name}: student/teacher perplexity ratio per domain")

    rows, no_rows = natural_rows(run_dir, last, cfg)
    before, after = summarize(first["ratio"], rows), summarize(last["ratio"], rows)
    b_after = summarize(base[-1]["ratio"], base[-1].get("train_rows") or rows) if base else None
    intervals = records[:-1] if final else records
    K = cfg.get("interval") or (intervals[1]["step"] if len(intervals) > 1 else "?")
    cap_text = f"at most {cap:g} passes over each domain's training rows" if cap else "none (paper-exact DDK)"
    steps_text = (f"{last['step']}" if final else
                  f"{last['step']} of {cfg.get('steps', '?')} (run not finished: its last evaluation is shown)")
    lines = [
        f"# ddk-student run: {run_dir.name}",
        "",
        "How to read this report: a domain's **ratio** is the student's held-out perplexity divided by the teacher's, "
        "on the same held-out rows. **Lower is better; 1.0 means the student predicts that domain as well as the "
        "teacher** (below 1.0, better). *Before* is the evaluation at step 0, *after* the one after the last step"
        + ("." if final else " (this run has not finished: its last evaluation is shown)."),
        "",
        f"- store: `{cfg.get('store', '?')}`",
        f"- student: `{cfg.get('student', '?')}`{_origin(cfg.get('student'))}",
        f"- mixing: `{mixing}`, alpha {cfg.get('alpha', '?')}, gamma {cfg.get('gamma', '?')}, "
        f"T {cfg.get('temperature', '?')}, interval K {K}",
        f"- epoch cap (--max-epochs-per-domain): {cap_text}",
        f"- steps: {steps_text}, "
        f"rows per step: {cfg.get('batch_size', '?')}, intervals logged: {len(intervals)}",
        "",
        "## Student/teacher perplexity ratio (lower is better; 1.0 = the teacher)",
        "",
    ]
    head = "| domain | ratio before | ratio after | change |"
    if base:
        head += " baseline after | this run vs baseline |"
    lines += [head, "|---" + "|---:" * (head.count("|") - 2) + "|"]

    def row(name: str, b: float, a: float, ba: float | None, which: Callable[[dict], str] = lambda r: "") -> str:
        cells = f"| {name} | {format_ratio(b)}{which(first)} | {format_ratio(a)}{which(last)} | {_pct(a, b)} |"
        return cells + (f" {format_ratio(ba)}{which(base[-1])} | {_pct(a, ba)} |" if ba is not None
                        else (" – | – |" if base else ""))

    def worst_of(record: dict) -> str:  # each column's worst domain may be another one
        return f" ({domains[record['ratio'].index(max(record['ratio']))]})"

    for i, d in enumerate(domains):
        lines.append(row(d, first["ratio"][i], last["ratio"][i], base[-1]["ratio"][i] if base else None))
    for key, _ in METRICS:
        if after[key] is None:
            continue
        lines.append(row(f"*{METRIC_ROW[key]}*", before[key], after[key], b_after[key] if b_after else None,
                         worst_of if key == "worst" else lambda r: ""))
    lines += ["", "*change*: after vs before, in percent, or as a factor beyond tenfold (÷1,000: a thousand times "
              "lower). The summary rows are computed over the domains' ratios of each column "
              "(*natural weights*: each domain's share of the training rows; *geometric mean*: exp of the mean log "
              "ratio; *worst domain*: the largest ratio)."]
    if base:
        lines += ["", f"Baseline: {base_label}; *this run vs baseline* below 0 means this run ends closer to the "
                  "teacher." + "".join(f" Note: {n}." for n in base_notes)]

    lines += ["", "## Sampling mixture", "",
              f"- before (step 0): {_mix(domains, first['weights'])}",
              f"- after (the last interval, from step {intervals[-1]['step']}): "
              f"{_mix(domains, last['weights'])}"]
    if rows:
        lines.append(f"- natural (each domain's share of the training rows): {_mix(domains, natural_mixture(rows))}")
    elif no_rows:  # (the natural-weighted mean, the passes and the repeated-rows check need the rows)
        lines.append(f"- natural mixture, passes over each domain's rows: unknown ({no_rows})")
    if floor is not None:
        lines.append(f"- DDK's floor: Eq. 2 keeps every domain at (1 - alpha) / N = {floor:.3f} or more; the rest "
                     "follows the domains' ratios (a softmax over them, so a gap of a few units already decides)"
                     + ("; the epoch cap may hold a domain below it once its passes are used up" if cap else ""))
    batch = cfg.get("batch_size")
    if rows and isinstance(batch, int):
        sampled = rows_sampled(records, batch)
        held = [sum(bool(r.get("capped", [False] * len(domains))[i]) for r in records) for i in range(len(domains))]
        lines += ["", "| domain | training rows | rows sampled | passes over its rows |"
                  + (" intervals at the cap |" if cap else ""),
                  "|---|---:|---:|---:|" + ("---:|" if cap else "")]
        for i, d in enumerate(domains):
            passes = f"{sampled[i] / rows[i]:.2f}" if rows[i] else "–"
            lines.append(f"| {d} | {rows[i]} | {sampled[i]:,} | {passes} |" + (f" {held[i]} |" if cap else ""))
        steps = cfg.get("steps")
        lines += ["", *repeats_lines(records, batch, rows, steps if isinstance(steps, int) else None)]
    lines += ["", "## Perplexities", "",
              "| domain | teacher ppl | student ppl before | student ppl after | ratio after | final weight |",
              "|---|---:|---:|---:|---:|---:|"]
    for i, d in enumerate(domains):
        lines.append(f"| {d} | {format_ratio(last['ppl_teacher'][i])} | {format_ratio(first['ppl_student'][i])} | "
                     f"{format_ratio(last['ppl_student'][i])} | {format_ratio(last['ratio'][i])} | "
                     f"{last['weights'][i]:.4f} |")
    lines += [
        "",
        f"![domain sampling weights: each evaluation's weights hold until the next]({WEIGHTS_PNG})",
        "",
        f"![student/teacher perplexity ratio per domain at every evaluation, log scale]({RATIOS_PNG})",
        "",
    ]
    path = run_dir / REPORT_FILE
    replace_file(path, "\n".join(lines))
    return path
