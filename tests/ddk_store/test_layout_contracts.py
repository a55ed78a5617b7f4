"""Chunk, unit and shard arithmetic (ddk_store.layout; campaign 18), against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from ddk_store import layout
from ddk_store.layout import (Unit, contiguous_runs, default_chunk_rows, default_unit_rows, num_units, shard_owns,
                              unit_range)


@pytest.mark.parametrize("seq_len, chunk_rows", [(16, 64), (1024, 1), (1000, 1), (2048, 1), (8192, 1)])
def test_a_chunk_is_at_least_one_row(seq_len, chunk_rows):
    assert layout.CHUNK_TOKENS == 1024
    assert default_chunk_rows(seq_len) == chunk_rows


@pytest.mark.parametrize("seq_len, chunk_rows, unit_rows", [(16, 64, 4096), (1024, 1, 64), (100, 10, 650),
                                                             (4096, 1, 16), (65536 * 2, 1, 1), (40000, 2, 2)])
def test_a_unit_is_whole_chunks_near_the_unit_tokens(seq_len, chunk_rows, unit_rows):
    assert layout.UNIT_TOKENS == 65536
    got = default_unit_rows(seq_len, chunk_rows)
    assert got == unit_rows and got % chunk_rows == 0


def test_units_cover_the_rows_once_and_the_last_one_is_partial():
    assert [num_units(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    assert [unit_range(i, 10, 4) for i in range(num_units(10, 4))] == [(0, 4), (4, 8), (8, 10)]
    unit = Unit("code", "train", 2, 8, 10)
    assert unit.n_rows == 2 and str(unit) == "code/train unit 2 (rows 8-9)"


def test_shards_deal_units_round_robin_disjoint_and_complete():
    owners = {o: [i for i in range(3) if shard_owns(o, (i, 3))] for o in range(9)}
    assert owners == {o: [o % 3] for o in range(9)}
    assert all(shard_owns(o, None) for o in range(5))


def test_contiguous_runs_of_sorted_rows():
    assert contiguous_runs(np.array([], np.int64)) == []
    assert contiguous_runs(np.array([5])) == [(5, 6)]
    assert contiguous_runs(np.array([0, 1, 2, 5, 7, 8])) == [(0, 3), (5, 6), (7, 9)]
