"""The select pass's ids reused by the train pass (pack_stream.EncodingCache): the same store whatever the cache
holds (everything, part, nothing), and with everything cached each document is tokenized once."""

from __future__ import annotations

import numpy as np
import pytest

from ddk_store.packed import PackedRows
from stage1_teacher import pack_stream
from stage1_teacher.pack import pack_corpora
from stage1_teacher.tokenize import DocTokenizer

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
