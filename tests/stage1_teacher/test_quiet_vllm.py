"""Quiet by default: a real `ddk-teacher dump` with the real vLLM CPU engine and the real SmolLM2-135M teacher prints
one line for the engine start and not one WARNING/INFO line of vLLM's; --verbose shows the engine's own log (with the
tiny teacher)."""

from __future__ import annotations

import re

import pytest

from ddk_testkit.commands import dump_argv
from ddk_testkit.corpora import write_corpus
from ddk_testkit.processes import child_env, run_process
from stage1_teacher.backends import vllm_usability

_ok, _why = vllm_usability()
pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.skipif(not _ok, reason=f"vLLM cannot run here: {_why}")]

#: What vLLM, torch and Python print when nothing quiets them (a level word, C++ warnings, the loading bar, ...).
ENGINE_NOISE = re.compile(r"\b(WARNING|INFO|DEBUG)\b|Warning|\[W\d{4}|Triton|NUMA|LD_PRELOAD|Loading safetensors")


@pytest.fixture(scope="module")
def smollm2(request):
    """The built-in teacher (SmolLM2-135M): the cached build when complete, else the session's own build."""
    from stage1_teacher.assets.teacher import default_teacher_dir, is_complete

    if is_complete(default_teacher_dir(), check_hashes=False):
        return default_teacher_dir()
    return request.getfixturevalue("smollm2_build")[0]


def dump(teacher, tmp_path, *extra: str) -> list[str]:
    corpora = write_corpus(tmp_path / "corpus", n_docs=20)
    argv = dump_argv(teacher, corpora, tmp_path / "store", "--backend", "vllm", "--max-rows-per-domain", "4", *extra)
    proc = run_process("stage1_teacher.cli", argv, env=child_env(), timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return (proc.stdout + proc.stderr).splitlines()  # vLLM logs to stdout by default: the terminal shows both


def test_one_engine_line_and_no_warnings_by_default(smollm2, tmp_path):
    lines = dump(smollm2, tmp_path)
    assert len([ln for ln in lines if ln.startswith("loading teacher")]) == 1, lines
    assert "--verbose shows the engine's log" in next(ln for ln in lines if ln.startswith("loading teacher"))
    noise = [ln for ln in lines if ENGINE_NOISE.search(ln)]
    assert noise == [], noise
    assert any(ln.startswith("summary:") for ln in lines), lines


def test_verbose_shows_the_engines_own_log(tiny_teacher, tmp_path):
    """(The tiny teacher: the engine logs the same lines for any model, and it starts in half the time.)"""
    lines = dump(tiny_teacher, tmp_path, "--verbose")
    assert len([ln for ln in lines if ENGINE_NOISE.search(ln)]) >= 5, lines
