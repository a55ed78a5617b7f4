"""`ddk-student` command contracts, through the installed console script (in-process) on a tiny real store and student,
or on run directories written through stage2_student.rundir: eval's figures against the store's own teacher
perplexities, train's --config layering (a moved run, --resume from the file), report's --baseline check, compare's
guard of a run's plots, init's --seed/--overwrite, and the final line of train."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ddk_store import open_store
from ddk_testkit.processes import run_cli
from stage2_student import rundir
from stage2_student.cli import final_line
from stage2_student.summary import format_ratio

from .test_compare_report import write_run


def _error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


# ------------------------------------------------------------------------------------------------------ eval
def test_eval_figures_are_the_store_teachers_on_the_same_rows_and_the_ratio_is_student_over_teacher(
        store_url, student_dir):
    from stage2_student.evaluate import teacher_heldout_ppl

    argv = ["eval", "--store", store_url, "--model", str(student_dir), "--heldout-rows", "1", "--no-progress"]
    res = run_cli("ddk-student", argv + ["--json"])
    assert res.code == 0, res.output
    assert "note:" not in res.output  # a plain model directory is no run: nothing to compare its rows with
    got = json.loads(res.output.strip().splitlines()[-1])
    reader = open_store(store_url)
    domains = list(reader.domains)
    assert got["domains"] == domains
    want_teacher = teacher_heldout_ppl(reader, domains, 1)
    all_rows = teacher_heldout_ppl(reader, domains, None)
    assert got["ppl_teacher"] == pytest.approx(want_teacher, rel=1e-12)
    assert all(abs(a - b) > 1e-6 * b for a, b in zip(want_teacher, all_rows))  # the row limit matters here
    ratio64 = [float(s) / float(t) for s, t in zip(got["ppl_student"], got["ppl_teacher"])]
    assert got["ratio"] == pytest.approx(ratio64, rel=1e-12)
    assert all(abs(s - t) > 1e-3 * t for s, t in zip(got["ppl_student"], got["ppl_teacher"]))

    table = run_cli("ddk-student", argv)
    assert table.code == 0, table.output
    lines = [ln for ln in table.output.splitlines() if ln.strip()]
    assert lines == [f"{'domain':<20} {'teacher ppl':>12} {'student ppl':>12} {'ratio':>10}"] + [
        f"{d:<20} {format_ratio(t):>12} {format_ratio(s):>12} {format_ratio(q):>10}"
        for d, t, s, q in zip(domains, want_teacher, got["ppl_student"], ratio64)]


# ----------------------------------------------------------------------------------------------------- train
def _config(path: Path, **fields) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(fields))
    return path


def test_the_config_of_a_moved_run_is_refused_unless_out_is_typed(tmp_path, store_url, student_dir):
    run = tmp_path / "moved"
    run.mkdir()
    (run / rundir.METRICS_FILE).write_text("")  # a run is known by its metrics.jsonl alone (no checkpoints yet)
    cfg = _config(run / "config.yaml", store=store_url, student=str(student_dir), out=str(tmp_path / "original"),
                  steps=0)
    line = _error_line(run_cli("ddk-student", ["train", "--config", str(cfg)]))
    assert "(was the run moved or copied?)" in line and f"give --out {run.resolve()}" in line
    # --out typed: the user chose; the file's other settings are then checked (steps 0 here)
    line = _error_line(run_cli("ddk-student", ["train", "--config", str(cfg), "--out", str(run)]))
    assert "moved or copied" not in line and "steps" in line
    # a run's config naming its own folder is no moved run
    own = _config(tmp_path / "here" / "config.yaml", store=store_url, student=str(student_dir),
                  out=str(tmp_path / "here"), steps=0)
    (own.parent / rundir.METRICS_FILE).write_text("")
    line = _error_line(run_cli("ddk-student", ["train", "--config", str(own)]))
    assert "moved or copied" not in line and "steps" in line


def test_resume_from_the_config_file_reads_the_run_it_names(tmp_path):
    cfg = _config(tmp_path / "cfg" / "resume.yaml", out=str(tmp_path / "nothing-here"), resume=True)
    line = _error_line(run_cli("ddk-student", ["train", "--config", str(cfg)]))
    assert f"--resume {tmp_path / 'nothing-here'}: no ddk-student run there (no such directory)" in line


def test_final_line_names_the_worst_domain_and_none_without_a_final_record(tmp_path):
    run = write_run(tmp_path / "run", [[4.0, 8.0], [3.0, 2.5], [2.25, 1.5]], domains=("alpha", "beta"))
    assert final_line(run) == (
        "held-out perplexity ratio to the teacher (lower is better, 1.0 = the teacher): mean 1.875, worst 2.250 "
        f"(alpha); `ddk-student report {run}` writes report.md and its plots")
    unfinished = write_run(tmp_path / "unfinished", [[4.0, 8.0], [3.0, 6.0]], final=False)
    assert final_line(unfinished) is None


# ------------------------------------------------------------------------------------------- report / compare
def test_report_checks_the_baselines_files_before_writing(tmp_path):
    run = write_run(tmp_path / "run", [[4.0, 8.0], [3.0, 6.0], [2.0, 5.0]])
    base = write_run(tmp_path / "base", [[4.0, 8.0], [3.5, 7.0], [3.0, 6.0]])
    with open(base / rundir.METRICS_FILE, "a") as f:
        f.write("{not json\n")
    line = _error_line(run_cli("ddk-student", ["report", str(run), "--baseline", str(base)]))
    assert str(base / rundir.METRICS_FILE) in line
    assert not (run / "report.md").exists()
    # a baseline whose config.yaml cannot be read is refused as well, though the report reads only its metrics
    other = write_run(tmp_path / "other", [[4.0, 8.0], [3.5, 7.0], [3.0, 6.0]])
    (other / rundir.CONFIG_FILE).write_text("steps: [unclosed\n")
    line = _error_line(run_cli("ddk-student", ["report", str(run), "--baseline", str(other)]))
    assert rundir.CONFIG_FILE in line and str(other) in line
    assert not (run / "report.md").exists()


@pytest.mark.parametrize("name", [rundir.RATIOS_PNG, rundir.WEIGHTS_PNG])
def test_compare_refuses_either_plot_of_a_run_but_not_the_same_name_elsewhere(tmp_path, name):
    run = write_run(tmp_path / "run", [[4.0, 8.0], [3.0, 6.0], [2.0, 5.0]])
    before = (run / name).read_bytes() if (run / name).exists() else None
    line = _error_line(run_cli("ddk-student", ["compare", str(run), "--out", str(run / name)]))
    assert "that is a plot of the run" in line
    assert ((run / name).read_bytes() if (run / name).exists() else None) == before
    elsewhere = tmp_path / "charts" / name
    elsewhere.parent.mkdir()
    ok = run_cli("ddk-student", ["compare", str(run), "--out", str(elsewhere)])
    assert ok.code == 0, ok.output
    assert elsewhere.read_bytes().startswith(b"\x89PNG")


def test_compare_prints_its_notes(tmp_path):
    a = write_run(tmp_path / "a", [[4.0, 8.0], [3.0, 6.0], [2.0, 5.0]])
    b = write_run(tmp_path / "b", [[4.0, 8.0], [3.0, 6.0], [2.5, 4.0]], config="alpha: 0.9\n")
    res = run_cli("ddk-student", ["compare", f"x={a},{b}", "--out", str(tmp_path / "c.png")])
    assert res.code == 0, res.output
    notes = [ln for ln in res.output.splitlines() if ln.startswith("note: ")]
    assert notes and any("differ in more than their seed" in n for n in notes), res.output


# ------------------------------------------------------------------------------------------------------ init
def test_init_records_the_seed_and_overwrites_its_own_student(tmp_path, tiny_dir, tiny_tokenizer):
    from ddk_testkit.models import build_tiny_llama

    teacher = build_tiny_llama(tmp_path / "teacher", tiny_dir / "tokenizer", num_layers=3, hidden_size=32,
                               num_heads=2, seed=1)
    teacher = Path(teacher)
    out = tmp_path / "student"
    res = run_cli("ddk-student", ["init", "--teacher", str(teacher), "--layers", "2", "--out", str(out),
                                  "--seed", "7"])
    assert res.code == 0, res.output
    assert json.loads((out / "ddk-student-init.json").read_text())["seed"] == 7
    again = run_cli("ddk-student", ["init", "--teacher", str(teacher), "--layers", "2", "--out", str(out),
                                    "--seed", "3", "--overwrite"])
    assert again.code == 0, again.output
    assert json.loads((out / "ddk-student-init.json").read_text())["seed"] == 3
