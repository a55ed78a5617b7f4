"""What makes a start cheap and quiet: the cached weights hash of a local teacher, --dtype auto, vLLM's log level."""

from __future__ import annotations

import logging
import os
import shutil

from stage1_teacher.backends import resolve_dtype
from stage1_teacher.teacher import resolve_teacher, weights_hash, weights_hash_cache_path


def _weights(model_dir):
    return next(p for p in model_dir.iterdir() if p.suffix == ".safetensors")


def _rewrite_same_size_and_mtime(path):
    """Change one byte of ``path`` in place and put its modification time back."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_the_weights_hash_is_computed_once_and_reused_until_a_file_changes(tiny_teacher, tmp_path, monkeypatch):
    monkeypatch.setenv("DDK_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    shutil.copytree(tiny_teacher, model)
    before = sorted(p.name for p in model.iterdir())
    first = resolve_teacher(str(model)).revision
    assert weights_hash_cache_path(model).is_file()
    assert sorted(p.name for p in model.iterdir()) == before  # nothing is written into the model directory
    # The cached value is taken without reading the weights: a change that keeps size and mtime goes unseen (the
    # documented trade-off), which proves the files were not read again.
    _rewrite_same_size_and_mtime(_weights(model))
    assert resolve_teacher(str(model)).revision == first
    # A touched file (new mtime) is hashed again, and now the changed bytes count.
    os.utime(_weights(model))
    second = resolve_teacher(str(model)).revision
    assert second != first
    weights_hash_cache_path(model).unlink()
    assert weights_hash(model) == second  # what a fresh hash gives


def test_an_unwritable_cache_only_costs_a_new_hash(tiny_teacher, tmp_path, monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(tiny_teacher, model)
    monkeypatch.setenv("DDK_CACHE", str(tmp_path / "cache"))
    first = weights_hash(model)
    cached = list((tmp_path / "cache" / "weights-hash").iterdir())
    assert len(cached) == 1 and first in cached[0].read_text()
    cached[0].unlink()
    cached[0].mkdir()  # fakes a place that cannot be written (tests run as root)
    _rewrite_same_size_and_mtime(_weights(model))
    assert weights_hash(model) != first  # not cached: the changed bytes are hashed


def test_a_moved_copy_is_hashed_again_and_gives_the_same_revision(tiny_teacher, tmp_path, monkeypatch):
    monkeypatch.setenv("DDK_CACHE", str(tmp_path / "cache"))
    a = resolve_teacher(str(tiny_teacher)).revision
    shutil.copytree(tiny_teacher, tmp_path / "copy")
    assert weights_hash(tmp_path / "copy") == a


def test_dtype_auto_is_bf16_on_cuda_and_fp32_on_cpu():
    import torch

    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("auto", "auto") == ("bfloat16" if torch.cuda.is_available() else "float32")
    assert resolve_dtype("float16", "cpu") == "float16"


def test_vllm_logs_are_cut_to_warnings_unless_verbose(monkeypatch):
    from stage1_teacher.backends.vllm import QUIET_LEVEL, quiet_engine_logs

    logger = logging.getLogger("vllm")
    saved = logger.level
    try:
        monkeypatch.delenv("VLLM_LOGGING_LEVEL", raising=False)
        logger.setLevel(logging.INFO)
        quiet_engine_logs(verbose=True)
        assert "VLLM_LOGGING_LEVEL" not in os.environ and logger.level == logging.INFO
        quiet_engine_logs(verbose=False)
        assert os.environ["VLLM_LOGGING_LEVEL"] == QUIET_LEVEL and logger.level == logging.WARNING
        monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")  # the user's own choice wins
        quiet_engine_logs(verbose=False)
        assert logger.level == logging.DEBUG
    finally:
        logger.setLevel(saved)


def test_the_new_flags_are_listed_with_their_defaults():
    from ddk_testkit.processes import run_cli

    code, out = run_cli("ddk-teacher", ["dump", "--help"])
    assert code == 0
    text = " ".join(out.split())
    for flag in ("--workers", "--verbose", "--dtype [auto|float32|bfloat16|float16]"):
        assert flag in text, flag
