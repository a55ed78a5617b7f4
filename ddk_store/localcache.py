"""A local disk cache of a remote store's chunks: a second run, or a second rank on the host, reads from disk.

Design: a zarr-level read-through wrapper store (:class:`CachedStore`), not fsspec's caching filesystems. fsspec's
``simplecache``/``filecache`` are synchronous filesystems (zarr would run them through a thread wrapper and lose
s3fs's concurrent fetches), key files by path only (a store rewritten at the same URL would be served stale), and
cache every file including the metadata documents that tell a rewritten store from the old one. Here:

- **Identity.** The cache directory of a store is ``<cache root>/<readable url>-<sha256(url + root zarr.json)>``.
  The root document holds the store's metadata and its creation claim (a random token written by the process that
  created it, spec.CLAIM_ATTR): a store deleted and dumped again at the same URL gets a new directory, never the old
  chunks. Metadata documents (``zarr.json``) are never cached: they are always read from the remote store.
- **Only verified chunks.** Every chunk of the store format ends with its CRC-32C (docs/store-format.md); a chunk is
  written to the cache only when it matches, and a cached chunk that no longer matches (a damaged disk) is fetched
  again and replaced. Every hit is checked: a byte range that is one chunk of a shard or its index (each ends with
  its own CRC-32C) alone, anything else with the whole object. Missing chunks are not cached (the reader reports them as it does without a cache).
- **Concurrent fillers.** A chunk is written to a temporary file in its final directory and renamed into place
  (atomic on POSIX): ranks and runs on one host may fill one cache at once; readers see a whole chunk or none. A
  failed cache write (a full disk) only costs the cache, never the read: for a while after one, misses fetch only
  the bytes asked for instead of whole objects to cache (:data:`BYPASS_SECONDS`).
- **Size cap.** With ``max_bytes``, the least recently used chunks of the cache root's store directories are deleted
  once they hold more than the cap (down to 80% of it); nothing else under the root is counted or deleted. Each
  process rescans the root after adding 1/32 of the cap (:data:`RESCAN_FRACTION`), so N processes filling one
  cache overshoot it by at most N/32 of it.

Local and memory:// stores are never cached (they are already local).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import WrapperStore

from .chunkio import framed_ok, object_ok
from .paths import cache_dir as ddk_cache_dir
from .paths import replace_file
from .storage import url_scheme

#: ``--cache-dir auto``: ``$DDK_CACHE/stores``.
AUTO = "auto"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_TMP_SUFFIX = ".tmp"
_DIGEST_CHARS = 24
#: A process rescans the cache root (and evicts) after adding this fraction of the cap since its last scan: the
#: other processes' fills are seen only by a scan.
RESCAN_FRACTION = 1 / 32
#: After a failed cache write, misses pass their byte range to the remote store for this long (no whole objects
#: fetched to be cached), then caching is tried again.
BYPASS_SECONDS = 60.0
#: The name of one store version's directory under the cache root (:func:`store_cache_dir`).
_STORE_DIR = re.compile(rf"^[A-Za-z0-9._-]*-[0-9a-f]{{{_DIGEST_CHARS}}}$")


def resolve_cache_root(value: str | os.PathLike[str]) -> Path:
    """The cache root a ``--cache-dir`` value names (``auto``: ``$DDK_CACHE/stores``)."""
    return ddk_cache_dir("stores") if os.fspath(value) == AUTO else Path(value).expanduser()


def store_cache_dir(root: str | os.PathLike[str], url: str, root_doc: Mapping[str, Any]) -> Path:
    """The directory of one store version under the cache root: a readable form of the URL plus a hash of the URL and
    the store's root document (metadata and creation claim)."""
    canonical = json.dumps(root_doc, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(f"{url}\n{canonical}".encode()).hexdigest()[:_DIGEST_CHARS]
    readable = _UNSAFE.sub("_", url.split("://", 1)[-1]).strip("_")[-80:]
    return resolve_cache_root(root) / f"{readable}-{digest}"


def is_cached_key(key: str) -> bool:
    """Chunks are cached; metadata documents (``zarr.json``) never are."""
    return not (key == "zarr.json" or key.endswith("/zarr.json"))


def checksum_ok(data: bytes) -> bool:
    """True when ``data`` is an intact chunk or shard: it ends with the CRC-32C of what precedes it (zarr's crc32c
    codec, little-endian), or it is a shard whose index and chunks carry matching ones (chunkio.object_ok)."""
    return object_ok(data)


def byte_span(byte_range: ByteRequest | None, size: int) -> tuple[int, int]:
    """[start, end) of ``byte_range`` in an object of ``size`` bytes (all of it for None)."""
    if byte_range is None:
        return 0, size
    if isinstance(byte_range, RangeByteRequest):
        return min(byte_range.start, size), min(byte_range.end, size)
    if isinstance(byte_range, OffsetByteRequest):
        return min(byte_range.offset, size), size
    if isinstance(byte_range, SuffixByteRequest):
        return max(0, size - byte_range.suffix), size
    raise TypeError(f"unexpected byte range {byte_range!r}")


def slice_bytes(data: bytes, byte_range: ByteRequest | None) -> bytes:
    start, end = byte_span(byte_range, len(data))
    return data[start:end]


def read_range(f: BinaryIO, size: int, byte_range: ByteRequest | None) -> bytes:
    """``byte_range`` of an open file of ``size`` bytes, reading only those bytes."""
    start, end = byte_span(byte_range, size)
    f.seek(start)
    return f.read(max(0, end - start))


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a uniquely named temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, data, suffix=_TMP_SUFFIX)


