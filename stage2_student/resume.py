"""``--resume``: the settings a resumed run uses, and whether ``--out`` holds a run to continue from.

- Settings: the run's own ``config.yaml`` sits between the defaults and ``--config``/the flags typed, so only what
  changes needs retyping (:func:`resume_layer`).
- Extending: a larger ``--steps`` continues a run, a finished one included, from its last checkpoint. K and the
  warm-up keep the values of the saved run (by default both derive from ``--steps``), the sampler continues its
  per-domain streams, and the learning-rate cosine is recomputed for the new total: from the resumed step on it
  follows the schedule of a ``--steps N`` run (so the rate of a finished run rises again from its floor).
- Everything else that changes the result must equal the saved run (:func:`prepare_out_dir` refuses, naming it);
  the fields of :data:`~stage2_student.config.RUNTIME_ONLY_FIELDS` may differ.
"""

from __future__ import annotations

import fnmatch
import math
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ddk_store import settings
from ddk_store.errors import ConfigError
from ddk_store.storage import local_path

from .config import RUNTIME_ONLY_FIELDS, Stage2Config
from .rundir import CHECKPOINTS_DIR, CONFIG_FILE, RUN_ENTRIES, TENSORBOARD_DIR

_RESTORE = "restore it, or start afresh with --overwrite"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def read_saved(out: str | Path) -> dict[str, Any] | None:
    """The settings saved in run directory ``out`` (its config.yaml) as field values, or None when it has none.

    Raises:
        ConfigError: the file is not YAML (python tags included), not a mapping, or holds unknown keys.
    """
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return settings.read_config(Stage2Config, path, flag=f"--resume {out}:", saved=True)
    except ConfigError as e:
        raise ConfigError(f"{e}; it is not a config this tool wrote: {_RESTORE}") from None


def resume_layer(given: Mapping[str, Any]) -> dict[str, Any]:
    """The saved settings of the run in ``given["out"]`` when ``given`` (the --config values and flags typed) asks
    for ``--resume``; empty otherwise. Layered under ``given``, they make only changed flags need retyping.

    When ``given`` changes ``--steps``, K and the warm-up are pinned to the saved run's values (their defaults
    follow ``--steps``; the sampler's intervals must not move under a resumed run).
    """
    if not given.get("resume") or not given.get("out"):
        return {}
    out = given["out"]
    saved = read_saved(out)
    if saved is None and not (given.get("store") and given.get("student")):
        there = f"no {CONFIG_FILE} in it" if Path(out).is_dir() else "no such directory"
        raise ConfigError(f"--resume {out}: no ddk-student run there ({there}); check --out, or give --store and "
                          "--student to start a new run there")
    saved = saved or {}
    # (trust_remote_code: never from a file a teammate could have edited; typed again, or off)
    saved = {k: v for k, v in saved.items() if k not in ("resume", "overwrite", "trust_remote_code")}
    if saved and "steps" in given and given["steps"] != saved.get("steps"):
        run = settings.build(Stage2Config, saved)
        saved["interval"], saved["warmup_steps"] = run.interval_steps, run.warmup
    return saved


def _effective(cfg: Stage2Config) -> dict[str, Any]:
    """What a run computes with: settings as saved (absolute paths), K and warm-up as used."""
    return {**settings.saved_dict(cfg), "interval": cfg.interval_steps, "warmup_steps": cfg.warmup}


def differences(saved: Stage2Config, cfg: Stage2Config) -> list[str]:
    """The settings of ``cfg`` that a resume of run ``saved`` may not change (``--steps`` may)."""
    theirs, mine = _effective(saved), _effective(cfg)
    return [f"{k}: run has {theirs.get(k)!r}, given {mine[k]!r}" for k in mine
            if k not in RUNTIME_ONLY_FIELDS and k != "steps" and theirs.get(k) != mine[k]]


def inputs_inside(cfg: Stage2Config, out: Path) -> list[str]:
    """The run's local inputs (``--student``, ``--store``) that are ``out`` or lie inside it, as ``"--flag PATH"``."""
    root = out.resolve()
    found = []
    for flag, path in (("--student", Path(cfg.student).expanduser() if cfg.student else None),
                       ("--store", local_path(cfg.store) if cfg.store else None)):
        if path is not None and path.exists() and path.resolve().is_relative_to(root):
            found.append(f"{flag} {path}")
    return found


def resume_command(out: str | Path, world: int = 1, local_world: int | None = None, *,
                   trust_remote_code: bool = False) -> str:
    """The command that continues run ``out`` written by ``world`` processes (``local_world`` per host), quoted for a
    message: ranks must match the run's, so a torchrun run is resumed by the same torchrun launch. A student that
    needs its own code needs ``--trust-remote-code`` typed again (never taken from the saved settings)."""
    cmd = f"train --out {out} --resume" + (" --trust-remote-code" if trust_remote_code else "")
    if world == 1:
        return f"`ddk-student {cmd}`"
    per_host = local_world or world
    if per_host == world:
        return f"`torchrun --nproc_per_node {world} -m stage2_student.cli {cmd}`"
    return (f"the same torchrun launch on each of its {world // per_host} hosts (--nproc_per_node {per_host}, "
            f"{world} processes in all) with `-m stage2_student.cli {cmd}`")


