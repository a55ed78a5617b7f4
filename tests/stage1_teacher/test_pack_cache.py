"""The select pass's ids reused by the train pass (pack_stream.EncodingCache): the same store whatever the cache
holds (everything, part, nothing), and with everything cached each document is tokenized once."""

from __future__ import annotations

import numpy as np
import pytest

from ddk_store.packed import PackedRows
from ddk_testkit.commands import HELDOUT, SEQ_LEN
from ddk_testkit.corpora import domain_docs
from stage1_teacher import pack_stream
from stage1_teacher.pack import pack_corpora
from stage1_teacher.pack_stream import select_heldout
from stage1_teacher.tokenize import DocTokenizer, bos_to_add

from .test_pack_stream import _rows, _setup


class CountingTokenizer(DocTokenizer):
    """The real tokenizer, counting the texts it is given."""

    texts = 0

    def encode(self, texts):
        def counted(ts):
            for t in ts:
                self.texts += 1
                yield t

        return super().encode(counted(texts))


def _pack(tok, corpora, kw, url, workers):
    with CountingTokenizer(tok, workers=workers, batch=16) as coder:
        packed = pack_corpora(url, corpora, coder, chunk_rows=4, **kw)
    return packed, coder.texts


@pytest.mark.parametrize(("workers", "max_rows"), [(1, 0), (2, 0), (2, 5)])
def test_the_cache_changes_nothing_in_the_store(tiny_teacher, corpora_yaml, tmp_path, monkeypatch, workers, max_rows):
    tok, corpora, kw = _setup(tiny_teacher, corpora_yaml, max_rows)
    ref, _ = _pack(tok, corpora, kw, str(tmp_path / "all"), workers)
    ref_state = PackedRows(ref.url).read_state()
    for budget in (0, 3000):  # nothing cached; some documents of the first domain cached, the rest tokenized
        monkeypatch.setattr(pack_stream, "CACHE_BYTES", budget)
        again, _ = _pack(tok, corpora, kw, str(tmp_path / f"b{budget}"), workers)
        assert PackedRows(again.url).read_state() == ref_state, budget
        for d in ref.domains:
            for split in ("train", "heldout"):
                assert np.array_equal(_rows(again, d, split), _rows(ref, d, split)), (budget, d, split)


def test_with_everything_cached_each_document_is_tokenized_once(tiny_teacher, corpora_yaml, tmp_path, monkeypatch):
    tok, corpora, kw = _setup(tiny_teacher, corpora_yaml)
    packed, once = _pack(tok, corpora, kw, str(tmp_path / "all"), 2)
    assert once == sum(st["n_documents"] for st in packed.domains.values())
    monkeypatch.setattr(pack_stream, "CACHE_BYTES", 0)
    _, uncached = _pack(tok, corpora, kw, str(tmp_path / "none"), 2)
    assert uncached > once  # without the cache the train pass tokenizes again what the select pass did


def test_past_the_cache_the_select_pass_tokenizes_only_what_the_held_out_heap_may_take(tiny_teacher, tmp_path):
    # docs/stage1.md (pack phase): once the encoding cache is full, a document the held-out heap rejects is not even
    # tokenized by the select pass. Full from the first document that does not fit: bytes are left then (the next
    # document would not fit either), and counting those as room tokenized every document to the end.
    (tmp_path / "s.txt").write_text("\n".join(domain_docs("scripture", 3000)) + "\n", encoding="utf-8")
    (tmp_path / "c.yaml").write_text("domains:\n  scripture: {paths: [s.txt], format: lines}\n", encoding="utf-8")
    tok, (src,), _ = _setup(tiny_teacher, tmp_path / "c.yaml")

    def select(cache):
        with CountingTokenizer(tok, workers=1, batch=16) as coder:
            select_heldout(src, coder, seq_len=SEQ_LEN, heldout_seqs=HELDOUT, max_train_rows=0, on_bad_utf8="skip",
                           eos_id=tok.eos_token_id, bos_id=bos_to_add(tok), cache=cache)
        return coder.texts

    assert select(pack_stream.EncodingCache()) == 3000  # the cache holds them all: every document, once
    without = select(None)  # a resumed run, which has no cache
    small = pack_stream.EncodingCache(budget=2000)
    counted, left = select(small), small.left
    cached = len(small.take("scripture"))
    # The documents cached, the one that did not fit and the tokenizer's read-ahead (two batches of 16), then only
    # the documents the held-out heap may take.
    assert counted <= without + cached + 1 + 2 * 16 < 3000 // 2, (counted, without, cached)
    assert small.full and 0 < left < 2000
