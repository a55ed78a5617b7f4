"""Store contracts that a mutation campaign found unchecked: `verify`'s value invariants at their boundaries (token ids,
target log-probs, a missing object named as missing), and chunkio's
objects beyond the tiny chunks the other tests use (a chunk larger than one Blosc block, the bytes of a padded
partial chunk, a write of part of a shard, a shard index of another size, layouts it must leave to zarr)."""

from __future__ import annotations

import math
import re
import zlib

import google_crc32c
import numpy as np
import pytest
import zarr
from numcodecs import Blosc
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec
from zarr.storage import LocalStore, MemoryStore

from ddk_store import StoreWriter, chunkio, objectio, spec
from ddk_store.schema import MARKER_DONE_COL, data_arrays
from ddk_store.testing import StoreFiles, make_tiny_store
from ddk_store.validate import validate_store

V = 64  # the tiny store's vocabulary


# ------------------------------------------------------------------------------------------------ verify
def _plant(url: str, name: str, edit) -> str:
    """Edit unit 0 of alpha/train's array ``name`` in place and stamp the unit's crc32 of it in its marker, as a writer
    without value checks (or an earlier ddk) would have written it: every checksum matches, only the value
    invariants can tell. Returns the unit's location as `verify` names it."""
    w = StoreWriter.resume(url)
    arrays = w._arrays_of("alpha", spec.SPLIT_TRAIN)
    n = w.units("alpha", spec.SPLIT_TRAIN)[0].n_rows
    data = arrays[name][0:n]
    edit(data)
    arrays[name][0:n] = data
    marker = arrays[spec.ARR_UNITS][0]
    le = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<"))
    marker[MARKER_DONE_COL + 1 + data_arrays(w.meta.encoding).index(name)] = zlib.crc32(le.tobytes())
    arrays[spec.ARR_UNITS][0] = marker
    return f"alpha/train unit 0 (rows 0-{n - 1}) {name}"


@pytest.fixture
def store(tmp_path):
    url = str(tmp_path / "s")
    make_tiny_store(url, domains=("alpha",), vocab_size=V, unit_rows=4)
    assert validate_store(url) == []
    return url


def test_a_token_id_equal_to_the_vocabulary_size_is_out_of_range(store):
    where = _plant(store, spec.ARR_TOKENS, lambda t: t.__setitem__((1, 3), V - 1))  # the largest valid id
    assert validate_store(store) == []
    _plant(store, spec.ARR_TOKENS, lambda t: t.__setitem__((1, 3), V))
    assert [str(i) for i in validate_store(store)] == [f"{where}: token id {V} >= vocab_size {V}"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0.5, 1e-6])
def test_a_target_log_prob_that_is_no_log_probability_is_reported(store, value):
    where = _plant(store, spec.ARR_TARGET_LOGPROBS, lambda t: t.__setitem__((2, 5), value))
    assert [str(i) for i in validate_store(store)] == [f"{where}: target log-prob not finite or > 0"]


@pytest.mark.parametrize("value", [0.0, -0.0])
def test_a_target_log_prob_of_zero_is_a_certain_token_not_damage(store, value):
    _plant(store, spec.ARR_TARGET_LOGPROBS, lambda t: t.__setitem__((2, 5), value))  # log 1: a peaked teacher
    assert validate_store(store) == []


def test_a_deleted_object_is_named_missing_not_altered(store):
    path = StoreFiles(store).row_chunk_path("alpha", "train", spec.ARR_TOPK_LOGPROBS, 5)  # unit 1, rows 4-7
    path.unlink()
    issues = [str(i) for i in validate_store(store)]
    assert len(issues) == 1 and re.fullmatch(r"alpha/train unit 1 \(rows 4-7\) topk_logprobs: chunk\(s\) \[\d+\] "
                                             r"missing", issues[0]), issues


# ------------------------------------------------------------------------------------------------ chunkio
def _array(store, name, *, shape, chunk_rows, shard_rows, fill=65535, blocksize=0):
    root = zarr.open_group(store, mode="a")
    kwargs = {"shards": (shard_rows, *shape[1:])} if shard_rows else {}
    return root.create_array(name, shape=shape, chunks=(chunk_rows, *shape[1:]), dtype="<u2", fill_value=fill,
                             compressors=[BloscCodec(cname="zstd", clevel=1, shuffle="shuffle", typesize=2,
                                                     blocksize=blocksize), Crc32cCodec()], **kwargs)


def _objects(c, data):
    chunks = [chunkio.encode_chunk(c, data[i:i + c.chunk_rows]) for i in range(0, len(data), c.chunk_rows)]
    return chunkio.objects(c, 0, chunks)


