"""Pure distillation losses: CE + gamma * KL(teacher || student) over the stored top-k, chunked.

Eq. 3 of DDK (arXiv 2407.16154) with the teacher known only through its top-k log-probabilities. Two supports for
the KL (docs/reweighting.md, "Eq. 3: the loss"):

* ``bucket`` (default): the K stored tokens plus one extra outcome "any other token", holding the remaining mass of
  each distribution (teacher: 1 - sum of its top-k probs; student: its mass on the V - K other ids). This is a true
  KL between two coarsened distributions, is never larger than the full-vocabulary KL, and equals it when K is the
  whole vocabulary.
* ``renorm``: both distributions restricted to the K ids and renormalized (the usual "sparse KD").

``kd_chunk`` is the one place the per-position math lives; two paths feed it chunks of logits:
``distill_loss`` (here) takes the student's logits, the plain reference path; ``fused_loss.fused_distill_loss``
computes each chunk's logits from the last hidden states and the lm_head weight and never holds all of them.

Gradients, per token and before the token weight (z = logits, q = student softmax at temperature T, p = teacher,
S = the teacher's top-k ids, m_t = teacher tail mass, P = sum(p) + m_t, which is 1 for a normalized teacher):
  CE:      softmax(z) - onehot(target)                                      (at T = 1, as in Eq. 3)
  bucket:  (P q_j - p_j) / T on S;  r_j (P m_s - m_t) / T elsewhere, r_j = exp(z_j/T - lse_tail) <= 1
  renorm:  (q̂_j - p̂_j) / T on S, 0 elsewhere
The student's tail is kept in log space: lse_tail = logsumexp of z/T over the ids outside S (top-k masked to -inf),
log m_s = lse_tail - lse. ``1 - sum(q on S)`` in fp32 loses every digit once m_s < ~1e-7, and the old tail gradient
q_j (1 - m_t / m_s) then exploded (norm 1e19 against 0.05 exact) while the loss stayed finite.
Assumes the K ids of a position are distinct (a top-k always is).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

KL_TAILS = ("bucket", "renorm")



def loss_outputs(ctx, ce_sum: torch.Tensor, kl_sum: torch.Tensor, dtype: torch.dtype, gamma: float):
    """(CE + gamma*KL, CE, KL) in ``dtype``: what both loss Functions return; CE and KL are for logging only."""
    ce, kl = ce_sum.to(dtype), kl_sum.to(dtype)
    ctx.mark_non_differentiable(ce, kl)
    return ce + gamma * kl, ce, kl

class LossParts(NamedTuple):
    """total = ce + gamma * kl; ``ce`` and ``kl`` are detached, for logging."""

    total: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64 (exact tests), else float32 (bf16/fp16 logits are upcast per chunk)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def tempered_teacher(topk_logprobs: torch.Tensor, vocab_size: int, temperature: float,
                     log_tail: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher top-k log-probs and tail log-mass at temperature T, from log-probs stored at T = 1.

    The teacher's tail mass m: the store's exact tail where its encoding has one (``log_tail``, format 1.1), else
    what the top-k implies, 1 - sum of its probs (this function is the one place that derives it). Its shape is
    unknown, so at T != 1 it is taken as spread evenly over the V - K other tokens, the maximum-entropy guess:
    tail_T = (V-K) * (m / (V-K))^(1/T), K counting a row's kept entries (absent slots are tail). At T = 1 this is
    exactly m. Derived from quantized log-probs, the top-k can sum to slightly more than 1; it is then renormalized
    and the tail is 0. With an exact tail, top-k and tail are
    normalized together (they already sum to 1 up to float16 rounding of the stored tail).

    Args:
        topk_logprobs: (n, K) log-probs in nats, normalized over the full vocabulary; -inf in absent slots.
        log_tail: optional (n,) log of the exact mass outside the K entries.
    Returns:
        (n, K) tempered log-probs and (n,) log tail mass (float32, or float64 for float64 input); together they are
        a distribution.
    """
    lp = topk_logprobs.to(compute_dtype(topk_logprobs))  # (n, K)
    if log_tail is not None:
        log_m = log_tail.to(lp.dtype)
        z = torch.logsumexp(torch.cat([lp, log_m[:, None]], dim=-1), dim=-1)  # (n,) ~0
        lp, log_m = lp - z[:, None], log_m - z
    else:
        log_s = torch.logsumexp(lp, dim=-1)  # (n,) log of the top-k mass
        over = log_s > 0
        lp = torch.where(over[:, None], lp - log_s[:, None], lp)
        # log(1 - s) computed as log(-expm1(log s)) keeps precision when s is close to 1.
        log_m = torch.where(over, torch.full_like(log_s, -math.inf), torch.log(-torch.expm1(log_s.clamp(max=0))))
    if temperature == 1.0:
        return lp, log_m
    a = lp / temperature
    # The tail is every id outside the kept entries: absent slots (-inf) belong to it too.
    other = vocab_size - torch.isfinite(lp).sum(dim=-1).to(lp.dtype)  # (n,)
    log_other = torch.log(other.clamp(min=1))
    log_tail = torch.where(other > 0, log_other + (log_m - log_other) / temperature,
                           torch.full_like(log_m, -math.inf))
    z = torch.logsumexp(torch.cat([a, log_tail[:, None]], dim=-1), dim=-1)  # (n,)
    return a - z[:, None], log_tail - z


