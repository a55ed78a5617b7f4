"""Tiny stores of valid random teacher data that share a real tokenizer's vocabulary, and a student to train on."""

from __future__ import annotations

from pathlib import Path

from ddk_store import tokenizer_fingerprint
from ddk_store.testing import make_tiny_store

from .models import build_tiny_student, build_tiny_tokenizer

#: Rows of a tiny store: 16 tokens, top-8.
SEQ_LEN = 16
TOP_K = 8


def make_store(path: Path, tokenizer, **kw):
    """:func:`ddk_store.testing.make_tiny_store` at ``path`` with ``tokenizer``'s fingerprint and vocabulary size;
    ``kw`` as there (domains, train_rows, heldout_rows, unit_rows...)."""
    kw.setdefault("fingerprint", tokenizer_fingerprint(tokenizer))
    kw.setdefault("vocab_size", len(tokenizer))
    kw.setdefault("seq_len", SEQ_LEN)
    kw.setdefault("top_k", TOP_K)
    return make_tiny_store(str(path), **kw)


def student_and_store(root: Path, **store_kw) -> tuple[Path, Path]:
    """A tiny tokenizer (``root/tok``), a tiny student (``root/student``) and a tiny store of its vocabulary
    (``root/store``, ``store_kw`` as for :func:`make_store`); returns (student dir, store dir)."""
    from transformers import AutoTokenizer

    build_tiny_tokenizer(root / "tok")
    student = build_tiny_student(root / "student", root / "tok")
    make_store(root / "store", AutoTokenizer.from_pretrained(str(root / "tok")), **store_kw)
    return student, root / "store"
