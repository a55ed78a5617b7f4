"""The hf backend's pipeline (score_iter: side stream, packed buffer, one copy per batch; streamless on CPU) equals
the simple path bitwise, on a tiny real transformers teacher; grad mode never leaks out of the generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stage1_teacher.backends import BackendOptions
from stage1_teacher.backends.hf import HFBackend

T, K = 32, 8


@pytest.fixture(scope="module")
def hf(tiny_teacher):
    # 3 rows per forward batch: units of 7 rows end on a partial batch, so slots and offsets are exercised.
    return HFBackend(BackendOptions(model_dir=str(tiny_teacher), top_k=K, seq_len=T, batch_tokens=3 * T,
                                    device="cpu"))


def units_of(sizes, vocab, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=(n, T)).astype(np.int32) for n in sizes]


def assert_bitwise(a, b):
    assert a.topk_ids.dtype == b.topk_ids.dtype == np.int32
    assert np.array_equal(a.topk_ids, b.topk_ids)
    # Bit patterns, not values: NaN-safe and exact.
    assert np.array_equal(a.topk_logprobs.view(np.int32), b.topk_logprobs.view(np.int32))
    assert np.array_equal(a.target_logprobs.view(np.int32), b.target_logprobs.view(np.int32))


@pytest.mark.parametrize("topk_rows", [1, 0])  # CPU default (one row per top-k) and the GPU's (one per batch)
def test_pipeline_equals_simple_path_bitwise(hf, topk_rows):
    hf.topk_rows = topk_rows
    try:
        vocab = hf.model.config.vocab_size
        units = units_of([7, 1, 3, 0, 5], vocab)
        piped = list(hf.score_iter(units))
        assert len(piped) == len(units)
        for u, p in zip(units, piped):
            assert p.topk_ids.shape == (u.shape[0], T - 1, K)
            assert_bitwise(p, hf.score_simple(u))
        assert_bitwise(hf.score(units[0]), piped[0])
    finally:
        hf.topk_rows = 1


def test_pipeline_results_are_sane(hf):
    (u,) = units_of([4], hf.model.config.vocab_size, seed=1)
    s = next(hf.score_iter([u]))
    assert np.all(np.diff(s.topk_logprobs, axis=-1) <= 0)  # rank order
    assert np.all(s.topk_logprobs <= 0) and np.isfinite(s.target_logprobs).all()
    inside = s.topk_ids == u[:, 1:, None]
    # Where the realized token is in the top-k, its log-prob is the same number.
    assert np.array_equal(s.topk_logprobs[inside], np.broadcast_to(s.target_logprobs[..., None], inside.shape)[inside])


def test_grad_mode_does_not_leak_between_yields(hf):
    units = units_of([2, 2], hf.model.config.vocab_size)
    it = hf.score_iter(units)
    next(it)
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    list(it)


def test_gpu_benchmark_runs_tiny_on_cpu():
    """bench/gpu_dump.py --tiny: the GPU benchmark's whole path (teacher, corpus, dump, replays, table) on CPU."""
    import subprocess
    import sys

    from ddk_testkit.processes import REPO, child_env

    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_dump.py"), "--tiny", "--repeats", "1"], cwd=REPO,
                          env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for label in ("bare teacher forward", "top-k + copy, serial", "top-k + copy, pipelined", "full dump",
                  "dump/forward = "):
        assert label in proc.stdout, proc.stdout
