"""Fixtures for stage-2 tests: a tiny real tokenizer + random Llama student and a tiny store sharing its vocabulary.

Built once per session (a few seconds) and reused read-only; tests that train write only to their own tmp dirs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddk_testkit.models import build_tiny_student, build_tiny_tokenizer
from ddk_testkit.stores import make_store


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dir):
    return build_tiny_tokenizer(tiny_dir / "tokenizer")


@pytest.fixture(scope="session")
def student_dir(tiny_dir, tiny_tokenizer) -> Path:
    return build_tiny_student(tiny_dir / "student", tiny_dir / "tokenizer")


@pytest.fixture(scope="session")
def padded_student_dir(tiny_dir, tiny_tokenizer) -> Path:
    return build_tiny_student(tiny_dir / "student_pad", tiny_dir / "tokenizer", vocab_pad=64)


@pytest.fixture(scope="session")
def store_url(tiny_dir, tiny_tokenizer) -> str:
    """Three domains (alpha, beta, gamma), 16 train and 4 held-out rows each, teacher of increasing sharpness."""
    make_store(tiny_dir / "store", tiny_tokenizer, train_rows=16, heldout_rows=4)
    return str(tiny_dir / "store")
