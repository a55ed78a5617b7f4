"""A checkpoint's optimizer state as a safetensors file (no pickle), and what a damaged checkpoint's message says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ddk_store.errors import StudentError


def damaged(ckpt: Path, what: str) -> StudentError:
    """The error for checkpoint ``ckpt`` whose ``what`` cannot be read, and the two ways on."""
    return StudentError(f"checkpoint {ckpt} is damaged: {what}; move it aside (mv {ckpt} {ckpt}.damaged) and "
                        "`--resume` continues from the checkpoint before it, if the run kept one (--keep-checkpoints), "
                        "else start afresh with --overwrite")


_OPTIMIZER_FORMAT = "ddk-optimizer/1"


def save_optimizer(sd: dict[str, Any], path: Path) -> None:
    """Write an optimizer ``state_dict()`` (CPU tensors) as safetensors: tensor ``state.I.KEY`` for each tensor of
    parameter I's state; every other value (numbers, ``param_groups``) as JSON in the metadata. No pickle."""
    tensors, values = {}, {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{i}.{k}"] = v.contiguous()
            else:
                values.setdefault(str(i), {})[k] = v
    def plain(v: Any) -> Any:  # a one-element tensor hyperparameter (a tensor lr, say) as its number
        if torch.is_tensor(v) and v.numel() == 1:
            return v.item()
        raise TypeError(f"optimizer state value {v!r} is neither a tensor of a parameter's state nor a number")

    save_file(tensors, str(path), metadata={"format": _OPTIMIZER_FORMAT, "param_groups": json.dumps(
        sd["param_groups"], default=plain), "values": json.dumps(values, default=plain)})


def load_optimizer(ckpt: Path, stem: str) -> dict[str, Any]:
    """The optimizer ``state_dict()`` that :func:`save_optimizer` wrote as ``ckpt/STEM.safetensors``; an earlier ddk's
    ``STEM.pt`` is read with torch's restricted loader (tensors and plain values only)."""
    path = ckpt / f"{stem}.safetensors"
    if not path.is_file() and (ckpt / f"{stem}.pt").is_file():
        return torch.load(ckpt / f"{stem}.pt", weights_only=True, map_location="cpu")
    if not path.is_file():
        raise damaged(ckpt, f"no {path.name}")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != _OPTIMIZER_FORMAT:
            raise damaged(ckpt, f"{path.name} is not an optimizer state written by ddk (format "
                                f"{meta.get('format')!r})")
        state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in json.loads(meta["values"]).items()}
        for key in f.keys():
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = f.get_tensor(key)
    return {"state": state, "param_groups": json.loads(meta["param_groups"])}
