"""Checkpoints and run records under faults a review found: a checkpoint rewritten at its own step and killed
half-way, damaged checkpoint files, a torn last metrics line, a kill during --overwrite's deletion, and a run that
ends early while a checkpoint is still being written. Real checkpoints of a real (small) model and optimizer; the
faults are a raised exception at a chosen moment, a truncated file, a half-written line."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from ddk_store.errors import StudentError
from stage2_student import checkpoint, rundir
from stage2_student.checkpoint import (CheckpointWriter, checkpoint_step, finish_writes, latest_checkpoint,
                                       load_checkpoint, save_checkpoint)


class Killed(BaseException):
    """Stands for SIGKILL at a chosen moment: nothing after it runs."""


def model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return model, opt


def test_a_checkpoint_rewritten_at_its_own_step_survives_a_kill_between_the_two_renames(tmp_path, monkeypatch):
    """`--resume --steps N` rewrites the step it resumes from. The old one was deleted before the new one took its
    name: a kill in between left no checkpoint (keep 1) and the resume started afresh, or a half-deleted one."""
    old_model, old_opt = model_and_optimizer(0)
    save_checkpoint(tmp_path, 6, model=old_model, optimizer=old_opt, state={"tag": "old"}, keep=1)
    new_model, new_opt = model_and_optimizer(1)
    real_replace, calls = checkpoint.os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the old checkpoint is set aside; the new one is about to take its name
            raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    writer = CheckpointWriter(tmp_path, keep=1)
    writer.save(6, model=new_model, optimizer=new_opt, state={"tag": "new"})
    with pytest.raises(Killed):
        writer.wait()
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    found = latest_checkpoint(tmp_path)
    assert found is not None and checkpoint_step(found) == 6 and found.name.endswith(".replaced")
    model, opt = model_and_optimizer(2)
    assert load_checkpoint(found, model=model, optimizer=opt)["tag"] == "old"
    assert torch.equal(model.weight, old_model.weight)
    # the next commit of that step replaces it cleanly and leaves nothing aside
    save_checkpoint(tmp_path, 6, model=new_model, optimizer=new_opt, state={"tag": "new"}, keep=1)
    assert [p.name for p in (tmp_path / rundir.CHECKPOINTS_DIR).iterdir()] == ["step-00000006"]
    assert json.loads((latest_checkpoint(tmp_path) / "state.json").read_text())["tag"] == "new"


@pytest.mark.parametrize("damage", ["truncate model", "truncate optimizer", "delete rng", "delete state"])
def test_a_damaged_checkpoint_is_one_error_that_says_how_to_go_on(tmp_path, damage):
    model, opt = model_and_optimizer(0)
    path = save_checkpoint(tmp_path, 4, model=model, optimizer=opt, state={})
    what, name = damage.split()
    target = path / {"model": "model.safetensors", "optimizer": "optimizer.safetensors",
                     "rng": "rng-rank0.safetensors", "state": "state.json"}[name]
    if what == "truncate":
        target.write_bytes(target.read_bytes()[:40])
    else:
        target.unlink()
    with pytest.raises(StudentError) as info:
        load_checkpoint(path, model=model, optimizer=opt)
    msg = str(info.value)
    assert msg.startswith(f"checkpoint {path} is damaged: ") and f"mv {path} {path}.damaged" in msg
    assert "--overwrite" in msg and "\n" not in msg


def test_a_torn_last_metrics_line_is_dropped_on_resume_and_a_torn_middle_one_is_named(tmp_path):
    """A write cut by a full disk leaves half a line; every later --resume died on it in json.loads."""
    path = tmp_path / rundir.METRICS_FILE
    whole = [{"event": "step", "step": s, "loss": 1.0} for s in (1, 2, 3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in whole) + '{"event": "step", "step": 4, "loss": 1.')
    rundir.truncate_metrics(tmp_path, 2)
    assert [json.loads(ln) for ln in path.read_text().splitlines()] == whole[:2]
    path.write_text(json.dumps(whole[0]) + '\n{"event": "st\n' + json.dumps(whole[1]) + "\n")
    with pytest.raises(StudentError, match=r"line 2 is not JSON .*restore the file, or start afresh with --overwrite"):
        rundir.truncate_metrics(tmp_path, 2)


def test_a_kill_during_overwrites_deletion_leaves_a_run_the_same_overwrite_finishes(tmp_path, monkeypatch, store_url,
                                                                                     student_dir):
    """--overwrite deleted in name order, config.yaml first: a kill after it left a folder the same command then
    refused as "holds no ddk-student run". What marks a run now goes last."""
    from ddk_testkit.processes import run_cli
    from ddk_testkit.commands import train_args
    from stage2_student.config import Stage2Config
    from stage2_student.resume import is_run_dir, replace_run

    out = tmp_path / "run"
    assert run_cli("ddk-student", train_args(store_url, student_dir, out, steps=2, interval=1,
                                             no_progress=True)).code == 0
    real_rmtree, real_unlink, deleted = shutil.rmtree, type(out).unlink, []

    def gate(path) -> None:  # the first deletion happens; the process is killed before the second
        if deleted:
            raise Killed
        deleted.append(str(path))

    monkeypatch.setattr(shutil, "rmtree", lambda path, *a, **k: (gate(path), real_rmtree(path, *a, **k)))
    monkeypatch.setattr(type(out), "unlink", lambda self, *a, **k: (gate(self), real_unlink(self, *a, **k)))
    with pytest.raises(Killed):
        replace_run(Stage2Config(store=store_url, student=str(student_dir), out=str(out), overwrite=True))
    monkeypatch.undo()
    assert len(deleted) == 1 and not deleted[0].endswith((rundir.CONFIG_FILE, rundir.CHECKPOINTS_DIR))
    assert is_run_dir(out)
    again = run_cli("ddk-student", train_args(store_url, student_dir, out, steps=2, interval=1, overwrite=True,
                                              no_progress=True))
    assert again.code == 0, again.output


def test_a_run_that_ends_early_waits_for_the_checkpoint_being_written(tmp_path, monkeypatch):
    """Ctrl-C or a dead peer named the checkpoint before the one still being written, which then committed."""
    model, opt = model_and_optimizer(0)
    real_save, started = checkpoint.save_file, []

    def slow_save(*args, **kw):
        started.append(1)
        import time

        time.sleep(0.5)
        return real_save(*args, **kw)

    writer = CheckpointWriter(tmp_path)
    monkeypatch.setattr(checkpoint, "save_file", slow_save)
    writer.save(8, model=model, optimizer=opt, state={})
    assert latest_checkpoint(tmp_path) is None  # still being written
    finish_writes()
    assert latest_checkpoint(tmp_path) is not None and checkpoint_step(latest_checkpoint(tmp_path)) == 8


def test_a_checkpoint_is_on_the_disk_before_the_rename_that_commits_it(tmp_path, monkeypatch):
    """A power loss after the commit rename must not leave a step-N whose files never reached the disk: every file
    and the directory are fsynced before the rename, and the checkpoints folder (the new name) after it."""
    import os

    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    model, opt = model_and_optimizer(0)
    final = save_checkpoint(tmp_path, 3, model=model, optimizer=opt, state={})
    commit = events.index(("replace", str(final) + ".tmp"))
    synced_before = {path for kind, path in events[:commit] if kind == "fsync"}
    assert {str(final) + ".tmp/" + p.name for p in final.iterdir()} | {str(final) + ".tmp"} <= synced_before
    assert ("fsync", str(final.parent)) in events[commit:]


@pytest.mark.parametrize("sharded", [False, True])
def test_weights_that_do_not_fit_the_model_are_one_error_naming_the_keys(tmp_path, sharded):
    """A checkpoint of another shape (the student was cut again after the run) is refused by name, also in the
    per-rank (--fsdp) layout, which skipped the names it did not find and loaded the rest silently."""
    model, opt = model_and_optimizer(0)
    path = save_checkpoint(tmp_path, 2, model=model, optimizer=opt, state={}, sharded=sharded)
    torch.manual_seed(0)
    wider = torch.nn.Linear(4, 5)
    with pytest.raises(StudentError, match=r"other shape 2 \(bias, weight\)"):
        load_checkpoint(path, model=wider, optimizer=torch.optim.AdamW(wider.parameters()), sharded=sharded)
    no_bias = torch.nn.Linear(4, 3, bias=False)
    before = no_bias.weight.detach().clone()
    with pytest.raises(StudentError, match=r"missing 0, unexpected 1 \(bias\), other shape 0"):
        load_checkpoint(path, model=no_bias, optimizer=torch.optim.AdamW(no_bias.parameters()), sharded=sharded)
    assert torch.equal(no_bias.weight, before)  # nothing was loaded
    same, same_opt = model_and_optimizer(1)
    load_checkpoint(path, model=same, optimizer=same_opt, sharded=sharded)
    assert torch.equal(same.weight, model.weight) and torch.equal(same.bias, model.bias)


@pytest.mark.parametrize("damage", ["foreign state", "state list", "legacy optimizer", "foreign tensor",
                                    "other optimizer", "weights truncated", "rank file missing"])
def test_a_checkpoint_with_foreign_or_damaged_files_is_one_error(tmp_path, damage):
    """Files a run-directory check lets through (config.yaml makes it a run) but that ddk did not write were a
    ValueError, AttributeError or RuntimeError traceback out of load_checkpoint and eval's load_weights."""
    from safetensors.torch import save_file

    from stage2_student.checkpoint_files import load_weights

    model, opt = model_and_optimizer(0)
    path = save_checkpoint(tmp_path, 2, model=model, optimizer=opt, state={})
    if damage == "foreign state":
        (path / "state.json").write_text(json.dumps({"format": "someone-else/3", "step": 2}))
    elif damage == "state list":
        (path / "state.json").write_text("[1, 2]")
    elif damage == "legacy optimizer":
        (path / "optimizer.safetensors").unlink()
        (path / "optimizer.pt").write_bytes(b"PK\x03\x04 not a whole zip")
    elif damage == "foreign tensor":
        save_file({"momentum": torch.zeros(2)}, str(path / "optimizer.safetensors"),
                  metadata={"format": "ddk-optimizer/1", "param_groups": "[]", "values": "{}"})
    elif damage == "other optimizer":  # well-formed, of an optimizer without parameter groups: torch's ValueError
        save_file({"state.0.x": torch.zeros(2)}, str(path / "optimizer.safetensors"),
                  metadata={"format": "ddk-optimizer/1", "param_groups": "[]", "values": "{}"})
    elif damage == "rank file missing":  # an --fsdp checkpoint of ranks 0 and 2: rank 1's shard is gone
        (path / "model.safetensors").rename(path / "model-rank0.safetensors")
        shutil.copy(path / "model-rank0.safetensors", path / "model-rank2.safetensors")
    else:
        data = (path / "model.safetensors").read_bytes()
        (path / "model.safetensors").write_bytes(data[:len(data) // 2])
    fresh, fresh_opt = model_and_optimizer(1)
    with pytest.raises(StudentError, match=f"checkpoint {path} is damaged: .*move it aside"):
        load_checkpoint(path, model=fresh, optimizer=fresh_opt)
    if damage in ("weights truncated", "rank file missing"):
        with pytest.raises(StudentError, match="is damaged"):
            load_weights(fresh, path)


@pytest.mark.parametrize("edit", [{"step": "2"}, {"factor": ["x"]}, {"sampler": {"interval": "x"}},
                                  {"sampler": {"num_rows": [1.5]}}, {"sampler": []}])
def test_a_state_json_edited_to_a_wrong_type_is_one_error(tmp_path, edit):
    """An interval of "x" in a hand-edited state.json ended a resume in a TypeError traceback from the sampler."""
    from stage2_student.sampler import DomainSampler

    model, opt = model_and_optimizer(0)
    sampler = DomainSampler([4, 4], rows_per_interval=2, seed=0)
    state = {"factor": [0.5, 0.5], "weights": [0.5, 0.5], "sampler": sampler.state_dict()}
    path = save_checkpoint(tmp_path, 2, model=model, optimizer=opt, state=state)
    doc = json.loads((path / "state.json").read_text())
    for key, value in edit.items():
        if isinstance(value, dict):
            doc[key].update(value)
        else:
            doc[key] = value
    (path / "state.json").write_text(json.dumps(doc))
    fresh, fresh_opt = model_and_optimizer(1)
    field = next(iter(edit)) + (f".{next(iter(edit[next(iter(edit))]))}" if isinstance(edit[next(iter(edit))], dict)
                                else "")
    with pytest.raises(StudentError, match=rf"is damaged: state.json: field\(s\) {re.escape(field)} missing or"):
        load_checkpoint(path, model=fresh, optimizer=fresh_opt)


@pytest.mark.parametrize("missing", ["factor", "weights", "sampler"])
def test_a_state_json_missing_a_training_field_is_one_error(tmp_path, missing):
    """A hand-edited state.json without "factor" passed the checks and ended a resume in a KeyError traceback."""
    from stage2_student.checkpoint import TRAINING_FIELDS
    from stage2_student.sampler import DomainSampler

    model, opt = model_and_optimizer(0)
    state = {"factor": [0.5, 0.5], "weights": [0.5, 0.5],
             "sampler": DomainSampler([4, 4], rows_per_interval=2, seed=0).state_dict()}
    path = save_checkpoint(tmp_path, 2, model=model, optimizer=opt, state=state)
    fresh, fresh_opt = model_and_optimizer(1)
    assert load_checkpoint(path, model=fresh, optimizer=fresh_opt, required=TRAINING_FIELDS)["factor"] == [0.5, 0.5]
    doc = json.loads((path / "state.json").read_text())
    del doc[missing]
    (path / "state.json").write_text(json.dumps(doc))
    with pytest.raises(StudentError, match=rf"is damaged: state.json: field\(s\) {missing} missing or"):
        load_checkpoint(path, model=fresh, optimizer=fresh_opt, required=TRAINING_FIELDS)
    load_checkpoint(path, model=fresh, optimizer=fresh_opt)  # (a checkpoint of no training run needs none of them)


def test_a_set_aside_checkpoint_whose_successor_was_committed_is_cleaned_up(tmp_path):
    """A kill after the new step-N was committed but before its set-aside step-N.replaced was deleted left both:
    an extra checkpoint beyond --keep-checkpoints, taken for step N again once retention removed step-N."""
    model, opt = model_and_optimizer(0)
    first = save_checkpoint(tmp_path, 4, model=model, optimizer=opt, state={}, keep=1)
    shutil.copytree(first, first.with_name(first.name + ".replaced"))  # what the kill left beside it
    save_checkpoint(tmp_path, 6, model=model, optimizer=opt, state={}, keep=1)
    assert [p.name for p in (tmp_path / rundir.CHECKPOINTS_DIR).iterdir()] == ["step-00000006"]


def test_tied_tensors_that_are_two_parameters_over_one_storage_load_back(tmp_path):
    """model_snapshot stores a tensor that shares its storage with another once; loading forgave the missing name
    only for the same Parameter object, so a model tying by storage refused its own checkpoint."""
    def tied(seed: int):
        torch.manual_seed(seed)
        model = torch.nn.ModuleDict({"emb": torch.nn.Embedding(5, 3), "head": torch.nn.Linear(3, 5, bias=False)})
        model["head"].weight = torch.nn.Parameter(model["emb"].weight.data)  # its own Parameter, the same storage
        return model, torch.optim.AdamW(model.parameters())

    model, opt = tied(0)
    path = save_checkpoint(tmp_path, 1, model=model, optimizer=opt, state={})
    fresh, fresh_opt = tied(1)
    load_checkpoint(path, model=fresh, optimizer=fresh_opt)
    assert torch.equal(fresh["head"].weight, model["emb"].weight) and torch.equal(fresh["emb"].weight,
                                                                                  model["emb"].weight)