def check_checkpoint_fits(out: Path, ckpt: Path, *, world: int, fsdp: bool) -> None:
    """Refuse (ConfigError, before any model is loaded) to resume checkpoint ``ckpt`` with another number of
    processes or another --fsdp than the run that wrote it."""
    from .checkpoint import checkpoint_step, read_state

    doc = read_state(ckpt) or {}
    at = f"--resume {out}: its checkpoint at step {checkpoint_step(ckpt)}"
    had = int(doc.get("world_size", world))
    if had != world:
        raise ConfigError(f"{at} was written by {had} process(es), this run has {world}; the number must be the "
                          f"same: {resume_command(out, had)}")
    if bool(doc.get("sharded", False)) != fsdp:
        how = "with" if doc.get("sharded") else "without"
        raise ConfigError(f"{at} was written {how} --fsdp; resume it {how} --fsdp")


def check_same_store(out: Path, ckpt: Path, store: str, *, domains: list[str], num_rows: list[int],
                     ppl_teacher: list[float]) -> None:
    """Refuse (ConfigError, before any model is loaded) to resume checkpoint ``ckpt`` from a store whose domains,
    training rows or teacher held-out perplexities are not the ones it was trained on (a store dumped again at the
    run's path): its sampler state and its ratios would be about other rows."""
    from .checkpoint import checkpoint_step, read_state

    doc = read_state(ckpt) or {}
    had_rows = (doc.get("sampler") or {}).get("num_rows")
    had_domains = next((h.get("domains") for h in doc.get("history") or [] if h.get("domains")), None)
    had_ppl = doc.get("ppl_teacher")
    what = ""
    if had_domains is not None and list(had_domains) != list(domains):
        what = f"domains {had_domains} then, {domains} now"
    elif had_rows is not None and list(had_rows) != list(num_rows):
        what = f"training rows per domain {had_rows} then, {num_rows} now"
    elif had_ppl is not None and (moved := [f"{d} {a:.6g} then, {b:.6g} now" for d, a, b in
                                           zip(domains, had_ppl, ppl_teacher) if not math.isclose(a, b, rel_tol=1e-9)]):
        what = f"other teacher held-out perplexities: {', '.join(moved)}"
    if what:
        raise ConfigError(f"--resume {out}: store {store} is not the one its checkpoint at step "
                          f"{checkpoint_step(ckpt)} was trained on ({what}); it was dumped or packed again. "
                          f"Resume from the original store, or start a new run on this one (--overwrite, or another "
                          f"--out)")


#: What ``train`` writes into a run directory beside the files of rundir.py: the final student (``save_pretrained``
#: of the model and its tokenizer, with a --trust-remote-code model's own code) and what a killed write leaves.
_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model-*.safetensors",
                "model.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json", "tokenizer.*",
                "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt",
                "merges.txt", "chat_template.jinja", "chat_template.json", "spiece.model", "sentencepiece.bpe.model",
                "tekken.json", "configuration_*.py", "modeling_*.py",
                "tokenization_*.py", "config.yaml.tmp", "metrics.tmp")


def _run_file(name: str) -> bool:
    """Whether a top-level entry of a run directory is one a run writes (and ``--overwrite`` may delete)."""
    return name in RUN_ENTRIES or any(fnmatch.fnmatchcase(name, pattern) for pattern in _MODEL_FILES)


def is_run_dir(out: Path) -> bool:
    """Whether ``out`` holds a ddk-student run: checkpoints, or a config.yaml that names a store and a student (the
    resolved settings every run writes; a project's own config.yaml does not)."""
    from .checkpoint import latest_checkpoint, read_state

    ckpt = latest_checkpoint(out)
    if ckpt is not None and read_state(ckpt) is not None:  # a checkpoint of ddk's (step-N/state.json)
        return True
    try:
        saved = read_saved(out)
    except ConfigError:
        return False
    return bool(saved and saved.get("store") and saved.get("student"))


def continue_advice(cfg: Stage2Config, world: int = 1, local_world: int | None = None) -> str:
    """How the interrupted run ``cfg.out`` continues: the resume command and the checkpoint it starts from, or, when
    its last checkpoint was committed, that it had finished and how to report it."""
    from .checkpoint import checkpoint_step, latest_checkpoint

    out, steps = cfg.out, cfg.steps
    if run_finished(Path(out), steps):
        return (f"the run had finished: its student and last checkpoint (step {steps}) are saved in {out}; "
                f"`ddk-student report {out}` writes report.md and its plots")
    ckpt = latest_checkpoint(out)
    since = f"its last checkpoint, step {checkpoint_step(ckpt)}" if ckpt else "the start (no checkpoint yet)"
    return (f"{resume_command(out, world, local_world, trust_remote_code=cfg.trust_remote_code)} continues the run "
            f"from {since} with its saved settings")


