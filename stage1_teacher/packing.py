"""Pure packing: documents -> token ids with BOS (when the teacher adds one) and EOS -> fixed seq_len rows, and the
document-level held-out split (a document goes wholly to held-out or wholly to training)."""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np

from ddk_store.errors import ConfigError

#: Names recorded in the store settings, so a change of algorithm is a different store, never a silent mix.
#: v2: each document is [BOS] (only when the teacher's tokenizer adds one) + ids + EOS; training and held-out
#: documents are packed into two separate streams.
PACKING_SCHEME = "bos-if-teacher-adds-it+doc+eos/concat-per-split/drop-remainder/v2"
#: v2: held-out = the documents of lowest key sha256(domain NUL source NUL index)[:8], as few as fill
#: --heldout-seqs rows; training = every other document read, in corpus order (see docs/store-format.md).
HELDOUT_SCHEME = "lowest-document-hash-fills-heldout/v2"


@dataclass(frozen=True)
class PackedDomain:
    """Rows of one document stream.

    Attributes:
        rows: int32 [N, T] token ids; each row is a contiguous slice of the stream.
        n_documents: documents consumed (fully or partly) into ``rows``' stream.
        n_tokens: tokens of the consumed documents including their EOS separators.
    """

    rows: np.ndarray
    n_documents: int
    n_tokens: int


@dataclass(frozen=True)
class SplitDomain:
    """One domain packed and split by documents.

    Attributes:
        train: int32 [N_train, T]; heldout: int32 [heldout_seqs, T].
        train_docs / heldout_docs: int64 ordinals (0-based, in corpus order) of the documents each stream holds, in
            stream order; disjoint by construction.
        n_documents: documents read; n_tokens: their tokens including BOS/EOS.
    """

    train: np.ndarray
    heldout: np.ndarray
    train_docs: np.ndarray
    heldout_docs: np.ndarray
    n_documents: int
    n_tokens: int


def doc_key(domain: str, source: str, index: int) -> int:
    """A document's place in the held-out order: the first 8 bytes of sha256(domain NUL source NUL index).

    ``source`` is the document's file relative to its domain's files (or the dataset reference) and ``index`` its
    0-based ordinal among that source's documents, so the split depends on neither where the corpus lives nor on
    the order or number of workers.
    """
    return int.from_bytes(hashlib.sha256(f"{domain}\0{source}\0{index}".encode()).digest()[:8], "big")


def batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    """Consecutive lists of ``size`` items (the last one shorter), read lazily."""
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def tokenize_batched(texts: Iterable[str], encode: Callable[[list[str]], list[list[int]]],
                     batch: int = 256) -> Iterator[list[int]]:
    """Yield ``encode``'s ids per text, calling it on ``batch`` texts at a time (fast tokenizers batch in Rust)."""
    for buf in batched(texts, batch):
        yield from encode(buf)


def pack_rows(docs: Iterable[Sequence[int]], seq_len: int, eos_id: int, max_rows: int = 0) -> PackedDomain:
    """Concatenate documents with ``eos_id`` after each and cut the stream into rows of ``seq_len`` tokens.

    The trailing partial row is dropped (a padded row would teach the student padding). With ``max_rows`` > 0,
    reading stops as soon as that many rows are full.

    Args:
        docs: token-id sequences, one per document, in stream order.
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


def pack_domain(docs: Iterable[tuple[int, Sequence[int]]], *, domain: str, seq_len: int, eos_id: int,
                heldout_seqs: int, bos_id: int | None = None, max_train_rows: int = 0) -> SplitDomain:
    """Split a domain's documents into held-out and training documents, then pack each side into rows.

    The held-out documents are those of lowest key (:func:`doc_key`) among the documents read, as few as fill
    ``heldout_seqs`` rows; every other document read is a training document, in corpus order. Documents are read in
    order until the training side fills ``max_train_rows`` rows (0 = read everything) and the held-out side is full.
    A max-heap of the current held-out candidates keeps this one pass: a document of lower key displaces the
    highest-key candidates that are no longer needed, which become training documents.

    Args:
        docs: (key, token ids) per document in corpus order (ids without BOS/EOS).
        domain: for error messages.
        seq_len: T; eos_id: appended to every document; bos_id: prepended to every document when not None.
        heldout_seqs: held-out rows wanted; max_train_rows: cap on training rows (0 = no cap).

    Raises:
        ConfigError: the domain is smaller than one row, or too small for the held-out rows plus one training row.
    """
    need = heldout_seqs * seq_len
    held: list[tuple[int, int, np.ndarray]] = []  # max-heap on (key, ordinal): (-key, -ordinal, ids)
    held_tokens = 0
    train: list[tuple[int, np.ndarray]] = []  # (ordinal, ids), ordinals out of order after displacements
    train_tokens = 0
    n_docs = n_tokens = 0
    head = [] if bos_id is None else [bos_id]
    for key, ids in docs:
        arr = np.asarray(head + list(ids), dtype=np.int64) if head else np.asarray(ids, dtype=np.int64)
        size = arr.size + 1  # + EOS
        n_tokens += size
        entry = (-key, -n_docs, arr)
        n_docs += 1
        if held_tokens < need or entry[:2] > held[0][:2]:  # not full yet, or lower (key, ordinal) than the top
            heapq.heappush(held, entry)
            held_tokens += size
            while held_tokens - (held[0][2].size + 1) >= need:  # the top is no longer needed: it trains
                _, neg_ord, top = heapq.heappop(held)
                held_tokens -= top.size + 1
                train.append((-neg_ord, top))
                train_tokens += top.size + 1
        else:
            train.append((-entry[1], arr))
            train_tokens += size
        if max_train_rows and train_tokens >= max_train_rows * seq_len and held_tokens >= need:
            break
    if n_tokens < seq_len:
        raise ConfigError(f"domain {domain!r} is empty: its documents give {n_tokens} tokens, fewer than one row of "
                          f"--seq-len {seq_len}; add text to the domain or remove it from the corpora file")
    held_sorted = sorted((-neg_ord, arr) for _, neg_ord, arr in held)
    train.sort(key=lambda x: x[0])
    heldout = pack_rows((a for _, a in held_sorted), seq_len, eos_id, max_rows=heldout_seqs).rows
    train_rows = pack_rows((a for _, a in train), seq_len, eos_id, max_rows=max_train_rows).rows
    if heldout.shape[0] < heldout_seqs or train_rows.shape[0] == 0:
        n = n_tokens // seq_len
        raise ConfigError(f"domain {domain!r} is too small: {n} rows of --seq-len {seq_len} but --heldout-seqs "
                          f"{heldout_seqs} plus at least one training row are needed (held-out rows take whole "
                          f"documents); lower --heldout-seqs (to at most {max(n - 1, 0)}) or --seq-len, or add text")
    return SplitDomain(train=train_rows, heldout=heldout,
                       train_docs=np.array([o for o, _ in train], dtype=np.int64),
                       heldout_docs=np.array([o for o, _ in held_sorted], dtype=np.int64),
                       n_documents=n_docs, n_tokens=n_tokens)
