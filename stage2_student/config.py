"""Stage2Config: every knob of `ddk-student train`, flat, typed, defaulted, documented, validated at once.

The click CLI is generated from these fields (one ``--flag`` per field, help from ``metadata["help"]``), and a
test asserts the two sets are equal. Precedence: defaults < ``--config FILE`` (YAML) < flags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ddk_store.errors import ConfigError
from ddk_store.storage import check_store_url
from ddk_store.yamlio import UniqueKeyLoader, read_yaml  # noqa: F401 (UniqueKeyLoader: re-exported)

from .reweighting import MIXING_MODES, parse_static_weights


def _f(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    meta: dict[str, Any] = {"help": help}
    if choices:
        meta["choices"] = choices
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Stage2Config:
    """Resolved settings of one stage-2 run (saved as ``config.yaml`` in the output dir)."""

    # --- where
    store: str = _f("", "Teacher-logit store URL: path, file://, s3://bucket/prefix or memory://name.")
    student: str = _f("", "Student: a Hugging Face causal-LM directory or hub id.")
    out: str = _f("", "Output directory: final model, config.yaml, metrics.jsonl, checkpoints/.")
    # --- DDK domain reweighting
    mixing: str = _f("ddk", "Domain mixture: ddk (Eq.1+Eq.2), wo-fs (Eq.1 each interval), uniform, natural, "
                     "static (--static-weights).", MIXING_MODES)
    interval: int | None = _f(None, "K, optimizer steps per DDK interval (evaluate + reweight every K steps). "
                              "Default: max(1, steps // 30), the paper's ~30 intervals.")
    alpha: float = _f(0.5, "Eq. 2 smoothing coefficient; (1-alpha)/N is every domain's floor.")
    init_mixture: str = _f("natural", "Sampling mixture of interval 0 for ddk/wo-fs (r_0 is always Eq. 1): "
                           "natural, uniform or r0.", ("natural", "uniform", "r0"))
    static_weights: str = _f("", "For --mixing static: 'domain=w,domain=w' summing to 1; unlisted domains get 0.")
    # --- loss
    gamma: float = _f(0.2, "Weight of KL(teacher||student) next to cross-entropy; 0 is CE only (CPT baseline).")
    temperature: float = _f(1.0, "Softmax temperature T applied to both distributions in the KL.")
    kl_tail: str = _f("bucket", "KL support: top-k plus one bucket for the remaining mass (bucket), or the "
                      "top-k renormalized (renorm).", ("bucket", "renorm"))
    kl_t2_scale: bool = _f(False, "Multiply the KL by T^2 (Hinton scaling); off as in the paper (T=1).")
    loss_chunk_size: int = _f(1024, "Positions per chunk in the fused loss (bounds the fp32 working set).")
    # --- optimisation
    steps: int = _f(300, "Optimizer steps in the run.")
    batch_size: int = _f(8, "Rows per optimizer step, over all ranks and accumulation micro-steps.")
    grad_accum: int = _f(1, "Micro-steps per optimizer step (per rank).")
    lr: float = _f(3e-4, "Peak learning rate (AdamW, betas 0.9/0.95).")
    final_lr_ratio: float = _f(0.1, "Final learning rate as a fraction of --lr at the end of the cosine.")
    warmup_steps: int | None = _f(None, "Linear warm-up steps. Default: steps // 30.")
    weight_decay: float = _f(0.1, "AdamW weight decay (applied to matrices only, not norms or biases).")
    grad_clip: float = _f(1.0, "Clip the global gradient norm to this value; 0 disables.")
    seed: int = _f(0, "Seed of the sampler streams, interval shuffles and torch.")
    # --- evaluation
    eval_batch_size: int = _f(8, "Held-out rows per evaluation forward pass (per rank).")
    heldout_rows: int | None = _f(None, "Use at most this many held-out rows per domain (default: all).")
    # --- runtime
    device: str = _f("auto", "auto (cuda if available), cpu or cuda.", ("auto", "cpu", "cuda"))
    prefetch: int = _f(4, "Micro-batches read ahead by the background reader thread.")
    save_every: int | None = _f(None, "Also checkpoint every N steps (checkpoints are always written at interval "
                                "boundaries).")
    keep_checkpoints: int = _f(2, "Resumable checkpoints to keep in out/checkpoints/.")
    log_every: int = _f(1, "Write a 'step' line to metrics.jsonl every N steps.")
    trust_remote_code: bool = _f(False, "Allow the student's own modelling code from its repo (off: safer).")
    resume: bool = _f(False, "Continue the run in --out from its latest checkpoint.")
    overwrite: bool = _f(False, "Delete the run already in --out and start afresh.")

    def __post_init__(self) -> None:
        problems = config_problems(self)
        if problems:
            raise ConfigError("invalid stage-2 config: " + "; ".join(problems))

    # --- derived values (small methods, not stored fields)
    @property
    def interval_steps(self) -> int:
        return self.interval if self.interval is not None else max(1, self.steps // 30)

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else self.steps // 30

    def static_weight_map(self) -> dict[str, float]:
        return parse_static_weights(self.static_weights) if self.static_weights else {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "config") -> Stage2Config:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}"
            )
        floats = {f.name for f in dataclasses.fields(cls) if f.type.startswith("float")}
        data = dict(data)
        for k in floats & set(data):
            # YAML 1.1 reads "3e-4" (no dot) as a string; accept any text that is a number.
            if isinstance(data[k], str):
                try:
                    data[k] = float(data[k])
                except ValueError:
                    pass
        return cls(**data)


def config_problems(cfg: Stage2Config) -> list[str]:
    """Every problem with ``cfg`` (types, ranges, cross-field rules), each naming the flag, value and fix."""
    p: list[str] = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        optional = "None" in str(f.type)
        base = str(f.type).replace(" | None", "")
        if v is None and optional:
            continue
        ok = {
            "int": isinstance(v, int) and not isinstance(v, bool),
            "float": isinstance(v, (int, float)) and not isinstance(v, bool),
            "str": isinstance(v, str),
            "bool": isinstance(v, bool),
        }[base]
        if not ok:
            p.append(f"--{f.name.replace('_', '-')}: expected {base}, got {v!r}")
            continue
        choices = f.metadata.get("choices")
        if choices and v not in choices:
            p.append(f"--{f.name.replace('_', '-')}: {v!r} is not one of {', '.join(choices)}")
    if p:
        return p  # ranges below assume the types are right

    def need(cond: bool, msg: str) -> None:
        if not cond:
            p.append(msg)

    need(0.0 <= cfg.alpha <= 1.0, f"--alpha must be in [0, 1], got {cfg.alpha}")
    need(cfg.gamma >= 0.0, f"--gamma must be >= 0, got {cfg.gamma}")
    need(cfg.temperature > 0.0, f"--temperature must be > 0, got {cfg.temperature}")
    need(cfg.steps >= 1, f"--steps must be >= 1, got {cfg.steps}")
    need(cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}")
    need(cfg.grad_accum >= 1, f"--grad-accum must be >= 1, got {cfg.grad_accum}")
    need(cfg.lr > 0.0, f"--lr must be > 0, got {cfg.lr}")
    need(0.0 <= cfg.final_lr_ratio <= 1.0, f"--final-lr-ratio must be in [0, 1], got {cfg.final_lr_ratio}")
    need(cfg.weight_decay >= 0.0, f"--weight-decay must be >= 0, got {cfg.weight_decay}")
    need(cfg.grad_clip >= 0.0, f"--grad-clip must be >= 0 (0 disables), got {cfg.grad_clip}")
    need(cfg.eval_batch_size >= 1, f"--eval-batch-size must be >= 1, got {cfg.eval_batch_size}")
    need(cfg.loss_chunk_size >= 1, f"--loss-chunk-size must be >= 1, got {cfg.loss_chunk_size}")
    need(cfg.prefetch >= 1, f"--prefetch must be >= 1, got {cfg.prefetch}")
    need(cfg.keep_checkpoints >= 1, f"--keep-checkpoints must be >= 1, got {cfg.keep_checkpoints}")
    need(cfg.log_every >= 1, f"--log-every must be >= 1, got {cfg.log_every}")
    if cfg.heldout_rows is not None:
        need(cfg.heldout_rows >= 1, f"--heldout-rows must be >= 1, got {cfg.heldout_rows}")
    if cfg.save_every is not None:
        need(cfg.save_every >= 1, f"--save-every must be >= 1, got {cfg.save_every}")
    if cfg.warmup_steps is not None:
        need(0 <= cfg.warmup_steps < max(cfg.steps, 1),
             f"--warmup-steps must be in [0, steps={cfg.steps}), got {cfg.warmup_steps}")
    if cfg.interval is not None:
        need(cfg.interval >= 1, f"--interval must be >= 1, got {cfg.interval}")
        need(cfg.interval <= cfg.steps,
             f"--interval {cfg.interval} is larger than the run (--steps {cfg.steps}): no domain reweighting "
             f"would happen; lower --interval or raise --steps")
    need(cfg.batch_size % cfg.grad_accum == 0,
         f"--batch-size {cfg.batch_size} must be divisible by --grad-accum {cfg.grad_accum}")
    need(not (cfg.resume and cfg.overwrite), "--resume and --overwrite exclude each other; pick one")
    if cfg.mixing == "static":
        if not cfg.static_weights:
            p.append("--mixing static needs --static-weights 'domain=w,...' (weights summing to 1)")
        else:
            try:
                parse_static_weights(cfg.static_weights)
            except ConfigError as e:
                p.append(f"--{e}".replace("--static_weights", "--static-weights"))
    elif cfg.static_weights:
        p.append(f"--static-weights is only used with --mixing static (got --mixing {cfg.mixing})")
    for name in ("store", "student", "out"):
        need(bool(getattr(cfg, name)), f"--{name} is required")
    if cfg.store:
        try:
            check_store_url(cfg.store)
        except ConfigError as e:
            p.append(str(e).replace("store URL ", "--store ", 1))
    if cfg.student and (problem := local_model_problem("--student", cfg.student)):
        p.append(problem)
    return p


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict (keys checked later by ``Stage2Config.from_dict``).

    Raises:
        ConfigError: missing, unreadable, not UTF-8, not YAML (python/* tags included), a key given twice, or not
            a mapping.
    """
    data = read_yaml(path, "--config")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of field: value, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def local_model_problem(flag: str, name: str) -> str | None:
    """A message when ``name`` is written as a local path (not a hub id) but is no directory, else None.

    Hub ids look like ``org/name``; a name starting with '/', '.' or '~', or with more than one '/', is a path,
    and a missing one would otherwise be sent to the hub as a malformed id.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return None
    if path.exists():
        return f"{flag} {name}: is a file; give a Hugging Face model directory (save_pretrained output) or hub id"
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        return f"{flag} {name}: directory does not exist; give a Hugging Face model directory or hub id"
    return None


def write_yaml(cfg: Stage2Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
