"""Stage-1 throughput: full dump (teacher + top-k + encode + store write) vs the bare teacher on the same batches.

For each backend (hf, vllm where usable) on the same teacher and rows, prints tokens/s of
  forward  the bare teacher call on each unit's rows (hf: model forward -> logits; vllm: LLM.generate with
           prompt_logprobs, which is the cheapest call that yields them),
  score    forward + fp32 log-softmax + top-k + copy to numpy (backend.score, no store),
  dump     the whole `run()` scoring loop with the background store writer, writer drained,
and the ratios dump/forward and dump/score side by side, then vLLM vs transformers.

    .venv/bin/python bench/dump_throughput.py [--teacher DIR] [--backends hf,vllm] [--rows 6] [--seq-len 256]
                                              [--repeats 3]

--teacher defaults to the real SmolLM2-135M at $DDK_CACHE/teacher/smollm2-135m when present, else a tiny random
Llama built on the fly (labelled "tiny" in the table: its numbers measure overheads, not a real teacher).
"""

from __future__ import annotations

import argparse
import shutil
import sysconfig
import tempfile
import time
from pathlib import Path

from stage1_teacher.assets.teacher import default_teacher_dir

REAL_TEACHER = default_teacher_dir()


def build_corpus(root: Path, docs_per_domain: int) -> Path:
    """Two real-text domains available on any Python install: stdlib sources and their module docstrings."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    py = sorted(p for p in lib.glob("*.py"))[:docs_per_domain]
    (root / "code").mkdir(parents=True)
    for p in py:
        shutil.copy(p, root / "code" / p.name)
    prose = []
    for p in sorted(lib.glob("*.py")):
        text = p.read_text(encoding="utf-8", errors="replace")
        if text.startswith('"""'):
            prose.append(" ".join(text[3:].split('"""', 1)[0].split()))
    (root / "prose.txt").write_text("\n".join(x for x in prose if x) + "\n", encoding="utf-8")
    y = root / "corpora.yaml"
    y.write_text("domains:\n  code: {paths: ['code/*.py'], format: files}\n  prose: {paths: [prose.txt], format: lines}\n")
    return y


def tiny_teacher(root: Path) -> Path:
    from ddk_testkit.models import build_tiny_llama, build_tiny_tokenizer

    build_tiny_tokenizer(root / "tok")
    return build_tiny_llama(root / "teacher", root / "tok")


def unit_batches(store: str) -> list:
    """The token rows of every unit of a finished store, in write order: the same batches the dump scored."""
    from ddk_store import open_store

    r = open_store(store)
    out = []
    for d in r.domains:
        for split in ("train", "heldout"):
            n, u = r.num_rows(d, split), r.layout(d, split).unit_rows
            for s in range(0, n, u):
                out.append(r.read_rows(d, split, range(s, min(n, s + u))).tokens)
    return out


