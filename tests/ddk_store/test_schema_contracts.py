"""The store schema's contracts one by one (mutation campaign 14): the group layout document's rules, which stored
objects hold a row range (a partial last unit included), how an array's stored metadata must match, the row counts a
new store takes, and the checks of every unit's rows before they are written."""

from __future__ import annotations

import numpy as np
import pytest

from ddk_store import ConfigError, InvalidNameError, StoreFormatError, spec
from ddk_store.layout import Unit
from ddk_store.schema import (GroupLayout, check_rows, check_unit_data, group_path, group_schema, object_indices,
                              sharded)
from ddk_store.testing import StoreFiles, make_tiny_store, synth_rows, tiny_meta
from ddk_store.validate import validate_store

CTX = "alpha/train.ddk_group"


@pytest.mark.parametrize("doc, message", [
    ({"n_rows": 8, "chunk_rows": 3, "unit_rows": 4}, r"unit_rows' \(4\) must be a multiple of chunk_rows \(3\)"),
    ({"n_rows": 8, "chunk_rows": 2, "unit_rows": 4, "shard_rows": 2}, r"shard_rows' \(2\) must equal unit_rows \(4\)"),
    ({"n_rows": 8, "chunk_rows": 2, "unit_rows": 4, "shard_rows": 0}, r"shard_rows': expected int in \[1, inf\]"),
    ({"n_rows": -1, "chunk_rows": 2, "unit_rows": 4}, r"n_rows': expected int in \[0, inf\]"),
    ({"n_rows": 8, "chunk_rows": 0, "unit_rows": 4}, r"chunk_rows': expected int in \[1, inf\]"),
    ({"n_rows": 8, "chunk_rows": 2, "unit_rows": 0}, r"unit_rows': expected int in \[1, inf\]"),
])
def test_a_group_layout_document_that_breaks_a_rule_is_one_format_error(doc, message):
    with pytest.raises(StoreFormatError, match=f"field '{CTX}.{message}"):
        GroupLayout.from_dict(doc, CTX)


def test_a_group_layout_round_trips_with_and_without_shards():
    for lay in (GroupLayout(10, 2, 4), GroupLayout(10, 1, 4, 4), GroupLayout(0, 1, 4, 4)):
        assert GroupLayout.from_dict(lay.to_dict(), CTX) == lay
    assert "shard_rows" not in GroupLayout(10, 2, 4).to_dict()  # format 1.0/1.1 documents have no such field
    no_shards = {"n_rows": 8, "chunk_rows": 2, "unit_rows": 4, "shard_rows": None}
    assert GroupLayout.from_dict(no_shards, CTX).shard_rows == 0


@pytest.mark.parametrize("lay, start, stop, want", [
    (GroupLayout(10, 1, 4, 4), 8, 10, [2]), (GroupLayout(10, 1, 4, 4), 0, 4, [0]), (GroupLayout(10, 2, 4), 8, 10, [4]),
    (GroupLayout(9, 2, 4), 8, 9, [4]), (GroupLayout(9, 2, 4), 4, 8, [2, 3]), (GroupLayout(10, 1, 4, 4), 3, 5, [0, 1]),
])
def test_object_indices_cover_a_partial_last_object(lay, start, stop, want):
    assert list(object_indices(lay, start, stop)) == want


def test_verify_names_the_missing_object_of_a_partial_last_unit(tmp_path):
    """Unit 2 of 10 rows by 4 holds rows 8-9, a partial shard: its deleted object is named missing, not called
    altered data (what reading the fill values in its place would make of it)."""
    url = str(tmp_path / "s")
    make_tiny_store(url, domains=("alpha",), train_rows=10, heldout_rows=2, unit_rows=4)
    StoreFiles(url).chunk_path("alpha", spec.SPLIT_TRAIN, spec.ARR_TOPK_LOGPROBS, 2).unlink()
    assert [str(i) for i in validate_store(url)] == [
        f"alpha/train unit 2 (rows 8-9) {spec.ARR_TOPK_LOGPROBS}: chunk(s) [2] missing"]


def test_a_stored_array_must_match_its_shards_chunks_and_dtype():
    meta = tiny_meta()
    want = group_schema(meta, GroupLayout(8, 1, 4, 4))[spec.ARR_TOKENS]
    assert want.shards == (4, meta.seq_len) and want.chunks == (1, meta.seq_len)
    assert want.mismatch(want.shape, want.chunks, want.dtype, want.shards) is None
    assert want.mismatch(want.shape, want.chunks, want.dtype, None) == f"shards None, expected {want.shards}"
    assert want.mismatch(want.shape, (2, meta.seq_len), want.dtype, want.shards).startswith(
        f"shape {want.shape} chunks (2, {meta.seq_len}), expected")
    assert want.mismatch(want.shape, want.chunks, "<i2", want.shards) == f"dtype int16, expected {want.dtype}"
    unsharded = group_schema(meta, GroupLayout(8, 1, 4))[spec.ARR_TOKENS]
    assert unsharded.mismatch(want.shape, want.chunks, want.dtype, want.shards) == \
        f"shards {want.shards}, expected None"


