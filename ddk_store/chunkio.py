"""Chunk and shard objects beside zarr: the bytes zarr would store for rows of a row-chunked array, and back.

Why: zarr's per-chunk path (codec pipeline, selection, an asyncio task and a thread hop per codec per chunk) costs
2-4x the Blosc work itself on the store's small chunks (bench/store_codec.py). The store's data arrays have one fixed
layout (groups.array_specs): a regular grid along rows only, and either the chain ``bytes(little) -> blosc ->
crc32c`` per chunk (formats 1.0 and 1.1: one object per chunk), or (format 1.2) zarr's ``sharding_indexed`` codec
with that chain inside and a ``bytes -> crc32c`` index at the end of the shard (one object per write unit). For such
an array this module encodes rows into the objects zarr would write (a partial last chunk padded with the fill
value; chunks past the array's end marked empty in a shard's index) and reads rows back, in the calling thread:
numpy, Blosc and crc32c release the GIL, so the callers' threads compress and decode in parallel (objectio.py reads
and writes the objects). Any other layout gets ``None`` from :func:`chunk_codec`, and the caller keeps zarr's path.
The objects are plain zarr v3: zarr, and any reader of the spec, reads them (tests/ddk_store/test_chunkio.py).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import google_crc32c
import numpy as np
from numcodecs import Blosc
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec

_SHUFFLE = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
#: A shard index entry (offset, nbytes) of a chunk that is not stored (zarr's sharding spec).
EMPTY = np.uint64(2**64 - 1)

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def codec_threads() -> int:
    """Threads of :func:`codec_pool`: one per core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def codec_pool() -> ThreadPoolExecutor:
    """The process's pool for chunk encoding and compression (:func:`codec_threads` threads)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max(1, codec_threads()), thread_name_prefix="ddk-codec")
        return _POOL


@dataclass(frozen=True)
class ChunkCodec:
    """How the objects of one array are stored: key prefix, chunk (and shard) rows, dtype, fill value, compressor."""

    path: str  # the array's path in the store ("domain/split/name")
    shape: tuple[int, ...]  # the array's shape
    chunk_rows: int
    dtype: np.dtype
    fill: Any
    blosc: Blosc | None  # None: raw bytes + crc32c
    key_of: Callable[[tuple[int, ...]], str]  # grid coordinates -> key relative to the array
    shard_rows: int = 0  # rows per shard object; 0: one object per chunk

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        return (self.chunk_rows, *self.shape[1:])

    @property
    def object_rows(self) -> int:
        """Rows per stored object: a shard's, or a chunk's."""
        return self.shard_rows or self.chunk_rows

    @property
    def chunks_per_shard(self) -> int:
        return self.shard_rows // self.chunk_rows

    def key(self, index: int) -> str:
        """Key of stored object ``index`` along rows (a shard, or a chunk)."""
        return f"{self.path}/{self.key_of((index,) + (0,) * (len(self.shape) - 1))}"


def _inner_chain(codecs: Sequence[Any]) -> tuple[bool, Blosc | None]:
    """(handled, blosc) for a chunk codec chain bytes(little) [-> blosc] -> crc32c."""
    codecs = tuple(codecs)
    if len(codecs) not in (2, 3) or not isinstance(codecs[0], BytesCodec) or not isinstance(codecs[-1], Crc32cCodec):
        return False, None
    if codecs[0].endian is not None and codecs[0].endian.value != "little":
        return False, None
    if len(codecs) == 2:
        return True, None
    c = codecs[1]
    if not isinstance(c, BloscCodec):
        return False, None
    return True, Blosc(cname=c.cname.value, clevel=c.clevel, shuffle=_SHUFFLE[c.shuffle.value],
                       blocksize=c.blocksize, typesize=c.typesize)


def chunk_codec(arr: Any) -> ChunkCodec | None:
    """The :class:`ChunkCodec` of a zarr v3 array, or None when its layout is not one this module handles."""
    meta = arr.metadata
    if getattr(meta, "zarr_format", None) != 3 or not arr.shape:
        return None
    grid = getattr(meta.chunk_grid, "chunk_shape", None)
    if grid is None or tuple(grid[1:]) != tuple(arr.shape[1:]):
        return None
    codecs = tuple(meta.codecs)
    shard_rows = 0
    chunk_rows = int(grid[0])
    if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
        sc = codecs[0]
        index_ok, index_blosc = _inner_chain(sc.index_codecs)
        inner = tuple(sc.chunk_shape)
        if (not index_ok or index_blosc is not None or sc.index_location.value != "end"
                or inner[1:] != tuple(arr.shape[1:]) or chunk_rows % inner[0]):
            return None
        shard_rows, chunk_rows = chunk_rows, int(inner[0])
        codecs = tuple(sc.codecs)
    ok, blosc = _inner_chain(codecs)
    if not ok:
        return None
    return ChunkCodec(path=arr.path, shape=tuple(arr.shape), chunk_rows=chunk_rows,
                      dtype=np.dtype(arr.dtype).newbyteorder("<"), fill=arr.fill_value, blosc=blosc,
                      key_of=meta.encode_chunk_key, shard_rows=shard_rows)


# ----------------------------------------------------------------------------------------------------- encoding
def _crc(data: Any) -> bytes:
    """crc32c of a bytes-like object, as the 4 little-endian bytes zarr's crc32c codec appends."""
    return np.uint32(google_crc32c.value(np.frombuffer(data, dtype=np.uint8))).tobytes()


