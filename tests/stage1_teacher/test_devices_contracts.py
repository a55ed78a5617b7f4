"""Contracts of stage 1's device logic without a GPU (campaign 15): shard composition bounds, the visible-GPU list,
torchrun's environment, which GPUs and which shard a torchrun rank takes, the finalizer note, the settings a
``--devices`` child reads and the shared lines forwarded once. GPUs are faked through ``CUDA_VISIBLE_DEVICES``, the
variable the code reads; nothing here starts vLLM or a dump."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import yaml

from ddk_store import settings
from ddk_store.errors import ConfigError
from ddk_testkit.processes import run_cli
from stage1_teacher.config import Stage1Config
from stage1_teacher.devices import (FINALIZER_ENV, VISIBLE_ENV, _Once, child_settings, compose_shard, multi_device,
                                    run_rank, torchrun_rank, visible_gpus)

REQ = {"teacher": "t", "corpora": "c.yaml", "store": "s"}
TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@pytest.fixture
def no_torchrun(monkeypatch):
    """A plain process: no torchrun variables, no finalizer note inherited from the test runner."""
    for k in (*TORCHRUN, FINALIZER_ENV):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_compose_shard_refuses_a_host_shard_or_part_out_of_range():
    """``I/M`` needs 0 <= I < M and part d of N needs 0 <= d < N; inside, host 1/2's device 1 of 2 is 1 + 2*1 of 4."""
    assert compose_shard((1, 2), 1, 2) == (3, 4)
    assert compose_shard((0, 3), 2, 3) == (6, 9)
    for shard, part, parts in [((2, 2), 0, 1), ((0, 2), 2, 2), ((0, 1), 1, 1), ((-1, 2), 0, 1), ((0, 1), -1, 2)]:
        with pytest.raises(ValueError, match="bad shard"):
            compose_shard(shard, part, parts)


def test_visible_gpus_drops_blank_entries_and_the_no_gpu_marker():
    """``CUDA_VISIBLE_DEVICES`` entries, stripped; blanks and ``-1`` (CUDA's "no GPU") name no GPU."""
    assert visible_gpus({VISIBLE_ENV: "0,,1, "}) == ["0", "1"]
    assert visible_gpus({VISIBLE_ENV: "-1"}) == []
    assert visible_gpus({VISIBLE_ENV: ""}) == []
    assert visible_gpus({VISIBLE_ENV: "GPU-ab12, 3"}) == ["GPU-ab12", "3"]


def test_torchrun_local_rank_defaults_to_the_rank_and_bad_numbers_are_one_config_error():
    """Without LOCAL_RANK the rank is its own local rank (one host); a non-integer variable is a ConfigError naming
    the three variables, not a ValueError traceback."""
    assert torchrun_rank({"WORLD_SIZE": "2", "RANK": "1"}) == (1, 2, 1)
    assert torchrun_rank({"WORLD_SIZE": "3"}) == (0, 3, 0)
    for env in ({"WORLD_SIZE": "two"}, {"WORLD_SIZE": "2", "RANK": "1.0"}, {"WORLD_SIZE": "2", "LOCAL_RANK": ""}):
        with pytest.raises(ConfigError, match="RANK/WORLD_SIZE/LOCAL_RANK must be integers"):
            torchrun_rank(env)


def test_devices_above_1_under_torchrun_is_refused_before_any_dump(no_torchrun):
    """torchrun already starts one process per device: ``--devices 2`` in a rank is refused, nothing is dumped."""
    for k, v in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        no_torchrun.setenv(k, v)
    started = []
    with pytest.raises(ConfigError, match=r"--devices 2 under torchrun.*WORLD_SIZE=2.*leave --devices at 1"):
        multi_device(Stage1Config(**REQ, device="cpu", devices=2), started.append)
    assert not started


def test_a_torchrun_rank_refuses_overwrite_before_running(no_torchrun):
    """``--overwrite`` in a torchrun rank is refused in torchrun's words before the rank's dump starts."""
    started = []
    with pytest.raises(ConfigError, match="--overwrite cannot be combined with a torchrun launch of 2 ranks"):
        run_rank(Stage1Config(**REQ, device="cpu", overwrite=True), 1, 2, 1, started.append)
    assert not started


def test_an_auto_device_rank_is_pinned_to_its_own_gpu(no_torchrun):
    """``--device auto`` (the default) may run on CUDA, so a rank sees only its GPU: LOCAL_RANK 1 of "0,1" gets "1"
    and host shard 0/2's rank 1 of 2 scores shard 0 + 2*1 of 4."""
    no_torchrun.setenv(VISIBLE_ENV, "0,1")
    started = []
    run_rank(Stage1Config(**REQ, shard="0/2"), 1, 2, 1, started.append)
    assert os.environ[VISIBLE_ENV] == "1"
    assert started[0].shard == "2/4"


def test_a_rank_on_a_second_host_takes_gpus_by_local_rank_and_shard_by_global_rank(no_torchrun):
    """Two hosts of 2 GPUs: global rank 3 is LOCAL_RANK 1 on its host, so GPU "1" of "0,1", and shard 3 of 4."""
    no_torchrun.setenv(VISIBLE_ENV, "0,1")
    started = []
    run_rank(Stage1Config(**REQ, device="cuda"), 3, 4, 1, started.append)
    assert os.environ[VISIBLE_ENV] == "1"
    assert started[0].shard == "3/4"


