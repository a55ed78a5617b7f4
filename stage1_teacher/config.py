"""Stage1Config: every knob of `ddk-teacher dump`, one flat frozen dataclass, validated as a whole.

Flags, ``--config`` files and the per-field checks come from :mod:`ddk_store.settings`; this module holds the fields
and the rules that are stage 1's own (ranges, cross-field).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any

from ddk_store import settings, spec
from ddk_store.errors import ConfigError
from ddk_store.settings import MODEL, PATH, setting
from ddk_store.storage import check_store_url, options_without_s3, undeletable_reason
from ddk_store.yamlio import UniqueKeyLoader  # noqa: F401 (re-exported: the loader every --config goes through)

BACKENDS = ("auto", "vllm", "hf")
#: The cores this process may use: the default of --workers.
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
ON_BAD_UTF8 = ("skip", "fail")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Stage1Config:
    """Resolved settings of one `ddk-teacher dump` run (defaults < --config YAML < flags)."""

    teacher: str = setting("", "Teacher model: a Hugging Face model directory or hub id.", required=True,
                           path=MODEL, metavar="MODEL")
    corpora: str = setting("", "CORPORA.yaml mapping domain names to their sources.", required=True, path=PATH,
                           metavar="FILE")
    store: str = setting("", "Store URL: local path, file://, s3://bucket/prefix or memory://.", required=True,
                         path=PATH, metavar="URL")
    seq_len: int = setting(1024, "Tokens per packed row (T); at most the teacher's context length (vLLM: "
                           "the context length - 1).")
    top_k: int = setting(64, "Teacher log-probs kept per position (K); at most the vocabulary size.")
    encoding: str = setting(spec.DEFAULT_ENCODING, "Top-k encoding of the store (docs/store-format.md, section 4); "
                            "the default keeps the teacher's exact tail.", choices=spec.ENCODINGS)
    samples: int = setting(spec.DEFAULT_SAMPLES, f"--encoding {spec.ENC_SAMPLED}: draws per position from the "
                           f"teacher (N, 1..{spec.MAX_SAMPLES}), stored as distinct ids with counts.")
    sampling_seed: int = setting(0, f"--encoding {spec.ENC_SAMPLED}: seed of the draws (recorded in the store; "
                                 "each row's draws also depend on the row's teacher output only).")
    heldout_seqs: int = setting(500, "Rows held out per domain for teacher/student perplexity (paper: 500).")
    backend: str = setting("auto", "Teacher engine: vllm, hf (transformers) or auto (vllm when usable).",
                           choices=BACKENDS)
    shard: str = setting("0/1", "I/N: fill only the units of shard I of N (0-based); then `ddk-store finalize`.")
    overwrite: bool = setting(False, "Replace a store at --store made with other settings (deletes only its own "
                                      "prefix); a store of these settings is resumed, or kept when complete.")
    max_rows_per_domain: int = setting(0, "Cap on training rows per domain (0 = use the whole corpus).")
    batch_tokens: int = setting(8192, "Tokens per teacher forward batch (hf; vllm gets a whole unit at once).")
    unit_rows: int = setting(0, "Rows per resumable work unit (0 = the store's default; a resumed store "
                                   "keeps its own).")
    tensor_parallel_size: int = setting(1, "vLLM tensor-parallel degree for teachers larger than one GPU.")
    dtype: str = setting("auto", "Teacher compute dtype (auto: bfloat16 on CUDA, float32 on CPU); log-softmax is "
                         "always fp32.", choices=DTYPES)
    device: str = setting("auto", "hf backend device: cpu, cuda or auto (cuda when available).", choices=DEVICES)
    on_bad_utf8: str = setting("skip", "Non-UTF-8 text: skip the document and count it, or fail.",
                               choices=ON_BAD_UTF8)
    teacher_revision: str = setting("", "Hub revision of a hub-id teacher (branch, tag or commit; '' = main).")
    trust_remote_code: bool = setting(False, "Allow custom model code from the teacher repository (off: safer).",
                                      typed_only=True)
    storage_options: dict[str, Any] | None = setting(
        None, settings.STORAGE_OPTION_HELP + " Refused with a --store that is not s3:// (it would become a local folder).",
        flag="--storage-option")
    progress: bool = setting(True, "Show a progress bar on stderr.")
    workers: int | None = setting(None, "Processes that tokenize the corpora (default: this machine's cores); the "
                                  "store is the same for any number.")
    verbose: bool = setting(False, "Show the teacher engine's own log lines (vLLM: about 50 per start).")
    devices: int = setting(1, "Scoring processes on this host, one per GPU (--tensor-parallel-size GPUs each), on "
                           "disjoint units; the store is finalized once. Under torchrun keep 1: each rank is one.")

    def __post_init__(self) -> None:
        # One error listing every problem, so the user fixes the config in one pass.
        settings.check(self, problems, "stage-1 config")

    @property
    def shard_index(self) -> int:
        return int(self.shard.split("/")[0])

    @property
    def shard_count(self) -> int:
        return int(self.shard.split("/")[1])

    @property
    def storage_options_dict(self) -> dict[str, Any] | None:
        return dict(self.storage_options) if self.storage_options else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def overwrite_refusal(what: str, each: str, start: str = "start") -> str:
    """Why --overwrite is refused when ``what`` makes several processes write one store, and what to do instead."""
    return (f"--overwrite cannot be combined with {what} (each {each} would wipe the others' units); delete the store "
            f"once, then {start} without --overwrite")


def problems(cfg: Stage1Config) -> list[str]:
    """Every range and cross-field problem of ``cfg``, as flag-named messages (empty when valid); the per-field
    checks (types, required, choices) are :func:`ddk_store.settings.check`'s."""
    p: list[str] = []
    if cfg.seq_len < 2:
        p.append(f"--seq-len must be >= 2 (a row needs a token and its successor), got {cfg.seq_len}")
    if cfg.top_k < 1:
        p.append(f"--top-k must be >= 1, got {cfg.top_k}")
    if not 1 <= cfg.samples <= spec.MAX_SAMPLES:
        p.append(f"--samples must be in [1, {spec.MAX_SAMPLES}] (draw counts are uint8; 255 marks missing data), "
                 f"got {cfg.samples}")
    if not 0 <= cfg.sampling_seed < 2**63:
        p.append(f"--sampling-seed must be in [0, 2^63), got {cfg.sampling_seed}")
    if cfg.heldout_seqs < 1:
        p.append(f"--heldout-seqs must be >= 1 (stage 2 needs held-out rows per domain), got {cfg.heldout_seqs}")
    if cfg.max_rows_per_domain < 0:
        p.append(f"--max-rows-per-domain must be >= 0 (0 = no cap), got {cfg.max_rows_per_domain}")
    if cfg.unit_rows < 0:
        p.append(f"--unit-rows must be >= 0 (0 = store default), got {cfg.unit_rows}")
    if cfg.workers is not None and cfg.workers < 1:
        p.append(f"--workers must be >= 1 (processes that tokenize the corpora; 1 = tokenize in this process), "
                 f"got {cfg.workers}")
    if cfg.devices < 1:
        p.append(f"--devices must be >= 1 (scoring processes on this host, one per GPU), got {cfg.devices}")
    if cfg.overwrite and cfg.devices > 1:
        p.append(overwrite_refusal("--devices N > 1", "device"))
    if cfg.tensor_parallel_size < 1:
        p.append(f"--tensor-parallel-size must be >= 1, got {cfg.tensor_parallel_size}")
    if cfg.backend == "hf" and cfg.batch_tokens < cfg.seq_len and cfg.seq_len >= 2:  # the only backend that reads it
        p.append(f"--batch-tokens ({cfg.batch_tokens}) must be >= --seq-len ({cfg.seq_len}): a batch holds whole rows")
    parts = cfg.shard.split("/")
    if not re.fullmatch(r"(0|[1-9][0-9]*)/[1-9][0-9]*", cfg.shard) or not int(parts[0]) < int(parts[1]):
        p.append(f"--shard must be I/N with 0 <= I < N (e.g. 0/2), got {cfg.shard!r}")
    if cfg.overwrite and len(parts) == 2 and parts[1].isdigit() and int(parts[1]) > 1:
        p.append(overwrite_refusal("--shard I/N for N > 1", "shard", "start every shard"))
    if cfg.tensor_parallel_size > 1 and cfg.backend == "hf":
        p.append("--tensor-parallel-size > 1 needs --backend vllm (the hf backend runs on one device)")
    if cfg.store:
        try:
            check_store_url(cfg.store)
        except ConfigError as e:
            p.append(str(e).replace("store URL ", "--store ", 1))
        else:
            if hint := options_without_s3(cfg.store, cfg.storage_options):  # (the dump would create a local folder)
                p.append(f"--store {cfg.store!r} is not an s3:// location, but {hint}; or drop the storage options")
            why = undeletable_reason(cfg.store) if cfg.overwrite else None
            if why:
                p.append(f"--store with --overwrite: {why}")
    return p