def bench_backend(name: str, args, teacher: Path, corpora: Path, work: Path) -> dict:
    import torch

    from stage1_teacher.backends import BackendOptions, backend_class
    from stage1_teacher.config import Stage1Config
    from stage1_teacher.run import run

    cls = backend_class(name)
    opts = BackendOptions(model_dir=str(teacher), top_k=args.top_k, seq_len=args.seq_len,
                          batch_tokens=args.batch_tokens, device=args.device)
    t = time.perf_counter()
    backend = cls(opts)
    load_s = time.perf_counter() - t

    def dump(tag: str):
        cfg = Stage1Config(**dict(teacher=str(teacher), corpora=str(corpora), store=str(work / f"store-{name}-{tag}"),
                                  seq_len=args.seq_len, top_k=args.top_k, heldout_seqs=args.heldout,
                                  max_rows_per_domain=args.rows, unit_rows=args.unit_rows, backend=name,
                                  batch_tokens=args.batch_tokens, device=args.device, progress=False))
        return cfg, run(cfg, echo=lambda m: None, backend=backend)

    # Warm-up: a first full dump outside every timing (vLLM's first call allocates for ~10 s; oneDNN and the
    # allocator warm up per batch shape). It also yields the unit batches the bare measurements replay.
    cfg, _ = dump("warmup")
    batches = unit_batches(cfg.store)
    tokens = sum(b.size for b in batches)

    def bare() -> float:
        t = time.perf_counter()
        for b in batches:
            if name == "hf":
                with torch.inference_mode():
                    for i in range(0, b.shape[0], backend.rows_per_batch):
                        backend.forward_logits(torch.from_numpy(b[i: i + backend.rows_per_batch]).long()
                                               .to(backend.device))
            else:
                backend.generate(b)
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the last batch's kernels are part of the forward's time
        return time.perf_counter() - t

    def score() -> float:
        t = time.perf_counter()
        for b in batches:
            backend.score(b)
        return time.perf_counter() - t

    # The three variants are interleaved round by round, and each keeps its best round: on a shared machine a
    # burst of foreign load then hits one round of every variant alike instead of one whole variant.
    fwd, sco, dmp = [], [], []
    for r in range(args.repeats):
        fwd.append(bare())
        sco.append(score())
        _, summary = dump(f"timed{r}")
        assert tokens == summary.tokens_scored, (tokens, summary.tokens_scored)
        dmp.append(summary.score_seconds)
    fwd_s, score_s, dump_s = min(fwd), min(sco), min(dmp)
    round_ratios = [f / d for f, d in zip(fwd, dmp)]
    backend.close()
    return {"backend": name, "engine": cls.engine(), "tokens": tokens, "load_s": load_s,
            "forward": tokens / fwd_s, "score": tokens / score_s, "dump": tokens / dump_s,
            "round_ratios": round_ratios,
            "bytes_per_token": (summary.store_bytes or 0) / max(1, summary.store_positions)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", type=Path, default=None, help="teacher model dir (default: real SmolLM2 or tiny)")
    ap.add_argument("--backends", default="hf,vllm", help="comma-separated: hf, vllm (vllm skipped if unusable)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--rows", type=int, default=6, help="training rows per domain (2 domains)")
    ap.add_argument("--heldout", type=int, default=2, help="held-out rows per domain")
    ap.add_argument("--unit-rows", type=int, default=4)
    ap.add_argument("--batch-tokens", type=int, default=1024)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; each variant keeps its best round")
    args = ap.parse_args()

    from stage1_teacher.backends import vllm_usability

    with tempfile.TemporaryDirectory(prefix="ddk-bench-") as tmp:
        work = Path(tmp)
        if args.teacher is None:
            args.teacher, label = (REAL_TEACHER, "SmolLM2-135M") if REAL_TEACHER.is_dir() else (
                tiny_teacher(work / "tiny"), "tiny random Llama (overheads only, not a real teacher)")
        else:
            label = str(args.teacher)
        corpora = build_corpus(work / "corpus", docs_per_domain=40)
        rows = []
        for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
            if name == "vllm" and not vllm_usability()[0]:
                print(f"# vllm skipped: {vllm_usability()[1]}")
                continue
            rows.append(bench_backend(name, args, args.teacher, corpora, work))

    import torch

    device = "cuda " + torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else \
        f"cpu ({torch.get_num_threads()} threads)"
    print(f"\nteacher: {label}   device: {device}   T={args.seq_len} K={args.top_k}   "
          f"tokens per backend: {rows[0]['tokens'] if rows else 0}")
    head = f"{'backend':<8}{'engine':<22}{'forward tok/s':>14}{'score tok/s':>13}{'dump tok/s':>12}" \
           f"{'dump/forward':>14}{'dump/score':>12}{'B/token':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['backend']:<8}{r['engine']:<22}{r['forward']:>14,.0f}{r['score']:>13,.0f}{r['dump']:>12,.0f}"
              f"{r['dump'] / r['forward']:>14.3f}{r['dump'] / r['score']:>12.3f}{r['bytes_per_token']:>9.1f}")
    for r in rows:
        rr = r["round_ratios"]
        print(f"{r['backend']}: dump/forward per round {', '.join(f'{x:.3f}' for x in rr)} "
              f"(best-of-{len(rr)} rounds above)")
    by = {r["backend"]: r for r in rows}
    if "hf" in by and "vllm" in by:
        print(f"\nvllm / hf (dump tok/s): {by['vllm']['dump'] / by['hf']['dump']:.2f}x   "
              f"(bare forward: {by['vllm']['forward'] / by['hf']['forward']:.2f}x)")


if __name__ == "__main__":  # vLLM spawns worker processes that re-import __main__
    main()
