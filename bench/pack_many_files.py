"""Stage-1 pack phase over a corpus of many small files: what rewriting the pack document costs.

The pack document (`_pack/zarr.json`) lists every source file of every domain (about 210 bytes each), and a resume
needs a cursor after the chunks it counts. Rewritten after every 256k-token chunk, as before 2026-12-04, a corpus of
N files writes N x 210 bytes per chunk: at 20,000 files, more document bytes than row bytes. Now a cursor is saved
only SAVE_EVERY_S seconds after the last write, and SAVE_COST_FACTOR times as long as that write took
(stage1_teacher/pack.py). This measures both side by side, on the same corpus and tokenizer:

  per chunk  SAVE_EVERY_S = SAVE_COST_FACTOR = 0 (the old behaviour)
  spaced     the defaults

and prints, for each, the pack's seconds (median of --repeat interleaved runs), the document writes and the bytes
they wrote, against the bytes of the packed rows (2 bytes a token here).

    .venv/bin/python bench/pack_many_files.py [--files 20000] [--words 300] [--seq-len 32] [--teacher DIR]
                                              [--repeat 3]

Every run is a fresh process (`--child`). The corpus is synthetic text (one document per file, `format: files`),
written to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("def return import class for while if else print value index result data self none true the of and to in "
         "is that it with as was on be by this are from at or an which not have has but all were can").split()
MODES = {"per chunk": (0.0, 0), "spaced": None}


def write_corpus(root: Path, files: int, words: int) -> Path:
    rng = random.Random(0)
    for domain, n in (("many", files), ("few", 20)):
        d = root / domain
        d.mkdir(parents=True)
        for i in range(n):
            (d / f"doc{i:07d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(words)) + "\n")
    corpora = root / "corpora.yaml"
    corpora.write_text("domains:\n  many: {paths: ['many/*.txt'], format: files}\n"
                       "  few: {paths: ['few/*.txt'], format: files}\n")
    return corpora


def child(corpora: str, teacher: str, seq_len: int, mode: str) -> None:
    """Pack ``corpora`` into a new store as `ddk-teacher pack` does, and print one JSON line."""
    import stage1_teacher.pack as pack
    from ddk_store.packed import PackedRows
    from stage1_teacher.cli import main

    if MODES[mode] is not None:
        pack.SAVE_EVERY_S, pack.SAVE_COST_FACTOR = MODES[mode]
    writes = {"n": 0, "bytes": 0}
    real = PackedRows.write_state

    def counted(self, identity, domains):
        writes["n"] += 1
        writes["bytes"] += len(json.dumps({"identity": identity, "domains": domains}))
        return real(self, identity, domains)

    PackedRows.write_state = counted
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        try:
            main(["pack", "--teacher", teacher, "--corpora", corpora, "--store", str(Path(tmp) / "s"), "--seq-len",
                  str(seq_len), "--heldout-seqs", "2", "--no-progress"])
        except SystemExit as e:
            if e.code:
                raise
        seconds = time.perf_counter() - t
        state = PackedRows(str(Path(tmp) / "s"), read_only=True).read_state()
    rows = sum(st["train_rows"] + st["heldout_rows"] for st in state["domains"].values())
    print(json.dumps({"seconds": seconds, "writes": writes["n"], "doc_bytes": writes["bytes"],
                      "row_bytes": rows * seq_len * 2}))


def measure(corpora: Path, teacher: str, seq_len: int, mode: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--corpora", str(corpora), "--teacher", teacher,
                          "--seq-len", str(seq_len)], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20000, help="files (documents) of the large domain")
    ap.add_argument("--words", type=int, default=300, help="words per file")
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--teacher", default="", help="teacher directory (default: `ddk-teacher builtin-teacher`)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    ap.add_argument("--corpora", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.corpora, args.teacher, args.seq_len, args.child)
        return
    teacher = args.teacher or subprocess.run([sys.executable, "-m", "stage1_teacher.cli", "builtin-teacher"],
                                             check=True, capture_output=True, text=True).stdout.split()[-1]
    with tempfile.TemporaryDirectory() as tmp:
        corpora = write_corpus(Path(tmp), args.files, args.words)
        runs: dict[str, list[dict]] = {m: [] for m in MODES}
        for _ in range(args.repeat):
            for m in MODES:  # interleaved: a load that comes and goes hits both alike
                runs[m].append(measure(corpora, teacher, args.seq_len, m))
    print(f"pack phase: {args.files:,} files of {args.words} words + 20, T={args.seq_len}, {args.repeat} runs each")
    print("| pack document | seconds (runs) | document writes | document MB | row MB |")
    print("|---|---:|---:|---:|---:|")
    median = {}
    for m, rs in runs.items():
        median[m] = statistics.median(r["seconds"] for r in rs)
        r = rs[0]
        each = ", ".join(f"{x['seconds']:.1f}" for x in rs)
        print(f"| {m} | {median[m]:.1f} ({each}) | {r['writes']} | {r['doc_bytes'] / 1e6:.1f} | "
              f"{r['row_bytes'] / 1e6:.1f} |")
    print(f"time per chunk / spaced: {median['per chunk'] / median['spaced']:.2f}x")


if __name__ == "__main__":
    main()
