"""A format-1.1 store (encoding topk-idsort-q8-tail) read with plain zarr + numpy, following docs/store-format.md
only (ddk_store only writes the store)."""

import json
import zlib
from pathlib import Path

import numpy as np
import zarr


def test_read_tail_store_with_plain_zarr(tmp_path):
    from ddk_store.testing import make_tiny_store, synth_rows  # only to *write* the store

    url = str(tmp_path / "s")
    make_tiny_store(url, seed=3, unit_rows=4, top_k=8, vocab_size=300, format_version="1.1")  # 1.2: test_plain_zarr
    expected = synth_rows(np.random.default_rng(3), 4, 16, 8, 300, 1.0)  # alpha/train unit 0 was written first

    root = zarr.open_group(url, mode="r")
    meta = root.attrs["ddk"]
    assert meta["format_version"] == "1.1" and meta["encoding"] == "topk-idsort-q8-tail"
    scale = meta["logprob_scale"]
    g = root["alpha/train"]
    deltas, v = g["topk_ids"][:4].astype(np.int64), g["topk_logprobs"][:4]
    log_tail = g["topk_tail"][:4].astype(np.float64)
    ids = np.cumsum(deltas, axis=-1)
    kept = v <= 253
    lp = np.where(kept, -v.astype(np.float64) / scale, -np.inf)
    r = np.log(-np.expm1(log_tail)) - np.log(np.exp(lp).sum(-1))
    lp = lp + r[..., None]
    assert np.abs(np.exp(lp).sum(-1) + np.exp(log_tail) - 1).max() <= 1e-6
    assert ((v == 254) == ~kept).all() and (np.diff(kept.astype(int), axis=-1) <= 0).all()  # absent slots last
    assert (deltas[..., 1:][~kept[..., 1:]] == 0).all()
    for pos in np.ndindex(4, 15):
        want_lp = expected["topk_logprobs"][pos].astype(np.float64)
        want = dict(zip(expected["topk_ids"][pos].tolist(), want_lp.tolist()))
        keep = (np.rint(-want_lp * scale) <= 253) | (want_lp == want_lp.max())
        got = {int(i): float(x) for i, x, k in zip(ids[pos], lp[pos], kept[pos]) if k}
        assert set(got) == {i for i, k in zip(want, keep) if k}
        assert all(abs(got[i] - want[i]) <= 1 / scale + 5e-4 for i in got)
        outside = 1 - sum(np.exp(want[i]) for i in got)  # the teacher's mass outside the kept entries
        assert abs(np.exp(log_tail[pos]) - outside) <= 2e-4
    units = g["units"][:]
    assert units.shape[1] == 6 and units[0, 0] == 1
    assert units[0, 5] == zlib.crc32(np.ascontiguousarray(g["topk_tail"][0:4]).tobytes())
    arr_meta = json.loads((Path(url) / "alpha/train/topk_tail/zarr.json").read_text())
    assert [c["name"] for c in arr_meta["codecs"]] == ["bytes", "blosc", "crc32c"]
    assert arr_meta["data_type"] == "float16"