def evict(root: Path, max_bytes: int, keep_fraction: float = 0.8) -> int:
    """Delete the least recently used chunks in the store directories under ``root`` (those
    :func:`store_cache_dir` names) until they hold at most ``keep_fraction * max_bytes`` (when they hold more than
    ``max_bytes``); returns the bytes they hold afterwards. Anything else under ``root`` (a ``--cache-dir`` that
    also holds the user's files) is neither counted nor deleted; temporary files are left alone (another process
    is writing them)."""
    files = []
    try:
        stores = [e.path for e in os.scandir(root) if _STORE_DIR.match(e.name) and e.is_dir(follow_symlinks=False)]
    except OSError:
        stores = []
    for dirpath, _, names in (walked for top in stores for walked in os.walk(top)):
        for name in names:
            if name.endswith(_TMP_SUFFIX):
                continue
            p = os.path.join(dirpath, name)
            try:
                st = os.stat(p)
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in files)
    if total <= max_bytes:
        return total
    for _, size, p in sorted(files):
        if total <= keep_fraction * max_bytes:
            break
        try:
            os.unlink(p)
            total -= size
        except OSError:
            pass
    return total


def _drop(path: Path) -> None:
    """Delete a cached file if it is there; a cache that cannot be written cannot be cleaned either (no error)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


@dataclass
class _RootState:
    """What this process knows of one cache root, shared by all its CachedStores (zarr makes new ones freely)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    scanned: int | None = None  # bytes under the root at the last scan (None: not scanned yet)
    added: int = 0  # bytes this process cached since then
    bypass_until: float = 0.0  # time.monotonic() until which misses fetch byte ranges only (a write failed)


_ROOTS: dict[str, _RootState] = {}
_ROOTS_LOCK = threading.Lock()


def _root_state(root: Path) -> _RootState:
    with _ROOTS_LOCK:
        return _ROOTS.setdefault(os.path.abspath(root), _RootState())


