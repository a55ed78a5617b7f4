"""Pure numpy encode/decode of the top-k record, by encoding name (the registry is ddk_store/encodings).

Shapes: ids and logprobs are (..., K); the leading dims are usually (N, P). No I/O here.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .encodings import Encoding, TopK, get_encoding, id_dtype, id_fill
from .encodings.v1 import dequantize_logprobs, quantize_logprobs

__all__ = ["TopK", "decode_arrays", "decode_topk", "dequantize_logprobs", "encode_arrays", "encode_topk", "id_dtype",
           "id_fill", "quantize_logprobs", "sort_by_rank"]


def _enc(encoding: "str | Encoding") -> Encoding:
    """An encoding by name (registry defaults), or as given (a store's, bound by ``encodings.encoding_for``)."""
    return encoding if isinstance(encoding, Encoding) else get_encoding(encoding)


def _scale(encoding: "str | Encoding", scale: int | None) -> int:
    return scale if scale is not None else (_enc(encoding).default_scale or 1)


def encode_arrays(ids: np.ndarray, logprobs: np.ndarray, *, encoding: str, vocab_size: int,
                  scale: int | None = None) -> dict[str, np.ndarray]:
    """Every stored top-k array (name -> array) of a rank-ordered top-k record.

    Args:
        ids: (..., K) integer token ids in [0, vocab_size), distinct per position.
        logprobs: (..., K) log-probabilities in nats (<= 0), normalized over the full vocabulary.
        scale: the store's ``logprob_scale`` (default: the encoding's).
    """
    ids = np.asarray(ids)
    logprobs = np.asarray(logprobs, dtype=np.float32)
    if ids.shape != logprobs.shape:
        raise ValueError(f"top-k ids shape {ids.shape} != logprobs shape {logprobs.shape}")
    enc = _enc(encoding)
    return enc.encode(ids, logprobs, vocab_size=vocab_size, scale=_scale(encoding, scale))


def decode_arrays(stored: Mapping[str, np.ndarray], *, encoding: str, scale: int | None = None) -> TopK:
    """Inverse of :func:`encode_arrays` (up to quantization). Entry order is the encoding's stored order."""
    return _enc(encoding).decode(stored, scale=_scale(encoding, scale))


def encode_topk(ids: np.ndarray, logprobs: np.ndarray, *, encoding: str, vocab_size: int,
                scale: int | None = None) -> tuple[np.ndarray, ...]:
    """The stored arrays of :func:`encode_arrays` as a tuple, in the encoding's order (topk_ids, topk_logprobs, ...)."""
    return tuple(encode_arrays(ids, logprobs, encoding=encoding, vocab_size=vocab_size, scale=scale).values())


def decode_topk(ids_stored: np.ndarray, logprobs_stored: np.ndarray, *more: np.ndarray, encoding: str,
                scale: int | None = None) -> TopK:
    """Inverse of :func:`encode_topk`: the stored arrays in the encoding's order."""
    names = [a.name for a in _enc(encoding).arrays(1)]
    return decode_arrays(dict(zip(names, (ids_stored, logprobs_stored, *more))), encoding=encoding, scale=scale)


def sort_by_rank(topk: TopK) -> TopK:
    """Reorder entries of each position by descending log-prob (ties by ascending id; absent entries last)."""
    order = np.lexsort((topk.ids, -topk.logprobs), axis=-1)
    return TopK(np.take_along_axis(topk.ids, order, -1), np.take_along_axis(topk.logprobs, order, -1), topk.log_tail)
