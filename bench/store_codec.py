"""Store encodings side by side on real teacher top-64: bytes/token and where they go, write and read throughput,
fidelity (max log-prob error, KL, tail error).

Data: top-64 of the real SmolLM2-135M teacher (transformers, fp32) over real text of the six built-in domains
(`ddk-teacher builtin-corpus`: scripture, python, c, docs, dictionary, legal), with the teacher's exact tail mass
(float64 log-sum-exp of the full softmax outside the top-64). Computed once and cached as npz (no pickle) under
``$DDK_CACHE/bench/``. Falls back to synthetic data, labelled so, when the teacher or the corpus is missing.

Every row is a whole ddk store (tokens, exact float32 target log-probs, every top-k array, unit markers, crc32c),
written through StoreWriter and read back through StoreReader:

- write: the rows tiled ``--repeat`` times, written unit by unit (encode + checksum + zarr write), ``--threads``
  units at once (numpy sorting and Blosc release the GIL);
- read: random batches of 8 rows decoded as stage 2 reads them (``stage2_student.data.read_batch``), ``--threads``
  batches at once; for the default encoding also the host side of ``read_batch(decode="device")`` (stage 2 on a GPU:
  the stored arrays, decoded there) and the host decode in NumPy (``DDK_KERNELS=0``, without the compiled kernel),
  interleaved with the host decode;
- KL: KL(decoded || exact), per position over the top-64 entries plus one tail bucket (entries an encoding drops
  have decoded probability 0, their mass is in its tail), mean over positions;
- tail error: |decoded tail - the teacher's exact mass outside the decoded entries|, max over positions.

    DDK_CACHE=... .venv/bin/python bench/store_codec.py [--rows-per-domain 4] [--repeat 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr

from ddk_store import StoreWriter, kernels, open_store, spec
from ddk_store.allocator import tune_allocator
from ddk_store.encodings import get_encoding
from ddk_store.paths import cache_dir
from ddk_store.testing import synth_rows, tiny_meta

SEQ, K, V = 1024, 64, 49152
DOMAINS = {"scripture": "scripture/kjv.txt", "python": "python/**/*.py", "c": "c/**/*.h",
           "docs": "docs/**/*.rst.txt", "dictionary": "dictionary/gcide.txt", "legal": "legal/**/copyright"}


def domain_texts() -> dict[str, str]:
    """About 60 kB of text per built-in domain, from the middle third of its files (not their headers)."""
    root = cache_dir("corpus")
    out = {}
    for dom, pattern in DOMAINS.items():
        text = ""
        for f in sorted(glob.glob(str(root / pattern), recursive=True)):
            s = Path(f).read_text(errors="replace")
            text += s[len(s) // 3: len(s) // 3 + 30000] + "\n"
            if len(text) > 60000:
                break
        if text.strip():
            out[dom] = text
    return out


def teacher_data(rows_per_domain: int) -> tuple[dict[str, np.ndarray], str]:
    """(arrays, label): tokens, rank-ordered top-64 ids and log-probs, target log-probs and the exact log tail."""
    cache = cache_dir("bench") / f"smollm2_top{K}_seq{SEQ}_r{rows_per_domain}_6dom.npz"
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        return {k: z[k] for k in z.files}, "real SmolLM2-135M top-64, six domains (cached)"
    teacher = cache_dir("teacher", "smollm2-135m")
    texts = domain_texts() if (teacher / "config.json").exists() else {}
    if not texts:
        d = synth_rows(np.random.default_rng(0), 6 * rows_per_domain, SEQ, K, V, sharpness=3.0)
        lp = d["topk_logprobs"]
        d["log_tail"] = np.log(np.clip(1 - np.exp(lp.astype(np.float64)).sum(-1), 1e-300, 1))
        return d, "SYNTHETIC (teacher or corpus not built: run make demo first)"
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher)
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    rows = []
    for dom, text in texts.items():
        ids = tok(text)["input_ids"]
        n = min(rows_per_domain, len(ids) // SEQ)
        rows += [ids[i * SEQ:(i + 1) * SEQ] for i in range(n)]
        print(f"  {dom}: {n} rows", flush=True)
    tokens = np.array(rows, dtype=np.int64)
    out: dict[str, list] = {k: [] for k in ("tokens", "topk_ids", "topk_logprobs", "target_logprobs", "log_tail")}
    with torch.no_grad():
        for i in range(0, len(tokens), 2):
            x = torch.from_numpy(tokens[i:i + 2])
            lp = torch.log_softmax(model(x).logits[:, :-1].float(), dim=-1)
            top = lp.topk(K, dim=-1)
            rest = lp.double().scatter(-1, top.indices, -float("inf"))
            out["tokens"].append(tokens[i:i + 2])
            out["topk_ids"].append(top.indices.numpy())
            out["topk_logprobs"].append(top.values.numpy())
            out["target_logprobs"].append(lp.gather(-1, x[:, 1:, None])[..., 0].numpy())
            out["log_tail"].append(torch.logsumexp(rest, -1).numpy())
            print(f"  teacher rows {i + 2}/{len(tokens)}", flush=True)
    data = {k: np.concatenate(v) for k, v in out.items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **data)
    return data, "real SmolLM2-135M top-64, six domains"


def fidelity(data: dict[str, np.ndarray], dec, floor: float) -> dict[str, float]:
    """Max |Δ log-prob| above ``floor``, KL(decoded || exact top-64 + tail), tail error, |mass + tail - 1|."""
    p_ids, p_lp = data["topk_ids"], data["topk_logprobs"].astype(np.float64)
    # decoded probability of each exact top-64 entry (0 where the encoding dropped it), matched by id
    oe, od = np.argsort(p_ids, -1), np.argsort(dec.topk_ids, -1, kind="stable")
    e_ids, e_lp = np.take_along_axis(p_ids, oe, -1), np.take_along_axis(p_lp, oe, -1)
    d_ids, d_lp = np.take_along_axis(dec.topk_ids, od, -1), np.take_along_axis(dec.topk_logprobs, od, -1)
    q_lp = np.full_like(e_lp, -np.inf)
    kept = np.isfinite(d_lp)
    # both id-sorted; kept decoded ids are a subset of the exact ids: match with a per-row searchsorted
    flat_e = e_ids + (np.arange(e_ids.size // K).reshape(e_ids.shape[:-1]) * (V + 1))[..., None]
    flat_d = d_ids + (np.arange(d_ids.size // d_ids.shape[-1]).reshape(d_ids.shape[:-1]) * (V + 1))[..., None]
    at = np.searchsorted(flat_e.ravel(), flat_d.ravel()[kept.ravel()])
    q_lp.reshape(-1)[at] = d_lp.reshape(-1)[kept.ravel()].astype(np.float64)
    q = np.exp(q_lp)
    exact_tail = np.exp(data["log_tail"].astype(np.float64))
    # The teacher's fp32 log-softmax sums to 1 within ~1e-5: normalize the exact distribution (KL needs it)
    z = np.exp(e_lp).sum(-1) + exact_tail
    e_lp, exact_tail = e_lp - np.log(z)[..., None], exact_tail / z
    if dec.topk_log_tail is not None:
        q_tail = np.exp(dec.topk_log_tail.astype(np.float64))
    else:  # what stage 2 derives: 1 - sum, renormalized when the quantized top-k sums above 1
        s = q.sum(-1)
        q = np.where((s > 1)[..., None], q / s[..., None], q)
        q_tail = np.clip(1 - q.sum(-1), 0, 1)
    true_outside = exact_tail + np.where(np.isfinite(q_lp), 0.0, np.exp(e_lp)).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_entries = np.where(q > 0, q * (np.log(q) - e_lp), 0.0).sum(-1)
        kl_tail = np.where(q_tail > 0, q_tail * (np.log(q_tail) - np.log(exact_tail)), 0.0)
    above = np.isfinite(q_lp) & (e_lp > floor)
    return dict(maxerr=float(np.abs(q_lp - e_lp)[above].max()), kl=float((kl_entries + kl_tail).mean()),
                tail_err=float(np.abs(q_tail - true_outside).max()),
                mass_err=float(np.abs(q.sum(-1) + q_tail - 1).max()), kept=float(np.isfinite(q_lp).sum(-1).mean()))


def set_env(name: str, value: str | None) -> None:
    """Set an environment variable, or unset it for None."""
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def dir_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def bench_encoding(encoding: str, data: dict[str, np.ndarray], tmp: str, repeat: int, threads: int,
                   read_batches: int = 256) -> dict:
    from stage2_student.data import read_batch
    from stage2_student.device_decode import decodes_on_device

    n = len(data["tokens"])
    url = f"{tmp}/ddk-{encoding}"
    meta = tiny_meta(domains=("real",), seq_len=SEQ, top_k=K, vocab_size=V, encoding=encoding)
    w = StoreWriter.open_or_create(url, meta, {"real": {"train": n * repeat, "heldout": 1}}, unit_rows=n)
    rows = (data["tokens"], data["topk_ids"], data["topk_logprobs"], data["target_logprobs"])
    t0, c0 = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda u: w.write_unit(u, *rows), w.units("real", "train")))
    write_s, write_cpu = time.perf_counter() - t0, time.process_time() - c0
    for u in w.units("real", "heldout"):
        w.write_unit(u, *(a[:1] for a in rows))
    w.finalize()
    r = open_store(url)
    rng = np.random.default_rng(0)
    batches = [np.stack([np.zeros(8, np.int64), rng.choice(n * repeat, size=8, replace=False)], 1)
               for _ in range(read_batches)]
    read_batch(r, ["real"], batches[0])  # open the arrays once
    places = ("host", "device") if decodes_on_device(meta) else ("host",)
    if encoding == spec.ENC_IDSORT_Q8_TAIL and kernels.available():
        places += ("numpy",)  # the host decode without the compiled kernel (DDK_KERNELS=0), for comparison
    timed: dict[str, list[tuple[float, float]]] = {p: [] for p in places}
    user = os.environ.get(kernels.KERNELS_ENV)  # "host" reads as this process would; "numpy" with the kernel off
    for _ in range(2):  # the read paths interleaved, the faster of two rounds each
        for place in places:
            set_env(kernels.KERNELS_ENV, "0" if place == "numpy" else user)
            t0, c0 = time.perf_counter(), time.process_time()
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda b: read_batch(r, ["real"], b, decode="host" if place == "numpy" else place),
                              batches))
            timed[place].append((time.perf_counter() - t0, time.process_time() - c0))
    set_env(kernels.KERNELS_ENV, user)
    nan = [(float("nan"),) * 2]
    (read_s, read_cpu), (dev_s, dev_cpu) = min(timed["host"]), min(timed.get("device", nan))
    np_s, np_cpu = min(timed.get("numpy", nan))
    dec = r.read_rows("real", "train", np.arange(n))
    floor = {spec.ENC_IDSORT_Q8: -spec.Q8_MAX / meta.logprob_scale, spec.ENC_RANK_F16: -np.inf}.get(encoding, -np.inf)
    group = f"{url}/real/train"
    per_array = {name: dir_bytes(f"{group}/{name}") for name in sorted(os.listdir(group)) if name != "zarr.json"}
    return dict(bytes=dir_bytes(group), write_s=write_s, read_s=read_s, read_tokens=len(batches) * 8 * (SEQ - 1),
                write_cpu=write_cpu, read_cpu=read_cpu, dev_s=dev_s, dev_cpu=dev_cpu, np_s=np_s, np_cpu=np_cpu,
                per_array=per_array, **fidelity(data, dec, floor))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows-per-domain", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=8, help="tile the rows to this many copies for throughput")
    ap.add_argument("--threads", type=int, default=2, help="units written / batches read at once")
    ap.add_argument("--encodings", default=",".join(spec.ENCODINGS), help="comma-separated subset of the encodings")
    ap.add_argument("--read-batches", type=int, default=256, help="random 8-row batches read per encoding")
    args = ap.parse_args()
    if 6 * args.rows_per_domain * args.repeat < 8:
        ap.error("the read test draws 8-row batches: give --rows-per-domain x 6 domains x --repeat >= 8 rows")
    tune_allocator()  # as every ddk command does (ddk_store/allocator.py)
    data, label = teacher_data(args.rows_per_domain)
    n = len(data["tokens"])
    positions = n * args.repeat * (SEQ - 1)
    print(f"\ndata: {label}; {n} rows x {SEQ} tokens, tiled x{args.repeat} = {positions:,} positions, K={K}")
    p = np.exp(data["topk_logprobs"].astype(np.float64))
    print(f"teacher: median top-1 prob {np.median(p[..., 0]):.3f}, mean top-{K} mass {p.sum(-1).mean():.3f}, "
          f"mean exact tail {np.exp(data['log_tail']).mean():.3f}")
    load_before = os.getloadavg()[0]
    tmp = tempfile.mkdtemp(prefix="ddk-codec-")
    try:
        results = {enc: bench_encoding(enc, data, tmp, args.repeat, args.threads, args.read_batches) for enc in args.encodings.split(",")}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nload average before the runs: {load_before:.1f} on {os.cpu_count()} cores; 'per CPU-s': "
          "tokens per second of this process's CPU time (all threads), what one free core would do")
    print(f"\n{'encoding':<30}{'B/token':>9}{'write Mtok/s':>14}{'per CPU-s':>10}{'read Mtok/s':>13}{'per CPU-s':>10}"
          f"{'max|dlp|':>10}{'KL nats':>10}{'tail err':>10}{'|m+t-1|':>10}{'kept':>6}{'read, dev. decode':>19}"
          f"{'read, NumPy decode':>20}")
    for enc, r in results.items():
        name = enc + (" *" if enc == spec.DEFAULT_ENCODING else " †" if get_encoding(enc).sampled else "")
        print(f"{name:<30}{r['bytes'] / positions:>9.1f}{positions / r['write_s'] / 1e6:>14.3f}"
              f"{positions / r['write_cpu'] / 1e6:>10.3f}{r['read_tokens'] / r['read_s'] / 1e6:>13.3f}"
              f"{r['read_tokens'] / r['read_cpu'] / 1e6:>10.3f}{r['maxerr']:>10.4f}{r['kl']:>10.2e}"
              f"{r['tail_err']:>10.1e}{r['mass_err']:>10.1e}{r['kept']:>6.1f}"
              f"{r['read_tokens'] / r['dev_s'] / 1e6:>10.3f} ({r['read_tokens'] / r['dev_cpu'] / 1e6:.3f})"
              f"{r['read_tokens'] / r['np_s'] / 1e6:>11.3f} ({r['read_tokens'] / r['np_cpu'] / 1e6:.3f})")
    print(f"(* default; † sampled, N={spec.DEFAULT_SAMPLES}: decoded probabilities are draw frequencies count/N, an "
          "unbiased estimate of the teacher's; max|dlp|, KL and tail err are of one draw (sampling noise, not "
          "quantization); kept = distinct sampled ids; read, dev. decode: Mtok/s (per CPU-s) of the host side of "
          "read_batch(decode='device'), the stored arrays ready to copy to a GPU that decodes them; nan: the "
          "encoding decodes on the host; read, NumPy decode: the host read with the compiled decode off "
          f"({kernels.KERNELS_ENV}=0); the read column uses it where built: {kernels.available()})")
    print("\nwhere the bytes go (B/token; every row is a whole store):")
    for enc, r in results.items():
        print(f"  {enc:<22}" + "  ".join(f"{k} {b / positions:.2f}" for k, b in r["per_array"].items()))
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"zarr {zarr.__version__}, threads {args.threads}, date {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
