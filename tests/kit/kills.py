"""Kill campaigns: SIGKILL a real `ddk-teacher dump` or `ddk-student train` at chosen moments, rerun the same
command, and compare with an uninterrupted run.

A moment is either a fraction of a phase of an uninterrupted run (start-up: launch until the output first appears;
work: from then until exit) or an event seen on disk (a unit marker, a chunk mid-write, a training step, a
checkpoint being written, the final line). A chain of one moment is one independent trial (bench/chaos); a longer
chain also checks that a resumed run can be killed and resumed again (tests/reliability/test_kills.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ddk_store.schema import node_doc_key

from .processes import last_error_lines, reaped, run_cli, run_process, spawn
from .snapshots import run_differences, store_differences, store_snapshot
from .watch import DumpState, DumpWatch, dump_state, has_metrics, train_state

DUMP_MODULE, TRAIN_MODULE = "stage1_teacher.cli", "stage2_student.cli"


@dataclass(frozen=True)
class Moment:
    """When to kill: a ``kind`` of moment and its ``value`` (a fraction of a phase, or an event count)."""

    kind: str
    value: float
    #: Each kind in words, for test ids and failure messages: '{pct}' is value as a percentage, '{n}' an int.
    LABELS: ClassVar[dict[str, str]] = {}

    def __str__(self) -> str:
        return self.LABELS[self.kind].format(pct=f"{self.value:.0%}", n=int(self.value))


@dataclass(frozen=True)
class DumpMoment(Moment):
    """When to kill a dump. ``kind``:

    - 'start': a fraction of the start-up phase (process start until the store's root appears), measured on an
      uninterrupted run: imports, teacher config, tokenizing and packing, store creation;
    - 'write': a fraction of the writing phase (store root appears until exit) of an uninterrupted run, counted from
      the moment this run's store root appears: scoring, chunk writes, markers, finalize;
    - 'marker': right after the k-th unit marker appears;
    - 'chunk': while a unit's chunks are being written (no marker yet), after >= k markers;
    - 'finalize': once every marker file is in place (held-out statistics, root rewrite, summary).
    """

    LABELS: ClassVar[dict[str, str]] = {"start": "at {pct} of start-up", "write": "at {pct} of writing",
                                        "marker": "after marker {n}", "chunk": "mid-unit, >= {n} markers",
                                        "finalize": "during finalize"}


@dataclass(frozen=True)
class TrainMoment(Moment):
    """When to kill training. ``kind``:

    - 'start': a fraction of the start-up phase (process start until metrics.jsonl has its first line: imports,
      store checks, student load, initial evaluation) of an uninterrupted run;
    - 'train': a fraction of the training phase of an uninterrupted run (steps, evaluations, checkpoints, up to
      the final evaluation line), counted from this run's first metrics line;
    - 'step': right after the n-th step line; 'ckpt': while a checkpoint directory is being written, after >= n
      steps; 'final': after the final evaluation line (model export and last checkpoint).
    """

    LABELS: ClassVar[dict[str, str]] = {"start": "at {pct} of start-up", "train": "at {pct} of training",
                                        "step": "after step {n}", "ckpt": "mid-checkpoint, >= step {n}",
                                        "final": "during final save"}


@dataclass(frozen=True)
class PhaseTimes:
    """Wall times of an uninterrupted run: start-up (until its output appears) and the rest (until exit)."""

    startup: float
    work: float


@dataclass
class KillResult:
    moment: str
    fired: bool  # the process was alive and got SIGKILL (False: it finished first)
    at_kill: str  # what was on disk right after the kill
    progress: str  # units (dump) or steps (train) done at the kill
    outcome: str
    seconds: float

    @property
    def identical(self) -> bool:
        return self.outcome == "identical"


# ------------------------------------------------------------------------------------------------ schedules
def _schedule(seed: int, n: int, upper: int, make: Any, kinds: tuple[str, str, str, str, str]) -> list:
    """A seeded, shuffled mix of kill moments. ``kinds`` = (mid-write, after-event, last-phase, start-up, by-time):
    25% mid-write and 20% after the n-th event (an int in [1, upper)), 20% in the last phase, 10% during start-up
    and the rest by elapsed time of the main phase (a fraction in [0.05, 0.95))."""
    mid, event, last, start, timed = kinds
    rng = np.random.default_rng(seed)
    counts = {mid: round(0.25 * n), event: round(0.2 * n), last: round(0.2 * n), start: round(0.1 * n)}
    counts[timed] = n - sum(counts.values())
    out = []
    for kind, count in counts.items():
        for _ in range(count):
            if kind in (start, timed):
                out.append(make(kind, float(rng.uniform(0.05, 0.95))))
            elif kind in (mid, event):
                out.append(make(kind, int(rng.integers(1, upper))))
            else:
                out.append(make(kind, 0))
    return [out[i] for i in rng.permutation(len(out))]


def dump_schedule(seed: int, n: int, total_units: int) -> list[DumpMoment]:
    """Kill moments of a dump: mid-unit (chunk), after a marker, during finalize, start-up, by writing time."""
    return _schedule(seed, n, total_units, DumpMoment, ("chunk", "marker", "finalize", "start", "write"))


def train_schedule(seed: int, n: int, steps: int) -> list[TrainMoment]:
    """Kill moments of training: mid-checkpoint, after a step, during the final export, start-up, by time."""
    return _schedule(seed, n, steps, TrainMoment, ("ckpt", "step", "final", "start", "train"))


# ------------------------------------------------------------------------------------------------ one run
def time_reference(module: str, argv: list[str], started: Callable[[], bool],
                   finished: Callable[[], bool] = lambda: False) -> PhaseTimes:
    """Run ``python -m module argv`` uninterrupted, timing start-up (until ``started()``) and work (until
    ``finished()``, else until exit)."""
    with tempfile.TemporaryFile(mode="w+") as log:  # not a pipe: a long progress bar must never block the child
        proc = spawn(module, argv, stderr=log)
        t0 = time.monotonic()
        t_started = t_finished = None
        while proc.poll() is None:
            now = time.monotonic()
            if t_started is None and started():
                t_started = now
            if t_started is not None and t_finished is None and finished():
                t_finished = now
            time.sleep(0.002)
        end = time.monotonic()
        log.seek(0)
        err = log.read()
    if proc.returncode != 0:
        raise RuntimeError(f"reference run of {module} failed: {err[-2000:]}")
    t_started = t_started or end
    return PhaseTimes(t_started - t0, (t_finished or end) - t_started)


def kill_when(module: str, argv: list[str], moment: Moment, times: PhaseTimes | None, work_kind: str,
              started: Callable[[], bool], event: Callable[[], bool | None], deadline_s: float = 300) -> bool:
    """Start ``python -m module argv`` and SIGKILL it at ``moment``; returns whether the kill hit a live process.

    Kinds 'start' and ``work_kind`` are fractions of ``times`` (start-up from launch; work from when ``started()``
    first holds in this run); any other kind waits until ``event()`` is True, polling without pause (None: nothing
    to watch yet, poll again in 10 ms).
    """
    kind, value = moment.kind, moment.value
    proc = spawn(module, argv, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    t_started = None
    with reaped(proc):
        while time.monotonic() - t0 < deadline_s and proc.poll() is None:
            now = time.monotonic()
            if kind in ("start", work_kind):
                if kind == "start" and now - t0 >= value * times.startup:
                    break
                if kind == work_kind:
                    if t_started is None and started():
                        t_started = now
                    if t_started is not None and now - t_started >= value * times.work:
                        break
                time.sleep(0.002)
                continue
            due = event()
            if due:
                break
            if due is None:
                time.sleep(0.01)
        fired = proc.poll() is None
        if fired:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        return fired and proc.returncode == -signal.SIGKILL


# ------------------------------------------------------------------------------------------------ dump kills
def time_reference_dump(argv: list[str], store: Path) -> PhaseTimes:
    """Run the dump uninterrupted, timing start-up (until the store root appears) and writing (until exit)."""
    return time_reference(DUMP_MODULE, argv, started=lambda: _store_created(store))


def _store_created(store: Path) -> bool:
    return (store / node_doc_key()).exists()


def kill_dump_when(argv: list[str], store: Path, moment: DumpMoment, times: PhaseTimes | None,
                   deadline_s: float = 300) -> tuple[bool, DumpState]:
    """Start the dump, SIGKILL it at ``moment``; returns (killed, state on disk after the kill).

    ``times`` (of an uninterrupted run) is needed only for the 'start' and 'write' kinds.
    """
    watch = DumpWatch(store)

    def event() -> bool | None:
        done, total, busy = watch.poll()
        if not total:
            return None
        return ((moment.kind == "marker" and done >= moment.value)
                or (moment.kind == "chunk" and done >= moment.value and busy)
                or (moment.kind == "finalize" and done == total and watch.all_markers_written()))

    fired = kill_when(DUMP_MODULE, argv, moment, times, "write", lambda: _store_created(store), event, deadline_s)
    return fired, dump_state(store)


def dump_kill_chain(argv: list[str], store: Path, moments: list[DumpMoment], reference: dict[str, Any],
                    times: PhaseTimes | None = None, resume_inprocess: bool = False) -> list[KillResult]:
    """Run the dump and SIGKILL it at each of ``moments`` in turn (each rerun of the same command is the next
    victim), then rerun it to the end and compare with the reference store; one result per kill."""
    from ddk_store.validate import validate_store

    t0 = time.monotonic()
    kills = []
    for moment in moments:
        fired, st = kill_dump_when(argv, store, moment, times)
        kills.append((moment, fired, st))
    if resume_inprocess:
        code, err = run_cli("ddk-teacher", argv)
    else:
        proc = run_process(DUMP_MODULE, argv)
        code, err = proc.returncode, proc.stderr
    if code != 0:
        outcome = f"resume failed ({code}): {(last_error_lines(err) or err.splitlines()[-1:] or ['?'])[-1][:120]}"
    else:
        issues = validate_store(str(store))
        diffs = store_differences(store_snapshot(str(store)), reference)
        outcome = ("identical" if not issues and not diffs else
                   f"DIFFERENT: {(diffs + [str(i) for i in issues])[0]}")
    seconds = (time.monotonic() - t0) / len(moments)
    return [KillResult(str(m), fired, st.describe(), f"{st.done}/{st.total}", outcome, seconds)
            for m, fired, st in kills]


# ------------------------------------------------------------------------------------------------ train kills
def time_reference_run(argv: list[str], out: Path) -> PhaseTimes:
    """Run training uninterrupted, timing start-up (until its first metrics line) and training (until the final
    evaluation line; the export after it is what 'final' kills aim at)."""
    return time_reference(TRAIN_MODULE, argv, started=lambda: has_metrics(out), finished=lambda: train_state(out)[3])


def kill_train_when(argv: list[str], out: Path, moment: TrainMoment, times: PhaseTimes | None,
                    deadline_s: float = 300) -> tuple[bool, str, str]:
    """Start training, SIGKILL it at ``moment``; returns (killed, what is on disk after the kill, steps done)."""

    def event() -> bool:
        steps, _, writing, final = train_state(out)
        return ((moment.kind == "step" and steps >= moment.value)
                or (moment.kind == "ckpt" and steps >= moment.value and writing)
                or (moment.kind == "final" and final))

    fired = kill_when(TRAIN_MODULE, argv, moment, times, "train", lambda: has_metrics(out), event, deadline_s)
    steps, ckpt, writing, final = train_state(out)
    at = [f"last checkpoint {ckpt if ckpt is not None else '-'}"]
    if writing:
        at.append("checkpoint .tmp left")
    if final:
        at.append("final line logged")
    if (out / "model.safetensors").exists():
        at.append("model exported")
    return fired, ", ".join(at), f"{steps} steps"


def train_kill_chain(argv: list[str], out: Path, moments: list[TrainMoment], ref_out: Path,
                     times: PhaseTimes | None = None, wait_reference: Any = None) -> list[KillResult]:
    """Start training, SIGKILL it at each of ``moments`` in turn (the next victim is the ``--resume`` rerun), then
    resume it to the end and compare with the reference run; one result per kill.

    ``wait_reference`` (optional) is called before the comparison: the reference may still be running meanwhile.
    """
    t0 = time.monotonic()
    kills = []
    for i, moment in enumerate(moments):
        kills.append((moment, *kill_train_when(argv if i == 0 else [*argv, "--resume"], out, moment, times)))
    proc = run_process(TRAIN_MODULE, [*argv, "--resume"])
    if wait_reference is not None:
        wait_reference()
    if proc.returncode != 0:
        outcome = f"resume failed ({proc.returncode}): {(last_error_lines(proc.stderr) or ['?'])[-1][:120]}"
    else:
        diffs = run_differences(out, ref_out)
        outcome = "identical" if not diffs else f"DIFFERENT: {diffs[0]}"
    seconds = (time.monotonic() - t0) / len(moments)
    return [KillResult(str(m), fired, at_kill, progress, outcome, seconds) for m, fired, at_kill, progress in kills]


def format_table(title: str, rows: list[KillResult]) -> str:
    head = f"{'kill':>4}  {'moment':<28} {'killed':<6} {'done at kill':<13} {'on disk after the kill':<58} outcome"
    lines = [title, head, "-" * len(head)]
    for i, r in enumerate(rows, 1):
        lines.append(f"{i:>4}  {r.moment:<28} {'yes' if r.fired else 'no':<6} {r.progress:<13} {r.at_kill:<58} "
                     f"{r.outcome}")
    return "\n".join(lines)


def kill_after_checkpoint(proc: subprocess.Popen, checkpoints: Path, min_step: int, timeout: float,
                          group: bool = False) -> bool:
    """SIGKILL ``proc`` (its whole process group with ``group``, e.g. torchrun and its ranks) as soon as a committed
    checkpoint of step ``min_step`` or later is in ``checkpoints``; False when it finished or time ran out first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if checkpoints.is_dir() and any(p.name.startswith("step-") and not p.name.endswith(".tmp")
                                        and int(p.name[5:13]) >= min_step for p in checkpoints.iterdir()):
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        return False
    if group:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.kill()
    proc.wait()
    return True


def last_checkpoint_step(checkpoints: Path) -> int:
    """The step of the newest committed checkpoint in ``checkpoints``."""
    return max(int(p.name[5:13]) for p in checkpoints.iterdir() if not p.name.endswith(".tmp"))
