"""Reader tokens/s against the training step's consumption (issue 13, item 5: reads never starve the step; target:
the reader delivers >= 5x the tokens/s the step consumes, also for a 135 M student).

What it measures, at each --seq-len (default 1024 and 2048), top-k --top-k (64), vocabulary --vocab (49,152):
  reader   micro-batches of --micro-batch rows exactly as `ddk-student train` consumes them: the real DomainSampler's
           plan over three domains (uniform weights), read by stage2_student.data.Prefetcher (the read pool) into
           the tensors the loop gets, for --workers thread counts (1 = one reader thread, the old prefetcher), from
             local          a store directory on this disk (its files in the page cache after writing, as for a
                            store on local NVMe read a second time),
             s3             the same store copied to a real SeaweedFS S3 server on loopback, no cache,
             s3+cache fill  through --cache-dir, empty (the first run on a host: every chunk fetched and written),
             s3+cache warm  through the same --cache-dir, filled (a second run or a second rank on the host).
  step     one training micro-step of --step-rows rows of the same T on this CPU (stage2_student.loss_step.student_loss
           forward + fused top-k KD loss + backward + AdamW), for a tiny student (hidden 64, 2 layers) and a
           random-init SmolLM2-135M-shaped student (hidden 576, 30 layers, 9/3 heads, tied): the fastest step after
           the first of --steps.
The table divides reader tokens/s by each student's step tokens/s. Both run on the same cores here, one after the
other; on a GPU host the step runs on the GPU and the reader has the cores to itself.

Usage: python bench/read_throughput.py [--seq-len 1024 2048] [--top-k 64] [--vocab 49152] [--micro-batch 4]
       [--step-rows 1] [--rows 48] [--batches 24] [--workers 1 2 4] [--steps 2] [--students tiny 135m] [--no-s3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ddk_store import spec
from ddk_store.testing import tiny_meta
from ddk_store.writer import StoreWriter
from gpu_train import synthetic_rows  # the sibling bench's cheap valid teacher rows at any vocabulary
from stage2_student.readpool import available_cores

DOMAINS = ("alpha", "beta", "gamma")
STUDENTS = {  # Llama shapes, tied embeddings
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
                 num_key_value_heads=1, rope_theta=10000.0),
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, rope_theta=100000.0),  # SmolLM2-135M
}
#: A 135M student at 35% MFU on an H100/H200 (989 dense bf16 TFLOP/s) by 6N: the rate the reader must feed there.
GPU_135M_TOKENS_S = 0.35 * 989e12 / (6 * 134.5e6)


def build_store(path: Path, *, seq_len: int, top_k: int, vocab: int, rows: int) -> None:
    meta = tiny_meta(domains=DOMAINS, seq_len=seq_len, top_k=top_k, vocab_size=vocab)
    writer = StoreWriter.open_or_create(str(path), meta, {d: {"train": rows, "heldout": 2} for d in DOMAINS})
    rng = np.random.default_rng(0)
    for d in DOMAINS:
        for split in spec.SPLITS:
            for unit in writer.units(d, split):
                writer.write_unit(unit, **synthetic_rows(rng, unit.n_rows, seq_len, top_k, vocab))
    writer.finalize()


def plans_for(reader, micro_batch: int, batches: int) -> list[np.ndarray]:
    """The micro-batches of one interval of `ddk-student train` (uniform mixture), as its loop plans them."""
    from stage2_student.sampler import DomainSampler

    sampler = DomainSampler([reader.num_rows(d, "train") for d in DOMAINS], rows_per_interval=micro_batch * batches,
                            seed=0)
    sampler.start_interval(0, [1 / len(DOMAINS)] * len(DOMAINS))
    return [sampler.rows_for(s, batch_size=micro_batch, chunk=0, num_chunks=1) for s in range(batches)]


def reader_tokens_s(url: str, *, workers: int, micro_batch: int, batches: int, storage_options=None,
                    cache_dir: str | None = None) -> dict:
    from ddk_store import open_store
    from stage2_student.data import Prefetcher

    reader = open_store(url, storage_options=storage_options, cache_dir=cache_dir)
    reader.check_structure()  # opens every array (metadata only), as the trainer does before its loop
    plans = plans_for(reader, micro_batch, batches)
    t0 = time.perf_counter()
    n = 0
    prefetch = Prefetcher(reader, DOMAINS, plans, depth=max(4, workers), workers=workers)
    try:
        for batch in prefetch:
            n += batch.num_tokens
    finally:
        prefetch.close()
    wall = time.perf_counter() - t0
    zs = reader._zstore
    return {"tokens_s": n / wall, "tokens": n, "wall_s": wall,
            "cache_hits": getattr(zs, "hits", None), "cache_fills": getattr(zs, "fills", None)}


def step_tokens_s(student: str, *, seq_len: int, top_k: int, vocab: int, micro_batch: int, steps: int) -> dict:
    """Tokens/s of the real training micro-step (student_loss + backward + AdamW) on this CPU."""
    import contextlib

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from stage2_student.loss_step import student_loss

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, max_position_embeddings=max(2048, seq_len), tie_word_embeddings=True,
                      **STUDENTS[student])
    model = LlamaForCausalLM(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (micro_batch, seq_len), generator=g)
    ids = torch.randint(0, vocab, (micro_batch, seq_len - 1, top_k), generator=g)
    lps = torch.log_softmax(torch.randn(micro_batch, seq_len - 1, top_k, generator=g), -1) + np.log(0.95)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = student_loss(model, model, tokens, ids, lps, vocab_size=vocab, autocast=contextlib.nullcontext,
                            gamma=0.2).total
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    best = min(times[1:] or times)
    params = sum(p.numel() for p in model.parameters())
    return {"tokens_s": micro_batch * seq_len / best, "step_s": best, "params": params}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-len", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=49_152)
    ap.add_argument("--micro-batch", type=int, default=4, help="rows per micro-batch the reader delivers")
    ap.add_argument("--step-rows", type=int, default=1,
                    help="rows per timed training micro-step (tokens/s of a CPU step hardly depends on it)")
    ap.add_argument("--rows", type=int, default=48, help="training rows per domain of the store")
    ap.add_argument("--batches", type=int, default=24, help="micro-batches read per reader measurement")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="read-pool thread counts")
    ap.add_argument("--steps", type=int, default=2, help="training steps per student; the first is not timed")
    ap.add_argument("--students", nargs="+", default=["tiny", "135m"], choices=sorted(STUDENTS))
    ap.add_argument("--no-s3", action="store_true", help="local store only (no SeaweedFS)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    server = None
    results: list[dict] = []
    steps: dict[tuple[str, int], dict] = {}
    tmp = Path(tempfile.mkdtemp(prefix="ddk-read-bench-"))
    try:
        if not args.no_s3:
            from ddk_testkit.s3 import WEED_MISSING, SeaweedS3, weed_binary

            if weed_binary() is None:
                raise SystemExit(WEED_MISSING + " (or pass --no-s3)")
            server = SeaweedS3(tmp / "seaweed")
            server.start()
        for T in args.seq_len:
            local = tmp / f"store-{T}"
            t0 = time.perf_counter()
            build_store(local, seq_len=T, top_k=args.top_k, vocab=args.vocab, rows=args.rows)
            print(f"# T={T}: store of {3 * args.rows} training rows written in {time.perf_counter() - t0:.1f} s",
                  flush=True)
            sources = [("local", str(local), None, None, None)]
            if server is not None:
                fs = server.client()
                fs.put(str(local), f"{server.BUCKET}/bench/store-{T}", recursive=True)
                url, opts = f"s3://{server.BUCKET}/bench/store-{T}", server.storage_options
                sources += [("s3", url, opts, None, None)]
                for w in args.workers:  # a fresh cache per thread count: fill it, then read it warm
                    cache = str(tmp / f"cache-{T}-{w}")
                    sources += [("s3+cache fill", url, opts, cache, w), ("s3+cache warm", url, opts, cache, w)]
            for name, url, opts, cache, only in sources:
                for w in ([only] if only else args.workers):
                    r = reader_tokens_s(url, workers=w, micro_batch=args.micro_batch, batches=args.batches,
                                        storage_options=opts, cache_dir=cache)
                    results.append({"source": name, "seq_len": T, "workers": w, **r})
                    print(f"# {name} T={T} workers={w}: {r['tokens_s']:,.0f} tokens/s", flush=True)
            for student in args.students:
                steps[(student, T)] = step_tokens_s(student, seq_len=T, top_k=args.top_k, vocab=args.vocab,
                                                    micro_batch=args.step_rows, steps=args.steps)
                print(f"# step {student} T={T}: {steps[(student, T)]}", flush=True)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    import torch

    print(f"# bench/read_throughput.py: {os.cpu_count()} cores ({available_cores()} usable), torch threads "
          f"{torch.get_num_threads()}; V={args.vocab:,}, K={args.top_k}, reader micro-batch {args.micro_batch} rows, "
          f"step micro-batch {args.step_rows} row(s), "
          f"{args.batches} micro-batches per reader run, encoding {tiny_meta().encoding}")
    heads = [f"x {s} step" for s in args.students]
    print("| source | T | read workers | reader tokens/s | " + " | ".join(heads) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(heads))
    for r in results:
        ratios = [r["tokens_s"] / steps[(s, r["seq_len"])]["tokens_s"] for s in args.students]
        print(f"| {r['source']} | {r['seq_len']} | {r['workers']} | {r['tokens_s']:,.0f} | "
              + " | ".join(f"{x:,.1f}" for x in ratios) + " |")
    print("| step | T | student | step s | step tokens/s |")
    print("|---|---:|---|---:|---:|")
    for (s, T), st in steps.items():
        print(f"| step | {T} | {s} ({st['params'] / 1e6:.0f} M) | {st['step_s']:.2f} | {st['tokens_s']:,.0f} |")
    for T in args.seq_len:
        for s in args.students:
            need = 5 * steps[(s, T)]["tokens_s"]
            for source in dict.fromkeys(r["source"] for r in results):
                best = max(r["tokens_s"] for r in results if r["source"] == source and r["seq_len"] == T)
                print(f"T={T} {s}: {source} {'met' if best >= need else 'MISSED'} (best {best:,.0f} tokens/s = "
                      f"{best / steps[(s, T)]['tokens_s']:.1f}x the step; target >= 5x)")
    print(f"# for scale: a 135M student at 35% MFU on an H100/H200 consumes ~{GPU_135M_TOKENS_S:,.0f} tokens/s (6N, "
          "computed, not measured here); the readers of this machine against it:")
    for T in args.seq_len:
        for source in dict.fromkeys(r["source"] for r in results):
            best = max(r["tokens_s"] for r in results if r["source"] == source and r["seq_len"] == T)
            ratio = best / GPU_135M_TOKENS_S
            print(f"T={T} 135m at 35% MFU on a GPU: {source} {'met' if ratio >= 5 else 'MISSED'} ({ratio:.2f}x; "
                  f"target >= 5x)")
    if args.json:
        print(json.dumps({"readers": results, "steps": {f"{s}@{T}": v for (s, T), v in steps.items()}}))


if __name__ == "__main__":
    main()
