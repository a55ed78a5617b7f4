"""Pure packing: documents -> token ids with EOS after each -> fixed seq_len rows; deterministic held-out split."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from ddk_store.errors import ConfigError

#: Names recorded in the store settings, so a change of algorithm is a different store, never a silent mix.
PACKING_SCHEME = "concat-eos-after-each-doc/drop-remainder/v1"
HELDOUT_SCHEME = "evenly-spaced-midpoints/v1"


@dataclass(frozen=True)
class PackedDomain:
    """All rows of one domain before the held-out split.

    Attributes:
        rows: int32 [N, T] token ids; each row is a contiguous slice of the domain's token stream.
        n_documents: documents consumed (fully or partly) into ``rows``' stream.
        n_tokens: tokens of the consumed documents including their EOS separators.
    """

    rows: np.ndarray
    n_documents: int
    n_tokens: int


def tokenize_batched(texts: Iterable[str], encode: Callable[[list[str]], list[list[int]]],
                     batch: int = 256) -> Iterator[list[int]]:
    """Yield ``encode``'s ids per text, calling it on ``batch`` texts at a time (fast tokenizers batch in Rust)."""
    buf: list[str] = []
    for t in texts:
        buf.append(t)
        if len(buf) == batch:
            yield from encode(buf)
            buf = []
    if buf:
        yield from encode(buf)


def pack_rows(docs: Iterable[list[int]], seq_len: int, eos_id: int, max_rows: int = 0) -> PackedDomain:
    """Concatenate documents with ``eos_id`` after each and cut the stream into rows of ``seq_len`` tokens.

    The trailing partial row is dropped (a padded row would teach the student padding). With ``max_rows`` > 0,
    reading stops as soon as that many rows are full, so a capped dump never tokenizes the whole corpus.

    Args:
        docs: token-id lists, one per document, in corpus order.
        seq_len: T, tokens per row.
        eos_id: separator appended after every document.
        max_rows: stop after this many rows (0 = no cap).

    Returns:
        PackedDomain with rows int32 [N, T].
    """
    chunks: list[np.ndarray] = []
    n_stream = 0
    n_docs = 0
    for ids in docs:
        arr = np.empty(len(ids) + 1, dtype=np.int64)
        arr[:-1] = ids
        arr[-1] = eos_id
        chunks.append(arr)
        n_stream += arr.size
        n_docs += 1
        if max_rows and n_stream >= max_rows * seq_len:
            break
    stream = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    n_rows = stream.size // seq_len
    if max_rows:
        n_rows = min(n_rows, max_rows)
    rows = stream[: n_rows * seq_len].reshape(n_rows, seq_len).astype(np.int32)  # [N, T]
    return PackedDomain(rows=rows, n_documents=n_docs, n_tokens=int(n_stream))


def heldout_indices(n_rows: int, n_heldout: int) -> np.ndarray:
    """Row indices held out from training: the midpoints of ``n_heldout`` equal slices of the ``n_rows`` rows.

    Evenly spread rows sample the whole domain (the start of a corpus is often atypical, e.g. licence headers),
    need no RNG, and are trivially reproducible: index i = floor((i + 0.5) * n_rows / n_heldout).
    """
    if not 0 < n_heldout < n_rows:
        raise ValueError(f"need 0 < n_heldout < n_rows, got n_heldout={n_heldout}, n_rows={n_rows}")
    i = np.arange(n_heldout, dtype=np.int64)
    return ((2 * i + 1) * n_rows) // (2 * n_heldout)


def split_rows(packed: PackedDomain, domain: str, heldout_seqs: int, max_train_rows: int = 0,
               seq_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split a domain's rows into (train [N_train, T], heldout [heldout_seqs, T]), deterministically.

    Raises:
        ConfigError: the domain has no rows, or too few rows for ``heldout_seqs`` plus one training row.
    """
    n = packed.rows.shape[0]
    t = seq_len if seq_len is not None else (packed.rows.shape[1] if packed.rows.ndim == 2 else 0)
    if n == 0:
        raise ConfigError(f"domain {domain!r} is empty: its documents give {packed.n_tokens} tokens, fewer than one "
                          f"row of --seq-len {t}; add text to the domain or remove it from the corpora file")
    if n < heldout_seqs + 1:
        raise ConfigError(f"domain {domain!r} is too small: {n} rows of --seq-len {t} but --heldout-seqs "
                          f"{heldout_seqs} plus at least one training row are needed; lower --heldout-seqs "
                          f"(to at most {n - 1}) or --seq-len, or add text")
    held = heldout_indices(n, heldout_seqs)
    mask = np.ones(n, dtype=bool)
    mask[held] = False
    train = packed.rows[mask]
    if max_train_rows:
        train = train[:max_train_rows]
    return train, packed.rows[held]
