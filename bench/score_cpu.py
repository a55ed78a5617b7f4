"""Stage 1's scoring pipeline, CPU side: the whole `run()` scoring loop with the teacher replaced by replayed real
top-k, so what is measured is what a GPU teacher would wait on (reading the packed rows, the hand-off, encode,
checksums, write, the markers), in tokens/s and tokens per CPU-second.

The replayed records are the real SmolLM2-135M top-64 over the six built-in domains (bench/store_codec.py computes
and caches them), at T = 1024; each unit's rows get the records of as many cached rows (cycled). The rows to score
are packed once from the built-in corpus (`ddk-teacher pack`); every measured dump scores a fresh copy of that
packed store, each setting of ``--write-threads`` x ``--unit-rows`` side by side (interleaved, ``--repeat`` times
each, medians). ``--unit-rows 0`` is the store's default unit (layout.UNIT_TOKENS tokens); a larger unit spreads the
fixed cost per unit (its new directories and objects, the marker) over more tokens.

    DDK_CACHE=... .venv/bin/python bench/score_cpu.py [--rows 200] [--repeat 3] [--write-threads 2] [--unit-rows 0]
    (comma-separated lists compare settings side by side, e.g. --write-threads 1,2 --unit-rows 0,64)

Target (issue 12): >= 1 M tokens/s on this 2-core machine, so a GPU teacher never waits on its CPU side.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ddk_store.allocator import tune_allocator
from ddk_store.layout import default_chunk_rows, default_unit_rows
from stage1_teacher.backends import ScoredRows
from store_codec import SEQ, teacher_data


class ReplayBackend:
    """A backend whose teacher is replayed: real top-k records for any rows (no model)."""

    name = "hf"

    def __init__(self, data: dict[str, np.ndarray]) -> None:
        self.ids = data["topk_ids"].astype(np.int32)
        self.lps = data["topk_logprobs"].astype(np.float32)
        self.targets = data["target_logprobs"].astype(np.float32)
        self._cache: dict[int, ScoredRows] = {}

    def score(self, tokens: np.ndarray) -> ScoredRows:
        n = len(tokens)
        if n not in self._cache:  # built once per unit size: the replay itself costs nothing measurable
            pick = np.arange(n) % len(self.ids)
            self._cache[n] = ScoredRows(self.ids[pick], self.lps[pick], self.targets[pick])
        return self._cache[n]

    def score_iter(self, units):
        for tokens in units:
            yield self.score(tokens)

    def close(self) -> None:
        pass


def built_in(command: str) -> str:
    out = subprocess.run([sys.executable, "-m", "stage1_teacher.cli", command], check=True, capture_output=True,
                         text=True).stdout
    return out.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200, help="rows per domain (T = 1024)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--write-threads", default="2")
    ap.add_argument("--unit-rows", default="0", help="rows per unit to compare (0 = the store's default)")
    args = ap.parse_args()
    tune_allocator()  # as the ddk-teacher command does
    run_module = importlib.import_module("stage1_teacher.run")  # the module (the package exports run())
    from stage1_teacher import scoring
    from stage1_teacher.config import Stage1Config

    cpu_s = [0.0]

    def timed_score_units(*a, **kw):  # the scoring loop's CPU time, without run()'s checks and finalize
        c = time.process_time()
        try:
            return scoring.score_units(*a, **kw)
        finally:
            cpu_s[0] = time.process_time() - c

    run_module.score_units = timed_score_units

    data, label = teacher_data(4)
    backend = ReplayBackend(data)
    teacher, corpora = built_in("builtin-teacher"), built_in("builtin-corpus")
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="ddk-score-cpu-"))
    try:
        def cfg(store: Path, unit_rows: int) -> Stage1Config:
            return Stage1Config(teacher=teacher, corpora=corpora, store=str(store), seq_len=SEQ, top_k=64,
                                heldout_seqs=8, max_rows_per_domain=args.rows, backend="hf", progress=False,
                                unit_rows=unit_rows)

        unit_rows = [int(x) for x in args.unit_rows.split(",")]
        packed = {}
        for ur in unit_rows:  # the unit layout is fixed when the store is packed
            packed[ur] = work / f"packed-{ur}"
            subprocess.run([sys.executable, "-m", "stage1_teacher.cli", "pack", "--teacher", teacher, "--corpora",
                            corpora, "--store", str(packed[ur]), "--seq-len", str(SEQ), "--heldout-seqs", "8",
                            "--max-rows-per-domain", str(args.rows), "--unit-rows", str(ur)],
                           check=True, capture_output=True)
        results: dict[tuple[int, int], list[tuple[float, float, int]]] = {}
        default = scoring.WRITE_THREADS
        for rep in range(args.repeat + 1):  # the first round warms up (imports, allocator, page cache)
            for wt in [int(x) for x in args.write_threads.split(",")]:
                for ur in unit_rows:
                    store = work / f"store-{rep}-{wt}-{ur}"
                    shutil.copytree(packed[ur], store)
                    scoring.WRITE_THREADS = wt
                    s = run_module.run(cfg(store, ur), echo=lambda m: None, backend=backend)
                    if rep:
                        results.setdefault((wt, ur), []).append((s.score_seconds, cpu_s[0], s.tokens_scored))
                    shutil.rmtree(store)
        scoring.WRITE_THREADS = default
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nreplayed: {label}; {args.rows} rows per domain x 6 domains, T = {SEQ}, K = 64, default encoding")
    print(f"load average before: {load_before:.1f} on {os.cpu_count()} cores")
    print(f"\n{'writer threads':>15}{'unit rows':>10}{'tokens':>12}{'score s (runs)':>28}{'M tok/s':>10}"
          f"{'per CPU-s':>11}")
    default_unit = default_unit_rows(SEQ, default_chunk_rows(SEQ))
    for (wt, ur), rs in results.items():
        sec, cpu = sorted(rs)[len(rs) // 2][:2]  # the median-wall run (the upper of two), its own CPU time
        tok = rs[0][2]
        runs = ", ".join(f"{r[0]:.2f}" for r in rs)
        print(f"{wt:>15}{ur or f'{default_unit} (0)':>10}{tok:>12,}{f'{sec:.2f} ({runs})':>28}"
              f"{tok / sec / 1e6:>10.3f}{tok / cpu / 1e6:>11.3f}")
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"date {time.strftime('%Y-%m-%d')}; per CPU-s: tokens per second of this process's CPU time in the scoring "
          "loop (all threads)")


if __name__ == "__main__":
    main()
