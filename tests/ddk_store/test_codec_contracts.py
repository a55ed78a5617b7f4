"""Contracts of ddk_store.codec, the by-name front of the top-k encodings: scale selection, argument checks, the
stored order of decode_topk's arrays, and sort_by_rank. References are float64 from the formulas of
docs/store-format.md (v = round(-lp * scale), saturating at Q8_MAX; tail = log(1 - sum exp(lp)))."""

from __future__ import annotations

import numpy as np
import pytest

from ddk_store import codec, spec
from ddk_store.codec import TopK


def _ids(rng, n, k, vocab):
    return np.stack([rng.choice(vocab, size=k, replace=False) for _ in range(n)])


def _codes64(lp64: np.ndarray, scale: int) -> np.ndarray:
    return np.clip(np.rint(-lp64 * scale), 0, spec.Q8_MAX)


@pytest.mark.parametrize("scale", [None, 5, 16, 40])
def test_idsort_codes_follow_the_formula_at_the_given_or_default_scale(scale):
    rng = np.random.default_rng(1)
    n, k, vocab = 64, 6, 1000
    ids = _ids(rng, n, k, vocab)
    lp64 = -rng.uniform(0, 15.5, size=(n, k))
    lp32 = lp64.astype(np.float32)
    enc = codec.encode_arrays(ids, lp32, encoding=spec.ENC_IDSORT_Q8, vocab_size=vocab, scale=scale)
    s = spec.DEFAULT_LOGPROB_SCALE if scale is None else scale
    order = np.argsort(ids, axis=-1, kind="stable")
    want = _codes64(np.take_along_axis(lp32.astype(np.float64), order, -1), s)
    got = enc[spec.ARR_TOPK_LOGPROBS].astype(np.float64)
    # Exact but where float32 rounding of -lp * scale sits on a .5 boundary.
    frac = np.abs(np.abs(np.take_along_axis(lp32.astype(np.float64), order, -1)) * s % 1 - 0.5)
    assert np.array_equal(got[frac > 1e-4], want[frac > 1e-4])
    assert (frac > 1e-4).mean() > 0.99
    dec = codec.decode_arrays(enc, encoding=spec.ENC_IDSORT_Q8, scale=scale)
    np.testing.assert_allclose(dec.logprobs.astype(np.float64), -want / s, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(dec.ids, np.sort(ids, axis=-1))


def test_logprobs_are_quantized_from_float32_not_a_coarser_type():
    # -12.534375 * 16 = 200.55 -> code 201; a float16 input (-12.53125) would give 200.5 -> 200.
    lp = np.array([[-0.0625, -12.534375]], dtype=np.float32)
    enc = codec.encode_arrays(np.array([[3, 5]]), lp, encoding=spec.ENC_IDSORT_Q8, vocab_size=8, scale=16)
    assert enc[spec.ARR_TOPK_LOGPROBS].tolist() == [[1, 201]]


def test_mismatched_ids_and_logprobs_shapes_are_refused():
    with pytest.raises(ValueError, match=r"top-k ids shape \(2, 4\) != logprobs shape \(2, 3\)"):
        codec.encode_arrays(np.zeros((2, 4), dtype=np.int64), np.zeros((2, 3)), encoding=spec.ENC_RANK_F16,
                            vocab_size=8)


def test_tail_encoding_roundtrip_through_the_tuple_api_keeps_the_tail_array():
    rng = np.random.default_rng(2)
    n, k, vocab = 16, 5, 70000  # ids above 2**16: a wide id type
    ids = _ids(rng, n, k, vocab)
    lp64 = np.log(rng.dirichlet(np.full(k + 3, 5.0), size=n)[:, :k])  # 3 entries' mass outside the top-k
    lp64 = -np.sort(-lp64, axis=-1)
    assert lp64.min() > -7.0  # above the encoding's floor (code 254 / scale 32): every entry is kept
    stored = codec.encode_topk(ids, lp64.astype(np.float32), encoding=spec.ENC_IDSORT_Q8_TAIL, vocab_size=vocab)
    assert len(stored) == 3
    dec = codec.sort_by_rank(codec.decode_topk(*stored, encoding=spec.ENC_IDSORT_Q8_TAIL))
    tail64 = np.log1p(-np.exp(lp64).sum(axis=-1))
    assert dec.log_tail is not None
    np.testing.assert_allclose(dec.log_tail.astype(np.float64), tail64, rtol=0, atol=2e-3 * np.abs(tail64).max() + 1e-3)
    assert dec.ids.dtype.kind == "i" and dec.ids.max() >= 1 << 16
    # every id comes back with its log-prob (the encoding is exact up to q8 quantization at TAIL scale 32)
    kept = np.isfinite(dec.logprobs)
    assert kept.all()
    for r in range(n):
        want = dict(zip(ids[r].tolist(), lp64[r].tolist()))
        got = dict(zip(dec.ids[r].tolist(), dec.logprobs[r].astype(np.float64).tolist()))
        assert set(got) == set(want)
        assert max(abs(got[i] - want[i]) for i in want) < 0.06


@pytest.mark.parametrize("enc", [spec.ENC_IDSORT_Q8, spec.ENC_RANK_F16])
def test_decode_topk_takes_the_arrays_in_the_encodings_order(enc):
    ids = np.array([[7, 2, 9]])
    lp = np.array([[-0.5, -1.0, -3.0]], dtype=np.float32)
    a, b = codec.encode_topk(ids, lp, encoding=enc, vocab_size=300)
    named = codec.encode_arrays(ids, lp, encoding=enc, vocab_size=300)
    assert [x.tolist() for x in named.values()] == [a.tolist(), b.tolist()]
    ranked = codec.sort_by_rank(codec.decode_topk(a, b, encoding=enc))
    assert ranked.ids.tolist() == [[7, 2, 9]]
    np.testing.assert_allclose(ranked.logprobs, lp, atol=1 / 32)


def test_sort_by_rank_orders_by_logprob_then_id_with_absent_last_and_keeps_the_tail():
    ninf = -np.inf
    ids = np.array([[9, 4, 7, 4, 1], [5, 3, 8, 2, 6]], dtype=np.int32)
    lp = np.array([[ninf, -1.0, -0.5, ninf, -1.0], [-2.0, -2.0, -0.125, -2.0, -3.0]], dtype=np.float32)
    tail = np.array([-0.7, -1.3], dtype=np.float32)
    out = codec.sort_by_rank(TopK(ids, lp, tail))
    assert out.ids.tolist() == [[7, 1, 4, 4, 9], [8, 2, 3, 5, 6]]
    assert out.logprobs.tolist() == [[-0.5, -1.0, -1.0, ninf, ninf], [-0.125, -2.0, -2.0, -2.0, -3.0]]
    assert out.log_tail is tail
    # pairs are kept together
    for r in range(2):
        pairs = sorted(zip(out.ids[r].tolist(), out.logprobs[r].tolist()))
        assert pairs == sorted(zip(ids[r].tolist(), lp[r].tolist()))
