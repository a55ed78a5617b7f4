"""The run directory of ``ddk-student train --out RUN``: its file names, the layout of its records, writing and reading.

    RUN/config.yaml      the resolved settings (``Stage2Config.to_dict()``), written once when the run starts
    RUN/metrics.jsonl    one JSON record per line, appended as training goes (layouts below)
    RUN/checkpoints/     ``step-XXXXXXXX/`` directories (:mod:`stage2_student.checkpoint`)
    RUN/report.md, RUN/weights.png, RUN/ratios.png   written by ``ddk-student report``
    RUN/tensorboard/     TensorBoard event files, with ``--report-to tensorboard`` (a mirror of metrics.jsonl)
    RUN/*                the final student (``save_pretrained`` files and tokenizer)

Records of metrics.jsonl, told apart by ``event``:

- ``interval``: written at step 0 and at every interval boundary (every K steps), after the evaluation;
- ``final``: the same keys, written once after the last step;
- ``step``: every ``--log-every`` steps.

``interval``/``final`` records may carry more per-domain keys (:data:`OPTIONAL_PER_DOMAIN_KEYS`): ``train_rows`` (the
store's training rows, whose shares are the natural mixture), ``rows_trained`` (the rows of each domain trained on
before the record's step) and, under ``--max-epochs-per-domain``, ``cap`` and
``capped`` (the cap on each weight for the interval, and which domains it held). ``--report-to`` mirrors every record
into a :class:`RecordSink` (:mod:`stage2_student.sinks`); metrics.jsonl stays the record.

This module is the one place that knows these names and layouts: ``train`` writes through it, and ``report``, the
CLI and ``bench/quality.py`` read through it. No deep-learning imports.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import yaml

from ddk_store.errors import ReportError, StudentError, describe
from ddk_store.paths import replace_file

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
REPORT_FILE = "report.md"
WEIGHTS_PNG = "weights.png"
RATIOS_PNG = "ratios.png"
TENSORBOARD_DIR = "tensorboard"
#: Every entry above: what a run and its report write into the run directory (the final student's files aside).
RUN_ENTRIES = (CONFIG_FILE, METRICS_FILE, CHECKPOINTS_DIR, REPORT_FILE, WEIGHTS_PNG, RATIOS_PNG, TENSORBOARD_DIR)

INTERVAL, FINAL, STEP = "interval", "final", "step"
#: Keys of an ``interval``/``final`` record, in order; the per-domain ones hold one number per entry of ``domains``.
INTERVAL_KEYS = ("event", "step", "interval", "domains", "ppl_student", "ppl_teacher", "ratio", "weights", "factor",
                 "nll_student")
PER_DOMAIN_KEYS = ("ppl_student", "ppl_teacher", "ratio", "weights", "factor", "nll_student")
#: Per-domain keys every reader relies on (older runs may lack the others).
REQUIRED_PER_DOMAIN_KEYS = ("ppl_student", "ppl_teacher", "ratio", "weights")
#: Per-domain keys an ``interval``/``final`` record has only when the run writes them (older runs lack them).
OPTIONAL_PER_DOMAIN_KEYS = ("train_rows", "rows_trained", "cap", "capped")
#: Keys of a ``step`` record, in order.
STEP_KEYS = ("event", "step", "loss", "ce", "kl", "lr", "grad_norm", "tokens_per_s")

_FIX = "it must be the metrics.jsonl written by `ddk-student train`"


# ------------------------------------------------------------------------------------------------------ owner
def claim_run_dir(out: str | Path) -> int | None:
    """Lock run directory ``out`` for this process until :func:`release_run_dir` (or its exit, a kill included):
    two trainings writing one run would interleave their records and delete each other's checkpoints.

    The lock is an ``flock`` on ``$DDK_CACHE/locks/<sha256 of the resolved path>.lock`` (nothing is written into
    ``out``, which may not exist yet), so it guards against a second training on the same host; one started on
    another host that shares the directory is not seen. The file is removed on release (a killed run leaves it, and
    the next claim reuses it). Returns the lock's file descriptor, or None when the cache is not writable (no lock
    is taken then).

    Raises:
        ConfigError: another process holds the lock; it names that process.
    """
    import fcntl
    import hashlib
    import socket

    from ddk_store.errors import ConfigError
    from ddk_store.paths import cache_dir

    resolved = Path(out).expanduser().resolve()
    place = cache_dir("locks") / (hashlib.sha256(str(resolved).encode()).hexdigest()[:32] + ".lock")
    for _ in range(_CLAIM_TRIES):
        try:
            place.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(place, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:  # planted in a shared cache, it would have us truncate what it points to
                raise ConfigError(f"--out {out}: its lock file {place} is a symbolic link; remove it") from None
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(f"--out {out}: {holder} is training this run right now; wait for it to end or stop it "
                              f"(a torchrun killed alone leaves its workers running: stop them too), then "
                              f"rerun") from None
        if _still_at(fd, place):  # else its holder removed it on release after we opened it: open the new one
            os.ftruncate(fd, 0)
            os.write(fd, f"`ddk-student train` (pid {os.getpid()} on {socket.gethostname()})".encode())
            _LOCK_FILES[fd] = place
            return fd
        os.close(fd)
    return None


#: Attempts at :func:`claim_run_dir` while the lock file keeps being removed under it (each removal is a holder
#: releasing it, so a second attempt nearly always succeeds).
_CLAIM_TRIES = 5
#: The lock file of each descriptor :func:`claim_run_dir` returned, for :func:`release_run_dir` to remove.
_LOCK_FILES: dict[int, Path] = {}


def _still_at(fd: int, place: Path) -> bool:
    """Whether ``place`` still names the file open as ``fd`` (not removed, nor replaced by a new one)."""
    try:
        here, ours = os.stat(place), os.fstat(fd)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (ours.st_dev, ours.st_ino)


def release_run_dir(fd: int | None) -> None:
    """Give up the lock :func:`claim_run_dir` took, and remove its file (one per run directory would pile up in the
    cache otherwise). Removed while still held, so a process that opened it meanwhile sees it gone and opens anew."""
    if fd is None:
        return
    place = _LOCK_FILES.pop(fd, None)
    if place is not None and _still_at(fd, place):
        with contextlib.suppress(OSError):
            place.unlink()
    os.close(fd)


# ----------------------------------------------------------------------------------------------------- records
def interval_record(step: int, interval: int, domains: Sequence[str], ev: dict[str, Sequence[float]],
                    ppl_teacher: Sequence[float], ratio: Iterable[float], weights: Iterable[float],
                    factor: Iterable[float], event: str = INTERVAL, *, train_rows: Iterable[int] | None = None,
                    rows_trained: Iterable[int] | None = None, cap: Iterable[float] | None = None,
                    capped: Iterable[bool] | None = None) -> dict[str, Any]:
    """An ``interval`` (or ``final``) record: the student's and teacher's held-out perplexity per domain, their
    ratio, the sampling weights of the next interval, the DDK factor r_t (it differs from the weights in interval 0
    when --init-mixture is not r0, and where --max-epochs-per-domain caps them) and the student's held-out NLL.
    ``ev`` is what :func:`stage2_student.evaluate.evaluate` returns. The optional keys are written when given."""
    rec = {"event": event, "step": step, "interval": interval, "domains": list(domains),
           "ppl_student": list(ev["ppl"]), "ppl_teacher": list(ppl_teacher), "ratio": [float(x) for x in ratio],
           "weights": [float(x) for x in weights], "factor": [float(x) for x in factor],
           "nll_student": list(ev["nll"])}
    if train_rows is not None:
        rec["train_rows"] = [int(x) for x in train_rows]
    if rows_trained is not None:
        rec["rows_trained"] = [int(x) for x in rows_trained]
    if cap is not None:
        rec["cap"] = [float(x) for x in cap]
    if capped is not None:
        rec["capped"] = [bool(x) for x in capped]
    return rec


def step_record(step: int, *, loss: float, ce: float, kl: float, lr: float, grad_norm: float,
                tokens_per_s: float) -> dict[str, Any]:
    """A ``step`` record: the loss and its two parts (mean over the step's micro-batches; ``kl`` as it enters the
    loss, so T² x KL with --kl-t2-scale and 0 when --gamma 0 skips it), learning rate, gradient norm before clipping,
    and throughput over the steps since the previous step record."""
    return {"event": STEP, "step": step, "loss": loss, "ce": ce, "kl": kl, "lr": lr, "grad_norm": grad_norm,
            "tokens_per_s": tokens_per_s}


# ----------------------------------------------------------------------------------------------------- writing
def start_metrics(run_dir: str | Path) -> Path:
    """Create (or empty) the metrics file of a new run; return its path."""
    path = Path(run_dir) / METRICS_FILE
    replace_file(path, "")
    return path


class RecordSink(Protocol):
    """Somewhere else a run's records go as they are appended (``--report-to``); never read back."""

    def write(self, record: dict[str, Any]) -> None: ...


