"""Step time and peak memory of one student training step: KD from the store vs CE only vs online KD.

Same student init, same batches, side by side in one run. Each variant runs in its own child process so that peak
memory is a clean high-water mark (CUDA: torch.cuda.max_memory_allocated; CPU: peak RSS minus the RSS after setup).

  ce-only      student forward + torch cross-entropy + backward + AdamW step (the CPT baseline)
  kd-store     the same, with stage 2's fused loss: CE + 0.2 * KL over the stored top-k + tail bucket; the top-k
               tensors are precomputed, as stage 2's prefetch thread delivers them
  kd-online    the same, but the teacher is forwarded every step (no_grad) and the KL runs over the full vocabulary

Teacher: ~/.cache/ddk/teacher/smollm2-135m if present (real SmolLM2-135M, vocab 49152), else tiny random models.
Usage: python bench/train_step.py [--steps 8] [--batch-size 4] [--seq-len 128] [--top-k 64] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TEACHER_DIR = Path.home() / ".cache" / "ddk" / "teacher" / "smollm2-135m"
VARIANTS = ("ce-only", "kd-store", "kd-online")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build_models(work: Path) -> tuple[Path, Path, str]:
    """(teacher dir, student dir, label). The student shares the teacher's tokenizer."""
    from transformers import AutoTokenizer

    from tests.tiny import build_tiny_llama, build_tiny_tokenizer

    if (TEACHER_DIR / "config.json").is_file():
        tok = AutoTokenizer.from_pretrained(TEACHER_DIR)
        tok.save_pretrained(work / "tok")
        student = build_tiny_llama(work / "student", work / "tok", num_layers=4, hidden_size=256, num_heads=4)
        return TEACHER_DIR, student, "real SmolLM2-135M teacher; random 4-layer/256 Llama student"
    build_tiny_tokenizer(work / "tok")
    teacher = build_tiny_llama(work / "teacher", work / "tok", num_layers=4, hidden_size=256, num_heads=4)
    student = build_tiny_llama(work / "student", work / "tok", num_layers=1, hidden_size=64, num_heads=1)
    return teacher, student, "TINY MODELS (no SmolLM2 dir found): random 4-layer/256 teacher, 1-layer/64 student"


def make_batches(teacher_dir: Path, args, path: Path) -> None:
    """Tokens plus the teacher's top-k for ``args.steps + 2`` batches, written once for every variant."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    V = teacher.get_output_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(0)
    n = args.steps + 2
    tokens = torch.randint(0, V, (n, args.batch_size, args.seq_len), generator=g)
    ids, lps = [], []
    with torch.no_grad():
        for b in tokens:
            lp = torch.log_softmax(teacher(input_ids=b).logits[:, :-1].float(), -1)
            top = lp.topk(args.top_k, -1)
            lps.append(top.values)
            ids.append(top.indices.int())
    save_file({"tokens": tokens, "topk_ids": torch.stack(ids), "topk_logprobs": torch.stack(lps)}, str(path))


def run_variant(variant: str, teacher_dir: str, student_dir: str, batches: str, device: str) -> dict:
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from stage2_student.losses import distill_loss

    dev = torch.device(device)
    data = load_file(batches)
    torch.manual_seed(0)
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).to(dev).train()
    teacher = None
    if variant == "kd-online":
        teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).to(dev).eval()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, betas=(0.9, 0.95))
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    V = student.get_output_embeddings().weight.shape[0]
    base_rss = rss_bytes()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    times = []
    for i in range(data["tokens"].shape[0]):
        tokens = data["tokens"][i].to(dev)
        t0 = time.perf_counter()
        with amp:
            logits = student(input_ids=tokens, use_cache=False).logits  # (B, T, V)
        if variant == "ce-only":
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), tokens[:, 1:].reshape(-1))
        elif variant == "kd-store":
            loss = distill_loss(logits, tokens[:, 1:], data["topk_ids"][i].to(dev), data["topk_logprobs"][i].to(dev),
                                vocab_size=V, gamma=0.2).total
        else:
            with torch.no_grad(), amp:
                t_logits = teacher(input_ids=tokens, use_cache=False).logits[:, :-1]
            ls = torch.log_softmax(logits[:, :-1].float(), -1)
            lt = torch.log_softmax(t_logits.float(), -1)
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), tokens[:, 1:].reshape(-1)) + 0.2 * F.kl_div(
                ls.reshape(-1, V), lt.reshape(-1, V), log_target=True, reduction="batchmean")
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        del logits, loss
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {"variant": variant, "step_s": statistics.median(times[2:]), "peak_rss_mb": peak_rss / 2**20,
           "peak_over_setup_mb": max(0, peak_rss - base_rss) / 2**20}
    if dev.type == "cuda":
        out["peak_cuda_mb"] = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--device", default="cuda" if os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu")
    ap.add_argument("--json", action="store_true", help="also print one JSON line with every result")
    ap.add_argument("--_child", nargs=4, metavar=("VARIANT", "TEACHER", "STUDENT", "BATCHES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(run_variant(*args._child, args.device)))
        return

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        args.device = "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        teacher, student, label = build_models(work)
        make_batches(teacher, args, work / "batches.safetensors")
        results = {}
        for v in VARIANTS:
            proc = subprocess.run([sys.executable, __file__, "--device", args.device, "--_child", v, str(teacher),
                                   str(student), str(work / "batches.safetensors")],
                                  capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            if proc.returncode != 0:
                sys.exit(f"variant {v} failed:\n{proc.stderr[-3000:]}")
            results[v] = json.loads(proc.stdout.strip().splitlines()[-1])
    mem_key = "peak_cuda_mb" if args.device == "cuda" else "peak_over_setup_mb"
    ce = results["ce-only"]
    print(f"# bench/train_step.py: {label}")
    print(f"# device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"batch={args.batch_size} seq_len={args.seq_len} top_k={args.top_k} steps={args.steps} (median step time)")
    print(f"| variant | step time (s) | x CE-only | peak mem {mem_key} (MiB) | x CE-only |")
    print("|---|---:|---:|---:|---:|")
    for v in VARIANTS:
        r = results[v]
        print(f"| {v} | {r['step_s']:.4f} | {r['step_s'] / ce['step_s']:.2f} | {r[mem_key]:.0f} | "
              f"{r[mem_key] / max(ce[mem_key], 1e-9):.2f} |")
    print(f"kd-store vs kd-online step time: {results['kd-store']['step_s'] / results['kd-online']['step_s']:.2f}x")
    if args.json:
        print(json.dumps({"label": label, "device": args.device, **results}))


if __name__ == "__main__":
    main()
