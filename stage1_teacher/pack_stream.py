"""The two streaming passes that pack one domain into the store's packed rows (ddk_store.packed).

1. *Select*: read the domain (hashing each file as its bytes are read; a file not read to its end, or read by
   pyarrow, is hashed in the tokenizer workers), key every document and keep the held-out
   candidates (packing.HeldoutHeap). Only documents the heap would take are tokenized, plus the first ones until the
   training side holds a row (all of them for a domain with a row cap, whose end depends on every length); memory
   is about the held-out rows. Every "domain too small" problem is found in this pass, before anything is written.
2. *Train*: read the domain again, skip the held-out documents (and, when resuming, every document before the
   cursor) without tokenizing them, tokenize the rest in --workers processes and cut rows (packing.RowPacker),
   writing each chunk and then the cursor.

The select pass keeps the ids of the training documents it tokenized (an :class:`EncodingCache`, bounded by
CACHE_BYTES over all domains), and while the cache has room it tokenizes every document, not only the candidates:
the train pass of the same run then tokenizes none of them again, and reads no file at all when every training
document is cached (any domain while the cache lasts: 64 MiB hold ~15 M tokens). A resumed run has no cache: it
tokenizes from its cursor. The ids are the same either way, so the rows are too.

The rows are exactly packing.pack_domain's: held-out = the heap's documents in corpus order; training = every other
document read, in corpus order.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from ddk_store import SourceInfo

from .corpus import DomainSource, ReadStats, read_documents
from .domain_size import check_domain_size, check_split_size
from .filehash import seed_file_hashes
from .packing import HeldoutHeap, RowPacker, pack_rows, with_bos
from .plan import keyed_texts, provenance
from .tokenize import DocTokenizer


#: Bytes of token ids the select passes of one run keep for the train passes, over all domains.
CACHE_BYTES = 64 << 20
#: What a cached document costs beyond its ids (the array object and the dict entry), counted in the budget.
DOC_BYTES = 160


def _cost(ids: np.ndarray) -> int:
    return ids.nbytes + DOC_BYTES


class EncodingCache:
    """Ids of documents tokenized by the select pass, by domain and ordinal, within ``budget`` bytes in all."""

    def __init__(self, budget: int | None = None) -> None:
        self.left = CACHE_BYTES if budget is None else budget
        self.full = self.left <= 0  # from the first document that does not fit, for the rest of the run
        self._domains: dict[str, dict[int, np.ndarray]] = {}

    @property
    def room(self) -> bool:
        """Whether the select pass still tokenizes every document for the cache: until a document does not fit (the
        bytes left stay above zero, a little under the budget, so they alone would tokenize every document)."""
        return not self.full

    def put(self, domain: str, ordinal: int, ids: np.ndarray) -> None:
        """Keep ``ids`` if they fit (a document that does not makes the cache full; later ones that fit are kept)."""
        if _cost(ids) <= self.left:
            self._domains.setdefault(domain, {})[ordinal] = ids
            self.left -= _cost(ids)
        else:
            self.full = True

    def drop(self, domain: str, ordinals: Iterable[int]) -> None:
        """Forget ``ordinals`` (the held-out documents: they never train)."""
        docs = self._domains.get(domain, {})
        for o in ordinals:
            if (ids := docs.pop(int(o), None)) is not None:
                self.left += _cost(ids)

    def take(self, domain: str) -> dict[int, np.ndarray]:
        """The domain's cached ids, handed over (the cache forgets them)."""
        docs = self._domains.pop(domain, {})
        self.left += sum(_cost(a) for a in docs.values())
        return docs


@dataclass(frozen=True)
class Selection:
    """What the select pass found: the held-out documents and where the domain's reading ends."""

    heldout_rows: np.ndarray  # int32 [heldout_seqs, T]
    heldout_docs: np.ndarray  # int64 ordinals, ascending
    held_tokens: int  # stream tokens of the held-out documents
    n_read: int  # documents read: training documents are the others among ordinals [0, n_read)
    n_tokens: int | None  # stream tokens of every document read (known only for a capped domain)
    n_skipped: int
    skipped_where: tuple[str, ...]  # the first few skipped documents' locations
    sources: tuple[SourceInfo, ...]


