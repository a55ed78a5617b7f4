"""Creating and checking a store's groups and arrays (ddk_store.nodes; campaign 18): what a rerun of a dump finds
on disk (a killed writer's missing nodes, a damaged array) and how it says so. Real stores by the real writer; the
damage is faked on disk (a deleted node, an edited array document)."""

from __future__ import annotations

import json
import shutil

import pytest
import zarr

from ddk_store import StoreWriter, spec
from ddk_store.errors import StoreExistsError
from ddk_store.nodes import first_layout, resume_difference
from ddk_store.testing import StoreFiles, synth_rows, tiny_meta

ROWS = {"alpha": {"train": 6, "heldout": 2}, "beta": {"train": 3, "heldout": 2}}
META = tiny_meta(domains=tuple(ROWS))


def _store(url: str, *, finish: bool) -> StoreWriter:
    w = StoreWriter.open_or_create(url, META, ROWS, unit_rows=2, chunk_rows=1)
    if finish:
        for u in w.pending_units():
            w.write_unit(u, **synth_rows(__import__("numpy").random.default_rng(0), u.n_rows, META.seq_len,
                                         META.top_k, META.tokenizer.vocab_size))
        w.finalize()
    return w


def _reopen(url: str, **kw) -> StoreWriter:
    return StoreWriter.open_or_create(url, META, ROWS, **kw)


def test_a_rerun_recreates_the_groups_and_arrays_a_killed_writer_left_missing(tmp_path):
    url = str(tmp_path / "s")
    _store(url, finish=False)
    shutil.rmtree(tmp_path / "s" / "beta" / "heldout")
    shutil.rmtree(tmp_path / "s" / "alpha" / "train" / spec.ARR_TOPK_IDS)
    w = _reopen(url)  # the store's own work units (none asked for)
    assert w.resumed and w.layout("beta", "heldout").unit_rows == 2
    assert StoreFiles(url).layout("beta", "heldout").n_rows == 2
    assert (tmp_path / "s" / "alpha" / "train" / spec.ARR_TOPK_IDS / "zarr.json").exists()


def test_a_finished_store_missing_a_node_is_named_not_resumed(tmp_path):
    url = str(tmp_path / "s")
    _store(url, finish=True)
    shutil.rmtree(tmp_path / "s" / "alpha" / "train" / spec.ARR_TOPK_IDS)
    with pytest.raises(StoreExistsError, match=f"alpha/train/{spec.ARR_TOPK_IDS}: array missing"):
        _reopen(url)
    shutil.rmtree(tmp_path / "s" / "beta" / "heldout")
    with pytest.raises(StoreExistsError, match=r"different settings \(alpha/train/|\(beta/heldout: "):
        _reopen(url)
    shutil.rmtree(tmp_path / "s" / "alpha" / "train")
    with pytest.raises(StoreExistsError, match=r"different settings \(alpha/train: "):
        _reopen(url)


def test_an_array_of_another_shape_is_named_with_both_shapes(tmp_path):
    url = str(tmp_path / "s")
    _store(url, finish=True)
    doc_path = tmp_path / "s" / "beta" / "train" / spec.ARR_TOKENS / "zarr.json"
    doc = json.loads(doc_path.read_text())
    have = tuple(doc["shape"])
    doc["shape"] = [have[0], have[1] + 1]
    doc_path.write_text(json.dumps(doc))
    with pytest.raises(StoreExistsError) as e:
        _reopen(url)
    dtype = doc["data_type"]
    assert (f"beta/train/{spec.ARR_TOKENS}: store has shape {(have[0], have[1] + 1)} {dtype}, this run has "
            f"{have} {dtype}") in str(e.value)


def test_other_work_units_asked_for_are_named_with_how_to_resume(tmp_path):
    url = str(tmp_path / "s")
    _store(url, finish=False)
    with pytest.raises(StoreExistsError) as e:
        _reopen(url, unit_rows=4, chunk_rows=2)
    assert ("--unit-rows: the store's work units are 2 rows in chunks of 1, this run's 4 in chunks of 2; omit "
            "--unit-rows to resume with the store's") in str(e.value)
    assert _reopen(url, unit_rows=2, chunk_rows=1).resumed


def test_a_store_without_groups_yet_has_no_first_layout(tmp_path):
    url = str(tmp_path / "s")
    _store(url, finish=False)
    for dom in ROWS:
        shutil.rmtree(tmp_path / "s" / dom)
    root = zarr.open_group(zarr.storage.LocalStore(url), mode="r+")
    meta = StoreFiles(url).meta()
    assert first_layout(root, meta) is None
    assert resume_difference(root, meta, ROWS, 1, 2, asked=False) is None  # the groups were made again
    assert first_layout(root, meta).unit_rows == 2
