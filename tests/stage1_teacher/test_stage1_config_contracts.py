"""Stage1Config's ranges at their edges and its cross-field rules' exact reach (campaign 15): each limit is accepted
on its edge and refused one step past it, with the flag named."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddk_store.errors import ConfigError
from stage1_teacher.config import Stage1Config

REQ = {"teacher": "t", "corpora": "c.yaml", "store": "s"}

#: (field, the last accepted value, the first refused one, the flag the error names); limits from docs/stage1.md.
EDGES = [
    ("samples", 1, 0, "--samples"),
    ("samples", 254, 255, "--samples"),  # draw counts are uint8, 255 marks missing data
    ("sampling_seed", 0, -1, "--sampling-seed"),
    ("sampling_seed", 2**63 - 1, 2**63, "--sampling-seed"),
    ("heldout_seqs", 1, 0, "--heldout-seqs"),
    ("max_rows_per_domain", 0, -1, "--max-rows-per-domain"),
    ("unit_rows", 0, -1, "--unit-rows"),
    ("workers", 1, 0, "--workers"),
    ("devices", 1, 0, "--devices"),
    ("tensor_parallel_size", 1, 0, "--tensor-parallel-size"),
    ("seq_len", 2, 1, "--seq-len"),
    ("top_k", 1, 0, "--top-k"),
]


@pytest.mark.parametrize("field, ok, bad, flag", EDGES)
def test_each_range_is_accepted_on_its_edge_and_refused_one_step_past(field, ok, bad, flag):
    """The edge value builds a config; one step past it is one ConfigError naming the flag and the value given."""
    assert getattr(Stage1Config(**REQ, **{field: ok}), field) == ok
    with pytest.raises(ConfigError, match=f"{flag} must be .*got {bad}"):
        Stage1Config(**REQ, **{field: bad})


def test_overwrite_is_refused_only_with_several_writers():
    """--overwrite with one process (--devices 1, --shard 0/1) is fine; with --devices 2 it is refused."""
    assert Stage1Config(**REQ, overwrite=True).overwrite is True
    with pytest.raises(ConfigError, match=r"--overwrite cannot be combined with --devices N > 1"):
        Stage1Config(**REQ, overwrite=True, devices=2)


def test_hf_batch_tokens_may_equal_seq_len_and_hf_runs_at_tensor_parallel_1():
    """A batch holds whole rows: batch_tokens == seq_len is one row and allowed, one token fewer is refused; the hf
    backend itself (tensor-parallel size 1) is accepted."""
    assert Stage1Config(**REQ, backend="hf", seq_len=64, batch_tokens=64).batch_tokens == 64
    with pytest.raises(ConfigError, match=r"--batch-tokens \(63\) must be >= --seq-len \(64\)"):
        Stage1Config(**REQ, backend="hf", seq_len=64, batch_tokens=63)
    assert Stage1Config(**REQ, backend="hf").tensor_parallel_size == 1


def test_overwrite_of_the_home_directory_is_refused():
    """--overwrite deletes the store's prefix: a store at the home directory is refused up front, naming the path."""
    home = str(Path.home())
    assert Stage1Config(**{**REQ, "store": home}).store == home  # (without --overwrite nothing is deleted)
    with pytest.raises(ConfigError, match="--store with --overwrite: refusing to delete"):
        Stage1Config(**{**REQ, "store": home}, overwrite=True)


def test_storage_options_dict_is_a_copy():
    """Changing the dict handed to a backend leaves the frozen settings as they were."""
    cfg = Stage1Config(**{**REQ, "store": "s3://bucket/prefix"}, storage_options={"endpoint_url": "x"})
    opts = cfg.storage_options_dict
    opts["endpoint_url"] = "changed"
    assert cfg.storage_options_dict == {"endpoint_url": "x"}
    assert Stage1Config(**REQ).storage_options_dict is None
