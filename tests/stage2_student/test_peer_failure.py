"""A rank of a two-process gloo run dies (SIGKILL): the surviving rank stops with one line that says a peer stopped
and how to continue the run, not a gloo traceback, and releases the run directory.

The two ranks are started by hand with the environment torchrun gives them (RANK, WORLD_SIZE, MASTER_ADDR, ...),
without torchrun's agent: the agent would SIGTERM the survivor as soon as its peer died, and the survivor would then
report an interruption instead of the dead peer this test is about."""

from __future__ import annotations

from ddk_testkit.commands import train_args
from ddk_testkit.kills import kill_after_checkpoint, last_checkpoint_step
from ddk_testkit.processes import child_env, free_port, run_process, spawn

FLAGS = dict(steps=40, interval=8, batch_size=4, save_every=3, log_every=1)


def rank_env(rank: int, port: int) -> dict[str, str]:
    return child_env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                     MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def test_a_killed_peer_rank_ends_the_survivor_with_resume_advice(tmp_path, store_url, student_dir):
    out = tmp_path / "run"
    port = free_port()
    argv = train_args(store_url, student_dir, out, **FLAGS)
    rank0 = spawn("stage2_student.cli", argv, env=rank_env(0, port))
    rank1 = spawn("stage2_student.cli", argv, env=rank_env(1, port))
    try:
        assert kill_after_checkpoint(rank1, out / "checkpoints", 3, 240), "the run finished before it could be killed"
        err = rank0.communicate(timeout=180)[1]
    finally:
        for p in (rank0, rank1):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert rank0.returncode == 2, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err[-3000:]
    line = lines[0]
    assert "another process of this 2-process run stopped" in line, line
    assert "Traceback" not in err, err[-3000:]
    # The advice is the same two-process launch, from the last committed checkpoint, which exists.
    step = last_checkpoint_step(out / "checkpoints")
    assert f"torchrun --nproc_per_node 2 -m stage2_student.cli train --out {out} --resume" in line, line
    assert f"from its last checkpoint, step {step} " in line, line
    assert not (out / "model.safetensors").exists()

    # The survivor released the run directory: a one-process resume gets past the run's lock to the check that
    # refuses it for its number of processes (it would say the run is being trained if the lock were still held).
    again = run_process("stage2_student.cli", train_args(store_url, student_dir, out, **FLAGS, resume=True))
    assert again.returncode == 2, again.stderr[-2000:]
    assert "training this run right now" not in again.stderr, again.stderr[-2000:]
    assert "was written by 2 process(es), this run has 1" in again.stderr, again.stderr[-2000:]
