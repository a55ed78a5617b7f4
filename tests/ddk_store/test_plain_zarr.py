"""A store read with plain zarr + numpy, following docs/store-format.md only (nothing from ddk_store)."""

import json
import re
import zlib
from pathlib import Path

import numpy as np
import zarr

from ddk_testkit.processes import REPO

DOC = REPO / "docs" / "store-format.md"


def test_read_store_with_plain_zarr(tmp_path):
    from ddk_store.testing import make_tiny_store, synth_rows  # only to *write* the store

    url = str(tmp_path / "s")
    make_tiny_store(url, seed=3, unit_rows=4, encoding="topk-idsort-q8")  # the 1.0 encoding; 1.1: test_store_v2.py
    expected_rng = np.random.default_rng(3)
    expected = synth_rows(expected_rng, 4, 16, 4, 64, 1.0)  # alpha/train unit 0 was written first

    root = zarr.open_group(url, mode="r")
    meta = root.attrs["ddk"]
    assert meta["format"] == "ddk-teacher-store" and meta["format_version"].split(".")[0] == "1"
    assert meta["status"] == "complete" and meta["encoding"] == "topk-idsort-q8"
    scale = meta["logprob_scale"]
    g = root["alpha/train"]
    assert g.attrs["ddk_group"]["n_rows"] == 16
    tokens = g["tokens"][:4]
    deltas = g["topk_ids"][:4]
    v = g["topk_logprobs"][:4]
    ids = np.cumsum(deltas.astype(np.int64), axis=-1)
    lp = -v.astype(np.float32) / scale
    np.testing.assert_array_equal(tokens, expected["tokens"])
    for pos in np.ndindex(4, 15):
        got = dict(zip(ids[pos].tolist(), lp[pos].tolist()))
        want = dict(zip(expected["topk_ids"][pos].tolist(), expected["topk_logprobs"][pos].tolist()))
        assert set(got) == set(want)
        assert all(abs(got[i] - want[i]) <= 1 / (2 * scale) + 1e-6 for i in want)
    target = g["target_logprobs"][:4]
    np.testing.assert_allclose(target, expected["target_logprobs"], rtol=1e-6)
    # Unit marker: done flag and the zlib crc32 of the stored values.
    units = g["units"][:]
    assert units[0, 0] == 1
    assert units[0, 1] == zlib.crc32(np.ascontiguousarray(g["tokens"][0:4]).tobytes())
    # Held-out statistic recomputed from the spec's definition.
    h = root["beta/heldout"]["target_logprobs"][:]
    beta = next(d for d in meta["domains"] if d["name"] == "beta")
    assert beta["heldout_nll"] == np.float64(-np.mean(h, dtype=np.float64))
    # Codecs are all from the Zarr v3 specification.
    arr_meta = json.loads((Path(url) / "alpha/train/topk_ids/zarr.json").read_text())
    # Format 1.2: one shard per write unit, each chunk inside it bytes -> blosc -> crc32c, the index crc32c'd.
    assert [c["name"] for c in arr_meta["codecs"]] == ["sharding_indexed"]
    shard = arr_meta["codecs"][0]["configuration"]
    assert [c["name"] for c in shard["codecs"]] == ["bytes", "blosc", "crc32c"]
    assert [c["name"] for c in shard["index_codecs"]] == ["bytes", "crc32c"]
    assert shard["index_location"] == "end"


def test_spec_document_names_every_constant():
    """docs/store-format.md and ddk_store/spec.py agree on every array, attribute and encoding name."""
    from ddk_store import spec

    text = DOC.read_text()
    names = [spec.ROOT_ATTR, spec.GROUP_ATTR, spec.FORMAT_NAME, spec.FORMAT_VERSION, *spec.DATA_ARRAYS,
             spec.ARR_UNITS, *spec.ENCODINGS, *spec.SPLITS, *spec.STATUSES]
    missing = [n for n in names if f"`{n}`" not in text and f'"{n}"' not in text]
    assert not missing, f"docs/store-format.md does not mention {missing}"
    assert re.search(r"format 1\.0", text)


def test_read_rank_f16_store_with_plain_zarr(tmp_path):
    """topk-rank-f16: ids stored as themselves in rank order, float16 log-probs (section 4)."""
    from ddk_store.testing import make_tiny_store, synth_rows  # only to *write* the store

    url = str(tmp_path / "s")
    make_tiny_store(url, seed=5, unit_rows=4, encoding="topk-rank-f16")
    expected = synth_rows(np.random.default_rng(5), 4, 16, 4, 64, 1.0)  # alpha/train unit 0 was written first
    root = zarr.open_group(url, mode="r")
    assert root.attrs["ddk"]["encoding"] == "topk-rank-f16"
    g = root["alpha/train"]
    ids, lp = g["topk_ids"][:4].astype(np.int64), g["topk_logprobs"][:4]
    assert lp.dtype == np.float16
    assert np.all(np.diff(lp.astype(np.float32), axis=-1) <= 0)  # rank order: descending log-prob
    for pos in np.ndindex(4, 15):
        got = dict(zip(ids[pos].tolist(), lp[pos].astype(np.float64).tolist()))
        want = dict(zip(expected["topk_ids"][pos].tolist(), expected["topk_logprobs"][pos].tolist()))
        assert set(got) == set(want)
        assert all(abs(got[i] - want[i]) <= 2 ** -11 * abs(want[i]) + 1e-7 for i in want)  # float16 rounding
