"""Test kit shared by every package: tiny stores of valid random teacher data, and store assertions."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from . import spec
from .meta import DomainInfo, SourceInfo, StoreMeta, TeacherInfo, TokenizerInfo
from .reader import StoreReader, open_store
from .writer import StoreWriter


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def topk_of(logprobs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank-ordered top-k (ids, logprobs) of full log-prob rows (..., V)."""
    ids = np.argsort(-logprobs, axis=-1, kind="stable")[..., :k]
    return ids, np.take_along_axis(logprobs, ids, -1)


def tiny_meta(*, domains: Sequence[str] = ("alpha", "beta", "gamma"), seq_len: int = 16, top_k: int = 4,
              vocab_size: int = 64, fingerprint: str = "sha256:test", encoding: str = spec.DEFAULT_ENCODING,
              settings: Mapping[str, Any] | None = None) -> StoreMeta:
    return StoreMeta(
        teacher=TeacherInfo(name="random-teacher", revision="sha256:0", dtype="float32", backend="synthetic", engine="numpy"),
        tokenizer=TokenizerInfo(name="tiny", vocab_size=vocab_size, fingerprint=fingerprint, eos_token_id=0),
        seq_len=seq_len,
        top_k=top_k,
        domains=tuple(DomainInfo(name=d, sources=(SourceInfo(uri=f"synthetic://{d}"),), n_documents=1, n_tokens=0)
                      for d in domains),
        encoding=encoding,
        settings=dict(settings or {}),
    )


def synth_rows(rng: np.random.Generator, n: int, seq_len: int, top_k: int, vocab_size: int,
               sharpness: float = 1.0) -> dict[str, np.ndarray]:
    """Random rows whose top-k and target log-probs come from real (random) distributions."""
    tokens = rng.integers(0, vocab_size, size=(n, seq_len))
    logits = rng.normal(size=(n, seq_len - 1, vocab_size)) * sharpness
    # Make the realized next token likely, so the teacher "knows" the data (held-out NLL well below log V).
    np.put_along_axis(logits, tokens[:, 1:, None], logits.max(axis=-1, keepdims=True) + sharpness, axis=-1)
    lp = log_softmax(logits)
    ids, top = topk_of(lp, top_k)
    target = np.take_along_axis(lp, tokens[:, 1:, None], -1)[..., 0]
    return {"tokens": tokens, "topk_ids": ids, "topk_logprobs": top, "target_logprobs": target}


def make_tiny_store(url: str, *, domains: Sequence[str] = ("alpha", "beta", "gamma"), train_rows: int = 16,
                    heldout_rows: int = 4, seq_len: int = 16, top_k: int = 4, vocab_size: int = 64,
                    fingerprint: str = "sha256:test", seed: int = 0, encoding: str = spec.DEFAULT_ENCODING,
                    sharpness: Mapping[str, float] | None = None, unit_rows: int | None = None,
                    finalize: bool = True, teacher_nll: Any = None) -> StoreReader | StoreWriter:
    """Write a complete store of synthetic teacher data and return a reader on it (a writer if not finalized).

    ``sharpness`` (per domain, default 1.0..2.0 spread) controls how peaked the teacher is, hence its held-out NLL.
    ``teacher_nll`` is accepted as an alias of ``sharpness`` for older callers.
    """
    sharpness = dict(sharpness or teacher_nll or {})
    meta = tiny_meta(domains=domains, seq_len=seq_len, top_k=top_k, vocab_size=vocab_size, fingerprint=fingerprint,
                     encoding=encoding)
    rows = {d: {spec.SPLIT_TRAIN: train_rows, spec.SPLIT_HELDOUT: heldout_rows} for d in domains}
    writer = StoreWriter.open_or_create(url, meta, rows, unit_rows=unit_rows, chunk_rows=1 if unit_rows else None)
    rng = np.random.default_rng(seed)
    for i, d in enumerate(domains):
        sharp = sharpness.get(d, 1.0 + i / max(1, len(domains) - 1))
        for split in spec.SPLITS:
            for unit in writer.units(d, split):
                writer.write_unit(unit, **synth_rows(rng, unit.n_rows, seq_len, top_k, vocab_size, sharp))
    if not finalize:
        return writer
    writer.finalize()
    return open_store(url)
