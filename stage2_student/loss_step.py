"""The loss of one training micro-step from a Hugging Face student: fused from the last hidden state when it can be.

Fused (``fused_loss.fused_distill_loss``) when the student is Llama-shaped: ``get_output_embeddings()`` is a linear
layer, the forward takes ``output_hidden_states`` and ``logits_to_keep`` (every causal LM of transformers 5 does),
and the logits are that layer applied to the last hidden state, up to a known scalar (Granite's
``logits_scaling``, Cohere's ``logit_scale``). The forward is asked for the last position's logits only, and on the
first call they are checked against the head applied to the hidden state: a model whose logits are something else
falls back, with one warning, to the reference path (full logits + ``losses.distill_loss``). Logit softcapping
(Gemma 2/3) is recognized from the config and also falls back.

The forward goes through ``train_model`` (a DDP wrapper, a compiled module or the model itself) so that DDP's hooks
run; ``model`` is the bare module, where the lm_head is looked up.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable
from typing import NamedTuple

import torch

from ddk_store.errors import describe

from .fused_loss import fused_distill_loss
from .losses import LossParts, distill_loss

#: Config fields that post-process the logits beyond a scalar: such students take the reference path.
_UNSUPPORTED = ("final_logit_softcapping", "logit_softcapping")


class _Head(NamedTuple):
    fused: bool
    logit_scale: float = 1.0
    reason: str = ""


_HEADS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> _Head, decided on its first step


def _is_sharded(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed
        return False
    return isinstance(t, DTensor)


def head_plan(model: torch.nn.Module) -> _Head:
    """What the model's structure and config allow, before any forward."""
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(emb, torch.nn.Linear):
        return _Head(False, reason=f"its output layer is {type(emb).__name__}, not a linear lm_head")
    cfg = getattr(model, "config", None)
    for name in _UNSUPPORTED:
        if getattr(cfg, name, None):
            return _Head(False, reason=f"its config sets {name}={getattr(cfg, name)!r}")
    scale = 1.0
    if getattr(cfg, "logits_scaling", None):  # Granite: logits / logits_scaling
        scale = 1.0 / float(cfg.logits_scaling)
    elif getattr(cfg, "logit_scale", None):  # Cohere: logits * logit_scale
        scale = float(cfg.logit_scale)
    return _Head(True, logit_scale=scale)


def probe_head(model: torch.nn.Module, tokens: torch.Tensor,
               autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> _Head:
    """``head_plan``, then one small no-grad forward (eval mode: no dropout, no RNG drawn) on the first row's first
    tokens: the fused path is taken only if the model returns its hidden states, honours ``logits_to_keep`` and its
    last logits equal the lm_head (times the scale) on its last hidden state."""
    head = head_plan(model)
    if not head.fused:
        return head
    emb = model.get_output_embeddings()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast():
            out = model(input_ids=tokens[:1, :8], use_cache=False, output_hidden_states=True, logits_to_keep=1)
            hidden = out.hidden_states[-1] if getattr(out, "hidden_states", None) else None
            if hidden is None or out.logits is None or out.logits.shape[1] != 1:
                return _Head(False, reason="its forward does not return hidden states and honour logits_to_keep")
            if _is_sharded(emb.weight):  # looked up after the forward, as the fused path does
                return _Head(False, reason="its lm_head weight is still sharded after the forward (a DTensor: tensor "
                                           "parallel, or an FSDP root that reshards after its forward)")
            mine = torch.nn.functional.linear(hidden[:, -1:], emb.weight, emb.bias).float() * head.logit_scale
    except (TypeError, ValueError) as e:
        return _Head(False, reason=f"its forward refused output_hidden_states/logits_to_keep ({describe(e)})")
    finally:
        model.train(was_training)
    theirs = out.logits.float()
    err = float((mine - theirs).abs().max())
    if not err <= 1e-2 * (1.0 + float(theirs.abs().max())):
        return _Head(False, reason=f"its logits are not lm_head(last hidden state) (max difference {err:.3g})")
    return head


def student_loss(
    train_model: Callable,
    model: torch.nn.Module,
    tokens: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    *,
    vocab_size: int,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    gamma: float,
    temperature: float = 1.0,
    tail: str = "bucket",
    t2_scale: bool = False,
    chunk_size: int = 1024,
    topk_log_tail: torch.Tensor | None = None,
) -> LossParts:
    """Forward ``tokens`` (b, T) through the student and return CE + gamma * KL over positions 0..T-2.

    ``autocast`` is the context the forward runs under (bf16 on CUDA); the fused loss's matmuls follow it. The path
    is chosen on the model's first call (``probe_head``) and kept.
    """
    kw = dict(vocab_size=vocab_size, gamma=gamma, temperature=temperature, tail=tail, t2_scale=t2_scale,
              chunk_size=chunk_size, topk_log_tail=topk_log_tail)
    head = _HEADS.get(model)
    if head is None:
        head = _HEADS[model] = probe_head(model, tokens, autocast)
        if not head.fused:
            warnings.warn(f"student {type(model).__name__}: using the unfused loss (full logits in memory) because "
                          f"{head.reason}", RuntimeWarning, stacklevel=2)
    if head.fused:
        emb = model.get_output_embeddings()
        with autocast():
            out = train_model(input_ids=tokens, use_cache=False, output_hidden_states=True, logits_to_keep=1)
            hidden = out.hidden_states[-1]  # (b, T, H), after the final norm
            del out
            weight = emb.weight  # under FSDP2, the root's unsharded weight: the root reshards only in its backward
            if _is_sharded(weight):
                raise RuntimeError(f"student {type(model).__name__}: its lm_head weight is sharded after this "
                                   f"forward though it was whole after the first step's; the fused loss cannot read "
                                   f"it. Train without --fsdp (DDP) and report the torch version ({torch.__version__})")
            return fused_distill_loss(hidden, weight, tokens[:, 1:], topk_ids, topk_logprobs, bias=emb.bias,
                                      logit_scale=head.logit_scale, **kw)
    with autocast():
        logits = train_model(input_ids=tokens, use_cache=False).logits  # (b, T, Vm)
    return distill_loss(logits, tokens[:, 1:], topk_ids, topk_logprobs, **kw)
