"""chunkio writes the objects zarr writes and reads what zarr writes: both directions, sharded (format 1.2) and not
(1.0/1.1), on a local disk and through a zarr store (memory://), including a partial last shard, padded chunks,
missing objects and damaged bytes."""

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.storage import LocalStore, MemoryStore

from ddk_store import chunkio, objectio


def _array(store, name, *, shape, chunk_rows, shard_rows, dtype="<u2", fill=65535, clevel=1):
    root = zarr.open_group(store, mode="a")
    kwargs = {"shards": (shard_rows, *shape[1:])} if shard_rows else {}
    return root.create_array(name, shape=shape, chunks=(chunk_rows, *shape[1:]), dtype=dtype, fill_value=fill,
                             compressors=[BloscCodec(cname="zstd", clevel=clevel, shuffle="shuffle",
                                                     typesize=np.dtype(dtype).itemsize), Crc32cCodec()], **kwargs)


def _write(store, c, data):
    """Every object of ``data`` (all rows) through chunkio, as the writer does."""
    chunks = [chunkio.encode_chunk(c, data[i:i + c.chunk_rows]) for i in range(0, len(data), c.chunk_rows)]
    files = chunkio.objects(c, 0, chunks)
    root = objectio.local_root(store)
    if root is not None:
        objectio.write_local(root, files)
    else:
        zarr.core.sync.sync(objectio.put_objects(store, files))
    return files


