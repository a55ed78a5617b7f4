"""PackedRows contracts that a mutation campaign found unchecked, on a real local store written through PackedRows
itself: rows read back where they were written (a partial last chunk, a chunk of zeros, both splits of a domain,
an empty range), the held-out ordinals' count, read-only readers that write nothing, foreign or mismatched array
documents refused, and what ``damaged_chunks`` (``ddk-store verify``) counts and names in a pack document."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ddk_store.errors import StoreFormatError, StoreUnreachableError
from ddk_store.packed import HELDOUT_DOCS, MAX_NAMED_MISSING, PACKED, TRAINING, PackedRows, pack_chunk_rows
from ddk_store.retry import RETRY_SECONDS_ENV
from zarr.storage import LocalStore

T, CR, DT = 5, 3, np.uint16  # tokens per row, rows per chunk, the stored id dtype
HELD, TRAIN, DOCS = 4, 7, 70_000  # held-out rows, training rows, held-out document ordinals (2 chunks of 2**16)


def _rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 60_000, size=(n, T))


def _chunks(pack: PackedRows, domain: str, split: str, rows: np.ndarray) -> None:
    for i in range(0, len(rows), CR):
        pack.write_chunk(domain, split, i // CR, rows[i:i + CR], chunk_rows=CR, dtype=DT)


def _state(state: str, *, train: int = TRAIN, docs: int = DOCS, heldout: int = HELD) -> dict:
    if state == PACKED:
        return {"state": PACKED, "chunk_rows": CR, "train_rows": train, "heldout_rows": heldout}
    return {"state": TRAINING, "chunk_rows": CR, "heldout_rows": heldout, HELDOUT_DOCS: docs, "cursor": {"rows": train}}


@pytest.fixture
def packed(tmp_path):
    """Domain ``d`` packed whole: HELD held-out rows, TRAIN training rows (a partial last chunk), DOCS ordinals."""
    url = str(tmp_path / "s")
    pack = PackedRows(url)
    _chunks(pack, "d", "heldout", _rows(HELD, 1))
    _chunks(pack, "d", "train", _rows(TRAIN, 2))
    pack.write_ints("d", HELDOUT_DOCS, np.arange(DOCS, dtype=np.int64) * 3 + 1)
    pack.write_state({"seq_len": T}, {"d": _state(PACKED)})
    return url


def _damaged(url: str) -> list[tuple[str, str]]:
    return PackedRows(url, read_only=True).damaged_chunks(DT)


def _read(url: str, split: str, start: int, stop: int) -> np.ndarray:
    return PackedRows(url, read_only=True).read_rows("d", split, start, stop, seq_len=T, chunk_rows=CR, dtype=DT)


# ------------------------------------------------------------------------------------------------ rows
def test_a_chunk_holds_at_least_one_row_whatever_the_sequence_length():
    assert [pack_chunk_rows(t) for t in (1 << 12, 1 << 18, 1 << 19, 1 << 22)] == [64, 1, 1, 1]


def test_rows_read_back_as_int32_across_chunks_and_the_partial_last_chunk(packed):
    want = _rows(TRAIN, 2)
    for start, stop in [(0, TRAIN), (2, 7), (3, 5), (6, 7), (1, 2)]:
        got = _read(packed, "train", start, stop)
        assert got.dtype == np.int32 and np.array_equal(got, want[start:stop]), (start, stop)


def test_an_empty_range_is_zero_rows_of_the_sequence_length(packed):
    got = _read(packed, "train", 4, 4)
    assert got.shape == (0, T) and got.dtype == np.int32


def test_one_reader_keeps_the_splits_of_a_domain_apart(packed):
    # The reader keeps its last chunk: chunk 0 of `heldout` must not be served for chunk 0 of `train`.
    reader = PackedRows(packed, read_only=True)
    kw = dict(seq_len=T, chunk_rows=CR, dtype=DT)
    assert np.array_equal(reader.read_rows("d", "heldout", 0, 2, **kw), _rows(HELD, 1)[:2])
    assert np.array_equal(reader.read_rows("d", "train", 0, 2, **kw), _rows(TRAIN, 2)[:2])


def test_a_chunk_of_zeros_is_stored_and_reads_back_as_rows(tmp_path):
    # Token 0 is a valid id: a chunk of zeros must be written (not left out as zarr's fill value), else it reads
    # as missing.
    url = str(tmp_path / "s")
    pack = PackedRows(url)
    _chunks(pack, "d", "heldout", np.zeros((1, T), dtype=np.int64))
    _chunks(pack, "d", "train", np.zeros((TRAIN, T), dtype=np.int64))
    pack.write_ints("d", HELDOUT_DOCS, np.zeros(3, dtype=np.int64))
    pack.write_state({"seq_len": T}, {"d": _state(TRAINING, docs=3, heldout=1)})
    assert np.array_equal(_read(url, "train", 0, TRAIN), np.zeros((TRAIN, T)))
    assert PackedRows(url, read_only=True).read_ints("d", HELDOUT_DOCS, 3).tolist() == [0, 0, 0]
    assert _damaged(url) == []


@pytest.mark.parametrize("n", [0, 1, 5, 1 << 16, DOCS])
def test_read_ints_gives_exactly_the_first_n_ordinals(packed, n):
    got = PackedRows(packed, read_only=True).read_ints("d", HELDOUT_DOCS, n)
    assert got.dtype == np.int64 and np.array_equal(got, np.arange(n, dtype=np.int64) * 3 + 1)


def test_ordinals_beyond_an_int32_are_kept(tmp_path):
    pack = PackedRows(str(tmp_path / "s"))
    values = np.array([0, 2**31, 2**40 + 7, 5], dtype=np.int64)
    pack.write_ints("d", HELDOUT_DOCS, values)
    assert PackedRows(str(tmp_path / "s"), read_only=True).read_ints("d", HELDOUT_DOCS, 4).tolist() == values.tolist()


# ------------------------------------------------------------------------------------------------ documents
def test_a_read_only_reader_writes_nothing(packed, tmp_path):
    reader = PackedRows(packed, read_only=True)
    with pytest.raises(StoreFormatError, match="read-only"):
        reader.write_state({"seq_len": T}, {})
    with pytest.raises(StoreFormatError, match="missing or unreadable"):  # an array never written: not created
        reader.read_rows("other", "train", 0, 1, seq_len=T, chunk_rows=CR, dtype=DT)
    assert not (tmp_path / "s" / "_pack" / "other.train").exists()
    assert PackedRows(packed).read_state()["domains"] == {"d": _state(PACKED)}


NOT_OURS = "is not a ddk pack document"


@pytest.mark.parametrize("doc, said", [
    ({"zarr_format": 3, "node_type": "group"}, NOT_OURS), ([1, 2], NOT_OURS),
    ({"attributes": {"ddk_pack": {"format": "other", "version": 1}}}, NOT_OURS),
    ({"attributes": {"ddk_pack": {"format": "ddk-pack", "version": 2}}}, "of version 2, this ddk reads version 1"),
], ids=["no attributes", "a list", "another format", "another version"])
def test_a_pack_document_ddk_did_not_write_is_one_problem(packed, tmp_path, doc, said):
    (tmp_path / "s" / "_pack" / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(StoreFormatError, match=said):
        PackedRows(packed, read_only=True).read_state()
    [(where, problem)] = _damaged(packed)
    assert where == "_pack/zarr.json" and said in problem


def test_the_packed_arrays_check_every_chunk_with_crc32c(packed, tmp_path):
    # The codec chain of store-format.md section 4; only the crc32c codec is sure to see a flipped byte.
    for name in ("d.train", "d.heldout", f"d.{HELDOUT_DOCS}"):
        codecs = json.loads((tmp_path / "s" / "_pack" / name / "zarr.json").read_text())["codecs"]
        assert [c["name"] for c in codecs][-2:] == ["blosc", "crc32c"], (name, codecs)
    chunk = tmp_path / "s" / "_pack" / "d.train" / "c" / "1" / "0"
    b = bytearray(chunk.read_bytes())
    b[-1] ^= 0x01  # (the checksum's own bytes: blosc never reads them)
    chunk.write_bytes(bytes(b))
    assert [(w, p[:25]) for w, p in _damaged(packed)] == [("_pack/d.train chunk 1", "fails its crc32c checksum")]


def test_a_packed_array_declaring_a_foreign_codec_is_refused_before_any_read(packed, tmp_path):
    path = tmp_path / "s" / "_pack" / "d.train" / "zarr.json"
    doc = json.loads(path.read_text())
    doc["codecs"].insert(1, {"name": "gzip", "configuration": {"level": 1}})
    path.write_text(json.dumps(doc))
    with pytest.raises(StoreFormatError, match=r"gzip.*refusing to decode"):
        _read(packed, "train", 0, 1)
    [(where, problem)] = _damaged(packed)
    assert where == "_pack/d.train" and "gzip" in problem


def test_rows_under_another_chunk_size_are_refused_not_misplaced(packed):
    with pytest.raises(StoreFormatError, match=r"holds chunks of \(3, 5\).*chunks of \(4, 5\)"):
        PackedRows(packed, read_only=True).read_rows("d", "train", 0, 1, seq_len=T, chunk_rows=4, dtype=DT)


# ------------------------------------------------------------------------------------------------ damaged_chunks
def _set_state(url: str, domains: dict) -> None:
    PackedRows(url).write_state({"seq_len": T}, domains)


def _drop(tmp_path, name: str, index: int) -> None:
    """Delete chunk ``index`` of ``_pack/<name>`` (rows: 2-d chunk keys; ordinals: 1-d)."""
    key = f"c/{index}" + ("" if name.endswith(HELDOUT_DOCS) else "/0")
    (tmp_path / "s" / "_pack" / name / key).unlink()


def test_a_packed_domain_counts_its_rows_and_not_its_ordinals(packed, tmp_path):
    _drop(tmp_path, f"d.{HELDOUT_DOCS}", 1)  # never read again once the domain is packed
    assert _damaged(packed) == []
    _drop(tmp_path, "d.train", 2)  # the partial last chunk (row 6)
    _drop(tmp_path, "d.heldout", 1)  # row 3
    assert _damaged(packed) == [("_pack/d.heldout chunk 1", "missing"), ("_pack/d.train chunk 2", "missing")]


def test_a_domain_being_packed_counts_its_cursor_rows_and_its_ordinals(packed, tmp_path):
    _set_state(packed, {"d": _state(TRAINING, train=3)})  # the cursor: one chunk of training rows so far
    _drop(tmp_path, "d.train", 2)  # beyond the cursor: not yet meaningful
    assert _damaged(packed) == []
    _drop(tmp_path, "d.train", 0)
    _drop(tmp_path, f"d.{HELDOUT_DOCS}", 1)  # ordinals 65536..69999
    assert _damaged(packed) == [("_pack/d.train chunk 0", "missing"), (f"_pack/d.{HELDOUT_DOCS} chunk 1", "missing")]


def test_a_domain_in_no_known_state_is_not_checked(packed):
    _set_state(packed, {"d": _state(PACKED), "e": {"state": "selecting"}})
    assert _damaged(packed) == []


@pytest.mark.parametrize("domain", ["../up", "a/b"])
def test_a_domain_name_the_format_forbids_is_named_not_used_as_a_path(packed, domain):
    _set_state(packed, {domain: _state(PACKED)})
    problems = _damaged(packed)
    assert problems and all(w == "_pack/zarr.json" and "forbids" in p for w, p in problems), problems


def test_a_counted_array_that_is_not_there_is_named(packed):
    _set_state(packed, {"d": _state(PACKED), "e": _state(PACKED, train=1, heldout=1)})
    problems = _damaged(packed)
    assert [w for w, _ in problems] == ["_pack/e.heldout", "_pack/e.train"], problems
    assert all("missing or unreadable" in p for _, p in problems), problems


@pytest.mark.parametrize("state, edit", [
    (PACKED, lambda st: st.pop("heldout_rows")), (PACKED, lambda st: st.pop("train_rows")),
    (TRAINING, lambda st: st.pop("cursor")), (TRAINING, lambda st: st.pop(HELDOUT_DOCS)),
    (PACKED, lambda st: st.update(train_rows="many")), (PACKED, lambda st: st.update(chunk_rows=None)),
    (PACKED, lambda st: st.update(train_rows=[1])), (TRAINING, lambda st: st.update(cursor=7)),
], ids=["no heldout_rows", "no train_rows", "no cursor", "no heldout_docs", "not a number", "null", "a list",
        "cursor not a mapping"])
def test_a_pack_document_with_a_bad_count_is_one_problem(packed, state, edit):
    st = _state(state)
    edit(st)
    _set_state(packed, {"d": st})
    [(where, problem)] = _damaged(packed)
    assert where == "_pack/zarr.json" and problem.startswith("pack document lacks"), problem


def test_a_count_far_beyond_the_stored_chunks_is_one_problem_and_a_few_missing_are_each_named(packed):
    def counting(chunks: int) -> list[tuple[str, str]]:
        _set_state(packed, {"d": _state(PACKED, train=CR * chunks)})
        return _damaged(packed)

    # 3 chunks are stored; up to MAX_NAMED_MISSING more counted are each named, beyond that the shortfall once.
    assert counting(3 + MAX_NAMED_MISSING) == [(f"_pack/d.train chunk {i}", "missing")
                                               for i in range(3, 3 + MAX_NAMED_MISSING)]
    many = 3 + MAX_NAMED_MISSING + 1
    assert counting(many) == [("_pack/d.train", f"the pack document counts {CR * many:,} item(s) in {many:,} "
                                                "chunk(s), but 3 are stored")]
    _set_state(packed, {"d": _state(PACKED, train=10**12)})  # an edited count: never looped over
    assert _damaged(packed) == [("_pack/d.train", f"the pack document counts {10**12:,} item(s) in "
                                                  f"{-(-10**12 // CR):,} chunk(s), but 3 are stored")]


class _Outage(LocalStore):
    """A local store whose chunk reads fail as a dropped connection does (the existence checks still answer)."""

    async def get(self, key, prototype, byte_range=None):
        if "/c/" in key:
            raise ConnectionResetError("connection reset by peer")
        return await super().get(key, prototype, byte_range)


def test_an_outage_while_reading_a_chunk_is_no_damage(packed, monkeypatch, tmp_path):
    monkeypatch.setenv(RETRY_SECONDS_ENV, "0")
    reader = PackedRows(packed, read_only=True, store=_Outage(str(tmp_path / "s"), read_only=True))
    with pytest.raises(StoreUnreachableError):
        reader.damaged_chunks(DT)