def _with_crc(body: Any) -> bytes:
    return bytes(body) + _crc(body)


def _check_crc(data: Any) -> memoryview:
    """The body of ``data`` (its last 4 bytes are the crc32c of the rest); ValueError when they disagree."""
    view = memoryview(data)
    if len(view) < 4 or _crc(view[:-4]) != bytes(view[-4:]):
        raise ValueError("stored and computed crc32c checksums do not match")
    return view[:-4]


def framed_ok(data: bytes) -> bool:
    """Whether ``data`` ends with the crc32c of what precedes it: an intact chunk, or a shard's index."""
    return len(data) >= 4 and _crc(np.frombuffer(data, dtype=np.uint8)[:-4]) == bytes(data[-4:])


def _index_sizes(view: np.ndarray, max_chunks: int) -> Iterator[int]:
    """The chunk counts n a shard index at the end of ``view`` may have: every n up to ``max_chunks`` (each a crc32c
    of 16n bytes: cheap for the shards ddk writes), then, past it, every n whose last n entries give chunks that
    exactly fill the bytes before them (how zarr and ddk write a shard: chunks back to back from offset 0, then the
    index), whatever n is."""
    most = (len(view) - 4) // 16
    yield from range(1, min(max_chunks, most) + 1)
    if most <= max_chunks:
        return
    entries = np.frombuffer(view[len(view) - 4 - 16 * most: len(view) - 4], dtype="<u8").reshape(most, 2)
    nbytes = np.where((entries[:, 0] == EMPTY) & (entries[:, 1] == EMPTY), np.uint64(0), entries[:, 1])
    with np.errstate(over="ignore"):  # garbage sizes wrap around: they only make a candidate fail below
        filled = np.cumsum(nbytes[::-1], dtype=np.uint64)  # filled[n-1]: the bytes the last n entries point to
    n = np.arange(1, most + 1, dtype=np.uint64)
    yield from (k for k in (np.flatnonzero(filled == np.uint64(len(view) - 4) - np.uint64(16) * n) + 1).tolist()
                if k > max_chunks)


def object_ok(data: bytes, max_chunks: int = 4096) -> bool:
    """Whether ``data`` is an intact stored object without knowing its array: a chunk whose crc32c matches, or a
    shard whose index (found by its crc32c: an index of n chunks is the 16n bytes before the last 4) and every chunk
    it points to match theirs. Used by the local cache (localcache.py) to keep only verified objects. A shard of up
    to ``max_chunks`` chunks is found however it is laid out; one of more, when written back to back (as zarr and
    ddk write them)."""
    if framed_ok(data):
        return True
    view = np.frombuffer(data, dtype=np.uint8)
    if len(view) < 20:
        return False
    tail = bytes(view[-4:])
    for n in _index_sizes(view, max_chunks):
        start = len(view) - 4 - 16 * n
        if _crc(view[start:-4]) != tail:
            continue
        for offset, nbytes in np.frombuffer(view[start:-4], dtype="<u8").reshape(n, 2):
            if offset == EMPTY and nbytes == EMPTY:
                continue
            if nbytes < 4 or offset + nbytes > start:
                return False
            end = int(offset + nbytes)
            if _crc(view[int(offset):end - 4]) != bytes(view[end - 4:end]):
                return False
        return True
    return False


