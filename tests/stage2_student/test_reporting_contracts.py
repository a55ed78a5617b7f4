"""Contracts of stage 2's reporting (`ddk-student compare`, `ddk-student report`, :mod:`stage2_student.summary`) that
a mutation campaign found unpinned: summary metrics against float64 references written from their formulas, the
refusals of malformed inputs, the compare table's cells for an arm whose runs differ in what they know, the bar
chart's and the ratio plot's axes (real matplotlib Agg figures, inspected just before they are saved), and the report's
columns that the existing tests leave alone. Run directories are written through :mod:`stage2_student.rundir` (the
helper of test_compare_report)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from stage2_student import compare, plots, rundir
from stage2_student.cli import cli
from stage2_student.report import write_report
from stage2_student.summary import METRICS, summarize

from .test_compare_report import write_run


def _float64_summary(ratio, rows=None) -> dict[str, float | None]:
    """The summary metrics straight from their definitions (summary.py's docstring), in float64."""
    x = np.asarray(ratio, dtype=np.float64)
    nat = None
    if rows is not None:
        w = np.asarray(rows, dtype=np.float64)
        nat = float(np.dot(w / w.sum(), x))
    return {"mean": float(x.mean()), "natural_mean": nat, "geo_mean": float(np.exp(np.log(x).mean())),
            "worst": float(x.max())}


def _watch_figures(monkeypatch) -> list[dict]:
    """What every figure drawn through plots._finish holds when it is saved: y scale and limits, x ticks and their
    labels, the horizontal and vertical lines, and each bar container's heights and error-bar spans."""
    seen: list[dict] = []
    real = plots._finish

    def observed(fig, ax, path):
        hlines, vlines = [], []
        for line in ax.get_lines():
            xs, ys = (np.asarray(v, dtype=float) for v in line.get_data())
            if line.get_transform() == ax.get_yaxis_transform():  # axhline
                hlines.append((float(ys[0]), line.get_label()))
            elif line.get_transform() == ax.get_xaxis_transform():  # axvline
                vlines.append(float(xs[0]))
        bars = []
        for c in ax.containers:
            if hasattr(c, "patches") and c.errorbar is not None:
                segs = c.errorbar.lines[2][0].get_segments()
                bars.append(([p.get_height() for p in c.patches], [float(s[1][1] - s[0][1]) for s in segs],
                             c.get_label()))
        seen.append({"yscale": ax.get_yscale(), "ylim": ax.get_ylim(), "xticks": [float(t) for t in ax.get_xticks()],
                     "xlabels": [t.get_text() for t in ax.get_xticklabels()], "hlines": hlines, "vlines": vlines,
                     "bars": bars})
        real(fig, ax, path)

    monkeypatch.setattr(plots, "_finish", observed)
    return seen


# --------------------------------------------------------------------------------------------------- summary
def test_summary_matches_float64_references_of_its_formulas():
    """mean / natural-weighted mean / geometric mean / worst of uneven ratios on uneven rows, the worst domain not the
    last one, equal the float64 formulas."""
    ratio, rows = [1.37, 9.5, 0.82, 2.25], [1000, 7, 250, 40]
    got = summarize(ratio, rows)
    ref = _float64_summary(ratio, rows)
    assert got == pytest.approx(ref, rel=1e-12)
    assert [k for k, _ in METRICS] == ["mean", "natural_mean", "geo_mean", "worst"]


@pytest.mark.parametrize("rows", [[3, -1], [1, 2, 3], [2]])
def test_summary_refuses_negative_or_mismatched_training_rows(rows):
    """A negative row count, or a count per domain that does not match the ratios, is a ValueError, not a weighted
    mean over the wrong or truncated mixture."""
    with pytest.raises(ValueError):
        summarize([1.5, 2.0], rows)


# --------------------------------------------------------------------------------------------------- compare
def test_compare_refuses_runs_of_the_same_domains_in_another_order(tmp_path):
    """Domains must match in order too: column i of the table is one domain in every run."""
    a = write_run(tmp_path / "a", [[4.0, 4.0], [1.5, 2.0]])
    ba = write_run(tmp_path / "ba", [[4.0, 4.0], [2.0, 1.5]], domains=("b", "a"))
    res = CliRunner().invoke(cli, ["compare", str(a), str(ba), "--out", str(tmp_path / "c.png")])
    assert res.exit_code == 2 and "compare runs on the same store" in res.output


def test_compare_notes_teacher_perplexities_that_differ_by_a_thousandth(tmp_path):
    """Held-out rows differ as soon as the teacher's perplexities differ beyond rounding (relative 1e-6): 0.1% is
    noted, 1e-9 is not."""
    a = write_run(tmp_path / "a", [[4.0, 4.0], [1.5, 2.0]])
    near = write_run(tmp_path / "near", [[4.0, 4.0], [1.5, 2.0]], teacher=2.0 * (1 + 1e-9))
    off = write_run(tmp_path / "off", [[4.0, 4.0], [1.5, 2.0]], teacher=2.0 * 1.001)
    _, notes = compare.load_arms([str(a), str(near)])
    assert not any("held-out rows" in n for n in notes), notes
    _, notes = compare.load_arms([str(a), str(off)])
    assert any("held-out rows" in n and str(off) in n for n in notes), notes


def test_an_arm_whose_runs_do_not_all_know_the_natural_mixture_shows_a_dash(tmp_path):
    """One run of an arm without the natural mixture: the arm's nat. mean cell is "–" (not an error, not the mean of
    the runs that have it), the other cells stay means ± sd over both runs."""
    known = write_run(tmp_path / "s0", [[4.0, 4.0], [1.5, 2.0]])
    lost = write_run(tmp_path / "s1", [[4.0, 4.0], [2.5, 3.0]], train_rows=None,
                     config=f"store: {tmp_path / 'gone'}\n")
    res = CliRunner().invoke(cli, ["compare", f"X={known},{lost}", "--out", str(tmp_path / "c.png")])
    assert res.exit_code == 0, res.output
    # a (1.5, 2.5) -> 2 ± .707; b (2, 3) -> 2.5 ± .707; mean 1.75, 2.75; geo sqrt(3), sqrt(7.5); worst 2, 3
    assert "| X | 2.000 ± 0.707 | 2.500 ± 0.707 | 2.250 ± 0.707 | – | 2.235 ± 0.712 | 2.500 ± 0.707 |" in res.stdout


def test_a_run_directory_whose_name_holds_an_equals_sign_is_a_run_not_a_label(tmp_path):
    """`compare DIR` with DIR existing and named like lr=1e-3: one run labelled by its name."""
    run = write_run(tmp_path / "lr=1e-3", [[4.0, 4.0], [1.5, 2.0]])
    res = CliRunner().invoke(cli, ["compare", str(run), "--out", str(tmp_path / "c.png")])
    assert res.exit_code == 0, res.output
    assert "| lr=1e-3 | 1.500 | 2.000 |" in res.stdout


def test_the_bar_chart_draws_every_domain_and_metric_with_its_sd_on_a_log_axis_through_1(tmp_path, monkeypatch):
    """The compare bar chart: groups = domains then every summary metric; one bar per arm of height the mean over its
    runs and an error bar of +- the sample sd; a log y axis whose limits include the teacher's ratio 1 even when every
    ratio is above it; the dashed teacher line at 1; a separator just before the first summary metric."""
    seen = _watch_figures(monkeypatch)
    s0 = write_run(tmp_path / "s0", [[4.0, 4.0], [1.5, 2.0]])
    s1 = write_run(tmp_path / "s1", [[4.0, 4.0], [2.5, 3.0]])
    kd = write_run(tmp_path / "kd", [[4.0, 4.0], [1.25, 4.0]])
    arms, _ = compare.load_arms([f"DDK={s0},{s1}", str(kd)])
    compare.bar_chart(arms, tmp_path / "c.png")
    (fig,) = seen
    assert fig["xlabels"] == ["a", "b", "mean", "nat. mean", "geo. mean", "worst"]
    assert fig["yscale"] == "log"
    assert fig["ylim"][0] < 1.0 < fig["ylim"][1]
    assert (1.0, "teacher (ratio 1)") in fig["hlines"]
    assert fig["vlines"] == [pytest.approx(1.5)]
    (ddk_h, ddk_err, ddk_label), (kd_h, kd_err, kd_label) = fig["bars"]
    assert ddk_label.startswith("DDK (2 runs)") and kd_label.startswith("kd (1 run)")
    runs = [_float64_summary(r, [30, 10]) for r in ([1.5, 2.0], [2.5, 3.0])]
    v = np.asarray([r + [s[k] for k, _ in METRICS] for r, s in zip(([1.5, 2.0], [2.5, 3.0]), runs)],
                   dtype=np.float64)
    assert ddk_h == pytest.approx(v.mean(axis=0).tolist(), rel=1e-12)
    assert ddk_err == pytest.approx((2 * v.std(axis=0, ddof=1)).tolist(), rel=1e-9)  # mean-sd to mean+sd
    kd_ref = _float64_summary([1.25, 4.0], [30, 10])
    assert kd_h == pytest.approx([1.25, 4.0] + [kd_ref[k] for k, _ in METRICS], rel=1e-12)
    assert kd_err == pytest.approx([0.0] * 6, abs=1e-12)


# --------------------------------------------------------------------------------------------------- report
def test_report_ratio_plot_ticks_every_evaluation_step_on_a_log_axis_through_1(tmp_path, monkeypatch):
    """ratios.png: the x ticks are the evaluation steps (0, 2, 4: few evaluations), log y axis that holds 1 though
    every ratio is above it, the teacher's line at 1."""
    seen = _watch_figures(monkeypatch)
    run = write_run(tmp_path / "ddk", [[4.0, 8.0], [3.0, 6.0], [2.0, 5.0]])
    write_report(run)
    weights_fig, ratios_fig = seen
    for fig in seen:
        assert fig["xticks"] == [0.0, 2.0, 4.0]
    assert ratios_fig["yscale"] == "log" and ratios_fig["ylim"][0] < 1.0
    assert (1.0, "teacher (ratio 1)") in ratios_fig["hlines"]
    # DDK's floor (1 - alpha) / N with alpha 0.5 and N 2
    assert any(label.startswith("DDK floor") and y == pytest.approx(0.25) for y, label in weights_fig["hlines"])


def test_report_ddk_floor_is_one_minus_alpha_over_n(tmp_path):
    """Eq. 2's floor (1 - alpha) / N with alpha 0.2 and 2 domains is 0.400 (alpha / N would be 0.100)."""
    run = write_run(tmp_path / "ddk", [[4.0, 8.0], [2.0, 5.0]])
    cfg = run / rundir.CONFIG_FILE
    cfg.write_text(cfg.read_text().replace("alpha: 0.5", "alpha: 0.2"))
    md = write_report(run).read_text()
    assert "(1 - alpha) / N = 0.400 or more" in md


def test_report_perplexity_table_shows_the_students_before_and_after(tmp_path):
    """## Perplexities: teacher ppl, the student's ppl at step 0 and at the end (ratio x teacher 2.0), the final ratio
    and the final weight."""
    run = write_run(tmp_path / "ddk", [[4.0, 8.0], [3.0, 6.0], [2.0, 5.0]],
                    weights=[[0.75, 0.25], [0.5, 0.5], [0.625, 0.375]])
    md = write_report(run).read_text()
    assert "| a | 2.000 | 8.000 | 4.000 | 2.000 | 0.6250 |" in md
    assert "| b | 2.000 | 16.000 | 10.000 | 5.000 | 0.3750 |" in md


def test_report_a_change_beyond_tenfold_reads_as_a_factor_both_ways(tmp_path):
    """A ratio that rose 20-fold reads ×20.0, one that fell 20-fold ÷20; a tenfold change is still +900.0%."""
    run = write_run(tmp_path / "r", [[1.0, 40.0, 1.0], [20.0, 2.0, 10.0]], domains=("a", "b", "c"),
                    weights=[[0.2, 0.3, 0.5]] * 2, train_rows=[10, 10, 10])
    md = write_report(run).read_text()
    assert "| a | 1.000 | 20.000 | ×20.0 |" in md
    assert "| b | 40.000 | 2.000 | ÷20 |" in md
    assert "| c | 1.000 | 10.000 | +900.0% |" in md


def test_report_baseline_natural_mean_uses_the_baselines_own_rows(tmp_path):
    """The baseline column's natural-weighted mean weighs the baseline's final ratios by the training rows its own
    records hold (float64 reference), not by this run's."""
    run = write_run(tmp_path / "ddk", [[4.0, 8.0], [2.0, 5.0]], train_rows=[30, 10])
    base = write_run(tmp_path / "kd", [[4.0, 8.0], [2.5, 4.0]], train_rows=[10, 30])
    md = write_report(run, baseline=base).read_text()
    ref = _float64_summary([2.5, 4.0], [10, 30])["natural_mean"]  # 0.25*2.5 + 0.75*4 = 3.625
    this = _float64_summary([2.0, 5.0], [30, 10])["natural_mean"]  # 2.75
    assert f"| *mean (natural weights)* | 5.000 | 2.750 | -45.0% | {ref:.3f} | {100 * (this / ref - 1):+.1f}% |" in md


def test_report_refuses_a_baseline_of_the_same_domains_in_another_order(tmp_path):
    """--baseline with domains (b, a) against (a, b): refused, rows would be paired with the wrong domain."""
    run = write_run(tmp_path / "ddk", [[4.0, 8.0], [2.0, 5.0]])
    ba = write_run(tmp_path / "ba", [[8.0, 4.0], [5.0, 2.0]], domains=("b", "a"))
    res = CliRunner().invoke(cli, ["report", str(run), "--baseline", str(ba)])
    assert res.exit_code == 2 and "differ from this run's ['a', 'b']" in res.output


def test_compare_and_report_of_a_directory_that_is_not_a_run_say_so_in_one_line(tmp_path):
    """An empty directory given to compare or report: exit 2, one error line naming its metrics.jsonl."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv in (["compare", str(empty), "--out", str(tmp_path / "c.png")], ["report", str(empty)]):
        res = CliRunner().invoke(cli, argv)
        assert res.exit_code == 2, res.output
        assert str(empty) in res.output and "Traceback" not in res.output
