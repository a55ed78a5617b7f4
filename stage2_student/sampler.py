"""Domain-weighted interval sampler: which (domain, row) pairs feed each step of a DDK interval.

Per interval (Algorithm 1, lines 12-13): a deterministic largest-remainder allocation of ``K * batch_size`` rows over
the domains by the current weights (its rounding carried to the next interval, so it favours no domain), filled from
per-domain shuffled streams that cycle with a fresh shuffle when a domain is exhausted ("continues cyclically"), then
one global shuffle so every batch mixes domains.

Randomness is a pure function of explicit seeds (streaming's ``seed + epoch`` pattern): domain d's stream in epoch e is
``permutation(seed, d, e)``, and interval t's shuffle is ``permutation(seed, t)``. The whole state is therefore a few
numbers per domain, which makes ``state_dict`` tiny, JSON-friendly and exact on resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# Distinct first words of the seed sequences, so a stream and an interval shuffle never share a generator.
_STREAM_TAG = 0
_SHUFFLE_TAG = 1


def largest_remainder(weights: Sequence[float], total: int) -> np.ndarray:
    """Split ``total`` items over len(weights) bins as close to ``weights * total`` as integers allow.

    Each bin gets floor(w*total); the leftover units go to the largest fractional parts (ties: lower index).
    Every count is within 1 of w*total and the counts sum to ``total`` exactly (lower variance than a multinomial).
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"weights must be finite, non-negative, with a positive sum; got {w.tolist()}")
    w = w / w.sum()
    exact = w * total
    counts = np.floor(exact).astype(np.int64)
    short = int(total - counts.sum())
    # Stable sort on the negated remainder: ties go to the lower index, deterministically.
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:short]] += 1
    return counts


def allocate(weights: Sequence[float], total: int,
             owed: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One interval's rows per domain, carrying each domain's rounding to the next interval.

    ``owed[d]`` is what earlier intervals' rounding still owes domain d (target rows minus rows drawn, within about
    a row either way). This interval's target is ``w * total + owed``; :func:`largest_remainder` splits ``total``
    over the targets that are positive, and what it rounds away is owed to the next interval. Rounding alone would
    favour the same domains every interval (under fixed weights [.5 .2 .15 .1 .05] and 37 rows an interval, the
    long-run frequencies were [.486 .189 .162 .108 .054]); carried, each domain's running count stays within about
    a row of the running sum of its targets. A domain of weight 0 gets no row and owes nothing.

    Returns:
        (counts, owed after this interval), each of len(weights); the counts sum to ``total``.
    """
    w = np.asarray(weights, dtype=np.float64)
    counts = largest_remainder(w, total)  # validates the weights
    c = np.zeros(len(w)) if owed is None else np.asarray(owed, dtype=np.float64)
    if c.shape != w.shape or not np.isfinite(c).all():
        raise ValueError(f"owed rows must be {len(w)} finite numbers; got {c.tolist()}")
    p = w / w.sum()
    target = np.where(p > 0, p * total + c, 0.0)
    if total and np.any(target > 0):
        counts = largest_remainder(np.maximum(target, 0.0), total)
    return counts, target - counts


def stream_rows(num_rows: int, *, seed: int, domain: int, start: int, count: int) -> np.ndarray:
    """Rows ``[start, start+count)`` of domain ``domain``'s infinite stream: epoch e is a fresh permutation."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if num_rows <= 0:
        raise ValueError(f"domain {domain} has no training rows but {count} were requested")
    out = []
    pos, end = start, start + count
    while pos < end:
        epoch, offset = divmod(pos, num_rows)
        perm = np.random.default_rng([seed, _STREAM_TAG, domain, epoch]).permutation(num_rows)
        take = min(num_rows - offset, end - pos)
        out.append(perm[offset : offset + take])
        pos += take
    return np.concatenate(out)


