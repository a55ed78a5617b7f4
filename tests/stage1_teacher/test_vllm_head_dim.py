"""vLLM's CPU attention runs only some head sizes: a teacher of another head_dim is caught from its config before any
store is opened (`--backend auto` picks hf and says why; `--backend vllm` is one error line), and an engine that fails
to start is one error line quoting vLLM's reason, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddk_testkit.commands import dump_argv
from ddk_testkit.models import build_tiny_llama, build_tiny_tokenizer
from ddk_testkit.processes import child_env, run_cli, run_process
from stage1_teacher.backends import (VLLM_CPU_HEAD_SIZES, HeadDim, head_dim_of, teacher_head_dim,
                                     vllm_cpu_head_dim_problem, vllm_usability)

_ok, _why = vllm_usability()


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


#: The CLI cases need vLLM usable on this CPU host (else auto picks hf for that reason, and vllm is refused for it).
needs_vllm_cpu = pytest.mark.skipif(not _ok or not _on_cpu(),
                                    reason=f"needs vLLM's CPU engine ({_why}; CUDA: {not _on_cpu()})")

SUPPORTED = ", ".join(map(str, VLLM_CPU_HEAD_SIZES))


@pytest.fixture(scope="module")
def head16_teacher(tmp_path_factory) -> Path:
    """A real tiny Llama of hidden 64 and 4 heads: head_dim 16, which vLLM's CPU attention does not run."""
    root = tmp_path_factory.mktemp("head16")
    build_tiny_tokenizer(root / "tok")
    return build_tiny_llama(root / "model", root / "tok", num_layers=1, hidden_size=64, num_heads=4)


def with_backend(argv: list[str], backend: str) -> list[str]:
    """``argv`` (a :func:`dump_argv`, which says ``--backend hf``) with another --backend."""
    argv = list(argv)
    argv[argv.index("--backend") + 1] = backend
    return argv


# The pure check.

def test_head_dim_is_the_configs_own_or_hidden_over_heads():
    from transformers import GPT2Config, LlamaConfig

    explicit = head_dim_of(LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=32), "DIR/config.json")
    assert explicit == HeadDim(32, "head_dim in DIR/config.json")
    derived = head_dim_of(GPT2Config(n_embd=64, n_head=4), "DIR/config.json")  # a config without head_dim
    assert derived == HeadDim(16, "hidden_size 64 / num_attention_heads 4 in DIR/config.json")


def test_teacher_head_dim_reads_a_model_directory(head16_teacher, tmp_path):
    assert teacher_head_dim(str(head16_teacher)).size == 16
    assert teacher_head_dim(str(tmp_path / "missing")) is None  # resolving the teacher reports that, not this check


def test_supported_and_unsupported_head_dims():
    for size in (32, 64, 128):
        assert vllm_cpu_head_dim_problem(HeadDim(size, "head_dim in c.json")) is None
    assert vllm_cpu_head_dim_problem(None) is None
    problem = vllm_cpu_head_dim_problem(HeadDim(16, "head_dim in c.json"))
    assert problem == f"vLLM's CPU attention does not support head_dim 16 (head_dim in c.json); supported: {SUPPORTED}"
    assert "c.json" not in vllm_cpu_head_dim_problem(HeadDim(16, "head_dim in c.json"), where=False)


