"""The results tables of `ddk-student compare` and `bench/quality.py --report-only`: the natural-weighted mean and
the other summary metrics over seeds, the passes over each domain's rows, the epoch-cap log, and the report-only path
over a partly finished set of runs. Run directories are written through stage2_student.rundir with numbers chosen so
that every expected value is computed by hand below."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ddk_testkit.processes import REPO
from stage2_student import compare, rundir
from stage2_student.cli import cli
from stage2_student.summary import summarize

PNG = b"\x89PNG\r\n\x1a\n"
DOMAINS = ("a", "b", "c")
ROWS = [12, 4, 8]  # natural mixture 1/2, 1/6, 1/3


def write_run(run: Path, final_ratio: list[float], weights: list[list[float]], *, factor=None, capped=None,
              cap=None, mixing: str = "ddk", finished: bool = True, teacher: float = 2.0,
              config: str | None = None) -> Path:
    """A run of 4 steps x 4 rows, interval K = 2: interval records at steps 0 and 2 (``weights[0]``, ``[1]``), the
    final one at step 4 with ``final_ratio``. ``capped``/``cap``/``factor``: per interval, as --max-epochs-per-domain
    logs them."""
    run.mkdir(parents=True, exist_ok=True)
    (run / rundir.CONFIG_FILE).write_text(config or f"store: s\nstudent: m\nmixing: {mixing}\nalpha: 0.5\n"
                                                    "gamma: 0.2\nsteps: 4\nbatch_size: 4\ninterval: 2\n")
    rundir.start_metrics(run)
    for t in range(2):
        q = [4.0, 8.0, 3.0]
        rundir.append_record(run, rundir.interval_record(
            2 * t, t, DOMAINS, {"ppl": [x * teacher for x in q], "nll": [0.0] * 3}, [teacher] * 3, q, weights[t],
            (factor or weights)[t], train_rows=ROWS, cap=cap[t] if cap else None,
            capped=capped[t] if capped else None))
    if finished:
        rundir.append_record(run, rundir.interval_record(
            4, 2, DOMAINS, {"ppl": [x * teacher for x in final_ratio], "nll": [0.0] * 3}, [teacher] * 3,
            final_ratio, weights[-1], weights[-1], event=rundir.FINAL, train_rows=ROWS))
    return run


def ddk_seeds(root: Path) -> list[Path]:
    w = [[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]]
    return [write_run(root / "ddk-s0", [2.0, 6.0, 1.5], w), write_run(root / "ddk-s1", [2.0, 4.0, 1.5], w)]


def cap_run(root: Path, name: str = "ddk-cap-s0", finished: bool = True) -> Path:
    # interval 1: DDK wants b at 0.5, the cap holds it at 0.25 and a, c share the excess 0.25 by 0.25 : 0.25
    return write_run(root / name, [2.0, 5.0, 1.5], [[0.5, 0.25, 0.25], [0.375, 0.25, 0.375]],
                     factor=[[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]], cap=[[2.0, 0.5, 1.0], [1.5, 0.25, 1.0]],
                     capped=[[False, False, False], [False, True, False]], finished=finished)


# ------------------------------------------------------------------------------------------------ the metrics
def test_natural_weighted_mean_by_hand():
    # rows [12, 4, 8] -> mixture [1/2, 1/6, 1/3]; ratios [2, 6, 1.5]: (12*2 + 4*6 + 8*1.5) / 24 = 60/24 = 2.5
    s = summarize([2.0, 6.0, 1.5], ROWS)
    assert s["natural_mean"] == pytest.approx(2.5)
    # equal weights: 9.5/3 = 3.1667; geometric: (2*6*1.5)^(1/3) = 18^(1/3) = 2.62074; worst 6
    assert s["mean"] == pytest.approx(9.5 / 3) and s["geo_mean"] == pytest.approx(2.620741394) and s["worst"] == 6.0


# ------------------------------------------------------------------------------------------------ compare
def test_compare_table_passes_and_cap_over_synthetic_runs(tmp_path):
    s0, s1 = ddk_seeds(tmp_path)
    cap = cap_run(tmp_path)
    res = CliRunner().invoke(cli, ["compare", f"DDK={s0},{s1}", f"cap={cap}", "--out", str(tmp_path / "c.png")])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "| arm | a | b | c | mean | nat. mean | geo. mean | worst |" in out
    # DDK: b (6, 4) -> 5 ± 1.414; mean 3.1667 and 2.5 (7.5/3) -> 2.833 ± 0.471; natural 2.5 and
    # (24 + 16 + 12)/24 = 2.1667 -> 2.333 ± 0.236; geometric 18^(1/3) = 2.62074 and 12^(1/3) = 2.28943 ->
    # 2.455 ± 0.234; worst 6 and 4 -> 5 ± 1.414
    assert ("| DDK | 2.000 ± 0.000 | 5.000 ± 1.414 | 1.500 ± 0.000 | 2.833 ± 0.471 | 2.333 ± 0.236 | 2.455 ± 0.234 "
            "| 5.000 ± 1.414 |") in out
    # cap (one run): mean 8.5/3 = 2.833; natural (24 + 20 + 12)/24 = 2.333; geometric 15^(1/3) = 2.466; worst 5
    assert "| cap | 2.000 | 5.000 | 1.500 | 2.833 | 2.333 | 2.466 | 5.000 |" in out
    for key, label in (("mean", "mean"), ("natural_mean", "nat. mean"), ("geo_mean", "geo. mean"),
                       ("worst", "worst")):
        assert f"- `{label}`: {compare.METRIC_MEANING[key]}." in out
    # passes: steps 0-2 draw 8 rows at (.5, .25, .25) = (4, 2, 2); DDK steps 2-4 at (.25, .5, .25) = (2, 4, 2):
    # (6, 6, 4) over rows (12, 4, 8) = (0.50, 1.50, 0.50) in both seeds; the cap run's steps 2-4 at
    # (.375, .25, .375) = 3, 2, 3 rows: (7, 4, 5) -> 7/12 = 0.58, 4/4 = 1.00, 5/8 = 0.625 (printed 0.62)
    assert "| arm | a (12 rows) | b (4 rows) | c (8 rows) |" in out
    assert "| DDK | 0.50 ± 0.00 | 1.50 ± 0.00 | 0.50 ± 0.00 |" in out
    assert "| cap | 0.58 | 1.00 | 0.62 |" in out
    # the cap held b in one of the run's two intervals; the DDK arm has no cap log and no row there
    assert "| arm | intervals | a | b | c |" in out and "| cap | 2.0 | 0.0 | 1.0 | 0.0 |" in out
    assert "| DDK |" not in out.split("| arm | intervals |")[1]


def test_weights_table_shows_the_capped_weight_and_the_ddk_weight(tmp_path):
    run = compare.load_run(cap_run(tmp_path), [])
    table = compare.weights_table(run)
    assert "| 0 | 0.500 | 0.250 | 0.250 |" in table
    assert "| 2 | 0.375 | 0.250 (cap; DDK 0.500) | 0.375 |" in table
    assert "| 4 |" not in table  # the final record holds no new interval


# ------------------------------------------------------------------------------------------------ bench/quality.py
def quality_report_only(*argv: str) -> subprocess.CompletedProcess:
    """`bench/quality.py --report-only ARGV...`, run as a user would."""
    return subprocess.run([sys.executable, str(REPO / "bench" / "quality.py"), "--report-only", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_quality_report_only_over_a_partly_finished_set_of_runs(tmp_path):
    out = tmp_path / "q"
    ddk_seeds(out)
    cap_run(out)
    cap_run(out, "ddk-cap-s1", finished=False)  # still training: left out, and said
    write_run(out / "kd-s0", [1.5, 9.0, 1.2], [[0.5, 1 / 6, 1 / 3]] * 2, mixing="natural")
    write_run(out / "warmup", [3.0, 12.0, 2.0], [[0.5, 1 / 6, 1 / 3]] * 2, mixing="natural")
    results = tmp_path / "docs" / "results-x.md"
    proc = quality_report_only("--arms", "ddk-cap,kd,ddk,es", "--seeds", "0,1", "--out", str(out),
                               "--results", str(results))
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (out / "results_tables.md").read_text()
    # rows in ARMS order, whatever the order of --arms; es has no run and no row
    kd, ddk, cap = (md.index(f"| {label} |") for label in ("KD, natural", "DDK",
                                                           "DDK + epoch cap (E = 5, beyond the paper)"))
    assert kd < ddk < cap and "equal sampling" not in md.split("## Passes")[0].split("| arm |")[1]
    expected = (
        "runs: KD, natural 1, DDK 2, DDK + epoch cap (E = 5, beyond the paper) 1",
        "Not finished (or failed), so not in the tables: kd-s1, es-s0, es-s1, ddk-cap-s1.",
        "measured on the same held-out rows",
        # kd: natural mean (12*1.5 + 4*9 + 8*1.2)/24 = (18 + 36 + 9.6)/24 = 2.65
        "| KD, natural | 1.500 | 9.000 | 1.200 | 3.900 | 2.650 |",
        "| DDK + epoch cap (E = 5, beyond the paper) | 2.000 | 5.000 | 1.500 | 2.833 | 2.333 |",
        "## The epoch cap", "| 2 | 0.375 | 0.250 (cap; DDK 0.500) | 0.375 |",
        # warm-up: teacher 2, raw student 4*2 = 8 on a, after warm-up 3*2 = 6
        "| a | 2.00 | 8 | 6.00 | 3.000 |",
    )
    assert [e for e in expected if e not in md] == []
    for png in ("ratios_by_arm.png", "weights_ddk.png", "weights_ddk-cap.png"):
        assert f"![{png}](results-x/{png})" in md
        assert (results.parent / "results-x" / png).read_bytes()[:8] == PNG


def test_quality_report_only_names_a_failed_run(tmp_path):
    out = tmp_path / "q"
    ddk_seeds(out)
    cap_run(out, "ddk-s2", finished=False)
    (out / "ddk-s2.failed").write_text("exit status 1\n")  # what a run that failed leaves beside its log
    proc = quality_report_only("--arms", "ddk", "--seeds", "0,1,2", "--out", str(out), "--results",
                               str(tmp_path / "r.md"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (out / "results_tables.md").read_text()
    assert "Not finished (or failed), so not in the tables: ddk-s2 (FAILED, exit status 1: see ddk-s2.log)." in md


def _quality():
    """bench/quality.py as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("quality_bench", REPO / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_reruns_a_finished_run_of_other_settings(tmp_path):
    """A finished run is reused only when its config.yaml holds the settings the arguments ask for: another --steps
    or another --samples (the sampled store's N) makes it stale, so it is trained again, not reported under the new
    arguments' label."""
    import yaml

    q = _quality()
    out = tmp_path / "q"
    (out / "warmup").mkdir(parents=True)  # the arms' start must exist for their settings to build
    base = ["--out", str(out), "--steps", "12", "--interval", "4", "--arms", "kd,kd@topk-sampled", "--seeds", "0"]
    args = q.parse_args(base)
    for arm in ("kd", "kd@topk-sampled"):
        run = out / f"{arm}-s0"
        run.mkdir()
        (run / rundir.CONFIG_FILE).write_text(yaml.safe_dump(q.run_settings(q.arm_cmd(args, arm, 0))))
        assert q.stale_reason(q.arm_cmd(args, arm, 0)) is None
    longer = q.parse_args([*base, "--steps", "24"])
    assert q.stale_reason(q.arm_cmd(longer, "kd", 0)) == "steps 12, asked 24"
    other_n = q.parse_args([*base, "--samples", "7"])
    assert q.stale_reason(q.arm_cmd(other_n, "kd", 0)) is None  # the default store is the same
    assert "topk-sampled-n7" in q.stale_reason(q.arm_cmd(other_n, "kd@topk-sampled", 0))
    finished = [(arm, 0) for arm in ("kd", "kd@topk-sampled")]
    for arm, _ in finished:
        write_run(out / f"{arm}-s0", [1.5, 9.0, 1.2], [[0.5, 1 / 6, 1 / 3]] * 2, mixing="natural",
                  config=yaml.safe_dump(q.run_settings(q.arm_cmd(args, arm, 0))))
    assert q.runs_to_train(args) == []
    assert q.runs_to_train(longer) == finished
    (out / "kd-s0.failed").write_text("exit status 134\n")  # failed after its final line (say, in the export)
    assert q.runs_to_train(args) == [("kd", 0)]
    # a setting the run's version did not have yet is no difference; a run without its config.yaml is stale
    saved = yaml.safe_load((out / "kd-s0" / rundir.CONFIG_FILE).read_text())
    del saved["loss_chunk_size"]
    (out / "kd-s0" / rundir.CONFIG_FILE).write_text(yaml.safe_dump(saved))
    assert q.stale_reason(q.arm_cmd(args, "kd", 0)) is None
    (out / "kd-s0" / rundir.CONFIG_FILE).unlink()
    assert q.stale_reason(q.arm_cmd(args, "kd", 0)) == "it has no config.yaml"


def test_compare_notes_runs_of_another_budget_and_arms_mixing_settings(tmp_path):
    a0, a1 = ddk_seeds(tmp_path)
    b0 = write_run(tmp_path / "kd-s0", [1.5, 9.0, 1.2], [[0.5, 1 / 6, 1 / 3]] * 2, mixing="natural")
    config = (b0 / rundir.CONFIG_FILE).read_text()
    (b0 / rundir.CONFIG_FILE).write_text(config.replace("steps: 4", "steps: 8"))
    (a1 / rundir.CONFIG_FILE).write_text((a1 / rundir.CONFIG_FILE).read_text().replace("mixing: ddk", "mixing: wo-fs")
                                         .replace("interval: 2", "interval: 3"))
    _, notes = compare.load_arms([f"DDK={a0},{a1}", f"KD={b0}"])
    assert f"the runs of 'DDK' differ in more than their seed: interval is 2 in {a0} but 3 in {a1}" in notes
    assert f"not the same budget or start: steps is 4 in {a0} but 8 in {b0}" in notes
    assert f"the runs of 'DDK' differ in more than their seed: mixing is 'ddk' in {a0} but 'wo-fs' in {a1}" in notes
    assert len(notes) == 3, notes


def test_quality_report_only_without_a_finished_run_says_so(tmp_path):
    out = tmp_path / "q"
    cap_run(out, "ddk-s0", finished=False)
    proc = quality_report_only("--out", str(out), "--results", str(tmp_path / "r.md"))
    assert proc.returncode == 1 and "no finished runs under" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_quality_cap_arm_at_another_e_is_labelled_by_its_e(tmp_path):
    out = tmp_path / "q"
    for name in ("ddk-cap@2-s0", "ddk-cap-s0", "es-cap@3-s0"):
        cap_run(out, name)
    proc = quality_report_only("--arms", "es-cap@3,ddk-cap@2,ddk-cap", "--seeds", "0", "--out", str(out),
                               "--results", str(tmp_path / "r.md"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (out / "results_tables.md").read_text()
    rows = [md.index(f"| {label} + epoch cap (E = {e}, beyond the paper) | 2.000")
            for label, e in (("DDK", 5), ("Equal sampling", 3), ("DDK", 2))]
    assert rows == sorted(rows)  # ddk-cap first (ARMS order), then the E arms in the order --arms names them


@pytest.mark.parametrize("arm", ["ddk-cap@0", "ddk-cap@2.5", "ddk-cap@", "kd-cap@2"])
def test_quality_cap_arm_needs_a_positive_integer_e(tmp_path, arm):
    proc = quality_report_only("--arms", arm, "--out", str(tmp_path / "q"), "--results", str(tmp_path / "r.md"))
    assert proc.returncode == 2 and f"unknown arm(s) ['{arm}']" in proc.stderr and "ddk-cap@E, es-cap@E" in proc.stderr


def docs_figures() -> dict[str, bytes]:
    """Every committed figure under docs/, by path."""
    return {str(p): p.read_bytes() for p in (REPO / "docs").rglob("*.png")}


def test_quality_without_results_keeps_its_plots_under_out(tmp_path):
    """Without --results nothing is written outside --out: a run cannot replace a committed page's figures."""
    out = tmp_path / "q"
    cap_run(out, "ddk-s0")
    docs_before = docs_figures()
    proc = quality_report_only("--arms", "ddk", "--seeds", "0", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (out / "results_tables.md").read_text()
    for png in ("ratios_by_arm.png", "weights_ddk.png"):
        assert f"![{png}](figures/{png})" in md
        assert (out / "figures" / png).read_bytes()[:8] == PNG
    assert docs_figures() == docs_before
    assert f"plots in {out / 'figures'}" in proc.stdout
