"""Sampler invariants over a seed grid: determinism, allocation, frequencies, cycling, resume, rank chunks."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stage2_student.sampler import DomainSampler, allocate, largest_remainder, stream_rows

SEEDS = [0, 1, 7, 12345]


@settings(max_examples=300, deadline=None)
@given(w=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=10).filter(lambda x: sum(x) > 1e-3),
       total=st.integers(0, 5000))
def test_largest_remainder(w, total):
    counts = largest_remainder(w, total)
    p = np.asarray(w) / np.sum(w)
    assert counts.sum() == total
    assert np.all(np.abs(counts - p * total) < 1.0 + 1e-9)
    assert np.all(counts[p == 0] == 0)


def test_largest_remainder_by_hand():
    assert largest_remainder([0.5, 0.3, 0.2], 7).tolist() == [4, 2, 1]  # 3.5, 2.1, 1.4 -> floors 3,2,1; +1 to 0.5
    assert largest_remainder([1, 1, 1], 4).tolist() == [2, 1, 1]  # tie -> lowest index


def test_carried_rounding_favours_no_domain_over_a_run():
    # Rounded afresh each interval, 37 rows under these weights go 18/7/6/4/2 every time (the 0.5 domain loses half a
    # row, the 0.15 one gains 0.45): after 300 intervals the counts are off by up to 150 rows. Carried, every running
    # count stays within a row of its running target.
    w = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
    assert largest_remainder(w, 37).tolist() == [18, 7, 6, 4, 2]
    drawn, owed = np.zeros(5), None
    for t in range(1, 301):
        counts, owed = allocate(w, 37, owed)
        drawn += counts
        assert counts.sum() == 37
        assert np.abs(drawn - t * 37 * w).max() < 1.0 + 1e-9
    assert np.abs(drawn / drawn.sum() - w).max() < 1 / (300 * 37) + 1e-12


@settings(max_examples=200, deadline=None)
@given(ws=st.lists(st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4).filter(lambda x: sum(x) > 1e-3),
                   min_size=1, max_size=30),
       total=st.integers(1, 200))
def test_carried_rounding_tracks_changing_weights(ws, total):
    drawn, target, owed = np.zeros(4), np.zeros(4), None
    for w in ws:
        p = np.asarray(w) / np.sum(w)
        counts, owed = allocate(w, total, owed)
        assert counts.sum() == total and np.all(counts >= 0)
        assert np.all(counts[p == 0] == 0)  # a domain of weight 0 gets no row, whatever it was owed
        drawn, target = drawn + counts, target + p * total
        target[p == 0] = drawn[p == 0]  # ... and is owed nothing after
        assert np.abs(drawn - target).max() < 2.0


def test_a_checkpoint_without_carried_rounding_still_resumes():
    s = DomainSampler([10, 7, 33], rows_per_interval=40, seed=3)
    s.start_interval(0, [0.2, 0.5, 0.3])
    state = s.state_dict()
    assert state["owed_at_start"] == [0.0, 0.0, 0.0]
    del state["owed_at_start"]  # written before the rounding was carried
    r = DomainSampler([10, 7, 33], rows_per_interval=40, seed=3)
    r.load_state_dict(state)
    assert np.array_equal(r.plan, s.plan)


@pytest.mark.parametrize("seed", SEEDS)
def test_deterministic_per_seed_and_seeds_differ(seed):
    w = [0.2, 0.5, 0.3]
    a = DomainSampler([10, 7, 33], rows_per_interval=40, seed=seed)
    b = DomainSampler([10, 7, 33], rows_per_interval=40, seed=seed)
    c = DomainSampler([10, 7, 33], rows_per_interval=40, seed=seed + 1)
    for t in range(3):
        pa, pb, pc = a.start_interval(t, w), b.start_interval(t, w), c.start_interval(t, w)
        assert np.array_equal(pa, pb)
        assert not np.array_equal(pa, pc)


@pytest.mark.parametrize("seed,weights", list(itertools.product(SEEDS, [[0.1, 0.6, 0.3], [1 / 3] * 3, [0.0, 0.5, 0.5]])))
def test_frequencies_approach_weights(seed, weights):
    s = DomainSampler([5, 50, 13], rows_per_interval=97, seed=seed)
    counts = np.zeros(3)
    intervals = 40
    for t in range(intervals):
        plan = s.start_interval(t, weights)
        assert len(plan) == 97
        counts += np.bincount(plan[:, 0], minlength=3)
        # rows are valid indices of their own domain
        assert np.all(plan[:, 1] < np.asarray([5, 50, 13])[plan[:, 0]])
    freq = counts / counts.sum()
    assert np.abs(freq - weights).max() < 1.0 / 97  # deterministic allocation: within one row per interval
    assert counts[np.asarray(weights) == 0].sum() == 0


@pytest.mark.parametrize("seed", SEEDS)
def test_streams_cycle_with_reshuffle(seed):
    n = 7
    rows = stream_rows(n, seed=seed, domain=2, start=0, count=5 * n)
    epochs = rows.reshape(5, n)
    for e in epochs:  # every epoch is a permutation: each row exactly once before any repeats
        assert sorted(e.tolist()) == list(range(n))
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled, not the same order every epoch
    # a stream read in pieces equals the stream read at once (what makes state = one integer per domain)
    pieces = np.concatenate([stream_rows(n, seed=seed, domain=2, start=s, count=3) for s in range(0, 5 * n, 3)])
    assert np.array_equal(pieces[: 5 * n], rows)


def test_small_domain_cycles_inside_the_sampler():
    s = DomainSampler([3, 100], rows_per_interval=60, seed=0)
    plan = s.start_interval(0, [0.5, 0.5])  # 30 rows from a 3-row domain: 10 full epochs
    small = plan[plan[:, 0] == 0, 1]
    assert np.bincount(small, minlength=3).tolist() == [10, 10, 10]


@pytest.mark.parametrize("seed", SEEDS)
def test_state_dict_resumes_exactly(seed):
    a = DomainSampler([9, 4, 21], rows_per_interval=24, seed=seed)
    plans = [a.start_interval(t, w).copy() for t, w in enumerate([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]])]
    state = a.state_dict()
    import json
    state = json.loads(json.dumps(state))  # it must survive JSON
    b = DomainSampler([9, 4, 21], rows_per_interval=24, seed=seed)
    b.load_state_dict(state)
    assert np.array_equal(b.plan, plans[-1])
    assert np.array_equal(b.start_interval(2, [0.1, 0.1, 0.8]), a.start_interval(2, [0.1, 0.1, 0.8]))


def test_rank_chunks_partition_each_step():
    s = DomainSampler([10, 10], rows_per_interval=3 * 8, seed=3)
    s.start_interval(0, [0.5, 0.5])
    for step in range(3):
        whole = s.rows_for(step, batch_size=8, chunk=0, num_chunks=1)
        parts = [s.rows_for(step, batch_size=8, chunk=c, num_chunks=4) for c in range(4)]
        assert np.array_equal(np.concatenate(parts), whole)
    with pytest.raises(IndexError):
        s.rows_for(3, batch_size=8, chunk=0, num_chunks=1)


def test_pass_counts_rebuilt_from_the_logged_weights_are_what_the_sampler_drew():
    # report, compare and the repeats check rebuild each domain's rows from the interval records' weights; they must
    # carry the rounding from the first interval on, as the sampler does (4 rows over 6 domains: 2 2 0 0 0 0 ...)
    from stage2_student.repeats import rows_sampled

    s = DomainSampler([24] * 6, rows_per_interval=4, seed=0)
    drawn = np.zeros(6, dtype=np.int64)
    records = []
    for t in range(5):
        w = [1 / 6] * 6 if t < 3 else [0.5, 0.1, 0.1, 0.1, 0.1, 0.1]
        records.append({"domains": list("abcdef"), "step": t * 2, "weights": w})
        drawn += np.bincount(s.start_interval(t, w)[:, 0], minlength=6)
    records.append({"domains": list("abcdef"), "step": 10, "weights": records[-1]["weights"]})
    assert rows_sampled(records, batch_size=2) == drawn.tolist()


def test_resume_carries_the_rounding_owed_at_the_checkpoint():
    w = [0.5, 0.2, 0.15, 0.1, 0.05]
    a = DomainSampler([40] * 5, rows_per_interval=37, seed=1)
    for t in range(5):
        a.start_interval(t, w)
    state = json.loads(json.dumps(a.state_dict()))
    assert any(abs(x) > 0.1 for x in state["owed_at_start"])  # something is owed at this point
    b = DomainSampler([40] * 5, rows_per_interval=37, seed=1)
    b.load_state_dict(state)
    zeroed = DomainSampler([40] * 5, rows_per_interval=37, seed=1)
    zeroed.load_state_dict({**state, "owed_at_start": [0.0] * 5})
    counts = [[np.bincount(s.start_interval(t, w)[:, 0], minlength=5).tolist() for t in range(5, 9)]
              for s in (a, b, zeroed)]
    assert counts[1] == counts[0]
    assert counts[2] != counts[0]  # forgetting what is owed changes the draws


def test_rows_trained_counts_the_rows_read_so_far_mid_interval_and_after_a_resume():
    # What the trainer reads is rows_for's rows, step by step; rows_trained must count exactly those, also partway
    # through an interval (a run whose --steps is not a multiple of --interval ends there) and after a resume.
    w = [0.55, 0.25, 0.2]
    s = DomainSampler([7, 5, 30], rows_per_interval=12, seed=3)
    read = np.zeros(3, dtype=np.int64)
    for t in range(3):
        s.start_interval(t, w)
        assert s.rows_trained(0, batch_size=4) == read.tolist()
        steps = 3 if t < 2 else 2  # the last interval is cut after 2 of its 3 steps
        for step in range(steps):
            read += np.bincount(s.rows_for(step, batch_size=4, chunk=0, num_chunks=1)[:, 0], minlength=3)
            assert s.rows_trained(step + 1, batch_size=4) == read.tolist()
    assert sum(read) == 32
    resumed = DomainSampler([7, 5, 30], rows_per_interval=12, seed=3)
    resumed.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert resumed.rows_trained(2, batch_size=4) == read.tolist()


def test_ties_go_to_the_lower_index_with_more_than_sixteen_domains():
    # 24 rows over weights summing to 28: the weight-2 domains get 1 row each by the floor (24 * 2/28 = 1.714), the
    # weight-1 domains none (0.857); the remainders .857 > .714 rank the weight-1 domains first (7 rows), and the
    # last 7 rows go to the 7 lowest-indexed weight-2 domains (remainder .714 each: a tie an unstable sort breaks
    # at random past 16 entries)
    w = [1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 1, 2, 2, 1, 1, 2, 2]
    assert largest_remainder(w, 24).tolist() == [1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1]


def test_weights_that_are_not_numbers_are_refused():
    with pytest.raises(ValueError):
        largest_remainder([float("nan"), 1.0], 4)


@pytest.mark.parametrize("seed", SEEDS)
def test_each_interval_is_shuffled_across_domains_and_afresh(seed):
    # Algorithm 1, line 13: D_t is shuffled, so a step's batch mixes domains, and every interval has its own order.
    # 20 + 20 rows every interval: the domain column differs between intervals only through the shuffle.
    s = DomainSampler([50, 50], rows_per_interval=40, seed=seed)
    orders = []
    for t in range(3):
        dom = s.start_interval(t, [0.5, 0.5])[:, 0]
        assert np.bincount(dom, minlength=2).tolist() == [20, 20]
        assert np.any(np.diff(dom) < 0)  # not the domain-by-domain order the plan is built in
        # 5 batches of 8: under a fair shuffle a batch is single-domain with probability 0.3%
        assert sum(len(set(dom[i : i + 8].tolist())) == 2 for i in range(0, 40, 8)) >= 4
        orders.append(dom.tolist())
    assert orders[0] != orders[1] and orders[1] != orders[2] and orders[0] != orders[2]
