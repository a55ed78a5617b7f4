"""Stage 2 with the store's exact tail (format 1.1): tempered_teacher uses it, absent top-k slots are skipped, and
the decoded batch carries it. References are written from the formulas in float64, not from the implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddk_store import spec
from ddk_store.testing import make_tiny_store
from stage2_student.data import read_batch
from stage2_student.fused_loss import fused_distill_loss
from stage2_student.losses import distill_loss, tempered_teacher

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad:UserWarning")


def test_tempered_teacher_uses_the_exact_tail():
    # top-1 0.97 and a 1% tail: stored with 8-bit rounding the top-k sums past 1 and 1 - sum would give no tail
    p = torch.tensor([[0.97, 0.015, 0.005]], dtype=torch.float64)
    stored = torch.log(p) + torch.tensor([[0.03, -0.01, 0.02]], dtype=torch.float64)  # quantization-like errors
    log_tail = torch.tensor([math.log(0.01)], dtype=torch.float64)
    lp, lt = tempered_teacher(stored, 50, 1.0, log_tail)
    z = math.log(float(stored.exp().sum()) + 0.01)
    assert float(lt[0]) == pytest.approx(math.log(0.01) - z, abs=1e-12)
    assert float(lp.exp().sum() + lt.exp().sum()) == pytest.approx(1.0, abs=1e-12)
    _, lt_old = tempered_teacher(stored, 50, 1.0)
    assert float(lt_old[0]) == -math.inf  # the old path: the tail is lost
    # T = 2: the exact tail spread evenly over the V - K other ids, then everything normalized
    lp2, lt2 = tempered_teacher(stored, 50, 2.0, log_tail)
    a = (stored[0] - z) / 2
    other = math.log(47) + (math.log(0.01) - z - math.log(47)) / 2
    zz = math.log(float(a.exp().sum()) + math.exp(other))
    assert float(lt2[0]) == pytest.approx(other - zz, abs=1e-12)
    assert torch.allclose(lp2[0], a - zz, atol=1e-12)


def reference_loss(logits, targets, ids, lp, log_tail, gamma):
    """CE + gamma * bucket KL at T = 1 in float64, over the kept entries (finite log-prob) plus the exact tail."""
    B, P, V = logits.shape
    logq = torch.log_softmax(logits, -1)
    total = 0.0
    for b in range(B):
        for t in range(P):
            ce = -logq[b, t, targets[b, t]]
            kept = [(int(i), float(l)) for i, l in zip(ids[b, t], lp[b, t]) if math.isfinite(l)]
            s = sum(math.exp(l) for _, l in kept) + math.exp(float(log_tail[b, t]))
            kl = sum(math.exp(l) / s * (l - math.log(s) - logq[b, t, i]) for i, l in kept)
            q_kept = sum(logq[b, t, i].exp() for i, _ in kept)
            m_t = math.exp(float(log_tail[b, t])) / s
            kl = kl + m_t * (math.log(m_t) - torch.log1p(-q_kept))
            total = total + ce + gamma * kl
    return total / (B * P)


def case(seed=0, B=2, T=5, V=17, K=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T - 1, V, generator=g, dtype=torch.float64).requires_grad_(True)
    full = torch.log_softmax(torch.randn(B, T - 1, V, generator=g, dtype=torch.float64) * 2, -1)
    lp, ids = full.topk(K, -1)
    log_tail = torch.log1p(-lp.exp().sum(-1))
    # drop the two least likely entries of every other position: absent slots (-inf, repeating the last kept id)
    lp, ids = lp.clone(), ids.clone()
    drop = torch.zeros_like(lp, dtype=torch.bool)
    drop[:, ::2, K - 2:] = True
    dropped = torch.logsumexp(lp.masked_fill(~drop, -math.inf), -1)
    log_tail = torch.where(drop.any(-1), torch.logaddexp(log_tail, dropped), log_tail)
    lp = lp.masked_fill(drop, -math.inf)
    ids = torch.where(drop, ids[..., K - 3:K - 2].expand_as(ids), ids)
    targets = torch.randint(0, V, (B, T - 1), generator=g)
    return logits, targets, ids, lp, log_tail


@pytest.mark.parametrize("gamma", [0.5, 1.0])
def test_loss_with_exact_tail_and_absent_slots_matches_the_formula(gamma):
    logits, targets, ids, lp, log_tail = case()
    got = distill_loss(logits, targets, ids, lp, gamma=gamma, topk_log_tail=log_tail, chunk_size=3)
    got.total.backward()
    g_got = logits.grad.clone()
    logits.grad = None
    want = reference_loss(logits, targets, ids, lp, log_tail, gamma)
    want.backward()
    assert float(got.total) == pytest.approx(float(want), rel=1e-10)
    assert torch.allclose(g_got, logits.grad, atol=1e-10)


def test_fused_loss_with_exact_tail_equals_the_reference_path():
    g = torch.Generator().manual_seed(1)
    _, targets, ids, lp, log_tail = case(seed=1)
    hidden = torch.randn(2, 5, 6, generator=g, dtype=torch.float64).requires_grad_(True)
    weight = torch.randn(17, 6, generator=g, dtype=torch.float64).requires_grad_(True)
    ref = distill_loss(hidden @ weight.T, targets, ids, lp, gamma=0.7, topk_log_tail=log_tail)
    fused = fused_distill_loss(hidden, weight, targets, ids, lp, gamma=0.7, topk_log_tail=log_tail, chunk_size=3)
    assert float(fused.total) == pytest.approx(float(ref.total), rel=1e-10)
    (gh_ref,) = torch.autograd.grad(ref.total, hidden)
    (gh,) = torch.autograd.grad(fused.total, hidden)
    assert torch.allclose(gh, gh_ref, atol=1e-10)


def reference_renorm_loss(logits, targets, ids, lp, gamma):
    """CE + gamma * renormalized top-k KL at T = 1 in float64: teacher and student each renormalized over the kept
    entries (finite log-prob, each id once); absent slots and the tail take no part."""
    B, P, V = logits.shape
    logq = torch.log_softmax(logits, -1)
    total = 0.0
    for b in range(B):
        for t in range(P):
            kept = [(int(i), float(l)) for i, l in zip(ids[b, t], lp[b, t]) if math.isfinite(l)]
            assert len({i for i, _ in kept}) == len(kept)  # the case keeps distinct ids
            log_sp = math.log(sum(math.exp(l) for _, l in kept))
            log_sq = torch.logsumexp(torch.stack([logq[b, t, i] for i, _ in kept]), 0)
            kl = sum(math.exp(l - log_sp) * ((l - log_sp) - (logq[b, t, i] - log_sq)) for i, l in kept)
            total = total - logq[b, t, targets[b, t]] + gamma * kl
    return total / (B * P)


@pytest.mark.parametrize("seed", [2, 3])
def test_renorm_tail_skips_absent_slots(seed):
    logits, targets, ids, lp, log_tail = case(seed=seed)
    assert bool(torch.isinf(lp).any())  # the case has absent slots (a repeated id with -inf log-prob)
    out = distill_loss(logits, targets, ids, lp, gamma=1.0, tail="renorm", topk_log_tail=log_tail, chunk_size=3)
    out.total.backward()
    g_got = logits.grad.clone()
    logits.grad = None
    want = reference_renorm_loss(logits, targets, ids, lp, 1.0)
    want.backward()
    assert float(out.total) == pytest.approx(float(want), rel=1e-10)
    assert torch.allclose(g_got, logits.grad, atol=1e-10)


def test_read_batch_carries_the_tail(tmp_path):
    r = make_tiny_store(str(tmp_path / "v11"), top_k=8, vocab_size=200)
    b = read_batch(r, r.domains, np.array([[0, 1], [2, 3], [0, 1]]))
    assert b.topk_log_tail is not None and b.topk_log_tail.shape == (3, 15)
    assert torch.equal(b.topk_log_tail[0], b.topk_log_tail[2])
    total = b.topk_logprobs.double().exp().sum(-1) + b.topk_log_tail.double().exp()
    assert (total - 1).abs().max() <= 1e-3
    old = make_tiny_store(str(tmp_path / "v10"), encoding=spec.ENC_IDSORT_Q8)
    assert read_batch(old, old.domains, np.array([[0, 1]])).topk_log_tail is None


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_tempered_tail_counts_absent_slots_as_tail(temperature):
    # 8 slots of which 3 are kept (-inf in the others), over V = 20 ids: the tail is the 17 ids outside the kept 3
    V = 20
    p = [0.5, 0.3, 0.1]
    m = 0.1
    stored = torch.full((1, 8), -math.inf, dtype=torch.float64)
    stored[0, :3] = torch.log(torch.tensor(p, dtype=torch.float64))
    lp, lt = tempered_teacher(stored, V, temperature, torch.tensor([math.log(m)], dtype=torch.float64))
    kept = [x ** (1 / temperature) for x in p]
    tail = (V - 3) * (m / (V - 3)) ** (1 / temperature)
    z = sum(kept) + tail
    assert float(lt[0].exp()) == pytest.approx(tail / z, rel=1e-12)
    assert lp[0, :3].exp().tolist() == pytest.approx([x / z for x in kept], rel=1e-12)
    assert bool(torch.isneginf(lp[0, 3:]).all())


def test_tempered_tail_when_every_slot_is_an_id_but_some_are_absent():
    # V = K = 8 with 3 kept: the 5 absent ids still carry the teacher's tail at T != 1 (it used to vanish)
    stored = torch.full((1, 8), -math.inf, dtype=torch.float64)
    stored[0, :3] = torch.log(torch.tensor([0.5, 0.3, 0.1], dtype=torch.float64))
    _, lt = tempered_teacher(stored, 8, 2.0, torch.tensor([math.log(0.1)], dtype=torch.float64))
    tail = 5 * (0.1 / 5) ** 0.5
    z = sum(x ** 0.5 for x in (0.5, 0.3, 0.1)) + tail
    assert float(lt[0].exp()) == pytest.approx(tail / z, rel=1e-12)
