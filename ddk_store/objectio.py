"""Reading and writing a store's chunk and shard objects (their bytes: chunkio.py): local files directly in the
calling thread, other stores through zarr's store (``get``/``set``, byte ranges for shards), requests gathered.

A reader needs at most two rounds of requests for all the arrays of a group: the shard indexes (cached for the
reader's life: a complete store does not change), then the chunks it needs.
"""

from __future__ import annotations

import asyncio
import os
import stat
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from zarr.abc.store import RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore

from .chunkio import EMPTY, ChunkCodec, decode_chunk, decode_chunk_into, shard_index
from .errors import StoreCorruptError, StoreFormatError
from .paths import flush_fd, sync_entry

#: EMPTY as a Python int (shard indexes are cached as lists).
_EMPTY = int(EMPTY)


def local_root(store: Store) -> Path | None:
    """The directory of a local-disk store (objects are then written and read in the calling thread)."""
    return Path(store.root) if isinstance(store, LocalStore) else None


#: The largest metadata document (zarr.json) a local store's reader opens: a root document lists every corpus file
#: (about 210 bytes each), so a million files is about 210 MB; a bigger one is damage or a planted sparse file.
MAX_DOC_BYTES = 1 << 30


def check_local_docs(root: Path | None, keys: Sequence[str], url: str) -> None:
    """Refuse (StoreFormatError, naming the key) a metadata document of a local store that is a symbolic link, not a
    regular file (a FIFO would hang the reader, a device feed it forever) or over MAX_DOC_BYTES; a missing one is
    left to the usual checks (``root`` None, a store that is not local: nothing to check). A store shared by a team
    may have been written by someone else."""
    for key in keys if root is not None else ():
        try:
            st = os.lstat(os.path.join(root, key))
        except FileNotFoundError:
            continue
        what = ("a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file" if not stat.S_ISREG(st.st_mode)
                else f"{st.st_size:,} bytes (more than {MAX_DOC_BYTES:,})" if st.st_size > MAX_DOC_BYTES else "")
        if what:
            raise StoreFormatError(f"store {url}: {key} is {what}; a ddk store's metadata documents are plain files "
                                   "its writer made: this store was damaged or tampered with, dump it again")


#: Directories this process made or found (bounded: a hint, never trusted over a FileNotFoundError).
_MADE: set[str] = set()


def _remember(directory: str) -> None:
    if len(_MADE) > 100_000:
        _MADE.clear()
    _MADE.add(directory)


def _refuse_links_out(root: Path, directory: str) -> None:
    """Refuse to write into ``directory`` when a symbolic link inside the store leads it out of ``root``: a link
    planted in a shared store (say, a chunk folder) would have a dump write, and a later overwrite delete, there."""
    real_root, inside = os.path.realpath(root), os.path.normpath(root) + os.sep
    deepest = directory
    while not os.path.lexists(deepest) and os.path.dirname(deepest) != deepest:
        deepest = os.path.dirname(deepest)  # (directories still to make hold no link)
    if not os.path.normpath(deepest).startswith(inside):
        return  # the store's folder itself is not there (yet, or any more): nothing in it can be a link
    real = os.path.realpath(deepest)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise StoreFormatError(f"{root}: {os.path.relpath(deepest, root)} leads outside the store (to {real}) "
                               "through a symbolic link; ddk never writes through one: remove the link, then run "
                               "`ddk-store repair` and the same dump")


