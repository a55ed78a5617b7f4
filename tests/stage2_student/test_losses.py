"""The fused top-k KD loss: full-vocabulary parity, hand-computed cases, gradients, masks, chunking, padding."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stage2_student.losses import distill_loss, tempered_teacher, token_nll_sum

# float() of a loss that requires grad is what these tests mean to do.
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad:UserWarning")


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
def test_fused_gradient_matches_the_float64_formula(tail, T):
    logits, targets, ids, lp, mask, _ = make_case(pad=3)
    out = distill_loss(logits, targets, ids, lp, mask, vocab_size=23, gamma=0.7, temperature=T, tail=tail,
                       chunk_size=5)
    (2.5 * out.total).backward()  # a non-unit upstream gradient, as under gradient accumulation
    g = logits.grad.clone()
    ref_x = logits.detach().double().requires_grad_(True)  # the same fp32 logits, in float64
    ref = formula_loss(ref_x, targets, ids, lp, mask, V=23, gamma=0.7, T=T, tail=tail)
    assert float(out.total) == pytest.approx(float(ref), rel=1e-5)
    (2.5 * ref).backward()
    torch.testing.assert_close(g.double(), ref_x.grad, atol=1e-6, rtol=1e-5)
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


@pytest.mark.parametrize("tail", ["bucket", "renorm"])
def test_a_masked_position_with_no_teacher_entry_is_not_nan(tail):
    """A padding position whose teacher slots are all absent (-inf): masked, it counts for nothing, in both tails
    (renorm's log_softmax over all -inf is NaN there, and NaN x weight 0 stayed NaN)."""
    logits, targets, ids, lp, mask, _ = make_case()
    mask[:] = True
    mask[1, -1] = False
    padded = lp.clone()
    padded[1, -1] = -math.inf
    logits.grad = None
    out = distill_loss(logits, targets, ids, padded, mask, vocab_size=23, gamma=0.2, tail=tail)
    out.total.backward()
    grad = logits.grad.clone()
    logits.grad = None
    ref = distill_loss(logits, targets, ids, lp, mask, vocab_size=23, gamma=0.2, tail=tail)  # the entries it had
    ref.total.backward()
    assert math.isfinite(float(out.total)) and float(out.total) == pytest.approx(float(ref.total), rel=1e-6)
    torch.testing.assert_close(grad, logits.grad)


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


# ------------------------------------------------------------------------------------ exact tail (issue 13)
def formula_loss(logits, targets, ids, lp, mask, *, V, gamma, T, tail, t2_scale=False):
    """The loss in float64, written from its definition (not from the implementation): full softmax over V, the
    student's tail as the plain sum of its probabilities outside the teacher's top-k, the teacher's tail as
    1 - sum of its stored top-k probabilities, spread evenly over the other V - K ids when tempered."""
    B, P = targets.shape
    z = logits[:, :P, :V].double()
    ce = -torch.log_softmax(z, -1).gather(-1, targets[..., None]).squeeze(-1)  # (B, P)
    q = torch.softmax(z / T, -1)  # (B, P, V)
    q_k = q.gather(-1, ids)
    outside = torch.ones_like(q).scatter(-1, ids, 0.0)
    m_s = (q * outside).sum(-1)  # a sum of positives: no cancellation in float64
    p1 = lp.double().exp()
    s = p1.sum(-1, keepdim=True)
    p1 = torch.where(s > 1, p1 / s, p1)
    m1 = (1 - p1.sum(-1)).clamp(min=0)
    K = ids.shape[-1]
    if tail == "bucket":
        a = p1 ** (1 / T)
        t_tail = (V - K) * (m1 / (V - K)) ** (1 / T)
        norm = a.sum(-1) + t_tail
        p, m_t = a / norm[..., None], t_tail / norm
        kl = (p * (p.log() - q_k.log())).sum(-1) + m_t * (m_t.log() - m_s.log())
    else:
        a = p1 ** (1 / T)
        p_hat, q_hat = a / a.sum(-1, keepdim=True), q_k / q_k.sum(-1, keepdim=True)
        kl = (p_hat * (p_hat.log() - q_hat.log())).sum(-1)
    if t2_scale:
        kl = kl * T**2
    m = mask.double()
    return ((ce + gamma * kl) * m).sum() / m.sum()


def confident_case(student_tail, T, *, B=2, P=5, V=300, K=8, teacher_tail=0.01, seed=0):
    """float64 logits whose tempered softmax puts exactly ``student_tail`` outside the teacher's top-k ids, and a
    teacher whose stored top-k log-probs (float32, as in a store) leave ``teacher_tail`` for the other ids."""
    g = torch.Generator().manual_seed(seed)
    zt = torch.randn(B, P + 1, V, generator=g, dtype=torch.float64)
    ids = torch.stack([torch.randperm(V, generator=g)[:K] for _ in range(B * P)]).reshape(B, P, K)
    top = torch.zeros(B, P + 1, V, dtype=torch.bool)
    top[:, :P].scatter_(-1, ids, True)
    lse_top = torch.logsumexp(zt.masked_fill(~top, -math.inf), -1)[:, :P]
    lse_tail = torch.logsumexp(zt.masked_fill(top, -math.inf), -1)[:, :P]
    shift = lse_tail - lse_top + math.log((1 - student_tail) / student_tail)  # top mass / tail mass = (1-m)/m
    zt[:, :P] += torch.where(top[:, :P], shift[..., None], torch.zeros(()))
    logits = zt * T
    lp = (torch.log_softmax(torch.randn(B, P, K, generator=g, dtype=torch.float64), -1)
          + math.log(1 - teacher_tail)).float()
    targets = torch.randint(0, V, (B, P), generator=g)
    mask = torch.ones(B, P, dtype=torch.bool)
    mask[0, 1] = False
    return logits, targets, ids, lp, mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tail", ["bucket", "renorm"])
@pytest.mark.parametrize("T", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("student_tail", [1e-3, 1e-6, 1e-9, 1e-12])
def test_tiny_student_tail_matches_float64_formula(student_tail, T, tail, dtype):
    logits64, targets, ids, lp, mask = confident_case(student_tail, T)
    V = logits64.shape[-1]
    x = logits64.to(dtype).requires_grad_(True)
    out = distill_loss(x, targets, ids, lp, mask, vocab_size=V, gamma=0.5, temperature=T, tail=tail,
                       t2_scale=T != 1.0, chunk_size=6)
    (1.5 * out.total).backward()
    ref_x = x.detach().double().requires_grad_(True)  # the same (rounded) logits, in float64
    ref = formula_loss(ref_x, targets, ids, lp, mask, V=V, gamma=0.5, T=T, tail=tail, t2_scale=T != 1.0)
    (1.5 * ref).backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert float(out.total) == pytest.approx(float(ref), rel=tol)
    g, g_ref = x.grad.double(), ref_x.grad
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g, g_ref, rtol=tol * 10, atol=tol * float(g_ref.abs().max()))
    assert float((g - g_ref).norm() / g_ref.norm()) < tol


def test_issue_case_vocab_49152_gradient_stays_exact():
    """The reproduction from issue 13: V = 49,152, a 1% teacher tail, a student tail of 1e-9 in fp32. The old
    1 - sum(q) tail gave a gradient norm of 1e16-1e19 here."""
    logits64, targets, ids, lp, mask = confident_case(1e-9, 1.0, B=1, P=4, V=49_152, K=64)
    x = logits64.float().requires_grad_(True)
    out = distill_loss(x, targets, ids, lp, mask, gamma=1.0)
    out.total.backward()
    ref_x = x.detach().double().requires_grad_(True)
    ref = formula_loss(ref_x, targets, ids, lp, mask, V=49_152, gamma=1.0, T=1.0, tail="bucket")
    ref.backward()
    assert float(out.total) == pytest.approx(float(ref), rel=1e-5)
    assert float(x.grad.double().norm()) == pytest.approx(float(ref_x.grad.norm()), rel=1e-5)
    # element by element too: a gradient of the right size in the wrong places would pass the norm
    scale = float(ref_x.grad.abs().max())
    torch.testing.assert_close(x.grad.double(), ref_x.grad, rtol=1e-4, atol=1e-5 * scale)


def test_float64_logits_are_computed_in_float64():
    logits, targets, ids, lp, mask, _ = make_case()
    x = logits.detach().double().requires_grad_(True)
    out = distill_loss(x, targets, ids, lp, mask, vocab_size=23, gamma=0.7, temperature=2.0)
    assert out.total.dtype == torch.float64
    out.total.backward()
    ref_x = x.detach().clone().requires_grad_(True)
    ref = formula_loss(ref_x, targets, ids, lp, mask, V=23, gamma=0.7, T=2.0, tail="bucket")
    ref.backward()
    assert float(out.total) == pytest.approx(float(ref), rel=1e-12)
    torch.testing.assert_close(x.grad[:, :6, :23], ref_x.grad[:, :6, :23], rtol=1e-10, atol=1e-13)


def test_a_quantized_top_k_summing_past_one_is_renormalized_and_a_tiny_tail_keeps_its_digits():
    from stage2_student.losses import tempered_teacher

    # (0.6, 0.4001): 1e-4 over one, as quantized log-probs can give: renormalized, no tail
    lp, log_tail = tempered_teacher(torch.tensor([[math.log(0.6), math.log(0.4001)]], dtype=torch.float64), 10, 1.0)
    assert float(lp.exp().sum()) == pytest.approx(1.0, abs=1e-12) and float(log_tail) == -math.inf
    # a top-1 of 1 - 1e-6 in float32: the tail 1e-6 must come out to 4 digits (log(1 - s) loses them)
    _, log_tail = tempered_teacher(torch.tensor([[math.log1p(-1e-6)]], dtype=torch.float32), 10, 1.0)
    assert float(log_tail) == pytest.approx(math.log(1e-6), rel=1e-4)


def test_full_vocab_top_k_of_a_teacher_summing_below_one_matches_the_formula():
    """K = V with stored (quantized) teacher probabilities summing to 0.98: no id lies outside the top-k, so there is
    no tail outcome and the KL is sum_j p_j (log p_j - log q_j) over the stored p as they are. Its gradient is
    (sum_j p_j) q - p; a gradient that takes the teacher as normalized (q - p) is off by 0.02 q."""
    V = 5
    p = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.03], dtype=torch.float64)
    ids = torch.tensor([3, 0, 4, 1, 2]).view(1, 1, V)  # any order
    lp = p.log()[ids.view(V)].view(1, 1, V)
    z = torch.randn(1, 2, V, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    targets = torch.tensor([[2]])
    for gamma in (1.0, 0.2):
        x = z.clone().requires_grad_(True)
        out = distill_loss(x, targets, ids, lp, gamma=gamma)
        out.total.backward()
        ref_x = z.clone().requires_grad_(True)
        logq = torch.log_softmax(ref_x[0, 0], -1)
        ref = -logq[2] + gamma * (p * (p.log() - logq)).sum()  # p indexed by token id
        ref.backward()
        assert float(out.total) == pytest.approx(float(ref), rel=1e-12)
        torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kw", [dict(temperature=0.0), dict(temperature=-1.0), dict(gamma=-0.1)])
def test_a_negative_gamma_or_a_non_positive_temperature_is_refused(kw):
    from stage2_student.fused_loss import fused_distill_loss

    logits, targets, ids, lp, mask, _ = make_case()
    with pytest.raises(ValueError, match="gamma >= 0 and temperature > 0"):
        distill_loss(logits, targets, ids, lp, mask, vocab_size=23, **kw)
    with pytest.raises(ValueError, match="gamma >= 0 and temperature > 0"):
        fused_distill_loss(logits.detach()[..., :23], torch.eye(23), targets, ids, lp, mask, **kw)
