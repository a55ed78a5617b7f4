"""--max-epochs-per-domain: the cap (reweighting.epoch_cap / cap_weights) against hand-computed values, its edge
cases, the sampler staying within the cap over a whole run, and a real training run with the flag."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from ddk_store.errors import ConfigError
from ddk_testkit.commands import train_args
from stage2_student import reweighting as rw
from stage2_student.cli import cli
from stage2_student.sampler import DomainSampler, allocate, largest_remainder


# ------------------------------------------------------------------------------------------------ epoch_cap
def test_epoch_cap_by_hand():
    # E = 2, R = 10 remaining steps of B = 4 rows -> R*B = 40 rows still to draw.
    # n = [40, 10, 30] rows, c = [20, 15, 0] drawn: budget left E*n - c = [80-20, 20-15, 60-0] = [60, 5, 60]
    # cap = budget / 40 = [1.5, 0.125, 1.5]
    cap = rw.epoch_cap(2, remaining_steps=10, rows_per_step=4, num_rows=[40, 10, 30], consumed=[20, 15, 0])
    np.testing.assert_allclose(cap, [1.5, 0.125, 1.5])


def test_epoch_cap_of_a_domain_with_no_rows_left_is_zero():
    # E = 2, n = [10, 10, 20]: budgets [20, 20, 40]; c = [25, 5, 5] (domain 0 one allocation past it by rounding)
    # -> left [max(0, -5), 15, 35] = [0, 15, 35]; R*B = 5*2 = 10 -> cap [0, 1.5, 3.5]
    cap = rw.epoch_cap(2, remaining_steps=5, rows_per_step=2, num_rows=[10, 10, 20], consumed=[25, 5, 5])
    np.testing.assert_allclose(cap, [0.0, 1.5, 3.5])


@pytest.mark.parametrize("kwargs", [dict(max_epochs=0), dict(remaining_steps=0), dict(rows_per_step=0),
                                    dict(consumed=[1])])
def test_epoch_cap_refuses_bad_arguments(kwargs):
    args = dict(max_epochs=1.0, remaining_steps=2, rows_per_step=2, num_rows=[4, 4], consumed=[0, 0]) | kwargs
    with pytest.raises(ValueError):
        rw.epoch_cap(args.pop("max_epochs"), **args)


# ------------------------------------------------------------------------------------------------ cap_weights
def test_one_domain_over_its_cap_gives_the_excess_to_the_others_by_weight():
    # w = [0.2, 0.6, 0.2], cap = [1.5, 0.125, 1.5]: domain 1 is held at 0.125; its excess 0.6 - 0.125 = 0.475 goes to
    # domains 0 and 2 in proportion 0.2 : 0.2, i.e. 0.2375 each -> [0.4375, 0.125, 0.4375]
    w, held = rw.cap_weights([0.2, 0.6, 0.2], [1.5, 0.125, 1.5])
    np.testing.assert_allclose(w, [0.4375, 0.125, 0.4375])
    assert held.tolist() == [False, True, False]


def test_spreading_can_push_another_domain_over_its_cap_and_is_repeated():
    # w = [0.5, 0.3, 0.2], cap = [0.2, 0.35, 1.0]
    # pass 1: domain 0 held at 0.2; 0.8 left over domains 1, 2 by 0.3 : 0.2 -> 0.3*0.8/0.5 = 0.48, 0.2*0.8/0.5 = 0.32
    # pass 2: 0.48 > 0.35, domain 1 held at 0.35; 1 - 0.2 - 0.35 = 0.45 left for domain 2 alone -> [0.2, 0.35, 0.45]
    w, held = rw.cap_weights([0.5, 0.3, 0.2], [0.2, 0.35, 1.0])
    np.testing.assert_allclose(w, [0.2, 0.35, 0.45])
    assert held.tolist() == [True, True, False]


def test_all_domains_capped_scales_the_caps_to_a_distribution():
    # cap = [0.3, 0.2] sums to 0.5 < 1: both are held and nothing can take the excess, so the weights are the caps
    # rescaled: [0.3, 0.2] / 0.5 = [0.6, 0.4] (each domain over its cap by the same factor 2)
    w, held = rw.cap_weights([0.5, 0.5], [0.3, 0.2])
    np.testing.assert_allclose(w, [0.6, 0.4])
    assert held.tolist() == [True, True]


def test_every_cap_zero_keeps_the_weights_instead_of_nan():
    # nothing may take any weight (every domain's rows used up, reachable only through rounding): the weights are
    # kept as given; rescaling the caps would divide 0 by 0
    w, held = rw.cap_weights([0.7, 0.3], [0.0, 0.0])
    np.testing.assert_array_equal(w, [0.7, 0.3])
    assert held.tolist() == [True, True]
    w, _ = rw.cap_weights([1.0, 0.0], [0.0, 0.0], spill=[True, False])
    np.testing.assert_array_equal(w, [1.0, 0.0])


def test_a_large_cap_changes_nothing():
    ddk = np.array([0.083, 0.583, 0.083, 0.083, 0.084, 0.084])
    ddk = ddk / ddk.sum()
    cap = rw.epoch_cap(1000, remaining_steps=105, rows_per_step=8, num_rows=[400, 40, 40, 160, 240, 80],
                       consumed=[50, 10, 10, 20, 30, 10])
    w, held = rw.cap_weights(ddk, cap)
    np.testing.assert_array_equal(w, ddk)
    assert not held.any()


def test_a_domain_with_zero_rows_left_gets_nothing():
    # cap [0, 1.5, 3.5] (test above), w = [0.5, 0.25, 0.25]: domain 0 held at 0, its 0.5 split 0.25 : 0.25
    # -> [0, 0.5, 0.5]
    w, held = rw.cap_weights([0.5, 0.25, 0.25], [0.0, 1.5, 3.5])
    np.testing.assert_allclose(w, [0.0, 0.5, 0.5])
    assert held.tolist() == [True, False, False]


def test_the_worked_example_of_docs_reweighting_md():
    n = [400, 40, 40, 160, 240, 80]  # the natural store: 960 rows
    consumed = largest_remainder(np.array(n) / 960, 15 * 8)  # interval 0 (K = 15 steps of 8 rows), natural mixture
    assert consumed.tolist() == [50, 5, 5, 20, 30, 10]
    cap = rw.epoch_cap(3, remaining_steps=105, rows_per_step=8, num_rows=n, consumed=consumed)
    # (3 x n - consumed) / 840 = [1150, 115, 115, 460, 690, 230] / 840
    np.testing.assert_allclose(cap, np.array([1150, 115, 115, 460, 690, 230]) / 840)
    w, held = rw.cap_weights(np.array([0.083, 0.580, 0.087, 0.083, 0.083, 0.084]), cap)
    # pass 1: python held at 115/840; pass 2: c (0.087 x 0.8631 / 0.42 = 0.1788) held too; the other four share
    # 1 - 2 x 115/840 in proportion .083 : .083 : .083 : .084 (sum .333)
    rest = (1 - 2 * 115 / 840) / 0.333
    np.testing.assert_allclose(w, [0.083 * rest, 115 / 840, 115 / 840, 0.083 * rest, 0.083 * rest, 0.084 * rest])
    np.testing.assert_array_equal(np.round(w, 4), [0.1810, 0.1369, 0.1369, 0.1810, 0.1810, 0.1832])
    assert held.tolist() == [False, True, True, False, False, False]


def test_no_cap_is_the_paper_exact_weights_unchanged():
    w = np.array([0.1, 0.9])
    out, cap, held = rw.apply_epoch_cap(w, None, remaining_steps=1, rows_per_step=1, num_rows=[1, 1], consumed=[0, 0])
    assert out is w and cap is None and held is None


def test_an_impossible_cap_is_refused_with_both_row_counts():
    rw.check_epoch_cap(1.0, [16, 16, 16], steps=12, rows_per_step=4)  # 48 rows allowed, 48 drawn: fine
    rw.check_epoch_cap(None, [1], steps=1000, rows_per_step=8)  # no cap, nothing to check
    # 13 x 4 = 52 rows > 1 x 48; E must be at least 52/48 = 1.0833 -> rounded up to 1.084
    with pytest.raises(ConfigError, match=r"allows at most 1 x 48 = 48 training rows, but the run draws --steps 13 "
                                          r"x --batch-size 4 = 52; raise --max-epochs-per-domain to at least 1\.084"):
        rw.check_epoch_cap(1.0, [16, 16, 16], steps=13, rows_per_step=4)
    # Static weights that leave a domain out: only the sampled domains' rows can hold the run's, 1.5 x 16 = 24 < 48
    rw.check_epoch_cap(1.5, [16, 16, 16], steps=12, rows_per_step=4)  # over all three: 72 >= 48
    with pytest.raises(ConfigError, match=r"allows at most 1\.5 x 16 = 24 training rows of the domains "
                                          r"--static-weights samples, .* at least 3\b"):
        rw.check_epoch_cap(1.5, [16, 16, 16], steps=12, rows_per_step=4, sampled=[True, False, False],
                           why="--static-weights")
    assert rw.min_epoch_cap([16, 32], steps=10, rows_per_step=5) == 1.042  # 50 / 48 = 1.0417, rounded up


def test_the_smallest_cap_the_refusal_suggests_is_accepted():
    # E x total in floating point can land just below the rows drawn (1.16 x 25 = 28.999999999999996 < 29), and the
    # refusal then named the very value it had refused
    rw.check_epoch_cap(1.16, [25], steps=29, rows_per_step=1)
    rw.check_epoch_cap(1.025, [400, 40, 40, 160, 240, 80], steps=123, rows_per_step=8)  # 1.025 x 960 = 984 rows
    rng = np.random.default_rng(0)
    for _ in range(2000):
        rows = rng.integers(1, 500, size=rng.integers(1, 7)).tolist()
        steps, per_step = int(rng.integers(1, 2000)), int(rng.integers(1, 33))
        rw.check_epoch_cap(rw.min_epoch_cap(rows, steps=steps, rows_per_step=per_step), rows, steps=steps,
                           rows_per_step=per_step)
    with pytest.raises(ConfigError):  # a real shortfall is still refused: 1.159 x 25 = 28.975 < 29
        rw.check_epoch_cap(1.159, [25], steps=29, rows_per_step=1)


def test_a_whole_run_stays_within_the_cap():
    """The sampler and the cap together, as train.py uses them: a DDK-like mixture that wants 90% of a 10-row domain
    draws it at most E passes (plus one row of rounding per interval) while the run's other rows go elsewhere."""
    n, K, B, steps, E = [10, 100, 100], 5, 4, 50, 2.0
    sampler = DomainSampler(n, rows_per_interval=K * B, seed=0)
    for t in range(steps // K):
        w, cap, held = rw.apply_epoch_cap(np.array([0.9, 0.05, 0.05]), E, remaining_steps=steps - t * K,
                                          rows_per_step=B, num_rows=n, consumed=sampler.consumed)
        assert w.sum() == pytest.approx(1.0) and np.all(w <= cap + 1e-12)
        sampler.start_interval(t, w)
    assert sampler.consumed.sum() == steps * B
    assert np.all(sampler.consumed <= E * np.array(n) + steps // K)
    assert sampler.consumed[0] >= E * n[0] - 1  # the cap is a ceiling, not a floor: the small domain used it up


# ------------------------------------------------------------------------------------------------ training run
def _records(out):
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_training_with_the_cap_logs_it_and_keeps_to_it(tmp_path, store_url, student_dir):
    E = 1.1  # 3 domains x 16 rows; 12 steps x 4 rows = 48 rows = 1 pass over everything, so only 0.1 pass of slack
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, train_args(store_url, student_dir, out, max_epochs_per_domain=E))
    assert res.exit_code == 0, res.output
    recs = _records(out)
    intervals = [r for r in recs if r["event"] == "interval"]
    drawn, owed = np.zeros(3), None
    for r in intervals:
        assert r["train_rows"] == [16, 16, 16] and len(r["cap"]) == len(r["capped"]) == 3
        assert sum(r["weights"]) == pytest.approx(1.0)
        assert all(w <= c + 1e-9 for w, c in zip(r["weights"], r["cap"]))
        counts, owed = allocate(r["weights"], 4 * 4, owed)  # exactly what the sampler drew for the interval
        drawn += counts
    assert np.all(drawn <= E * 16 + len(intervals))
    assert any(any(r["capped"]) for r in intervals[1:]), "the DDK weights should hit this tight a cap"
    assert "cap" not in [r for r in recs if r["event"] == "final"][0]


def test_impossible_or_invalid_cap_is_one_line_before_training(tmp_path, store_url, student_dir):
    res = CliRunner().invoke(cli, train_args(store_url, student_dir, tmp_path / "a", max_epochs_per_domain=0.5))
    assert res.exit_code == 2 and "--max-epochs-per-domain 0.5 allows at most 0.5 x 48 = 24" in res.output
    assert not (tmp_path / "a" / "metrics.jsonl").exists()
    res = CliRunner().invoke(cli, train_args(store_url, student_dir, tmp_path / "b", max_epochs_per_domain=0))
    assert res.exit_code == 2 and "--max-epochs-per-domain must be > 0" in res.output


def test_excess_over_domains_of_weight_zero_fills_their_room_in_proportion_to_their_caps():
    # Eq. 1 underflows to exact zeros: w = [1, 0, 0], cap = [0.125, 1.0, 0.5]. Domain 0 is held at 0.125; the 0.875
    # left has no weight to follow, so it goes to domains 1 and 2 in proportion 1.0 : 0.5 -> 0.875 x 2/3 = 0.58333,
    # 0.875 x 1/3 = 0.29167 (each below its cap). The old code put domain 0 back at weight 1, eight times its cap.
    w, held = rw.cap_weights([1.0, 0.0, 0.0], [0.125, 1.0, 0.5])
    np.testing.assert_allclose(w, [0.125, 0.875 * 2 / 3, 0.875 / 3])
    assert held.tolist() == [True, False, False]
    # The limit of proportional spreading: any tiny equal weights give the same split as equal caps would.
    w_zero, _ = rw.cap_weights([1.0, 0.0, 0.0], [0.125, 1.0, 1.0])
    w_tiny, _ = rw.cap_weights([1.0 - 2e-300, 1e-300, 1e-300], [0.125, 1.0, 1.0])
    np.testing.assert_allclose(w_zero, [0.125, 0.4375, 0.4375])
    np.testing.assert_allclose(w_tiny, w_zero)


def test_excess_never_spills_onto_a_domain_outside_spill():
    # spill = [T, F, T]: domain 0 held at 0.125; only domain 2 may take the 0.875, but its cap is 0.5: it is held
    # too, and the caps rescale: [0.125, 0, 0.5] / 0.625 = [0.2, 0, 0.8].
    w, held = rw.cap_weights([1.0, 0.0, 0.0], [0.125, 1.0, 0.5], spill=[True, False, True])
    np.testing.assert_allclose(w, [0.2, 0.0, 0.8])
    assert held.tolist() == [True, False, True]
    # --static-weights a=1,b=0,c=0 passes spill = weight > 0: the domains set to 0 stay at 0 and domain 0, alone,
    # rescales to 1 (a cap the loop refuses up front; here only rounding gets this far).
    w, held = rw.cap_weights([1.0, 0.0, 0.0], [0.125, 1.0, 0.5], spill=[True, False, False])
    np.testing.assert_allclose(w, [1.0, 0.0, 0.0])
    assert held.tolist() == [True, False, False]


def test_a_weight_only_just_over_its_cap_is_still_capped():
    # w = [0.5, 0.5], cap = [0.4995, 1.0]: domain 0 is 5e-4 over its cap (far above float rounding): held at 0.4995,
    # its 5e-4 goes to domain 1 -> [0.4995, 0.5005]
    w, held = rw.cap_weights([0.5, 0.5], [0.4995, 1.0])
    np.testing.assert_allclose(w, [0.4995, 0.5005], rtol=0, atol=1e-15)
    assert held.tolist() == [True, False]


@pytest.mark.parametrize("w,cap", [([0.5, 0.6], [1.0, 1.0]), ([0.3, 0.3], [1.0, 1.0]), ([1.2, -0.2], [1.0, 1.0]),
                                   ([0.5, 0.5], [1.0, -0.1]), ([0.5, 0.5], [1.0])])
def test_cap_weights_refuses_what_is_not_a_distribution_and_a_cap(w, cap):
    with pytest.raises(ValueError):
        rw.cap_weights(w, cap)
