"""The compiled store kernels (``_kernels.c``), loaded through ctypes, with the NumPy code as the fallback.

``pip install`` builds ``ddk_store/_kernels*.so`` when a C compiler is present (an optional extension: without one
the install still succeeds and every caller falls back to NumPy, same results within float32 rounding). ctypes
releases the GIL for the duration of a call, so the read pool's threads decode in parallel.

Set ``DDK_KERNELS=0`` to force the NumPy path (benchmarks compare the two; tests check both against the format's
formula).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import os
from pathlib import Path

import numpy as np

#: Environment variable: "0" turns the compiled kernels off (the NumPy decode runs instead).
KERNELS_ENV = "DDK_KERNELS"

_P = ctypes.c_void_p


@functools.lru_cache(maxsize=None)
def _library() -> ctypes.CDLL | None:
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_kernels{suffix}"
        if path.is_file():
            try:
                lib = ctypes.CDLL(str(path))
            except OSError:  # built for another platform or Python: the NumPy path serves
                return None
            for fn in (lib.ddk_decode_q8_tail_u16, lib.ddk_decode_q8_tail_u32):
                fn.argtypes = [_P, _P, _P, _P, _P, ctypes.c_int64, ctypes.c_int64, _P, _P]
                fn.restype = None
            return lib
    return None


def available() -> bool:
    """Whether the compiled kernels are built and not turned off by ``DDK_KERNELS=0``."""
    return os.environ.get(KERNELS_ENV, "1") != "0" and _library() is not None


def decode_q8_tail(deltas: np.ndarray, codes: np.ndarray, log_tail: np.ndarray, lut: np.ndarray,
                   plut: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """int32 ids and float32 rescaled log-probs (both shaped as ``codes``) of the default encoding, or None when the
    kernels are not available or the ids are not native uint16/uint32 (the caller then decodes with NumPy).

    Args:
        deltas: (..., K) uint16 or uint32 id deltas; codes: (..., K) uint8; log_tail: (...) float (log tail mass);
        lut, plut: the (256,) log-prob and probability of each code (floor_tail.IdSortQ8Tail.tables).
    """
    lib = _library() if os.environ.get(KERNELS_ENV, "1") != "0" else None
    if lib is None:
        return None
    if deltas.shape != codes.shape or log_tail.shape != codes.shape[:-1] or codes.ndim < 1:
        raise ValueError(f"top-k arrays disagree in shape: ids {deltas.shape}, log-probs {codes.shape}, "
                         f"tail {log_tail.shape}")
    fn = {np.dtype(np.uint16): lib.ddk_decode_q8_tail_u16, np.dtype(np.uint32): lib.ddk_decode_q8_tail_u32
          }.get(deltas.dtype)  # native byte order only (the stored '<u2'/'<u4' on a little-endian host)
    if fn is None:
        return None
    d = np.ascontiguousarray(deltas)
    c = np.ascontiguousarray(codes, dtype=np.uint8)
    t = np.ascontiguousarray(log_tail, dtype=np.float32)
    lut32 = np.ascontiguousarray(lut, dtype=np.float32)
    plut64 = np.ascontiguousarray(plut, dtype=np.float64)
    if lut32.shape != (256,) or plut64.shape != (256,):
        raise ValueError(f"lookup tables must have 256 entries, got {lut32.shape} and {plut64.shape}")
    ids = np.empty(c.shape, dtype=np.int32)
    lp = np.empty(c.shape, dtype=np.float32)
    k = c.shape[-1]
    positions = c.size // k if k else 0
    if positions:
        fn(d.ctypes.data, c.ctypes.data, t.ctypes.data, lut32.ctypes.data, plut64.ctypes.data, positions, k,
           ids.ctypes.data, lp.ctypes.data)
    return ids, lp


__all__ = ["KERNELS_ENV", "available", "decode_q8_tail"]
