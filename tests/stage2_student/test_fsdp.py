"""--fsdp under a real torchrun, two gloo ranks on CPU: the same run as one process, and a SIGKILLed run resumes
exactly from its sharded checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from ddk_testkit.commands import train_args
from ddk_testkit.kills import kill_after_checkpoint, last_checkpoint_step
from ddk_testkit.processes import REPO, child_env, free_port, spawn

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
# 3 held-out rows, batch 1: rank 0 scores two rows, rank 1 one and a filler forward (evaluation in lockstep)
FLAGS = dict(steps=16, interval=8, batch_size=4, save_every=3, log_every=1, heldout_rows=3, eval_batch_size=1)

pytestmark = pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
                                reason="torchrun not installed next to this interpreter")


def torchrun(argv, port, **kw) -> subprocess.Popen:
    """Two ranks of `ddk-student` under torchrun, in a session of their own (so a kill reaches every rank)."""
    return subprocess.Popen([TORCHRUN, "--nnodes", "1", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
                             "--rdzv-endpoint", f"localhost:{port}", "-m", "stage2_student.cli", *argv],
                            cwd=REPO, env=child_env(), text=True, start_new_session=True, **kw)


def interval_lines(out):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if r["event"] in ("interval", "final")]


def finished(proc, what) -> str:
    _, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, f"{what}: {(err or '')[-3000:]}"
    return err


def test_fsdp_two_ranks_match_one_process_and_resume_exactly(tmp_path, store_url, student_dir):
    single, ref, killed = tmp_path / "single", tmp_path / "fsdp", tmp_path / "killed"
    # One process with grad_accum=2 reads the same two half-batches per step as two ranks with grad_accum=1.
    p1 = spawn("stage2_student.cli", train_args(store_url, student_dir, single, grad_accum=2, **FLAGS),
               stderr=subprocess.PIPE)
    p2 = torchrun(train_args(store_url, student_dir, ref, fsdp=True, **FLAGS), free_port(), stderr=subprocess.PIPE)
    victim = torchrun(train_args(store_url, student_dir, killed, fsdp=True, **FLAGS), free_port(),
                      stderr=subprocess.DEVNULL)
    ckpts = killed / "checkpoints"
    # Kill every rank once a mid-interval checkpoint (step 3 or later, not a multiple of 8) is committed.
    assert kill_after_checkpoint(victim, ckpts, 3, 300, group=True), "the FSDP run finished before it could be killed"
    assert not (killed / "model.safetensors").exists()  # it really died mid-run
    at = last_checkpoint_step(ckpts)
    assert at < FLAGS["steps"]
    assert {"model-rank0.safetensors", "model-rank1.safetensors", "optimizer-rank0.safetensors", "optimizer-rank1.safetensors",
            "rng-rank0.safetensors", "rng-rank1.safetensors", "state.json"} == \
        {p.name for p in (ckpts / f"step-{at:08d}").iterdir()}
    # Both take the fused loss: under FSDP the root's lm_head weight is whole (unsharded) after the forward
    assert "unfused loss" not in finished(p2, "fsdp reference")
    assert "unfused loss" not in finished(p1, "one process")
    resumed = torchrun(train_args(store_url, student_dir, killed, fsdp=True, resume=True, **FLAGS), free_port(),
                       stderr=subprocess.PIPE)
    finished(resumed, "fsdp resume")

    a, b, c = interval_lines(single), interval_lines(ref), interval_lines(killed)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [r["step"] for r in c] == [0, 8, 16]
    for ra, rb, rc in zip(a, b, c):
        assert rb["weights"] == pytest.approx(ra["weights"], rel=1e-6, abs=1e-9)
        assert rb["ppl_student"] == pytest.approx(ra["ppl_student"], rel=1e-5)
        assert rc["weights"] == rb["weights"] and rc["ppl_student"] == rb["ppl_student"]  # resumed exactly
    pa, pb, pc = (load_file(str(out / "model.safetensors")) for out in (single, ref, killed))
    assert pa.keys() == pb.keys() == pc.keys()
    for k in pa:
        torch.testing.assert_close(pb[k], pa[k], atol=1e-5, rtol=1e-4)
        assert torch.equal(pc[k], pb[k]), f"{k} differs after the FSDP resume"
    steps = [r["step"] for r in map(json.loads, (killed / "metrics.jsonl").read_text().splitlines())
             if r["event"] == "step"]
    assert steps == list(range(1, FLAGS["steps"] + 1))
    # `eval --model RUN/checkpoints/step-N` of an FSDP run: the ranks' shards, concatenated, are the final weights
    from transformers import AutoModelForCausalLM

    from stage2_student.checkpoint import latest_checkpoint, load_weights

    fresh = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    load_weights(fresh, latest_checkpoint(ref))
    for k, v in fresh.state_dict().items():
        if k in pb:
            assert torch.equal(v, pb[k]), k