STORES = {"local": lambda tmp: LocalStore(tmp / "s"), "memory": lambda tmp: MemoryStore()}
LAYOUTS = [(1, 4), (2, 4), (3, 0), (1, 0)]  # (chunk_rows, shard_rows); 0: unsharded


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("chunk_rows,shard_rows", LAYOUTS)
def test_zarr_reads_what_chunkio_writes(tmp_path, kind, chunk_rows, shard_rows):
    store = STORES[kind](tmp_path)
    data = np.random.default_rng(0).integers(0, 60000, size=(11, 5, 3)).astype("<u2")  # 11: a partial last shard
    arr = _array(store, "x", shape=data.shape, chunk_rows=chunk_rows, shard_rows=shard_rows)
    c = chunkio.chunk_codec(arr)
    assert c is not None and c.chunk_rows == chunk_rows and c.shard_rows == shard_rows
    files = _write(store, c, data)
    assert len(files) == -(-11 // (shard_rows or chunk_rows))  # one object per shard (or chunk)
    np.testing.assert_array_equal(zarr.open_array(store, path="x", mode="r")[:], data)


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("chunk_rows,shard_rows", LAYOUTS)
def test_chunkio_reads_what_zarr_writes(tmp_path, kind, chunk_rows, shard_rows):
    store = STORES[kind](tmp_path)
    rng = np.random.default_rng(1)
    data = rng.integers(0, 60000, size=(11, 5, 3)).astype("<u2")
    arr = _array(store, "x", shape=data.shape, chunk_rows=chunk_rows, shard_rows=shard_rows)
    arr[:] = data
    c = chunkio.chunk_codec(arr)
    for rows in (np.arange(11), np.array([0, 3, 4, 10]), np.array([7])):
        got = objectio.read_rows(store, {"x": c}, rows, {})["x"]
        np.testing.assert_array_equal(got, data[rows])


@pytest.mark.parametrize("chunk_rows,shard_rows", LAYOUTS)
def test_missing_objects_read_as_fill_and_damage_is_reported_per_array(tmp_path, chunk_rows, shard_rows):
    store = LocalStore(tmp_path / "s")
    data = np.arange(8 * 5 * 3, dtype="<u2").reshape(8, 5, 3)
    codecs = {}
    for name in ("a", "b"):
        codecs[name] = chunkio.chunk_codec(_array(store, name, shape=data.shape, chunk_rows=chunk_rows,
                                                  shard_rows=shard_rows))
        _write(store, codecs[name], data)
    obj = shard_rows or chunk_rows
    # object 1 of "a" deleted: its rows are fill values, the others intact
    (tmp_path / "s" / codecs["a"].key(1)).unlink()
    got = objectio.read_rows(store, codecs, np.arange(8), {})
    lost = np.zeros(8, bool)
    lost[obj:2 * obj] = True
    assert (got["a"][lost] == 65535).all() and np.array_equal(got["a"][~lost], data[~lost])
    np.testing.assert_array_equal(got["b"], data)
    # one flipped byte in "b"'s first object: "b" reports the damage, "a" still reads
    path = tmp_path / "s" / codecs["b"].key(0)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0x40
    path.write_bytes(bytes(raw))
    got = objectio.read_rows(store, codecs, np.arange(obj), {})
    assert isinstance(got["b"], (ValueError, RuntimeError))
    np.testing.assert_array_equal(got["a"], data[:obj])


def test_a_damaged_shard_index_is_reported(tmp_path):
    store = LocalStore(tmp_path / "s")
    data = np.arange(8 * 5 * 3, dtype="<u2").reshape(8, 5, 3)
    c = chunkio.chunk_codec(_array(store, "a", shape=data.shape, chunk_rows=1, shard_rows=4))
    _write(store, c, data)
    path = tmp_path / "s" / c.key(1)
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0x01  # inside the index
    path.write_bytes(bytes(raw))
    assert isinstance(objectio.read_rows(store, {"a": c}, np.array([5]), {})["a"], ValueError)
    np.testing.assert_array_equal(objectio.read_rows(store, {"a": c}, np.array([1]), {})["a"], data[[1]])


def test_a_sharded_write_must_cover_whole_shards(tmp_path):
    store = LocalStore(tmp_path / "s")
    c = chunkio.chunk_codec(_array(store, "a", shape=(8, 2), chunk_rows=1, shard_rows=4))
    chunk = chunkio.encode_chunk(c, np.zeros((1, 2), "<u2"))
    with pytest.raises(ValueError, match="whole shards"):
        chunkio.objects(c, 1, [chunk] * 3)


def test_other_layouts_keep_zarrs_path(tmp_path):
    root = zarr.open_group(LocalStore(tmp_path / "s"), mode="a")
    plain = root.create_array("p", shape=(4, 3), chunks=(1, 3), dtype="<u2", compressors=None)  # no crc32c
    split = root.create_array("q", shape=(4, 6), chunks=(1, 3), dtype="<u2",
                              compressors=[BloscCodec(cname="zstd", clevel=1), Crc32cCodec()])  # split columns
    assert chunkio.chunk_codec(plain) is None and chunkio.chunk_codec(split) is None


@pytest.mark.parametrize("writer", ["chunkio", "zarr"])
def test_object_ok_finds_the_index_of_a_shard_of_any_number_of_chunks(tmp_path, writer):
    # The local cache keeps a fetched object only when object_ok verifies it; a shard of more than 4,096 chunks
    # (--unit-rows 5000 with one row per chunk) was never verified, so every read fetched it whole again.
    store = LocalStore(tmp_path / "s")
    n = 5000
    data = np.random.default_rng(2).integers(0, 60000, size=(n, 2, 1)).astype("<u2")
    arr = _array(store, "x", shape=data.shape, chunk_rows=1, shard_rows=n)
    if writer == "zarr":
        arr[:] = data
    else:
        _write(store, chunkio.chunk_codec(arr), data)
    shard = (tmp_path / "s" / "x" / "c" / "0" / "0" / "0").read_bytes()
    index = np.frombuffer(shard[-4 - 16 * n:-4], dtype="<u8").reshape(n, 2)
    assert index.shape == (n, 2) and chunkio.framed_ok(shard[-4 - 16 * n:])  # it is a shard of n chunks
    assert chunkio.object_ok(shard)
    first = int(index[0, 0])
    flipped = bytearray(shard)
    flipped[first] ^= 0xFF  # a byte of the first chunk
    assert not chunkio.object_ok(bytes(flipped))


def test_object_ok_still_finds_a_small_index_after_a_gap():
    # A shard whose chunks do not fill the bytes before the index (a gap, as a rewrite in place may leave): found by
    # trying every index size up to max_chunks.
    import google_crc32c

    def framed(body: bytes) -> bytes:
        return body + google_crc32c.value(body).to_bytes(4, "little")

    a, b = framed(b"first chunk"), framed(b"second")
    body = a + b"\0" * 7 + b
    index = np.array([[0, len(a)], [len(a) + 7, len(b)]], dtype="<u8").tobytes()
    shard = body + framed(index)
    assert chunkio.object_ok(shard)
    assert not chunkio.object_ok(shard, max_chunks=1)  # the index holds 2 entries
    bad = bytearray(shard)
    bad[len(a) + 8] ^= 1  # inside the second chunk
    assert not chunkio.object_ok(bytes(bad))


def test_a_local_write_never_goes_through_a_link_that_leads_out_of_the_store(tmp_path):
    from ddk_store.errors import StoreFormatError

    root, outside = tmp_path / "store", tmp_path / "victim"
    (root / "inner").mkdir(parents=True)
    outside.mkdir()
    (root / "legal").symlink_to(outside)  # planted in a shared store: a chunk folder pointing elsewhere
    with pytest.raises(StoreFormatError, match=r"legal leads outside the store .* through a symbolic link"):
        objectio.write_local(root, {"legal/train/tokens/c/0/0": b"rows"})
    assert list(outside.iterdir()) == []
    (root / "alias").symlink_to(root / "inner")  # a link that stays inside the store is no escape
    objectio.write_local(root, {"alias/c/0": b"rows"})
    assert (root / "inner" / "c" / "0").read_bytes() == b"rows"
    objectio.write_local(tmp_path / "new", {"a/c/0": b"rows"})  # a store folder not made yet is no escape
    assert (tmp_path / "new" / "a" / "c" / "0").read_bytes() == b"rows"
