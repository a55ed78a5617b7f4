"""``topk-idsort-q8-tail`` (format 1.1, the default): entries above a probability floor, 8-bit log-probs, exact tail.

Per position, an entry is kept when its quantized code ``v = round(-logprob * scale)`` is at most ``TAIL_Q_MAX``
(253: log-prob above -253.5/scale, -7.92 nats or p > 3.6e-4 at the default scale 32); the most probable entry
(rank 0: the input is rank-ordered, as every backend gives it) is always kept (saturated at 253 if it lies below). The kept entries are sorted by ascending id and stored first (ids as
deltas, log-probs as ``v``); the slots after them are absent (delta 0, code ``TAIL_Q_ABSENT``). ``topk_tail`` holds
the float16 log of the teacher's exact mass outside the kept entries (tail.py); decoding rescales the kept
probabilities so that they and the tail sum to 1. Log-prob error above the floor: 1/(2*scale) rounding plus at most
as much from the rescale, 1/32 nat at scale 32.
"""

from __future__ import annotations

import functools
from typing import Mapping

import numpy as np

from .. import kernels, spec
from .base import PER_ENTRY, PER_POSITION, Encoding, StoredArray, TopK, id_dtype, id_fill
from .tail import TAIL_DTYPE, encode_tail, outside_mass, rescale_shift
from .v1 import (absent_last_invariants, delta_ids_invariants, dequantize_logprobs, id_deltas, ids_from_deltas,
                 padded_pair_invariants)

#: Largest code of a kept entry; TAIL_Q_ABSENT marks a slot without an entry; Q8_FILL (255) is missing data.
TAIL_Q_MAX = 253
TAIL_Q_ABSENT = 254
#: Default scale: steps of 1/32 nat, so rounding (1/64) plus rescale (1/64) stay within 1/32 nat.
TAIL_SCALE = 32


#: Blosc block size of the top-k arrays: one block per chunk of up to 256 KiB (a 2048-token row of ids is 256 KiB).
BLOCK_BYTES = 1 << 18


