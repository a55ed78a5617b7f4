"""Pure packing: EOS placement, fixed rows, early stop, and the deterministic held-out split (hand-checked).

The held-out rule is document-level since packing v2 (tests/stage1_teacher/test_heldout_split.py checks it in
depth); the split tests below keep their assertions on the v2 function, except the evenly spaced row indices of v1.
"""

from __future__ import annotations

import numpy as np
import pytest

from ddk_store.errors import ConfigError
from stage1_teacher.packing import doc_key, pack_domain, pack_rows, tokenize_batched


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


def _keyed(docs, domain="d"):
    return [(doc_key(domain, "f", i), d) for i, d in enumerate(docs)]


def test_split_is_disjoint_complete_and_deterministic():
    docs = [[i, i, i] for i in range(1, 21)]  # 80 tokens -> 20 rows of 4
    s = pack_domain(_keyed(docs), domain="d", seq_len=4, eos_id=0, heldout_seqs=4)
    # Held-out: the 4 documents of lowest key (each is exactly one row), in corpus order; training: the rest.
    lowest = sorted(sorted(range(20), key=lambda i: doc_key("d", "f", i))[:4])
    assert s.heldout_docs.tolist() == lowest and s.heldout.tolist() == [docs[i] + [0] for i in lowest]
    assert s.train.shape == (16, 4) and s.train_docs.tolist() == [i for i in range(20) if i not in lowest]
    assert sorted(map(tuple, np.concatenate([s.train, s.heldout]).tolist())) == sorted(tuple(d + [0]) for d in docs)
    s2 = pack_domain(_keyed(docs), domain="d", seq_len=4, eos_id=0, heldout_seqs=4)
    assert np.array_equal(s.train, s2.train) and np.array_equal(s.heldout, s2.heldout)
    capped = pack_domain(_keyed(docs), domain="d", seq_len=4, eos_id=0, heldout_seqs=4, max_train_rows=5)
    assert capped.train.shape == (5, 4) and capped.heldout.shape == (4, 4)


def test_split_errors_name_the_domain_and_the_fix():
    with pytest.raises(ConfigError, match=r"domain 'code' is empty.*fewer than one row of --seq-len 8"):
        pack_domain(_keyed([[1]]), domain="code", seq_len=8, eos_id=0, heldout_seqs=1)
    with pytest.raises(ConfigError, match=r"domain 'law' is too small: 3 rows.*--heldout-seqs 3.*at most 2"):
        pack_domain(_keyed([[1, 2, 3]] * 3), domain="law", seq_len=4, eos_id=0, heldout_seqs=3)  # 3 rows


def test_tokenize_batched_preserves_order_across_batches():
    calls = []

    def enc(texts):
        calls.append(len(texts))
        return [[len(t)] for t in texts]

    out = list(tokenize_batched(["a", "bb", "ccc", "dddd", "eeeee"], enc, batch=2))
    assert out == [[1], [2], [3], [4], [5]] and calls == [2, 2, 1]


def test_batched_with_a_character_budget_still_caps_the_count():
    """With max_chars a batch ends at ``size`` items or at ``max_chars`` characters, whichever comes first."""
    from stage1_teacher.packing import batched

    assert list(batched(["a"] * 5, 2, max_chars=100)) == [["a", "a"], ["a", "a"], ["a"]]
    assert list(batched(["abc", "d", "efgh", "i"], 10, max_chars=4)) == [["abc", "d"], ["efgh"], ["i"]]
    assert list(batched(["a"] * 5, 2)) == [["a", "a"], ["a", "a"], ["a"]]
