"""The default store encoding decoded on the training device: the host reads and decompresses, the GPU decodes.

On the host, decoding the default encoding (``topk-idsort-q8-tail``) is about a third of a read's CPU (the cumulative
sum of the id deltas, two lookup-table gathers, the rescale to the exact tail: docs/benchmarks.md). On a GPU it is a
few element-wise kernels, and the stored arrays it starts from are 3 bytes per entry (uint16 id delta, uint8 code)
instead of 8 (int32 id, float32 log-prob): the host-to-device copy shrinks too. ``data.StoredBatch`` carries the
stored arrays; its ``to(device)`` copies them and calls :func:`decode` there, giving the same ``data.Batch`` as the
host decoder (tests/stage2_student/test_device_decode.py checks them against each other).

The lookup tables come from the encoding itself (``IdSortQ8Tail.tables``); :func:`rescale_shift` is the torch form
of ``ddk_store.encodings.tail.rescale_shift`` (the same formula, float64, non-finite shifts to 0).
"""

from __future__ import annotations

import numpy as np
import torch

from ddk_store import spec
from ddk_store.encodings import get_encoding

#: The encodings this module decodes; every other one is decoded on the host, as before.
DEVICE_ENCODINGS = frozenset({spec.ENC_IDSORT_Q8_TAIL})


def decodes_on_device(meta) -> bool:
    """Whether a store with this metadata can be decoded by :class:`StoredBatch` (its encoding is one we decode)."""
    return meta.encoding in DEVICE_ENCODINGS


def tables(meta) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob, probability) per 8-bit code of this store's scale, float32 (256,), read-only on the host."""
    lut, plut = get_encoding(meta.encoding).tables(meta.logprob_scale)
    return torch.from_numpy(np.array(lut)), torch.from_numpy(np.array(plut))


def rescale_shift(kept_mass: torch.Tensor, log_tail: torch.Tensor) -> torch.Tensor:
    """float32 ``log(1 - exp(log_tail)) - log(kept_mass)`` per position, 0 where not finite (ddk_store's formula)."""
    kept = -torch.expm1(torch.clamp(log_tail.double(), max=0.0))
    r = torch.log(kept) - torch.log(kept_mass.double())
    return torch.where(torch.isfinite(r), r, torch.zeros_like(r)).float()


def ids_from_deltas(deltas: torch.Tensor) -> torch.Tensor:
    """int32 ids: the cumulative sum of the stored deltas along the entries (uint16, or uint32 for vocabularies of
    65,535 and more; every id is below 2^31)."""
    wide = torch.int64 if deltas.dtype == torch.uint32 else torch.int32
    return torch.cumsum(deltas.to(wide), dim=-1, dtype=wide).to(torch.int32)


def decode(deltas: torch.Tensor, codes: torch.Tensor, tail16: torch.Tensor, lut: torch.Tensor,
           plut: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids int32, log-probs float32, log tail float32) of ``topk-idsort-q8-tail`` arrays, on their device."""
    idx = codes.to(torch.int64)
    kept = plut[idx].sum(dim=-1)
    log_tail = tail16.float()
    lps = lut[idx]
    lps += rescale_shift(kept, log_tail).unsqueeze(-1)
    return ids_from_deltas(deltas), lps, log_tail
