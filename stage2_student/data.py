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

from ddk_store import spec

from . import device_decode
from .readpool import ReadPool, default_read_workers

#: Where read_batch decodes the top-k: "host" (numpy, in the read pool's threads), "device" (the default encoding's
#: stored arrays go to the training device and are decoded there: device_decode.py; other encodings on the host).
DECODE_PLACES = ("host", "device")


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


@dataclass
class StoredBatch:
    """One micro-batch as stored (``device_decode.DEVICE_ENCODINGS``): b rows, T, P = T - 1, K. ``to(device)`` copies
    the stored arrays (3 bytes per entry instead of 8) and decodes them there into a :class:`Batch`."""

    tokens: torch.Tensor  #: int32 (b, T); widened to int64 on the device
    deltas: torch.Tensor  #: uint16 or uint32 (b, P, K), id deltas
    codes: torch.Tensor  #: uint8 (b, P, K), 8-bit log-prob codes
    tail: torch.Tensor  #: float16 (b, P), log of the exact mass outside the kept entries
    domains: torch.Tensor  #: int64 (b,)
    lut: torch.Tensor  #: float32 (256,), device_decode.tables
    plut: torch.Tensor  #: float32 (256,)

    def _map(self, fn) -> StoredBatch:
        return StoredBatch(*(fn(t) for t in (self.tokens, self.deltas, self.codes, self.tail, self.domains, self.lut,
                                             self.plut)))

    def to(self, device: torch.device | str) -> Batch:
        nb = torch.device(device).type == "cuda"
        d = self._map(lambda t: t.to(device, non_blocking=nb))
        ids, lps, tail = device_decode.decode(d.deltas, d.codes, d.tail, d.lut, d.plut)
        return Batch(d.tokens.to(torch.int64), ids, lps, d.domains, tail)

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.numel())


def _gather(read, domains: Sequence[str], pairs: np.ndarray) -> dict[str, np.ndarray]:
    """Named arrays of the rows ``pairs`` in order: ``read(domain, rows)`` per domain present, one read each (a
    one-domain batch takes the read's arrays with no copy)."""
    present = np.unique(pairs[:, 0])
    if len(present) == 1:
        return read(domains[int(present[0])], pairs[:, 1])
    out: dict[str, np.ndarray] = {}
    for d in present:
        where = np.nonzero(pairs[:, 0] == d)[0]
        for name, a in read(domains[int(d)], pairs[where, 1]).items():
            if name not in out:
                out[name] = np.empty((len(pairs), *a.shape[1:]), dtype=a.dtype)
            out[name][where] = a
    return out


def read_batch(reader, domains: Sequence[str], pairs: np.ndarray, *, split: str = "train", pin: bool = False,
               decode: str = "host") -> Batch | StoredBatch:
    """Read ``pairs`` ((b, 2): domain index, row index) from the store, one read per domain, in the given order.
    ``decode="device"`` returns a :class:`StoredBatch` where the store's encoding decodes on the device (its ``to``
    gives the Batch), a :class:`Batch` otherwise."""
    if decode not in DECODE_PLACES:
        raise ValueError(f"decode must be one of {DECODE_PLACES}, got {decode!r}")
    pairs = np.asarray(pairs, dtype=np.int64)
    dom = torch.from_numpy(pairs[:, 0].copy())
    if decode == "device" and device_decode.decodes_on_device(reader.meta):
        def read(d, rows):
            r = reader.read_stored_rows(d, split, rows, targets=False)
            return {"tokens": r.tokens, **r.topk}

        a = _gather(read, domains, pairs)
        out = StoredBatch(torch.from_numpy(a["tokens"]), torch.from_numpy(a[spec.ARR_TOPK_IDS]),
                          torch.from_numpy(a[spec.ARR_TOPK_LOGPROBS]), torch.from_numpy(a[spec.ARR_TOPK_TAIL]), dom,
                          *device_decode.tables(reader.meta))
    else:
        tail = reader_has_tail(reader)

        def read(d, rows):
            r = reader.read_rows(d, split, rows, targets=False)
            return {"tokens": r.tokens, "ids": r.topk_ids, "lps": r.topk_logprobs,
                    **({"tail": r.topk_log_tail.astype(np.float32, copy=False)} if tail else {})}

        a = _gather(read, domains, pairs)
        out = Batch(torch.from_numpy(a["tokens"].astype(np.int64)), torch.from_numpy(a["ids"]),
                    torch.from_numpy(a["lps"]), dom, torch.from_numpy(a["tail"]) if tail else None)
    if pin:
        out = out._map(lambda t: t.pin_memory())
    return out


def reader_has_tail(reader) -> bool:
    """Whether the store's encoding carries the tail mass (``topk_tail``: exact, or the sampled estimate); stage 2
    then uses it."""
    from ddk_store.encodings import get_encoding

    return get_encoding(reader.meta.encoding).has_tail


class Prefetcher:
    """Iterate ``Batch``es for a list of planned micro-batches, read ahead by a pool of threads (readpool.py):
    ``workers`` reads at once, at most ``max(depth, workers)`` micro-batches ahead of the loop, in plan order.

    Errors raised by a read (a corrupt chunk, a lost connection) are re-raised in the consumer at the batch where they
    happened. ``close()`` stops the reads early (at an interval boundary or on exit).
    """

    def __init__(self, reader, domains: Sequence[str], plans: Sequence[np.ndarray], *, depth: int = 4,
                 pin: bool = False, workers: int | None = None, decode: str = "host") -> None:
        domains = list(domains)
        workers = workers or default_read_workers()
        self._pool = ReadPool(lambda pairs: read_batch(reader, domains, pairs, pin=pin, decode=decode), plans,
                              workers=workers, inflight=max(depth, workers), name="ddk-prefetch")

    def __iter__(self) -> Iterator[Batch]:
        return iter(self._pool)

    def close(self) -> None:
        """Stop reading; wait briefly for reads already running (milliseconds, unless the store is down)."""
        self._pool.close()
        self._pool.join(timeout=5.0)