def test_without_cuda_visible_devices_each_rank_takes_its_own_tensor_parallel_gpus(no_torchrun):
    """Unset ``CUDA_VISIBLE_DEVICES``: LOCAL_RANK 1 with --tensor-parallel-size 2 takes GPUs 2 and 3 (not 1, 2)."""
    no_torchrun.delenv(VISIBLE_ENV, raising=False)
    started = []
    run_rank(Stage1Config(**REQ, device="cuda", backend="vllm", tensor_parallel_size=2, shard="0/2"), 1, 2, 1,
             started.append)
    assert os.environ[VISIBLE_ENV] == "2,3"
    assert started


def test_a_rank_dump_sees_the_finalizer_note_and_it_is_gone_afterwards(no_torchrun):
    """With a single host shard the rank's dump runs with DDK_STAGE1_FINALIZER="rank 0" (rank 0 finalizes), and the
    variable is removed once the rank's dump returns; with a host shard of 2 it is never set."""
    seen = []
    run_rank(Stage1Config(**REQ, device="cpu"), 1, 2, 1, lambda c: seen.append(os.environ.get(FINALIZER_ENV)))
    assert seen == ["rank 0"]
    assert FINALIZER_ENV not in os.environ
    run_rank(Stage1Config(**REQ, device="cpu", shard="1/2"), 1, 2, 1,
             lambda c: seen.append(os.environ.get(FINALIZER_ENV)))
    assert seen == ["rank 0", None]


def test_shared_settings_lines_are_forwarded_once_and_other_lines_always():
    """backend:/note:/warning: lines are printed alike by every device: forwarded the first time only; any other
    line (progress, a device's own output) every time."""
    once = _Once()
    for line in ("backend: hf (requested)", "note: memory store", "warning: slow CPU"):
        assert once.first(line) is True
        assert once.first(line) is False
    assert once.first("backend: vllm") is True  # another text is another line
    assert once.first("scored 3 unit(s)") is True and once.first("scored 3 unit(s)") is True


def test_child_settings_read_back_as_the_parents_with_absolute_paths(no_torchrun, tmp_path):
    """A child reads the YAML as its --config: the same settings, local paths absolute (from the parent's directory),
    ``devices`` 1, no progress bar; unset fields left out."""
    no_torchrun.chdir(tmp_path)
    cfg = Stage1Config(teacher="org/model", corpora="c.yaml", store="out/store", devices=3, top_k=8)
    text = child_settings(cfg)
    data = yaml.safe_load(text)
    assert data["corpora"] == str(tmp_path / "c.yaml") and data["store"] == str(tmp_path / "out" / "store")
    assert "workers" not in data and "storage_options" not in data  # None: not written
    (tmp_path / "child.yaml").write_text(text)
    child = settings.resolve(Stage1Config, {}, str(tmp_path / "child.yaml"))
    assert child == dataclasses.replace(cfg, corpora=str(tmp_path / "c.yaml"), store=str(Path("out/store").absolute()),
                                        devices=1, progress=False)


def test_a_rank_outside_the_world_size_is_one_error_line_not_a_traceback(no_torchrun, tmp_path):
    """RANK=2 with WORLD_SIZE=2 (a hand-set, 1-based rank): one ``error:`` line naming the variables, exit status 2,
    before the store exists; it was a ValueError traceback from the shard arithmetic."""
    for k, v in {"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        no_torchrun.setenv(k, v)
    store = tmp_path / "store"
    res = run_cli("ddk-teacher", ["dump", "--teacher", str(tmp_path / "t"), "--corpora", str(tmp_path / "c.yaml"),
                                  "--store", str(store), "--device", "cpu"])
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.code == 2 and len(errors) == 1 and "Traceback" not in res.output, res.output
    assert "RANK=2 must be in [0, WORLD_SIZE=2)" in errors[0], errors[0]
    assert not store.exists()
    with pytest.raises(ConfigError, match="LOCAL_RANK=-1 >= 0"):
        run_rank(Stage1Config(**REQ, device="cpu"), 0, 2, -1, [].append)


def test_a_rank_reads_cuda_visible_devices_as_visible_gpus_does(no_torchrun):
    """Spaces around entries are not part of a GPU ("0, 1": LOCAL_RANK 1 gets "1"), and a trailing comma names no GPU:
    a third rank on "0,1," is refused with the rank count that fits (2), instead of taking the blank entry, which
    hid every GPU and sent that rank to the CPU."""
    no_torchrun.setenv(VISIBLE_ENV, "0, 1")
    started = []
    run_rank(Stage1Config(**REQ, device="cuda", shard="0/2"), 1, 2, 1, started.append)
    assert os.environ[VISIBLE_ENV] == "1" and started
    no_torchrun.setenv(VISIBLE_ENV, "0,1,")
    with pytest.raises(ConfigError, match=r"torchrun rank 2 \(LOCAL_RANK 2\) needs GPUs 2-2 of CUDA_VISIBLE_DEVICES=0,1, "
                                          r"\(--tensor-parallel-size 1\); launch with --nproc_per_node 2 or fewer"):
        run_rank(Stage1Config(**REQ, device="cuda", shard="0/2"), 2, 3, 2, started.append)
    assert len(started) == 1
