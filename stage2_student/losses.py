"""Pure distillation losses: CE + gamma * KL(teacher || student) over the stored top-k, fused and chunked.

Eq. 3 of DDK (arXiv 2407.16154) with the teacher known only through its top-k log-probabilities. Two supports for
the KL (docs/reweighting.md, "KL over a top-k"):

* ``bucket`` (default): the K stored tokens plus one extra outcome "any other token", holding the remaining mass of
  each distribution (teacher: 1 - sum of its top-k probs; student: 1 - sum of its probs on the same K ids). This is
  a true KL between two coarsened distributions, is never larger than the full-vocabulary KL, and equals it when K
  is the whole vocabulary.
* ``renorm``: both distributions restricted to the K ids and renormalized (the usual "sparse KD").

Memory. The loss is a ``torch.autograd.Function`` that walks the positions in chunks and writes d(loss)/d(logits)
straight into one buffer shaped like the logits, so the only [B, T, V] tensor beyond the student's logits is that
gradient, which plain autograd would allocate anyway. Each chunk works in fp32 on its own [chunk, V] copies.
Gradients, per token and before the token weight (q = student softmax at temperature T, p = teacher):
  CE:      softmax(z) - onehot(target)                                      (at T = 1, as in Eq. 3)
  bucket:  (q_j - p_j) / T on the K ids, q_j * (1 - m_t / m_s) / T elsewhere (m = tail masses)
  renorm:  (q̂_j - p̂_j) / T on the K ids, 0 elsewhere
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

KL_TAILS = ("bucket", "renorm")
# The student's tail mass is clamped to this floor before its log: a student that puts (numerically) all of its mass
# on the teacher's top-k while the teacher keeps some tail mass gets a large but finite loss, not inf.
_MIN_TAIL = 1e-30


class LossParts(NamedTuple):
    """total = ce + gamma * kl; ``ce`` and ``kl`` are detached, for logging."""

    total: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor


def tempered_teacher(topk_logprobs: torch.Tensor, vocab_size: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher top-k log-probs and tail log-mass at temperature T, from log-probs stored at T = 1.

    The tail's shape is unknown (only its mass m is stored), so at T != 1 it is taken as spread evenly over the
    V - K other tokens, the maximum-entropy guess: tail_T = (V-K) * (m / (V-K))^(1/T). At T = 1 this is exactly m.
    Quantized log-probs can sum to slightly more than 1; they are then renormalized and the tail is 0.

    Args:
        topk_logprobs: (n, K) log-probs in nats, normalized over the full vocabulary.
    Returns:
        (n, K) tempered log-probs and (n,) log tail mass; together they are a distribution.
    """
    lp = topk_logprobs.float()  # (n, K)
    k = lp.shape[-1]
    log_s = torch.logsumexp(lp, dim=-1)  # (n,) log of the top-k mass
    over = log_s > 0
    lp = torch.where(over[:, None], lp - log_s[:, None], lp)
    # log(1 - s) computed as log(-expm1(log s)) keeps precision when s is close to 1.
    log_m = torch.where(over, torch.full_like(log_s, -math.inf), torch.log(-torch.expm1(log_s.clamp(max=0))))
    if temperature == 1.0:
        return lp, log_m
    a = lp / temperature
    if vocab_size > k:
        log_other = math.log(vocab_size - k)
        log_tail = log_other + (log_m - log_other) / temperature
    else:
        log_tail = torch.full_like(log_m, -math.inf)
    z = torch.logsumexp(torch.cat([a, log_tail[:, None]], dim=-1), dim=-1)  # (n,)
    return a - z[:, None], log_tail - z


