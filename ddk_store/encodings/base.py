"""What every top-k encoding is: the arrays it stores, and pure numpy encode / decode / check functions.

An encoding turns the teacher's rank-ordered top-k of a batch of rows (ids and fp32 log-probs, (..., K)) into the
top-k arrays of a store group, and back into a :class:`TopK`. The arrays ``tokens`` and ``target_logprobs`` are the
same for every encoding (schema.py); an encoding owns ``topk_ids``, ``topk_logprobs`` and any array it adds (an
exact tail, sample counts). Adding an encoding is one subclass and one entry in the registry (encodings/__init__.py).
No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .. import spec

#: Shape kinds of an encoding's arrays, after the row axis: per position and entry, or per position.
PER_ENTRY = "entry"  # (N, P, K), dims row, position, k
PER_POSITION = "position"  # (N, P), dims row, position


def id_dtype(vocab_size: int) -> np.dtype:
    """On-disk dtype of token ids. uint16 keeps 65535 free as the 'missing chunk' fill value."""
    return np.dtype("<u2") if vocab_size < spec.UINT16_VOCAB_LIMIT else np.dtype("<u4")


def id_fill(vocab_size: int) -> int:
    """Fill value of id arrays: the dtype's max, never a valid id, so a missing chunk decodes as invalid."""
    return int(np.iinfo(id_dtype(vocab_size)).max)


@dataclass(frozen=True)
class StoredArray:
    """One array an encoding stores: its name, dtype, fill value (never valid data), shape kind and Blosc settings."""

    name: str
    dtype: np.dtype
    fill: Any
    kind: str  # PER_ENTRY or PER_POSITION
    shuffle: str  # Blosc shuffle: "shuffle", "bitshuffle" or "noshuffle" (cname is always zstd)
    clevel: int
    blocksize: int = 0  # Blosc block size in bytes (0: Blosc's choice)


@dataclass(frozen=True)
class TopK:
    """Decoded top-k record. ids: int32 (..., K); logprobs: float32 (..., K), nats.

    ``log_tail``: float32 (...,) log of the teacher's probability mass outside the decoded entries, for encodings that
    store it exactly (None otherwise: then the tail is ``1 - sum(exp(logprobs))``). Entries an encoding did not keep
    (absent slots) decode as log-prob -inf and repeat an id of the same position: a consumer must skip them.
    """

    ids: np.ndarray
    logprobs: np.ndarray
    log_tail: np.ndarray | None = None


class Encoding:
    """Base class of the top-k encodings; subclasses set the class attributes and implement the four methods."""

    #: The name recorded in the store's metadata (``encoding``).
    name: str = ""
    #: Whether decoded records carry ``log_tail``, a per-position tail mass (exact, or estimated when ``sampled``).
    has_tail: bool = False
    #: The ``logprob_scale`` a new store of this encoding gets when none is given (None: the encoding has none).
    default_scale: int | None = None
    #: Whether decoded probabilities are sample frequencies (an unbiased estimate of the teacher's at temperature 1
    #: only: stage 2 refuses another temperature).
    sampled: bool = False

    def bind(self, meta: Any) -> "Encoding":
        """This encoding with the parameters a store's metadata (StoreMeta) records for it; most have none."""
        return self

    def slots(self, top_k: int) -> int:
        """Entries stored per position (the last axis of the PER_ENTRY arrays) for a store of ``top_k``."""
        return top_k

    def arrays(self, vocab_size: int) -> tuple[StoredArray, ...]:
        """The arrays this encoding stores, ``topk_ids`` and ``topk_logprobs`` first (their names are fixed)."""
        raise NotImplementedError

    def encode(self, ids: np.ndarray, logprobs: np.ndarray, *, vocab_size: int, scale: int) -> dict[str, np.ndarray]:
        """Stored arrays (name -> array) of a rank-ordered top-k: ids (..., K) distinct per position, log-probs
        (..., K) fp32 nats normalized over the full vocabulary. A log-prob above 0 (fp32 rounding of a log-softmax
        near p = 1) is stored as 0: each encoding clamps where it matters (the writer does not)."""
        raise NotImplementedError

    def decode(self, stored: Mapping[str, np.ndarray], *, scale: int) -> TopK:
        """Inverse of :meth:`encode` up to quantization; entries in the encoding's stored order."""
        raise NotImplementedError

    def missing(self, stored: Mapping[str, np.ndarray], vocab_size: int) -> dict[str, np.ndarray]:
        """Per array, a bool (n,) mask of the rows holding fill values (a chunk missing or never written)."""
        out = {}
        for a in self.arrays(vocab_size):
            x = stored[a.name]
            if x.dtype.kind == "f":
                bad = np.isnan(x)
            else:  # ids (and id deltas) are < V in valid data; other integer arrays never hold their fill value
                bad = x >= vocab_size if a.name == spec.ARR_TOPK_IDS else x == a.fill
            out[a.name] = bad.reshape(len(x), -1).any(axis=1)
        return out

    def invariants(self, name: str, data: np.ndarray, vocab_size: int) -> list[str]:
        """What is wrong with the stored values of one array of this encoding (empty: nothing)."""
        raise NotImplementedError

    def pair_invariants(self, stored: Mapping[str, np.ndarray]) -> list[str]:
        """What is wrong across this encoding's arrays of one unit, each already valid on its own (empty: nothing)."""
        return []

    def __repr__(self) -> str:
        return f"<encoding {self.name}>"
