"""The teacher's held-out statistics of a domain (docs/store-format.md): one pure definition and one tolerance.

``finalize`` records them, the reader and ``ddk-store verify`` check the record against the data, and stage 2 scores
the teacher on the same rows as the student with the same function. No I/O here.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable

import numpy as np

#: A recorded statistic and the one recomputed from the data agree when they are this close (relative; absolute
#: ABS_TOL near zero). Recomputing from the same float32 values is exact up to float64 rounding; an edit is not.
REL_TOL = 1e-6
ABS_TOL = 1e-9
#: The largest NLL whose exp is a finite float.
_MAX_LOG = math.log(sys.float_info.max)


def heldout_nll(target_logprobs: np.ndarray) -> float | None:
    """Teacher mean NLL in nats/token: ``-mean(target_logprobs)`` over every position, accumulated in float64.

    ``target_logprobs`` holds the teacher's log-probability of each realized next token, any shape (n rows x P
    positions). None when it holds no position. Missing data (NaN) gives NaN: callers check finiteness first.
    """
    return heldout_nll_of_blocks([target_logprobs])


def heldout_nll_of_blocks(blocks: Iterable[np.ndarray]) -> float | None:
    """:func:`heldout_nll` of the rows of ``blocks`` taken together, one block in memory at a time (for one block,
    the same float as over the whole array: both are numpy's pairwise float64 sum over the count)."""
    total, count = 0.0, 0
    for block in blocks:
        a = np.asarray(block)
        total += float(np.sum(a, dtype=np.float64))
        count += a.size
    return None if count == 0 else -total / count


def heldout_ppl(nll: float) -> float:
    """Perplexity of a mean NLL: ``exp(nll)``; inf past the float range (a diverged model), not an OverflowError."""
    if math.isnan(nll):
        return nll
    return math.exp(nll) if nll <= _MAX_LOG else math.inf


def agrees(recorded: float | None, computed: float) -> bool:
    """Whether a recorded statistic matches the value recomputed from the data (within REL_TOL / ABS_TOL)."""
    return recorded is not None and math.isclose(recorded, computed, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def stats_mismatch(recorded_nll: float | None, recorded_ppl: float | None, nll: float) -> tuple[str, float | None,
                                                                                                 float] | None:
    """The first recorded statistic that disagrees with ``nll`` from the data: (field, recorded, computed), or None."""
    if not agrees(recorded_nll, nll):
        return "heldout_nll", recorded_nll, nll
    if not agrees(recorded_ppl, heldout_ppl(nll)):
        return "heldout_ppl", recorded_ppl, heldout_ppl(nll)
    return None
