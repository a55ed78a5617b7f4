"""How the student's step runs fast: the optimizer (fused AdamW on CUDA), torch.compile with a fallback, and
activation checkpointing. None of these changes what a step computes (up to float rounding).

- ``--compile``/``--no-compile``; neither compiles on CUDA and not on CPU (where compiling costs more than it saves
  on small runs). A compile that fails, at wrap time or at the first step, prints one warning line and the run
  continues eagerly.
- ``--activation-checkpointing``: each decoder layer's activations are recomputed in the backward pass instead of
  kept, through the model's ``gradient_checkpointing_enable`` (non-reentrant ``torch.utils.checkpoint``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

from ddk_store.errors import ConfigError, describe

def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices (weights, embeddings); not vectors (norm scales, biases), as in nanoGPT and most LM recipes."""
    seen: set[int] = set()
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:  # tied embeddings appear once
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, *, lr: float, weight_decay: float,
                   device: torch.device) -> torch.optim.Optimizer:
    """AdamW (betas 0.9/0.95) over :func:`param_groups`; the fused CUDA kernel on a GPU (one launch per step)."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.95),
                             fused=device.type == "cuda")


def compile_wanted(flag: bool | None, device: torch.device) -> bool:
    """``--compile`` (True), ``--no-compile`` (False), or neither (None: compile on CUDA only)."""
    return flag if flag is not None else device.type == "cuda"


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


class CompiledForward:
    """``module`` called through ``torch.compile``; if the first call fails to compile, one warning line and the
    eager module from then on. Attribute access (``no_sync`` of a DDP module, say) goes to the eager module."""

    def __init__(self, module: torch.nn.Module, backend: str | Callable = "inductor",
                 warn: Callable[[str], None] = _warn):
        self.module = module
        self._warn = warn
        self._state = "new"  # new -> ok (compiled once) | eager (compile failed)
        try:
            self.compiled = torch.compile(module, backend=backend)
        except Exception as e:  # noqa: BLE001 (any compile failure falls back, named in the warning)
            self._fall_back(e)

    def _fall_back(self, e: BaseException) -> None:
        self._state = "eager"
        self._warn(f"--compile: torch.compile failed ({describe(e)}); training continues without it")

    @property
    def is_compiled(self) -> bool:
        return self._state != "eager"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._state == "eager":
            return self.module(*args, **kwargs)
        if self._state == "ok":
            return self.compiled(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 (first call: compilation itself failed; the eager call below
            # raises any error that is the step's own)
            self._fall_back(e)
            return self.module(*args, **kwargs)
        self._state = "ok"
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["module"], name)


def compile_forward(train_model: torch.nn.Module, flag: bool | None, device: torch.device,
                    backend: str | Callable = "inductor") -> Callable:
    """The forward the loop calls: ``train_model`` itself, or :class:`CompiledForward` of it when
    :func:`compile_wanted`."""
    return CompiledForward(train_model, backend=backend) if compile_wanted(flag, device) else train_model


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer in the backward pass (non-reentrant checkpointing: works under DDP, FSDP2 and
    torch.compile).

    Raises:
        ConfigError: the student does not support gradient checkpointing.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"--activation-checkpointing: student {type(model).__name__} does not support gradient "
                          f"checkpointing; leave the flag out")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