def append_record(run_dir: str | Path, record: dict[str, Any], sink: RecordSink | None = None) -> None:
    """Append one record as one line (a single write, so a kill leaves whole lines), then hand it to ``sink``."""
    # (never through a link planted in a shared run directory: O_NOFOLLOW refuses one)
    fd = os.open(Path(run_dir) / METRICS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0),
                 0o644)
    with os.fdopen(fd, "a") as f:
        f.write(json.dumps(record) + "\n")
    if sink is not None:
        sink.write(record)


def truncate_metrics(run_dir: str | Path, step: int, *, redo_interval: bool = False) -> None:
    """Drop the records written after checkpoint ``step`` (a resumed run writes them again), atomically, and with
    ``redo_interval`` the interval record at ``step`` too (the resumed run reweights there again). A last line that
    is not whole JSON (a write cut by a full disk or a kill) is dropped too: it is a record after the step."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    records = []
    for i, ln in enumerate(lines):
        try:
            records.append((ln, json.loads(ln)))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise StudentError(f"{path}: line {i + 1} is not JSON ({ln[:60]!r}); the run's records are damaged "
                                   "there: restore the file, or start afresh with --overwrite") from None
    keep = [ln for ln, rec in records if rec.get("event") != FINAL and rec["step"] <= step
            and not (redo_interval and rec.get("event") == INTERVAL and rec["step"] == step)]
    replace_file(path, "".join(ln + "\n" for ln in keep))


# ----------------------------------------------------------------------------------------------------- reading
def _check_interval(rec: dict[str, Any], where: str) -> None:
    domains = rec.get("domains")
    if not isinstance(rec.get("step"), int) or not isinstance(domains, list) or not domains:
        raise ReportError(f"{where}: '{rec['event']}' line needs an int 'step' and a non-empty 'domains' list; {_FIX}")
    for key in REQUIRED_PER_DOMAIN_KEYS:
        values = rec.get(key)
        if (not isinstance(values, list) or len(values) != len(domains)
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
            raise ReportError(f"{where}: '{key}' must be a list of {len(domains)} numbers (one per domain), "
                              f"got {str(values)[:60]}; {_FIX}")
    if not all(0 < v < float("inf") for v in rec["ratio"]):
        raise ReportError(f"{where}: 'ratio' must hold finite numbers > 0, got {str(rec['ratio'])[:60]}; {_FIX}")
    for key in OPTIONAL_PER_DOMAIN_KEYS:
        values = rec.get(key)
        if values is not None and (not isinstance(values, list) or len(values) != len(domains)
                                   or not all(isinstance(v, (int, float)) for v in values)):
            raise ReportError(f"{where}: '{key}' must be a list of {len(domains)} values (one per domain), "
                              f"got {str(values)[:60]}; {_FIX}")


def read_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of the run's metrics.jsonl, in order. A missing, unreadable, truncated, hand-edited or foreign
    file is refused in one line naming the file and line (ReportError)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise ReportError(f"{path}: not found; pass the --out directory of a `ddk-student train` run")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: cannot read it ({e}); {_FIX}") from None
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise ReportError(f"{where}: not valid JSON ({getattr(e, 'msg', e)}); {_FIX}") from None
        if not isinstance(rec, dict):
            raise ReportError(f"{where}: expected a JSON object, got {type(rec).__name__}; {_FIX}")
        if rec.get("event") in (INTERVAL, FINAL):
            _check_interval(rec, where)
        records.append(rec)
    return records


def read_metrics(run_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(the ``interval`` records in order, the ``final`` record or None while the run is unfinished)."""
    records = read_records(run_dir)
    intervals = [r for r in records if r.get("event") == INTERVAL]
    finals = [r for r in records if r.get("event") == FINAL]
    if not intervals:
        raise ReportError(f"{Path(run_dir) / METRICS_FILE}: no 'interval' lines yet; the run has not finished its "
                          "first evaluation")
    return intervals, (finals[-1] if finals else None)


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The saved settings of the run (config.yaml), or {} when it has none; a damaged file is a ReportError."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ReportError(f"{path}: not a readable YAML config ({describe(e, with_type=False)})") from None
    if not isinstance(cfg, dict):
        raise ReportError(f"{path}: expected a mapping of field: value, got {type(cfg).__name__}")
    return cfg


def is_finished(run_dir: str | Path) -> bool:
    """True when the run wrote its ``final`` record (its metrics are complete)."""
    path = Path(run_dir) / METRICS_FILE
    return path.is_file() and any(json.loads(ln).get("event") == FINAL
                                  for ln in path.read_text().splitlines() if ln.strip())


def check_run_files(run_dir: str | Path) -> None:
    """Refuse, naming file and line, a metrics.jsonl or config.yaml that ``report`` could not read.

    A missing metrics.jsonl passes here: :func:`read_metrics` names it when the report is written.
    """
    if (Path(run_dir) / METRICS_FILE).is_file():
        read_records(run_dir)
    read_config(run_dir)
