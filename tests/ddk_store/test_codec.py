"""Top-k encodings: round trips (hypothesis) and hand-checked values."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ddk_store import codec, spec


def _random_topk(rng, shape, k, vocab, spread=12.0):
    ids = np.stack([rng.choice(vocab, size=k, replace=False) for _ in range(int(np.prod(shape)))]).reshape(*shape, k)
    lp = -np.sort(rng.uniform(0, spread, size=(*shape, k)), axis=-1)
    return ids, lp.astype(np.float32)


def test_idsort_hand_example():
    ids = np.array([[7, 2, 9]])
    lp = np.array([[-0.1, -1.0, -3.04]], dtype=np.float32)
    s_ids, s_lp = codec.encode_topk(ids, lp, encoding=spec.ENC_IDSORT_Q8, vocab_size=10, scale=16)
    # sorted by id: 2, 7, 9 -> deltas 2, 5, 2; logprobs in that order: -1.0 -> 16, -0.1 -> 2 (1.6 rounds), -3.04 -> 49
    assert s_ids.tolist() == [[2, 5, 2]]
    assert s_lp.tolist() == [[16, 2, 49]]
    dec = codec.decode_topk(s_ids, s_lp, encoding=spec.ENC_IDSORT_Q8, scale=16)
    assert dec.ids.tolist() == [[2, 7, 9]]
    np.testing.assert_allclose(dec.logprobs, [[-1.0, -0.125, -3.0625]])
    ranked = codec.sort_by_rank(dec)
    assert ranked.ids.tolist() == [[7, 2, 9]]


def test_idsort_saturates_below_floor():
    s_ids, s_lp = codec.encode_topk(np.array([[0, 1]]), np.array([[-0.5, -40.0]]), encoding=spec.ENC_IDSORT_Q8,
                                    vocab_size=4, scale=16)
    assert s_lp.tolist() == [[8, spec.Q8_MAX]]


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 16), vocab=st.sampled_from([17, 300, 65534, 70000]), n=st.integers(1, 5),
       enc=st.sampled_from((spec.ENC_IDSORT_Q8, spec.ENC_RANK_F16)), seed=st.integers(0, 2**16))
def test_roundtrip_property(k, vocab, n, enc, seed):
    rng = np.random.default_rng(seed)
    k = min(k, vocab)
    ids, lp = _random_topk(rng, (n, 3), k, vocab)
    s_ids, s_lp = codec.encode_topk(ids, lp, encoding=enc, vocab_size=vocab)
    assert s_ids.dtype == codec.id_dtype(vocab)
    dec = codec.sort_by_rank(codec.decode_topk(s_ids, s_lp, encoding=enc))
    # Same (id -> logprob) pairs, up to quantization.
    tol = 1 / 32 + 1e-6 if enc == spec.ENC_IDSORT_Q8 else 8e-3
    for pos in np.ndindex(n, 3):
        want = dict(zip(ids[pos].tolist(), lp[pos].tolist()))
        got = dict(zip(dec.ids[pos].tolist(), dec.logprobs[pos].tolist()))
        assert set(want) == set(got)
        for i, v in want.items():
            assert abs(got[i] - v) <= tol * max(1.0, abs(v) if enc == spec.ENC_RANK_F16 else 1.0)


def test_unknown_encoding_is_refused():
    with pytest.raises(Exception, match="unknown top-k encoding"):
        codec.encode_topk(np.zeros((1, 1)), np.zeros((1, 1)), encoding="topk-magic", vocab_size=4)


def test_sort_by_rank_breaks_ties_by_ascending_id():
    # (a quantized store holds many equal log-probs: the order among them is part of the contract)
    topk = codec.TopK(np.array([[5, 2, 9]]), np.array([[-1.0, -1.0, -0.5]], dtype=np.float32), None)
    out = codec.sort_by_rank(topk)
    assert out.ids.tolist() == [[9, 2, 5]] and out.logprobs.tolist() == [[-0.5, -1.0, -1.0]]


def test_rank_f16_clamps_positive_logprobs_to_zero():
    # a backend can hand over +1e-3 for a sure token (rounding); a stored log-prob > 0 is what verify calls corrupt
    s_ids, s_lp = codec.encode_topk(np.array([[3, 1]]), np.array([[1e-3, -2.0]], dtype=np.float32),
                                    encoding=spec.ENC_RANK_F16, vocab_size=4)
    assert s_lp.tolist() == [[0.0, -2.0]]
    dec = codec.decode_topk(s_ids, s_lp, encoding=spec.ENC_RANK_F16)
    assert dec.ids.tolist() == [[3, 1]] and dec.logprobs.tolist() == [[0.0, -2.0]]
