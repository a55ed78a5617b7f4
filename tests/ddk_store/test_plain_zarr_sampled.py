"""A ``topk-sampled`` store (format 1.2) read with plain zarr + numpy, following docs/store-format.md only
(ddk_store only writes the store)."""

import zlib

import numpy as np
import zarr

N, K, T, V = 6, 8, 12, 300


def test_read_sampled_store_with_plain_zarr(tmp_path):
    from ddk_store import spec
    from ddk_store.meta import SamplingInfo
    from ddk_store.testing import synth_rows, tiny_meta
    from ddk_store.writer import StoreWriter  # only to *write* the store

    url = str(tmp_path / "s")
    meta = tiny_meta(domains=("alpha",), seq_len=T, top_k=K, vocab_size=V, encoding=spec.ENC_SAMPLED).replace(
        sampling=SamplingInfo(N, 5))
    w = StoreWriter.open_or_create(url, meta, {"alpha": {"train": 4, "heldout": 2}}, unit_rows=4,
                                   chunk_rows=2)
    expected = synth_rows(np.random.default_rng(3), 4, T, K, V, 1.5)
    w.write_unit(next(iter(w.units("alpha", "train"))), **expected)
    w.write_unit(next(iter(w.units("alpha", "heldout"))), **synth_rows(np.random.default_rng(4), 2, T, K, V))
    w.finalize()

    root = zarr.open_group(url, mode="r")
    doc = root.attrs["ddk"]
    assert doc["encoding"] == "topk-sampled" and doc["format_version"].split(".")[0] == "1"
    assert doc["sampling"] == {"samples": N, "seed": 5}
    n = doc["sampling"]["samples"]
    g = root["alpha/train"]
    deltas, counts = g["topk_ids"][:].astype(np.int64), g["topk_logprobs"][:].astype(np.int64)
    assert deltas.shape == counts.shape == (4, T - 1, min(n, K))  # S = min(N, K) slots
    ids = np.cumsum(deltas, axis=-1)
    sampled = counts > 0
    tail = n - counts.sum(-1)
    assert (tail >= 0).all() and (counts <= n).all()
    assert (np.diff(sampled.astype(int), axis=-1) <= 0).all()  # absent slots last
    assert (deltas[..., 1:][~sampled[..., 1:]] == 0).all()
    with np.errstate(divide="ignore"):
        lp, log_tail = np.log(counts / n), np.log(tail / n)
    assert np.isneginf(lp[~sampled]).all()
    np.testing.assert_allclose(np.exp(lp).sum(-1) + np.exp(log_tail), 1.0, atol=1e-12)
    for pos in np.ndindex(4, T - 1):
        got = ids[pos][sampled[pos]]
        assert (np.diff(got) > 0).all()  # distinct, ascending
        assert set(got.tolist()) <= set(expected["topk_ids"][pos].tolist())  # drawn from the teacher's top-k
    # the most likely entry of a confident position is drawn at least once in most positions
    top1 = expected["topk_ids"][..., 0]
    hit = np.array([top1[pos] in ids[pos][sampled[pos]] for pos in np.ndindex(4, T - 1)])
    assert hit.mean() > 0.8
    units = g["units"][:]
    assert units.shape[1] == 5 and units[0, 0] == 1
    assert units[0, 3] == zlib.crc32(np.ascontiguousarray(g["topk_logprobs"][0:4]).tobytes())
    assert g["topk_logprobs"].dtype == np.uint8 and g["topk_logprobs"].fill_value == 255
