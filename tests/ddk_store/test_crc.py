"""crc32 of a concatenation from its parts (the writer checksums a unit's row blocks in parallel), against zlib's
crc32 of the whole bytes."""

import zlib

import numpy as np
import pytest

from ddk_store.crc import crc32_combine, crc32_of


@pytest.mark.parametrize("n1,n2", [(0, 0), (0, 7), (7, 0), (1, 1), (3, 100), (1000, 4096), (12345, 1 << 20),
                                   (1 << 16, (1 << 16) + 3)])
def test_combine_equals_the_crc_of_the_concatenation(n1, n2):
    rng = np.random.default_rng(n1 * 31 + n2)
    a, b = rng.bytes(n1), rng.bytes(n2)
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), n2) == zlib.crc32(a + b)


def test_pieces_of_an_array_combine_to_its_crc():
    x = np.random.default_rng(0).integers(0, 2**16, size=(11, 37, 5)).astype("<u2")
    total = 0
    for lo in range(0, 11, 3):  # uneven row blocks, as the writer's pieces of a unit
        piece = x[lo:lo + 3]
        total = crc32_combine(total, crc32_of(piece), piece.nbytes)
    assert total == crc32_of(x) == zlib.crc32(x.tobytes())


def test_a_big_endian_array_is_checksummed_as_its_little_endian_bytes():
    """The crc is of the little-endian bytes whatever the array's byte order (a store read on any host, or an array
    handed over as '>f4', checksums the same). Reference: the bytes built by struct, not by numpy's conversion."""
    import struct

    values = [1, 2, 0x01020304, -5, 2**31 - 1]
    expected = zlib.crc32(struct.pack("<5i", *values))
    assert crc32_of(np.array(values, dtype=">i4")) == expected
    assert crc32_of(np.array(values, dtype="<i4")) == expected
    floats = [0.5, -1.25, 3.0e7]
    assert crc32_of(np.array(floats, dtype=">f4")) == zlib.crc32(struct.pack("<3f", *floats))
    # a non-contiguous big-endian view too (crc32_of makes it contiguous first)
    grid = np.arange(12, dtype=">u2").reshape(3, 4)[:, ::2]
    assert crc32_of(grid) == zlib.crc32(struct.pack("<6H", 0, 2, 4, 6, 8, 10))


def _crc_of_zeros(n: int, start: int = 0) -> int:
    """zlib's crc32 of ``n`` zero bytes after ``start``, streamed 16 MiB at a time (no big allocation)."""
    block = bytes(16 << 20)
    crc = start
    while n:
        take = min(n, len(block))
        crc = zlib.crc32(memoryview(block)[:take], crc)
        n -= take
    return crc


@pytest.mark.parametrize("n2", [(1 << 28) + 5, (1 << 29) + (1 << 28) + 3])
def test_combine_past_256_mib_uses_every_power_of_x(n2):
    """A second part of 2^28 bytes or more needs x^(2^31) (bit 28 of the length: 8 * 2^28 = 2^31) and, past 2^29,
    the wrap x^(2^32) = x; the parametrized sizes above stop at 1 MiB and never reach those table entries."""
    a = np.random.default_rng(7).bytes(100)
    crc_a = zlib.crc32(a)
    assert crc32_combine(crc_a, _crc_of_zeros(n2), n2) == _crc_of_zeros(n2, crc_a)


def test_crc32_of_continues_from_start():
    """``start`` chains crc32_of over row pieces: the pieces' chained crc is zlib's crc32 of all the bytes."""
    x = np.arange(40, dtype="<i4").reshape(8, 5)
    crc = 0
    for lo in range(0, 8, 3):
        crc = crc32_of(x[lo:lo + 3], crc)
    assert crc == zlib.crc32(b"".join(int(v).to_bytes(4, "little", signed=True) for v in range(40)))
