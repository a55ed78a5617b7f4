"""topk_logprobs: hand-checked values, fp32 upcast, realized-token log-prob, and a naive full-vocab reference."""

from __future__ import annotations

import math

import pytest
import torch

from stage1_teacher.topk import topk_logprobs


def test_hand_checked_distribution():
    logits = torch.log(torch.tensor([[[0.1, 0.2, 0.3, 0.4]]]))  # [1, 1, 4], already normalized
    tk = topk_logprobs(logits, k=2, targets=torch.tensor([[0]]))
    assert tk.ids.tolist() == [[[3, 2]]]
    assert tk.logprobs[0, 0].tolist() == pytest.approx([math.log(0.4), math.log(0.3)], abs=1e-6)
    assert tk.target_logprobs.item() == pytest.approx(math.log(0.1), abs=1e-6)
    assert tk.logprobs.dtype == torch.float32


def test_shift_invariance_and_temperature():
    logits = torch.tensor([[[1.0, 2.0, 3.0]]])
    a = topk_logprobs(logits, 3)
    b = topk_logprobs(logits + 100.0, 3)
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5)
    t2 = topk_logprobs(logits, 3, temperature=2.0)
    z = math.log(sum(math.exp(x / 2) for x in (1.0, 2.0, 3.0)))
    assert t2.logprobs[0, 0, 0].item() == pytest.approx(1.5 - z, abs=1e-6)


def test_matches_naive_reference_and_upcasts_bf16():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 50, generator=g) * 4
    targets = torch.randint(0, 50, (3, 5), generator=g)
    tk = topk_logprobs(logits.bfloat16(), 7, targets=targets)
    x = logits.bfloat16().double()  # the same bf16 inputs, normalized in float64 from the formula
    ref = x - torch.logsumexp(x, -1, keepdim=True)
    assert tk.logprobs.dtype == torch.float32
    for b in range(3):
        for p in range(5):
            order = sorted(range(50), key=lambda i: -ref[b, p, i].item())[:7]
            ids = tk.ids[b, p].tolist()
            assert len(set(ids)) == 7
            # each id carries its own log-prob (ties may swap ids of equal value, never pair an id with another's)
            assert tk.logprobs[b, p].tolist() == pytest.approx(ref[b, p, ids].tolist(), abs=1e-6)
            assert tk.logprobs[b, p].tolist() == pytest.approx(ref[b, p, order].tolist(), abs=1e-6)
            left_out = [i for i in range(50) if i not in ids]  # nothing left out beats the last one kept
            assert float(ref[b, p, left_out].max()) <= float(tk.logprobs[b, p, -1]) + 1e-6
            assert tk.target_logprobs[b, p].item() == pytest.approx(ref[b, p, targets[b, p]].item(), abs=1e-6)
    assert (tk.logprobs[..., :-1] >= tk.logprobs[..., 1:]).all()  # rank order


def test_realized_token_outside_topk_is_kept_and_bad_args_fail():
    logits = torch.tensor([[[5.0, 4.0, 3.0, -9.0]]])
    tk = topk_logprobs(logits, 1, targets=torch.tensor([[3]]))
    assert tk.ids.tolist() == [[[0]]]
    assert tk.target_logprobs.item() < -10
    with pytest.raises(ValueError, match="k must be in"):
        topk_logprobs(logits, 5)
    with pytest.raises(ValueError, match=r"\[B, P, V\]"):
        topk_logprobs(logits[0], 1)


def test_consume_overwrites_only_when_asked_and_gives_the_same_values():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 30, generator=g) * 5
    targets = torch.randint(0, 30, (2, 4), generator=g)
    keep = logits.clone()
    a = topk_logprobs(logits, 5, targets=targets)
    assert torch.equal(logits, keep)  # default: the caller's logits are untouched
    ref = torch.log_softmax(keep, -1)
    b = topk_logprobs(logits[:, :-1], 5, targets=targets[:, :-1], consume=True)  # a view, as the hf backend passes
    assert not torch.equal(logits, keep)  # consumed: the buffer was reused for the exp pass
    assert torch.allclose(a.logprobs, ref.gather(-1, a.ids), atol=1e-6)
    assert torch.allclose(b.logprobs, a.logprobs[:, :-1], atol=1e-6)
    assert torch.equal(b.ids, a.ids[:, :-1])
    assert torch.allclose(b.target_logprobs, ref[:, :-1].gather(-1, targets[:, :-1, None]).squeeze(-1), atol=1e-6)
    assert torch.equal(logits[:, -1], keep[:, -1])  # outside the view nothing changed


def test_hf_backend_row_by_row_and_whole_batch_top_k_agree(tiny_teacher):
    """The CPU path (one row per top-k call) and the GPU path (the whole forward batch per call), run on CPU."""
    import numpy as np

    from stage1_teacher.backends import BackendOptions
    from stage1_teacher.backends.hf import HFBackend

    be = HFBackend(BackendOptions(model_dir=str(tiny_teacher), top_k=8, seq_len=32, device="cpu", batch_tokens=96))
    assert be.topk_rows == 1 and be.rows_per_batch == 3
    tokens = np.random.default_rng(0).integers(0, 200, size=(7, 32))  # 7 rows: batches of 3, 3 and 1
    a = be.score(tokens)
    be.topk_rows = 0
    b = be.score(tokens)
    assert np.array_equal(a.topk_ids, b.topk_ids)
    assert np.allclose(a.topk_logprobs, b.topk_logprobs, atol=1e-5)
    assert np.allclose(a.target_logprobs, b.target_logprobs, atol=1e-5)
    assert np.isfinite(a.target_logprobs).all() and (a.topk_logprobs <= 0).all()


def test_a_logit_far_above_the_rest_stays_finite():
    # shifting by the k-th logit instead of the largest would overflow exp(100 - (-1)) in float32 sums
    out = topk_logprobs(torch.tensor([[[100.0, 0.0, -1.0]]]), 2)
    assert torch.isfinite(out.logprobs).all()
    assert out.logprobs[0, 0].tolist() == pytest.approx([0.0, -100.0], abs=1e-4)
