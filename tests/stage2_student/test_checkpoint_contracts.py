"""Checkpoint contracts mutation testing found unguarded: which directory is the latest, what a commit cleans up,
the checks a load makes before it touches the model (format, world size, --fsdp, the optimizer file's origin, the
weights' names), and the RNG state a resume restores. Real checkpoints of a real (small) model and optimizer; the
faults are an edited or replaced file."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

from ddk_store.errors import StudentError
from stage2_student import checkpoint
from stage2_student.checkpoint import (checkpoint_step, list_checkpoints, latest_checkpoint, load_checkpoint,
                                       read_state, save_checkpoint)
from stage2_student.checkpoint_files import load_weights

from .test_checkpoint_faults import model_and_optimizer


def test_a_plain_checkpoint_wins_over_one_set_aside_at_the_same_step(tmp_path):
    model, opt = model_and_optimizer(0)
    plain = save_checkpoint(tmp_path, 6, model=model, optimizer=opt, state={})
    aside = plain.with_name(plain.name + ".replaced")
    shutil.copytree(plain, aside)
    assert list_checkpoints(tmp_path) == [plain]


def test_a_file_named_like_a_checkpoint_is_no_checkpoint(tmp_path):
    model, opt = model_and_optimizer(0)
    ckpt = save_checkpoint(tmp_path, 6, model=model, optimizer=opt, state={})
    (ckpt.parent / "step-00000009").write_text("not a directory")
    assert latest_checkpoint(tmp_path) == ckpt


def test_a_commit_removes_unfinished_writes_and_keeps_a_set_aside_checkpoint_without_successor(tmp_path):
    model, opt = model_and_optimizer(0)
    first = save_checkpoint(tmp_path, 4, model=model, optimizer=opt, state={}, keep=5)
    (first.parent / "step-00000009.tmp").mkdir()
    aside = first.parent / "step-00000002.replaced"  # its step has no plain directory: it is the checkpoint of step 2
    shutil.copytree(first, aside)
    save_checkpoint(tmp_path, 6, model=model, optimizer=opt, state={}, keep=5)
    assert sorted(p.name for p in first.parent.iterdir()) == ["step-00000002.replaced", "step-00000004",
                                                              "step-00000006"]


def test_a_committed_checkpoint_takes_the_umasks_permissions(tmp_path):
    # safetensors writes owner-only files; the team sharing a run reads them under the umask's permissions
    model, opt = model_and_optimizer(0)
    umask = os.umask(0o027)
    try:
        ckpt = save_checkpoint(tmp_path, 6, model=model, optimizer=opt, state={})
    finally:
        os.umask(umask)
    assert stat.S_IMODE((ckpt / "model.safetensors").stat().st_mode) == 0o640
    assert stat.S_IMODE(ckpt.stat().st_mode) == 0o750


def test_a_state_json_of_another_format_is_no_checkpoint(tmp_path):
    model, opt = model_and_optimizer(0)
    ckpt = save_checkpoint(tmp_path, 6, model=model, optimizer=opt, state={"config": {"student": "s"}})
    doc = json.loads((ckpt / "state.json").read_text())
    (ckpt / "state.json").write_text(json.dumps({**doc, "format": "other/1"}))
    assert read_state(ckpt) is None
    with pytest.raises(StudentError, match="damaged"):
        load_checkpoint(ckpt, model=model, optimizer=opt)


@pytest.mark.parametrize("field,value", [("step", 0), ("world_size", 1)])
def test_step_zero_is_a_valid_state_and_a_bool_is_no_number(tmp_path, field, value):
    model, opt = model_and_optimizer(0)
    ckpt = save_checkpoint(tmp_path, 0, model=model, optimizer=opt, state={})
    assert load_checkpoint(ckpt, model=model, optimizer=opt)["step"] == 0
    doc = json.loads((ckpt / "state.json").read_text())
    (ckpt / "state.json").write_text(json.dumps({**doc, field: True}))
    with pytest.raises(StudentError, match=field):
        load_checkpoint(ckpt, model=model, optimizer=opt)


def test_sampler_weights_of_the_wrong_type_are_refused(tmp_path):
    model, opt = model_and_optimizer(0)
    sampler = {"seed": 1, "interval": 0, "rows_per_interval": 4, "num_rows": [3], "consumed_at_start": [0],
               "weights": "uniform"}
    ckpt = save_checkpoint(tmp_path, 6, model=model, optimizer=opt, state={"sampler": sampler})
    with pytest.raises(StudentError, match="sampler.weights"):
        load_checkpoint(ckpt, model=model, optimizer=opt)


@pytest.mark.parametrize("kw,words", [({"world_size": 2}, "rank"), ({"sharded": True}, "--fsdp")])
def test_a_checkpoint_of_another_layout_is_refused_before_it_is_loaded(tmp_path, kw, words):
    model, opt = model_and_optimizer(0)
    ckpt = save_checkpoint(tmp_path, 6, model=model, optimizer=opt, state={})
    other, other_opt = model_and_optimizer(1)
    with pytest.raises(ValueError, match=words):
        load_checkpoint(ckpt, model=other, optimizer=other_opt, **kw)
    assert not torch.equal(other.weight, model.weight)


def test_a_resume_restores_the_random_state_of_the_checkpoint(tmp_path):
    model, opt = model_and_optimizer(0)
    torch.manual_seed(123)
    ckpt = save_checkpoint(tmp_path, 6, model=model, optimizer=opt, state={})
    expected = torch.rand(5)
    torch.manual_seed(999)
    load_checkpoint(ckpt, model=model, optimizer=opt)
    assert torch.equal(torch.rand(5), expected)


def test_an_rng_file_without_the_cpu_state_is_one_error(tmp_path):
    model, opt = model_and_optimizer(0)
    ckpt = save_checkpoint(tmp_path, 6, model=model, optimizer=opt, state={})
    save_file({"other": torch.zeros(1)}, str(ckpt / "rng-rank0.safetensors"))
    with pytest.raises(StudentError, match="damaged"):
        load_checkpoint(ckpt, model=model, optimizer=opt)


@pytest.mark.parametrize("damage", ["format", "foreign tensor"])
def test_an_optimizer_file_ddk_did_not_write_is_one_error(tmp_path, damage):
    model, opt = model_and_optimizer(0)
    ckpt = save_checkpoint(tmp_path, 6, model=model, optimizer=opt, state={})
    path = ckpt / "optimizer.safetensors"
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    if damage == "format":
        meta["format"] = "other/1"
    else:
        tensors["extra"] = torch.zeros(1)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(StudentError, match="optimizer.safetensors"):
        load_checkpoint(ckpt, model=model, optimizer=opt)


def test_weights_missing_a_parameter_are_refused(tmp_path):
    model, opt = model_and_optimizer(0)
    ckpt = save_checkpoint(tmp_path, 6, model=model, optimizer=opt, state={})
    weights = load_file(str(ckpt / "model.safetensors"))
    del weights["bias"]
    save_file(weights, str(ckpt / "model.safetensors"))
    with pytest.raises(StudentError, match=r"missing 1 \(bias\)"):
        load_weights(torch.nn.Linear(4, 3), ckpt)


def test_an_unsharded_entry_of_a_rank_file_is_taken_from_rank_0_not_concatenated(tmp_path):
    torch.manual_seed(0)
    w, b = torch.randn(4, 4), torch.randn(4)
    save_file({"weight": w[:2].contiguous(), "bias": b}, str(tmp_path / "model-rank0.safetensors"),
              metadata={"sharded": json.dumps(["weight"])})
    save_file({"weight": w[2:].contiguous(), "bias": b}, str(tmp_path / "model-rank1.safetensors"),
              metadata={"sharded": json.dumps(["weight"])})
    model = torch.nn.Linear(4, 4)
    load_weights(model, tmp_path)
    assert torch.equal(model.weight, w) and torch.equal(model.bias, b)


def test_eleven_rank_files_are_joined_in_rank_order(tmp_path):
    w = torch.arange(22 * 2, dtype=torch.float32).reshape(22, 2)
    for r in range(11):
        save_file({"weight": w[2 * r:2 * r + 2].contiguous()}, str(tmp_path / f"model-rank{r}.safetensors"),
                  metadata={"sharded": json.dumps(["weight"])})
    model = torch.nn.Linear(2, 22, bias=False)
    load_weights(model, tmp_path)
    assert torch.equal(model.weight, w)


def test_rank_files_that_cannot_be_joined_are_one_error(tmp_path):
    save_file({"weight": torch.zeros(2, 4)}, str(tmp_path / "model-rank0.safetensors"),
              metadata={"sharded": json.dumps(["weight"])})
    save_file({"weight": torch.zeros(2, 3)}, str(tmp_path / "model-rank1.safetensors"))
    with pytest.raises(StudentError, match="damaged"):
        load_weights(torch.nn.Linear(4, 4), tmp_path)


def test_an_optimizer_pt_beside_the_safetensors_file_is_ignored(tmp_path):
    model, opt = model_and_optimizer(0)
    ckpt = save_checkpoint(tmp_path, 6, model=model, optimizer=opt, state={})
    (ckpt / "optimizer.pt").write_bytes(b"not a zip")
    load_checkpoint(ckpt, model=model, optimizer=opt)


def test_an_earlier_optimizer_pt_holding_a_pickled_object_is_refused(tmp_path):
    import argparse
    model, opt = model_and_optimizer(0)
    ckpt = save_checkpoint(tmp_path, 6, model=model, optimizer=opt, state={})
    (ckpt / "optimizer.safetensors").unlink()
    torch.save(argparse.Namespace(state={}, param_groups=[]), ckpt / "optimizer.pt")
    with pytest.raises(StudentError, match="optimizer.pt"):
        load_checkpoint(ckpt, model=model, optimizer=opt)


def test_two_empty_tensors_are_both_saved(tmp_path):
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Parameter(torch.zeros(0)), torch.nn.Parameter(torch.zeros(0))
            self.w = torch.nn.Parameter(torch.ones(2))
    model = Two()
    opt = torch.optim.AdamW(model.parameters())
    ckpt = save_checkpoint(tmp_path, 6, model=model, optimizer=opt, state={})
    assert sorted(load_file(str(ckpt / "model.safetensors"))) == ["a", "b", "w"]


def test_the_checkpoints_own_fields_win_over_the_callers_state(tmp_path):
    # format, step, world size and layout describe the files written, whatever a caller's state says
    model, opt = model_and_optimizer(0)
    ckpt = save_checkpoint(tmp_path, 6, model=model, optimizer=opt,
                           state={"step": 99, "format": "other", "world_size": 4, "sharded": True, "note": 1})
    doc = json.loads((ckpt / "state.json").read_text())
    assert (doc["step"], doc["world_size"], doc["sharded"], doc["note"]) == (6, 1, False, 1)
    assert read_state(ckpt) is not None  # its format is ddk's
    load_checkpoint(ckpt, model=model, optimizer=opt)


def test_the_next_save_waits_for_the_write_before_and_raises_its_error(tmp_path, monkeypatch):
    """A replicated run's checkpoint is written in the background; the next save first waits for it, so two writes
    never run at once and a failed one stops training at the next save instead of going unseen."""
    import time

    model, opt = model_and_optimizer(0)
    real_save, calls = checkpoint.save_optimizer, []

    def slow_then_failing_save(*args, **kw):  # the first write: slow, then a full disk; later ones as they are
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.5)
            raise OSError(28, "No space left on device")
        return real_save(*args, **kw)

    monkeypatch.setattr(checkpoint, "save_optimizer", slow_then_failing_save)
    writer = checkpoint.CheckpointWriter(tmp_path)
    writer.save(4, model=model, optimizer=opt, state={})
    with pytest.raises(OSError, match="No space left"):
        writer.save(8, model=model, optimizer=opt, state={})
    assert len(calls) == 1 and latest_checkpoint(tmp_path) is None  # step 8 was not started beside the failing write
    writer.save(8, model=model, optimizer=opt, state={})
    writer.wait()
    assert checkpoint_step(latest_checkpoint(tmp_path)) == 8
