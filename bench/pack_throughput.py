"""Stage-1 pack phase alone (read and hash, tokenize, split, pack, write the rows into a store): tokens/s and peak
memory.

Measures, on the built-in corpus and the built-in teacher's tokenizer (the commands a user types build both):
  tokens/s  of the pack phase with --workers 1 and 2 (the same rows either way; a test checks that), each worker
            count measured --repeat times, interleaved (1, 2, 1, 2, ...: a load that comes and goes on a shared
            machine hits both alike), the median reported;
  CPU s     of the packing process and of its tokenizer workers (what the speed-up can be at most, whatever else
            runs on the machine: total CPU / max(packing process, total / cores));
  peak RSS  of the process that packs (--workers 1: it also tokenizes), for the corpus at 1x and 8x its size
            (8 copies of every file); the streaming pack keeps it flat.

    .venv/bin/python bench/pack_throughput.py [--corpus CORPORA.yaml] [--teacher DIR] [--seq-len 1024]
                                              [--heldout 50] [--workers 1,2] [--scales 1,8] [--repeat 3]

Every measurement runs in a fresh process (`--child`), so one run's memory never counts in the next one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import os
import shutil
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def built_in(command: str) -> str:
    """Path printed by `ddk-teacher builtin-corpus|builtin-teacher` (built once, then reused from the cache)."""
    out = subprocess.run([sys.executable, "-m", "stage1_teacher.cli", command], check=True, capture_output=True,
                         text=True).stdout
    return out.strip().splitlines()[-1]


def scaled_corpus(corpus: Path, scale: int, root: Path) -> Path:
    """CORPORA.yaml naming every file of ``corpus`` ``scale`` times, through copies of its files (real copies: the
    corpus loader reads a file reached through two symlinks once)."""
    from stage1_teacher.corpus import load_corpora

    if scale == 1:
        return corpus
    sources = load_corpora(corpus)
    base = Path(os.path.commonpath([f for s in sources for f in s.files]))
    lines = ["domains:"]
    for s in sources:
        paths = []
        for i in range(scale):
            for f in s.files:
                copy = root / f"copy{i}" / os.path.relpath(f, base)
                if not copy.exists():
                    copy.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(f, copy)
                paths.append(str(copy))
        lines.append(f"  {s.name}: {{format: {s.format}, paths: {json.dumps(paths)}}}")
    out = root / f"corpora-x{scale}.yaml"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def child(corpus: str, teacher_dir: str, seq_len: int, heldout: int, workers: int) -> None:
    """Pack every domain once into a new store (the pack phase of `ddk-teacher pack`: read, hash, tokenize, split,
    pack, write the rows) and print one JSON line: tokens, seconds, peak RSS of this process."""
    from ddk_store import tokenizer_fingerprint
    from stage1_teacher.corpus import load_corpora
    from stage1_teacher.pack import pack_corpora, pack_identity
    from stage1_teacher.plan import settings_of
    from stage1_teacher.teacher import load_tokenizer, resolve_teacher
    from stage1_teacher.tokenize import DocTokenizer, bos_to_add

    teacher = resolve_teacher(teacher_dir, weights=False)  # the pack phase needs no weights
    tok = load_tokenizer(teacher)
    bos = bos_to_add(tok)
    corpora = load_corpora(corpus)
    settings = settings_of(corpora, heldout_seqs=heldout, max_rows_per_domain=0, on_bad_utf8="skip",
                           trust_remote_code=False, bos_token_id=bos)
    identity = pack_identity(seq_len=seq_len, fingerprint=tokenizer_fingerprint(tok), eos_token_id=tok.eos_token_id,
                             settings=settings)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        c0 = cpu_seconds(resource.RUSAGE_SELF), cpu_seconds(resource.RUSAGE_CHILDREN)
        with DocTokenizer(tok, workers=workers) as coder:
            packed = pack_corpora(str(Path(tmp) / "store"), corpora, coder, identity=identity, heldout_seqs=heldout,
                                  max_rows_per_domain=0, on_bad_utf8="skip", eos_id=tok.eos_token_id, bos_id=bos,
                                  vocab_size=teacher.vocab_size, echo=lambda m: None)
        seconds = time.perf_counter() - t
        main_cpu = cpu_seconds(resource.RUSAGE_SELF) - c0[0]
        workers_cpu = cpu_seconds(resource.RUSAGE_CHILDREN) - c0[1]  # the pool is shut down (joined) by now
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    infos = [packed.info(d) for d in packed.domains]
    print(json.dumps({"tokens": sum(i.n_tokens for i in infos), "seconds": seconds, "rss": rss,
                      "bytes": sum(s.bytes for i in infos for s in i.sources), "main_cpu": main_cpu,
                      "workers_cpu": workers_cpu}))


def cpu_seconds(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def measure(corpus: Path, teacher: str, seq_len: int, heldout: int, workers: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", "--corpus", str(corpus), "--teacher", teacher,
                          "--seq-len", str(seq_len), "--heldout", str(heldout), "--workers", str(workers)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="", help="CORPORA.yaml (default: `ddk-teacher builtin-corpus`)")
    ap.add_argument("--teacher", default="", help="teacher directory (default: `ddk-teacher builtin-teacher`)")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--heldout", type=int, default=50)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--scales", default="1,8")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each worker count at 1x, interleaved (median)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.corpus, args.teacher, args.seq_len, args.heldout, int(args.workers))
        return
    corpus = Path(args.corpus or built_in("builtin-corpus"))
    corpus = corpus / "CORPORA.yaml" if corpus.is_dir() else corpus
    teacher = args.teacher or built_in("builtin-teacher")
    print(f"pack phase: {corpus} with the tokenizer of {teacher}, T={args.seq_len}, held-out {args.heldout}, "
          f"{os.cpu_count()} cores")
    print("| corpus | workers | MB | tokens | seconds (runs) | tokens/s (median) | CPU s packer + workers | "
          "peak RSS MiB |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (int(x) for x in args.scales.split(",")):
            src = scaled_corpus(corpus, scale, Path(tmp))
            ws = [int(x) for x in args.workers.split(",")] if scale == 1 else [1]
            runs: dict[int, list[dict]] = {w: [] for w in ws}
            for _ in range(args.repeat if scale == 1 else 1):
                for w in ws:  # interleaved
                    runs[w].append(measure(src, teacher, args.seq_len, args.heldout, w))
            for w in ws:
                rs = sorted(runs[w], key=lambda r: r["seconds"])
                r = {**rs[len(rs) // 2], "seconds": statistics.median(x["seconds"] for x in rs),
                     "rss": max(x["rss"] for x in rs)}  # the peak over the runs, as the table and the ratio show
                results[(scale, w)] = r
                each = ", ".join(f"{x['seconds']:.1f}" for x in runs[w])
                print(f"| {scale}x | {w} | {r['bytes'] / 1e6:.1f} | {r['tokens']:,} | {r['seconds']:.1f} ({each}) | "
                      f"{r['tokens'] / r['seconds']:,.0f} | {r['main_cpu']:.1f} + {r['workers_cpu']:.1f} | "
                      f"{r['rss'] / 2**20:,.0f} |", flush=True)
    ws = sorted({w for s, w in results if s == 1})
    if len(ws) > 1:
        a, b = results[(1, ws[0])], results[(1, ws[-1])]
        print(f"speed-up {ws[0]} -> {ws[-1]} workers: {(b['tokens'] / b['seconds']) / (a['tokens'] / a['seconds']):.2f}x")
    scales = sorted({s for s, _ in results})
    if len(scales) > 1:
        print(f"peak RSS {scales[-1]}x / {scales[0]}x: "
              f"{results[(scales[-1], 1)]['rss'] / results[(scales[0], 1)]['rss']:.2f}x")


if __name__ == "__main__":
    main()
