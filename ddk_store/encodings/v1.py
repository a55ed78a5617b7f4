"""The two encodings of format 1.0: ``topk-idsort-q8`` and ``topk-rank-f16`` (docs/store-format.md, section 4)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .. import spec
from .base import PER_ENTRY, Encoding, StoredArray, TopK, id_dtype, id_fill


def quantize_logprobs(logprobs: np.ndarray, scale: int, top: int = spec.Q8_MAX) -> np.ndarray:
    """v = round(-logprob * scale), saturated to [0, top]: |error| <= 1/(2*scale) above the floor -top/scale."""
    v = np.rint(np.negative(logprobs, dtype=np.float32) * np.float32(scale))
    return np.clip(v, 0, top).astype(np.uint8)


def dequantize_logprobs(v: np.ndarray, scale: int) -> np.ndarray:
    return v.astype(np.float32) * np.float32(-1.0 / scale)


def sort_by_id(ids: np.ndarray, codes: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, uint8 codes) of each position sorted by ascending id, with one sort of a packed integer key.

    The vectorized sort of a plain integer array is several times faster than argsort + take_along_axis.
    """
    wide = np.uint32 if vocab_size < 2**24 else np.uint64
    key = (ids.astype(wide) << wide(8)) | codes
    key.sort(axis=-1)
    return key >> wide(8), (key & wide(0xFF)).astype(np.uint8)


