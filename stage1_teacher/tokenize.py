"""Tokenizing documents, in this process or in worker processes, with the same ids in the same order either way;
and whether the teacher's tokenizer starts a text with BOS."""

from __future__ import annotations

import os
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import chain
from typing import NoReturn

import numpy as np

from .tokenworker import backend_encoder, encode_task, flat_ids, hash_file, init

# The workers import tokenworker only (no numpy, no store stack): what they run lives there.

#: Documents per tokenizer call (fast tokenizers batch in Rust) and per task sent to a worker...
BATCH_DOCS = 256
#: ...and at most this many characters (a batch of long documents would hold hundreds of MB of encodings).
BATCH_CHARS = 1 << 20
#: A task sent to a worker holds at most this many characters: small tasks keep every worker busy to the end of a
#: stream (a domain of a few MB is then dozens of tasks, not two or three of very unequal cost) ...
TASK_CHARS = 1 << 16
#: ... and each worker has up to this many tasks queued or running, so it never waits while this process writes.
TASKS_PER_WORKER = 4


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


#: Text whose ids show how a tokenizer splits text: cased prose, digits, runs of spaces, tabs and newlines, code,
#: accents composed and decomposed, full-width and ligature forms, CJK, an emoji and a special token's spelling.
#: A normalizer (case, Unicode form), pre-tokenizer, merges or added-token change that a corpus would notice almost
#: always changes some of these ids.
TOKENIZATION_PROBE = (
    "The Quick Brown Fox, 1234567 and 3.14159: it's DONE!\n"
    "    def f(x):\n\treturn x  +  1  # tabs\tand  spaces\n\n\n"
    "caf\u00e9 cafe\u0301 na\u00efve \uff21\uff22\uff23 \ufb01le \u00bd \u2460 "
    "\u4e2d\u6587\u5206\u8bcd \u65e5\u672c\u8a9e \U0001f600 <|endoftext|> </s> <s>"
)


def tokenization_hash(coder: "DocTokenizer") -> str:
    """``"sha256:<hex>"`` of the ids ``coder`` gives :data:`TOKENIZATION_PROBE`: the part of a tokenizer that the
    vocabulary fingerprint does not cover (its normalizer, pre-tokenizer, merges and added tokens), taken from how
    it behaves rather than from its serialization, which differs between library versions."""
    import hashlib

    ids = next(coder.encode([TOKENIZATION_PROBE]))
    return "sha256:" + hashlib.sha256(np.asarray(ids, dtype="<i4").tobytes()).hexdigest()


def _split(flat: array, lengths: array) -> list[np.ndarray]:
    """The ids of each text (views of one int32 array) from :func:`tokenworker.flat_ids`' result."""
    if not lengths:
        return []
    ids = np.frombuffer(flat, dtype=np.int32) if len(flat) else np.zeros(0, dtype=np.int32)
    return np.split(ids, np.cumsum(np.frombuffer(lengths, dtype=np.int64))[:-1])


def _json_file(text: str) -> tuple[str, bool]:
    """A file holding ``text``, named by its sha256 in the ddk cache (written once, atomically; shared by runs), and
    whether it is a temporary file instead (the cache is read-only) that the caller deletes."""
    import hashlib

    from ddk_store.paths import cache_dir

    path = cache_dir("tokenizers") / f"{hashlib.sha256(text.encode()).hexdigest()}.json"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        return str(path), False
    except OSError:  # a read-only cache: a private temporary file
        import tempfile

        fd, name = tempfile.mkstemp(prefix="ddk-tokenizer-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return name, True


class DocTokenizer:
    """Encodes document streams with ``workers`` processes (started on the first stream of more than one batch and
    shared by every later stream); results come back in input order, at most ``TASKS_PER_WORKER * workers`` tasks
    of at most TASK_CHARS characters ahead.

    A fast tokenizer is run through its Rust backend, here and in the workers alike (the workers get its JSON, so
    every process encodes with the very same tokenizer); a slow (Python) tokenizer runs in this process only.
    """

    def __init__(self, tok, *, workers: int = 1, batch: int = BATCH_DOCS) -> None:
        backend = tok.backend_tokenizer if getattr(tok, "is_fast", False) else None
        self._json = backend.to_str() if backend is not None else None
        # Built when first used: with workers, only a stream of one batch is tokenized here.
        self._local = None if backend is not None else lambda texts: tok(texts, add_special_tokens=False)["input_ids"]
        self.workers = workers if backend is not None else 1
        self.batch = batch
        self._pool: ProcessPoolExecutor | None = None
        self._temp_json: str | None = None  # the workers' tokenizer file, when it is a temporary one

    def encode(self, texts: Iterable[str]) -> Iterator[np.ndarray]:
        """Token ids (int32, no special tokens) of every text, in order."""
        from .packing import batched

        batches = batched(texts, self.batch, BATCH_CHARS if self.workers == 1 else TASK_CHARS)
        first = next(batches, None)
        second = next(batches, None) if first is not None else None
        if second is None or self.workers == 1:  # one batch is not worth starting processes for
            for b in chain([first] if first else [], [second] if second else [], batches):
                yield from _split(*flat_ids(self._encode(), b))
            return
        pool = self._start()
        window: deque = deque()
        try:
            for b in chain([first, second], batches):
                window.append(pool.submit(encode_task, b))
                if len(window) >= TASKS_PER_WORKER * self.workers:
                    yield from _split(*window.popleft().result())
            while window:
                yield from _split(*window.popleft().result())
        except BrokenProcessPool:
            self._broken()
        finally:
            for f in window:
                f.cancel()

    def _encode(self):
        if self._local is None:
            self._local = backend_encoder(self._json)
        return self._local

    def hash_files(self, paths: Iterable[str]) -> dict[str, tuple[str, int]]:
        """path -> (sha256, size) of each file, hashed in the worker processes (one file per worker at a time) when
        there are several, else here: the files no reader hashed as it read them (parquet, read by pyarrow; a
        capped domain's files not read to their end)."""
        paths = list(paths)
        if self.workers == 1 or len(paths) < 2:
            return {p: hash_file(p) for p in paths}
        try:
            return dict(zip(paths, self._start().map(hash_file, paths)))
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
            # The workers get the tokenizer's JSON as a file: passed inline, its megabytes would block this process
            # in each spawn until that child's interpreter is up and reads them.
            path, temporary = _json_file(self._json)
            self._temp_json = path if temporary else None
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=init, initargs=(path, os.getpid()))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._temp_json is not None:
            os.unlink(self._temp_json)
            self._temp_json = None

    def __enter__(self) -> DocTokenizer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
