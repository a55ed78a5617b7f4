"""Fused linear top-k KD loss: CE + gamma * KL from the last hidden states and the lm_head weight, chunked.

``fused_distill_loss(hidden, weight, ...)`` equals ``losses.distill_loss(hidden @ weight.T, ...)`` (tested in
float64, value and both gradients) without ever holding the [B*T, V] logits: it walks the positions in chunks of
``chunk_size``, computes each chunk's logits ``logit_scale * (h @ W[:V].T + b[:V])``, hands them to
``losses.kd_chunk`` (the one copy of the loss math, exact log-space tail) and turns the chunk's d(loss)/d(logits)
into d/d(hidden) and d/d(W) (and d/d(b)) at once. Peak extra memory: two (chunk, V) buffers in fp32, reused by
every chunk, plus the (V, H) weight gradient, which a plain backward through lm_head allocates as well.

Why gradients in the forward (as Liger's fused linear cross-entropy does) and not a recompute in backward: the
logits are computed once instead of twice (the recompute would add a third to lm_head's FLOPs, the largest matmul of
a small student with a big vocabulary), and the extra state between forward and backward is only the (N, H) and
(V, H) gradients, which backward would allocate anyway. Backward scales them by the upstream gradient, in place.

Supported heads: a linear lm_head with optional bias and an optional scalar logit scale (Granite divides by
``logits_scaling``, Cohere multiplies by ``logit_scale``). Not supported (use the reference path): logit softcapping
(Gemma 2/3), any other post-processing of the logits. Dtypes: the matmuls run in ``matmul_dtype`` (the autocast
dtype when autocast is on, else the inputs'), the softmax math in fp32 (fp64 for fp64 inputs), and the weight
gradient accumulates in fp32 over the chunks even for bf16 weights.

torch.compile: no host syncs and no data-dependent Python branches, so dynamo traces it (the chunk loop unrolls); the
test compiles it with fullgraph=True.
"""

from __future__ import annotations

import torch

from .losses import LossParts, check_loss_args, compute_dtype, kd_chunk, loss_outputs, token_weights


