"""The fused top-k KD loss: full-vocabulary parity, hand-computed cases, gradients, masks, chunking, padding."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stage2_student.losses import distill_loss, tempered_teacher, token_nll_sum

# float() of a loss that requires grad is what these tests mean to do.
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad:UserWarning")


def reference(logits, targets, ids, lp, mask, *, V, gamma, T, tail):
    """Plain autograd version of the same math: (B,P,V) copies everywhere, for tests only."""
    B, P = targets.shape
    z = logits[:, :P, :V].float()
    ce = F.cross_entropy(z.reshape(-1, V), targets.reshape(-1), reduction="none").reshape(B, P)
    lq = torch.log_softmax(z / T, -1).gather(-1, ids)
    if tail == "bucket":
        lpT, lmt = tempered_teacher(lp.reshape(-1, lp.shape[-1]), V, T)
        lpT, lmt = lpT.reshape(lp.shape), lmt.reshape(B, P)
        p, mt, ms = lpT.exp(), lmt.exp(), 1 - lq.exp().sum(-1)
        kl = (p * (lpT - lq)).sum(-1) + torch.xlogy(mt, mt) - mt * ms.log()
    else:
        ph, qh = torch.log_softmax(lp / T, -1), torch.log_softmax(lq, -1)
        kl = (ph.exp() * (ph - qh)).sum(-1)
    m = mask.float()
    return ((ce * m).sum() + gamma * (kl * m).sum()) / m.sum()


def make_case(B=3, T=7, V=23, K=5, pad=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V + pad, generator=g, dtype=torch.float64).float().requires_grad_(True)
    lp_full = torch.log_softmax(torch.randn(B, T - 1, V, generator=g) * 2, -1)
    lp, ids = lp_full.topk(K, -1)
    targets = torch.randint(0, V, (B, T - 1), generator=g)
    mask = torch.rand(B, T - 1, generator=g) > 0.3
    return logits, targets, ids, lp, mask, lp_full


def test_full_vocab_k_equals_torch_kl():
    B, T, V = 2, 9, 31
    logits, targets, ids, lp, mask, lp_full = make_case(B, T, V, K=V)
    out = distill_loss(logits, targets, ids, lp, vocab_size=V, gamma=1.0)
    # torch's own KL(teacher || student) over the whole vocabulary, token mean
    ls = torch.log_softmax(logits[:, : T - 1].float(), -1)
    kl = F.kl_div(ls.reshape(-1, V), lp_full.reshape(-1, V), log_target=True, reduction="batchmean")
    assert float(out.kl) == pytest.approx(float(kl), abs=1e-5)
    ce = F.cross_entropy(logits[:, : T - 1].reshape(-1, V), targets.reshape(-1))
    assert float(out.ce) == pytest.approx(float(ce), abs=1e-5)
    # and the gradient equals autograd's on CE + full KL
    out.total.backward()
    g_fused = logits.grad.clone()
    logits.grad = None
    ls = torch.log_softmax(logits[:, : T - 1].float(), -1)
    ref = F.cross_entropy(logits[:, : T - 1].reshape(-1, V), targets.reshape(-1)) + F.kl_div(
        ls.reshape(-1, V), lp_full.reshape(-1, V), log_target=True, reduction="batchmean")
    ref.backward()
    torch.testing.assert_close(g_fused, logits.grad, atol=1e-6, rtol=1e-5)


def test_hand_computed_bucket_and_renorm():
    # One position, V = 3, K = 1. Student logits 0 -> q = [1/3]*3. Teacher top-1: token 0 with p = 0.5.
    logits = torch.zeros(1, 2, 3)
    targets = torch.tensor([[1]])
    ids = torch.tensor([[[0]]])
    lp = torch.tensor([[[math.log(0.5)]]])
    out = distill_loss(logits, targets, ids, lp, gamma=1.0, tail="bucket")
    # bucket: p = (0.5 | 0.5), q = (1/3 | 2/3): KL = 0.5 ln(1.5) + 0.5 ln(0.75)
    kl = 0.5 * math.log(0.5 / (1 / 3)) + 0.5 * math.log(0.5 / (2 / 3))
    assert float(out.kl) == pytest.approx(kl, abs=1e-6)
    assert float(out.ce) == pytest.approx(math.log(3), abs=1e-6)
    assert float(out.total) == pytest.approx(math.log(3) + kl, abs=1e-6)
    # renorm over a single id is always 0
    assert float(distill_loss(logits, targets, ids, lp, gamma=1.0, tail="renorm").kl) == pytest.approx(0.0, abs=1e-7)
    # renorm, K = 2: teacher (0.6, 0.2) -> (0.75, 0.25); student uniform -> (0.5, 0.5)
    ids2 = torch.tensor([[[0, 2]]])
    lp2 = torch.log(torch.tensor([[[0.6, 0.2]]]))
    kl2 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert float(distill_loss(logits, targets, ids2, lp2, gamma=1.0, tail="renorm").kl) == pytest.approx(kl2, abs=1e-6)
    # gamma scales only the KL
    o = distill_loss(logits, targets, ids, lp, gamma=0.2)
    assert float(o.total) == pytest.approx(math.log(3) + 0.2 * kl, abs=1e-6)


def test_temperature_scaling_by_hand():
    # T = 2 with K = V: the loss is the KL between softmax(z_t / 2) and softmax(z_s / 2).
    V = 4
    zt = torch.tensor([2.0, 0.0, -1.0, 1.0])
    zs = torch.tensor([0.5, 0.1, 0.0, -0.3])
    lp_t1 = torch.log_softmax(zt, -1)
    lp_sorted, ids = lp_t1.topk(V)
    logits = zs.view(1, 1, V).repeat(1, 2, 1)
    p, q = torch.softmax(zt / 2, -1), torch.softmax(zs / 2, -1)
    expect = float((p * (p / q).log()).sum())
    out = distill_loss(logits, torch.tensor([[0]]), ids.view(1, 1, V), lp_sorted.view(1, 1, V), gamma=1.0,
                       temperature=2.0)
    assert float(out.kl) == pytest.approx(expect, abs=1e-6)
    out2 = distill_loss(logits, torch.tensor([[0]]), ids.view(1, 1, V), lp_sorted.view(1, 1, V), gamma=1.0,
                        temperature=2.0, t2_scale=True)
    assert float(out2.kl) == pytest.approx(4 * expect, abs=1e-5)


@pytest.mark.parametrize("tail", ["bucket", "renorm"])
@pytest.mark.parametrize("T", [1.0, 0.5, 2.0])
def test_fused_gradient_matches_autograd_reference(tail, T):
    logits, targets, ids, lp, mask, _ = make_case(pad=3)
    out = distill_loss(logits, targets, ids, lp, mask, vocab_size=23, gamma=0.7, temperature=T, tail=tail,
                       chunk_size=5)
    (2.5 * out.total).backward()  # a non-unit upstream gradient, as under gradient accumulation
    g = logits.grad.clone()
    logits.grad = None
    ref = reference(logits, targets, ids, lp, mask, V=23, gamma=0.7, T=T, tail=tail)
    assert float(out.total) == pytest.approx(float(ref), rel=1e-5)
    (2.5 * ref).backward()
    torch.testing.assert_close(g, logits.grad, atol=1e-6, rtol=1e-5)
    assert torch.all(g[..., 23:] == 0)  # padded vocabulary columns get no gradient


def test_chunking_does_not_change_the_result():
    logits, targets, ids, lp, mask, _ = make_case(B=4, T=11)
    outs = []
    for chunk in (1, 7, 10, 10_000):
        logits.grad = None
        o = distill_loss(logits, targets, ids, lp, mask, vocab_size=23, chunk_size=chunk)
        o.total.backward()
        outs.append((float(o.total), logits.grad.clone()))
    for total, grad in outs[1:]:
        assert total == pytest.approx(outs[0][0], rel=1e-6)
        torch.testing.assert_close(grad, outs[0][1])


def test_all_masked_is_zero_not_nan():
    logits, targets, ids, lp, mask, _ = make_case()
    out = distill_loss(logits, targets, ids, lp, torch.zeros_like(mask), vocab_size=23)
    assert float(out.total) == 0.0 and float(out.ce) == 0.0 and float(out.kl) == 0.0
    out.total.backward()
    assert torch.all(logits.grad == 0)


def test_masked_positions_do_not_count():
    logits, targets, ids, lp, mask, _ = make_case()
    mask[:] = True
    mask[0, 2] = False
    base = float(distill_loss(logits, targets, ids, lp, mask, vocab_size=23).total)
    targets2 = targets.clone()
    targets2[0, 2] = (targets[0, 2] + 1) % 23  # change only a masked target
    assert float(distill_loss(logits, targets2, ids, lp, mask, vocab_size=23).total) == pytest.approx(base)


def test_quantized_teacher_mass_over_one_is_renormalized():
    lp = torch.log(torch.tensor([[0.7, 0.4]]))  # sums to 1.1 after rounding
    lpT, log_tail = tempered_teacher(lp, vocab_size=10, temperature=1.0)
    assert float(lpT.exp().sum()) == pytest.approx(1.0, abs=1e-6)
    assert float(log_tail.exp()) == 0.0


def test_token_nll_sum():
    logits, targets, *_ = make_case()
    nll, n = token_nll_sum(logits, targets, vocab_size=23, chunk_size=4)
    ref = F.cross_entropy(logits[:, :6].reshape(-1, 23), targets.reshape(-1), reduction="sum")
    assert nll == pytest.approx(float(ref), rel=1e-6) and n == targets.numel()


def test_bad_arguments():
    logits, targets, ids, lp, mask, _ = make_case()
    with pytest.raises(ValueError, match="tail"):
        distill_loss(logits, targets, ids, lp, tail="full")
    with pytest.raises(ValueError, match="do not cover"):
        distill_loss(logits, targets, ids, lp, vocab_size=1000)