class DomainSampler:
    """Stateful shell over the pure functions above: one plan of ``rows_per_interval`` rows per interval.

    Args:
        num_rows: training rows per domain (D entries).
        rows_per_interval: K * batch_size (global batch, all ranks and micro-steps).
        seed: run seed.
    """

    def __init__(self, num_rows: Sequence[int], *, rows_per_interval: int, seed: int) -> None:
        self.num_rows = [int(n) for n in num_rows]
        self.rows_per_interval = int(rows_per_interval)
        self.seed = int(seed)
        self.consumed = np.zeros(len(self.num_rows), dtype=np.int64)  # rows drawn so far from each stream
        self.owed = np.zeros(len(self.num_rows))  # rounding carried to the next interval (:func:`allocate`)
        self.interval = -1
        self.weights: np.ndarray | None = None
        self._consumed_at_start = self.consumed.copy()
        self._owed_at_start = self.owed.copy()
        self.plan = np.zeros((0, 2), dtype=np.int64)  # [rows_per_interval, 2]: (domain index, row index)

    def start_interval(self, interval: int, weights: Sequence[float]) -> np.ndarray:
        """Build and return the shuffled plan of interval ``interval`` drawn with ``weights``."""
        w = np.asarray(weights, dtype=np.float64)
        self._consumed_at_start, self._owed_at_start = self.consumed.copy(), self.owed.copy()
        counts, self.owed = allocate(w, self.rows_per_interval, self.owed)
        parts = []
        for d, c in enumerate(counts):
            rows = stream_rows(self.num_rows[d], seed=self.seed, domain=d, start=int(self.consumed[d]), count=int(c))
            self.consumed[d] += c
            parts.append(np.stack([np.full(c, d, dtype=np.int64), rows], axis=1))
        plan = np.concatenate(parts)
        shuffle = np.random.default_rng([self.seed, _SHUFFLE_TAG, interval]).permutation(len(plan))
        self.plan = plan[shuffle]
        self.interval = interval
        self.weights = w.copy()
        return self.plan

    def rows_for(self, step_in_interval: int, *, batch_size: int, chunk: int, num_chunks: int) -> np.ndarray:
        """(domain, row) pairs, shape [batch_size // num_chunks, 2], of one chunk of one step's global batch.

        The global batch of a step is cut into ``world_size * grad_accum`` equal chunks; rank r's micro-step m reads
        chunk ``r * grad_accum + m``. One process with grad_accum=2 and two ranks with grad_accum=1 therefore see the
        same chunks, which is what makes a DDP run agree with a single-process one.
        """
        per_chunk = batch_size // num_chunks
        start = step_in_interval * batch_size + chunk * per_chunk
        if start + per_chunk > len(self.plan):
            raise IndexError(f"step {step_in_interval} is past the plan of interval {self.interval}")
        return self.plan[start : start + per_chunk]

    def rows_trained(self, steps_done: int, batch_size: int) -> list[int]:
        """Rows drawn from each domain by the intervals before the current one and the first ``steps_done`` steps
        (of ``batch_size`` rows, the global batch) of its shuffled plan: what the run has trained on so far."""
        done = np.bincount(self.plan[: steps_done * batch_size, 0], minlength=len(self.num_rows))
        return [int(a) + int(b) for a, b in zip(self._consumed_at_start, done)]

    def state_dict(self) -> dict[str, Any]:
        """JSON-friendly state that rebuilds the current interval's plan exactly."""
        return {
            "num_rows": list(self.num_rows),
            "rows_per_interval": self.rows_per_interval,
            "seed": self.seed,
            "interval": self.interval,
            "weights": None if self.weights is None else [float(x) for x in self.weights],
            "consumed_at_start": [int(x) for x in self._consumed_at_start],
            "owed_at_start": [float(x) for x in self._owed_at_start],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_rows"] != self.num_rows or state["rows_per_interval"] != self.rows_per_interval:
            raise ValueError(
                f"sampler state is for num_rows={state['num_rows']} rows_per_interval={state['rows_per_interval']}, "
                f"this run has num_rows={self.num_rows} rows_per_interval={self.rows_per_interval}"
            )
        self.seed = int(state["seed"])
        self.consumed = np.asarray(state["consumed_at_start"], dtype=np.int64)
        # A checkpoint written before the rounding was carried has none: it starts from zero.
        self.owed = np.asarray(state.get("owed_at_start", [0.0] * len(self.num_rows)), dtype=np.float64)
        if state["interval"] >= 0:
            # Regenerate instead of storing the plan: the plan is a pure function of (seed, streams, weights).
            self.start_interval(int(state["interval"]), state["weights"])
        else:
            self.interval, self.weights = -1, None
