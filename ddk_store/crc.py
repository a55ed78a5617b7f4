"""The unit markers' checksums: crc32 (zlib's polynomial) of an array's bytes, and of a concatenation from the crc32
of its parts, so that the pieces of a unit are checksummed in parallel and combined in row order.

Combining (the algebra zlib's ``crc32_combine`` rests on): with pre- and post-conditioning, crc(A || B) equals
crc(A) multiplied by x^(8 |B|) modulo the CRC polynomial, XOR crc(B). Polynomials are 32-bit integers in the
reflected order of the CRC (bit 31 is x^0). Pure Python; one multiplication is at most 32 shift-and-XOR steps, and
the power x^(8n) is cached per length (a unit's pieces repeat a few lengths).
"""

from __future__ import annotations

import functools
import zlib

import numpy as np

#: The CRC-32 polynomial, reflected.
_POLY = 0xEDB88320
_X0 = 1 << 31  # the polynomial 1 (x^0) in reflected order


def crc32_of(a: np.ndarray, start: int = 0) -> int:
    """crc32 (zlib polynomial) of the little-endian C-order bytes of ``a``, continuing from ``start`` (the crc32 of
    the bytes before them: chained over row pieces it gives the crc32 of the whole array)."""
    a = np.ascontiguousarray(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return zlib.crc32(memoryview(a).cast("B"), start)


def _multiply(a: int, b: int) -> int:
    """a(x) * b(x) modulo the CRC polynomial (reflected order; a != 0)."""
    m, p = _X0, 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


@functools.lru_cache(maxsize=None)
def _square_powers() -> tuple[int, ...]:
    """x^(2^k) modulo the polynomial, k = 0..31; higher k wrap to k mod 32, as the order of x divides 2^32 - 1
    (so x^(2^32) = x)."""
    out = [_X0 >> 1]  # x^1
    for _ in range(31):
        out.append(_multiply(out[-1], out[-1]))
    return tuple(out)


@functools.lru_cache(maxsize=256)
def _shift(nbytes: int) -> int:
    """x^(8 * nbytes) modulo the polynomial: what appending ``nbytes`` bytes does to a crc."""
    table, p, k, n = _square_powers(), _X0, 3, nbytes  # 8 * n = n * 2^3
    while n:
        if n & 1:
            p = _multiply(table[k & 31], p)
        n >>= 1
        k += 1
    return p


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The crc32 of A || B from crc1 = crc32(A), crc2 = crc32(B) and len2 = len(B) in bytes."""
    if len2 <= 0:
        return crc1
    return _multiply(_shift(len2), crc1) ^ crc2