def encode_chunk(codec: ChunkCodec, rows: np.ndarray) -> bytes:
    """The stored bytes of one chunk holding ``rows`` (<= chunk_rows of them; padded with the fill value)."""
    a = np.ascontiguousarray(rows, dtype=codec.dtype)
    if len(a) < codec.chunk_rows:
        full = np.full(codec.chunk_shape, codec.fill, dtype=codec.dtype)
        full[:len(a)] = a
        a = full
    return _with_crc(codec.blosc.encode(a) if codec.blosc is not None else a.tobytes())


def decode_chunk(codec: ChunkCodec, data: bytes | memoryview | None) -> np.ndarray:
    """A chunk's rows from its stored bytes (None: a missing chunk, all fill values).

    Raises:
        ValueError: the crc32c does not match (as zarr raises it), or the chunk has the wrong size; RuntimeError
            from Blosc: undecodable bytes.
    """
    return decode_chunk_into(codec, data, np.empty(codec.chunk_shape, dtype=codec.dtype))


def decode_chunk_into(codec: ChunkCodec, data: bytes | memoryview | None, out: np.ndarray) -> np.ndarray:
    """:func:`decode_chunk` into ``out`` (C-contiguous, the chunk's shape and dtype: a slice of a caller's array, so
    that a read decodes each chunk straight to its place). Returns ``out``; raises as :func:`decode_chunk`."""
    if data is None:
        out[...] = codec.fill
        return out
    body = _check_crc(data)
    if codec.blosc is None:
        raw = np.frombuffer(body, dtype=codec.dtype)
        if raw.size != out.size:
            raise ValueError(f"chunk holds {raw.size} values, expected {out.size}")
        out.reshape(-1)[...] = raw
        return out
    nbytes = int.from_bytes(bytes(body[4:8]), "little") if len(body) >= 16 else -1  # Blosc header: decoded size
    if nbytes != out.nbytes:
        raise ValueError(f"chunk decodes to {nbytes} bytes, expected {out.nbytes}")
    codec.blosc.decode(body, out=out)
    return out


def objects(codec: ChunkCodec, first_chunk: int, chunks: Sequence[bytes]) -> dict[str, bytes]:
    """key -> bytes of the stored objects holding the encoded ``chunks`` (consecutive, from chunk ``first_chunk``).

    Unsharded: one object per chunk. Sharded: the chunks must fill whole shards, except past the array's end; a
    shard is its chunks back to back, then the index ((offset, nbytes) uint64 per chunk, EMPTY for a chunk not
    stored) and its crc32c.
    """
    if not codec.shard_rows:
        return {codec.key(first_chunk + i): b for i, b in enumerate(chunks)}
    per = codec.chunks_per_shard
    n_chunks = -(-codec.shape[0] // codec.chunk_rows)
    if first_chunk % per or (len(chunks) % per and first_chunk + len(chunks) != n_chunks):
        raise ValueError(f"{codec.path}: a sharded write must cover whole shards (chunks {first_chunk}-"
                         f"{first_chunk + len(chunks) - 1}, {per} per shard)")
    out = {}
    for s in range(0, len(chunks), per):
        part = chunks[s:s + per]
        index = np.full((per, 2), EMPTY, dtype="<u8")
        sizes = np.array([len(b) for b in part], dtype="<u8")
        index[:len(part), 1] = sizes
        index[:len(part), 0] = np.cumsum(sizes) - sizes
        out[codec.key((first_chunk + s) // per)] = b"".join(part) + _with_crc(index.tobytes())
    return out


#: Offsets and sizes in a shard index at or above this are damage (no object is that large; offset + size then
#: still fits the OS's signed 64-bit file offsets).
_MAX_INDEX_VALUE = np.uint64(2**62)


def shard_index(codec: ChunkCodec, data: bytes | None) -> np.ndarray | None:
    """(chunks_per_shard, 2) uint64 (offset, nbytes) of a shard's index bytes (None: the shard is missing)."""
    if data is None:
        return None
    body = _check_crc(data)
    if len(body) != codec.chunks_per_shard * 16:
        raise ValueError(f"shard index has {len(body)} bytes, expected {codec.chunks_per_shard * 16}")
    index = np.frombuffer(body, dtype="<u8").reshape(-1, 2)
    # Its crc32c only says the index is as written: an entry that is not EMPTY in both fields and lies beyond any
    # file (written by another tool, or tampered with) is damage, not a read at an offset the OS cannot take.
    empty = (index[:, 0] == EMPTY) & (index[:, 1] == EMPTY)
    if np.any(~empty & ((index[:, 0] >= _MAX_INDEX_VALUE) | (index[:, 1] >= _MAX_INDEX_VALUE))):
        raise ValueError("shard index has an entry out of range (offset or size beyond any object)")
    return index