def write_local(root: Path, files: Mapping[str, bytes]) -> None:
    """Write objects under ``root``, each through a temporary file in its directory and a rename: never torn.

    The store's protocol (a unit's objects belong to it alone, its marker is written after them) makes a torn object
    harmless within one dump; the rename also covers two identical dumps joined on one store (stage1.md), where a
    process killed while rewriting a unit the other had already marked done would otherwise leave it damaged. A
    unit's objects are few (one shard or a few chunks per array), so the renames cost nothing measurable.

    Each file is flushed to the disk before its rename, and the directories after: the unit's marker, written by a
    later call, can then never outlive its data through a power loss.
    """
    parents = set()
    for key, data in files.items():
        path = os.path.join(root, key)
        parent = os.path.dirname(path)
        if parent not in _MADE:  # a new unit's objects lie in new directories: make them before, not after, a failure
            _refuse_links_out(root, parent)
            top = parent
            while not os.path.isdir(top) and os.path.dirname(top) != top:
                top = os.path.dirname(top)
            os.makedirs(parent, exist_ok=True)
            _remember(parent)
            new = parent  # each directory made here is an entry of its parent: flushed too
            while new != top:
                new = os.path.dirname(new)
                parents.add(new)
        target = f"{path}.{uuid.uuid4().hex}.partial"  # zarr's own name for it: a kill's leftover is cleaned up
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except FileNotFoundError:  # removed since (a store deleted and created again)
            os.makedirs(parent, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            flush_fd(fd)
        except BaseException:
            os.unlink(target)
            raise
        finally:
            os.close(fd)
        os.replace(target, path)
        parents.add(parent)
    for parent in parents:
        sync_entry(Path(parent))


async def put_objects(store: Store, files: Mapping[str, bytes]) -> None:
    """Write objects through a zarr store (one concurrent set per object)."""
    proto = default_buffer_prototype()
    await asyncio.gather(*(store.set(k, proto.buffer.from_bytes(v)) for k, v in files.items()))


class _Source:
    """Byte ranges of objects: local files read directly, or a zarr store's ``get`` (requests gathered)."""

    def __init__(self, store: Store) -> None:
        self.store, self.root = store, local_root(store)

    def ranges(self, requests: Sequence[tuple[str, Any]]) -> list[bytes | None]:
        """(key, RangeByteRequest | SuffixByteRequest | None for the whole object) -> bytes (None: no object)."""
        if self.root is None:
            return self._gather(requests)
        out: list[bytes | None] = []
        for key, r in requests:
            try:
                fd = os.open(os.path.join(self.root, key), os.O_RDONLY | os.O_NONBLOCK)  # (a FIFO would block)
            except FileNotFoundError:
                out.append(None)
                continue
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise StoreCorruptError(f"{key}: not a regular file (a chunk or shard is one); the store was "
                                            "damaged or tampered with: `ddk-store repair` it, then dump again")
                if r is None:
                    size = os.fstat(fd).st_size
                    out.append(os.pread(fd, size, 0))
                elif isinstance(r, SuffixByteRequest):
                    size = os.fstat(fd).st_size
                    out.append(os.pread(fd, min(r.suffix, size), max(0, size - r.suffix)))
                else:
                    out.append(os.pread(fd, r.end - r.start, r.start))
            finally:
                os.close(fd)
        return out

    def _gather(self, requests: Sequence[tuple[str, Any]]) -> list[bytes | None]:
        proto = default_buffer_prototype()

        async def run() -> list[Any]:
            return await asyncio.gather(*(self.store.get(k, prototype=proto, byte_range=r) for k, r in requests))

        return [None if b is None else b.to_bytes() for b in sync(run())]


def read_rows(store: Store, codecs: Mapping[str, ChunkCodec], rows: np.ndarray,
              index_cache: dict[str, np.ndarray | None] | None = None) -> dict[str, np.ndarray | Exception]:
    """Rows ``rows`` (sorted, unique) of several arrays of one group, decoded; missing objects and chunks read as
    fill values. At most two rounds of requests for all arrays together (shard indexes, then chunks).

    ``index_cache`` keeps shard indexes between calls (a complete store does not change). An array whose bytes are
    damaged maps to the ValueError (crc32c, size) or RuntimeError (Blosc) raised decoding it; I/O errors raise.
    """
    rows = np.asarray(rows, dtype=np.int64)
    src = _Source(store)
    cache = {} if index_cache is None else index_cache
    chunk_ids = {name: np.unique(rows // c.chunk_rows) for name, c in codecs.items()}
    # Per array and chunk: the key of the object holding it (computed once: key formatting is most of the Python
    # work of a small read).
    keys = {name: [c.key(i // c.chunks_per_shard if c.shard_rows else i) for i in chunk_ids[name].tolist()]
            for name, c in codecs.items()}
    by_key = {k: c for name, c in codecs.items() if c.shard_rows for k in keys[name]}
    need = sorted(set(by_key) - set(cache))
    errors: dict[str, Exception] = {}
    if need:
        for key, b in zip(need, src.ranges([(k, SuffixByteRequest(by_key[k].chunks_per_shard * 16 + 4))
                                            for k in need])):
            try:
                index = shard_index(by_key[key], b)
                cache[key] = None if index is None else index.tolist()
            except ValueError as e:
                errors[key] = e
    requests: list[tuple[str, Any]] = []
    slots: dict[str, list[int | None]] = {}
    for name, c in codecs.items():
        slots[name] = []
        for i, key in zip(chunk_ids[name].tolist(), keys[name]):
            if not c.shard_rows:
                slots[name].append(len(requests))
                requests.append((key, None))
                continue
            index = cache.get(key)
            offset, nbytes = (_EMPTY, _EMPTY) if index is None else index[i % c.chunks_per_shard]
            if offset == _EMPTY and nbytes == _EMPTY:
                slots[name].append(None)
            else:
                slots[name].append(len(requests))
                requests.append((key, RangeByteRequest(offset, offset + nbytes)))
    raw = src.ranges(requests) if requests else []
    out: dict[str, np.ndarray | Exception] = {}
    for name, c in codecs.items():
        bad = [errors[k] for k in set(keys[name]) if k in errors]
        if bad:
            out[name] = bad[0]
            continue
        try:
            out[name] = _decode_rows(c, rows, chunk_ids[name], [None if j is None else raw[j] for j in slots[name]])
        except (ValueError, RuntimeError) as e:
            out[name] = e
    return out


def _decode_rows(c: ChunkCodec, rows: np.ndarray, chunk_ids: np.ndarray, chunks: Sequence[bytes | None]
                 ) -> np.ndarray:
    """Rows ``rows`` (sorted, unique) of one array from its chunks ``chunk_ids`` (bytes, None: missing): each chunk
    decoded straight into its place in the result when it holds exactly the rows wanted of it."""
    result = np.empty((len(rows), *c.shape[1:]), dtype=c.dtype)
    of_chunk = rows // c.chunk_rows
    bounds = np.searchsorted(of_chunk, chunk_ids, side="left").tolist() + [len(rows)]
    for k, data in enumerate(chunks):
        lo, hi = bounds[k], bounds[k + 1]
        first = int(chunk_ids[k]) * c.chunk_rows
        if hi - lo == c.chunk_rows:  # the whole chunk (always so at one row per chunk)
            decode_chunk_into(c, data, result[lo:hi])
        else:
            result[lo:hi] = decode_chunk(c, data)[rows[lo:hi] - first]
    return result