def run_finished(out: Path, steps: int) -> bool:
    """Whether the run in ``out`` has finished ``steps`` steps: its last checkpoint is at that step and its final
    student is saved."""
    from .checkpoint import checkpoint_step, latest_checkpoint

    ckpt = latest_checkpoint(out)
    return ckpt is not None and checkpoint_step(ckpt) == steps and (out / "config.json").is_file()


def replace_run(cfg: Stage2Config, *, rank: int = 0) -> None:
    """``--overwrite``: delete the run in ``--out`` (what a run wrote; :func:`prepare_out_dir` refused anything
    else), once every check of the new run has passed. Rank 0 only; callers barrier afterwards."""
    out = Path(cfg.out)
    if not cfg.overwrite or rank != 0 or not out.is_dir():
        return
    # What marks the directory as a run (config.yaml, checkpoints/: :func:`is_run_dir`) goes last, so a kill part-way
    # leaves a directory the same --overwrite still recognizes and finishes.
    for entry in sorted(out.iterdir(), key=lambda p: (p.name in (CONFIG_FILE, CHECKPOINTS_DIR), p.name)):
        if _run_file(entry.name):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def prepare_out_dir(cfg: Stage2Config, *, rank: int = 0, world: int = 1,
                    echo: Callable[[str], None] = _stderr) -> bool:
    """Check ``--out`` against ``--resume``/``--overwrite`` before anything is loaded; True if a run is to be
    resumed from its latest checkpoint.

    ``--resume`` where there is no checkpoint yet says so in one line and starts a fresh run. Nothing is deleted
    here: ``--overwrite`` is checked (only a run's own files, no input inside) and :func:`replace_run` deletes them
    after the new run's other checks. Only rank 0 prints.
    """
    from .checkpoint import checkpoint_step, latest_checkpoint

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    store = local_path(cfg.store) if cfg.store else None
    if store is not None and out.resolve().is_relative_to(store.resolve()):
        raise ConfigError(f"--out {out} is inside the store {cfg.store} (read-only to training, and often shared); "
                          f"write the run outside it")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    for name in (CHECKPOINTS_DIR, TENSORBOARD_DIR):  # folders ddk writes and deletes in: never through a link
        if (out / name).is_symlink():
            raise ConfigError(f"--out {out}: {name} is a symbolic link (to {os.readlink(out / name)}); ddk writes and "
                              f"deletes files in it, so it must be a folder of the run: move what it points to, or "
                              f"replace the link with a folder")
    if entries and not is_run_dir(out):
        if cfg.resume:
            read_saved(out)  # a run's damaged config.yaml says so (and how to restore it)
        raise ConfigError(
            f"--out {out}: directory is not empty and holds no ddk-student run ({', '.join(entries[:5])}...); "
            f"choose a new or empty directory"
        )
    if cfg.resume:
        saved = read_saved(out)
        if saved is not None:
            run = settings.build(Stage2Config, {k: v for k, v in saved.items() if k not in ("resume", "overwrite")})
            if diffs := differences(run, cfg):
                moved = [k for k in ("store", "student") if any(d.startswith(f"{k}: ") for d in diffs)]
                how = (f"if the {' and the '.join(moved)} only moved, make {'them' if len(moved) > 1 else 'it'} "
                       f"reachable at the run's path again (a symbolic link will do) and resume; --overwrite would "
                       f"start the run over" if len(moved) == len(diffs)
                       else "resume with the original settings, or start afresh with --overwrite")
                raise ConfigError(f"--resume {out}: the settings differ from the saved run ({'; '.join(diffs)}); "
                                  f"{how}")
        ckpt = latest_checkpoint(out)
        if ckpt is None:
            if rank == 0:
                echo(f"--resume {out}: no checkpoint found there; starting a fresh run")
            return False
        check_checkpoint_fits(out, ckpt, world=world, fsdp=cfg.fsdp and world > 1)
        if cfg.steps < checkpoint_step(ckpt):
            raise ConfigError(f"--resume {out}: --steps {cfg.steps} is below the step of its latest checkpoint "
                              f"({checkpoint_step(ckpt)}); give --steps >= {checkpoint_step(ckpt)}")
        if rank == 0 and run_finished(out, cfg.steps):
            echo(f"--resume {out}: the run already finished its {cfg.steps} steps; nothing to train (a larger "
                 f"--steps continues it)")
        elif rank == 0:
            echo(f"--resume {out}: continuing from its checkpoint at step {checkpoint_step(ckpt)} of {cfg.steps}")
        return True
    if not entries:
        return False
    if cfg.overwrite:
        if inside := inputs_inside(cfg, out):
            raise ConfigError(f"--out {out}: --overwrite would delete it, and {' and '.join(inside)} inside it; "
                              f"write the new run to another --out")
        if foreign := [name for name in entries if not _run_file(name)]:
            raise ConfigError(f"--out {out}: --overwrite replaces only what a run wrote there, and it also holds "
                              f"{', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}; move them out or "
                              f"write the new run to another --out")
        return False
    raise ConfigError(
        f"--out {out}: already holds a ddk-student run; pass --resume to continue it or --overwrite to replace it"
    )
