"""Stage-1 fixtures: one tiny real teacher, one 3-domain corpus and one reference dump per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddk_testkit.commands import dump_argv
from ddk_testkit.corpora import write_corpus
from ddk_testkit.models import build_tiny_teacher
from ddk_testkit.processes import run_cli


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """A random 2-layer Llama (head_dim 64, context 512) with a tiny BPE tokenizer, saved once per session."""
    return build_tiny_teacher(tmp_path_factory.mktemp("tiny_teacher"))


@pytest.fixture(scope="session")
def corpora_yaml(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def reference_store(tiny_teacher, corpora_yaml, tmp_path_factory) -> Path:
    """One uninterrupted single-process dump of the shared corpus: what resumed and sharded runs must equal."""
    store = tmp_path_factory.mktemp("ref") / "store"
    code, err = run_cli("ddk-teacher", dump_argv(tiny_teacher, corpora_yaml, store))
    assert code == 0, err
    return store
