"""What `ddk-student train --resume` means, through the real console script: the run's own config.yaml supplies
every setting not typed again; a larger --steps extends a finished run from its last checkpoint (K and warm-up
kept, the LR cosine recomputed for the new total); the saved config.yaml holds absolute paths, so
`--config RUN/config.yaml --resume` works from anywhere; --resume where there is no run says it starts afresh."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from ddk_testkit.commands import train_argv
from ddk_testkit.processes import run_cli
from ddk_testkit.stores import make_store
from stage2_student.schedule import lr_at

#: A 6-step run, K = 2: interval boundaries at 2 and 4, its end (6) is a boundary too.
FLAGS = dict(steps=6, interval=2, batch_size=2, eval_batch_size=2, lr=3e-3, seed=0, no_progress=True,
             device="cpu")


def records(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def train(*argv: str) -> str:
    result = run_cli("ddk-student", ["train", *argv])
    assert result.code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def finished(tmp_path_factory, store_url, student_dir) -> Path:
    """A finished 6-step run, started from another directory with relative paths."""
    root = tmp_path_factory.mktemp("resume")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        argv = train_argv(os.path.relpath(store_url), Path(os.path.relpath(student_dir)), Path("run"), **FLAGS)
        train(*argv[1:])
    finally:
        os.chdir(cwd)
    return root / "run"


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished run whose config.yaml names the copy, as a run started there would."""
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    saved = yaml.safe_load((copy / "config.yaml").read_text())
    (copy / "config.yaml").write_text(yaml.safe_dump({**saved, "out": str(copy)}))
    return copy


def test_the_saved_config_has_absolute_paths(finished: Path, store_url: str, student_dir: Path) -> None:
    saved = yaml.safe_load((finished / "config.yaml").read_text())
    assert (saved["store"], saved["student"], saved["out"]) == (str(Path(store_url).resolve()),
                                                               str(student_dir.resolve()), str(finished))
    assert (saved["interval"], saved["warmup_steps"]) == (2, 0)  # K and warm-up as used


def test_resume_needs_only_out_and_what_changes_and_extends_a_finished_run(run: Path) -> None:
    before = records(run)
    train("--out", str(run), "--resume", "--steps", "10")  # no --store, --student, --interval ... retyped
    after = records(run)
    assert after[: len(before) - 1] == before[:-1]  # everything but the old "final" record kept as it was
    steps = [r["step"] for r in after if r["event"] == "step"]
    assert steps == list(range(1, 11))
    assert [r["step"] for r in after if r["event"] == "interval"] == [0, 2, 4, 6, 8]
    assert [r["step"] for r in after if r["event"] == "final"] == [10]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["steps"], saved["interval"], saved["warmup_steps"], saved["lr"]) == (10, 2, 0, 3e-3)
    # the cosine is recomputed for the new total from the resumed step on
    lrs = {r["step"]: r["lr"] for r in after if r["event"] == "step"}
    for s in range(7, 11):
        assert lrs[s] == pytest.approx(lr_at(s - 1, peak_lr=3e-3, total_steps=10, warmup_steps=0,
                                             final_lr_ratio=0.1))
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "step-00000010"
    assert (run / "model.safetensors").is_file()


def test_an_extension_killed_before_its_first_checkpoint_logs_its_reweighting_once(run: Path, tmp_path: Path) -> None:
    # An extension reweights at the old end (step 6), logs that interval record, then rewrites checkpoint 6; killed
    # before the rewrite commits, it leaves the old checkpoint 6 and the new record, and the next --resume
    # reweights at 6 again: the record must not be there twice.
    done = tmp_path / "done"
    shutil.copytree(run, done)
    train("--out", str(done), "--resume", "--steps", "10")
    (redone,) = [r for r in records(done) if r["event"] == "interval" and r["step"] == 6]
    killed = [r for r in records(run) if r["event"] != "final"] + [redone]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in killed))
    train("--out", str(run), "--resume", "--steps", "10")
    assert [r["step"] for r in records(run) if r["event"] == "interval"] == [0, 2, 4, 6, 8]
    assert [r for r in records(run) if r["event"] != "step"] == [r for r in records(done) if r["event"] != "step"]