def test_stores_are_sharded_from_format_1_2_on():
    assert sharded(tiny_meta()) and sharded(tiny_meta(format_version="1.10"))
    assert not sharded(tiny_meta(format_version="1.1")) and not sharded(tiny_meta(format_version="1.0",
                                                                                  encoding=spec.ENC_IDSORT_Q8))


@pytest.mark.parametrize("split", ["../train", "test", "", "Train"])
def test_a_group_path_takes_only_the_store_splits(split):
    with pytest.raises(StoreFormatError, match="unknown split"):
        group_path("alpha", split)


@pytest.mark.parametrize("domain", ["../alpha", "a/b", "zarr.json", ""])
def test_a_group_path_takes_only_valid_domain_names(domain):
    with pytest.raises(InvalidNameError):
        group_path(domain, spec.SPLIT_TRAIN)


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("beta"), r"rows are given for domains \['alpha', 'gamma'\]"),
    (lambda r: r.update(delta={"train": 1, "heldout": 1}), "rows are given for domains"),
    (lambda r: r["beta"].pop("heldout"), r"domain 'beta': rows must give exactly the splits"),
    (lambda r: r["beta"].update(test=1), r"domain 'beta': rows must give exactly the splits"),
    (lambda r: r["beta"].update(train=True), "split 'train': row count must be an int >= 0, got True"),
    (lambda r: r["beta"].update(train=-1), "split 'train': row count must be an int >= 0, got -1"),
    (lambda r: r["beta"].update(train=2.0), "split 'train': row count must be an int >= 0, got 2.0"),
])
def test_row_counts_of_a_new_store_name_every_domain_and_split_once(edit, message):
    meta = tiny_meta()
    rows = {d: {"train": 2, "heldout": 1} for d in meta.domain_names}
    assert check_rows(meta, rows) == rows
    edit(rows)
    with pytest.raises(ConfigError, match=message):
        check_rows(meta, rows)


def _unit_rows(n: int = 3):
    meta = tiny_meta()
    return meta, Unit("alpha", spec.SPLIT_TRAIN, 0, 0, n), synth_rows(np.random.default_rng(1), n, meta.seq_len,
                                                                       meta.top_k, meta.tokenizer.vocab_size)


@pytest.mark.parametrize("name, shape", [("tokens", (3, 15)), ("target_logprobs", (3, 16)),
                                         ("topk_logprobs", (3, 4, 15))])
def test_unit_rows_of_the_wrong_shape_are_refused(name, shape):
    meta, unit, rows = _unit_rows()
    with pytest.raises(ValueError, match=f"{name} has shape"):
        check_unit_data(meta, unit, {**rows, name: np.zeros(shape, rows[name].dtype)})


@pytest.mark.parametrize("name, value", [("tokens", 64), ("tokens", -1), ("topk_ids", 64), ("topk_ids", -1)])
def test_unit_ids_outside_the_vocabulary_are_refused_signed_or_not(name, value):
    """-1 in an int64 array (the dtype numpy gives Python ids) is outside [0, V), as is V itself."""
    meta, unit, rows = _unit_rows()
    bad = rows[name].astype(np.int64)
    bad[1, 3] = value
    with pytest.raises(ValueError, match=f"{name} holds ids outside"):
        check_unit_data(meta, unit, {**rows, name: bad})
    ok = rows[name].astype(np.int64)
    ok[ok == ok.max()] = meta.tokenizer.vocab_size - 1  # the largest id is one of the vocabulary
    if name == "tokens":
        check_unit_data(meta, unit, {**rows, name: ok})


def test_a_repeated_top_k_id_is_refused_wherever_it_sits_in_the_position():
    meta, unit, rows = _unit_rows()
    ids = rows["topk_ids"].copy()
    ids[0, 4] = [5, 9, 5, 7]  # the repeat is not next to its twin in the rank order
    with pytest.raises(ValueError, match="repeats an id"):
        check_unit_data(meta, unit, {**rows, "topk_ids": ids})
    ids[0, 4] = [5, 9, 6, 7]
    check_unit_data(meta, unit, {**rows, "topk_ids": ids})


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_non_finite_top_k_log_prob_is_refused_by_default(value):
    meta, unit, rows = _unit_rows()
    lp = rows["topk_logprobs"].copy()
    lp[2, 1, 0] = value
    with pytest.raises(ValueError, match="topk_logprobs holds NaN or inf"):
        check_unit_data(meta, unit, {**rows, "topk_logprobs": lp})
    assert check_unit_data(meta, unit, {**rows, "topk_logprobs": lp}, values=False)["topk_logprobs"].dtype == np.float32
