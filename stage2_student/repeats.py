"""Repeated rows that stopped paying: the domains whose held-out ratio rose while their training rows were repeated.

DDK sends more samples to the domains furthest from the teacher. When such a domain has few training rows, the extra
samples are repeats, and past a few passes its held-out ratio gets *worse* (docs/results-natural.md: python's ratio
51 after one pass over its 40 rows, 47 after four or five, 68 after twelve). A run shows this in its own records,
and this module finds it, so that the training loop can warn while the run goes on and the report can say it after.

A domain is flagged at a record when all of these hold:

1. it has had more than one pass over its training rows (more than one epoch of the natural mixture gives it);
2. its ratio there is above the lowest ratio it had at an earlier record, by more than :data:`RISE_TOL` (relative);
3. since that lowest record it was sampled at least at its natural pace (the passes per step of the natural
   mixture, ``batch_size / sum(train_rows)``), so the rise is not a domain starved of samples regressing.

A rise can also come from the other domains' training (c's ratio rose while DDK sent python 58% of the samples);
the rule cannot tell the two apart, so it warns and reports, and changes nothing that is sampled (acting on it was
tried and lost to the baselines: docs/results-natural.md). The lowest record's passes are then about as many as the
domain could use in this run; ``--max-epochs-per-domain``
near them bounds the repeats. Choosing E from held-out ratios is choosing on the rows that score the run: check such a
choice on another draw of held-out documents (docs/results-natural.md, "What a user should do").

Pure functions of the run's interval records (:mod:`stage2_student.rundir`); no I/O, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .reweighting import min_epoch_cap
from .sampler import allocate

#: Relative rise over its lowest earlier ratio above which a repeated domain is flagged (2%: well above the change
#: between two evaluations of the same student, which is zero on the same rows, and below the rises of several
#: percent to tens of percent that repeated small domains show in docs/results-natural.md).
RISE_TOL = 0.02


@dataclass(frozen=True)
class RepeatFinding:
    """One domain whose held-out ratio rose while its rows were repeated (the module's three conditions)."""

    domain: str
    train_rows: int
    best_step: int
    best_ratio: float
    best_passes: float
    step: int
    ratio: float
    passes: float
    #: The smallest cap the run's steps allow (:func:`~stage2_student.reweighting.min_epoch_cap`); 0 when unknown.
    min_cap: float = 0.0

    def _at_lowest(self) -> float:
        """The passes at the lowest ratio, rounded up to a tenth, and never below one pass."""
        return max(1.0, math.ceil(self.best_passes * 10 - 1e-9) / 10)

    def binds(self) -> bool:
        """Whether the run's smallest possible cap, not the passes at the lowest ratio, sets the suggestion."""
        return self.min_cap > self._at_lowest()

    def suggested_cap(self) -> float:
        """The passes at the lowest ratio (rounded up to a tenth, at least one), or the smallest cap the run's steps
        allow where that is larger (``train`` refuses a smaller cap)."""
        return max(self._at_lowest(), self.min_cap)

    def message(self) -> str:
        """What happened, in one sentence a user can act on."""
        cap = f"{self.suggested_cap():g}" + (" (the least this run's steps allow)" if self.binds() else "")
        return (f"domain {self.domain!r}: held-out ratio {self.ratio:.3g} at step {self.step} after "
                f"{self.passes:.2f} passes over its {self.train_rows} training rows, up from {self.best_ratio:.3g} "
                f"at step {self.best_step} after {self.best_passes:.2f} passes, though it was sampled at least at "
                f"its natural pace since: repeating its rows no longer helps. --max-epochs-per-domain "
                f"{cap} would bound the repeats (check such a choice on another draw of held-out documents: "
                f"docs/results-natural.md)")


def rows_by_record(records: Sequence[dict[str, Any]], batch_size: int) -> list[list[int]]:
    """Rows trained on from each domain by each record's step, ``[record][domain]``: the ``rows_trained`` the records
    carry (what the sampler drew, written by train since 2026-12-04) when every one carries them. Otherwise (records of
    an older run) the sampler's allocation of each record's weights over the rows of the steps until the next
    record, its rounding carried as the sampler carries it (:func:`~stage2_student.sampler.allocate`): exact for whole
    intervals; a last interval cut short by the end of the run trained on a shuffled part of its plan, for which this
    is the expected count within a row."""
    if records and all(isinstance(r.get("rows_trained"), list) for r in records):
        return [[int(x) for x in r["rows_trained"]] for r in records]
    rows = [0] * len(records[0]["domains"]) if records else []
    owed = None
    out = []
    for i, rec in enumerate(records):
        prev = records[i - 1] if i else None
        if prev is not None and rec["step"] > prev["step"]:
            drawn, owed = allocate(prev["weights"], (rec["step"] - prev["step"]) * batch_size, owed)
            rows = [a + int(b) for a, b in zip(rows, drawn)]
        out.append(rows)
    return out


def rows_sampled(records: Sequence[dict[str, Any]], batch_size: int) -> list[int]:
    """Rows trained on from each domain up to the last record (:func:`rows_by_record`)."""
    return rows_by_record(records, batch_size)[-1]


def find_repeats(records: Sequence[dict[str, Any]], batch_size: int, train_rows: Sequence[int],
                 tolerance: float = RISE_TOL, *, steps: int | None = None) -> list[RepeatFinding]:
    """The domains flagged at the last of ``records`` (interval records, then the final one if any), in domain order.

    Args:
        records: the run's evaluation records so far, in step order, each with ``domains``, ``step``, ``ratio`` and
            ``weights`` (the weights sampled from that step on).
        batch_size: rows per optimizer step (the global batch).
        train_rows: training rows per domain (the natural mixture's counts).
        tolerance: relative rise over the lowest earlier ratio that counts (condition 2).
        steps: the run's optimizer steps, when known: no suggested cap is below what they allow.
    """
    if len(records) < 2 or batch_size < 1 or sum(train_rows) <= 0:
        return []
    domains = records[0]["domains"]
    if len(train_rows) != len(domains):
        raise ValueError(f"{len(train_rows)} train_rows for {len(domains)} domains")
    rows = rows_by_record(records, batch_size)
    total = sum(train_rows)
    last, found = records[-1], []
    min_cap = min_epoch_cap(train_rows, steps=steps, rows_per_step=batch_size) if steps else 0.0
    for d, name in enumerate(domains):
        n = train_rows[d]
        if not n or not rows[-1][d] > n:  # condition 1: more than one pass
            continue
        best = min(range(len(records) - 1), key=lambda i: (records[i]["ratio"][d], i))
        rise = last["ratio"][d] > records[best]["ratio"][d] * (1.0 + tolerance)
        # condition 3: at least the natural mixture's rows since the best record, less the allocation's rounding
        # (carried between intervals; one row per interval is a generous bound)
        natural = (last["step"] - records[best]["step"]) * batch_size * n / total
        kept_pace = rows[-1][d] - rows[best][d] >= natural - (len(records) - 1 - best)
        if rise and kept_pace:
            found.append(RepeatFinding(domain=name, train_rows=int(n), best_step=records[best]["step"],
                                       best_ratio=records[best]["ratio"][d], best_passes=rows[best][d] / n,
                                       step=last["step"], ratio=last["ratio"][d], passes=rows[-1][d] / n,
                                       min_cap=min_cap))
    return found
