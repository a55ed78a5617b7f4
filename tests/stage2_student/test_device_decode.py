"""The default encoding decoded on the training device (stage2_student.device_decode, data.StoredBatch) gives the
batch the host decoder gives, and both match a float64 decode written from the format's formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddk_store import spec
from ddk_store.testing import make_tiny_store
from stage2_student.data import Batch, Prefetcher, StoredBatch, read_batch

DOMAINS = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module", params=[64, 70_000], ids=["uint16-deltas", "uint32-deltas"])
def store(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("dev") / "store"
    return make_tiny_store(str(path), domains=DOMAINS, train_rows=12, heldout_rows=2, seq_len=16, top_k=8,
                           vocab_size=request.param)


PLANS = [np.array([[0, 3], [2, 1], [0, 3], [1, 11], [2, 0]]),  # several domains, a repeated row
         np.array([[1, 5], [1, 2]])]  # one domain (the no-copy path)


def float64_decode(store, pairs):
    """Ids, log-probs and tail of ``pairs`` from the stored arrays, by store-format.md: ids are the cumulative sum
    of the deltas; a kept entry's log-prob is -code/scale (absent: code 254, -inf), shifted per position by
    log(1 - m) - log(sum of the kept probabilities), m = exp(tail)."""
    ids, lps, tails = [], [], []
    for d, r in pairs:
        st = store.read_stored_rows(DOMAINS[d], "train", [r]).topk
        deltas = st[spec.ARR_TOPK_IDS][0].astype(np.int64)
        codes = st[spec.ARR_TOPK_LOGPROBS][0].astype(np.float64)
        tail = st[spec.ARR_TOPK_TAIL][0].astype(np.float64)
        lp = np.where(codes >= 254, -np.inf, -codes / store.meta.logprob_scale)
        shift = np.log(1 - np.exp(tail)) - np.log(np.exp(lp).sum(-1))
        ids.append(np.cumsum(deltas, -1))
        lps.append(lp + np.where(np.isfinite(shift), shift, 0.0)[:, None])
        tails.append(tail)
    return np.stack(ids), np.stack(lps), np.stack(tails)


@pytest.mark.parametrize("plan", range(len(PLANS)))
def test_device_decode_equals_the_host_decode_and_the_float64_formula(store, plan):
    pairs = PLANS[plan]
    host = read_batch(store, DOMAINS, pairs, decode="host")
    stored = read_batch(store, DOMAINS, pairs, decode="device")
    assert isinstance(stored, StoredBatch) and isinstance(host, Batch)
    assert stored.codes.dtype == torch.uint8 and stored.tail.dtype == torch.float16
    assert stored.deltas.dtype == (torch.uint16 if store.meta.tokenizer.vocab_size < 65_535 else torch.uint32)
    dev = stored.to("cpu")
    assert dev.tokens.dtype == torch.int64 and dev.topk_ids.dtype == torch.int32
    assert torch.equal(dev.tokens, host.tokens) and torch.equal(dev.domains, host.domains)
    assert torch.equal(dev.topk_ids, host.topk_ids)
    assert torch.equal(dev.topk_log_tail, host.topk_log_tail)
    assert torch.equal(torch.isinf(dev.topk_logprobs), torch.isinf(host.topk_logprobs))
    finite = torch.isfinite(host.topk_logprobs)
    assert torch.allclose(dev.topk_logprobs[finite], host.topk_logprobs[finite], rtol=0, atol=2e-6)

    ids, lps, tail = float64_decode(store, pairs)
    np.testing.assert_array_equal(dev.topk_ids.numpy(), ids)
    np.testing.assert_array_equal(dev.topk_log_tail.numpy(), tail.astype(np.float32))
    assert np.array_equal(np.isinf(dev.topk_logprobs.numpy()), np.isinf(lps))
    np.testing.assert_allclose(dev.topk_logprobs.numpy()[np.isfinite(lps)], lps[np.isfinite(lps)], rtol=0, atol=1e-5)
    # the decoded entries and the tail are a distribution
    mass = np.exp(dev.topk_logprobs.double().numpy()).sum(-1) + np.exp(tail)
    np.testing.assert_allclose(mass, 1.0, atol=1e-5)


def test_prefetcher_delivers_stored_batches_in_plan_order(store):
    with_device = list(Prefetcher(store, DOMAINS, PLANS, workers=2, decode="device"))
    assert all(isinstance(b, StoredBatch) for b in with_device)
    for b, pairs in zip(with_device, PLANS):
        assert torch.equal(b.to("cpu").topk_ids, read_batch(store, DOMAINS, pairs).topk_ids)
    assert with_device[0].num_tokens == len(PLANS[0]) * store.seq_len


def test_other_encodings_decode_on_the_host(tmp_path):
    sampled = make_tiny_store(str(tmp_path / "s"), domains=DOMAINS, train_rows=4, heldout_rows=2, seq_len=16, top_k=8,
                              encoding=spec.ENC_SAMPLED)
    assert isinstance(read_batch(sampled, DOMAINS, PLANS[1][:, :] % [3, 4], decode="device"), Batch)


def test_unknown_decode_place_is_refused(store):
    with pytest.raises(ValueError, match="decode must be one of"):
        read_batch(store, DOMAINS, PLANS[1], decode="gpu")
