"""Many devices on one host: ``--devices N`` runs N scoring processes, then finalizes the store once; under torchrun
each rank scores its own share and rank 0 finalizes.

Every process scores a disjoint share of the units through the ``--shard`` machinery (units are dealt round-robin by
their global ordinal, :func:`ddk_store.layout.shard_owns`). A host's shard ``I/M`` split over N devices gives device
``d`` the shard ``I + M*d`` of ``M*N``: exactly host I's units, split N ways, so ``--shard`` across hosts and
``--devices`` within a host compose. Each process sees only its own GPUs (``CUDA_VISIBLE_DEVICES``:
``--tensor-parallel-size`` of them for a vLLM teacher), so the backends need no device logic of their own.

``--devices N`` (the parent): one ``ddk-teacher dump`` child per device, given the resolved settings as YAML on its
stdin (nothing written to disk, storage credentials included) plus ``--shard`` and ``--devices 1``. Their output is
forwarded line by line, prefixed ``[device d]``; a line about the settings that every child prints alike (its backend,
a note, a warning) is forwarded once. A child that fails stops the others and ends the command with one
``error:`` line naming the device; rerunning the same command resumes every device's units.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from ddk_store.errors import ConfigError, DdkError

from .config import Stage1Config, overwrite_refusal

#: torchrun's environment: the global rank, the number of ranks, the rank on this host.
RANK_ENV, WORLD_ENV, LOCAL_RANK_ENV = "RANK", "WORLD_SIZE", "LOCAL_RANK"
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
#: Set for a dump whose store another process finalizes (the --devices parent, torchrun's rank 0): who, in words.
FINALIZER_ENV = "DDK_STAGE1_FINALIZER"
#: Lines about the settings, printed alike by every child: the parent forwards each text once (the first device's).
SHARED_LINES = ("backend:", "note:", "warning:")
#: How often rank 0 looks whether the other ranks' units are all written (torchrun).
POLL_S = 5.0


def compose_shard(shard: tuple[int, int], part: int, parts: int) -> tuple[int, int]:
    """Shard ``part`` of ``parts`` inside the host shard ``shard=(I, M)``: ``(I + M*part, M*parts)``.

    Round-robin dealing makes this exact: ordinal o is host I's when o % M == I, and then device ``part``'s when
    o % (M*parts) == I + M*part.
    """
    i, m = shard
    if not (0 <= i < m and 0 <= part < parts):
        raise ValueError(f"bad shard {i}/{m} or part {part}/{parts}")
    return i + m * part, m * parts


def visible_gpus(env: Mapping[str, str] | None = None) -> list[str]:
    """This process's GPUs as ``CUDA_VISIBLE_DEVICES`` entries (the variable's list when set, else 0..count-1)."""
    env = os.environ if env is None else env
    if VISIBLE_ENV in env:
        return [x.strip() for x in env[VISIBLE_ENV].split(",") if x.strip() and x.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_groups(n: int, per: int, visible: list[str]) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` of each of ``n`` processes using ``per`` GPUs each (consecutive, disjoint)."""
    if n * per > len(visible):
        raise ConfigError(f"--devices {n} with --tensor-parallel-size {per} needs {n * per} GPU(s) but "
                          f"{len(visible)} are visible; lower --devices or make more GPUs visible")
    return [",".join(visible[d * per : (d + 1) * per]) for d in range(n)]


