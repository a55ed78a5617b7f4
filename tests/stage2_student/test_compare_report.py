"""`ddk-student report` (self-explaining report.md, ratio before/after, mixture, --baseline) and `ddk-student compare`
(the per-domain table over runs and seeds with every summary metric, and its bar chart), on run directories written
through stage2_student.rundir with numbers chosen so that every expected value is computed by hand below."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from stage2_student import rundir
from stage2_student.cli import cli
from stage2_student.summary import format_mean_sd, summarize

PNG = b"\x89PNG\r\n\x1a\n"


def write_run(run: Path, ratios: list[list[float]], *, weights: list[list[float]] | None = None,
              domains: tuple[str, ...] = ("a", "b"), train_rows: list[int] | None = (30, 10), teacher: float = 2.0,
              final: bool = True, config: str = "") -> Path:
    """A run of 4 steps x 4 rows: interval records at steps 0 and 2 with ``ratios[0]``/``[1]``, the final one at
    step 4 with ``ratios[-1]`` (one list per record); the student's ppl is ratio x teacher."""
    run.mkdir(parents=True, exist_ok=True)
    (run / rundir.CONFIG_FILE).write_text("store: s\nstudent: m\nmixing: ddk\nalpha: 0.5\ngamma: 0.2\nsteps: 4\n"
                                          "batch_size: 4\ninterval: 2\n" + config)
    rundir.start_metrics(run)
    weights = weights or [[0.4, 0.6]] * len(ratios)
    events = [rundir.INTERVAL] * (len(ratios) - 1) + [rundir.FINAL if final else rundir.INTERVAL]
    for t, (q, w, event) in enumerate(zip(ratios, weights, events)):
        ev = {"ppl": [x * teacher for x in q], "nll": [0.0] * len(q)}
        rundir.append_record(run, rundir.interval_record(2 * t, t, domains, ev, [teacher] * len(q), q, w, w,
                                                         event=event, train_rows=train_rows))
    return run


# --------------------------------------------------------------------------------------------------- summary
def test_summary_metrics_by_hand():
    # ratios [1.5, 2.0], training rows [30, 10] (natural mixture 0.75 / 0.25):
    # mean (1.5 + 2)/2 = 1.75; natural 0.75*1.5 + 0.25*2 = 1.625; geometric sqrt(1.5*2) = 1.7320508; worst 2
    assert summarize([1.5, 2.0], [30, 10]) == pytest.approx(
        {"mean": 1.75, "natural_mean": 1.625, "geo_mean": 3 ** 0.5, "worst": 2.0})
    assert summarize([1.5, 2.0])["natural_mean"] is None
    # runs 1.75 and 2.75: mean 2.25, sample sd sqrt(((-.5)^2 + .5^2)/1) = 0.7071
    assert format_mean_sd([1.75, 2.75]) == "2.250 ± 0.707" and format_mean_sd([1.75]) == "1.750"


# --------------------------------------------------------------------------------------------------- report
def test_report_explains_itself_and_has_before_after_and_the_mixture(tmp_path):
    run = write_run(tmp_path / "ddk", [[4.0, 8.0], [3.0, 6.0], [2.0, 5.0]],
                    weights=[[0.75, 0.25], [0.5, 0.5], [0.5, 0.5]])
    res = CliRunner().invoke(cli, ["report", str(run)])
    assert res.exit_code == 0, res.output
    md = (run / "report.md").read_text()
    assert "**Lower is better; 1.0 means the student predicts that domain as well as the teacher**" in md
    assert "| domain | ratio before | ratio after | change |" in md
    # a: 4 -> 2 is -50.0%; b: 8 -> 5 is -37.5%
    assert "| a | 4.000 | 2.000 | -50.0% |" in md and "| b | 8.000 | 5.000 | -37.5% |" in md
    # before: mean 6, natural .75*4 + .25*8 = 5, worst 8; after: mean 3.5, natural .75*2 + .25*5 = 2.75, worst 5
    assert "| *mean (equal weights)* | 6.000 | 3.500 | -41.7% |" in md
    assert "| *mean (natural weights)* | 5.000 | 2.750 | -45.0% |" in md
    assert "| *worst domain* | 8.000 (b) | 5.000 (b) | -37.5% |" in md
    assert "- before (step 0): a 0.750, b 0.250" in md
    assert "- after (the last interval, from step 2): a 0.500, b 0.500" in md
    assert "- natural (each domain's share of the training rows): a 0.750, b 0.250" in md
    # rows trained on: steps 0-2 at (.75, .25) x 8 rows = (6, 2); steps 2-4 at (.5, .5) x 8 = (4, 4) -> (10, 6);
    # passes 10/30 = 0.33 and 6/10 = 0.60
    assert "| a | 30 | 10 | 0.33 |" in md and "| b | 10 | 6 | 0.60 |" in md
    assert "epoch cap (--max-epochs-per-domain): none (paper-exact DDK)" in md
    for png in (rundir.WEIGHTS_PNG, rundir.RATIOS_PNG):
        assert (run / png).read_bytes()[:8] == PNG