@pytest.mark.parametrize("chunk_rows,shard_rows", [(3, 0), (2, 4)])
def test_objects_are_zarrs_bytes_with_the_partial_last_chunk_padded_by_the_fill_value(tmp_path, chunk_rows,
                                                                                       shard_rows):
    data = np.random.default_rng(2).integers(0, 60000, size=(11, 5, 3)).astype("<u2")  # 11: the last chunk partial
    by_zarr = _array(LocalStore(tmp_path / "z"), "x", shape=data.shape, chunk_rows=chunk_rows, shard_rows=shard_rows)
    by_zarr[:] = data
    c = chunkio.chunk_codec(_array(LocalStore(tmp_path / "c"), "x", shape=data.shape, chunk_rows=chunk_rows,
                                   shard_rows=shard_rows))
    files = _objects(c, data)
    assert sorted(files) == sorted(str(p.relative_to(tmp_path / "z")) for p in (tmp_path / "z" / "x" / "c").rglob("*")
                                   if p.is_file())
    for key, raw in files.items():
        assert raw == (tmp_path / "z" / key).read_bytes(), key
    if not shard_rows:  # the padding itself, decoded without chunkio: the last chunk's row past the end is fill
        last = files[c.key(3)]
        assert google_crc32c.value(last[:-4]).to_bytes(4, "little") == last[-4:]
        rows = np.frombuffer(Blosc().decode(last[:-4]), dtype="<u2").reshape(3, 5, 3)
        assert np.array_equal(rows[:2], data[9:]) and (rows[2] == 65535).all()


def test_a_chunk_larger_than_one_blosc_block_reads_both_ways(tmp_path):
    # the Blosc header's decoded size (bytes 4-8) is the chunk's; its block size (bytes 8-12) equals it only for
    # chunks of one block, as the tiny ones elsewhere are (the default encoding's chunks use 256 KiB blocks)
    store = LocalStore(tmp_path / "s")
    data = np.arange(6 * 64 * 32, dtype="<u2").reshape(6, 64, 32)  # 8 KiB chunks of 2 rows, in 1 KiB blocks
    a = _array(store, "a", shape=data.shape, chunk_rows=2, shard_rows=0, blocksize=1024)
    a[:] = data
    c = chunkio.chunk_codec(a)
    np.testing.assert_array_equal(objectio.read_rows(store, {"a": c}, np.arange(6), {})["a"], data)
    b = chunkio.chunk_codec(_array(store, "b", shape=data.shape, chunk_rows=2, shard_rows=4, blocksize=1024))
    objectio.write_local(objectio.local_root(store), _objects(b, data[::-1].copy()))
    np.testing.assert_array_equal(zarr.open_array(store, path="b", mode="r")[:], data[::-1])
    np.testing.assert_array_equal(objectio.read_rows(store, {"b": b}, np.array([0, 3, 5]), {})["b"], data[[5, 2, 0]])


def test_a_sharded_write_of_part_of_a_shard_before_the_arrays_end_is_refused(tmp_path):
    # the shard object would replace the whole shard: its other chunks, written before, would read as fill values
    store = LocalStore(tmp_path / "s")
    c = chunkio.chunk_codec(_array(store, "a", shape=(10, 2), chunk_rows=1, shard_rows=4))  # shards 0-3, 4-7, 8-9
    chunk = chunkio.encode_chunk(c, np.zeros((1, 2), "<u2"))
    for first, n in ((0, 3), (0, 5), (4, 2)):
        with pytest.raises(ValueError, match="whole shards"):
            chunkio.objects(c, first, [chunk] * n)
    assert list(chunkio.objects(c, 8, [chunk] * 2)) == [c.key(2)]  # the array's last shard is whole at 2 chunks
    assert len(chunkio.objects(c, 4, [chunk] * 6)) == 2


def test_a_shard_index_of_another_size_is_refused_though_its_checksum_matches(tmp_path):
    c = chunkio.chunk_codec(_array(LocalStore(tmp_path / "s"), "a", shape=(8, 2), chunk_rows=1, shard_rows=4))
    for entries in (2, 3, 5):  # the index of a shard of another layout: 16 bytes per chunk, then its crc32c
        body = np.arange(2 * entries, dtype="<u8").tobytes()
        with pytest.raises(ValueError, match="shard index has"):
            chunkio.shard_index(c, body + google_crc32c.value(body).to_bytes(4, "little"))
    body = np.arange(8, dtype="<u8").tobytes()
    assert chunkio.shard_index(c, body + google_crc32c.value(body).to_bytes(4, "little")).tolist() == \
        [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_big_endian_chunks_and_an_index_at_a_shards_start_are_left_to_zarr():
    # chunkio reads little-endian chunks and an index at the end only: either of these read by it would be garbage
    root = zarr.open_group(MemoryStore(), mode="a")
    big = root.create_array("b", shape=(4, 3), chunks=(1, 3), dtype="<u2", serializer=BytesCodec(endian="big"),
                            compressors=[BloscCodec(cname="zstd", clevel=1), Crc32cCodec()])
    assert chunkio.chunk_codec(big) is None
    start = ShardingCodec(chunk_shape=(1, 3), codecs=[BytesCodec(), BloscCodec(cname="zstd", clevel=1), Crc32cCodec()],
                          index_codecs=[BytesCodec(), Crc32cCodec()], index_location="start")
    at_start = zarr.create_array(MemoryStore(), shape=(8, 3), chunks=(4, 3), dtype="<u2", serializer=start,
                                 compressors=None)
    assert chunkio.chunk_codec(at_start) is None
    end = ShardingCodec(chunk_shape=(1, 3), codecs=[BytesCodec(), BloscCodec(cname="zstd", clevel=1), Crc32cCodec()],
                        index_codecs=[BytesCodec(), Crc32cCodec()], index_location="end")
    at_end = zarr.create_array(MemoryStore(), shape=(8, 3), chunks=(4, 3), dtype="<u2", serializer=end,
                               compressors=None)
    assert chunkio.chunk_codec(at_end).shard_rows == 4  # the same layout with the index at its end is chunkio's
