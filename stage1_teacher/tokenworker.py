"""What a tokenizer worker process runs (tokenize.DocTokenizer starts them with ``init``): the standard library and
`tokenizers` only at import, so a worker is up in a fraction of a second (no numpy, no store stack)."""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable
from itertools import chain

Encode = Callable[[list[str]], list[list[int]]]


def backend_encoder(tokenizer_json: str) -> Encode:
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


def flat_ids(encode: Encode, texts: list[str]) -> tuple[array, array]:
    """ids of ``texts`` as one int32 array plus int64 lengths (cheap to send between processes; numpy reads them
    without a copy)."""
    ids = encode(texts)
    return array("i", chain.from_iterable(ids)), array("q", map(len, ids))


_ENCODE: Encode | None = None


#: Seconds between a worker's looks at whether the process that started it is still there.
PARENT_POLL_S = 1.0


def _exit_with_parent(parent: int) -> None:
    """End this worker once its parent (the process id ``parent``, given by the parent itself) is gone. A pool's
    workers wait on a queue whose write end they hold too, so a parent killed with SIGKILL (or the OOM killer) left
    them waiting forever, each holding a tokenizer. The id is the parent's own, not this process's parent at the
    time it looks: a worker still starting when its parent was killed has been adopted by then, and would watch its
    adopter forever."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="ddk-exit-with-parent", daemon=True).start()


def init(tokenizer_path: str, parent: int) -> None:
    """A worker's initializer: the tokenizer from its JSON file; the worker ends when process ``parent`` does."""
    # One process per core: no Rust thread pool of the tokenizer's own (belt and braces: backend_encoder never
    # calls the batch API that would start one).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    _exit_with_parent(parent)
    global _ENCODE
    with open(tokenizer_path, encoding="utf-8") as f:
        _ENCODE = backend_encoder(f.read())


def encode_task(texts: list[str]) -> tuple[array, array]:
    return flat_ids(_ENCODE, texts)


def hash_file(path: str) -> tuple[str, int]:
    from .filehash import file_sha256  # imported when used: a worker that only tokenizes never loads the store stack

    return file_sha256(path)
