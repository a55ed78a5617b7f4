"""Stage1Config: every knob of `ddk-teacher dump`, one flat frozen dataclass, validated as a whole."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from ddk_store.errors import ConfigError
from ddk_store.storage import check_store_url
from ddk_store.yamlio import UniqueKeyLoader, read_yaml  # noqa: F401 (UniqueKeyLoader: re-exported)

BACKENDS = ("auto", "vllm", "hf")
ON_BAD_UTF8 = ("skip", "fail")
DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")


def _f(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field whose help text is the single source for the CLI option and docs/stage1.md."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class Stage1Config:
    """Resolved settings of one `ddk-teacher dump` run (defaults < --config YAML < flags)."""

    teacher: str = _f("", "Teacher model: a Hugging Face model directory or hub id (required).")
    corpora: str = _f("", "CORPORA.yaml mapping domain names to their sources (required).")
    store: str = _f("", "Store URL: local path, file://, s3://bucket/prefix or memory:// (required).")
    seq_len: int = _f(1024, "Tokens per packed row (T); at most the teacher's context length.")
    top_k: int = _f(64, "Teacher log-probs kept per position (K); at most the vocabulary size.")
    heldout_seqs: int = _f(500, "Rows held out per domain for teacher/student perplexity (paper: 500).")
    backend: str = _f("auto", "Teacher engine: vllm, hf (transformers) or auto (vllm when usable).", choices=BACKENDS)
    shard: str = _f("0/1", "I/N: fill only the units of shard I of N (0-based); finalize with `ddk-store finalize`.")
    overwrite: bool = _f(False, "Delete an existing store at --store (only its own prefix) and start afresh.")
    max_rows_per_domain: int = _f(0, "Cap on training rows per domain (0 = use the whole corpus).")
    batch_tokens: int = _f(8192, "Tokens per teacher forward batch (hf; vllm gets a whole unit at once).")
    unit_rows: int = _f(0, "Rows per resumable work unit (0 = the store's default).")
    tensor_parallel_size: int = _f(1, "vLLM tensor-parallel degree for teachers larger than one GPU.")
    dtype: str = _f("float32", "Teacher compute dtype; log-softmax is always fp32.", choices=DTYPES)
    device: str = _f("auto", "hf backend device: cpu, cuda or auto (cuda when available).", choices=DEVICES)
    on_bad_utf8: str = _f("skip", "Non-UTF-8 text: skip the document and count it, or fail.", choices=ON_BAD_UTF8)
    teacher_revision: str = _f("", "Hub revision of a hub-id teacher (branch, tag or commit; '' = main).")
    trust_remote_code: bool = _f(False, "Allow custom model code from the teacher repository (off: safer).")
    storage_options: str = _f("", 'JSON object of storage options for s3:// stores, e.g. {"endpoint_url": "..."}.')
    progress: bool = _f(True, "Show a progress bar on stderr.")

    def __post_init__(self) -> None:
        problems = validate(self)
        if problems:
            # One error listing every problem, so the user fixes the config in one pass.
            raise ConfigError("invalid stage-1 config: " + "; ".join(problems))

    @property
    def shard_index(self) -> int:
        return int(self.shard.split("/")[0])

    @property
    def shard_count(self) -> int:
        return int(self.shard.split("/")[1])

    @property
    def storage_options_dict(self) -> dict[str, Any] | None:
        return json.loads(self.storage_options) if self.storage_options else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "config") -> Stage1Config:
        """Build from a mapping (a YAML file); unknown keys and wrong types are errors naming ``where``."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping of Stage1Config fields, got {type(data).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        problems = []
        for key, value in data.items():
            if key not in known:
                problems.append(f"unknown key {key!r} (known: {', '.join(sorted(known))})")
                continue
            want = known[key].type
            ok = {"int": isinstance(value, int) and not isinstance(value, bool), "bool": isinstance(value, bool),
                  "str": isinstance(value, str)}[want]
            if not ok:
                problems.append(f"field {key!r}: expected {want}, got {value!r}")
        if problems:
            raise ConfigError(f"{where}: " + "; ".join(problems))
        return cls(**data)


def config_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(Stage1Config))


def validate(cfg: Stage1Config) -> list[str]:
    """Every range and cross-field problem of ``cfg``, as flag-named messages (empty when valid)."""
    p: list[str] = []
    for name in ("teacher", "corpora", "store"):
        if not getattr(cfg, name):
            p.append(f"--{name.replace('_', '-')} is required")
    if cfg.seq_len < 2:
        p.append(f"--seq-len must be >= 2 (a row needs a token and its successor), got {cfg.seq_len}")
    if cfg.top_k < 1:
        p.append(f"--top-k must be >= 1, got {cfg.top_k}")
    if cfg.heldout_seqs < 1:
        p.append(f"--heldout-seqs must be >= 1 (stage 2 needs held-out rows per domain), got {cfg.heldout_seqs}")
    if cfg.max_rows_per_domain < 0:
        p.append(f"--max-rows-per-domain must be >= 0 (0 = no cap), got {cfg.max_rows_per_domain}")
    if cfg.unit_rows < 0:
        p.append(f"--unit-rows must be >= 0 (0 = store default), got {cfg.unit_rows}")
    if cfg.tensor_parallel_size < 1:
        p.append(f"--tensor-parallel-size must be >= 1, got {cfg.tensor_parallel_size}")
    if cfg.batch_tokens < cfg.seq_len and cfg.seq_len >= 2:
        p.append(f"--batch-tokens ({cfg.batch_tokens}) must be >= --seq-len ({cfg.seq_len}): a batch holds whole rows")
    for name, choices in (("backend", BACKENDS), ("on_bad_utf8", ON_BAD_UTF8), ("dtype", DTYPES), ("device", DEVICES)):
        if getattr(cfg, name) not in choices:
            p.append(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}, got {getattr(cfg, name)!r}")
    parts = cfg.shard.split("/")
    if len(parts) != 2 or not all(x.isdigit() for x in parts) or not int(parts[0]) < int(parts[1]):
        p.append(f"--shard must be I/N with 0 <= I < N (e.g. 0/2), got {cfg.shard!r}")
    if cfg.overwrite and len(parts) == 2 and parts[1].isdigit() and int(parts[1]) > 1:
        p.append("--overwrite cannot be combined with --shard I/N for N > 1 (each shard would wipe the others' "
                 "units); delete the store once, then start every shard without --overwrite")
    if cfg.tensor_parallel_size > 1 and cfg.backend == "hf":
        p.append("--tensor-parallel-size > 1 needs --backend vllm (the hf backend runs on one device)")
    if cfg.store:
        try:
            check_store_url(cfg.store)
        except ConfigError as e:
            p.append(str(e).replace("store URL ", "--store ", 1))
    if cfg.storage_options:
        try:
            if not isinstance(json.loads(cfg.storage_options), dict):
                raise ValueError("not an object")
        except ValueError as e:
            p.append(f"--storage-options must be a JSON object, got {cfg.storage_options!r} ({e})")
    return p


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a --config YAML file into a dict (validated later against Stage1Config)."""
    data = read_yaml(path, "--config")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of Stage1Config fields, got {type(data).__name__}")
    return data
