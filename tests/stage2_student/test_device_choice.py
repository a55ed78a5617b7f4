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
