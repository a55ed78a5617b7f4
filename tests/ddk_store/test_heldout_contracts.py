"""The held-out statistics' comparison (ddk_store.heldout) and the reader's check of them (campaign 18)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ddk_store.heldout import heldout_nll, heldout_ppl, stats_mismatch


def test_a_recorded_nll_past_the_float_range_compares_with_an_infinite_perplexity_not_an_overflow():
    # A teacher whose held-out NLL is past log(float max) (~709.78) has perplexity inf: the recorded pair
    # (nll, inf) agrees with the data, and checking it raises no OverflowError.
    target = np.full((2, 3), -800.0, np.float32)
    nll = heldout_nll(target)
    assert nll == pytest.approx(800.0, rel=1e-12)
    assert heldout_ppl(nll) == math.inf
    assert stats_mismatch(nll, math.inf, nll) is None
    assert stats_mismatch(nll, 1e300, nll) == ("heldout_ppl", 1e300, math.inf)