class CachedStore(WrapperStore[Store]):
    """Read-through cache of one store version's chunks in ``directory`` (see the module docstring).

    ``hits``/``fills``/``unverified`` count chunks served from disk, fetched and cached, and fetched but not cached
    (no valid checksum).
    """

    def __init__(self, store: Store, directory: str | os.PathLike[str], *, max_bytes: int | None = None,
                 root: str | os.PathLike[str] | None = None) -> None:
        super().__init__(store)
        self.directory = Path(directory)
        self.root = Path(root) if root is not None else self.directory.parent
        self.max_bytes = max_bytes
        self.hits = self.fills = self.unverified = 0
        self._root = _root_state(self.root)  # shared by every CachedStore of this process under that root

    def _with_store(self, store: Store) -> CachedStore:
        return type(self)(store, self.directory, max_bytes=self.max_bytes, root=self.root)

    def __repr__(self) -> str:
        return f"CachedStore({self._store!r}, {str(self.directory)!r})"

    # ------------------------------------------------------------------ disk side (run in a worker thread)
    def _read_cached(self, path: Path, byte_range: ByteRequest | None) -> bytes | None:
        """``byte_range`` of the cached object at ``path``, or None (not cached, or damaged: fetched again). A range
        that ends with its own crc32c (one chunk of a shard, or its index: what the readers ask for) is read and
        checked alone; any other request reads and checks the whole object."""
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                part = None if byte_range is None else read_range(f, size, byte_range)
                if part is None or not framed_ok(part):
                    f.seek(0)
                    data = f.read()
                    part = slice_bytes(data, byte_range) if checksum_ok(data) else None
        except OSError:
            return None
        if part is None:  # damaged on disk: fetched again, and replaced by its rename (not deleted first, so that
            return None   # concurrent reads of its other, intact chunks are still served from disk; see get)
        try:
            os.utime(path)  # least recently used = oldest mtime
        except OSError:
            pass
        return part

    def _fill(self, path: Path, data: bytes) -> bool:
        """Cache ``data`` at ``path`` and keep the cap; False when the write failed (a full or read-only disk)."""
        try:
            write_atomic(path, data)
        except OSError:
            self._root.bypass_until = time.monotonic() + BYPASS_SECONDS
            return False
        if self.max_bytes is None:
            return True
        st = self._root
        with st.lock:
            st.added += len(data)
            if (st.scanned is None or st.scanned + st.added > self.max_bytes
                    or st.added > RESCAN_FRACTION * self.max_bytes):
                st.scanned, st.added = evict(self.root, self.max_bytes), 0
        return True

    # ------------------------------------------------------------------ zarr Store API
    async def get(self, key: str, prototype: BufferPrototype | None = None,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        prototype = prototype or default_buffer_prototype()
        if not is_cached_key(key):
            return await self._store.get(key, prototype, byte_range)
        path = self.directory / key
        data = await asyncio.to_thread(self._read_cached, path, byte_range)
        if data is not None:
            self.hits += 1
            return prototype.buffer.from_bytes(data)
        # Not cached, or cached damaged: a damaged copy is replaced below, or deleted where it cannot be.
        drop = functools.partial(asyncio.to_thread, _drop, path)
        if time.monotonic() < self._root.bypass_until:  # the cache cannot be written just now: fetch what was asked
            await drop()
            return await self._store.get(key, prototype, byte_range)
        # A miss fetches the whole object, even for a byte range (a shard's index or one of its chunks): the next
        # ranges of the same shard are then served from disk.
        buf = await self._store.get(key, prototype)
        if buf is None:
            await drop()
            return None
        data = buf.to_bytes()
        if not await asyncio.to_thread(checksum_ok, data):  # (a large shard: not on the event loop)
            self.unverified += 1
            await drop()
        elif await asyncio.to_thread(self._fill, path, data):
            self.fills += 1
        else:
            await drop()
        return buf if byte_range is None else prototype.buffer.from_bytes(slice_bytes(data, byte_range))

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))


def cached_store(store: Store, url: str, root_doc: Mapping[str, Any], cache_dir: str | os.PathLike[str] | None, *,
                 max_bytes: int | None = None) -> Store:
    """``store`` behind a local chunk cache when ``cache_dir`` is given and the store is remote, else ``store``."""
    if cache_dir is None or url_scheme(url) in ("file", "memory"):
        return store
    return CachedStore(store, store_cache_dir(cache_dir, url, root_doc), max_bytes=max_bytes,
                       root=resolve_cache_root(cache_dir))