def test_config_of_the_run_resumes_from_another_directory(run: Path, tmp_path: Path, monkeypatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    shutil.rmtree(run / "checkpoints" / "step-00000006")  # as if killed after step 4's checkpoint
    output = train("--config", str(run / "config.yaml"), "--resume")
    assert f"--resume {run}: continuing from its checkpoint at step 4 of 6" in output
    assert [r["step"] for r in records(run) if r["event"] == "final"] == [6]
    assert not any(elsewhere.iterdir())


def test_the_config_of_a_moved_run_does_not_act_on_the_directory_it_names(finished: Path, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(finished, moved)  # its config.yaml still names `finished`
    result = run_cli("ddk-student", ["train", "--config", str(moved / "config.yaml"), "--resume"])
    assert result.code == 2, result.output
    assert (f"it is the config of the run in {moved}, but it names --out {finished} (was the run moved or copied?); "
            f"give --out {moved} to continue the run here") in result.output
    output = train("--config", str(moved / "config.yaml"), "--out", str(moved), "--resume")
    assert f"--resume {moved}: the run already finished its 6 steps; nothing to train" in output


def test_resume_still_refuses_a_setting_that_changes_the_result(run: Path) -> None:
    result = run_cli("ddk-student", ["train", "--out", str(run), "--resume", "--lr", "0.1"])
    assert result.code == 2 and "the settings differ from the saved run (lr: run has 0.003, given 0.1)" in result.output
    result = run_cli("ddk-student", ["train", "--out", str(run), "--resume", "--steps", "4"])
    assert result.code == 2 and "--steps 4 is below the step of its latest checkpoint (6)" in result.output


def test_resume_never_takes_trust_remote_code_from_the_saved_config(run: Path) -> None:
    # A config.yaml in a shared run directory, edited to say trust_remote_code: true, must not switch on code
    # execution for whoever resumes the run; the flag is typed again, and typing it or not is no settings mismatch.
    from stage2_student.resume import resume_layer

    saved = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**saved, "trust_remote_code": True}))
    layer = resume_layer({"out": str(run), "resume": True})
    assert layer and "trust_remote_code" not in layer and layer["lr"] == saved["lr"]
    result = run_cli("ddk-student", ["train", "--out", str(run), "--resume", "--steps", "8"])
    assert result.code == 0, result.output  # resumed with it off: no mismatch
    assert yaml.safe_load((run / "config.yaml").read_text())["trust_remote_code"] is False
    from stage2_student.resume import resume_command  # the advice after an interruption names the flag again

    assert resume_command(run, trust_remote_code=True) == f"`ddk-student train --out {run} --resume --trust-remote-code`"


def test_resume_where_there_is_no_run_says_it_starts_afresh(tmp_path: Path, store_url: str,
                                                           student_dir: Path) -> None:
    out = tmp_path / "new"
    output = train(*train_argv(store_url, student_dir, out, **{**FLAGS, "steps": 3, "resume": True})[1:])
    assert f"--resume {out}: no checkpoint found there; starting a fresh run" in output
    assert [r["step"] for r in records(out) if r["event"] == "final"] == [3]


@pytest.mark.parametrize("there", ["missing", "unrelated files"])
def test_resume_alone_where_there_is_no_run_says_so_not_which_flags_are_required(tmp_path: Path, there: str) -> None:
    out = tmp_path / "typo"
    if there == "unrelated files":
        out.mkdir()
        (out / "notes.txt").write_text("x")
    result = run_cli("ddk-student", ["train", "--out", str(out), "--resume"])
    why = "no such directory" if there == "missing" else "no config.yaml in it"
    assert result.code == 2, result.output
    assert result.output.strip() == (f"error: --resume {out}: no ddk-student run there ({why}); check --out, or give "
                                     "--store and --student to start a new run there"), result.output


def test_a_run_extended_after_its_report_says_the_report_is_from_before(run: Path) -> None:
    assert run_cli("ddk-student", ["report", str(run)]).code == 0
    output = train("--out", str(run), "--resume", "--steps", "8")
    assert f"note: {run / 'report.md'} and its plots show the run before this resume" in output
    assert f"`ddk-student report {run}` draws them anew" in output


