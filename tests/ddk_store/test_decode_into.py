"""Decoding a chunk straight into a caller's array: exact on good bytes, a clear error (never silent garbage) when
the bytes decode to another size; and the allocator tuning every command applies."""

import sys

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.storage import MemoryStore

from ddk_store import chunkio
from ddk_store.allocator import tune_allocator


def _codec(shape, chunk_rows, compressed=True):
    root = zarr.open_group(MemoryStore(), mode="a")
    codecs = ([BloscCodec(cname="zstd", clevel=1, shuffle="shuffle", typesize=2)] if compressed else []) + [Crc32cCodec()]
    return chunkio.chunk_codec(root.create_array("x", shape=shape, chunks=(chunk_rows, *shape[1:]), dtype="<u2",
                                                 fill_value=7, compressors=codecs))


@pytest.mark.parametrize("compressed", [True, False])
def test_decode_into_a_slice_of_a_larger_array(compressed):
    c = _codec((6, 4, 3), 2, compressed)
    rows = np.arange(24, dtype="<u2").reshape(2, 4, 3) * 1000
    out = np.zeros((5, 4, 3), dtype="<u2")
    got = chunkio.decode_chunk_into(c, chunkio.encode_chunk(c, rows), out[1:3])
    assert got.base is out or got.base is out.base
    np.testing.assert_array_equal(out[1:3], rows)
    assert not out[0].any() and not out[3:].any()  # nothing written outside the slice
    chunkio.decode_chunk_into(c, None, out[3:5])  # a missing chunk: fill values
    assert (out[3:5] == 7).all()


@pytest.mark.parametrize("compressed", [True, False])
def test_bytes_of_another_size_are_refused(compressed):
    small, big = _codec((6, 4, 3), 1, compressed), _codec((6, 4, 3), 2, compressed)
    data = chunkio.encode_chunk(small, np.ones((1, 4, 3), dtype="<u2"))  # one row's bytes
    with pytest.raises(ValueError, match="expected"):
        chunkio.decode_chunk_into(big, data, np.empty((2, 4, 3), dtype="<u2"))  # where two rows are expected


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_allocator_tuning_applies_once_and_is_idempotent():
    first = tune_allocator()
    assert tune_allocator() == first
    import platform
    if platform.libc_ver()[0] == "glibc":
        assert first is True
