"""Resumable checkpoints: model, optimizer, run state (step, sampler, domain weights), RNG; atomic; no pickle.

Layout of ``OUT/checkpoints/step-00000120/``:
  model.safetensors      student parameters (safetensors; tied tensors stored once)
  optimizer.safetensors  AdamW ``state_dict()``: its tensors, with its numbers and ``param_groups`` as JSON in the
                         file's metadata (:func:`save_optimizer`); a checkpoint of an earlier ddk has
                         ``optimizer.pt`` instead, read with torch's restricted ``weights_only`` loader
  state.json             step, interval, domain factor r_t, sampling weights, sampler state, the evaluation history
                         (step, ratios, weights: what the repeats warning reads), resolved config
  rng-rank{R}.safetensors  torch CPU (and CUDA) generator states of rank R
A run trained with ``--fsdp`` has no ``model.safetensors``/``optimizer.safetensors`` but one
``model-rank{R}.safetensors`` and ``optimizer-rank{R}.safetensors`` per rank: each rank's shards (FSDP2 shards every
parameter along dim 0, so the ranks' model shards concatenated in rank order are the full tensors;
:func:`load_weights` does that for ``eval``).

The directory is written as ``step-XXXXXXXX.tmp``, flushed to the disk and renamed when complete (the commit
point), so a kill or a power loss at any moment leaves either the previous checkpoints or a new complete one;
``*.tmp`` leftovers are ignored and cleaned up.
A checkpoint rewritten at its own step is set aside whole (``step-X.replaced``) until its successor is committed.
Training does not wait for the disk: the parameters and optimizer state are copied to CPU memory on the training
thread, and a background thread (:class:`CheckpointWriter`) writes and commits them while the next steps run. FSDP
checkpoints are written synchronously by every rank. The learning-rate schedule is a pure function of the step, so
"scheduler state" is the step itself.

A checkpoint holds no model config or tokenizer: they are the student's (``state.json`` names it in its config), so
``ddk-student eval --model RUN/checkpoints/step-N`` builds the student's architecture and tokenizer and loads these
weights into it (:func:`checkpoint_student`, :func:`load_weights`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import weakref
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ddk_store.errors import DdkError, describe
from ddk_store.paths import share_permissions, sync_entry, sync_tree

from .checkpoint_files import copy_into, damaged, load_optimizer, load_weights, save_optimizer, storage_key
from .rundir import CHECKPOINTS_DIR

FORMAT = "ddk-stage2-checkpoint/1"
_STEP_RE = re.compile(r"^step-(\d{8})$")
#: A checkpoint being replaced by one of the same step (``--resume --steps N`` rewrites the step it resumes from):
#: renamed to this suffix before the new one takes its name, and deleted after. A kill in between leaves it whole,
#: and :func:`list_checkpoints` takes it for its step while no other directory has that step.
_REPLACED = ".replaced"
#: The writers of this process (:func:`finish_writes`).
_WRITERS: weakref.WeakSet[CheckpointWriter] = weakref.WeakSet()


def _barrier(world_size: int) -> None:
    if world_size > 1 and dist.is_initialized():
        dist.barrier()


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoint dirs, oldest first."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = {}
    for p in sorted(root.iterdir(), key=lambda p: p.name.endswith(_REPLACED)):  # a plain step-N wins
        if (m := _STEP_RE.match(p.name.removesuffix(_REPLACED))) and p.is_dir():
            found.setdefault(int(m.group(1)), p)
    return [found[k] for k in sorted(found)]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1] if ckpts else None


def checkpoint_step(path: str | Path) -> int:
    """The step of checkpoint directory ``path`` (from its name ``step-XXXXXXXX``)."""
    m = _STEP_RE.match(Path(path).name.removesuffix(_REPLACED))
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


def _rng_state() -> dict[str, torch.Tensor]:
    """The CPU generator's state, and this rank's GPU's where the run uses one (``--device cpu`` on a GPU host
    starts no CUDA context for it, which would be on GPU 0 for every rank)."""
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``t`` (a DTensor's local shard, else ``t``) as a CPU copy the training step cannot touch."""
    t = t.detach()
    if hasattr(t, "to_local"):
        t = t.to_local()
    return t.to("cpu", copy=True).contiguous()


def model_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state as CPU copies, each tied (shared) tensor once, under its first name."""
    seen: set[tuple] = set()
    out = {}
    for k, v in model.state_dict().items():
        key = storage_key(v)
        if v.numel() and key in seen:
            continue
        seen.add(key)
        out[k] = _local(v)
    return out


def sharded_keys(model: torch.nn.Module) -> str:
    """The names of ``model``'s sharded (DTensor) entries as JSON: the metadata of each rank's model shard file."""
    return json.dumps(sorted(k for k, v in model.state_dict().items() if hasattr(v, "to_local")))


def optimizer_snapshot(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every tensor copied to CPU (and a DTensor reduced to its local shard)."""
    sd = optimizer.state_dict()
    return {"state": {i: {k: _local(v) if torch.is_tensor(v) else v for k, v in st.items()}
                      for i, st in sd["state"].items()},
            "param_groups": sd["param_groups"]}


