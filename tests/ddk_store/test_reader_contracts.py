"""StoreReader (ddk_store.reader): held-out checks, row checks and the messages that locate damage (campaign 18).

Real tiny stores written by the real writer (ddk_store.testing); damage is faked on disk (a deleted object, a
flipped byte, an edited document) as it happens to a user's store.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ddk_store import StoreCorruptError, open_store, reader as reader_module, spec
from ddk_store.testing import StoreFiles, make_tiny_store
from ddk_testkit.outages import fake_outage


def _reference_nll(target: np.ndarray) -> float:
    """store-format.md: heldout_nll is the mean of -target_logprobs over the held-out split, in float64."""
    return float(-np.asarray(target, np.float64).mean())


def test_a_domain_without_held_out_rows_has_no_statistic(tmp_path):
    url = str(tmp_path / "s")
    r = make_tiny_store(url, domains=("a", "b"), train_rows=4, heldout_rows={"a": 0, "b": 3}, unit_rows=2)
    assert r.meta.domain("a").heldout_nll is None and r.meta.domain("a").heldout_ppl is None
    assert r.heldout_nll("a") is None
    target = r.read_rows("b", spec.SPLIT_HELDOUT, np.arange(3)).target_logprobs
    assert r.heldout_nll("b") == pytest.approx(_reference_nll(target), rel=1e-12)


def test_a_missing_held_out_chunk_past_the_first_block_is_named_by_its_own_rows(tmp_path, monkeypatch):
    url = str(tmp_path / "s")
    r = make_tiny_store(url, domains=("a",), train_rows=2, heldout_rows=6, unit_rows=2)
    positions = r.meta.positions
    # blocks of two rows (whole chunks of one row): the deleted rows 4-5 are read in the third block
    monkeypatch.setattr(reader_module, "HELDOUT_BLOCK_BYTES", 4 * positions * 2)
    StoreFiles(url).row_chunk_path("a", spec.SPLIT_HELDOUT, spec.ARR_TARGET_LOGPROBS, 4).unlink()
    with pytest.raises(StoreCorruptError) as e:
        open_store(url).heldout_nll("a")
    assert "a/heldout/target_logprobs rows 4-4 (unit 2): chunk missing or never written" in str(e.value)


def test_an_edited_statistic_is_reported_with_the_rows_it_was_recomputed_from(tmp_path):
    url = str(tmp_path / "s")
    r = make_tiny_store(url, domains=("a",), train_rows=2, heldout_rows=3, unit_rows=2)
    target = r.read_rows("a", spec.SPLIT_HELDOUT, np.arange(3)).target_logprobs
    nll = _reference_nll(target)
    StoreFiles(url).edit_root_meta(lambda m: m["domains"][0].update(heldout_ppl=math.exp(nll) * 1.5))
    with pytest.raises(StoreCorruptError) as e:
        open_store(url).heldout_nll("a")
    assert (f"domains[a].heldout_ppl records {math.exp(nll) * 1.5} but exp(heldout_nll) from a/heldout/"
            f"target_logprobs rows 0-2 give {math.exp(nll):.6f}") in str(e.value)


def test_an_outage_reading_held_out_rows_is_an_outage_even_when_the_store_is_back_a_moment_later(tmp_path,
                                                                                                  monkeypatch):
    """The first read of each held-out log-prob object fails as an unreachable store does (faked ConnectionError
    from the storage layer; no retry budget), later reads succeed. That is StoreUnreachableError, not damage."""
    from ddk_store import StoreUnreachableError

    url = str(tmp_path / "s")
    make_tiny_store(url, domains=("a",), train_rows=2, heldout_rows=3, unit_rows=2)
    r = open_store(url)
    outage = fake_outage(monkeypatch, f"a/heldout/{spec.ARR_TARGET_LOGPROBS}/c/", "first")
    monkeypatch.setenv("DDK_RETRY_SECONDS", "0")
    with pytest.raises(StoreUnreachableError):
        r.heldout_nll("a")
    assert outage.seen


# ----------------------------------------------------------------------------------------------- rows
def _five_rows(tmp_path):
    """A store of one domain, 5 training rows in units of 4 rows, chunks of 2 (a partial last unit and chunk),
    with the data written kept."""
    from ddk_store import StoreWriter
    from ddk_store.testing import synth_rows, tiny_meta

    url = str(tmp_path / "s")
    meta = tiny_meta(domains=("a",))
    rows = {"a": {spec.SPLIT_TRAIN: 5, spec.SPLIT_HELDOUT: 2}}
    w = StoreWriter.open_or_create(url, meta, rows, unit_rows=4, chunk_rows=2)
    rng = np.random.default_rng(3)
    data = {}
    for u in w.pending_units():
        d = synth_rows(rng, u.n_rows, meta.seq_len, meta.top_k, meta.tokenizer.vocab_size)
        w.write_unit(u, **d)
        for k, v in d.items():
            data.setdefault((u.split, k), []).append(v)
    w.finalize()
    return url, {key: np.concatenate(v) for key, v in data.items()}


def _flip(url, split, name, row):
    path, offset, length = StoreFiles(url).row_chunk_span("a", split, name, row)
    raw = bytearray(path.read_bytes())
    raw[offset + length // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_rows_come_back_in_the_order_asked_and_outside_rows_are_refused(tmp_path):
    url, data = _five_rows(tmp_path)
    r = open_store(url)
    asked = [4, 0, 3, 0, 1]
    got = r.read_rows("a", spec.SPLIT_TRAIN, asked)
    np.testing.assert_array_equal(got.tokens, data[(spec.SPLIT_TRAIN, "tokens")][asked])
    np.testing.assert_array_equal(got.target_logprobs,
                                  data[(spec.SPLIT_TRAIN, "target_logprobs")][asked].astype(np.float32))
    assert got.tokens.dtype == np.int32
    perm = r.read_rows("a", spec.SPLIT_TRAIN, [2, 1, 0, 4, 3])  # unique rows, not sorted
    np.testing.assert_array_equal(perm.tokens, data[(spec.SPLIT_TRAIN, "tokens")][[2, 1, 0, 4, 3]])
    for bad, said in (([5], "5..5"), ([-1, 2], "-1..2")):
        with pytest.raises(IndexError, match=rf"a/train: rows must be in \[0, 5\), got {said}"):
            r.read_rows("a", spec.SPLIT_TRAIN, bad)
    with pytest.raises(ValueError, match="order must be 'stored' or 'rank', got 'Rank'"):
        r.read_rows("a", spec.SPLIT_TRAIN, [0], order="Rank")
    with pytest.raises(KeyError, match=r"no domain 'b' in store .*; domains: \['a'\]"):
        r.num_rows("b", spec.SPLIT_TRAIN)


def test_a_missing_object_is_named_by_the_rows_of_its_first_chunk_and_unit_and_every_array_missing(tmp_path):
    url, _ = _five_rows(tmp_path)
    files = StoreFiles(url)
    files.row_chunk_path("a", spec.SPLIT_TRAIN, spec.ARR_TOPK_LOGPROBS, 4).unlink()  # the last, partial unit
    with pytest.raises(StoreCorruptError) as e:
        open_store(url).read_rows("a", spec.SPLIT_TRAIN, [1, 4])
    msg = str(e.value)
    assert f"a/train/{spec.ARR_TOPK_LOGPROBS} rows 4-4 (unit 1): chunk missing or never written" in msg
    assert "also damaged" not in msg
    files.row_chunk_path("a", spec.SPLIT_TRAIN, spec.ARR_TOKENS, 4).unlink()
    files.row_chunk_path("a", spec.SPLIT_TRAIN, spec.ARR_TARGET_LOGPROBS, 4).unlink()
    with pytest.raises(StoreCorruptError) as e:
        open_store(url).read_rows("a", spec.SPLIT_TRAIN, [4])
    assert (f"a/train/{spec.ARR_TOKENS} rows 4-4 (unit 1): chunk missing or never written (fill values read where "
            f"a unit marked done must hold data) (also damaged in these rows: {spec.ARR_TOPK_LOGPROBS}, "
            f"{spec.ARR_TARGET_LOGPROBS})") in str(e.value)
    # training reads leave the targets out, and so does their check
    r = open_store(url)
    files2 = StoreFiles(url)
    assert r.read_rows("a", spec.SPLIT_TRAIN, [0, 1], targets=False).target_logprobs is None
    files2.row_chunk_path("a", spec.SPLIT_TRAIN, spec.ARR_TARGET_LOGPROBS, 0).unlink()
    assert open_store(url).read_rows("a", spec.SPLIT_TRAIN, [2], targets=False).tokens.shape == (1, 16)
    with pytest.raises(StoreCorruptError, match=f"a/train/{spec.ARR_TARGET_LOGPROBS} rows 2-3 .unit 0."):
        open_store(url).read_rows("a", spec.SPLIT_TRAIN, [2])


def test_flipped_bytes_are_named_by_the_first_damaged_chunk(tmp_path):
    url, _ = _five_rows(tmp_path)
    _flip(url, spec.SPLIT_TRAIN, spec.ARR_TOPK_IDS, 4)
    with pytest.raises(StoreCorruptError) as e:
        open_store(url).read_rows("a", spec.SPLIT_TRAIN, [0, 4])
    assert f"a/train/{spec.ARR_TOPK_IDS} rows 4-4 (unit 1): chunk fails its crc32c checksum" in str(e.value)
    _flip(url, spec.SPLIT_TRAIN, spec.ARR_TOPK_IDS, 2)
    with pytest.raises(StoreCorruptError) as e:
        open_store(url).read_rows("a", spec.SPLIT_TRAIN, [0, 2, 4])
    assert f"a/train/{spec.ARR_TOPK_IDS} rows 2-3 (unit 0): chunk fails its crc32c checksum" in str(e.value)


def test_a_metadata_document_replaced_by_a_link_is_refused(tmp_path):
    from ddk_store.errors import StoreFormatError

    url, _ = _five_rows(tmp_path)
    doc = tmp_path / "s" / "a" / "train" / spec.ARR_TOKENS / "zarr.json"
    copy = tmp_path / "elsewhere.json"
    copy.write_bytes(doc.read_bytes())
    doc.unlink()
    doc.symlink_to(copy)
    with pytest.raises(StoreFormatError, match=f"a/train/{spec.ARR_TOKENS}/zarr.json is a symbolic link"):
        open_store(url)


def test_an_unfinished_store_opens_only_when_asked(tmp_path):
    from ddk_store import StoreIncompleteError

    url = str(tmp_path / "s")
    make_tiny_store(url, domains=("a",), train_rows=2, heldout_rows=2, unit_rows=2, finalize=False)
    with pytest.raises(StoreIncompleteError, match="after sharded dumps run `ddk-store finalize"):
        open_store(url)
    assert open_store(url, allow_incomplete=True).meta.status == spec.STATUS_WRITING


def test_an_array_of_another_shape_than_its_layout_is_refused_with_the_fix_for_its_command(tmp_path):
    import json

    from click.testing import CliRunner

    from ddk_store.cli import main as store_cli
    from ddk_store.errors import StoreFormatError

    url, _ = _five_rows(tmp_path)
    doc_path = tmp_path / "s" / "a" / "heldout" / spec.ARR_TOKENS / "zarr.json"
    doc = json.loads(doc_path.read_text())
    doc["shape"] = [3, doc["shape"][1]]
    doc_path.write_text(json.dumps(doc))
    with pytest.raises(StoreFormatError) as e:
        open_store(url).check_structure()
    msg = str(e.value)
    assert f"array 'a/heldout/{spec.ARR_TOKENS}' has shape (3, 16) but the group layout" in msg
    assert "give (2, 16)" in msg and "cannot fix this in place" not in msg
    res = CliRunner().invoke(store_cli, ["verify", url])
    assert res.exit_code != 0 and "`ddk-store repair` cannot fix this in place" in res.output, res.output
    StoreFiles(url).edit_group_layout("a", spec.SPLIT_TRAIN, lambda lay: lay.update(n_rows="five"))
    with pytest.raises(StoreFormatError, match=rf"^store {url}: "):
        open_store(url).num_rows("a", spec.SPLIT_TRAIN)


def test_a_layout_left_to_zarr_reads_scattered_rows_in_order(tmp_path):
    """Data arrays of big-endian chunks (another writer's layout: chunkio leaves it to zarr) are read through zarr,
    scattered rows included."""
    from ddk_store import StoreWriter, chunkio
    from ddk_store.testing import synth_rows, tiny_meta

    url = str(tmp_path / "s")
    meta = tiny_meta(domains=("a",))
    rows = {"a": {spec.SPLIT_TRAIN: 6, spec.SPLIT_HELDOUT: 2}}
    StoreWriter.open_or_create(url, meta, rows, unit_rows=2, chunk_rows=1)
    files = StoreFiles(url)

    def big_endian(doc):
        for codec in doc["codecs"][0]["configuration"]["codecs"]:
            if codec["name"] == "bytes" and "configuration" in codec:
                codec["configuration"]["endian"] = "big"

    for split in spec.SPLITS:
        for name in spec.DATA_ARRAYS:
            if files.doc_path("a", split, name).exists():
                files.edit_doc(big_endian, "a", split, name)
    w = StoreWriter.resume(url)
    rng = np.random.default_rng(5)
    tokens = {}
    for u in w.pending_units():
        d = synth_rows(rng, u.n_rows, meta.seq_len, meta.top_k, meta.tokenizer.vocab_size)
        w.write_unit(u, **d)
        tokens.setdefault(u.split, []).append(d["tokens"])
    w.finalize()
    r = open_store(url)
    assert chunkio.chunk_codec(r.arrays("a", spec.SPLIT_TRAIN)[spec.ARR_TOKENS]) is None
    want = np.concatenate(tokens[spec.SPLIT_TRAIN])
    for asked in ([1, 4], [5, 0, 2], [2, 3]):
        np.testing.assert_array_equal(r.read_rows("a", spec.SPLIT_TRAIN, asked).tokens, want[asked])


def test_an_outage_while_locating_a_damaged_chunk_is_an_outage_not_damage(tmp_path, monkeypatch):
    """A read meets a flipped byte; while the reader reads chunk by chunk to name the damaged one, the store becomes
    unreachable (faked: ConnectionError from the storage layer on any object of that array read a second time, no
    retry budget). That is StoreUnreachableError, not damage of the chunk it could not read."""
    from ddk_store import StoreUnreachableError

    url, _ = _five_rows(tmp_path)
    _flip(url, spec.SPLIT_TRAIN, spec.ARR_TOPK_IDS, 4)
    r = open_store(url)
    r.read_rows("a", spec.SPLIT_TRAIN, [0])  # (metadata read and cached while the store is reachable)
    fake_outage(monkeypatch, f"a/train/{spec.ARR_TOPK_IDS}/c/", "repeat")
    monkeypatch.setenv("DDK_RETRY_SECONDS", "0")
    with pytest.raises(StoreUnreachableError):
        r.read_rows("a", spec.SPLIT_TRAIN, [0, 4])