@functools.lru_cache(maxsize=None)
def _luts(scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Lookup tables over the 256 codes: log-prob and probability (absent and fill: -inf and 0). Read-only."""
    lut = dequantize_logprobs(np.arange(256, dtype=np.uint8), scale)
    lut[TAIL_Q_ABSENT:] = -np.inf
    plut = np.exp(lut)
    lut.flags.writeable = plut.flags.writeable = False
    return lut, plut


class IdSortQ8Tail(Encoding):
    name = spec.ENC_IDSORT_Q8_TAIL
    has_tail = True
    default_scale = TAIL_SCALE

    def arrays(self, vocab_size: int) -> tuple[StoredArray, ...]:
        # zstd-1 with one Blosc block per chunk: within 2 B/token of zstd-3 on the ids at 3-4x its speed
        # (bench/store_codec.py; the write target is 1 M tokens/s on 2 cores).
        return (StoredArray(spec.ARR_TOPK_IDS, id_dtype(vocab_size), id_fill(vocab_size), PER_ENTRY, "shuffle", 1,
                            BLOCK_BYTES),
                StoredArray(spec.ARR_TOPK_LOGPROBS, np.dtype("u1"), spec.Q8_FILL, PER_ENTRY, "noshuffle", 1,
                            BLOCK_BYTES),
                StoredArray(spec.ARR_TOPK_TAIL, TAIL_DTYPE, float("nan"), PER_POSITION, "shuffle", 1))

    def encode(self, ids, logprobs, *, vocab_size, scale):
        # In place on few temporaries: this runs for every token of a dump (about 10 ns per entry). Log-probs above
        # 0 need no clamp: they quantize to code 0 and leave a zero tail, as 0 does.
        lp = np.asarray(logprobs, dtype=np.float32)
        v = lp * np.float32(-scale)
        np.rint(v, out=v)
        drop = v > TAIL_Q_MAX
        drop[..., :1] = False  # the most probable entry (rank 0) is always kept
        np.clip(v, 0, TAIL_Q_MAX, out=v)
        # One sort of a packed (id << 8 | code) key per position; dropped entries get the largest key (all ones), so
        # they sort after the kept ones (ids < 2^24 fit a uint32 key, larger vocabularies a uint64 one). Masks are
        # applied arithmetically: np.putmask on a scattered mask costs about 10x a multiply.
        wide = np.uint32 if vocab_size < (1 << 24) else np.uint64
        top = np.iinfo(wide).max
        key = ids.astype(wide)
        key <<= wide(8)
        key |= v.astype(np.uint8)
        ones = drop.view(np.uint8).astype(wide)
        np.negative(ones, out=ones)  # 1 -> all ones
        key |= ones
        key.sort(axis=-1)
        absent = key == top
        codes = key.astype(np.uint8)  # the low byte: 255 on absent slots
        np.subtract(codes, absent.view(np.uint8), out=codes)  # 255 -> TAIL_Q_ABSENT (254)
        key >>= wide(8)
        deltas = np.empty(key.shape, dtype=id_dtype(vocab_size))
        deltas[..., :1] = key[..., :1]
        np.subtract(key[..., 1:], key[..., :-1], out=deltas[..., 1:], casting="unsafe")
        np.logical_not(absent, out=absent)
        np.multiply(deltas, absent.view(np.uint8), out=deltas, casting="unsafe")  # absent slots: delta 0
        return {spec.ARR_TOPK_IDS: deltas, spec.ARR_TOPK_LOGPROBS: codes,
                spec.ARR_TOPK_TAIL: encode_tail(outside_mass(lp, drop=drop))}

    def tables(self, scale: int) -> tuple[np.ndarray, np.ndarray]:
        """The decode's lookup tables, float32 (256,) read-only: log-prob and probability of each 8-bit code
        (absent and fill: -inf and 0). Also what a decoder on another device gathers from."""
        return _luts(scale)

    def decode(self, stored: Mapping[str, np.ndarray], *, scale: int) -> TopK:
        codes = stored[spec.ARR_TOPK_LOGPROBS]
        lut, plut = _luts(scale)
        log_tail = stored[spec.ARR_TOPK_TAIL].astype(np.float32)
        compiled = kernels.decode_q8_tail(stored[spec.ARR_TOPK_IDS], codes, log_tail, lut, plut)
        if compiled is not None:  # the same decode in one pass per position (kernels.py, _kernels.c)
            return TopK(compiled[0], compiled[1], log_tail)
        lp = np.take(lut, codes)  # np.take: about twice as fast as fancy indexing on a 256-entry table
        r = rescale_shift(np.take(plut, codes).sum(axis=-1, dtype=np.float32), log_tail)
        lp += r[..., None]
        return TopK(ids_from_deltas(stored[spec.ARR_TOPK_IDS]), lp, log_tail)

    def invariants(self, name, data, vocab_size):
        if data.size == 0:
            return []
        if name == spec.ARR_TOPK_IDS:
            return delta_ids_invariants(data, vocab_size)
        if name == spec.ARR_TOPK_LOGPROBS:
            if data.max() > TAIL_Q_ABSENT:
                return [f"quantized log-prob {int(data.max())} > {TAIL_Q_ABSENT} (fill value: missing data)"]
            absent = data == TAIL_Q_ABSENT
            if data.shape[-1] and absent[..., 0].any():
                return ["position without any kept entry (first slot absent)"]
            return absent_last_invariants(absent, "kept")
        if name == spec.ARR_TOPK_TAIL and (np.isnan(data) | (data > 0)).any():
            return ["tail log-mass NaN or > 0"]
        return []

    def pair_invariants(self, stored: Mapping[str, np.ndarray]) -> list[str]:
        """Checks across arrays: kept ids are distinct (delta >= 1 after the first); absent slots have delta 0."""
        codes = stored[spec.ARR_TOPK_LOGPROBS]
        return padded_pair_invariants(stored[spec.ARR_TOPK_IDS], codes[..., 1:] != TAIL_Q_ABSENT, "kept")
