"""Pure packing: documents -> token ids with BOS (when the teacher adds one) and EOS -> fixed seq_len rows, and the
document-level held-out split (a document goes wholly to held-out or wholly to training)."""

from __future__ import annotations

import hashlib
import heapq
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np

from .domain_size import check_domain_size, check_split_size

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


def doc_key(domain: str, source: str, index: int, seed: int = 0) -> int:
    """A document's place in the held-out order: the first 8 bytes of sha256(domain NUL source NUL index), with
    NUL seed appended when ``seed`` is not 0.

    ``source`` is the document's file relative to its domain's files (or the dataset reference) and ``index`` its
    0-based ordinal among that source's documents, so the split depends on neither where the corpus lives nor on
    the order or number of workers. ``seed`` (a domain's ``heldout_seed``) picks another pseudo-random order, so
    another held-out sample; seed 0 keys documents as every store before the seed existed did.
    """
    text = f"{domain}\0{source}\0{index}" + (f"\0{seed}" if seed else "")
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def batched(items: Iterable[str], size: int, max_chars: int = 0) -> Iterator[list[str]]:
    """Consecutive lists of ``size`` items (the last one shorter), read lazily; with ``max_chars`` > 0 a list also
    ends once its texts hold that many characters (so a batch of long documents stays small in memory)."""
    it = iter(items)
    if not max_chars:
        while batch := list(islice(it, size)):
            yield batch
        return
    batch: list[str] = []
    chars = 0
    for text in it:
        batch.append(text)
        chars += len(text)
        if len(batch) >= size or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
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
    heap = HeldoutHeap(heldout_seqs * seq_len)
    train: list[tuple[int, np.ndarray]] = []  # (ordinal, ids), ordinals out of order after displacements
    train_tokens = 0
    n_docs = n_tokens = 0
    for key, ids in docs:
        arr = with_bos(ids, bos_id)
        n_tokens += arr.size + 1  # + EOS
        ordinal = n_docs
        n_docs += 1
        moved = heap.push(key, ordinal, arr) if heap.wants(key, ordinal) else [(ordinal, arr)]
        train.extend(moved)
        train_tokens += sum(a.size + 1 for _, a in moved)
        if max_train_rows and train_tokens >= max_train_rows * seq_len and heap.full:
            break
    check_domain_size(domain, n_tokens, seq_len)
    held_sorted = heap.documents()
    train.sort(key=lambda x: x[0])
    heldout = pack_rows((a for _, a in held_sorted), seq_len, eos_id, max_rows=heldout_seqs).rows
    train_rows = pack_rows((a for _, a in train), seq_len, eos_id, max_rows=max_train_rows).rows
    check_split_size(domain, n_tokens, seq_len, heldout_seqs, heldout.shape[0], train_rows.shape[0])
    return SplitDomain(train=train_rows, heldout=heldout,
                       train_docs=np.array([o for o, _ in train], dtype=np.int64),
                       heldout_docs=np.array([o for o, _ in held_sorted], dtype=np.int64),
                       n_documents=n_docs, n_tokens=n_tokens)


def with_bos(ids: Sequence[int] | np.ndarray, bos_id: int | None) -> np.ndarray:
    """A document's ids as int64, ``bos_id`` first when not None (no EOS: packing adds it)."""
    if bos_id is None:
        return np.asarray(ids, dtype=np.int64)
    arr = np.empty(len(ids) + 1, dtype=np.int64)
    arr[0] = bos_id
    arr[1:] = ids
    return arr


