"""Pure numpy encode/decode of the top-k record for each encoding in spec.ENCODINGS.

Shapes: ids and logprobs are (..., K); the leading dims are usually (N, P). No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import spec
from .errors import StoreFormatError


def id_dtype(vocab_size: int) -> np.dtype:
    """On-disk dtype of token ids. uint16 keeps 65535 free as the 'missing chunk' fill value."""
    return np.dtype("<u2") if vocab_size < spec.UINT16_VOCAB_LIMIT else np.dtype("<u4")


def id_fill(vocab_size: int) -> int:
    """Fill value of id arrays: the dtype's max, never a valid id, so a missing chunk decodes as invalid."""
    return int(np.iinfo(id_dtype(vocab_size)).max)


def logprob_dtype(encoding: str) -> np.dtype:
    return np.dtype("<f2") if encoding == spec.ENC_RANK_F16 else np.dtype("u1")


def logprob_fill(encoding: str) -> float | int:
    """Fill of topk_logprobs: NaN (f16) or Q8_FILL (u8); neither is a valid stored value."""
    return float("nan") if encoding == spec.ENC_RANK_F16 else spec.Q8_FILL


@dataclass(frozen=True)
class TopK:
    """Decoded top-k record. ids: int32 (..., K); logprobs: float32 (..., K), nats."""

    ids: np.ndarray
    logprobs: np.ndarray


def quantize_logprobs(logprobs: np.ndarray, scale: int) -> np.ndarray:
    """v = round(-logprob * scale), saturated to [0, Q8_MAX]: |error| <= 1/(2*scale) above the floor."""
    v = np.rint(np.negative(logprobs, dtype=np.float32) * np.float32(scale))
    return np.clip(v, 0, spec.Q8_MAX).astype(np.uint8)


def dequantize_logprobs(v: np.ndarray, scale: int) -> np.ndarray:
    return v.astype(np.float32) * np.float32(-1.0 / scale)


def encode_topk(ids: np.ndarray, logprobs: np.ndarray, *, encoding: str, vocab_size: int,
                scale: int = spec.DEFAULT_LOGPROB_SCALE) -> tuple[np.ndarray, np.ndarray]:
    """Encode a rank-ordered top-k record into the two stored arrays (ids_stored, logprobs_stored).

    Args:
        ids: (..., K) integer token ids in [0, vocab_size), distinct per position.
        logprobs: (..., K) log-probabilities in nats (<= 0).
    """
    ids = np.asarray(ids)
    logprobs = np.asarray(logprobs, dtype=np.float32)
    if ids.shape != logprobs.shape:
        raise ValueError(f"top-k ids shape {ids.shape} != logprobs shape {logprobs.shape}")
    idt = id_dtype(vocab_size)
    if encoding == spec.ENC_RANK_F16:
        return ids.astype(idt), logprobs.astype(np.float16)
    if encoding == spec.ENC_IDSORT_Q8:
        # Pack (id, quantized logprob) into one uint32/uint64 key and sort once: the vectorized sort of a plain
        # integer array is several times faster than argsort + take_along_axis.
        q = quantize_logprobs(logprobs, scale)
        if vocab_size < 2**24:
            key = (ids.astype(np.uint32) << np.uint32(8)) | q
        else:
            key = (ids.astype(np.uint64) << np.uint64(8)) | q
        key.sort(axis=-1)
        sorted_ids = key >> 8
        deltas = np.diff(sorted_ids, axis=-1, prepend=np.zeros_like(sorted_ids[..., :1]))
        return deltas.astype(idt), (key & 0xFF).astype(np.uint8)
    raise StoreFormatError(f"unknown top-k encoding {encoding!r}; known: {list(spec.ENCODINGS)}")


def decode_topk(ids_stored: np.ndarray, logprobs_stored: np.ndarray, *, encoding: str,
                scale: int = spec.DEFAULT_LOGPROB_SCALE) -> TopK:
    """Inverse of encode_topk (up to quantization). Entry order is the encoding's stored order."""
    if encoding == spec.ENC_RANK_F16:
        return TopK(ids_stored.astype(np.int32), logprobs_stored.astype(np.float32))
    if encoding == spec.ENC_IDSORT_Q8:
        ids = np.cumsum(ids_stored, axis=-1, dtype=np.int64 if ids_stored.dtype == np.uint32 else np.int32)
        return TopK(ids.astype(np.int32, copy=False), dequantize_logprobs(logprobs_stored, scale))
    raise StoreFormatError(f"unknown top-k encoding {encoding!r}; known: {list(spec.ENCODINGS)}")


def sort_by_rank(topk: TopK) -> TopK:
    """Reorder entries of each position by descending log-prob (ties by ascending id)."""
    order = np.lexsort((topk.ids, -topk.logprobs), axis=-1)
    return TopK(np.take_along_axis(topk.ids, order, -1), np.take_along_axis(topk.logprobs, order, -1))
