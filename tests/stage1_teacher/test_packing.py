"""Pure packing: EOS placement, fixed rows, early stop, and the deterministic held-out split (hand-checked)."""

from __future__ import annotations

import numpy as np
import pytest

from ddk_store.errors import ConfigError
from stage1_teacher.packing import heldout_indices, pack_rows, split_rows, tokenize_batched


def test_pack_rows_puts_eos_after_every_document_and_drops_the_remainder():
    p = pack_rows([[1, 2], [3], [4, 5, 6], [7]], seq_len=3, eos_id=0)
    # stream: 1 2 0 3 0 4 5 6 0 7 0  -> 3 full rows, "7 0" dropped
    assert p.rows.tolist() == [[1, 2, 0], [3, 0, 4], [5, 6, 0]]
    assert p.rows.dtype == np.int32
    assert (p.n_documents, p.n_tokens) == (4, 11)


def test_pack_rows_stops_reading_once_the_cap_is_full():
    consumed = []

    def docs():
        for i in range(100):
            consumed.append(i)
            yield [i + 1] * 4

    p = pack_rows(docs(), seq_len=5, eos_id=0, max_rows=2)
    assert p.rows.tolist() == [[1, 1, 1, 1, 0], [2, 2, 2, 2, 0]]
    assert consumed == [0, 1] and p.n_documents == 2


def test_pack_rows_of_nothing_is_empty():
    p = pack_rows([], seq_len=4, eos_id=9)
    assert p.rows.shape == (0, 4) and p.n_tokens == 0


def test_heldout_indices_are_evenly_spaced_midpoints():
    assert heldout_indices(10, 2).tolist() == [2, 7]
    assert heldout_indices(10, 5).tolist() == [1, 3, 5, 7, 9]
    assert heldout_indices(7, 1).tolist() == [3]
    for n, h in [(1000, 37), (501, 500), (3, 2)]:
        idx = heldout_indices(n, h)
        assert len(set(idx.tolist())) == h and idx.min() >= 0 and idx.max() < n
    with pytest.raises(ValueError):
        heldout_indices(5, 5)


def test_split_rows_is_disjoint_complete_and_deterministic():
    p = pack_rows([[i, i, i] for i in range(1, 21)], seq_len=4, eos_id=0)  # 80 tokens -> 20 rows
    train, held = split_rows(p, "d", heldout_seqs=4)
    assert held.tolist() == p.rows[[2, 7, 12, 17]].tolist()
    assert train.shape == (16, 4)
    assert sorted(map(tuple, np.concatenate([train, held]).tolist())) == sorted(map(tuple, p.rows.tolist()))
    train2, held2 = split_rows(p, "d", heldout_seqs=4)
    assert np.array_equal(train, train2) and np.array_equal(held, held2)
    capped, held3 = split_rows(p, "d", heldout_seqs=4, max_train_rows=5)
    assert capped.shape == (5, 4) and np.array_equal(held3, held)


def test_split_rows_errors_name_the_domain_and_the_fix():
    empty = pack_rows([[1]], seq_len=8, eos_id=0)
    with pytest.raises(ConfigError, match=r"domain 'code' is empty.*fewer than one row of --seq-len 8"):
        split_rows(empty, "code", heldout_seqs=1)
    small = pack_rows([[1, 2, 3]] * 3, seq_len=4, eos_id=0)  # 3 rows
    with pytest.raises(ConfigError, match=r"domain 'law' is too small: 3 rows.*--heldout-seqs 3.*at most 2"):
        split_rows(small, "law", heldout_seqs=3)


def test_tokenize_batched_preserves_order_across_batches():
    calls = []

    def enc(texts):
        calls.append(len(texts))
        return [[len(t)] for t in texts]

    out = list(tokenize_batched(["a", "bb", "ccc", "dddd", "eeeee"], enc, batch=2))
    assert out == [[1], [2], [3], [4], [5]] and calls == [2, 2, 1]
