"""The only torch <-> store seam: read planned rows from a StoreReader, collate to tensors, prefetch in background.

The store returns numpy; everything above this module sees torch tensors. Reads run in a background thread
(zarr decompression and object-store I/O release the GIL) and stay ``depth`` micro-batches ahead of the loop, in
plan order, so the loop does not wait on the store and the batches are identical with or without prefetching.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Batch:
    """One micro-batch. b rows, T = seq_len, P = T - 1, K = top_k."""

    tokens: torch.Tensor  #: int64 (b, T)
    topk_ids: torch.Tensor  #: int64 (b, P, K)
    topk_logprobs: torch.Tensor  #: float32 (b, P, K), nats
    domains: torch.Tensor  #: int64 (b,), index into the store's domain list

    def to(self, device: torch.device | str) -> Batch:
        nb = torch.device(device).type == "cuda"  # pinned host memory -> async copies
        return Batch(*(t.to(device, non_blocking=nb) for t in (self.tokens, self.topk_ids, self.topk_logprobs,
                                                              self.domains)))

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.numel())


def read_batch(reader, domains: Sequence[str], pairs: np.ndarray, *, split: str = "train", pin: bool = False) -> Batch:
    """Read ``pairs`` ((b, 2): domain index, row index) from the store, one read per domain, in the given order."""
    pairs = np.asarray(pairs, dtype=np.int64)
    b = len(pairs)
    T, K = reader.seq_len, reader.top_k
    tokens = np.empty((b, T), dtype=np.int64)
    ids = np.empty((b, T - 1, K), dtype=np.int64)
    lps = np.empty((b, T - 1, K), dtype=np.float32)
    for d in np.unique(pairs[:, 0]):
        where = np.nonzero(pairs[:, 0] == d)[0]
        rows = reader.read_rows(domains[int(d)], split, pairs[where, 1])
        tokens[where], ids[where], lps[where] = rows.tokens, rows.topk_ids, rows.topk_logprobs
    out = Batch(torch.from_numpy(tokens), torch.from_numpy(ids), torch.from_numpy(lps),
                torch.from_numpy(pairs[:, 0].copy()))
    if pin:
        out = Batch(*(t.pin_memory() for t in (out.tokens, out.topk_ids, out.topk_logprobs, out.domains)))
    return out


_DONE = object()


class Prefetcher:
    """Iterate ``Batch``es for a list of planned micro-batches, read ``depth`` ahead by a daemon thread.

    Errors raised in the thread (a corrupt chunk, a lost connection) are re-raised in the consumer at the batch
    where they happened. ``close()`` stops the thread early (at an interval boundary or on exit).
    """

    def __init__(self, reader, domains: Sequence[str], plans: Sequence[np.ndarray], *, depth: int = 4,
                 pin: bool = False) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(reader, list(domains), list(plans), pin), daemon=True,
                                        name="ddk-prefetch")
        self._thread.start()

    def _run(self, reader, domains, plans, pin) -> None:
        try:
            for pairs in plans:
                item = read_batch(reader, domains, pairs, pin=pin)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as e:  # handed to the consumer, which re-raises it with its traceback
            self._queue.put(e)
            return
        self._queue.put(_DONE)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        # Drain so a producer blocked on put() sees the stop flag promptly.
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()
