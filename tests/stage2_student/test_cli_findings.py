"""What a new user ran into with `ddk-student`, each fixed and checked through the real console script:
--device cuda without CUDA, an unreachable hub id, a student with a short context, evaluating a checkpoint, and
eval's --eval-batch-size/--batch-size."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from ddk_testkit.processes import run_cli

from ddk_testkit.commands import train_args


def one_error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, store_url, student_dir) -> Path:
    out = tmp_path_factory.mktemp("findings") / "run"
    result = run_cli("ddk-student", train_args(store_url, student_dir, out, steps=4, interval=2, batch_size=2,
                                               eval_batch_size=2, no_progress=True))
    assert result.code == 0, result.output
    (out.parent / "train-output.txt").write_text(result.output)
    return out


def test_train_says_its_shape_first_and_its_final_ratios_last(finished_run):
    lines = (finished_run.parent / "train-output.txt").read_text().splitlines()
    assert [ln for ln in lines if ln.startswith("training:")] == [
        "training: 4 steps of 2 rows x 16 tokens (128 tokens), mixing ddk; held-out evaluation and reweighting "
        "every 2 step(s), 3 in all; cpu, 1 process(es)"]
    final = [json.loads(ln) for ln in (finished_run / "metrics.jsonl").read_text().splitlines()][-1]
    ratio = [p / t for p, t in zip(final["ppl_student"], final["ppl_teacher"])]
    worst = max(range(len(ratio)), key=ratio.__getitem__)
    assert lines[-2:] == [
        f"done: {finished_run}",
        f"held-out perplexity ratio to the teacher (lower is better, 1.0 = the teacher): mean "
        f"{sum(ratio) / len(ratio):.3f}, worst {ratio[worst]:.3f} ({final['domains'][worst]}); "
        f"`ddk-student report {finished_run}` writes report.md and its plots"]


def test_the_default_interval_is_named_with_its_evaluation_count():
    from stage2_student.config import Stage2Config

    cfg = Stage2Config(store="s", student="m", out="o", steps=30, mixing="natural")
    assert cfg.plan_line(seq_len=128, device="cuda:0", world=8) == (
        "training: 30 steps of 8 rows x 128 tokens (30,720 tokens), mixing natural; held-out evaluation every 1 "
        "step(s) (the default, --steps / 30; --interval sets it), 31 in all; cuda:0, 8 process(es)")
    assert "every 4 step(s), 9 in all" in Stage2Config(store="s", student="m", out="o", steps=30, interval=4,
                                                        ).plan_line(seq_len=1, device="cpu", world=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_one_line_before_anything_is_created(tmp_path, store_url, student_dir):
    out = tmp_path / "run"
    line = one_error_line(run_cli("ddk-student", train_args(store_url, student_dir, out, device="cuda")))
    assert "--device cuda" in line and "no CUDA device" in line and "--device cpu" in line
    assert not out.exists()
    line = one_error_line(run_cli("ddk-student", ["eval", "--store", store_url, "--model", str(student_dir),
                                                  "--device", "cuda"]))
    assert "--device cuda" in line and "no CUDA device" in line


def test_a_hub_id_that_cannot_be_fetched_fails_in_seconds_in_one_whole_line(tmp_path, store_url):
    start = time.monotonic()
    result = run_cli("ddk-student", train_args(store_url, "someorg/no-such-student-xyz", tmp_path / "run"))
    took = time.monotonic() - start
    line = one_error_line(result)
    assert "--student someorg/no-such-student-xyz" in line
    assert line.endswith(("rerun with network access", "pass a local model directory")), line  # not cut
    assert took < 30, f"took {took:.0f} s"


def test_a_student_with_a_shorter_context_than_the_rows_is_refused(tmp_path, store_url, student_dir):
    short = tmp_path / "short"
    shutil.copytree(student_dir, short)
    config = json.loads((short / "config.json").read_text())
    config["max_position_embeddings"] = 8  # the store's rows are 16 tokens
    (short / "config.json").write_text(json.dumps(config))
    line = one_error_line(run_cli("ddk-student", train_args(store_url, short, tmp_path / "run")))
    assert "context of 8 tokens (max_position_embeddings)" in line and "rows are 16 tokens" in line
    assert "max_position_embeddings >= 16" in line


def test_eval_a_checkpoint_of_a_run(finished_run, store_url):
    ckpt = finished_run / "checkpoints" / "step-00000004"
    assert not (ckpt / "config.json").exists() and not (ckpt / "tokenizer.json").exists()
    results = {}
    for model in (finished_run, ckpt):
        result = run_cli("ddk-student", ["eval", "--store", store_url, "--model", str(model), "--json"])
        assert result.code == 0, result.output
        results[model] = json.loads(result.output.strip().splitlines()[-1])
    # the last checkpoint holds the final weights: the same numbers as the exported model
    assert results[ckpt]["ppl_student"] == pytest.approx(results[finished_run]["ppl_student"], rel=1e-6)
    earlier = run_cli("ddk-student", ["eval", "--store", store_url, "--model",
                                      str(finished_run / "checkpoints" / "step-00000002"), "--json"])
    assert earlier.code == 0, earlier.output


def test_eval_of_an_unfinished_run_points_to_its_checkpoints(tmp_path, finished_run, store_url):
    run = tmp_path / "run"
    shutil.copytree(finished_run / "checkpoints", run / "checkpoints")
    line = one_error_line(run_cli("ddk-student", ["eval", "--store", store_url, "--model", str(run)]))
    assert "has not finished" in line and "checkpoints/step-00000004" in line
    assert f"finish the run (`ddk-student train --out {run} --resume`), which writes the model there" in line


def test_eval_takes_train_s_eval_batch_size_and_batch_size_alike(store_url, student_dir):
    for flag in ("--eval-batch-size", "--batch-size"):
        result = run_cli("ddk-student", ["eval", "--store", store_url, "--model", str(student_dir), flag, "3",
                                         "--heldout-rows", "2", "--json"])
        assert result.code == 0, result.output
    line = one_error_line(run_cli("ddk-student", ["eval", "--store", store_url, "--model", str(student_dir),
                                                  "--eval-batch-size", "0"]))
    assert "--eval-batch-size/--batch-size must be >= 1, got 0" in line


def test_a_diverging_run_is_one_line_naming_the_learning_rate(tmp_path, store_url, student_dir):
    # A learning rate far too high: the loss turns NaN within a few steps (it was a FloatingPointError traceback).
    result = run_cli("ddk-student", train_args(store_url, student_dir, tmp_path / "run", lr=1e12, no_progress=True))
    started, *rest = result.output.splitlines()  # the run had started: its shape line, then the error alone
    assert started.startswith("training: ")
    line = one_error_line(result._replace(output="\n".join(rest)))
    assert "training diverged" in line and "the loss is nan" in line
    assert "--lr (this run: 1e+12)" in line and "--overwrite" in line and f"ddk-store verify {store_url}" in line


def test_perplexity_past_the_float_range_is_inf_not_an_overflow():
    import math

    from ddk_store.heldout import heldout_ppl

    assert heldout_ppl(1.0) == pytest.approx(math.e, rel=1e-15)
    assert heldout_ppl(709.0) == pytest.approx(math.exp(709.0), rel=1e-15)
    assert heldout_ppl(710.0) == math.inf and heldout_ppl(math.inf) == math.inf
    assert math.isnan(heldout_ppl(math.nan))


def test_overwrite_of_a_folder_that_only_has_a_config_yaml_deletes_nothing(tmp_path, store_url, student_dir):
    # A project's own config.yaml does not make its folder a run (it was deleted whole, before any check)
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "config.yaml").write_text("lr: 3.0e-4\n")
    (proj / "src" / "main.py").write_text("x = 1\n")
    line = one_error_line(run_cli("ddk-student", train_args(store_url, student_dir, proj, overwrite=True)))
    assert "holds no ddk-student run" in line
    assert (proj / "src" / "main.py").read_text() == "x = 1\n" and (proj / "config.yaml").is_file()


def test_overwrite_keeps_a_run_with_files_of_the_users_and_until_the_new_run_passes_its_checks(
        tmp_path, finished_run, store_url, student_dir):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = sorted(p.name for p in run.iterdir())
    # 1. a file the user put there: named, nothing deleted (also one named like a tokenizer's or a model's file)
    for mine in ("NOTES.md", "tokenizer_comparison_notes.md", "baseline.model"):
        (run / mine).write_text("keep")
        line = one_error_line(run_cli("ddk-student", train_args(store_url, student_dir, run, overwrite=True)))
        assert "replaces only what a run wrote there" in line and mine in line, line
        (run / mine).unlink()
    assert sorted(p.name for p in run.iterdir()) == before
    # 2. a mistake found after --out is checked (an unknown domain): the old run is still whole
    line = one_error_line(run_cli("ddk-student", train_args(store_url, student_dir, run, overwrite=True,
                                                            mixing="static", static_weights="nosuch=1")))
    assert "nosuch" in line
    assert sorted(p.name for p in run.iterdir()) == before
    assert (run / "metrics.jsonl").read_text() == (finished_run / "metrics.jsonl").read_text()
    # 3. a good command replaces it
    result = run_cli("ddk-student", train_args(store_url, student_dir, run, overwrite=True, steps=2, interval=1,
                                               batch_size=2, eval_batch_size=2, no_progress=True))
    assert result.code == 0, result.output
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2


def test_a_run_inside_the_store_is_refused_before_anything_is_written(tmp_path, store_url, student_dir):
    out = Path(store_url) / "run1"
    line = one_error_line(run_cli("ddk-student", train_args(store_url, student_dir, out)))
    assert "is inside the store" in line and "outside it" in line
    assert not out.exists()


def test_a_checkpoint_whose_student_was_cut_again_is_one_line(tmp_path, finished_run, store_url, tiny_dir):
    # The run's --student replaced by one with other layers after the run (ddk-student init --overwrite, say)
    from ddk_testkit.models import TINY_STUDENT, build_tiny_student

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    other = build_tiny_student(tmp_path / "recut", tiny_dir / "tokenizer", num_layers=TINY_STUDENT["num_layers"] + 1)
    ckpt = run / "checkpoints" / "step-00000004"
    state = json.loads((ckpt / "state.json").read_text())
    state["config"]["student"] = str(other)
    (ckpt / "state.json").write_text(json.dumps(state))
    line = one_error_line(run_cli("ddk-student", ["eval", "--store", store_url, "--model", str(ckpt)]))
    assert "its weights do not fit the model built from the run's --student" in line and "missing 0" not in line
    assert "changed after the run started" in line


def test_eval_of_a_folder_that_holds_no_model_says_what_model_takes(tmp_path, finished_run, store_url):
    line = one_error_line(run_cli("ddk-student", ["eval", "--store", store_url, "--model",
                                                  str(finished_run / "checkpoints")]))
    assert "the checkpoints folder of a run" in line and "checkpoints/step-00000004" in line
    (tmp_path / "empty").mkdir()
    line = one_error_line(run_cli("ddk-student", ["eval", "--store", store_url, "--model", str(tmp_path / "empty")]))
    assert "no config.json there" in line and "RUN/checkpoints/step-N" in line


def test_resume_of_a_finished_run_says_it_is_finished_and_changes_no_record(tmp_path, finished_run):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    result = run_cli("ddk-student", ["train", "--out", str(run), "--resume", "--no-progress"])
    assert result.code == 0, result.output
    assert "already finished its 4 steps; nothing to train" in result.output and "continuing" not in result.output
    # nothing evaluated, saved or checkpointed again
    assert {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before


def test_resume_from_a_moved_store_says_how_to_keep_the_run(tmp_path, finished_run, store_url):
    moved = tmp_path / "moved-store"
    shutil.copytree(store_url, moved)
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    line = one_error_line(run_cli("ddk-student", ["train", "--out", str(run), "--resume", "--store", str(moved),
                                                  "--steps", "6"]))
    assert f"store: run has {store_url!r}, given {str(moved)!r}" in line
    assert "if the store only moved, make it reachable at the run's path again" in line
    assert "--overwrite would start the run over" in line


def test_compare_and_report_keep_a_runs_own_plots_and_refuse_the_run_as_its_own_baseline(finished_run):
    line = one_error_line(run_cli("ddk-student", ["compare", str(finished_run), "--out",
                                                  str(finished_run / "ratios.png")]))
    assert "that is a plot of the run" in line and "another name" in line
    line = one_error_line(run_cli("ddk-student", ["report", str(finished_run), "--baseline", str(finished_run)]))
    assert "that is the run itself" in line


def test_eval_of_a_run_that_used_fewer_heldout_rows_says_its_figures_differ(tmp_path, finished_run, store_url):
    import yaml

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["heldout_rows"] = 2
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = run_cli("ddk-student", ["eval", "--store", store_url, "--model", str(run), "--no-progress"])
    assert result.code == 0, result.output
    assert "note: the run evaluated on at most 2 held-out rows per domain (--heldout-rows 2); this evaluation uses all" \
        in result.output
    result = run_cli("ddk-student", ["eval", "--store", store_url, "--model", str(run), "--heldout-rows", "2",
                                     "--no-progress"])
    assert result.code == 0 and "note:" not in result.output, result.output
    # the other way round: the run used every held-out row (its setting unset), this evaluation fewer
    result = run_cli("ddk-student", ["eval", "--store", store_url, "--model", str(finished_run), "--heldout-rows",
                                     "1", "--no-progress"])
    assert result.code == 0, result.output
    assert "note: the run evaluated on every held-out row (--heldout-rows unset); this evaluation uses 1" \
        in result.output
    result = run_cli("ddk-student", ["eval", "--store", store_url, "--model", str(finished_run), "--no-progress"])
    assert result.code == 0 and "note:" not in result.output, result.output


def test_weight_on_a_domain_without_training_rows_is_refused_before_anything_is_written(tmp_path, tiny_tokenizer,
                                                                                         student_dir):
    """--mixing static with weight on an empty domain trained to its first batch and died in a traceback, leaving
    a run directory that the same command then refused; weight 0 there trains."""
    from ddk_testkit.stores import make_store

    make_store(tmp_path / "store", tiny_tokenizer, train_rows={"alpha": 16, "beta": 16, "gamma": 0})
    store = str(tmp_path / "store")
    out = tmp_path / "run"
    line = one_error_line(run_cli("ddk-student", train_args(store, student_dir, out, mixing="static",
                                                            static_weights="alpha=0.4,beta=0.4,gamma=0.2")))
    assert "domain 'gamma' has no training rows" in line and "weight 0.2" in line and "give gamma weight 0" in line
    assert not out.exists()
    line = one_error_line(run_cli("ddk-student", train_args(store, student_dir, out, mixing="uniform")))
    assert "domain 'gamma' has no training rows" in line and "every domain" in line
    ok = run_cli("ddk-student", train_args(store, student_dir, out, mixing="static", steps=2, interval=2,
                                           static_weights="alpha=0.5,beta=0.5,gamma=0", no_progress=True))
    assert ok.code == 0, ok.output