def _restore_dtensor_state(optimizer: torch.optim.Optimizer) -> None:
    """After loading local shards into an optimizer over DTensor parameters (FSDP2), make its state DTensors
    again, placed as their parameters."""
    from torch.distributed.tensor import DTensor

    for group in optimizer.param_groups:
        for p in group["params"]:
            if not isinstance(p, DTensor):
                continue
            st = optimizer.state.get(p, {})
            for k, v in list(st.items()):
                if torch.is_tensor(v) and not isinstance(v, DTensor) and v.shape == p.to_local().shape:
                    st[k] = DTensor.from_local(v.to(p.device), p.device_mesh, p.placements, run_check=False,
                                               shape=p.shape, stride=p.stride())


def _commit(root: Path, tmp: Path, final: Path, keep: int) -> None:
    replaced = final.with_name(final.name + _REPLACED)
    if final.exists():  # a rerun reached the same step again: set the old one aside whole, never half-deleted
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(final, replaced)
    share_permissions(tmp)  # safetensors files are created owner-only; a run's are for its team to read too
    sync_tree(tmp)  # on the disk before the rename that commits it
    os.replace(tmp, final)  # the commit point
    sync_entry(root)
    sync_entry(root.parent)  # (checkpoints/ itself, created by the first save)
    for junk in root.iterdir():  # unfinished writes; checkpoints set aside whose successor is committed (this one)
        if junk.name.endswith(".tmp") or (junk.name.endswith(_REPLACED)
                                          and (root / junk.name.removesuffix(_REPLACED)).is_dir()):
            shutil.rmtree(junk, ignore_errors=True)
    for old in list_checkpoints(root.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def finish_writes() -> None:
    """Wait for every checkpoint still being written in this process, dropping write errors: a run that ends early
    (Ctrl-C, a dead peer) names its last committed checkpoint, and releases its lock, only after these commit."""
    for writer in list(_WRITERS):
        writer.wait(reraise=False)


class CheckpointWriter:
    """Saves the checkpoints of one run; every rank calls :meth:`save` at the same steps and :meth:`wait` at the end.

    Replicated models (one process, DDP): the ranks write their RNG states, rank 0 copies the model and optimizer
    to CPU memory and a background thread writes them and commits; the next :meth:`save` (or :meth:`wait`) waits
    for it and raises its error, if any. Sharded models (``sharded=True``, FSDP2): every rank writes its own
    shards, then rank 0 commits, before :meth:`save` returns.
    """

    def __init__(self, out_dir: str | Path, *, rank: int = 0, world_size: int = 1, keep: int = 2,
                 sharded: bool = False):
        self.root = Path(out_dir) / CHECKPOINTS_DIR
        self.rank, self.world, self.keep, self.sharded = rank, world_size, keep, sharded
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        _WRITERS.add(self)

    def wait(self, *, reraise: bool = True) -> None:
        """Block until the checkpoint being written is committed; re-raise the writer's error (``reraise=False``,
        leaving a failed run: drop it; that checkpoint then does not exist)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            if reraise:
                raise err

    def save(self, step: int, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             state: dict[str, Any]) -> Path:
        """Write checkpoint ``step`` (committed in the background for replicated models); return its final path."""
        self.wait()
        final, tmp = self.root / f"step-{step:08d}", self.root / f"step-{step:08d}.tmp"
        if self.rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        _barrier(self.world)
        save_file(_rng_state(), str(tmp / f"rng-rank{self.rank}.safetensors"))
        doc = {**state, "format": FORMAT, "step": step, "world_size": self.world, "sharded": self.sharded}
        if self.sharded:
            save_file(model_snapshot(model), str(tmp / f"model-rank{self.rank}.safetensors"),
                      metadata={"sharded": sharded_keys(model)})
            save_optimizer(optimizer_snapshot(optimizer), tmp / f"optimizer-rank{self.rank}.safetensors")
            _barrier(self.world)
            if self.rank == 0:
                (tmp / "state.json").write_text(json.dumps(doc, indent=1))
                _commit(self.root, tmp, final, self.keep)
            _barrier(self.world)
            return final
        _barrier(self.world)  # every rank's RNG file is in place
        if self.rank == 0:
            weights, optim = model_snapshot(model), optimizer_snapshot(optimizer)
            self._thread = threading.Thread(target=self._write, args=(tmp, final, weights, optim, doc),
                                            name=f"checkpoint-{step}")
            self._thread.start()
        return final

    def _write(self, tmp: Path, final: Path, weights: dict, optim: dict, doc: dict) -> None:
        try:
            save_file(weights, str(tmp / "model.safetensors"))
            save_optimizer(optim, tmp / "optimizer.safetensors")
            (tmp / "state.json").write_text(json.dumps(doc, indent=1))
            _commit(self.root, tmp, final, self.keep)
        except BaseException as e:  # noqa: BLE001 (re-raised on the training thread by wait())
            self._error = e


def save_checkpoint(out_dir: str | Path, step: int, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], rank: int = 0, world_size: int = 1, keep: int = 2,
                    sharded: bool = False) -> Path:
    """Write checkpoint ``step`` and wait until it is committed; every rank must call it."""
    writer = CheckpointWriter(out_dir, rank=rank, world_size=world_size, keep=keep, sharded=sharded)
    path = writer.save(step, model=model, optimizer=optimizer, state=state)
    writer.wait()
    _barrier(world_size)
    return path


def load_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    rank: int = 0, world_size: int = 1, sharded: bool = False,
                    required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Restore model, optimizer and this rank's RNG from ``path``; return the state.json document, which must hold
    the fields ``required`` (a training run's: TRAINING_FIELDS). A checkpoint whose files are missing, truncated or
    not what ddk writes is a StudentError saying how to go on."""
    path = Path(path)
    try:
        return _load(path, model=model, optimizer=optimizer, rank=rank, world_size=world_size, sharded=sharded,
                     required=required)
    except (OSError, SafetensorError, json.JSONDecodeError, KeyError) as e:
        raise damaged(path, describe(e, 200)) from None


#: The state.json fields a training run resumes from (unit tests save checkpoints without them).
TRAINING_FIELDS = ("factor", "weights", "sampler")


def _state_problem(doc: dict[str, Any], required: tuple[str, ...] = ()) -> str | None:
    """What makes a state.json document (edited by hand, say) unusable for a resume: a field ``required`` missing,
    or a field of the wrong type (the others are checked where present)."""
    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def numbers(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)

    s = doc.get("sampler", {})
    checks = {"step": whole(doc.get("step")) and doc["step"] >= 0, "world_size": whole(doc.get("world_size")),
              "factor": numbers(doc.get("factor", [])), "weights": numbers(doc.get("weights", [])),
              "sampler": isinstance(s, dict)}
    if isinstance(s, dict) and s:
        checks.update({"sampler.seed": whole(s.get("seed")), "sampler.interval": whole(s.get("interval")),
                       "sampler.rows_per_interval": whole(s.get("rows_per_interval")),
                       "sampler.num_rows": numbers(s.get("num_rows")) and all(map(whole, s["num_rows"])),
                       "sampler.consumed_at_start": numbers(s.get("consumed_at_start")),
                       "sampler.weights": s.get("weights") is None or numbers(s.get("weights"))})
    bad = [k for k in required if k not in doc]
    bad += [k for k, ok in checks.items() if not ok and k not in bad]
    return f"field(s) {', '.join(bad)} missing or of the wrong type" if bad else None


def _load(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int, world_size: int,
          sharded: bool, required: tuple[str, ...]) -> dict[str, Any]:
    doc = json.loads((path / "state.json").read_text())
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise damaged(path, f"state.json is not the state of a checkpoint written by ddk (format {FORMAT!r})")
    if problem := _state_problem(doc, required):
        raise damaged(path, f"state.json: {problem}")
    if doc["world_size"] != world_size:
        raise ValueError(
            f"checkpoint {path} was written by {doc['world_size']} rank(s), this run has {world_size}; resume with "
            f"the same number of processes"
        )
    if bool(doc.get("sharded", False)) != sharded:
        raise ValueError(f"checkpoint {path} was written {'with' if doc.get('sharded') else 'without'} --fsdp; "
                         f"resume it {'with' if doc.get('sharded') else 'without'} --fsdp")
    if sharded:
        copy_into(model, load_file(str(path / f"model-rank{rank}.safetensors")), path)
    else:
        load_weights(model, path)
    rng = load_file(str(path / f"rng-rank{rank}.safetensors"))
    try:  # (a well-formed file of another optimizer or generator: torch's ValueError or RuntimeError)
        optimizer.load_state_dict(load_optimizer(path, f"optimizer-rank{rank}" if sharded else "optimizer"))
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_initialized():  # (the student is on this rank's GPU by now)
            torch.cuda.set_rng_state(rng["cuda"])
    except DdkError:
        raise
    except (ValueError, RuntimeError) as e:
        raise damaged(path, f"its optimizer or RNG state does not fit this run ({describe(e, 160)})") from None
    if sharded:
        _restore_dtensor_state(optimizer)
    return doc
