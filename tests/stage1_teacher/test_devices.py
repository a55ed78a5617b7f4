"""Many devices on one host: `--devices 2` (two real CPU dump processes, one finalize) and two torchrun-style ranks
both equal the single-process store; a device process that dies ends the command with one line naming it."""

from __future__ import annotations

import dataclasses
import signal
import time

import psutil
import pytest

from ddk_store.layout import shard_owns
from ddk_testkit.commands import dump_argv
from ddk_testkit.processes import child_env, reaped, run_cli, spawn
from ddk_testkit.snapshots import assert_same_store
from stage1_teacher.devices import compose_shard, gpu_groups, torchrun_rank, visible_gpus


@pytest.mark.parametrize("hosts, devices", [(1, 2), (2, 2), (3, 4)])
def test_device_shards_split_their_host_shard_exactly(hosts, devices):
    ordinals = range(100)
    for host in range(hosts):
        mine = {o for o in ordinals if shard_owns(o, (host, hosts))}
        parts = [{o for o in ordinals if shard_owns(o, compose_shard((host, hosts), d, devices))}
                 for d in range(devices)]
        assert set().union(*parts) == mine and sum(map(len, parts)) == len(mine)


def test_gpu_groups_and_environment():
    assert gpu_groups(2, 2, ["4", "5", "6", "7"]) == ["4,5", "6,7"]
    with pytest.raises(Exception, match="needs 4 GPU"):
        gpu_groups(4, 1, ["0", "1"])
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert torchrun_rank({}) is None and torchrun_rank({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert torchrun_rank({"WORLD_SIZE": "4", "RANK": "5", "LOCAL_RANK": "1"}) == (5, 4, 1)


def test_devices_2_equals_the_single_process_store(reference_store, tiny_teacher, corpora_yaml, tmp_path):
    store = tmp_path / "store"
    res = run_cli("ddk-teacher", dump_argv(tiny_teacher, corpora_yaml, store, "--devices", "2"))
    assert res.code == 0, res.output[-3000:]
    assert "[device 0]" in res.output and "[device 1]" in res.output and "finalized" in res.output
    assert "ddk-store finalize" not in res.output  # the parent finalizes: no device tells the user to
    assert "all units written; the --devices 2 process finalizes the store" in res.output
    # Each device prints which backend it runs; the same line is forwarded once, not once per device.
    assert sum("backend: hf (requested)" in ln for ln in res.output.splitlines()) == 1, res.output[-3000:]
    assert_same_store(store, reference_store)


def test_torchrun_ranks_equal_the_single_process_store(reference_store, tiny_teacher, corpora_yaml, tmp_path):
    store = tmp_path / "store"
    argv = dump_argv(tiny_teacher, corpora_yaml, store)
    procs = [spawn("stage1_teacher.cli", argv, env=child_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2"))
             for r in range(2)]
    errs = []
    for p in procs:
        with reaped(p):
            errs.append(p.communicate(timeout=600)[1])
            assert p.returncode == 0, errs[-1][-3000:]
    assert "finalized" in errs[0] and "finalized" not in errs[1]
    assert not any("ddk-store finalize" in e for e in errs)  # rank 0 finalizes
    assert_same_store(store, reference_store)


def test_a_dead_device_ends_the_command_with_one_line_naming_it(tiny_teacher, corpora_yaml, tmp_path):
    parent = spawn("stage1_teacher.cli", dump_argv(tiny_teacher, corpora_yaml, tmp_path / "store", "--devices", "2"))
    with reaped(parent):
        deadline = time.monotonic() + 120
        victim = None
        while victim is None and time.monotonic() < deadline and parent.poll() is None:
            for c in psutil.Process(parent.pid).children():
                try:
                    if "1/2" in c.cmdline():
                        victim = c
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.05)
        assert victim is not None, "the device-1 child never started"
        others = [c for c in psutil.Process(parent.pid).children() if c.pid != victim.pid]
        victim.send_signal(signal.SIGKILL)
        _, err = parent.communicate(timeout=120)
    assert parent.returncode == 2, err[-3000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    assert "device 1" in errors[0] and "shard 1/2" in errors[0] and "SIGKILL" in errors[0], errors[0]
    assert "rerun the same command" in errors[0]
    for c in others:  # the other device was stopped, not left running
        assert not c.is_running() or c.status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("how", ["torchrun", "--devices 2"])
def test_overwrite_with_several_processes_is_refused_up_front_naming_how_they_were_started(
        tiny_teacher, corpora_yaml, tmp_path, monkeypatch, how):
    # Each rank took a --shard of its own and was refused for a --shard the user never typed; refused now before any
    # process opens the store, in the words of how the processes were started.
    store = tmp_path / "store"
    extra = ["--overwrite"]
    if how == "torchrun":
        for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}.items():
            monkeypatch.setenv(k, v)
    else:
        extra += ["--devices", "2"]
    res = run_cli("ddk-teacher", dump_argv(tiny_teacher, corpora_yaml, store, *extra))
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.code == 2 and len(errors) == 1, res.output
    named = "a torchrun launch of 2 ranks" if how == "torchrun" else "--devices N > 1"
    assert f"--overwrite cannot be combined with {named}" in errors[0], errors[0]
    assert "--shard" not in errors[0] and "delete the store once" in errors[0], errors[0]
    assert not store.exists()


def test_a_torchrun_rank_without_a_gpu_of_its_own_is_refused_not_moved_to_the_cpu(monkeypatch):
    """A launcher that gives each rank one GPU already (CUDA_VISIBLE_DEVICES=3 in every rank): rank 1's slice of it
    was empty, which hid every GPU, and the rank scored on the CPU in float32 against the others' bf16 store."""
    from ddk_store.errors import ConfigError
    from stage1_teacher.config import Stage1Config
    from stage1_teacher.devices import VISIBLE_ENV, run_rank

    monkeypatch.setenv(VISIBLE_ENV, "3")
    cfg = Stage1Config(teacher="t", corpora="c.yaml", store="s", device="cuda", shard="0/2")  # (no finalizing here)
    started = []
    with pytest.raises(ConfigError, match=r"torchrun rank 1 \(LOCAL_RANK 1\) needs GPUs 1-1 of CUDA_VISIBLE_DEVICES=3 "
                                          r"\(--tensor-parallel-size 1\); launch with --nproc_per_node 1 or fewer"):
        run_rank(cfg, 1, 2, 1, started.append)
    assert not started
    tp2 = dataclasses.replace(cfg, tensor_parallel_size=2)  # no rank can have 2 of 1 GPU: not "--nproc_per_node 0"
    with pytest.raises(ConfigError, match=r"needs GPUs 0-1 of CUDA_VISIBLE_DEVICES=3 \(--tensor-parallel-size 2\); "
                                          r"make 2 GPUs visible to each rank, or give a smaller --tensor-parallel"):
        run_rank(tp2, 0, 2, 0, started.append)
    run_rank(cfg, 0, 2, 0, started.append)  # rank 0 takes the one GPU listed
    assert started[0].shard == "0/4"
    import os

    assert os.environ[VISIBLE_ENV] == "3"
