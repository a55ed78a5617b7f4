"""The sampled encoding ``topk-sampled`` (docs/store-format.md, section 4): draws, stored arrays, decoding, the
estimator's mean, determinism, metadata and verification."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from ddk_store import open_store, spec
from ddk_store.encodings import encoding_for, get_encoding
from ddk_store.encodings.sampled import Sampled
from ddk_store.errors import StoreFormatError
from ddk_store.meta import SamplingInfo, StoreMeta
from ddk_store.testing import StoreFiles, synth_rows, tiny_meta
from ddk_store.validate import validate_store
from ddk_store.writer import StoreWriter

V, K, T = 300, 8, 12


def reference_counts(ids: np.ndarray, lp: np.ndarray, n: int, seed: int) -> np.ndarray:
    """(P, K + 1) counts of one row, written from the spec's text with Python loops and float64."""
    h = hashlib.blake2b(digest_size=16)
    h.update(ids.astype("<i4").tobytes())
    h.update(lp.astype("<f4").tobytes())
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, int.from_bytes(h.digest(), "little")])))
    u = rng.random((ids.shape[0], n))
    out = np.zeros((ids.shape[0], ids.shape[1] + 1), dtype=np.int64)
    for p in range(ids.shape[0]):
        probs = [float(np.exp(np.float64(x))) for x in lp[p]]
        probs.append(max(0.0, 1.0 - sum(probs)))
        total = sum(probs)
        cdf = np.cumsum([x / total for x in probs])
        cdf = cdf / cdf[-1]
        for x in u[p]:
            j = next((j for j in range(len(probs) - 1) if x < cdf[j]), len(probs) - 1)
            out[p, j] += 1
    return out


@pytest.mark.parametrize("n", [1, 5, 8, 40])
def test_encode_and_decode_follow_the_formula(n):
    d = synth_rows(np.random.default_rng(n), 3, T, K, V, sharpness=2.0)
    ids, lp = d["topk_ids"], d["topk_logprobs"].astype(np.float32)
    enc = Sampled(n, seed=11)
    stored = enc.encode(ids, lp, vocab_size=V, scale=16)
    s = min(n, K)
    assert stored[spec.ARR_TOPK_IDS].shape == stored[spec.ARR_TOPK_LOGPROBS].shape == (3, T - 1, s)
    dec = enc.decode(stored, scale=16)
    for r in range(3):
        want = reference_counts(ids[r], lp[r], n, 11)
        assert (want.sum(-1) == n).all()
        for p in range(T - 1):
            expect = {int(i): int(c) for i, c in zip(ids[r, p], want[p, :-1]) if c}
            sampled = stored[spec.ARR_TOPK_LOGPROBS][r, p] > 0
            got_ids = np.cumsum(stored[spec.ARR_TOPK_IDS][r, p].astype(np.int64))
            assert dict(zip(got_ids[sampled].tolist(), stored[spec.ARR_TOPK_LOGPROBS][r, p][sampled].tolist())) \
                == expect
            assert (np.diff(got_ids[sampled]) > 0).all() and sampled.tolist() == sorted(sampled, reverse=True)
            # decoded: empirical frequencies (absent: -inf), tail = draws outside the entries
            freq = np.array([expect.get(int(i), 0) / n for i in dec.ids[r, p]])
            np.testing.assert_allclose(np.exp(dec.logprobs[r, p].astype(np.float64)), np.where(sampled, freq, 0),
                                       rtol=1e-6)
            assert np.isneginf(dec.logprobs[r, p][~sampled]).all()
            np.testing.assert_allclose(np.exp(np.float64(dec.log_tail[r, p])), want[p, -1] / n, rtol=1e-6)
    total = np.exp(dec.logprobs.astype(np.float64)).sum(-1) + np.exp(dec.log_tail.astype(np.float64))
    assert np.abs(total - 1).max() < 1e-5


def test_estimator_mean_approaches_the_top_k_plus_tail_distribution():
    """E[count / N] = p: the mean over 40 seeds x 250 positions (N = 16) of the decoded probabilities is within
    5 standard errors (sqrt(p (1 - p) / (N * draws))) of the teacher's top-k probabilities and tail."""
    n, seeds, positions = 16, 40, 250
    p = np.array([0.5, 0.2, 0.1, 0.05, 0.03, 0.02, 0.004, 0.001])  # tail 0.095
    ids = np.tile(np.array([7, 3, 250, 12, 99, 5, 1, 200]), (positions, 1))
    lp = np.tile(np.log(p).astype(np.float32), (positions, 1))
    mean_p, mean_tail = np.zeros(K), 0.0
    for seed in range(seeds):
        enc = Sampled(n, seed)
        dec = enc.decode(enc.encode(ids, lp, vocab_size=V, scale=16), scale=16)
        q = np.exp(dec.logprobs.astype(np.float64))
        for j, i in enumerate(ids[0]):
            mean_p[j] += (q * (dec.ids == i)).sum() / (positions * seeds)
        mean_tail += np.exp(dec.log_tail.astype(np.float64)).sum() / (positions * seeds)
    truth = np.append(p, 1 - p.sum())
    got = np.append(mean_p, mean_tail)
    se = np.sqrt(truth * (1 - truth) / (n * seeds * positions))
    assert (np.abs(got - truth) <= 5 * se + 1e-12).all(), (got, truth)


