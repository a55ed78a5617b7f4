"""The device of each rank (--device auto|cpu|cuda under torchrun) as a pure function: no GPU needed to test it."""

from __future__ import annotations

import pytest

from ddk_store.errors import ConfigError
from stage2_student.parallel import choose_device


def pick(device, cuda, count, local_rank=0, local_world=1):
    return choose_device(device, cuda_available=cuda, device_count=count, local_rank=local_rank,
                         local_world=local_world)


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_no_cuda_means_cpu_for_every_rank(device):
    assert [pick(device, False, 0, r, 4) for r in range(4)] == ["cpu"] * 4


def test_each_rank_gets_its_local_gpu():
    assert [pick("auto", True, 8, r, 8) for r in range(8)] == [f"cuda:{r}" for r in range(8)]
    assert [pick("cuda", True, 2, r, 2) for r in range(2)] == ["cuda:0", "cuda:1"]
    assert pick("auto", True, 4, 1, 2) == "cuda:1"  # fewer ranks than GPUs is fine


def test_cpu_flag_wins_over_gpus():
    assert [pick("cpu", True, 1, r, 2) for r in range(2)] == ["cpu", "cpu"]


@pytest.mark.parametrize("device", ["auto", "cuda"])
@pytest.mark.parametrize("local_rank", [0, 1])
def test_more_ranks_than_gpus_stops_every_rank_with_one_line(device, local_rank):
    with pytest.raises(ConfigError) as e:
        pick(device, True, 1, local_rank, 2)
    msg = str(e.value)
    assert "\n" not in msg
    assert "2 ranks" in msg and "1 visible CUDA device" in msg and "--device cpu" in msg


def test_cuda_without_cuda_is_refused():
    with pytest.raises(ConfigError, match="no CUDA device"):
        pick("cuda", False, 0)


def test_local_rank_beyond_gpus_without_local_world_is_refused():
    with pytest.raises(ConfigError, match="3 ranks on this host but it has 2"):
        pick("auto", True, 2, 2, 1)


TORCHRUN = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29500"}


def test_torchrun_environment_is_read_and_half_set_ones_are_refused():
    from stage2_student.parallel import DistEnv, dist_env

    assert dist_env({}) == DistEnv(0, 1, 0, 1)
    assert dist_env(TORCHRUN) == DistEnv(1, 2, 1, 2)
    assert dist_env({**TORCHRUN, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                     "LOCAL_WORLD_SIZE": "1"}) == DistEnv(0, 1, 0, 1)  # torchrun --nproc_per_node 1
    cases = [
        ({"WORLD_SIZE": "2"}, "half set: WORLD_SIZE set but RANK, MASTER_ADDR, MASTER_PORT not"),
        ({"RANK": "1"}, "RANK=1 LOCAL_RANK=0 do not fit WORLD_SIZE=1"),  # a leftover RANK: rank 1 of 1
        ({**TORCHRUN, "RANK": "2"}, "RANK=2 LOCAL_RANK=1 do not fit WORLD_SIZE=2"),
        ({**TORCHRUN, "LOCAL_RANK": "2"}, "LOCAL_RANK=2 do not fit"),
        ({**TORCHRUN, "RANK": "one"}, "not an integer"),
    ]
    for environ, needle in cases:
        with pytest.raises(ConfigError) as e:
            dist_env(environ)
        assert needle in str(e.value) and "launch with torchrun" in str(e.value), (environ, str(e.value))


def test_the_resume_command_names_the_launch_a_run_needs():
    from stage2_student.resume import resume_command

    assert resume_command("runs/a") == "`ddk-student train --out runs/a --resume`"
    assert resume_command("runs/a", 4, 4) == ("`torchrun --nproc_per_node 4 -m stage2_student.cli train --out runs/a "
                                              "--resume`")
    assert resume_command("runs/a", 16, 8) == ("the same torchrun launch on each of its 2 hosts (--nproc_per_node 8, "
                                               "16 processes in all) with `-m stage2_student.cli train --out runs/a "
                                               "--resume`")


def test_a_dead_peer_rank_is_recognized_in_the_real_gloo_error(tmp_path):
    """Rank 1 dies mid-collective; the error rank 0's all_reduce raises is what train's guard takes for a peer
    failure (and turns into the resume advice), while an ordinary RuntimeError is not."""
    import os
    import shutil
    import subprocess
    import sys

    from ddk_testkit.processes import REPO, child_env
    from stage2_student.train import _peer_failure

    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not shutil.which(torchrun):
        pytest.skip("torchrun not installed next to this interpreter")
    script = tmp_path / "peer.py"
    script.write_text(
        "import os, signal, time, torch, torch.distributed as dist\n"
        "from stage2_student.train import _peer_failure\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)  # torchrun's SIGTERM must not win the race with the error\n"
        "dist.init_process_group('gloo')\n"
        "if dist.get_rank() == 1:\n"
        "    dist.all_reduce(torch.ones(1)); os._exit(9)\n"
        "try:\n"
        "    for _ in range(100):\n"
        "        dist.all_reduce(torch.ones(1)); time.sleep(0.05)\n"
        "except RuntimeError as e:\n"
        "    print('PEER', _peer_failure(e), flush=True)\n")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(script)], cwd=REPO,
                          env=child_env(), capture_output=True, text=True, timeout=120)
    assert "PEER True" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert not _peer_failure(RuntimeError("CUDA out of memory"))


def test_collectives_run_where_their_backend_reduces():
    """nccl has no CPU path: the loop's CPU sums go to the GPU for it (a multi-GPU run died at its first logged step
    with "No backend type associated with device type cpu" when train.py all-reduced them in place). The mapping
    only: all_reduce_sum itself runs, under gloo, in every two-rank test (test_resume_ddp, test_fsdp), whose sums
    are checked against one process."""
    from stage2_student.parallel import collective_device

    assert collective_device("nccl") == "cuda"
    assert collective_device("gloo") == "cpu"


def test_only_parallel_calls_all_reduce():
    """Every all-reduce of stage 2 goes through parallel.all_reduce_sum, which moves its tensor where the backend
    reduces; a direct dist.all_reduce elsewhere is the bug above again (gloo on CPU, the tests, cannot catch it)."""
    import pathlib
    import re

    import stage2_student

    root = pathlib.Path(stage2_student.__file__).parent
    direct = [f"{p.name}:{n}" for p in sorted(root.rglob("*.py")) if p.name != "parallel.py"
              for n, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"\bdist\.all_reduce\(", line)]
    assert not direct, f"dist.all_reduce outside stage2_student/parallel.py: {direct}"