def _accumulate_mm(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """out += a @ b, with out in fp32 and a, b possibly bf16 (a low-precision product, then an in-place add)."""
    if a.dtype == out.dtype:
        out.addmm_(a, b)
    else:
        out.add_(a @ b)


class _LinearDistillLoss(torch.autograd.Function):
    """Forward computes the loss and the gradients chunk by chunk; backward scales them by the upstream gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, topk_ids, topk_logprobs, w, vocab_size, gamma, temperature, tail,
                kl_scale, logit_scale, chunk_size, matmul_dtype, need_h, need_w, need_b, topk_log_tail):
        N, H = hidden.shape
        V = vocab_size
        cd = compute_dtype(hidden, weight)
        acc = torch.promote_types(weight.dtype, torch.float32)
        with torch.autocast(hidden.device.type, enabled=False):  # dtypes are explicit below
            w_v = weight[:V].to(matmul_dtype)  # (V, H); a view unless autocast asks for another dtype
            b_v = bias[:V].to(cd) if bias is not None else None
            grad_h = torch.empty((N, H), dtype=hidden.dtype, device=hidden.device) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
            grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
            need = need_h or need_w or need_b
            ce_sum = torch.zeros((), dtype=torch.float64, device=hidden.device)
            kl_sum = torch.zeros((), dtype=torch.float64, device=hidden.device)
            # One logits and one gradient buffer, reused by every chunk: on CPU, fresh pages for each chunk's
            # (chunk, V) tensors cost page faults (about 10% of a step at V = 49k); CUDA's allocator caches anyway.
            rows = min(chunk_size, N)
            z_buf = torch.empty((rows, V), dtype=cd, device=hidden.device)
            g_buf = torch.empty((rows, V), dtype=cd, device=hidden.device) if need else None
            for i0 in range(0, N, chunk_size):
                i1 = min(N, i0 + chunk_size)
                h_c = hidden[i0:i1].to(matmul_dtype)  # (n, H)
                z = z_buf[: i1 - i0]  # (n, V): this chunk's logits
                if matmul_dtype == cd:
                    torch.mm(h_c, w_v.T, out=z)
                else:
                    z.copy_(h_c @ w_v.T)
                if b_v is not None:
                    z.add_(b_v)
                if logit_scale != 1.0:
                    z.mul_(logit_scale)
                ce, kl, g = kd_chunk(z, targets[i0:i1], topk_ids[i0:i1], topk_logprobs[i0:i1], w[i0:i1],
                                     gamma=gamma, temperature=temperature, tail=tail, kl_scale=kl_scale,
                                     need_grad=need, grad_out=g_buf[: i1 - i0] if need else None,
                                     topk_log_tail=None if topk_log_tail is None else topk_log_tail[i0:i1])
                ce_sum += ce
                kl_sum += kl
                if need:
                    if logit_scale != 1.0:
                        g.mul_(logit_scale)  # d/d(h W^T + b)
                    if need_b:
                        grad_b[:V] += g.sum(0)
                    g_mm = g.to(matmul_dtype)
                    if need_h and grad_h.dtype == matmul_dtype:
                        torch.mm(g_mm, w_v, out=grad_h[i0:i1])
                    elif need_h:
                        grad_h[i0:i1].copy_(g_mm @ w_v)
                    if need_w:
                        _accumulate_mm(grad_w[:V], g_mm.T, h_c)
                    del g_mm
            del z_buf, g_buf
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        return loss_outputs(ctx, ce_sum, kl_sum, cd, gamma)

    @staticmethod
    def backward(ctx, grad_total, _grad_ce, _grad_kl):
        grads = []
        for g in ctx.saved_tensors:  # (N, H), (Vm, H), (Vm,) or None where not needed
            grads.append(g.mul_(grad_total.to(g.dtype)) if g is not None else None)
        return (*grads,) + (None,) * 16


def fused_distill_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    bias: torch.Tensor | None = None,
    logit_scale: float = 1.0,
    vocab_size: int | None = None,
    gamma: float = 0.2,
    temperature: float = 1.0,
    tail: str = "bucket",
    t2_scale: bool = False,
    chunk_size: int = 1024,
    matmul_dtype: torch.dtype | None = None,
    topk_log_tail: torch.Tensor | None = None,
) -> LossParts:
    """``distill_loss`` on the logits ``logit_scale * (hidden @ weight.T + bias)``, without materializing them.

    Args:
        hidden: (B, T, H) last hidden states (after the final norm); the first P positions are used.
        weight: (Vm, H) lm_head weight, Vm >= V (padded rows get a zero gradient, as their logits are sliced off).
        targets, topk_ids, topk_logprobs, mask, topk_log_tail: as for ``losses.distill_loss``.
        bias: optional (Vm,) lm_head bias. logit_scale: a scalar applied after the bias.
        chunk_size: positions per chunk (any split, not whole rows); bounds the (chunk, V) fp32 working set.
        matmul_dtype: dtype of the three matmuls; default: the autocast dtype if autocast is on, else the inputs'.
    Returns:
        LossParts, like ``distill_loss``.
    """
    check_loss_args(targets, topk_ids, topk_logprobs, gamma=gamma, temperature=temperature, tail=tail,
                    topk_log_tail=topk_log_tail)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    B, P = targets.shape
    V = vocab_size if vocab_size is not None else weight.shape[0]
    if hidden.dim() != 3 or hidden.shape[0] != B or hidden.shape[1] < P or hidden.shape[2] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} does not cover targets {tuple(targets.shape)} with "
                         f"weight {tuple(weight.shape)}")
    if weight.shape[0] < V or (bias is not None and bias.shape != weight.shape[:1]):
        raise ValueError(f"weight {tuple(weight.shape)} / bias {None if bias is None else tuple(bias.shape)} do not "
                         f"cover vocab {V}")
    if matmul_dtype is None:
        dev = hidden.device.type
        matmul_dtype = (torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev)
                        else torch.promote_types(hidden.dtype, weight.dtype))
    grad_on = torch.is_grad_enabled()
    need_h, need_w = grad_on and hidden.requires_grad, grad_on and weight.requires_grad
    need_b = grad_on and bias is not None and bias.requires_grad
    h = hidden[:, :P].reshape(B * P, hidden.shape[2])  # (N, H); a copy only when P < T, and H << V
    w = token_weights(mask, targets, compute_dtype(hidden, weight)).reshape(B * P)
    total, ce, kl = _LinearDistillLoss.apply(
        h, weight, bias, targets.reshape(B * P).long(), topk_ids.reshape(B * P, -1),
        topk_logprobs.reshape(B * P, -1), w, V, float(gamma), float(temperature), tail,
        float(temperature) ** 2 if t2_scale else 1.0, float(logit_scale), int(chunk_size), matmul_dtype,
        need_h, need_w, need_b, None if topk_log_tail is None else topk_log_tail.reshape(B * P),
    )
    return LossParts(total, ce, kl)