class HeldoutHeap:
    """The held-out candidates of one domain: the documents of lowest (key, ordinal) seen so far, as few as cover
    ``need`` tokens (each document counted with its EOS). A max-heap, so memory is about the held-out rows.

    Once full it stays full and its largest key only decreases, so a document that :meth:`wants` rejects now would
    be rejected at any later moment too (the streaming pack relies on this to skip tokenizing it).
    """

    def __init__(self, need: int) -> None:
        self.need = need
        self.tokens = 0
        self._heap: list[tuple[int, int, np.ndarray]] = []  # (-key, -ordinal, ids)

    @property
    def full(self) -> bool:
        return self.tokens >= self.need

    def wants(self, key: int, ordinal: int) -> bool:
        """Whether the document would join the candidates now (not full yet, or below the largest candidate)."""
        return not self.full or (-key, -ordinal) > self._heap[0][:2]

    def push(self, key: int, ordinal: int, ids: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Add a document the heap :meth:`wants`; returns the (ordinal, ids) of candidates no longer needed (they
        train)."""
        heapq.heappush(self._heap, (-key, -ordinal, ids))
        self.tokens += ids.size + 1
        out = []
        while self.tokens - (self._heap[0][2].size + 1) >= self.need:  # the top is no longer needed: it trains
            _, neg_ord, top = heapq.heappop(self._heap)
            self.tokens -= top.size + 1
            out.append((-neg_ord, top))
        return out

    def documents(self) -> list[tuple[int, np.ndarray]]:
        """The candidates as (ordinal, ids) in corpus order: the held-out documents once the domain is read."""
        return sorted(((-neg_ord, arr) for _, neg_ord, arr in self._heap), key=lambda x: x[0])


class RowPacker:
    """Streaming :func:`pack_rows`: documents (ids without EOS) go in, rows of ``seq_len`` come out ``chunk_rows``
    at a time; the trailing partial row is dropped and at most ``max_rows`` rows (0 = no cap) are made in all.

    :meth:`cursor` says where the rows not yet handed out start, as (document ordinal, tokens of that document
    already in rows), so a run can stop after any chunk and a later one continue identically: it skips the
    documents before that ordinal and passes ``skip`` for the first one.
    """

    def __init__(self, seq_len: int, eos_id: int, chunk_rows: int, *, max_rows: int = 0, rows_done: int = 0) -> None:
        self.seq_len, self.eos_id, self.chunk_rows, self.max_rows = seq_len, eos_id, chunk_rows, max_rows
        self.rows_done = rows_done
        self._pieces: deque[tuple[int, int, np.ndarray]] = deque()  # (ordinal, full stream size, tail not in rows)
        self._buffered = 0
        self.added_tokens = 0  # stream tokens (ids + EOS) of every document added, in full
        self.next_ordinal = -1

    @property
    def full(self) -> bool:
        """The row cap is reached: no more documents are needed."""
        return bool(self.max_rows) and self.rows_done + self._buffered // self.seq_len >= self.max_rows

    def add(self, ordinal: int, ids: np.ndarray, skip: int = 0) -> Iterator[np.ndarray]:
        """Append one document (+ EOS), minus its first ``skip`` stream tokens; yields every chunk now complete."""
        arr = np.empty(ids.size + 1, dtype=np.int64)
        arr[:-1] = ids
        arr[-1] = self.eos_id
        self.added_tokens += arr.size
        self.next_ordinal = ordinal + 1
        if skip < arr.size:
            self._pieces.append((ordinal, arr.size, arr[skip:]))
            self._buffered += arr.size - skip
        want = self.chunk_rows * self.seq_len
        while self._buffered >= want and (not self.max_rows or self.rows_done + self.chunk_rows <= self.max_rows):
            yield self._take(self.chunk_rows)

    def finish(self) -> np.ndarray:
        """The last rows (fewer than ``chunk_rows``; possibly none), the remainder dropped."""
        n = self._buffered // self.seq_len
        if self.max_rows:
            n = min(n, self.max_rows - self.rows_done)
        return self._take(n)

    def cursor(self) -> tuple[int, int]:
        """(ordinal of the first document with tokens not yet in rows, how many of its stream tokens are)."""
        if not self._pieces:
            return self.next_ordinal, 0
        ordinal, size, tail = self._pieces[0]
        return ordinal, size - tail.size

    def tokens_before_cursor(self) -> int:
        """Stream tokens of the documents added before the cursor's document."""
        return self.added_tokens - sum(size for _, size, _ in self._pieces)

    def _take(self, n_rows: int) -> np.ndarray:
        need = n_rows * self.seq_len
        out = np.empty(need, dtype=np.int64)
        filled = 0
        while filled < need:
            ordinal, size, tail = self._pieces[0]
            take = min(tail.size, need - filled)
            out[filled : filled + take] = tail[:take]
            filled += take
            if take == tail.size:
                self._pieces.popleft()
            else:
                self._pieces[0] = (ordinal, size, tail[take:])
        self._buffered -= need
        self.rows_done += n_rows
        return out.reshape(n_rows, self.seq_len).astype(np.int32)
