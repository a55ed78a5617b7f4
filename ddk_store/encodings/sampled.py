"""``topk-sampled`` (format 1.2): N draws per position from the teacher, stored as unique ids with counts.

Random-Sampling KD (Anshumann et al., ACL 2025, arXiv 2503.16870). The writer sees the teacher's top-k (fp32
log-probs normalized over the full vocabulary) and the exact remaining mass ``1 - sum(p)``; it draws N times from
these K + 1 outcomes (the tail is one bucket, its ids unknown). Stored per position: the distinct sampled ids sorted
ascending (as deltas, like ``topk-idsort-q8-tail``) and their uint8 draw counts in the first slots, then absent slots
(delta 0, count 0). The tail's draws are ``N - sum(counts)``, derived from ``sampling.samples`` (0 bytes). A store
of top_k K has ``min(N, K)`` slots per position: no more ids can be distinct.

Decoded: log-prob ``log(count / N)`` (-inf for absent slots) and log-tail ``log(tail_count / N)``. With the teacher
as the proposal, ``count / N`` is the paper's unbiased estimate of the teacher's probability (docs/store-format.md).

Determinism: every row (the leading index of a (rows, positions, K) input) draws from its own stream, seeded by the
store's seed and a BLAKE2b hash of the row's input (ids as int32, log-probs as float32), so reruns, resumes, shards
and any split of a unit into row blocks write the same bytes. No global random state is used.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import numpy as np

from .. import spec
from .base import PER_ENTRY, Encoding, StoredArray, TopK, id_dtype, id_fill
from .v1 import absent_last_invariants, delta_ids_invariants, id_deltas, ids_from_deltas, padded_pair_invariants

#: Count of an absent slot; spec.Q8_FILL (255) marks missing data and never occurs (N <= spec.MAX_SAMPLES).
COUNT_ABSENT = 0


def outcome_probs(logprobs: np.ndarray) -> np.ndarray:
    """(..., K + 1) float64: the K entries' probabilities and the tail ``1 - sum`` (clipped at 0), normalized."""
    p = np.exp(logprobs.astype(np.float64))
    tail = np.clip(1.0 - p.sum(axis=-1, keepdims=True), 0.0, 1.0)
    out = np.concatenate([p, tail], axis=-1)
    return out / out.sum(axis=-1, keepdims=True)


def row_rng(seed: int, ids: np.ndarray, logprobs: np.ndarray) -> np.random.Generator:
    """The random stream of one row: seeded by the store's seed and a hash of the row's input."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(ids, dtype="<i4").tobytes())
    h.update(np.ascontiguousarray(logprobs, dtype="<f4").tobytes())
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, int.from_bytes(h.digest(), "little")])))


def draw_counts(probs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(..., K + 1) int64 counts of ``n`` draws per position from ``probs`` (..., K + 1) (last: the tail).

    Inverse CDF: a uniform ``u`` lands in outcome j when ``cdf[j-1] <= u < cdf[j]``. One searchsorted for all
    positions: position i's cdf steps and uniforms are offset by i (float64: a resolution of 2^-28 or finer for
    fewer than 2^24 positions), so the steps of all positions form one non-decreasing array.
    """
    lead, k1 = probs.shape[:-1], probs.shape[-1]
    cdf = np.cumsum(probs.reshape(-1, k1), axis=-1)
    cdf /= cdf[:, -1:]
    m = cdf.shape[0]
    pos = np.arange(m)
    edges = (cdf[:, :-1] + pos[:, None].astype(np.float64)).ravel()  # the K inner steps of each position
    u = rng.random((m, n))
    u.sort(axis=-1)  # counts do not depend on the draws' order; sorted keys make the search below ~2.5x faster
    u += pos[:, None]
    bucket = np.searchsorted(edges, u.ravel(), side="right").reshape(m, n) - (pos * (k1 - 1))[:, None]
    np.clip(bucket, 0, k1 - 1, out=bucket)  # rounding of u + i to i + 1 (u within 2^-28 of 1): the tail
    bucket += (pos * k1)[:, None]
    return np.bincount(bucket.ravel(), minlength=m * k1).reshape(*lead, k1)


