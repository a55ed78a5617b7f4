"""A checkpoint's files: the model weights loaded into a model only when they fit it, the optimizer state as a
safetensors file (no pickle), and what a damaged checkpoint's message says."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ddk_store.errors import StudentError, describe


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
        try:
            return torch.load(ckpt / f"{stem}.pt", weights_only=True, map_location="cpu")
        except Exception as e:  # noqa: BLE001 (a truncated zip, a pickle global the restricted loader refuses...)
            raise damaged(ckpt, f"{stem}.pt: {describe(e, 200)}") from None
    if not path.is_file():
        raise damaged(ckpt, f"no {path.name}")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != _OPTIMIZER_FORMAT:
            raise damaged(ckpt, f"{path.name} is not an optimizer state written by ddk (format "
                                f"{meta.get('format')!r})")
        state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in json.loads(meta["values"]).items()}
        for key in f.keys():
            if not re.fullmatch(r"state\.\d+\..+", key):
                raise damaged(ckpt, f"{path.name} holds a tensor {key!r} that is no optimizer state")
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = f.get_tensor(key)
    return {"state": state, "param_groups": json.loads(meta["param_groups"])}


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load checkpoint ``path``'s parameters into ``model`` (same architecture, not sharded), refusing any mismatch;
    the shards of an FSDP checkpoint are concatenated first."""
    path = Path(path)
    try:
        full = _read_weights(path)
    except (OSError, SafetensorError, KeyError, ValueError, RuntimeError) as e:  # (torch.cat of foreign shards)
        raise damaged(path, describe(e, 200)) from None
    copy_into(model, full, path)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The whole model's tensors of checkpoint ``path`` (an FSDP checkpoint's per-rank shards concatenated)."""
    if not (path / "model.safetensors").is_file() and (path / "model-rank0.safetensors").is_file():
        files = sorted(path.glob("model-rank*.safetensors"), key=lambda p: int(p.name[10:-12]))
        if [p.name for p in files] != [f"model-rank{r}.safetensors" for r in range(len(files))]:
            raise OSError(f"its rank files are {', '.join(p.name for p in files)}: one is missing")
        shards = [load_file(str(p)) for p in files]
        with safe_open(str(files[0]), "pt") as f:
            split = set(json.loads((f.metadata() or {}).get("sharded", "[]")))
        return {k: torch.cat([s[k] for s in shards]) if k in split else shards[0][k] for k in shards[0]}
    return load_file(str(path / "model.safetensors"))


def storage_key(t: torch.Tensor) -> tuple[int, tuple[int, ...], int]:
    """What two names of one tied tensor share (a DTensor: its local shard): where its data lies, and its shape."""
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.data_ptr(), tuple(t.shape), t.storage_offset()


def copy_into(model: torch.nn.Module, loaded: dict[str, torch.Tensor], path: Path) -> None:
    """Copy ``loaded`` into ``model``'s tensors (a DTensor's: into its local shard), after refusing, as one
    StudentError, names or shapes that do not fit (a tied tensor is stored once, under one of its names:
    checkpoint.model_snapshot)."""
    sd = model.state_dict()
    state = {k: (v.to_local() if hasattr(v, "to_local") else v) for k, v in sd.items()}
    stored = {storage_key(sd[k]) for k in loaded if k in sd and sd[k].numel()}
    missing = [k for k in state if k not in loaded and not (sd[k].numel() and storage_key(sd[k]) in stored)]
    unexpected = [k for k in loaded if k not in state]
    reshaped = [k for k in loaded if k in state and tuple(loaded[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or reshaped:
        def some(keys) -> str:
            keys = sorted(keys)
            return f"{len(keys)}" + (f" ({', '.join(keys[:2])}{', ...' if len(keys) > 2 else ''})" if keys else "")
        raise StudentError(f"checkpoint {path}: its weights do not fit the model built from the run's --student "
                           f"(missing {some(missing)}, unexpected {some(unexpected)}, other shape {some(reshaped)}): "
                           f"that student changed after the run started (e.g. cut again with other --layers); "
                           f"restore it, or train a new run from it")
    with torch.no_grad():
        for k, v in loaded.items():
            state[k].copy_(v)