def test_draws_are_deterministic_and_independent_of_how_rows_are_split():
    d = synth_rows(np.random.default_rng(0), 6, T, K, V)
    enc = Sampled(12, seed=3)
    whole = enc.encode(d["topk_ids"], d["topk_logprobs"], vocab_size=V, scale=16)
    again = Sampled(12, seed=3).encode(d["topk_ids"].astype(np.int64), d["topk_logprobs"], vocab_size=V, scale=16)
    parts = [enc.encode(d["topk_ids"][a:b], d["topk_logprobs"][a:b], vocab_size=V, scale=16)
             for a, b in ((0, 1), (1, 4), (4, 6))]
    other_seed = Sampled(12, seed=4).encode(d["topk_ids"], d["topk_logprobs"], vocab_size=V, scale=16)
    for name in whole:
        np.testing.assert_array_equal(whole[name], again[name])
        np.testing.assert_array_equal(whole[name], np.concatenate([p[name] for p in parts]))
    assert not np.array_equal(whole[spec.ARR_TOPK_LOGPROBS], other_seed[spec.ARR_TOPK_LOGPROBS])


def sampled_meta(samples: int = 5, seed: int = 9, **kw) -> StoreMeta:
    return tiny_meta(seq_len=T, top_k=K, vocab_size=V, encoding=spec.ENC_SAMPLED, **kw).replace(
        sampling=SamplingInfo(samples, seed))


def write_sampled_store(url: str, meta: StoreMeta, rows_seed: int = 0, sharpness: float = 1.0) -> None:
    rows = {d: {spec.SPLIT_TRAIN: 6, spec.SPLIT_HELDOUT: 2} for d in meta.domain_names}
    w = StoreWriter.open_or_create(url, meta, rows, unit_rows=2, chunk_rows=1)
    rng = np.random.default_rng(rows_seed)
    for d in meta.domain_names:
        for split in spec.SPLITS:
            for unit in w.units(d, split):
                w.write_unit(unit, **synth_rows(rng, unit.n_rows, T, K, V, sharpness))
    w.finalize()


def test_two_writes_of_a_store_are_byte_identical(tmp_path):
    for name in ("a", "b"):
        write_sampled_store(str(tmp_path / name), sampled_meta())
    chunks = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
                    and p.name != "zarr.json")
    assert chunks
    for rel in chunks:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_store_reads_verifies_and_records_n_and_seed(tmp_path):
    url = str(tmp_path / "s")
    write_sampled_store(url, sampled_meta(samples=5, seed=9))
    r = open_store(url)
    assert r.meta.format_version == spec.FORMAT_VERSION and spec.SAMPLED_SINCE == (1, 2)
    assert r.meta.sampling == SamplingInfo(5, 9)
    b = r.read_rows("alpha", "train", np.arange(6))
    assert b.topk_ids.shape == (6, T - 1, 5) and b.topk_log_tail.shape == (6, T - 1)  # min(N, K) slots
    counts = np.rint(np.exp(b.topk_logprobs.astype(np.float64)) * 5).sum(-1)
    assert (counts + np.rint(np.exp(b.topk_log_tail.astype(np.float64)) * 5) == 5).all()  # draws sum to N
    total = np.exp(b.topk_logprobs.astype(np.float64)).sum(-1) + np.exp(b.topk_log_tail.astype(np.float64))
    assert np.abs(total - 1).max() < 1e-5
    assert validate_store(url) == []
    assert repr(encoding_for(r.meta)) == "<encoding topk-sampled N=5 seed=9>"
    assert get_encoding(spec.ENC_SAMPLED).sampled and not get_encoding(spec.DEFAULT_ENCODING).sampled


def test_verify_names_a_count_above_n(tmp_path):
    url = str(tmp_path / "s")
    write_sampled_store(url, sampled_meta(samples=10), sharpness=6.0)  # confident: all 10 draws on one id
    assert validate_store(url) == []
    # Rewrite the metadata to N = 8 (still min(N, K) = 8 slots): counts summing to 10 now exceed N; verify says so.
    StoreFiles(url).edit_root_meta(lambda m: m["sampling"].update(samples=8))
    issues = validate_store(url)
    assert issues and all("sampling.samples 8" in str(i) for i in issues), issues


def test_metadata_requires_sampling_exactly_with_the_sampled_encoding():
    with pytest.raises(StoreFormatError, match="field 'sampling': required with encoding 'topk-sampled'"):
        tiny_meta(encoding=spec.ENC_SAMPLED).replace(sampling=None)
    with pytest.raises(StoreFormatError, match="field 'sampling'"):
        tiny_meta().replace(sampling=SamplingInfo(4, 0))
    with pytest.raises(StoreFormatError, match=r"sampling.samples.*\[1, 254\]"):
        SamplingInfo(255, 0)
    meta = sampled_meta(samples=7, seed=2**40)
    doc = json.loads(json.dumps(meta.to_dict()))
    assert doc["sampling"] == {"samples": 7, "seed": 2**40}
    assert StoreMeta.from_dict(doc) == meta
    assert "sampling" not in tiny_meta().to_dict()
    with pytest.raises(StoreFormatError, match="field 'sampling': a store of format 1.1 cannot have it"):
        StoreMeta.from_dict({**doc, "format_version": "1.1"})