def _shifted_exp(x: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """out <- exp(x - rowmax(x)) (out may be x itself); returns ((n,) lse of x, (n, 1) row sums of out).

    A row of all -inf (an empty tail) gives lse -inf, zeros in out and a sum of 1 (safe to divide by).
    """
    m = x.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    torch.sub(x, m, out=out).exp_()
    s = out.sum(dim=-1, keepdim=True)  # >= 1 unless the row is empty
    lse = (m + s.log()).squeeze(1)
    return lse, torch.where(s > 0, s, torch.ones_like(s))


def kd_chunk(z: torch.Tensor, targets: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor,
             w: torch.Tensor, *, gamma: float, temperature: float, tail: str, kl_scale: float,
             need_grad: bool, grad_out: torch.Tensor | None = None, topk_log_tail: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Loss sums and d(loss)/d(logits) for one chunk of n positions (pure; the module docstring has the math).

    Args:
        z: (n, V) logits in the compute dtype, already sliced to the store's V. CONSUMED: overwritten in place (the
            caller passes its own working copy, so a chunk needs two (n, V) buffers: z and the gradient).
        targets: (n,) next-token ids. topk_ids, topk_logprobs: (n, K) teacher ids and log-probs (T = 1); a slot
            with log-prob -inf is absent (it repeats an id of its position and is left out of the student's sums).
        topk_log_tail: optional (n,) log of the teacher's exact mass outside the K entries (stores of format 1.1).
        w: (n,) per-position weight (1 / number of counted positions, 0 where masked).
        kl_scale: T^2 with Hinton scaling, else 1.
        grad_out: optional (n, V) buffer for the gradient (a caller reusing one buffer over its chunks).
    Returns:
        (sum_i w_i ce_i, kl_scale * sum_i w_i kl_i, gradient of ce_sum + gamma * kl_sum w.r.t. z or None); the sums
        are 0-d float64.
    """
    n = z.shape[0]
    tgt = targets.reshape(n, 1).long()
    z_tgt = z.gather(1, tgt).squeeze(1)  # (n,)
    g = None
    if need_grad:  # full passes over (n, V) are the cost on CPU: fold every per-row scale into one
        g = torch.empty_like(z) if grad_out is None else grad_out
        lse, s = _shifted_exp(z, g)
        g.mul_(w[:, None] / s)  # w * softmax(z)
        g.scatter_add_(1, tgt, -w[:, None])
    else:
        lse = torch.logsumexp(z, dim=-1)
    ce_sum = ((lse - z_tgt) * w).sum().double()
    kl_sum = torch.zeros((), dtype=torch.float64, device=z.device)
    if gamma <= 0:
        return ce_sum, kl_sum, g
    ids = topk_ids.reshape(n, -1).long()  # (n, K)
    wk = w * (kl_scale * gamma / temperature)  # d(gamma * kl_sum)/d(z) = wk * d(kl)/d(z / T)
    if temperature != 1.0:
        z.div_(temperature)  # z now holds z / T
    zk = z.gather(1, ids)  # (n, K)
    if tail == "renorm":
        logp_hat = torch.log_softmax(topk_logprobs.reshape(n, -1).to(z.dtype) / temperature, dim=-1)
        absent = torch.isneginf(logp_hat)
        logq_hat = torch.log_softmax(zk.masked_fill(absent, -math.inf), dim=-1)
        p_hat = logp_hat.exp()
        kl_tok = torch.where(absent, torch.zeros_like(p_hat), p_hat * (logp_hat - logq_hat)).sum(-1)
        # A position whose slots are all absent (masked padding) is NaN here, and NaN * 0 is NaN: select, not scale.
        kl_tok = torch.where(w > 0, kl_tok, torch.zeros_like(kl_tok))
        if need_grad:
            g.scatter_add_(1, ids, torch.where(w[:, None] > 0, (logq_hat.exp() - p_hat) * wk[:, None], 0.0))
    else:
        logp_k, log_mt = tempered_teacher(topk_logprobs.reshape(n, -1).to(z.dtype), z.shape[1], temperature,
                                          None if topk_log_tail is None else topk_log_tail.reshape(n))
        absent = torch.isneginf(logp_k)  # slots without an entry: their (repeated) id counts once, as a kept one
        z.scatter_(1, ids, -math.inf)  # only the tail is left
        lse_tail, s_tail = _shifted_exp(z, z)  # z <- s_tail * r, r = exp(z/T - lse_tail) <= 1, 0 on the top-k
        lse_t = torch.logaddexp(lse_tail, torch.logsumexp(zk.masked_fill(absent, -math.inf), dim=-1))  # full lse
        logq_k = zk - lse_t[:, None]
        log_ms = lse_tail - lse_t  # exact, also where m_s underflows
        has_tail = torch.isfinite(lse_tail)  # False only when K = V: then there is no tail outcome at all
        m_t = torch.where(has_tail, log_mt.exp(), torch.zeros_like(log_mt))
        p_k = logp_k.exp()
        tail_kl = torch.where(m_t > 0, m_t * (log_mt - log_ms), torch.zeros_like(m_t))
        kl_tok = (torch.xlogy(p_k, p_k) - p_k * logq_k).sum(-1) + tail_kl
        if need_grad:
            big_p = p_k.sum(-1) + m_t
            g.addcmul_(z, ((big_p * log_ms.exp() - m_t) * wk)[:, None] / s_tail)  # tail entries; 0 on the top-k
            g.scatter_add_(1, ids, ((big_p[:, None] * logq_k.exp() - p_k) * wk[:, None]).masked_fill(absent, 0.0))
    kl_sum = (kl_tok * w).sum().double() * kl_scale
    return ce_sum, kl_sum, g


def check_loss_args(targets: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, *, gamma: float,
                    temperature: float, tail: str, topk_log_tail: torch.Tensor | None = None) -> None:
    """The argument checks both loss paths share."""
    if tail not in KL_TAILS:
        raise ValueError(f"tail must be one of {KL_TAILS}, got {tail!r}")
    if gamma < 0 or temperature <= 0:
        raise ValueError(f"need gamma >= 0 and temperature > 0, got gamma={gamma} temperature={temperature}")
    B, P = targets.shape
    if topk_ids.shape[:2] != (B, P) or topk_logprobs.shape != topk_ids.shape:
        raise ValueError(f"topk_ids {tuple(topk_ids.shape)} / topk_logprobs {tuple(topk_logprobs.shape)} "
                         f"must be ({B}, {P}, K)")
    if topk_log_tail is not None and tuple(topk_log_tail.shape) != (B, P):
        raise ValueError(f"topk_log_tail {tuple(topk_log_tail.shape)} must be ({B}, {P})")


def token_weights(mask: torch.Tensor | None, targets: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, P) weights of the token mean over unmasked positions: 1/count where counted, 0 elsewhere (all 0 if none).

    No host sync (no ``.item()``), so the loss stays traceable by torch.compile.
    """
    if mask is None:
        return torch.full(targets.shape, 1.0 / max(targets.numel(), 1), dtype=dtype, device=targets.device)
    m = mask.to(dtype)
    return m / m.sum().clamp(min=1.0)


class _DistillLoss(torch.autograd.Function):
    """Forward computes the loss and, if needed, d(loss)/d(logits) chunk by chunk; backward only scales it."""

    @staticmethod
    def forward(ctx, logits, targets, topk_ids, topk_logprobs, w, vocab_size, gamma, temperature, tail, kl_scale,
                chunk_size, need_grad, topk_log_tail):
        B, P = targets.shape
        cd = compute_dtype(logits)
        grad_buf = torch.zeros_like(logits) if need_grad else None  # (B, T, Vm): the one full-size buffer
        ce_sum = torch.zeros((), dtype=torch.float64, device=logits.device)
        kl_sum = torch.zeros((), dtype=torch.float64, device=logits.device)
        rows_per_chunk = max(1, chunk_size // max(P, 1))
        for b0 in range(0, B, rows_per_chunk):
            b1 = min(B, b0 + rows_per_chunk)
            n = (b1 - b0) * P
            # working copy of this chunk only: (n, V) in the compute dtype, never aliasing the logits.
            z = torch.empty((n, vocab_size), dtype=cd, device=logits.device)
            z.view(b1 - b0, P, vocab_size).copy_(logits[b0:b1, :P, :vocab_size])
            ce, kl, g = kd_chunk(z, targets[b0:b1], topk_ids[b0:b1], topk_logprobs[b0:b1], w[b0:b1].reshape(n),
                                 gamma=gamma, temperature=temperature, tail=tail, kl_scale=kl_scale,
                                 need_grad=need_grad,
                                 topk_log_tail=None if topk_log_tail is None else topk_log_tail[b0:b1].reshape(n))
            ce_sum += ce
            kl_sum += kl
            if need_grad:
                grad_buf[b0:b1, :P, :vocab_size].copy_(g.view(b1 - b0, P, vocab_size))
            del z, g  # free this chunk's (n, V) buffers before the next chunk allocates its own
        ctx.grad_buf = grad_buf
        return loss_outputs(ctx, ce_sum, kl_sum, cd, gamma)

    @staticmethod
    def backward(ctx, grad_total, _grad_ce, _grad_kl):
        grad = ctx.grad_buf
        ctx.grad_buf = None  # single use: scaling in place avoids a second full-size tensor
        if grad is None:
            raise RuntimeError("distill_loss was called with need_grad=False but backward() was requested")
        grad.mul_(grad_total.to(grad.dtype))
        return (grad,) + (None,) * 12


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
    topk_log_tail: torch.Tensor | None = None,
) -> LossParts:
    """CE(student, targets) + gamma * KL(teacher || student) at temperature T, token-mean over unmasked positions.

    The reference path: it needs the student's full logits. ``fused_loss.fused_distill_loss`` computes the same from
    the last hidden states without them.

    Args:
        logits: (B, T, Vm) student logits, any float dtype; position p predicts token p+1. Only the first P positions
            and the first ``vocab_size`` columns are used (a student may pad its vocabulary).
        targets: (B, P) next-token ids (``tokens[:, 1:]``), P <= T.
        topk_ids: (B, P, K) teacher top-k ids, any order, distinct per position.
        topk_logprobs: (B, P, K) teacher log-probs (nats, normalized over the full vocabulary, at T = 1).
        mask: (B, P) bool, True where the position counts; None means all.
        vocab_size: V, the store's vocabulary (default: Vm).
        topk_log_tail: optional (B, P) log of the teacher's exact mass outside the K entries (format 1.1 stores);
            without it the tail is 1 - sum of the top-k probs.
        chunk_size: positions per chunk (whole rows: at least one row per chunk).
    Returns:
        LossParts (float32, float64 for float64 logits); an all-masked batch gives 0 (with a zero gradient), never NaN.
    """
    check_loss_args(targets, topk_ids, topk_logprobs, gamma=gamma, temperature=temperature, tail=tail,
                    topk_log_tail=topk_log_tail)
    B, P = targets.shape
    V = vocab_size if vocab_size is not None else logits.shape[-1]
    if logits.shape[0] != B or logits.shape[1] < P or logits.shape[2] < V:
        raise ValueError(f"logits {tuple(logits.shape)} do not cover targets {tuple(targets.shape)} x vocab {V}")
    need_grad = torch.is_grad_enabled() and logits.requires_grad
    w = token_weights(mask, targets, compute_dtype(logits))
    total, ce, kl = _DistillLoss.apply(
        logits, targets.long(), topk_ids, topk_logprobs, w, V, float(gamma), float(temperature), tail,
        float(temperature) ** 2 if t2_scale else 1.0, int(chunk_size), need_grad, topk_log_tail,
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