def test_report_replaces_links_planted_in_a_shared_run_directory_instead_of_writing_through_them(tmp_path):
    # A teammate who can write into the run directory plants report.md and weights.png as links to the victim's
    # files; `report` replaces the links and leaves the files they point to as they were. Appending a record
    # through a planted metrics.jsonl link is refused.
    run = write_run(tmp_path / "run", [[4.0, 8.0], [3.0, 6.0], [2.0, 5.0]])
    victims = {name: tmp_path / f"victim-{name}" for name in (rundir.REPORT_FILE, rundir.WEIGHTS_PNG)}
    for name, victim in victims.items():
        victim.write_text("precious")
        (run / name).symlink_to(victim)
    res = CliRunner().invoke(cli, ["report", str(run)])
    assert res.exit_code == 0, res.output
    for name, victim in victims.items():
        assert victim.read_text() == "precious" and not (run / name).is_symlink()
    assert "**Lower is better" in (run / rundir.REPORT_FILE).read_text()
    victim = tmp_path / "victim-metrics"
    victim.write_text("precious")
    (run / rundir.METRICS_FILE).unlink()
    (run / rundir.METRICS_FILE).symlink_to(victim)
    with pytest.raises(OSError):
        rundir.append_record(run, {"event": "step", "step": 5})
    assert victim.read_text() == "precious"


def test_report_says_why_the_natural_mixture_is_missing(tmp_path):
    # an older run (no train_rows in its records) whose store cannot be read: the sections that need the rows say why
    run = write_run(tmp_path / "old", [[4.0, 8.0], [2.0, 5.0]], train_rows=None)
    res = CliRunner().invoke(cli, ["report", str(run)])
    assert res.exit_code == 0, res.output
    md = (run / "report.md").read_text()
    assert "- natural mixture, passes over each domain's rows: unknown (" in md
    assert "records no train_rows and its store s cannot be read" in md
    assert "| domain | training rows |" not in md


def test_report_of_an_unfinished_run_says_how_far_it_got_and_a_change_that_rounds_away_has_no_sign(tmp_path):
    run = write_run(tmp_path / "running", [[4.0, 8.0], [4.0 * (1 - 1e-5), 8.0 * (1 + 1e-5)]], final=False)
    assert CliRunner().invoke(cli, ["report", str(run)]).exit_code == 0
    md = (run / "report.md").read_text()
    assert "- steps: 2 of 4 (run not finished: its last evaluation is shown)" in md  # config.yaml: steps 4
    # -0.001% and +0.001% both round to 0.0%: printed without a sign
    assert "| a | 4.000 | 4.000 | 0.0% |" in md and "| b | 8.000 | 8.000 | 0.0% |" in md


def test_report_of_a_huge_initial_ratio_reads_as_a_factor(tmp_path):
    run = write_run(tmp_path / "raw", [[800000.0, 4.0], [10.0, 3.0], [6.0, 2.0]])
    from stage2_student.report import write_report

    md = write_report(run).read_text()
    # 800,000 -> 6 is a fall by a factor 133,333; 4 -> 2 stays a percentage
    assert "| a | 800,000 | 6.000 | ÷133,333 |" in md and "| b | 4.000 | 2.000 | -50.0% |" in md


