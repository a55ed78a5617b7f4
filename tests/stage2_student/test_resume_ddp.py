"""Kill a real training process with SIGKILL, --resume it, and get the uninterrupted run's result; DDP vs 1 process."""

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
from ddk_testkit.processes import REPO, child_env, run_cli, run_process, spawn


def interval_lines(out):
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()
            if json.loads(ln)["event"] in ("interval", "final")]


def step_lines(out):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["event"] == "step"]


def params(out):
    return load_file(str(out / "model.safetensors"))


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, store_url, student_dir):
    flags = dict(steps=40, interval=8, save_every=3, log_every=1)
    ref_out, run_out = tmp_path / "ref", tmp_path / "killed"
    # The uninterrupted reference runs concurrently with the run we kill (two cores).
    ref = spawn("stage2_student.cli", train_args(store_url, student_dir, ref_out, **flags))
    victim = spawn("stage2_student.cli", train_args(store_url, student_dir, run_out, **flags),
                   stderr=subprocess.DEVNULL)
    ckpts = run_out / "checkpoints"
    # Kill as soon as a mid-interval checkpoint (step 3: not a multiple of 8) exists.
    assert kill_after_checkpoint(victim, ckpts, 3, 120), "the run finished before it could be killed"
    assert not (run_out / "model.safetensors").exists()  # it really died mid-run
    killed_at = last_checkpoint_step(ckpts)
    assert killed_at < 40

    run_process("stage2_student.cli", train_args(store_url, student_dir, run_out, **flags, resume=True), check=True)
    assert ref.wait(timeout=180) == 0, ref.stderr.read()[-2000:]

    a, b = interval_lines(ref_out), interval_lines(run_out)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 8, 16, 24, 32, 40]
    for ra, rb in zip(a, b):
        assert ra["weights"] == rb["weights"] and ra["ppl_student"] == rb["ppl_student"]
    pa, pb = params(ref_out), params(run_out)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), f"{k} differs after resume"
    steps = [r["step"] for r in step_lines(run_out)]
    assert steps == list(range(1, 41))  # no duplicated or missing step lines after the resume


def test_ddp_two_gloo_ranks_agree_with_one_process(tmp_path, store_url, student_dir):
    if shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None:
        pytest.skip("torchrun not installed next to this interpreter")
    flags = dict(steps=8, interval=4, batch_size=4, log_every=1)
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    # One process with grad_accum=2 reads the same two half-batches per step as two ranks with grad_accum=1.
    p1 = spawn("stage2_student.cli", train_args(store_url, student_dir, single, grad_accum=2, **flags))
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    p2 = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "stage2_student.cli",
                         *train_args(store_url, student_dir, ddp, **flags)],
                        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=240)
    assert p2.returncode == 0, p2.stderr[-3000:]
    assert p1.wait(timeout=240) == 0, p1.stderr.read()[-2000:]
    a, b = interval_lines(single), interval_lines(ddp)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 4, 8]
    for ra, rb in zip(a, b):
        assert rb["weights"] == pytest.approx(ra["weights"], rel=1e-6, abs=1e-9)
        assert rb["ppl_student"] == pytest.approx(ra["ppl_student"], rel=1e-5)
    # Each step's logged loss is the mean over all ranks' rows, as one process's over the same rows
    sa, sb = step_lines(single), step_lines(ddp)
    assert [r["step"] for r in sa] == [r["step"] for r in sb] == list(range(1, 9))
    for ra, rb in zip(sa, sb):
        for key in ("loss", "ce", "kl"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5), (ra["step"], key)
    pa, pb = params(single), params(ddp)
    for k in pa:
        torch.testing.assert_close(pb[k], pa[k], atol=1e-5, rtol=1e-4)
    ranks = {p.name for p in (ddp / "checkpoints" / "step-00000008").iterdir()}
    assert {"rng-rank0.safetensors", "rng-rank1.safetensors"} <= ranks
    # Its checkpoints need 2 processes: one is refused before any model loads, in one line naming the launch
    code, err = run_cli("ddk-student", ["train", "--out", str(ddp), "--resume", "--steps", "12"])
    assert code == 2 and "Traceback" not in err, err
    assert (f"its checkpoint at step 8 was written by 2 process(es), this run has 1; the number must be the same: "
            f"`torchrun --nproc_per_node 2 -m stage2_student.cli train --out {ddp} --resume`") in err, err

    # And the other way: 3 ranks do not divide its batch (4 rows, --grad-accum 2), but what they are refused for
    # is the launch (each rank prints the line; torchrun may stop the others once the first has exited)
    p = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "3", "-m", "stage2_student.cli", "train",
                        "--out", str(single), "--resume"], cwd=REPO, env=child_env(), capture_output=True, text=True,
                       timeout=240)
    lines = {ln for ln in p.stderr.splitlines() if ln.startswith("error:")}
    assert p.returncode != 0 and lines == {
        f"error: --resume {single}: its checkpoint at step 8 was written by 1 process(es), this run has 3; the "
        f"number must be the same: `ddk-student train --out {single} --resume`"}, p.stderr[-3000:]
