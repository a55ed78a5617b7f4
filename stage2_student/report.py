"""`ddk-student report DIR`: report.md (per-domain table) and PNG plots of weights and ratios over intervals.

The run directory is read through :mod:`stage2_student.rundir` (file names, record layout, validation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .rundir import RATIOS_PNG, REPORT_FILE, WEIGHTS_PNG, read_config, read_metrics


def _plot(intervals: list[dict[str, Any]], key: str, ylabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on training hosts
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in intervals]
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, d in enumerate(intervals[0]["domains"]):
        ax.plot(steps, [r[key][i] for r in intervals], marker="o", markersize=3, label=d)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run_dir: str | Path) -> Path:
    """Write report.md, weights.png and ratios.png into ``run_dir``; return the report path."""
    run_dir = Path(run_dir)
    intervals, final = read_metrics(run_dir)
    cfg = read_config(run_dir)
    first, last = intervals[0], (final or intervals[-1])
    _plot(intervals, "weights", "sampling weight", run_dir / WEIGHTS_PNG)
    _plot(intervals, "ratio", "PPL student / PPL teacher", run_dir / RATIOS_PNG)

    lines = [
        f"# ddk-student run: {run_dir.name}",
        "",
        f"- store: `{cfg.get('store', '?')}`",
        f"- student: `{cfg.get('student', '?')}`",
        f"- mixing: `{cfg.get('mixing', '?')}`, alpha {cfg.get('alpha', '?')}, gamma {cfg.get('gamma', '?')}, "
        f"T {cfg.get('temperature', '?')}, interval K {intervals[1]['step'] if len(intervals) > 1 else '?'}",
        f"- steps: {last['step']}{'' if final else ' (run not finished: last interval shown)'}, "
        f"intervals logged: {len(intervals)}",
        "",
        "| domain | teacher ppl | student ppl before | student ppl after | ratio after | final weight |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for i, d in enumerate(first["domains"]):
        lines.append(f"| {d} | {last['ppl_teacher'][i]:.3f} | {first['ppl_student'][i]:.3f} | "
                     f"{last['ppl_student'][i]:.3f} | {last['ratio'][i]:.3f} | {last['weights'][i]:.4f} |")
    ratios = last["ratio"]
    lines += [
        "",
        f"Mean ratio after: {sum(ratios) / len(ratios):.4f}; worst domain: "
        f"{first['domains'][ratios.index(max(ratios))]} ({max(ratios):.4f}).",
        "",
        f"![domain sampling weights per interval]({WEIGHTS_PNG})",
        "",
        f"![student/teacher perplexity ratio per interval]({RATIOS_PNG})",
        "",
    ]
    path = run_dir / REPORT_FILE
    path.write_text("\n".join(lines))
    return path
