"""Resumable checkpoints: model, optimizer, run state (step, sampler, domain weights), RNG; atomic; no pickle.

Layout of ``OUT/checkpoints/step-00000120/``:
  model.safetensors      student parameters (safetensors; shared/tied tensors handled by ``save_model``)
  optimizer.pt           AdamW ``state_dict()``: plain tensors and numbers, loaded with ``weights_only=True``
  state.json             step, interval, domain factor r_t, sampling weights, sampler state, resolved config
  rng-rank{R}.safetensors  torch CPU (and CUDA) generator states of rank R
The directory is written as ``step-XXXXXXXX.tmp`` and renamed when complete, so a kill at any moment leaves either
the previous checkpoints or a new complete one; ``*.tmp`` leftovers are ignored and cleaned up. The learning-rate
schedule is a pure function of the step, so "scheduler state" is the step itself.

A checkpoint holds no model config or tokenizer: they are the student's (``state.json`` names it in its config), so
``ddk-student eval --model RUN/checkpoints/step-N`` builds the student's architecture and tokenizer and loads these
weights into it (:func:`checkpoint_student`, :func:`load_weights`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, load_model, save_file, save_model

from .rundir import CHECKPOINTS_DIR

FORMAT = "ddk-stage2-checkpoint/1"
_STEP_RE = re.compile(r"^step-(\d{8})$")


def _barrier(world_size: int) -> None:
    if world_size > 1 and dist.is_initialized():
        dist.barrier()


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoint dirs, oldest first."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1] if ckpts else None


def checkpoint_step(path: str | Path) -> int:
    """The step of checkpoint directory ``path`` (from its name ``step-XXXXXXXX``)."""
    m = _STEP_RE.match(Path(path).name)
    if not m:
        raise ValueError(f"{path}: not a checkpoint directory name (step-XXXXXXXX)")
    return int(m.group(1))


def read_state(path: str | Path) -> dict[str, Any] | None:
    """The ``state.json`` document of checkpoint directory ``path``, or None when ``path`` is no checkpoint."""
    doc_path = Path(path) / "state.json"
    if not doc_path.is_file():
        return None
    try:
        doc = json.loads(doc_path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None


def checkpoint_student(path: str | Path) -> str | None:
    """The student (``--student``: directory or hub id) whose architecture and tokenizer checkpoint ``path`` needs,
    or None when ``path`` is no checkpoint directory."""
    doc = read_state(path)
    student = ((doc or {}).get("config") or {}).get("student")
    return student if isinstance(student, str) and student else None


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load checkpoint ``path``'s parameters into ``model`` (same architecture), refusing any mismatch."""
    path = Path(path)
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path}: model mismatch, missing={missing} unexpected={unexpected}")


def _rng_state() -> dict[str, torch.Tensor]:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def save_checkpoint(out_dir: str | Path, step: int, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], rank: int = 0, world_size: int = 1, keep: int = 2) -> Path | None:
    """Write checkpoint ``step`` atomically; every rank must call it (each saves its own RNG state)."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    final = root / f"step-{step:08d}"
    tmp = root / f"step-{step:08d}.tmp"
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    _barrier(world_size)
    save_file(_rng_state(), str(tmp / f"rng-rank{rank}.safetensors"))
    if rank == 0:
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        doc = {"format": FORMAT, "step": step, "world_size": world_size, **state}
        (tmp / "state.json").write_text(json.dumps(doc, indent=1))
    _barrier(world_size)
    if rank == 0:
        if final.exists():  # a rerun reached the same step again: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)  # the commit point
        for old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        for junk in root.glob("*.tmp"):
            shutil.rmtree(junk, ignore_errors=True)
    _barrier(world_size)
    return final


def load_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """Restore model, optimizer and this rank's RNG from ``path``; return the state.json document."""
    path = Path(path)
    doc = json.loads((path / "state.json").read_text())
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}/state.json: unknown checkpoint format {doc.get('format')!r}, expected {FORMAT!r}")
    if doc["world_size"] != world_size:
        raise ValueError(
            f"checkpoint {path} was written by {doc['world_size']} rank(s), this run has {world_size}; resume with "
            f"the same number of processes"
        )
    load_weights(model, path)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    rng = load_file(str(path / f"rng-rank{rank}.safetensors"))
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return doc