def numbered(src: DomainSource, *, on_bad_utf8: str, stats: ReadStats | None = None,
             hashes: dict[str, tuple[str, int]] | None = None) -> Iterator[tuple[int, int, str]]:
    """(ordinal, held-out key, text) of every document of ``src`` in corpus order (:func:`plan.keyed_texts`)."""
    for ordinal, (key, text) in enumerate(keyed_texts(src, on_bad_utf8=on_bad_utf8, stats=stats, hashes=hashes)):
        yield ordinal, key, text


def ordered(src: DomainSource, *, on_bad_utf8: str) -> Iterator[tuple[int, str]]:
    """(ordinal, text) of every document of ``src`` in corpus order: :func:`numbered` without the keys (the train
    pass needs none; the select pass recorded the held-out ordinals)."""
    return enumerate(read_documents(src, on_bad_utf8=on_bad_utf8))


def select_heldout(src: DomainSource, coder: DocTokenizer, *, seq_len: int, heldout_seqs: int, max_train_rows: int,
                   on_bad_utf8: str, eos_id: int, bos_id: int | None,
                   cache: EncodingCache | None = None) -> Selection:
    """Pass 1 (see the module docstring); the ids it tokenizes go into ``cache`` (the held-out ones dropped at the
    end). Raises ConfigError when the domain cannot fill its held-out rows."""
    heap = HeldoutHeap(heldout_seqs * seq_len)
    stats = ReadStats()
    hashes: dict[str, tuple[str, int]] = {}
    read_since_ns = time.time_ns()
    cap_tokens = max_train_rows * seq_len
    sent: deque[tuple[int, int]] = deque()  # (ordinal, key) of the documents sent to the tokenizer
    read = [0]
    n_tokens = train_tokens = 0

    def candidates() -> Iterator[str]:
        for ordinal, key, text in numbered(src, on_bad_utf8=on_bad_utf8, stats=stats, hashes=hashes):
            read[0] = ordinal + 1
            everything = cache is not None and cache.room
            # A document the heap rejects now it rejects for good; until the training side holds a row, every
            # document is measured, so a domain too small for one training row is known here, before any write.
            # While the cache has room every document is tokenized here (once: the train pass takes the ids).
            if everything or cap_tokens or train_tokens < seq_len or heap.wants(key, ordinal):
                sent.append((ordinal, key))
                yield text

    n_read = None
    stream = coder.encode(candidates())
    try:
        for ids in stream:
            ordinal, key = sent.popleft()
            if cache is not None:
                cache.put(src.name, ordinal, ids)
            arr = with_bos(ids, bos_id)
            n_tokens += arr.size + 1
            moved = heap.push(key, ordinal, arr) if heap.wants(key, ordinal) else [(ordinal, arr)]
            train_tokens += sum(a.size + 1 for _, a in moved)
            if cap_tokens and train_tokens >= cap_tokens and heap.full:
                n_read = ordinal + 1
                break
    finally:
        stream.close()
    if n_read is None:
        n_read = read[0]
    if not heap.full:  # every document was tokenized: n_tokens is the domain's
        check_domain_size(src.name, n_tokens, seq_len, stats.n_skipped)
    held = heap.documents()
    if cache is not None:
        cache.drop(src.name, (o for o, _ in held))
    rows = pack_rows((a for _, a in held), seq_len, eos_id, max_rows=heldout_seqs).rows
    # Raised only when every document was tokenized (heap not full, or no training row), so n_tokens is exact.
    check_split_size(src.name, n_tokens, seq_len, heldout_seqs, rows.shape[0], int(train_tokens >= seq_len),
                     held_documents=len(held), train_tokens=train_tokens)
    hashes.update(coder.hash_files(f for f in src.files if f not in hashes))
    seed_file_hashes(hashes, read_since_ns=read_since_ns)  # a resume's check of the files needs not read them again
    return Selection(heldout_rows=rows, heldout_docs=np.array([o for o, _ in held], dtype=np.int64),
                     held_tokens=heap.tokens, n_read=n_read, n_tokens=n_tokens if cap_tokens else None,
                     n_skipped=stats.n_skipped, skipped_where=tuple(stats.skipped_where),
                     sources=provenance(src, known=hashes))


@dataclass
class Cursor:
    """Where a domain's training rows stand: ``rows`` written (whole chunks); the next row starts ``skip`` stream
    tokens into document ``doc``; ``tokens``: stream tokens of the training documents before ``doc``."""

    rows: int = 0
    doc: int = 0
    skip: int = 0
    tokens: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"rows": self.rows, "doc": self.doc, "skip": self.skip, "tokens": self.tokens}


def pack_training(src: DomainSource, coder: DocTokenizer, cursor: Cursor, *, heldout_docs: np.ndarray, n_read: int,
                  seq_len: int, max_train_rows: int, chunk_rows: int, on_bad_utf8: str, eos_id: int,
                  bos_id: int | None, write_chunk: Callable[[int, np.ndarray], None],
                  save: Callable[[Cursor], None], cached: dict[int, np.ndarray] | None = None) -> tuple[int, int]:
    """Pass 2 from ``cursor``: writes chunk after chunk (``write_chunk(index, rows)``, then ``save(cursor)``).

    ``cached``: ids of training documents by ordinal (the select pass's :class:`EncodingCache`), not tokenized again.
    Returns (training rows, stream tokens of every training document read).
    """
    held = set(heldout_docs.tolist())
    packer = RowPacker(seq_len, eos_id, chunk_rows, max_rows=max_train_rows, rows_done=cursor.rows)
    stream = _training_ids(src, coder, cursor, held=held, n_read=n_read, cached=cached or {},
                           done=lambda: packer.full, on_bad_utf8=on_bad_utf8)
    try:
        for ordinal, ids in stream:
            skip = cursor.skip if ordinal == cursor.doc else 0
            for rows in packer.add(ordinal, with_bos(ids, bos_id), skip):
                write_chunk(packer.rows_done // chunk_rows - 1, rows)
                doc, at = packer.cursor()
                save(Cursor(packer.rows_done, doc, at, cursor.tokens + packer.tokens_before_cursor()))
            if packer.full:
                break
    finally:
        stream.close()
    first = packer.rows_done
    last = packer.finish()
    if last.shape[0]:
        write_chunk(first // chunk_rows, last)
    return packer.rows_done, cursor.tokens + packer.added_tokens


def _training_ids(src: DomainSource, coder: DocTokenizer, cursor: Cursor, *, held: set[int], n_read: int,
                  cached: dict[int, np.ndarray], done: Callable[[], bool],
                  on_bad_utf8: str) -> Iterator[tuple[int, np.ndarray]]:
    """(ordinal, ids) of the training documents from ``cursor.doc`` on, in corpus order: popped from ``cached``
    where there, else read and tokenized (no file is read when every one is cached); stops reading once ``done()``."""
    have = sorted(o for o in cached if cursor.doc <= o < n_read)
    if have and len(have) == n_read - cursor.doc - sum(1 for o in held if o >= cursor.doc):  # every one is cached
        for o in have:
            if done():
                return
            yield o, cached.pop(o)
        return
    order: deque[tuple[int, np.ndarray | None]] = deque()  # every training document read, tokenized or not

    def texts() -> Iterator[str]:
        for ordinal, text in ordered(src, on_bad_utf8=on_bad_utf8):
            if ordinal >= n_read or done():
                return
            if ordinal >= cursor.doc and ordinal not in held:  # before the cursor: in the store already
                ids = cached.pop(ordinal, None)
                order.append((ordinal, ids))
                if ids is None:
                    yield text

    stream = coder.encode(texts())
    try:
        for ids in stream:
            while order[0][1] is not None:
                yield order.popleft()
            yield order.popleft()[0], ids
        while order:  # cached documents after the last one tokenized
            yield order.popleft()
    finally:
        stream.close()