def torchrun_rank(env: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when started by torchrun with more than one rank, else None."""
    env = os.environ if env is None else env
    try:
        world = int(env.get(WORLD_ENV, "1"))
        rank, local = int(env.get(RANK_ENV, "0")), int(env.get(LOCAL_RANK_ENV, env.get(RANK_ENV, "0")))
    except ValueError:
        raise ConfigError(f"torchrun environment: {RANK_ENV}/{WORLD_ENV}/{LOCAL_RANK_ENV} must be integers, got "
                          f"{env.get(RANK_ENV)!r}/{env.get(WORLD_ENV)!r}/{env.get(LOCAL_RANK_ENV)!r}") from None
    return (rank, world, local) if world > 1 else None


def multi_device(cfg: Stage1Config, run_one: Callable[[Stage1Config], None]) -> bool:
    """Handle ``--devices N > 1`` or a torchrun rank; False when this is a plain single-device dump.

    ``run_one(cfg)`` is the single-device dump (what `ddk-teacher dump` does for one process); call this before
    anything touches CUDA, since a torchrun rank picks its GPUs through ``CUDA_VISIBLE_DEVICES``.
    """
    ranks = torchrun_rank()
    if ranks is not None:
        if cfg.devices > 1:
            raise ConfigError(f"--devices {cfg.devices} under torchrun: torchrun already starts one process per "
                              f"device ({WORLD_ENV}={ranks[1]}); leave --devices at 1")
        run_rank(cfg, *ranks, run_one)
        return True
    if cfg.devices > 1:
        launch(cfg)
        return True
    return False


# ------------------------------------------------------------------------------------------------ torchrun ranks
def run_rank(cfg: Stage1Config, rank: int, world: int, local: int, run_one: Callable[[Stage1Config], None]) -> None:
    """One torchrun rank: its GPU(s), its shard; rank 0 then waits for every unit of the host shard and finalizes."""
    if cfg.overwrite:  # (before any rank opens the store; each rank's own shard would be refused less clearly)
        raise ConfigError(overwrite_refusal(f"a torchrun launch of {world} ranks", "rank", "start torchrun"))
    if not 0 <= rank < world or local < 0:  # (compose_shard would end in a traceback)
        raise ConfigError(f"torchrun environment: {RANK_ENV}={rank} must be in [0, {WORLD_ENV}={world}) and "
                          f"{LOCAL_RANK_ENV}={local} >= 0")
    if cfg.device != "cpu":
        visible = os.environ.get(VISIBLE_ENV)
        per = cfg.tensor_parallel_size
        listed = visible_gpus() if visible else []  # (as --devices N reads it: "0, 1," is "0,1")
        mine = listed[local * per : (local + 1) * per] if visible else \
            [str(x) for x in range(local * per, (local + 1) * per)]
        if len(mine) < per:  # an empty list would hide every GPU: the rank would score on the CPU
            fits = len(listed) // per
            how = (f"launch with --nproc_per_node {fits} or fewer" if fits else
                   f"make {per} GPUs visible to each rank, or give a smaller --tensor-parallel-size")
            raise ConfigError(f"torchrun rank {rank} (LOCAL_RANK {local}) needs GPUs {local * per}-"
                              f"{(local + 1) * per - 1} of {VISIBLE_ENV}={visible} (--tensor-parallel-size {per}); "
                              f"{how}, with every rank seeing the host's GPUs")
        os.environ[VISIBLE_ENV] = ",".join(mine)
    shard = compose_shard((cfg.shard_index, cfg.shard_count), rank, world)
    if cfg.shard_count == 1:
        os.environ[FINALIZER_ENV] = "rank 0"
    try:
        run_one(dataclasses.replace(cfg, shard=f"{shard[0]}/{shard[1]}"))
    finally:
        os.environ.pop(FINALIZER_ENV, None)  # this rank's dump only
    if rank == 0 and cfg.shard_count == 1:
        finalize_when_written(cfg, _echo)


def finalize_when_written(cfg: Stage1Config, echo: Callable[[str], None], poll_s: float = POLL_S) -> None:
    """Wait until every unit of the store is written (the other ranks), then finalize it once."""
    from ddk_store import StoreWriter, open_store

    opts = cfg.storage_options_dict
    meta = open_store(cfg.store, storage_options=opts, allow_incomplete=True).meta
    writer = StoreWriter.resume(cfg.store, meta, storage_options=opts)
    said = False
    while not writer.complete and (left := len(writer.pending_units())):
        if not said:
            echo(f"rank 0: waiting for the other ranks' {left} unit(s)")
            said = True
        time.sleep(poll_s)
    finish(cfg, echo)


def finish(cfg: Stage1Config, echo: Callable[[str], None]) -> None:
    """Finalize the store (unless complete already) and print the teacher's held-out perplexities."""
    from ddk_store import StoreWriter, open_store

    opts = cfg.storage_options_dict
    meta = open_store(cfg.store, storage_options=opts, allow_incomplete=True).meta
    writer = StoreWriter.resume(cfg.store, meta, storage_options=opts)
    if not writer.complete:
        meta = writer.finalize()
    echo(f"finalized {cfg.store}: {len(meta.domains)} domain(s) complete")
    for d in meta.domains:
        if d.heldout_ppl is not None:
            echo(f"summary: teacher held-out perplexity {d.name}: {d.heldout_ppl:.3f}")


def _echo(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ --devices N
def child_settings(cfg: Stage1Config) -> str:
    """The settings a child reads from stdin: every field as YAML, local paths absolute, devices 1, no progress."""
    import yaml

    from ddk_store.settings import resolve_paths

    values = resolve_paths(Stage1Config, dataclasses.asdict(cfg), Path.cwd())
    values.update(devices=1, progress=False)
    return yaml.safe_dump({k: v for k, v in values.items() if v is not None}, sort_keys=True)


def launch(cfg: Stage1Config, echo: Callable[[str], None] = _echo) -> None:
    """``--devices N``: N `ddk-teacher dump` children on disjoint shares, then one finalize (single host shard)."""
    if cfg.device == "cpu" or not _cuda():
        groups: list[str | None] = [None] * cfg.devices  # CPU processes (tests; CPU-only hosts)
        where = "cpu"
    else:
        groups = list(gpu_groups(cfg.devices, cfg.tensor_parallel_size, visible_gpus()))
        where = "cuda"
    text = child_settings(cfg)
    t0 = time.perf_counter()
    children: list[_Child] = []
    shared = _Once()
    try:
        for d, gpus in enumerate(groups):
            shard = compose_shard((cfg.shard_index, cfg.shard_count), d, cfg.devices)
            children.append(_Child(d, gpus, shard, text, cfg.devices, cfg.shard_count, shared))
        echo(f"--devices {cfg.devices}: {len(children)} {where} process(es) scoring shards "
             + ", ".join(c.shard for c in children))
        failed = _wait_all(children)
    finally:
        for c in children:
            c.stop()
    if failed is not None:
        others = len(children) - 1
        raise DdkError(f"{failed.name} failed: {failed.reason()}; stopped the other {others} device process(es); "
                       "fix the cause and rerun the same command to resume (written units are kept)")
    echo(f"--devices {cfg.devices}: every device finished in {time.perf_counter() - t0:.1f} s")
    if cfg.shard_count == 1:
        finish(cfg, echo)
    else:
        echo(f"host shard {cfg.shard} done; run `ddk-store finalize {cfg.store}` once every host shard is done")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _wait_all(children: list[_Child]) -> _Child | None:
    """Wait for every child; the first one that fails (others are then stopped by the caller), or None."""
    while True:
        running = False
        for c in children:
            rc = c.proc.poll()
            if rc is None:
                running = True
            elif rc != 0:
                c.reader.join(timeout=10)  # its last lines, for the error message
                return c
        if not running:
            for c in children:
                c.reader.join(timeout=10)
            return None
        time.sleep(0.2)


class _Once:
    """The texts of :data:`SHARED_LINES` forwarded so far, over every child's forwarding thread."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def first(self, line: str) -> bool:
        """Whether ``line`` is to be forwarded: any line but a shared one, and a shared one the first time."""
        if not line.startswith(SHARED_LINES):
            return True
        with self._lock:
            new = line not in self._seen
            self._seen.add(line)
        return new


class _Child:
    """One device's `ddk-teacher dump` process and the thread forwarding its output."""

    def __init__(self, index: int, gpus: str | None, shard: tuple[int, int], settings_yaml: str, n: int,
                 shard_count: int, shared: _Once) -> None:
        """``shard_count``: the host's --shard count (1: the parent finalizes the store once the children end);
        ``shared``: the settings lines forwarded so far, over every child."""
        self.index, self.gpus, self.shared = index, gpus, shared
        self.shard = f"{shard[0]}/{shard[1]}"
        env = dict(os.environ)
        if shard_count == 1:
            env[FINALIZER_ENV] = f"the --devices {n} process"
        if gpus is not None:
            env[VISIBLE_ENV] = gpus
        elif "OMP_NUM_THREADS" not in env:  # CPU processes share the cores instead of oversubscribing them
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            env["OMP_NUM_THREADS"] = str(max(1, cores // n))
        self.name = f"device {index} ({'GPU ' + gpus if gpus is not None else 'cpu'}, shard {self.shard})"
        self.errors: list[str] = []
        self.last = ""
        argv = [sys.executable, "-m", "stage1_teacher.cli", "dump", "--config", "/dev/stdin", "--shard", self.shard,
                "--devices", "1", "--no-progress"]
        # Same process group: Ctrl-C reaches every child at once, and each resumes from its written units.
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)  # vLLM's --verbose log goes to stdout
        self.proc.stdin.write(settings_yaml)
        self.proc.stdin.close()
        self.reader = threading.Thread(target=self._forward, name=f"ddk-device-{index}", daemon=True)
        self.reader.start()

    def _forward(self) -> None:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            self.last = line
            if line.startswith("error:"):
                self.errors.append(line[len("error:"):].strip())  # the parent's one error line carries it
            elif self.shared.first(line):
                print(f"[device {self.index}] {line}", file=sys.stderr, flush=True)

    def reason(self) -> str:
        rc = self.proc.returncode
        if self.errors:
            return self.errors[-1]
        if rc is not None and rc < 0:
            try:
                sig = signal.Signals(-rc).name
            except ValueError:
                sig = f"signal {-rc}"
            return f"killed by {sig}"
        return f"exit status {rc}" + (f" ({self.last.strip()[:200]})" if self.last else "")

    def stop(self) -> None:
        """End the child if it still runs: SIGTERM, then SIGKILL after 10 s (vLLM's engine exits with its parent);
        then wait for the thread forwarding its output (a daemon thread still printing when the interpreter exits
        can abort it)."""
        try:
            if self.proc.poll() is not None:
                return
            for end in (self.proc.terminate, self.proc.kill):
                try:
                    end()
                    self.proc.wait(timeout=10)
                    return
                except ProcessLookupError:
                    return
                except subprocess.TimeoutExpired:
                    continue
        finally:
            self.reader.join(timeout=2)  # (the child's output ends with it, unless a grandchild holds the pipe)
