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