class Sampled(Encoding):
    """N draws per position; unique ids (deltas) with uint8 counts, absent slots last; the tail's count derived."""

    name = spec.ENC_SAMPLED
    has_tail = True  # decoded records carry log_tail (an estimate, like every other entry)
    sampled = True
    default_scale = None  # logprob_scale is recorded (spec.DEFAULT_LOGPROB_SCALE) and unused

    def __init__(self, samples: int = spec.DEFAULT_SAMPLES, seed: int = 0) -> None:
        if not 1 <= samples <= spec.MAX_SAMPLES:
            raise ValueError(f"samples must be in [1, {spec.MAX_SAMPLES}], got {samples}")
        self.samples, self.seed = samples, seed

    def bind(self, meta: Any) -> "Sampled":
        s = getattr(meta, "sampling", None)
        return self if s is None else Sampled(s.samples, s.seed)

    def slots(self, top_k: int) -> int:
        return min(self.samples, top_k)

    def arrays(self, vocab_size: int) -> tuple[StoredArray, ...]:
        # zstd levels on real SmolLM2 top-64 at N = 64 (bench/store_codec.py data), ids/counts -> B/token in all and
        # write CPU: 3/3 31.3, 5/7 29.5 at the same CPU, 8/8 27.2 at 2x, 9/9 26.8 at 15x; bitshuffle costs more.
        return (StoredArray(spec.ARR_TOPK_IDS, id_dtype(vocab_size), id_fill(vocab_size), PER_ENTRY, "shuffle", 5),
                StoredArray(spec.ARR_TOPK_LOGPROBS, np.dtype("u1"), spec.Q8_FILL, PER_ENTRY, "noshuffle", 7))

    def counts(self, ids: np.ndarray, logprobs: np.ndarray) -> np.ndarray:
        """(..., K + 1) draw counts of each entry (rank order as given) and of the tail (last), row by row."""
        k = ids.shape[-1]
        lead = ids.shape[:-1]
        ids3 = ids.reshape(-1, *(lead[-1:] or (1,)), k)
        lp3 = logprobs.reshape(ids3.shape)
        out = np.empty((*ids3.shape[:-1], k + 1), dtype=np.int64)
        for r in range(ids3.shape[0]):
            out[r] = draw_counts(outcome_probs(lp3[r]), self.samples, row_rng(self.seed, ids3[r], lp3[r]))
        return out.reshape(*lead, k + 1)

    def encode(self, ids, logprobs, *, vocab_size, scale):
        ids = np.asarray(ids)
        lp = np.minimum(np.asarray(logprobs, dtype=np.float32), 0.0)
        counts = self.counts(ids, lp)[..., :-1]
        s = self.slots(ids.shape[-1])
        wide = np.uint32 if vocab_size < (1 << 24) else np.uint64
        key = (ids.astype(wide) << wide(8)) | counts.astype(wide)
        absent_key = np.iinfo(wide).max
        key[counts == 0] = absent_key
        key.sort(axis=-1)
        key = np.ascontiguousarray(key[..., :s])  # at most s = min(N, K) ids are distinct
        absent = key == absent_key
        stored_counts = (key & wide(0xFF)).astype(np.uint8)
        stored_counts[absent] = COUNT_ABSENT
        deltas = id_deltas(key >> wide(8), vocab_size)
        deltas[absent] = 0  # absent slots repeat the last sampled id
        return {spec.ARR_TOPK_IDS: deltas, spec.ARR_TOPK_LOGPROBS: stored_counts}

    def decode(self, stored: Mapping[str, np.ndarray], *, scale: int) -> TopK:
        counts = stored[spec.ARR_TOPK_LOGPROBS]
        n = self.samples
        with np.errstate(divide="ignore"):  # log(0) = -inf: absent slots, an empty tail
            lut = np.log(np.arange(256, dtype=np.float64) / n).astype(np.float32)
        lut[n + 1:] = -np.inf  # not valid data (the validator names it)
        tail = np.clip(n - counts.sum(axis=-1, dtype=np.int64), 0, n)
        return TopK(ids_from_deltas(stored[spec.ARR_TOPK_IDS]), lut[counts], lut[tail])

    def invariants(self, name, data, vocab_size):
        if data.size == 0:
            return []
        if name == spec.ARR_TOPK_IDS:
            return delta_ids_invariants(data, vocab_size)
        if name == spec.ARR_TOPK_LOGPROBS:
            if data.max() > self.samples:
                return [f"draw count {int(data.max())} > sampling.samples {self.samples} (255: missing data)"]
            bad = absent_last_invariants(data == COUNT_ABSENT, "sampled")
            if bad:
                return bad
            total = data.sum(axis=-1, dtype=np.int64)
            if total.max() > self.samples:
                return [f"draw counts of a position sum to {int(total.max())} > sampling.samples {self.samples}"]
        return []

    def pair_invariants(self, stored: Mapping[str, np.ndarray]) -> list[str]:
        """Sampled ids are distinct (delta >= 1 after the first); absent slots have delta 0."""
        d, counts = stored[spec.ARR_TOPK_IDS], stored[spec.ARR_TOPK_LOGPROBS]
        bad = padded_pair_invariants(d, counts[..., 1:] != COUNT_ABSENT, "sampled")
        if not bad and ((counts[..., 0] == COUNT_ABSENT) & (d[..., 0] != 0)).any():
            bad = ["absent slot with a non-zero id delta"]
        return bad

    def __repr__(self) -> str:
        return f"<encoding {self.name} N={self.samples} seed={self.seed}>"
