"""Stage2Config (`ddk-student train`) and EvalConfig (`ddk-student eval`): fields, defaults, help, own rules.

Flags, ``--config`` files, precedence (defaults < ``--config FILE`` < flags typed) and the per-field checks come from
:mod:`ddk_store.settings`; a test asserts that the train command's flags and Stage2Config's fields are equal.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ddk_store import settings
from ddk_store.errors import ConfigError
from ddk_store.paths import model_ref_problem, replace_file
from ddk_store.settings import MODEL, PATH, setting
from ddk_store.storage import check_store_url
from ddk_store.yamlio import UniqueKeyLoader  # noqa: F401 (re-exported: the loader every --config goes through)

from .reweighting import MIXING_MODES, parse_static_weights
from .sinks import REPORT_TO

DEVICES = ("auto", "cpu", "cuda")
TOPK_DECODE = ("auto", "host", "device")
#: The mixings whose weights follow the held-out ratios (Eq. 1): they evaluate to reweight, not only to report.
REWEIGHTED = ("ddk", "wo-fs")
#: Fields that change how a run executes but not what it computes: they may differ on --resume (``out`` too: a run
#: directory may have been moved). ``trust_remote_code`` is never taken from the saved run (resume.resume_layer): a
#: config.yaml in a shared run directory must not switch on code execution; the user types it again.
RUNTIME_ONLY_FIELDS = frozenset({"out", "resume", "overwrite", "prefetch", "log_every", "keep_checkpoints",
                                 "save_every", "device", "eval_batch_size", "storage_options", "progress",
                                 "report_to", "compile", "activation_checkpointing", "read_workers", "topk_decode",
                                 "cache_dir", "cache_max_gib", "trust_remote_code"})


#: Readers ignore storage options on a store that is not s3:// (a run's saved settings may carry an S3 run's options
#: to a local copy of its store).
_READ_OPTION_HELP = (settings.STORAGE_OPTION_HELP
                     + " Ignored for a store that is not s3:// (named if no store is found there).")

@dataclass(frozen=True)
class Stage2Config:
    """Resolved settings of one stage-2 run (saved as ``config.yaml`` in the output dir)."""

    # --- where
    store: str = setting("", "Teacher-logit store URL: path, file://, s3://bucket/prefix or memory://name. "
                         "(train --resume reads it from the run's config.yaml.)", required=True, path=PATH,
                         metavar="URL")
    student: str = setting("", "The student to start from: a Hugging Face causal-LM directory or hub id (`eval` "
                           "names the model it measures --model; train --resume reads it from the run's "
                           "config.yaml).", required=True, path=MODEL, metavar="MODEL")
    out: str = setting("", "Run directory: final model, config.yaml, metrics.jsonl, checkpoints/.", required=True,
                       path=PATH, metavar="DIR")
    # --- DDK domain reweighting
    mixing: str = setting("ddk", "Domain mixture: ddk (Eq.1+Eq.2), wo-fs (Eq.1 each interval), uniform, natural, "
                     "static (--static-weights).", choices=MIXING_MODES)
    interval: int | None = setting(None, "K, optimizer steps per DDK interval (evaluate + reweight every K steps; "
                              "below --steps with ddk or wo-fs). Default: max(1, steps // 30), the paper's ~30 "
                              "intervals.")
    alpha: float = setting(0.5, "Eq. 2 smoothing coefficient; (1-alpha)/N is every domain's floor.")
    init_mixture: str = setting("natural", "Sampling mixture of interval 0 for ddk/wo-fs (r_0 is always Eq. 1): "
                           "natural, uniform or r0.", choices=("natural", "uniform", "r0"))
    static_weights: str = setting("", "For --mixing static: 'domain=w,domain=w' summing to 1; unlisted domains get 0.")
    max_epochs_per_domain: float | None = setting(None, "Beyond the paper, opt-in: sample no domain more than E passes "
                                                  "over its training rows in the run; weight above a domain's cap "
                                                  "goes to the others in proportion to their weights. Default: no "
                                                  "cap (paper-exact DDK).", metavar="E")
    # --- loss
    gamma: float = setting(0.2, "Weight of KL(teacher||student) next to cross-entropy; 0 is CE only (CPT baseline).")
    temperature: float = setting(1.0, "Softmax temperature T applied to both distributions in the KL.")
    kl_tail: str = setting("bucket", "KL support: top-k plus one bucket for the remaining mass (bucket), or the "
                      "top-k renormalized (renorm).", choices=("bucket", "renorm"))
    kl_t2_scale: bool = setting(False, "Multiply the KL by T^2 (Hinton scaling); off as in the paper (T=1).")
    loss_chunk_size: int = setting(256, "Positions per chunk in the fused loss (bounds the fp32 working set).")
    # --- optimisation
    steps: int = setting(300, "Optimizer steps in the run.")
    batch_size: int = setting(8, "Rows per optimizer step, over all ranks and accumulation micro-steps.")
    grad_accum: int = setting(1, "Micro-steps per optimizer step (per rank).")
    lr: float = setting(3e-4, "Peak learning rate (AdamW, betas 0.9/0.95).")
    final_lr_ratio: float = setting(0.1, "Final learning rate as a fraction of --lr at the end of the cosine.")
    warmup_steps: int | None = setting(None, "Linear warm-up steps. Default: steps // 30.")
    weight_decay: float = setting(0.1, "AdamW weight decay (applied to matrices only, not norms or biases).")
    grad_clip: float = setting(1.0, "Clip the global gradient norm to this value; 0 disables.")
    seed: int = setting(0, "Seed of the sampler streams, interval shuffles and torch.")
    # --- evaluation
    eval_batch_size: int = setting(8, "Held-out rows per evaluation forward pass (per rank).")
    heldout_rows: int | None = setting(None, "Use at most this many held-out rows per domain (default: all).")
    # --- runtime
    device: str = setting("auto", "auto (cuda if available), cpu or cuda.", choices=DEVICES)
    compile: bool | None = setting(None, "torch.compile the student's forward (default: on CUDA, not on CPU); a "
                                   "compile that fails warns once and the run continues without it.")
    activation_checkpointing: bool = setting(False, "Recompute each decoder layer's activations in the backward pass "
                                             "instead of keeping them (less memory, about a third more compute).")
    fsdp: bool = setting(False, "Under torchrun, shard parameters, gradients and optimizer state over the ranks "
                         "(FSDP2, one unit per decoder layer) instead of replicating them (DDP).")
    prefetch: int = setting(4, "Micro-batches read ahead of the training loop (at least --read-workers).")
    read_workers: int | None = setting(None, "Threads reading and decoding micro-batches at once, results in plan "
                                       "order. Default: the host's cores over its ranks, at least 2, at most 8.")
    topk_decode: str = setting("auto", "Where the teacher's top-k is decoded: 'device' ships the default encoding's "
                               "stored bytes (3 per entry, not 8; 5 for a vocabulary of 65,535 ids or more) and "
                               "decodes them on the training device, 'host' decodes in the read threads; auto: device "
                               "on CUDA, host otherwise.",
                               choices=TOPK_DECODE)
    cache_dir: str | None = setting(None, "Local disk cache of an s3:// store's chunks, shared by runs and ranks on "
                                    "this host and keyed by the store's identity (a rewritten store is never served "
                                    "stale); 'auto' is $DDK_CACHE/stores. Default: no cache.", metavar="DIR")
    cache_max_gib: float | None = setting(None, "Cap of the --cache-dir in GiB: least recently used chunks go first. "
                                          "Default: no cap.")
    save_every: int | None = setting(None, "Also checkpoint every N steps (checkpoints are always written at interval "
                                "boundaries).")
    keep_checkpoints: int = setting(2, "Resumable checkpoints to keep in out/checkpoints/.")
    log_every: int = setting(1, "Write a 'step' line to metrics.jsonl every N steps.")
    trust_remote_code: bool = setting(False, "Allow the student's own modelling code from its repo (off: safer).",
                                      typed_only=True)
    storage_options: dict[str, Any] | None = setting(None, _READ_OPTION_HELP, flag="--storage-option")
    progress: bool = setting(True, "Show a progress bar on stderr.")
    report_to: str = setting("none", "Also write every metrics.jsonl record as TensorBoard scalars into "
                             "out/tensorboard/ (tensorboard); metrics.jsonl stays the record.", choices=REPORT_TO)
    resume: bool = setting(False, "Continue the run in --out from its latest checkpoint, with the settings saved in "
                           "its config.yaml (flags typed now override them; a larger --steps extends the run).")
    overwrite: bool = setting(False, "Replace the run already in --out: its own files are deleted once the new "
                                     "run has passed its checks (a file of yours there is refused, not deleted).")

    def __post_init__(self) -> None:
        settings.check(self, problems, "stage-2 config")

    # --- derived values (small methods, not stored fields)
    @property
    def interval_steps(self) -> int:
        return self.interval if self.interval is not None else max(1, self.steps // 30)

    def plan_line(self, *, seq_len: int, device: str, world: int) -> str:
        """The run's shape in one line (printed once the student has been evaluated at step 0): the budget, how often
        it evaluates, where."""
        K, steps, B = self.interval_steps, self.steps, self.batch_size
        evals = 2 + (steps - 1) // K  # step 0, each interval boundary before the end, the final evaluation
        what = "evaluation and reweighting" if self.mixing in REWEIGHTED else "evaluation"
        default = "" if self.interval is not None else " (the default, --steps / 30; --interval sets it)"
        return (f"training: {steps:,} steps of {B} rows x {seq_len} tokens ({steps * B * seq_len:,} tokens), mixing "
                f"{self.mixing}; held-out {what} every {K} step(s){default}, {evals} in all; {device}, "
                f"{world} process(es)")

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else self.steps // 30

    @property
    def cache_max_bytes(self) -> int | None:
        return None if self.cache_max_gib is None else int(self.cache_max_gib * 2**30)

    def static_weight_map(self) -> dict[str, float]:
        return parse_static_weights(self.static_weights) if self.static_weights else {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def problems(cfg: Stage2Config) -> list[str]:
    """Every range and cross-field problem of ``cfg``, each naming the flag, value and fix (the per-field checks,
    types, required and choices, are :func:`ddk_store.settings.check`'s)."""
    p: list[str] = []

    def need(cond: bool, msg: str) -> None:
        if not cond:
            p.append(msg)

    need(0.0 <= cfg.alpha <= 1.0, f"--alpha must be in [0, 1], got {cfg.alpha}")
    need(cfg.gamma >= 0.0, f"--gamma must be >= 0, got {cfg.gamma}")
    need(cfg.temperature > 0.0, f"--temperature must be > 0, got {cfg.temperature}")
    need(cfg.steps >= 1, f"--steps must be >= 1, got {cfg.steps}")
    need(0 <= cfg.seed < 2**63, f"--seed must be in [0, 2^63), got {cfg.seed}")
    need(cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}")
    need(cfg.grad_accum >= 1, f"--grad-accum must be >= 1, got {cfg.grad_accum}")
    need(cfg.lr > 0.0, f"--lr must be > 0, got {cfg.lr}")
    need(0.0 <= cfg.final_lr_ratio <= 1.0, f"--final-lr-ratio must be in [0, 1], got {cfg.final_lr_ratio}")
    need(cfg.weight_decay >= 0.0, f"--weight-decay must be >= 0, got {cfg.weight_decay}")
    need(cfg.grad_clip >= 0.0, f"--grad-clip must be >= 0 (0 disables), got {cfg.grad_clip}")
    need(cfg.eval_batch_size >= 1, f"--eval-batch-size must be >= 1, got {cfg.eval_batch_size}")
    need(cfg.loss_chunk_size >= 1, f"--loss-chunk-size must be >= 1, got {cfg.loss_chunk_size}")
    need(cfg.prefetch >= 1, f"--prefetch must be >= 1, got {cfg.prefetch}")
    if cfg.read_workers is not None:
        need(cfg.read_workers >= 1, f"--read-workers must be >= 1 (omit it for the default), got {cfg.read_workers}")
    if cfg.cache_dir not in (None, "auto"):
        need(_writable_dir(Path(cfg.cache_dir).expanduser()),
             f"--cache-dir {cfg.cache_dir}: not a directory this process can create or write to; give a writable "
             f"directory (or auto: $DDK_CACHE/stores), or leave it out for no cache")
    if cfg.cache_max_gib is not None:
        need(cfg.cache_max_gib > 0, f"--cache-max-gib must be > 0 (omit it for no cap), got {cfg.cache_max_gib}")
        need(cfg.cache_dir is not None, "--cache-max-gib caps the --cache-dir; give --cache-dir DIR (or auto) too")
    need(cfg.keep_checkpoints >= 1, f"--keep-checkpoints must be >= 1, got {cfg.keep_checkpoints}")
    need(cfg.log_every >= 1, f"--log-every must be >= 1, got {cfg.log_every}")
    if cfg.max_epochs_per_domain is not None:
        need(cfg.max_epochs_per_domain > 0,
             f"--max-epochs-per-domain must be > 0 (omit it for no cap), got {cfg.max_epochs_per_domain}")
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
        need(cfg.mixing not in REWEIGHTED or cfg.interval != cfg.steps,
             f"--interval {cfg.interval} is the whole run (--steps {cfg.steps}): --mixing {cfg.mixing} would compute "
             f"its weights only at the final evaluation and never sample by them; lower --interval or raise --steps")
    if cfg.grad_accum >= 1:  # (--grad-accum 0 is named above; batch_size % 0 would raise instead)
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
                p.append(str(e))
    elif cfg.static_weights:
        p.append(f"--static-weights is only used with --mixing static (got --mixing {cfg.mixing})")
    if cfg.init_mixture != "natural" and cfg.mixing not in REWEIGHTED:
        p.append(f"--init-mixture {cfg.init_mixture} is only used with --mixing ddk or wo-fs (got --mixing "
                 f"{cfg.mixing}, which samples its own mixture from step 0)")
    p += _where_problems(cfg.store, "--student", cfg.student)
    return p


def _where_problems(store: str, model_flag: str, model: str) -> list[str]:
    """The store URL and the model reference (local directory or hub id) of train and eval, checked before use."""
    p = []
    if store:
        try:
            check_store_url(store)
        except ConfigError as e:
            p.append(str(e).replace("store URL ", "--store ", 1))
    if model and (problem := model_ref_problem(model_flag, model)):
        p.append(problem)
    return p


@dataclass(frozen=True)
class EvalConfig:
    """Settings of `ddk-student eval`: per-domain held-out perplexity of a model against the store's teacher."""

    store: str = setting("", "Teacher-logit store URL: path, file://, s3://bucket/prefix or memory://name.",
                         required=True, path=PATH, metavar="URL")
    model: str = setting("", "The model to measure: a Hugging Face causal-LM directory (a finished run's --out), a "
                         "checkpoint directory RUN/checkpoints/step-N, or a hub id (`train` names the model it starts "
                         "from --student).", required=True, path=MODEL, metavar="MODEL")
    json: bool = setting(False, "Print one JSON object instead of a table.")
    eval_batch_size: int = setting(8, "Held-out rows per forward pass (as train's --eval-batch-size; --batch-size "
                                   "is the same flag).", aliases=("--batch-size",))
    heldout_rows: int | None = setting(None, "Use at most this many held-out rows per domain (default: all).")
    device: str = setting("auto", "auto (cuda if available), cpu or cuda.", choices=DEVICES)
    trust_remote_code: bool = setting(False, "Allow the model's own modelling code from its repo (off: safer).",
                                      typed_only=True)
    storage_options: dict[str, Any] | None = setting(None, _READ_OPTION_HELP, flag="--storage-option")
    progress: bool = setting(True, "Show the model loading bars on stderr.")

    def __post_init__(self) -> None:
        settings.check(self, eval_problems, "eval settings")


def eval_problems(cfg: EvalConfig) -> list[str]:
    """Range problems of ``cfg`` plus its store URL and model reference, checked before the store is opened."""
    p = []
    if cfg.eval_batch_size < 1:
        p.append(f"--eval-batch-size/--batch-size must be >= 1, got {cfg.eval_batch_size}")
    if cfg.heldout_rows is not None and cfg.heldout_rows < 1:
        p.append(f"--heldout-rows must be >= 1 (omit it for all rows), got {cfg.heldout_rows}")
    return p + _where_problems(cfg.store, "--model", cfg.model)


def saved_values(cfg: Stage2Config) -> dict[str, Any]:
    """The settings a run's config.yaml holds for ``cfg``."""
    return {**settings.saved_dict(cfg), "interval": cfg.interval_steps, "warmup_steps": cfg.warmup,
            "resume": False, "overwrite": False}


def write_config(cfg: Stage2Config, path: str | Path) -> None:
    """Save ``cfg`` as a run's config.yaml: absolute paths (``--config RUN/config.yaml`` works from anywhere), K and
    the warm-up as used (a run extended by a larger --steps keeps them), no credentials; written to a temporary file
    and renamed, so a kill leaves the old or the new file."""
    replace_file(path, yaml.safe_dump(saved_values(cfg), sort_keys=False))


def _writable_dir(path: Path) -> bool:
    """Whether ``path`` is a writable directory, or one that can be created (its nearest existing parent is a
    writable directory)."""
    while not path.exists():
        if path.parent == path:
            return False
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)
