"""Node-level contracts of a store's documents and arrays (mutation campaign 14): codecs inside a shard are held to
the allowlist like the array's own, a root document that is no object or a group document that is an array's is one
format error naming the store, and a damaged chunk read with others is named by its own unit."""

from __future__ import annotations

import shutil

import pytest

from ddk_store import StoreCorruptError, StoreFormatError, StoreWriter, open_store, spec
from ddk_store.testing import StoreFiles, make_tiny_store
from ddk_testkit.outages import fake_outage

GZIP = {"name": "gzip", "configuration": {"level": 1}}  # a codec zarr knows and the store format does not allow


@pytest.fixture
def store(tmp_path):
    url = str(tmp_path / "s")
    make_tiny_store(url, domains=("alpha", "beta"), train_rows=4, heldout_rows=1, unit_rows=4)
    return url


@pytest.mark.parametrize("inside", ["codecs", "index_codecs"])
def test_a_codec_planted_inside_a_shard_is_refused_before_any_read(store, inside):
    """The allowlist covers the shard's chunk codecs and its index codecs, not only the array's top level."""
    def plant(doc):
        config = doc["codecs"][0]["configuration"]
        assert doc["codecs"][0]["name"] == "sharding_indexed"
        config[inside] = [*config[inside][:-1], GZIP, config[inside][-1]]
    StoreFiles(store).edit_doc(plant, "alpha", spec.SPLIT_TRAIN, spec.ARR_TOKENS)
    with pytest.raises(StoreFormatError, match=r"declares codec\(s\) \['gzip'\], outside the store format's"):
        open_store(store).read_rows("alpha", spec.SPLIT_TRAIN, [0])


@pytest.mark.parametrize("text, kind", [("[1, 2]", "list"), ("3", "int")], ids=["list", "int"])
def test_a_root_document_that_is_no_json_object_is_named_as_such(store, text, kind):
    StoreFiles(store).doc_path().write_text(text)
    with pytest.raises(StoreFormatError, match=f"root zarr.json is a JSON {kind}, not an object"):
        open_store(store)


def test_a_metadata_error_names_the_store_it_is_in(store):
    StoreFiles(store).edit_root_meta(lambda m: m.update(top_k=0))
    with pytest.raises(StoreFormatError) as e:
        open_store(store)
    assert str(e.value).startswith(f"{store}: field 'top_k'"), str(e.value)


def test_a_group_whose_document_is_an_arrays_is_refused_in_one_line(store):
    files = StoreFiles(store)
    shutil.copy(files.doc_path("alpha", spec.SPLIT_TRAIN, spec.ARR_TOKENS), files.doc_path("alpha", spec.SPLIT_TRAIN))
    with pytest.raises(StoreFormatError, match="'alpha/train' is an array, not a group"):
        open_store(store).read_rows("alpha", spec.SPLIT_TRAIN, [0])


def test_a_missing_array_or_group_is_named_with_the_store(store):
    files = StoreFiles(store)
    shutil.rmtree(files.doc_path("alpha", spec.SPLIT_TRAIN, spec.ARR_TOPK_IDS).parent)
    with pytest.raises(StoreFormatError, match=f"store {store}: array 'alpha/train/{spec.ARR_TOPK_IDS}' is missing"):
        open_store(store).read_rows("alpha", spec.SPLIT_TRAIN, [0])
    shutil.rmtree(files.doc_path("beta", spec.SPLIT_HELDOUT).parent)
    with pytest.raises(StoreFormatError, match=f"^store {store}: group 'beta/heldout' is missing"):
        open_store(store).read_rows("beta", spec.SPLIT_HELDOUT, [0])


def unfinished_store_with_a_flipped_target(tmp_path) -> str:
    """An unfinished store of domain beta, 8 held-out rows in units of 4, with a byte flipped in the chunk of held-out
    row 5's target log-probs (unit 1)."""
    url = str(tmp_path / "s")
    make_tiny_store(url, domains=("beta",), train_rows=4, heldout_rows=8, unit_rows=4, finalize=False)
    path, offset, length = StoreFiles(url).row_chunk_span("beta", spec.SPLIT_HELDOUT, spec.ARR_TARGET_LOGPROBS, 5)
    b = bytearray(path.read_bytes())
    b[offset + length // 2] ^= 0x01
    path.write_bytes(bytes(b))
    return url


def test_a_damaged_chunk_read_with_others_is_named_by_its_own_unit(tmp_path):
    """finalize reads every held-out target of a domain at once; the flipped byte lies in unit 1 (rows 4-7), and the
    error names unit 1, the one repair must reset, not the first unit of the read."""
    url = unfinished_store_with_a_flipped_target(tmp_path)
    with pytest.raises(StoreCorruptError, match=r"beta/heldout unit 1 \(rows 4-7\): target_logprobs fails its crc32c"):
        StoreWriter.resume(url).finalize()


def test_a_group_missing_from_an_unfinished_store_is_named_with_the_store(tmp_path):
    """What a resumed dump or finalize meets: one line naming the store, the group and how it is mended."""
    url = str(tmp_path / "s")
    make_tiny_store(url, domains=("beta",), train_rows=4, heldout_rows=2, unit_rows=2, finalize=False)
    StoreFiles(url).doc_path("beta", spec.SPLIT_HELDOUT).unlink()
    with pytest.raises(StoreFormatError, match=f"^store {url}: group 'beta/heldout' is missing; a dump stopped"):
        StoreWriter.resume(url).finalize()


def test_an_outage_while_locating_a_damaged_chunk_is_an_outage_not_damage(tmp_path, monkeypatch):
    """finalize's read of the held-out targets meets a flipped byte; while it reads unit by unit to name the damaged
    one, the store becomes unreachable (faked: ConnectionError from the storage layer on any object read a second
    time). That is StoreUnreachableError, not damage of the first unit it could not read."""
    from ddk_store import StoreUnreachableError

    url = unfinished_store_with_a_flipped_target(tmp_path)
    writer = StoreWriter.resume(url)
    fake_outage(monkeypatch, f"beta/heldout/{spec.ARR_TARGET_LOGPROBS}/c/", "repeat")
    monkeypatch.setenv("DDK_RETRY_SECONDS", "0.2")
    with pytest.raises(StoreUnreachableError):
        writer.finalize()