def test_report_with_a_baseline_compares_the_final_ratios(tmp_path):
    run = write_run(tmp_path / "ddk", [[4.0, 8.0], [3.0, 6.0], [2.0, 5.0]])
    kd = write_run(tmp_path / "kd", [[4.0, 8.0], [3.0, 7.0], [2.5, 4.0]], config="mixing: natural\n")
    res = CliRunner().invoke(cli, ["report", str(run), "--baseline", str(kd)])
    assert res.exit_code == 0, res.output
    md = (run / "report.md").read_text()
    assert "| domain | ratio before | ratio after | change | baseline after | this run vs baseline |" in md
    # a: 2 vs 2.5 is -20.0%; b: 5 vs 4 is +25.0%; worst 5 vs 4 +25.0%
    assert "| a | 4.000 | 2.000 | -50.0% | 2.500 | -20.0% |" in md
    assert "| b | 8.000 | 5.000 | -37.5% | 4.000 | +25.0% |" in md
    assert "Baseline: `kd` (natural, gamma 0.2)" in md and "Note:" not in md
    assert "| *worst domain* | 8.000 (b) | 5.000 (b) | -37.5% | 4.000 (b) | +25.0% |" in md
    # a baseline whose worst domain is another one: each column names its own
    other = write_run(tmp_path / "kd2", [[4.0, 8.0], [3.0, 7.0], [4.5, 2.0]], config="mixing: natural\n")
    res = CliRunner().invoke(cli, ["report", str(run), "--baseline", str(other)])
    assert res.exit_code == 0, res.output
    assert "| *worst domain* | 8.000 (b) | 5.000 (b) | -37.5% | 4.500 (a) | +11.1% |" in (run / "report.md").read_text()


