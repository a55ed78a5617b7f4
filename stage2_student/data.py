"""The only torch <-> store seam: read planned rows from a StoreReader, collate to tensors, prefetch in background.

The store returns numpy; everything above this module sees torch tensors. Reads run in a pool of threads
(readpool.py: zarr decompression and object-store I/O release the GIL), several micro-batches in flight, delivered in
plan order, so the loop does not wait on the store and the batches are identical with or without prefetching.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .readpool import ReadPool, default_read_workers


@dataclass
class Batch:
    """One micro-batch. b rows, T = seq_len, P = T - 1, K = top_k."""

    tokens: torch.Tensor  #: int64 (b, T)
    topk_ids: torch.Tensor  #: int32 (b, P, K): half the host work and copy of int64; the loss widens per chunk
    topk_logprobs: torch.Tensor  #: float32 (b, P, K), nats; -inf in absent slots
    domains: torch.Tensor  #: int64 (b,), index into the store's domain list
    #: float32 (b, P): log of the teacher's exact mass outside the K entries, when the store's encoding has it
    topk_log_tail: torch.Tensor | None = None

    def _map(self, fn) -> Batch:
        return Batch(fn(self.tokens), fn(self.topk_ids), fn(self.topk_logprobs), fn(self.domains),
                     None if self.topk_log_tail is None else fn(self.topk_log_tail))

    def to(self, device: torch.device | str) -> Batch:
        nb = torch.device(device).type == "cuda"  # pinned host memory -> async copies
        return self._map(lambda t: t.to(device, non_blocking=nb))

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.numel())


def read_batch(reader, domains: Sequence[str], pairs: np.ndarray, *, split: str = "train", pin: bool = False) -> Batch:
    """Read ``pairs`` ((b, 2): domain index, row index) from the store, one read per domain, in the given order."""
    pairs = np.asarray(pairs, dtype=np.int64)
    present = np.unique(pairs[:, 0])
    if len(present) == 1:  # one domain: the reader's arrays are the batch (no copy)
        rows = reader.read_rows(domains[int(present[0])], split, pairs[:, 1])
        tokens, ids, lps, tail = (rows.tokens.astype(np.int64), rows.topk_ids, rows.topk_logprobs,
                                  rows.topk_log_tail if reader_has_tail(reader) else None)
        tail = None if tail is None else tail.astype(np.float32, copy=False)
    else:
        b = len(pairs)
        T, K = reader.seq_len, reader_slots(reader)
        tokens = np.empty((b, T), dtype=np.int64)
        ids = np.empty((b, T - 1, K), dtype=np.int32)
        lps = np.empty((b, T - 1, K), dtype=np.float32)
        tail = np.empty((b, T - 1), dtype=np.float32) if reader_has_tail(reader) else None
        for d in present:
            where = np.nonzero(pairs[:, 0] == d)[0]
            rows = reader.read_rows(domains[int(d)], split, pairs[where, 1])
            tokens[where], ids[where], lps[where] = rows.tokens, rows.topk_ids, rows.topk_logprobs
            if tail is not None:
                tail[where] = rows.topk_log_tail
    out = Batch(torch.from_numpy(tokens), torch.from_numpy(ids), torch.from_numpy(lps),
                torch.from_numpy(pairs[:, 0].copy()), None if tail is None else torch.from_numpy(tail))
    if pin:
        out = out._map(lambda t: t.pin_memory())
    return out


def reader_slots(reader) -> int:
    """Entries per position of the store's decoded records: top_k, or fewer (topk-sampled: min(N, top_k))."""
    from ddk_store.encodings import encoding_for

    return encoding_for(reader.meta).slots(reader.top_k)


def reader_has_tail(reader) -> bool:
    """Whether the store's encoding carries the exact tail (format 1.1 ``topk_tail``); stage 2 then uses it."""
    from ddk_store.encodings import get_encoding

    return get_encoding(reader.meta.encoding).exact_tail


class Prefetcher:
    """Iterate ``Batch``es for a list of planned micro-batches, read ahead by a pool of threads (readpool.py):
    ``workers`` reads at once, at most ``max(depth, workers)`` micro-batches ahead of the loop, in plan order.

    Errors raised by a read (a corrupt chunk, a lost connection) are re-raised in the consumer at the batch where they
    happened. ``close()`` stops the reads early (at an interval boundary or on exit).
    """

    def __init__(self, reader, domains: Sequence[str], plans: Sequence[np.ndarray], *, depth: int = 4,
                 pin: bool = False, workers: int | None = None) -> None:
        domains = list(domains)
        workers = workers or default_read_workers()
        self._pool = ReadPool(lambda pairs: read_batch(reader, domains, pairs, pin=pin), plans, workers=workers,
                              inflight=max(depth, workers), name="ddk-prefetch")

    def __iter__(self) -> Iterator[Batch]:
        return iter(self._pool)

    def close(self) -> None:
        """Stop reading; wait briefly for reads already running (milliseconds, unless the store is down)."""
        self._pool.close()
        self._pool.join(timeout=5.0)
