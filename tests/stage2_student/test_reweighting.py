"""Eq. 1, Eq. 2 and the mixtures, against values computed by hand and the worked example of docs/reweighting.md."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ddk_store.errors import ConfigError
from stage2_student import reweighting as rw

# The worked example of docs/reweighting.md (Eq. 2): N=10, alpha=0.5, constant ratios q.
Q = [1.3, 1.25, 1.1, 1.35, 1.6, 1.4, 1.3, 1.5, 1.45, 1.2]
R0 = [.0947, .0900, .0775, .0995, .1278, .1046, .0947, .1156, .1100, .0857]
R1 = [.0939, .0897, .0794, .0985, .1300, .1036, .0939, .1155, .1093, .0860]
R30 = [.0932, .0894, .0806, .0975, .1336, .1025, .0932, .1153, .1084, .0861]


def test_worked_example_r0_r1_r30():
    r0 = rw.discrepancy_factor(Q)
    np.testing.assert_array_equal(np.round(r0, 4), R0)
    r1 = rw.smooth_update(r0, Q, 0.5)
    np.testing.assert_array_equal(np.round(r1, 4), R1)
    r = r0
    for _ in range(30):
        r = rw.smooth_update(r, Q, 0.5)
    np.testing.assert_array_equal(np.round(r, 4), R30)
    # "fixed point reached after ~5 intervals"
    r5 = r0
    for _ in range(5):
        r5 = rw.smooth_update(r5, Q, 0.5)
    assert np.abs(r5 - r).max() < 5e-4


def test_eq1_two_domains_by_hand():
    # q = [1, 2]: r = [e/(e+e^2), e^2/(e+e^2)] = [1/(1+e), e/(1+e)]
    r = rw.discrepancy_factor(rw.perplexity_ratio([10.0, 40.0], [10.0, 20.0]))
    assert r == pytest.approx([1 / (1 + math.e), math.e / (1 + math.e)], abs=1e-12)


def test_eq2_by_hand():
    # r_t = [0.5, 0.5], q = [0, ln 3] -> psi = [0.5, 1.5], psi/sum = [0.25, 0.75]
    # alpha = 0.5 -> r = 0.5*[0.25, 0.75] + 0.25 = [0.375, 0.625]
    r = rw.smooth_update([0.5, 0.5], [0.0, math.log(3.0)], 0.5)
    assert r == pytest.approx([0.375, 0.625], abs=1e-12)
    # alpha = 0 ignores the signal entirely; alpha = 1 is pure multiplicative weights.
    assert rw.smooth_update([0.2, 0.8], [5.0, 0.0], 0.0) == pytest.approx([0.5, 0.5])
    e5 = math.exp(5.0)
    assert rw.smooth_update([0.2, 0.8], [5.0, 0.0], 1.0) == pytest.approx([0.2 * e5 / (0.2 * e5 + 0.8), 0.8 / (0.2 * e5 + 0.8)])


def test_huge_ratios_stay_finite():
    # An untrained student can be hundreds of times worse than the teacher: exp(400) overflows without the shift.
    r = rw.discrepancy_factor([400.0, 1.0, 900.0])
    assert np.isfinite(r).all() and r.sum() == pytest.approx(1.0) and r[2] == pytest.approx(1.0)
    r2 = rw.smooth_update(r, [400.0, 1.0, 900.0], 0.5)
    assert np.isfinite(r2).all() and r2.min() >= 0.5 / 3 - 1e-12


@settings(max_examples=200, deadline=None)
@given(
    q=st.lists(st.floats(0.5, 50.0), min_size=1, max_size=12),
    alpha=st.floats(0.0, 1.0),
    data=st.data(),
)
def test_eq2_invariants(q, alpha, data):
    raw = data.draw(st.lists(st.floats(0.01, 1.0), min_size=len(q), max_size=len(q)))
    r_prev = np.asarray(raw) / np.sum(raw)
    r = rw.smooth_update(r_prev, q, alpha)
    n = len(q)
    assert r.sum() == pytest.approx(1.0, abs=1e-9)
    assert r.min() >= (1 - alpha) / n - 1e-12  # the floor
    assert r.max() <= alpha + (1 - alpha) / n + 1e-12  # the ceiling
    # Monotone in q: a larger gap never gets a smaller share of psi (same history).
    r_eq = rw.smooth_update(np.full(n, 1.0 / n), q, alpha)
    order = np.argsort(q, kind="stable")
    assert np.all(np.diff(r_eq[order]) >= -1e-12)


def test_modes():
    q = np.array([1.2, 1.5, 1.1])
    rows = [10, 30, 60]
    r0, w0 = rw.initial_weights("ddk", ratio=q, num_rows=rows)
    assert r0 == pytest.approx(rw.discrepancy_factor(q))
    assert w0 == pytest.approx([0.1, 0.3, 0.6])  # natural interval-0 mixture by default
    _, w0u = rw.initial_weights("ddk", ratio=q, num_rows=rows, init_mixture="uniform")
    assert w0u == pytest.approx([1 / 3] * 3)
    _, w0r = rw.initial_weights("wo-fs", ratio=q, num_rows=rows, init_mixture="r0")
    assert w0r == pytest.approx(r0)
    assert rw.next_weights("wo-fs", w0, q, 0.5) == pytest.approx(rw.discrepancy_factor(q))
    assert rw.next_weights("ddk", r0, q, 0.5) == pytest.approx(rw.smooth_update(r0, q, 0.5))
    for mode, expect in [("uniform", [1 / 3] * 3), ("natural", [0.1, 0.3, 0.6])]:
        r, w = rw.initial_weights(mode, ratio=q, num_rows=rows)
        assert w == pytest.approx(expect) and rw.next_weights(mode, r, q * 5, 0.5) == pytest.approx(expect)
    s = np.array([0.0, 0.25, 0.75])
    _, ws = rw.initial_weights("static", ratio=q, num_rows=rows, static=s)
    assert rw.next_weights("static", ws, q, 0.5) == pytest.approx(s)


def test_static_weight_parsing():
    assert rw.parse_static_weights("a=0.25, b=0.75") == {"a": 0.25, "b": 0.75}
    assert list(rw.static_weights_vector({"b": 1.0}, ["a", "b", "c"])) == [0.0, 1.0, 0.0]
    with pytest.raises(ConfigError, match="sum to 1, got 0.9"):
        rw.parse_static_weights("a=0.5,b=0.4")
    with pytest.raises(ConfigError, match="cannot parse 'b'"):
        rw.parse_static_weights("a=1,b")
    with pytest.raises(ConfigError, match="given twice"):
        rw.parse_static_weights("a=0.5,a=0.5")
    with pytest.raises(ConfigError, match="unknown domain.*'zeta'.*the store has: a, b"):
        rw.static_weights_vector({"zeta": 1.0}, ["a", "b"])


def test_static_weights_must_sum_to_one_closely_and_natural_weights_need_rows():
    with pytest.raises(ConfigError):
        rw.parse_static_weights("a=0.5,b=0.4999")  # off by 1e-4: a typo, not rounding
    with pytest.raises(ValueError):
        rw.natural_weights([0, 0])


@pytest.mark.parametrize("alpha", [-0.1, 1.5, 2.0])
def test_eq2_refuses_alpha_outside_the_unit_interval(alpha):
    # alpha > 1 makes the (1 - alpha) / N "floor" negative: r would not be a distribution
    with pytest.raises(ValueError, match="alpha"):
        rw.smooth_update([0.5, 0.5], [1.0, 2.0], alpha)


@pytest.mark.parametrize("s,t", [([0.0, 2.0], [1.0, 1.0]), ([-3.0, 2.0], [1.0, 1.0]), ([2.0, 2.0], [0.0, 1.0]),
                                 ([math.inf, 2.0], [1.0, 1.0]), ([math.nan, 2.0], [1.0, 1.0])])
def test_perplexity_ratio_refuses_non_positive_or_non_finite_perplexities(s, t):
    # a perplexity is exp(NLL) > 0: a zero, negative or non-finite value is a bug upstream, not a ratio to steer by
    with pytest.raises(ValueError, match="finite and > 0"):
        rw.perplexity_ratio(s, t)