def test_report_baseline_notes_and_refusals(tmp_path):
    run = write_run(tmp_path / "ddk", [[4.0, 8.0], [2.0, 5.0]])
    other = write_run(tmp_path / "other", [[4.0, 8.0], [2.0, 5.0]], teacher=3.0, final=False)
    res = CliRunner().invoke(cli, ["report", str(run), "--baseline", str(other)])
    assert res.exit_code == 0, res.output
    md = (run / "report.md").read_text()
    assert "the baseline has not finished" in md and "not measured on the same held-out rows" in md
    foreign = write_run(tmp_path / "foreign", [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], domains=("a", "b", "c"),
                        weights=[[0.2, 0.3, 0.5]] * 2, train_rows=None)
    res = CliRunner().invoke(cli, ["report", str(run), "--baseline", str(foreign)])
    assert res.exit_code == 2 and "--baseline" in res.output and "differ from this run's ['a', 'b']" in res.output
    assert len(res.output.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------------- compare
def test_compare_table_over_seeds_and_single_runs(tmp_path):
    s0 = write_run(tmp_path / "ddk-s0", [[4.0, 4.0], [1.5, 2.0]])
    s1 = write_run(tmp_path / "ddk-s1", [[4.0, 4.0], [2.5, 3.0]])
    kd = write_run(tmp_path / "kd-s0", [[4.0, 4.0], [1.0, 4.0]])
    png = tmp_path / "figs" / "bars.png"
    res = CliRunner().invoke(cli, ["compare", f"DDK={s0},{s1}", str(kd), "--out", str(png)])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "| arm | a | b | mean | nat. mean | geo. mean | worst |" in out
    # DDK: a (1.5, 2.5) -> 2 ± .707; b (2, 3) -> 2.5 ± .707; means per run 1.75, 2.75 -> 2.25 ± .707;
    # natural .75*1.5+.25*2 = 1.625 and .75*2.5+.25*3 = 2.625 -> 2.125 ± .707; geometric sqrt(3) = 1.732 and
    # sqrt(7.5) = 2.739 -> 2.235 ± .712; worst 2 and 3 -> 2.5 ± .707
    assert ("| DDK | 2.000 ± 0.707 | 2.500 ± 0.707 | 2.250 ± 0.707 | 2.125 ± 0.707 | 2.235 ± 0.712 | 2.500 ± 0.707 |"
            in out)
    # kd-s0 (one run): mean 2.5, natural .75*1 + .25*4 = 1.75, geometric sqrt(4) = 2, worst 4
    assert "| kd-s0 | 1.000 | 4.000 | 2.500 | 1.750 | 2.000 | 4.000 |" in out
    assert "runs: DDK 2, kd-s0 1" in out
    assert png.read_bytes()[:8] == PNG


def test_compare_reads_the_natural_mixture_from_the_store_when_the_run_lacks_it(tmp_path, store_url):
    # the tiny store has 16 training rows in each of alpha, beta, gamma: natural = equal weights
    doms = ("alpha", "beta", "gamma")
    old = write_run(tmp_path / "old", [[2.0, 2.0, 2.0], [1.0, 2.0, 6.0]], domains=doms, weights=[[0.2, 0.3, 0.5]] * 2,
                    train_rows=None, config=f"store: {store_url}\n")
    lost = write_run(tmp_path / "lost", [[2.0, 2.0, 2.0], [1.0, 2.0, 6.0]], domains=doms, weights=[[0.2, 0.3, 0.5]] * 2,
                     train_rows=None, config=f"store: {tmp_path / 'gone'}\n")
    res = CliRunner().invoke(cli, ["compare", str(old), str(lost), "--out", str(tmp_path / "c.png")])
    assert res.exit_code == 0, res.output
    # mean (1+2+6)/3 = 3 = the natural mean on equal rows; geometric 12^(1/3) = 2.289; the lost store: "–"
    assert "| old | 1.000 | 2.000 | 6.000 | 3.000 | 3.000 | 2.289 | 6.000 |" in res.stdout
    assert "| lost | 1.000 | 2.000 | 6.000 | 3.000 | – | 2.289 | 6.000 |" in res.stdout
    assert "note: " in res.stderr and "lost: records no train_rows and its store" in res.stderr


def test_compare_refuses_unfinished_or_foreign_runs_and_notes_other_heldout_rows(tmp_path):
    a = write_run(tmp_path / "a", [[4.0, 4.0], [1.5, 2.0]])
    running = write_run(tmp_path / "running", [[4.0, 4.0], [1.5, 2.0]], final=False)
    res = CliRunner().invoke(cli, ["compare", str(a), str(running)])
    assert res.exit_code == 2 and "running: the run has not finished" in res.output
    three = write_run(tmp_path / "three", [[1.0] * 3, [1.0] * 3], domains=("a", "b", "c"),
                      weights=[[0.2, 0.3, 0.5]] * 2, train_rows=None)
    res = CliRunner().invoke(cli, ["compare", str(a), str(three)])
    assert res.exit_code == 2 and "compare runs on the same store" in res.output
    res = CliRunner().invoke(cli, ["compare", "=nothing"])
    assert res.exit_code == 2 and "cannot read arm '=nothing'" in res.output
    other = write_run(tmp_path / "other", [[4.0, 4.0], [1.5, 2.0]], teacher=3.0)
    res = CliRunner().invoke(cli, ["compare", str(a), str(other), "--out", str(tmp_path / "c.png")])
    assert res.exit_code == 0 and "measured on other held-out rows" in res.stderr


def test_compare_draws_next_to_the_current_directory_by_default(tmp_path, monkeypatch):
    run = write_run(tmp_path / "r", [[4.0, 4.0], [1.5, 2.0]])
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["compare", str(run)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "compare.png").read_bytes()[:8] == PNG


def test_an_output_path_the_filesystem_refuses_is_one_error_line(tmp_path):
    # (through the console entry point: its error contract is the point) a chart path under a regular file
    from ddk_testkit.processes import run_cli

    run = write_run(tmp_path / "r", [[4.0, 4.0], [1.5, 2.0]])
    (tmp_path / "file.txt").write_text("not a directory")
    res = run_cli("ddk-student", ["compare", str(run), "--out", str(tmp_path / "file.txt" / "c.png")])
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.code == 2 and len(errors) == 1 and "Traceback" not in res.output, res.output
    assert errors[0].startswith(f"error: {tmp_path / 'file.txt'}") and errors[0].endswith(
        "; check the path and its permissions, or give another location"), errors[0]


def test_compare_refuses_twice_given_arms_and_runs_and_a_chart_that_is_not_png(tmp_path):
    a = write_run(tmp_path / "a", [[4.0, 4.0], [1.5, 2.0]])
    b = write_run(tmp_path / "b", [[4.0, 4.0], [2.5, 3.0]])
    out = ["--out", str(tmp_path / "c.png")]
    res = CliRunner().invoke(cli, ["compare", f"X={a}", f"X={b}", *out])
    assert res.exit_code == 2 and "two arms are labelled 'X'" in res.output
    res = CliRunner().invoke(cli, ["compare", str(a), f"A={b},{tmp_path / 'b'}", *out])
    assert res.exit_code == 2 and f"run {tmp_path / 'b'} is given twice ('A' and 'A')" in res.output
    res = CliRunner().invoke(cli, ["compare", str(a), f"Y={a}", *out])
    assert res.exit_code == 2 and "is given twice ('a' and 'Y')" in res.output
    # the chart's file is checked before any run is read: a .txt is refused, a name without suffix gets .png
    res = CliRunner().invoke(cli, ["compare", str(a), "--out", str(tmp_path / "c.txt")])
    assert res.exit_code == 2 and "give a FILE.png" in res.output and "| arm |" not in res.output
    res = CliRunner().invoke(cli, ["compare", str(a), "--out", str(tmp_path / "bars")])
    assert res.exit_code == 0 and f"bars: {tmp_path / 'bars.png'}" in res.stderr
    assert (tmp_path / "bars.png").read_bytes()[:8] == PNG


def test_compare_passes_of_runs_on_stores_of_other_sizes_name_no_row_counts(tmp_path):
    a = write_run(tmp_path / "a", [[4.0, 4.0], [1.5, 2.0]], train_rows=[30, 10])
    b = write_run(tmp_path / "b", [[4.0, 4.0], [1.5, 2.0]], train_rows=[60, 20])
    res = CliRunner().invoke(cli, ["compare", str(a), "--out", str(tmp_path / "c.png")])
    assert "| arm | a (30 rows) | b (10 rows) |" in res.stdout
    res = CliRunner().invoke(cli, ["compare", str(a), str(b), "--out", str(tmp_path / "c.png")])
    assert res.exit_code == 0, res.output
    assert "| arm | a | b |" in res.stdout and "each run's passes are over its own" in res.stdout
    # records at steps 0 and 2 (final): 2 steps x 4 rows at (0.4, 0.6) -> 3 and 5 rows; run a: 3/30 = 0.10 and
    # 5/10 = 0.50; run b, twice the rows: 0.05 and 0.25
    assert "| a | 0.10 | 0.50 |" in res.stdout and "| b | 0.05 | 0.25 |" in res.stdout


def test_ratios_and_perplexities_are_formatted_to_fit_a_column():
    from stage2_student.summary import format_ratio

    assert [format_ratio(x) for x in (0.5, 2.5, 999.9994, 999.9996, 12345.6, 999_999.0)] == [
        "0.500", "2.500", "999.999", "1,000", "12,346", "999,999"]
    from stage2_student.summary import format_mean_sd

    assert format_mean_sd([1.0, 3.0]) == "2.000 ± 1.414"
    assert format_mean_sd([6e26, 8e26]) == "7e+26 ± 1.41e+26"
    # an untrained or diverged student: scientific, not 30 digits
    assert [format_ratio(x) for x in (615182450129026700426608640.0, 1e6, float("inf"), float("nan"))] == [
        "6.15e+26", "1e+06", "inf", "nan"]
    # a student far past a weak teacher: significant digits, not a column of 0.000
    assert [format_ratio(x) for x in (2.9e-05, 0.00042, 0.0005, 0.0, -0.00031)] == [
        "2.9e-05", "0.00042", "0.001", "0.000", "-0.00031"]


def test_the_bar_charts_axis_holds_every_error_bar(tmp_path, monkeypatch):
    # an arm of mean 2.0 and sd 1.414 spans 0.586-3.414; the axis was sized from the means alone (0.8-2.5)
    from stage2_student import plots

    limits = []
    real = plots._log_ratio_axis

    def observed(ax, values):
        real(ax, values)
        limits.append(ax.get_ylim())

    monkeypatch.setattr(plots, "_log_ratio_axis", observed)
    plots.ratio_bars(["a"], [("x", [2.0], [1.414])], tmp_path / "c.png", title="t")
    (lo, hi), = limits
    assert lo < 2.0 - 1.414 and hi > 2.0 + 1.414
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG
