"""Tokenizing documents, in this process or in worker processes, with the same ids in the same order either way;
and whether the teacher's tokenizer starts a text with BOS."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import chain
from typing import NoReturn

import numpy as np

# Nothing from ddk_store (its zarr stack costs ~1 CPU-s) at module level: the tokenizer workers import this module.

#: Documents per tokenizer call (fast tokenizers batch in Rust) and per task sent to a worker...
BATCH_DOCS = 256
#: ...and at most this many characters (a batch of long documents would hold hundreds of MB of encodings).
BATCH_CHARS = 1 << 20


def bos_to_add(tok) -> int | None:
    """The BOS id the teacher's tokenizer puts before a text by default (``add_special_tokens=True``), else None.

    Decided by encoding a probe text both ways, so it follows the tokenizer's post-processor (Llama-family
    tokenizers add BOS; GPT-2-style ones add nothing) rather than a flag that some tokenizers ignore.
    """
    bos = tok.bos_token_id
    if bos is None:
        return None
    probe = "Hello world"
    plain = list(tok(probe, add_special_tokens=False)["input_ids"])
    special = list(tok(probe, add_special_tokens=True)["input_ids"])
    return int(bos) if special[:1] == [bos] and special[1 : 1 + len(plain)] == plain and plain[:1] != [bos] else None


def _flat(encode, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """ids of ``texts`` as one int32 array plus lengths (cheap to send between processes)."""
    ids = encode(texts)
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
    return flat, lengths


def _split(flat: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    return np.split(flat, np.cumsum(lengths)[:-1]) if lengths.size else []


def _backend_encoder(tokenizer_json: str):
    """ids without special tokens from a fast tokenizer's Rust backend, rebuilt from its JSON: what ``tok(texts,
    add_special_tokens=False)`` computes (truncation and padding off, as transformers sets them per call), the same
    in every process, and on ONE core: one ``encode`` per text, never ``encode_batch``, whose Rust thread pool would
    take every core of the host (so ``--workers N`` means N cores, and N workers do not fight N thread pools)."""
    from tokenizers import Tokenizer  # not transformers: a worker starts in a fraction of a second

    backend = Tokenizer.from_str(tokenizer_json)
    backend.no_truncation()
    backend.no_padding()
    one = backend.encode

    def encode(texts: list[str]) -> list[list[int]]:
        return [one(t, add_special_tokens=False).ids for t in texts]

    return encode


_WORKER_ENCODE = None


def _worker_init(tokenizer_json: str) -> None:
    # One process per core: no Rust thread pool of the tokenizer's own (belt and braces: _backend_encoder never
    # calls the batch API that would start one).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    global _WORKER_ENCODE
    _WORKER_ENCODE = _backend_encoder(tokenizer_json)


def _worker_encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return _flat(_WORKER_ENCODE, texts)


def _hash_file(path: str) -> tuple[str, int]:
    from .corpus import file_sha256  # imported when used: a worker that only tokenizes never loads the store stack

    return file_sha256(path)


class DocTokenizer:
    """Encodes document streams with ``workers`` processes (started on the first stream of more than one batch and
    shared by every later stream); results come back in input order, at most ``2 * workers`` batches ahead.

    A fast tokenizer is run through its Rust backend, here and in the workers alike (the workers get its JSON, so
    every process encodes with the very same tokenizer); a slow (Python) tokenizer runs in this process only.
    """

    def __init__(self, tok, *, workers: int = 1, batch: int = BATCH_DOCS) -> None:
        backend = tok.backend_tokenizer if getattr(tok, "is_fast", False) else None
        self._json = backend.to_str() if backend is not None else None
        self._encode = (_backend_encoder(self._json) if backend is not None else
                        lambda texts: tok(texts, add_special_tokens=False)["input_ids"])
        self.workers = workers if backend is not None else 1
        self.batch = batch
        self._pool: ProcessPoolExecutor | None = None

    def encode(self, texts: Iterable[str]) -> Iterator[np.ndarray]:
        """Token ids (int32, no special tokens) of every text, in order."""
        from .packing import batched

        batches = batched(texts, self.batch, BATCH_CHARS)
        first = next(batches, None)
        second = next(batches, None) if first is not None else None
        if second is None or self.workers == 1:  # one batch is not worth starting processes for
            for b in chain([first] if first else [], [second] if second else [], batches):
                yield from _split(*_flat(self._encode, b))
            return
        pool = self._start()
        window: deque = deque()
        try:
            for b in chain([first, second], batches):
                window.append(pool.submit(_worker_encode, b))
                if len(window) >= 2 * self.workers:
                    yield from _split(*window.popleft().result())
            while window:
                yield from _split(*window.popleft().result())
        except BrokenProcessPool:
            self._broken()
        finally:
            for f in window:
                f.cancel()

    def hash_files(self, paths: Iterable[str]) -> dict[str, tuple[str, int]]:
        """path -> (sha256, size) of each file, hashed in the worker processes (one file per worker at a time) when
        there are several, else here: the files no reader hashed as it read them (parquet, read by pyarrow; a
        capped domain's files not read to their end)."""
        paths = list(paths)
        if self.workers == 1 or len(paths) < 2:
            return {p: _hash_file(p) for p in paths}
        try:
            return dict(zip(paths, self._start().map(_hash_file, paths)))
        except BrokenProcessPool:
            self._broken()

    def _broken(self) -> NoReturn:
        from ddk_store.errors import CorpusError

        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None
        raise CorpusError(f"a tokenizer worker process died (killed, or out of memory) while tokenizing with "
                          f"--workers {self.workers}; rerun the same command, or pass --workers 1 to tokenize "
                          f"in this process") from None

    def _start(self) -> ProcessPoolExecutor:
        if self._pool is None:
            import multiprocessing

            # spawn, not fork: the parent may hold torch and tokenizer threads, which fork would copy mid-flight.
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_worker_init,
                                             initargs=(self._json,))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> DocTokenizer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