class _FusedDistillLoss(torch.autograd.Function):
    """Forward computes the loss and, if needed, d(loss)/d(logits) chunk by chunk; backward only scales it."""

    @staticmethod
    def forward(ctx, logits, targets, topk_ids, topk_logprobs, mask, vocab_size, gamma, temperature, tail, t2_scale,
                chunk_size, need_grad):
        B, P = targets.shape
        n_tok = mask.sum()
        grad_buf = torch.zeros_like(logits) if need_grad else None  # (B, T, Vm): the one full-size buffer
        ce_sum = torch.zeros((), dtype=torch.float64, device=logits.device)
        kl_sum = torch.zeros((), dtype=torch.float64, device=logits.device)
        if int(n_tok) > 0:
            w_tok = 1.0 / float(n_tok)  # token-weighted mean over unmasked positions, all rows together
            kl_scale = temperature**2 if t2_scale else 1.0
            rows_per_chunk = max(1, chunk_size // max(P, 1))
            for b0 in range(0, B, rows_per_chunk):
                b1 = min(B, b0 + rows_per_chunk)
                n = (b1 - b0) * P
                # fp32 working copy of this chunk only: (n, V). `.to(copy=True)` never aliases the logits.
                z = logits[b0:b1, :P, :vocab_size].to(torch.float32, copy=True).reshape(n, vocab_size)
                tgt = targets[b0:b1].reshape(n, 1)
                w = mask[b0:b1].reshape(n).to(torch.float32) * w_tok  # (n,) per-token weight, 0 where masked
                lse = torch.logsumexp(z, dim=-1)  # (n,)
                ce_tok = lse - z.gather(1, tgt).squeeze(1)  # (n,)
                ce_sum += (ce_tok * w).sum().double()
                g = None
                if need_grad:
                    g = torch.exp(z - lse[:, None])  # (n, V) softmax at T = 1
                    g.scatter_add_(1, tgt, torch.full_like(tgt, -1, dtype=g.dtype))
                    g.mul_(w[:, None])
                if gamma > 0:
                    ids = topk_ids[b0:b1].reshape(n, -1).long()  # (n, K)
                    lp_t = topk_logprobs[b0:b1].reshape(n, -1)
                    zt = z if temperature == 1.0 else z / temperature  # (n, V)
                    lse_t = lse if temperature == 1.0 else torch.logsumexp(zt, dim=-1)
                    logq_k = zt.gather(1, ids) - lse_t[:, None]  # (n, K) student log-probs on the teacher's ids
                    wk = w * (kl_scale * gamma)  # KL enters the total as gamma * kl
                    if tail == "bucket":
                        logp_k, log_mt = tempered_teacher(lp_t, vocab_size, temperature)
                        p_k, m_t = logp_k.exp(), log_mt.exp()
                        q_k = logq_k.exp()
                        m_s = (1.0 - q_k.sum(-1)).clamp(min=_MIN_TAIL)  # (n,)
                        kl_tok = (torch.xlogy(p_k, p_k) - p_k * logq_k).sum(-1) + torch.xlogy(m_t, m_t) - m_t * m_s.log()
                        if need_grad:
                            gk = torch.exp(zt - lse_t[:, None])  # (n, V) student softmax at T
                            gk.mul_((1.0 - m_t / m_s)[:, None])  # tail entries: q_j (1 - m_t/m_s)
                            gk.scatter_(1, ids, q_k - p_k)  # top-k entries: q_j - p_j
                            g.add_(gk.mul_((wk / temperature)[:, None]))
                    else:
                        logp_k = torch.log_softmax(lp_t.float() / temperature, dim=-1)  # (n, K) renormalized
                        logq_hat = torch.log_softmax(logq_k, dim=-1)
                        p_hat = logp_k.exp()
                        kl_tok = (p_hat * (logp_k - logq_hat)).sum(-1)
                        if need_grad:
                            g.scatter_add_(1, ids, (logq_hat.exp() - p_hat) * (wk / temperature)[:, None])
                    kl_sum += (kl_tok * w).sum().double() * kl_scale
                if need_grad:
                    grad_buf[b0:b1, :P, :vocab_size].copy_(g.view(b1 - b0, P, vocab_size))
                del z, g  # free this chunk's (n, V) copies before the next chunk allocates its own
        ctx.grad_buf = grad_buf
        ce = ce_sum.float()
        kl = kl_sum.float()
        total = ce + gamma * kl
        ctx.mark_non_differentiable(ce, kl)
        return total, ce, kl

    @staticmethod
    def backward(ctx, grad_total, _grad_ce, _grad_kl):
        grad = ctx.grad_buf
        ctx.grad_buf = None  # single use: scaling in place avoids a second full-size tensor
        if grad is None:
            raise RuntimeError("distill_loss was called with need_grad=False but backward() was requested")
        if grad_total is not None and float(grad_total) != 1.0:
            grad.mul_(grad_total.to(grad.dtype))
        return (grad,) + (None,) * 11


def distill_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    vocab_size: int | None = None,
    gamma: float = 0.2,
    temperature: float = 1.0,
    tail: str = "bucket",
    t2_scale: bool = False,
    chunk_size: int = 1024,
) -> LossParts:
    """CE(student, targets) + gamma * KL(teacher || student) at temperature T, token-mean over unmasked positions.

    Args:
        logits: (B, T, Vm) student logits, any float dtype; position p predicts token p+1. Only the first P positions
            and the first ``vocab_size`` columns are used (a student may pad its vocabulary).
        targets: (B, P) next-token ids (``tokens[:, 1:]``), P <= T.
        topk_ids: (B, P, K) teacher top-k ids, any order.
        topk_logprobs: (B, P, K) teacher log-probs (nats, normalized over the full vocabulary, at T = 1).
        mask: (B, P) bool, True where the position counts; None means all.
        vocab_size: V, the store's vocabulary (default: Vm).
    Returns:
        LossParts; an all-masked batch gives 0 (with a zero gradient), never NaN.
    """
    if tail not in KL_TAILS:
        raise ValueError(f"tail must be one of {KL_TAILS}, got {tail!r}")
    if gamma < 0 or temperature <= 0:
        raise ValueError(f"need gamma >= 0 and temperature > 0, got gamma={gamma} temperature={temperature}")
    B, P = targets.shape
    V = vocab_size if vocab_size is not None else logits.shape[-1]
    if logits.shape[0] != B or logits.shape[1] < P or logits.shape[2] < V:
        raise ValueError(f"logits {tuple(logits.shape)} do not cover targets {tuple(targets.shape)} x vocab {V}")
    if topk_ids.shape[:2] != (B, P) or topk_logprobs.shape != topk_ids.shape:
        raise ValueError(f"topk_ids {tuple(topk_ids.shape)} / topk_logprobs {tuple(topk_logprobs.shape)} "
                         f"must be ({B}, {P}, K)")
    if mask is None:
        mask = torch.ones((B, P), dtype=torch.bool, device=targets.device)
    need_grad = torch.is_grad_enabled() and logits.requires_grad
    total, ce, kl = _FusedDistillLoss.apply(
        logits, targets.long(), topk_ids, topk_logprobs, mask.bool(), V, float(gamma), float(temperature), tail,
        bool(t2_scale), int(chunk_size), need_grad,
    )
    return LossParts(total, ce, kl)


@torch.no_grad()
def token_nll_sum(
    logits: torch.Tensor, targets: torch.Tensor, *, vocab_size: int | None = None, chunk_size: int = 1024
) -> tuple[float, int]:
    """Sum of next-token NLL (nats) over all (B, P) positions, and the token count, for held-out perplexity.

    Chunked over rows so no [B, P, V] fp32 copy is made. Returns python floats (summed in float64).
    """
    B, P = targets.shape
    V = vocab_size if vocab_size is not None else logits.shape[-1]
    total = 0.0
    rows_per_chunk = max(1, chunk_size // max(P, 1))
    for b0 in range(0, B, rows_per_chunk):
        b1 = min(B, b0 + rows_per_chunk)
        z = logits[b0:b1, :P, :V].float()  # (b, P, V)
        nll = torch.logsumexp(z, dim=-1) - z.gather(-1, targets[b0:b1, :, None].long()).squeeze(-1)
        total += float(nll.double().sum())
    return total, B * P