@pytest.mark.vllm
@pytest.mark.skipif(not _ok, reason=f"vLLM cannot run here: {_why}")
def test_the_head_sizes_are_vllms_own_list():
    """The copy in ddk equals vLLM's CPUAttentionBackend.get_supported_head_sizes() (imports vllm: seconds)."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    assert tuple(CPUAttentionBackend.get_supported_head_sizes()) == VLLM_CPU_HEAD_SIZES


# The CLI (hf scores the head_dim-16 teacher; vLLM is never started).

@needs_vllm_cpu
def test_auto_picks_hf_and_says_why_and_a_rerun_is_a_noop(head16_teacher, corpora_yaml, tmp_path):
    argv = with_backend(dump_argv(head16_teacher, corpora_yaml, tmp_path / "store"), "auto")
    first = run_cli("ddk-teacher", argv)
    assert first.code == 0, first.output
    line = f"backend: hf (auto: vLLM's CPU attention does not support head_dim 16; supported: {SUPPORTED})"
    assert first.lines_starting("backend:") == [line]
    assert first.lines_starting("summary: ")[0].split(" by ")[1].startswith("hf in ")
    again = run_cli("ddk-teacher", argv)  # the same choice again: the store's identity (backend hf) matches
    assert again.code == 0, again.output
    assert again.lines_starting("backend:") == [line]
    assert any("already complete with these settings: nothing to do" in ln for ln in again.output.splitlines())


@needs_vllm_cpu
def test_explicit_vllm_is_one_error_line_before_any_store(head16_teacher, corpora_yaml, tmp_path):
    store = tmp_path / "store"
    argv = dump_argv(head16_teacher, corpora_yaml, store)
    proc = run_process("stage1_teacher.cli", with_backend(argv, "vllm"), env=child_env(), timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: --backend vllm cannot run --teacher {head16_teacher} on this CPU host: vLLM's CPU "
                      f"attention does not support head_dim 16 (head_dim in {head16_teacher}/config.json); "
                      f"supported: {SUPPORTED}; pass --backend hf (or --backend auto, which picks hf for this "
                      f"teacher)"], proc.stderr
    assert not store.exists()
    hf = run_cli("ddk-teacher", argv)  # --backend hf, no --overwrite
    assert hf.code == 0, hf.output


# A vLLM engine that fails to start.

#: Shaped like the end of a real engine core's output (vllm-cpu 0.32.0, head_dim 16): the reason is in a log record.
ENGINE_OUTPUT = """\
(EngineCore pid=19786) ERROR 12-03 15:28:16 [core.py:1512]     raise RuntimeError(
(EngineCore pid=19786) ERROR 12-03 15:28:16 [core.py:1512] RuntimeError: Worker failed with error 'Unsupported CPU \
attention configuration: head_dim=16 isa=2 kv_cache_idx=0', please check the stack trace above for the root cause
(EngineCore pid=19786) WARNING 12-03 15:28:17 [multiproc_executor.py:300] Worker proc 1 exited
"""


def test_engine_start_error_quotes_the_engines_reason():
    from stage1_teacher.backends.vllm import engine_start_error

    exc = RuntimeError("Engine core initialization failed. See root cause above. Failed core proc(s): {}")
    err = engine_start_error(exc, ENGINE_OUTPUT)
    assert str(err) == ("the vLLM engine failed to start: RuntimeError: Worker failed with error 'Unsupported CPU "
                        "attention configuration: head_dim=16 isa=2 kv_cache_idx=0'; pass --backend hf --overwrite "
                        "to score with transformers instead (the store was set up for vllm), or rerun with --verbose to see the engine's log")
    bare = str(engine_start_error(exc, "", verbose=True))  # --verbose: the engine's log went to the terminal
    assert bare == ("the vLLM engine failed to start: RuntimeError: Engine core initialization failed. Failed core "
                    "proc(s): {}; pass --backend hf --overwrite to score with transformers instead (the store was set "
                    "up for vllm); the engine's log is above")


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm_cpu
def test_an_engine_that_fails_to_start_is_one_error_line(tiny_teacher, corpora_yaml, tmp_path):
    """A real engine-core failure (more KV cache asked for than the host has): vLLM's reason, no traceback."""
    argv = with_backend(dump_argv(tiny_teacher, corpora_yaml, tmp_path / "store"), "vllm")
    proc = run_process("stage1_teacher.cli", argv, env=child_env(VLLM_CPU_KVCACHE_SPACE="100000"), timeout=900)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert errors[0].startswith("error: the vLLM engine failed to start: "), errors
    assert "VLLM_CPU_KVCACHE_SPACE" in errors[0] and "--backend hf" in errors[0] and "--verbose" in errors[0], errors
