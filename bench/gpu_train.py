"""One call on a GPU host: the real `ddk-student train` on a random-init student of SmolLM2-360M's shape and a
synthetic store; prints MFU, the KD/CE step-time ratio and peak memory (issue 13's targets: MFU >= 35% at T = 2048,
KD step <= 1.03x CE step, KD peak memory within 10% of CE's).

What it does, in a work directory:
  1. a word-level tokenizer of exactly --vocab tokens and a random-init tied Llama student over it (SmolLM2-360M:
     hidden 960, intermediate 2560, 32 layers, 15 heads / 5 KV heads of 64, rope theta 100,000);
  2. a synthetic store of that vocabulary (3 domains, rows of --seq-len tokens, top---top-k per position: the next
     token first, then distinct ids; a peaked teacher with 5% tail mass), written with the store's own writer;
  3. `ddk-student train` twice, each in its own child process (KD with --gamma 0.2, CE-only with --gamma 0), one
     interval, --compile as given (default on), the step lines of metrics.jsonl timed; the child reports the peak
     memory (CUDA: torch.cuda.max_memory_allocated; CPU: peak RSS).
Step time: median over the logged steps after --warmup steps (compilation happens in the first ones). MFU: 6 N
tokens/s / --peak-flops (989e12: H100/H200 dense bf16), N = all parameters of the student.

Usage: python bench/gpu_train.py [--steps 30] [--batch-size 16] [--seq-len 2048] [--vocab 49152] [--top-k 64]
       [--compile on|off|auto] [--device auto|cuda|cpu] [--workdir DIR] [--json]
       python bench/gpu_train.py --tiny     # CPU, tiny shapes: checks the script end to end without a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from ddk_testkit.workdirs import work_dir

SMOLLM2_360M = dict(hidden_size=960, intermediate_size=2560, num_layers=32, num_heads=15, num_kv_heads=5,
                    rope_theta=100000.0)
TINY = dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=1, num_kv_heads=1, rope_theta=10000.0)
DOMAINS = ("alpha", "beta", "gamma")
COMPILE_FLAG = {"on": ["--compile"], "off": ["--no-compile"], "auto": []}


def synthetic_rows(rng: np.random.Generator, n: int, seq_len: int, top_k: int, vocab: int) -> dict[str, np.ndarray]:
    """Cheap valid teacher rows at any vocabulary: top-1 is the realized next token, the other k-1 ids distinct
    (next + j * stride mod V), log-probs a sorted softmax of k normals holding 95% of the mass."""
    tokens = rng.integers(0, vocab, size=(n, seq_len))
    nxt = tokens[:, 1:]
    stride = rng.integers(1, max(2, vocab // top_k), size=nxt.shape)
    ids = (nxt[..., None] + np.arange(top_k) * stride[..., None]) % vocab
    z = -np.sort(-rng.normal(size=(*nxt.shape, top_k)) * 2.0, axis=-1)
    lp = z - np.log(np.exp(z).sum(-1, keepdims=True)) + np.log(0.95)
    return {"tokens": tokens, "topk_ids": ids, "topk_logprobs": lp.astype(np.float32),
            "target_logprobs": lp[..., 0].astype(np.float32)}


def build_store(path: Path, tokenizer, *, seq_len: int, top_k: int, train_rows: int, heldout_rows: int) -> None:
    from ddk_store import tokenizer_fingerprint
    from ddk_store.testing import tiny_meta
    from ddk_store.writer import StoreWriter

    vocab = len(tokenizer)
    meta = tiny_meta(domains=DOMAINS, seq_len=seq_len, top_k=top_k, vocab_size=vocab,
                     fingerprint=tokenizer_fingerprint(tokenizer))
    rows = {d: {"train": train_rows, "heldout": heldout_rows} for d in DOMAINS}
    writer = StoreWriter.open_or_create(str(path), meta, rows)
    rng = np.random.default_rng(0)
    for d in DOMAINS:
        for split in ("train", "heldout"):
            for unit in writer.units(d, split):
                writer.write_unit(unit, **synthetic_rows(rng, unit.n_rows, seq_len, top_k, vocab))
    writer.finalize()


def child_train(argv: list[str]) -> None:
    """Run `ddk-student train` in this process (its console entry point), then print one JSON line of peak memory."""
    import torch

    from stage2_student.cli import main

    try:
        main(argv)
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    cuda = torch.cuda.is_available() and "cpu" not in argv
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_bytes": int(peak), "kind": "cuda max_memory_allocated" if cuda else "CPU peak RSS"}))


def step_times(out: Path, tokens_per_step: int, warmup: int) -> list[float]:
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return [tokens_per_step / r["tokens_per_s"] for r in lines
            if r["event"] == "step" and r["step"] > warmup and r["tokens_per_s"] > 0]


def run_variant(args, name: str, gamma: float, student: Path, store: Path, work: Path) -> dict:
    out = work / f"run-{name}"
    argv = ["train", "--store", str(store), "--student", str(student), "--out", str(out), "--steps", str(args.steps),
            "--mixing", "natural", "--interval", str(args.steps), "--batch-size", str(args.batch_size), "--gamma", str(gamma),
            "--lr", "3e-4", *COMPILE_FLAG[args.compile], "--device", args.device, "--eval-batch-size", "4",
            "--heldout-rows", "2", "--log-every", "1", "--no-progress", "--overwrite"]
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(argv)], capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        raise SystemExit(f"{name} run failed:\n{proc.stderr[-4000:]}")
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    mem = json.loads(proc.stdout.strip().splitlines()[-1])
    times = step_times(out, args.batch_size * args.seq_len, args.warmup)
    step = statistics.median(times)
    return {"variant": name, "step_s": step, "tokens_per_s": args.batch_size * args.seq_len / step,
            "peak_gib": mem["peak_bytes"] / 2**30, "memory": mem["kind"], "steps_timed": len(times),
            "warnings": warnings}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU, tiny shapes (a check of this script, not a figure)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the timing (compilation)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--top-k", type=int, default=64)
    p.add_argument("--compile", default="on", choices=("on", "off", "auto"))
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--peak-flops", type=float, default=989e12, help="dense bf16 FLOP/s of the GPU (H100/H200)")
    p.add_argument("--workdir", type=Path, default=None, help="kept (default: a temporary one, removed at the end)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child_train(json.loads(args.child))
    shape = TINY if args.tiny else SMOLLM2_360M
    if not args.tiny and args.device != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("gpu_train.py measures a GPU and torch sees no CUDA device here; pass --tiny to check "
                             "the script end to end on the CPU (or --device cpu to measure the CPU at full size)")
    if args.tiny:
        args.steps, args.warmup, args.batch_size, args.seq_len, args.vocab, args.top_k, args.device = \
            8, 3, 4, 64, 2048, 8, "cpu"
    with work_dir(args.workdir, "ddk-gpu-train-") as work:
        measure(args, shape, work)


def measure(args: argparse.Namespace, shape: dict, work: Path) -> None:
    import torch

    from ddk_testkit.vocab import build_llama, build_word_tokenizer

    tok = build_word_tokenizer(work / "tok", args.vocab)
    student = build_llama(work / "student", work / "tok", vocab_size=args.vocab, max_positions=max(8192, args.seq_len),
                          **shape)
    n_params = _count(student)
    rows = max(8, args.steps * args.batch_size // len(DOMAINS) // 2)
    build_store(work / "store", tok, seq_len=args.seq_len, top_k=args.top_k, train_rows=rows, heldout_rows=2)
    results = [run_variant(args, "kd", 0.2, student, work / "store", work),
               run_variant(args, "ce", 0.0, student, work / "store", work)]
    kd, ce = results
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else "CPU"
    summary = {"device": gpu, "params": n_params, "batch": args.batch_size, "seq_len": args.seq_len,
               "vocab": args.vocab, "top_k": args.top_k, "compile": args.compile, "results": results,
               "kd_over_ce_step": kd["step_s"] / ce["step_s"], "kd_over_ce_peak": kd["peak_gib"] / ce["peak_gib"]}
    for r in results:
        r["mfu"] = 6 * n_params * r["tokens_per_s"] / args.peak_flops
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    print(f"{gpu}: student {n_params / 1e6:.1f} M parameters, B={args.batch_size} T={args.seq_len} "
          f"V={args.vocab} K={args.top_k}, --compile {args.compile}, {args.steps} steps ({args.warmup} untimed)")
    print(f"{'run':<4} {'step s':>8} {'tokens/s':>10} {'MFU':>7} {'peak GiB':>9}  memory")
    for r in results:
        print(f"{r['variant']:<4} {r['step_s']:>8.4f} {r['tokens_per_s']:>10,.0f} {r['mfu']:>7.2%} "
              f"{r['peak_gib']:>9.2f}  {r['memory']}")
        for w in r["warnings"]:
            print(f"     {w}")
    print(f"KD/CE step time {summary['kd_over_ce_step']:.3f} (target <= 1.03); KD/CE peak memory "
          f"{summary['kd_over_ce_peak']:.3f} (target <= 1.10); MFU target >= 35% on H100/H200")


def _count(student: Path) -> int:
    """Parameters of the saved student (tied embeddings once), read from its safetensors header."""
    from safetensors import safe_open

    with safe_open(str(student / "model.safetensors"), "pt") as f:
        return sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())


if __name__ == "__main__":
    main()
