"""Where each rank runs and how the student is spread over ranks: device choice, process group, DDP or FSDP2.

torchrun starts the ranks (one host or many: multi-node is torchrun's ``--nnodes``/``--rdzv-endpoint``); this module
reads its environment, gives rank R the device ``cuda:LOCAL_RANK`` (or the CPU), and wraps the student:

- DDP (default when ``WORLD_SIZE > 1``): every rank holds the whole model, gradients are all-reduced.
- FSDP2 (``--fsdp``): ``fully_shard`` per decoder layer, then the root; parameters, gradients and optimizer state
  are sharded over the ranks. On CUDA parameters are gathered in bf16 and gradients reduced in fp32
  (``MixedPrecisionPolicy``); on CPU (gloo, the tests) everything stays fp32.

The device choice is the pure :func:`choose_device`, so its rules are tested without a GPU.
"""

from __future__ import annotations

import os
import warnings
from typing import NamedTuple

import torch
import torch.distributed as dist

from ddk_store import settings
from ddk_store.errors import ConfigError


class DistEnv(NamedTuple):
    """torchrun's environment: global rank, world size, rank on this host, ranks on this host."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1


#: What torchrun sets for every rank; a process with some of them set and others not was not started by torchrun.
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def dist_env(environ: dict[str, str] | None = None) -> DistEnv:
    """:class:`DistEnv` from torchrun's environment variables; ``(0, 1, 0, 1)`` for a plain process.

    Raises:
        ConfigError: the variables are half set or inconsistent (a process started by hand with a leftover
            ``RANK``, say), which would otherwise hang waiting for peers that never come, or crash inside torch.
    """
    env = os.environ if environ is None else environ
    present = [v for v in TORCHRUN_VARS if v in env]
    if not present:
        return DistEnv()
    fix = (f"launch with torchrun (which sets {', '.join(TORCHRUN_VARS)}), or unset them to train in one "
           f"process")
    if len(present) < len(TORCHRUN_VARS) and env.get("WORLD_SIZE", "1") != "1":
        missing = [v for v in TORCHRUN_VARS if v not in env]
        raise ConfigError(f"torchrun environment half set: {', '.join(present)} set but {', '.join(missing)} not; "
                          f"{fix}")
    try:
        world = int(env.get("WORLD_SIZE", 1))
        rank = int(env.get("RANK", 0))
        local_rank = int(env.get("LOCAL_RANK", 0))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    except ValueError as e:
        raise ConfigError(f"torchrun environment: not an integer ({e}); {fix}") from None
    if world < 1 or not 0 <= rank < world or not 0 <= local_rank < max(local_world, 1):
        raise ConfigError(f"torchrun environment: RANK={rank} LOCAL_RANK={local_rank} do not fit WORLD_SIZE={world} "
                          f"LOCAL_WORLD_SIZE={local_world} (a rank must be below its world size); {fix}")
    return DistEnv(rank, world, local_rank, local_world)


def choose_device(device: str, *, cuda_available: bool, device_count: int, local_rank: int = 0,
                  local_world: int = 1, flag: str = "--device") -> str:
    """The device of rank ``local_rank`` of ``local_world`` ranks on this host: ``"cpu"`` or ``"cuda:LOCAL_RANK"``.

    ``auto`` means CUDA when torch sees a GPU. On CUDA each rank needs its own GPU: more ranks on a host than visible
    GPUs stop every rank with one line naming both counts (two ranks sharing one GPU would fight over its memory and
    NCCL refuses them), as does ``cuda`` without CUDA.

    Raises:
        ConfigError: naming the flag, the counts and the fix.
    """
    if problem := settings.device_problem(flag, device, cuda_available):
        raise ConfigError(problem)
    if device == "cpu" or not cuda_available:
        return "cpu"
    if local_world > device_count or local_rank >= device_count:
        ranks = max(local_world, local_rank + 1)
        raise ConfigError(
            f"{flag} {device}: torchrun started {ranks} ranks on this host but it has {device_count} visible CUDA "
            f"device(s); start at most {device_count} rank(s) per host (--nproc-per-node {device_count}), or pass "
            f"{flag} cpu to run all {ranks} ranks on the CPU")
    return f"cuda:{local_rank}"


def pick_device(device: str, env: DistEnv | None = None) -> torch.device:
    """:func:`choose_device` for this process, asking torch what it sees."""
    env = env or DistEnv()
    cuda = torch.cuda.is_available()
    return torch.device(choose_device(device, cuda_available=cuda, device_count=torch.cuda.device_count() if cuda
                                      else 0, local_rank=env.local_rank, local_world=env.local_world))


def init_distributed(device: torch.device, world: int) -> None:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU) and bind this rank's GPU; no-op for one process."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)


def collective_device(backend: str) -> str:
    """Where a tensor must be for a collective of ``backend``: nccl reduces only CUDA tensors (a CPU tensor fails with
    "No backend type associated with device type cpu"), gloo CPU ones."""
    return "cuda" if backend == "nccl" else "cpu"


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks, on ``t``'s device; ``t`` itself when no process group of several ranks is up.
    Every collective on values the loop keeps on the CPU (loss sums, held-out sums) goes through here."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    moved = t.to(collective_device(dist.get_backend()))
    dist.all_reduce(moved, op=dist.ReduceOp.SUM)
    return moved.to(t.device)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The student's transformer blocks (``model.model.layers`` for Llama-shaped causal LMs), for per-layer FSDP
    units and activation checkpointing; empty when the layout is unknown."""
    for owner in (getattr(model, "model", None), getattr(getattr(model, "model", None), "decoder", None),
                  getattr(model, "transformer", None)):
        for name in ("layers", "h", "blocks"):
            layers = getattr(owner, name, None) if owner is not None else None
            if isinstance(layers, torch.nn.ModuleList) and len(layers):
                return list(layers)
    return []


def shard_fsdp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Apply FSDP2 in place: ``fully_shard`` on each decoder layer, then on the root (embeddings, norm, lm_head).

    Raises:
        ConfigError: the student's decoder layers cannot be found (FSDP would hold the whole model as one unit).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    layers = decoder_layers(model)
    if not layers:
        raise ConfigError(f"--fsdp: cannot find the decoder layers of {type(model).__name__} (expected "
                          f"model.layers); train it with DDP (leave out --fsdp)")
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if device.type == "cuda"
          else MixedPrecisionPolicy())
    # The fused loss reads the hidden states the root returns (a view) and never writes into them in place, which
    # is what FSDP2's warning about returned views is about.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    for layer in layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The DDP wrapper the loop's forward and backward go through (``model`` stays the bare module)."""
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a plain tensor every rank agrees on: a DTensor (the gradient norm of a sharded model) is gathered
    (a collective), anything else is returned as it is (no device sync)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state on rank 0's CPU, gathered from the shards (a collective: every rank calls it; the
    other ranks get an empty dict). A tied parameter (lm_head = embeddings) appears once, as save_pretrained does."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    first: dict[int, str] = {}
    tied = [n for n, p in model.named_parameters(remove_duplicate=False) if first.setdefault(id(p), n) != n]
    return {k: v for k, v in full.items() if k not in tied}