def id_deltas(sorted_ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """``d[0] = id[0]``, ``d[j] = id[j] - id[j-1]``, in the id dtype: what ``cumsum`` turns back into the ids."""
    deltas = np.diff(sorted_ids, axis=-1, prepend=np.zeros_like(sorted_ids[..., :1]))
    return deltas.astype(id_dtype(vocab_size))


def ids_from_deltas(deltas: np.ndarray) -> np.ndarray:
    """int32 ids from stored deltas: the cumulative sum along the entries.

    Computed as one cumulative sum over the whole (contiguous) array minus each position's running total before it:
    several times faster than a cumulative sum along a short last axis. The flat sum wraps modulo 2^32 (2^64 for
    uint32 deltas), which the subtraction undoes exactly, as every id is below 2^31.
    """
    if deltas.size == 0 or deltas.ndim == 0:
        return np.cumsum(deltas, axis=-1, dtype=np.int64).astype(np.int32)
    wide = np.uint64 if deltas.dtype.itemsize >= 4 else np.uint32
    k = deltas.shape[-1]
    flat = np.cumsum(deltas.reshape(-1), dtype=wide).reshape(-1, k)
    before = np.empty(len(flat), dtype=wide)
    before[0] = 0
    before[1:] = flat[:-1, -1]
    flat -= before[:, None]
    # Every id is below 2^31, so the uint32 result is its int32 view (no copy).
    ids = flat.view(np.int32) if wide is np.uint32 else flat.astype(np.int32)
    return ids.reshape(deltas.shape)


def delta_ids_invariants(deltas: np.ndarray, vocab_size: int) -> list[str]:
    """What is wrong with stored id deltas on their own: an id (their cumulative sum) at or above vocab_size."""
    if deltas.size == 0:
        return []
    return _ids_invariants(np.cumsum(deltas, axis=-1, dtype=np.int64), vocab_size)


def absent_last_invariants(absent: np.ndarray, entry: str) -> list[str]:
    """What is wrong with where a position's absent slots lie: an ``entry`` (kept, sampled) after one."""
    if (absent[..., :-1] & ~absent[..., 1:]).any():
        return [f"{entry} entry after an absent slot (absent slots must come last)"]
    return []


def padded_pair_invariants(deltas: np.ndarray, present: np.ndarray, entry: str) -> list[str]:
    """Checks across the id deltas and the entries of a padded encoding (``present``: the slots 1.. holding an
    entry): present ids are distinct (delta >= 1 after the first), absent slots have delta 0."""
    if (present & (deltas[..., 1:] == 0)).any():
        return [f"repeated {entry} id within a position (zero delta on a {entry} entry)"]
    if (~present & (deltas[..., 1:] != 0)).any():
        return ["absent slot with a non-zero id delta"]
    return []


def _ids_invariants(ids: np.ndarray, vocab_size: int) -> list[str]:
    if ids.size and ids.max() >= vocab_size:
        return [f"top-k id {int(ids.max())} >= vocab_size {vocab_size}"]
    return []


class IdSortQ8(Encoding):
    """Entries sorted by ascending id; ids as deltas; log-probs as uint8 v = round(-lp * scale), saturating at 254."""

    name = spec.ENC_IDSORT_Q8
    default_scale = spec.DEFAULT_LOGPROB_SCALE

    def arrays(self, vocab_size: int) -> tuple[StoredArray, ...]:
        return (StoredArray(spec.ARR_TOPK_IDS, id_dtype(vocab_size), id_fill(vocab_size), PER_ENTRY, "shuffle", 3),
                StoredArray(spec.ARR_TOPK_LOGPROBS, np.dtype("u1"), spec.Q8_FILL, PER_ENTRY, "bitshuffle", 1))

    def encode(self, ids, logprobs, *, vocab_size, scale):  # quantizing clamps log-probs above 0 to code 0
        sorted_ids, codes = sort_by_id(ids, quantize_logprobs(logprobs, scale), vocab_size)
        return {spec.ARR_TOPK_IDS: id_deltas(sorted_ids, vocab_size), spec.ARR_TOPK_LOGPROBS: codes}

    def decode(self, stored: Mapping[str, np.ndarray], *, scale: int) -> TopK:
        return TopK(ids_from_deltas(stored[spec.ARR_TOPK_IDS]),
                    dequantize_logprobs(stored[spec.ARR_TOPK_LOGPROBS], scale))

    def invariants(self, name, data, vocab_size):
        if name == spec.ARR_TOPK_IDS:
            if (data[..., 1:] == 0).any():
                return ["repeated top-k id within a position (zero delta)"]
            return _ids_invariants(np.cumsum(data, axis=-1, dtype=np.int64), vocab_size)
        if name == spec.ARR_TOPK_LOGPROBS and data.size and data.max() > spec.Q8_MAX:
            return [f"quantized log-prob {int(data.max())} > {spec.Q8_MAX} (fill value: missing data)"]
        return []


class RankF16(Encoding):
    """Entries in rank order (descending log-prob); ids as they are; log-probs as float16."""

    name = spec.ENC_RANK_F16
    default_scale = spec.DEFAULT_LOGPROB_SCALE  # recorded in the metadata, unused by this encoding

    def arrays(self, vocab_size: int) -> tuple[StoredArray, ...]:
        return (StoredArray(spec.ARR_TOPK_IDS, id_dtype(vocab_size), id_fill(vocab_size), PER_ENTRY, "shuffle", 3),
                StoredArray(spec.ARR_TOPK_LOGPROBS, np.dtype("<f2"), float("nan"), PER_ENTRY, "bitshuffle", 1))

    def encode(self, ids, logprobs, *, vocab_size, scale):
        return {spec.ARR_TOPK_IDS: ids.astype(id_dtype(vocab_size)),
                spec.ARR_TOPK_LOGPROBS: np.minimum(logprobs, 0.0).astype(np.float16)}

    def decode(self, stored: Mapping[str, np.ndarray], *, scale: int) -> TopK:
        return TopK(stored[spec.ARR_TOPK_IDS].astype(np.int32), stored[spec.ARR_TOPK_LOGPROBS].astype(np.float32))

    def invariants(self, name, data, vocab_size):
        if name == spec.ARR_TOPK_IDS:
            ids = np.sort(data.astype(np.int64), axis=-1)
            if (ids[..., 1:] == ids[..., :-1]).any():
                return ["repeated top-k id within a position"]
            return _ids_invariants(ids, vocab_size)
        if name == spec.ARR_TOPK_LOGPROBS and (~np.isfinite(data) | (data > 0)).any():
            return ["top-k log-prob not finite or > 0"]
        return []