def test_a_run_that_ends_inside_an_interval_extends(tmp_path: Path, store_url: str, student_dir: Path) -> None:
    """A 5-step run (K = 2) ends one step into interval 2. Its checkpoint's evaluation history ends with the final
    evaluation, which nothing was sampled from; extended to 8 steps the run samples on from interval 2 and
    re-evaluates at 6 (it used to fail there, reading that entry's absent weights)."""
    out = tmp_path / "run"
    train(*train_argv(store_url, student_dir, out, **{**FLAGS, "steps": 5})[1:])
    train("--out", str(out), "--resume", "--steps", "8")
    after = records(out)
    assert [r["step"] for r in after if r["event"] == "step"] == list(range(1, 9))
    assert [r["step"] for r in after if r["event"] == "interval"] == [0, 2, 4, 6]
    assert [r["step"] for r in after if r["event"] == "final"] == [8]
    state = json.loads((out / "checkpoints" / "step-00000008" / "state.json").read_text())
    assert [h["step"] for h in state["history"]] == [0, 2, 4, 6, 8]  # the old final evaluation (5) is gone


@pytest.mark.parametrize("again, then_now", [
    (dict(train_rows=12), "training rows per domain [16, 16, 16] then, [12, 12, 12] now"),
    (dict(seed=1), "other teacher held-out perplexities: alpha "),
], ids=["rows", "teacher"])
def test_resume_refuses_a_store_dumped_again_at_the_runs_path(tmp_path: Path, tiny_tokenizer, student_dir: Path,
                                                             again: dict, then_now: str) -> None:
    """The checkpoint's sampler state and ratios are about the store it was trained on: a store written again at
    the run's path, with other rows or another teacher, is refused in one line before the student is loaded."""
    store = tmp_path / "store"
    make_store(store, tiny_tokenizer, train_rows=16, heldout_rows=4)
    out = tmp_path / "run"
    train(*train_argv(str(store), student_dir, out, **{**FLAGS, "steps": 4})[1:])
    shutil.rmtree(store)
    make_store(store, tiny_tokenizer, **{"train_rows": 16, "heldout_rows": 4, **again})
    result = run_cli("ddk-student", ["train", "--out", str(out), "--resume", "--steps", "6"])
    assert result.code == 2, result.output
    assert (f"--resume {out}: store {store.resolve()} is not the one its checkpoint at step 4 was trained on "
            f"({then_now}") in result.output
    assert "it was dumped or packed again. Resume from the original store" in result.output
    assert "Traceback" not in result.output
    make_store(store, tiny_tokenizer, train_rows=16, heldout_rows=4, overwrite=True)  # the original again: resumes
    train("--out", str(out), "--resume", "--steps", "6")
    assert [r["step"] for r in records(out) if r["event"] == "final"] == [6]


@pytest.mark.parametrize("folder", ["checkpoints", "tensorboard"])
def test_a_run_folder_replaced_by_a_link_is_refused_before_anything_is_written_through_it(run: Path, tmp_path: Path,
                                                                                         folder: str) -> None:
    # Checkpoint rotation and --report-to tensorboard delete in these folders: through a link planted in a shared
    # run directory they would delete whatever it points to.
    victim = tmp_path / "victim"
    (victim / "precious.tmp").mkdir(parents=True)  # names rotation would delete (an unfinished write)...
    (victim / "step-00000001").mkdir()  # ...and an old checkpoint
    if (run / folder).exists():
        shutil.copytree(run / folder, victim, dirs_exist_ok=True)
        shutil.rmtree(run / folder)
    (run / folder).symlink_to(victim)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    anew = ["--store", saved["store"], "--student", saved["student"], "--steps", "8", "--overwrite",
            "--report-to", "tensorboard", "--device", "cpu"]
    for argv in (["--resume", "--steps", "8"], anew):
        result = run_cli("ddk-student", ["train", "--out", str(run), *argv])
        assert result.code == 2, result.output
        assert f"--out {run}: {folder} is a symbolic link (to {victim})" in result.output, result.output
    assert (victim / "precious.tmp").is_dir() and (victim / "step-00000001").is_dir()
