"""The packed token rows of a store: written by stage 1's pack phase, read by its score phase.

They live in the Zarr group ``_pack`` (a name no domain can take) beside the domain groups; readers of the store never
look there. Its nodes are written directly (never through zarr's parent creation), so packing creates no root
document: the root stays absent until the score phase creates the store, and a store that holds only ``_pack`` is
still "new" to the writer.

- ``_pack/zarr.json``: a group whose attribute ``ddk_pack`` is the pack document, rewritten whole after every chunk
  (a single object write): the pack's identity (the settings that decide the rows) and each domain's state,
  including its resume cursor;
- ``_pack/<domain>.<split>``: an array [2**40, T] of token ids (the store's id dtype) in chunks of ``chunk_rows``
  rows; only the rows the state counts are meaningful (the shape never changes, so no write ever resizes);
- ``_pack/<domain>.heldout_docs``: int64, the held-out documents' corpus ordinals.

Chunks are written before the state that counts them, so a kill at any moment leaves a state that points only at
complete chunks (a later run writes the same chunk again, byte for byte). See docs/store-format.md.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import RangeByteRequest, Store
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore, MemoryStore

from . import spec
from .errors import StoreCorruptError, StoreExistsError, StoreFormatError, describe
from .groups import read_root_doc, root_meta_from_doc
from .retry import retry_call
from .storage import delete_store_prefix, local_path, normalize_url, open_zarr_store

PACK_PREFIX = spec.PACK_PREFIX
PACK_ATTR = "ddk_pack"
PACK_FORMAT = "ddk-pack"
PACK_VERSION = 1
#: A domain's state in the pack document: held-out rows written and training rows being written, or all written.
TRAINING, PACKED = "training", "packed"
#: Target tokens per packed chunk: a few MB in memory while packing, one read per many score units.
CHUNK_TOKENS = 1 << 18
#: Rows of every packed row array (a bound, not a size: chunks exist only where rows were written).
MAX_ROWS = 1 << 40


def pack_chunk_rows(seq_len: int) -> int:
    return max(1, CHUNK_TOKENS // seq_len)


def _get(store: Store, key: str) -> bytes | None:
    try:
        buf = sync(store.get(key, prototype=default_buffer_prototype()))
    except FileNotFoundError:
        return None
    return None if buf is None else buf.to_bytes()


def _set(store: Store, key: str, data: bytes) -> None:
    sync(store.set(key, default_buffer_prototype().buffer.from_bytes(data)))


def top_level_names(store: Store) -> set[str]:
    """The names directly under the store's prefix (files and directories, or object key prefixes).

    On an object store only names that hold data count: a key, or a prefix with at least one object under it. Some
    S3 servers (SeaweedFS) keep listing the prefixes of deleted objects, and a console's "create folder" leaves a
    zero-byte ``prefix/`` object; neither holds anything. (A local empty directory still counts: a user made it.)
    """
    async def holds_data(name: str) -> bool:
        if await store.exists(f"{name}/zarr.json"):  # a Zarr node (a domain group, _pack): no listing of its chunks
            return True
        async for key in store.list_prefix(f"{name}/"):  # (a recursive listing: only names that are no node get it)
            if key.startswith(f"{name}/") and key.rstrip("/") != name:  # (not the directory's own marker)
                return True
        try:
            return await store.get(name, default_buffer_prototype(), byte_range=RangeByteRequest(0, 1)) is not None
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return False

    async def names() -> set[str]:
        listed = {n.strip("/") async for n in store.list_dir("")} - {""}
        if isinstance(store, LocalStore):
            return listed
        return {n for n in listed if await holds_data(n)}

    try:
        return sync(names())
    except FileNotFoundError:
        return set()


def refuse_foreign_entries(store: Store, url: str) -> None:
    """Before ``--overwrite`` deletes a store: refuse (StoreExistsError) when its location also holds entries that are
    not the store's own, i.e. neither the root document, nor the packed rows, nor a Zarr node (a domain group has
    its zarr.json): a user's notes or results kept beside the store are never deleted with it."""
    async def is_node(name: str) -> bool:
        return await store.exists(f"{name}/zarr.json")

    names = top_level_names(store) - {"zarr.json", PACK_PREFIX}
    # (a temporary file a killed local write left, "<key>.<32 hex>.partial", is the store's own too)
    foreign = sorted(n for n in names if not n.endswith(".partial") and not sync(is_node(n)))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise StoreExistsError(f"{url} also holds {shown}, which {'is' if len(foreign) == 1 else 'are'} not part of "
                               "the ddk store, so --overwrite does not delete it; move that out of the store's "
                               "location first")


def delete_whole_store(store: Store, url: str) -> None:
    """``--overwrite`` of a store and its packed rows: everything under its prefix, once
    :func:`refuse_foreign_entries` has found nothing there that is not the store's own."""
    refuse_foreign_entries(store, url)
    sync(delete_store_prefix(store, url))


def delete_pack(store: Store) -> None:
    """Delete the packed rows (readers never need them; the next dump packs the corpora again)."""
    sync(store.delete_dir(PACK_PREFIX))


def holds_only_pack(store: Store) -> bool:
    """Nothing but packed rows (or nothing at all) under the prefix: a store whose score phase has not begun."""
    return top_level_names(store) <= {PACK_PREFIX}


def check_pack_location(store: Store, url: str) -> None:
    """Refuse to pack into a location that holds something other than a ddk store or its packed rows."""
    doc = retry_call(lambda: read_root_doc(store, url), what="reading the root metadata", url=url)
    if doc is None:
        if not retry_call(lambda: holds_only_pack(store), what="listing the location", url=url):
            raise StoreExistsError(f"{url} is not empty and holds no ddk store; refusing to write there (and to "
                                   "delete it even with --overwrite): choose an empty or new location")
        return
    try:
        root_meta_from_doc(doc, url)
    except StoreFormatError as e:
        raise StoreExistsError(f"{url} holds something that is not a readable ddk store ({e}); refusing to touch "
                               "it: choose another location") from None


def delete_all_but_pack(store: Store, url: str) -> None:
    """Delete the store's Zarr hierarchy (root document, groups, arrays) and keep its packed rows: what
    ``--overwrite`` does once the pack phase has written rows this run is going to score."""
    refuse_foreign_entries(store, url)
    path = local_path(normalize_url(url))
    names = top_level_names(store) - {PACK_PREFIX}
    if path is not None:
        for name in names:
            p = path / name
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else os.unlink(p)
        return
    for name in names:  # a prefix (a group) or one object (the root document)
        sync(store.delete_dir(name))
        try:
            sync(store.delete(name))
        except (FileNotFoundError, KeyError):
            pass


def _node_doc(make: Any) -> bytes:
    """The zarr.json of a node made by ``make(store)`` in a scratch memory store (so no parent node is written)."""
    scratch = MemoryStore()
    make(scratch)
    return sync(scratch.get("n/zarr.json", prototype=default_buffer_prototype())).to_bytes()


class PackedRows:
    """Read and write the packed rows of the store at ``url`` (see the module docstring for the layout)."""

    def __init__(self, url: str, *, storage_options: Mapping[str, Any] | None = None, read_only: bool = False,
                 store: Store | None = None) -> None:
        self.url = normalize_url(url)
        self.read_only = read_only
        self._options = storage_options
        # Reads go through a read-only store (opening a local store for writing creates its directory, and a run
        # refused for bad input must leave no trace); the writable one is opened at the first write.
        self.store = store if store is not None else open_zarr_store(self.url, read_only=True,
                                                                     storage_options=storage_options)
        self._writable_store: Store | None = None
        self._arrays: dict[str, zarr.Array] = {}
        self._cache: tuple[tuple[str, str, int], np.ndarray] | None = None

    def writable(self) -> Store:
        """The store opened for writing (refused for a reader opened with ``read_only``)."""
        if self.read_only:
            raise StoreFormatError(f"{self.url}: packed rows opened read-only")
        if self._writable_store is None:
            self._writable_store = open_zarr_store(self.url, read_only=False, storage_options=self._options)
        return self._writable_store

    # ----------------------------------------------------------------- state
    def read_state(self) -> dict[str, Any] | None:
        """The pack document, or None when nothing was packed yet."""
        raw = retry_call(lambda: _get(self.store, f"{PACK_PREFIX}/zarr.json"), what="reading the packed rows' "
                         "document", url=self.url)
        if raw is None:
            return None
        try:
            doc = json.loads(raw).get("attributes", {}).get(PACK_ATTR)
        except (ValueError, AttributeError) as e:
            raise StoreFormatError(f"{self.url}: {PACK_PREFIX}/zarr.json is not a ddk pack document ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != PACK_FORMAT:
            raise StoreFormatError(f"{self.url}: {PACK_PREFIX}/zarr.json is not a ddk pack document")
        if doc.get("version") != PACK_VERSION:
            raise StoreFormatError(f"{self.url}: packed rows of version {doc.get('version')!r}, this ddk reads "
                                   f"version {PACK_VERSION}; pack into a new --store, or pass --overwrite")
        return doc

    def write_state(self, identity: Mapping[str, Any], domains: Mapping[str, Any]) -> None:
        doc = {"format": PACK_FORMAT, "version": PACK_VERSION, "identity": identity, "domains": domains}
        data = _node_doc(lambda m: zarr.create_group(m, path="n", attributes={PACK_ATTR: doc}))
        _set(self.writable(), f"{PACK_PREFIX}/zarr.json", data)

    # ----------------------------------------------------------------- rows
    def _array(self, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any) -> zarr.Array:
        """The array ``_pack/<name>``, created (its document only) when absent."""
        path = f"{PACK_PREFIX}/{name}"
        if name not in self._arrays:
            store = self.store if self.read_only else self.writable()
            if not self.read_only and _get(store, f"{path}/zarr.json") is None:
                # Blosc-zstd, then crc32c (the codec chain of store-format.md section 4), so
                # every chunk read is checked.
                codecs = [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=np.dtype(dtype).itemsize),
                          Crc32cCodec()]
                _set(store, f"{path}/zarr.json", _node_doc(lambda m: zarr.create_array(
                    m, name="n", shape=shape, chunks=chunks, dtype=dtype, fill_value=0, compressors=codecs)))
            try:
                self._arrays[name] = zarr.open_array(store, path=path, mode="r" if self.read_only else "r+")
            except (FileNotFoundError, KeyError, ValueError) as e:
                raise StoreFormatError(f"{self.url}: packed array {path} is missing or unreadable ({e}); rerun "
                                       "`ddk-teacher pack` with --overwrite") from None
        return self._arrays[name]

    def _rows(self, domain: str, split: str, seq_len: int, chunk_rows: int, dtype: Any) -> zarr.Array:
        return self._array(f"{domain}.{split}", (MAX_ROWS, seq_len), (chunk_rows, seq_len), np.dtype(dtype))

    def write_chunk(self, domain: str, split: str, index: int, rows: np.ndarray, *, chunk_rows: int,
                    dtype: Any) -> None:
        """Write rows [n <= chunk_rows, T] as chunk ``index`` of ``domain/split`` (ids must fit ``dtype``)."""
        arr = self._rows(domain, split, rows.shape[1], chunk_rows, dtype)
        arr[index * chunk_rows : index * chunk_rows + rows.shape[0]] = rows.astype(arr.dtype)

    def read_rows(self, domain: str, split: str, start: int, stop: int, *, seq_len: int, chunk_rows: int,
                  dtype: Any) -> np.ndarray:
        """Rows [start, stop) of ``domain/split`` as int32 [stop - start, T] (the last chunk read is kept, so
        consecutive units read each chunk once)."""
        arr = self._rows(domain, split, seq_len, chunk_rows, dtype)
        parts = []
        row = start
        while row < stop:
            index = row // chunk_rows
            key = (domain, split, index)
            if self._cache is None or self._cache[0] != key:
                try:
                    chunk = arr[index * chunk_rows : (index + 1) * chunk_rows]
                except ValueError as e:  # zarr's crc32c codec: "Stored and computed checksum do not match"
                    raise StoreCorruptError(
                        f"{self.url}: packed rows {PACK_PREFIX}/{domain}.{split} chunk {index} are damaged "
                        f"({describe(e, 120)}); delete {PACK_PREFIX} under the store (readers never need it) and "
                        "rerun the same `ddk-teacher dump` command: it packs the corpora again") from None
                self._cache = (key, chunk.astype(np.int32))
            hi = min(stop, (index + 1) * chunk_rows)
            parts.append(self._cache[1][row - index * chunk_rows : hi - index * chunk_rows])
            row = hi
        return np.concatenate(parts) if parts else np.zeros((0, seq_len), dtype=np.int32)

    def damaged_chunks(self, dtype: Any) -> list[tuple[str, str]]:
        """(where, what) of every chunk of rows the pack document counts that is missing or fails its checksum
        (``ddk-store verify``); a pack document that cannot be read is one problem."""
        try:
            state = self.read_state()
        except StoreFormatError as e:
            return [(f"{PACK_PREFIX}/zarr.json", str(e))]
        if state is None:
            return []
        problems = []
        try:
            seq_len = int(state["identity"]["seq_len"])
            counted = {(d, split): (int(n), int(st["chunk_rows"])) for d, st in state["domains"].items()
                       if st.get("state") in (TRAINING, PACKED)
                       for split, n in (("heldout", st["heldout_rows"]),
                                        ("train", st["train_rows"] if st["state"] == PACKED else st["cursor"]["rows"]))}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            return [(f"{PACK_PREFIX}/zarr.json", f"pack document lacks {describe(e, 80)}")]
        for (domain, split), (n_rows, chunk_rows) in counted.items():
            try:
                arr = self._rows(domain, split, seq_len, chunk_rows, dtype)
            except StoreFormatError as e:
                problems.append((f"{PACK_PREFIX}/{domain}.{split}", str(e)))
                continue
            for index in range(-(-n_rows // chunk_rows)):
                where = f"{PACK_PREFIX}/{domain}.{split} chunk {index}"
                key = f"{PACK_PREFIX}/{domain}.{split}/c/{index}/0"
                if retry_call(lambda: _get(self.store, key), what=f"reading {key}", url=self.url) is None:
                    problems.append((where, "missing"))
                    continue
                try:
                    lo, hi = index * chunk_rows, min(n_rows, (index + 1) * chunk_rows)
                    retry_call(lambda: arr[lo:hi], what=f"reading {where}", url=self.url)
                except ValueError as e:  # zarr's crc32c codec: "Stored and computed checksum do not match"
                    problems.append((where, f"fails its crc32c checksum or cannot be decoded ({describe(e, 120)})"))
        return problems

    def write_ints(self, domain: str, name: str, values: np.ndarray) -> None:
        arr = self._array(f"{domain}.{name}", (MAX_ROWS,), (1 << 16,), np.dtype("<i8"))
        arr[: values.size] = values

    def read_ints(self, domain: str, name: str, n: int) -> np.ndarray:
        arr = self._array(f"{domain}.{name}", (MAX_ROWS,), (1 << 16,), np.dtype("<i8"))
        return np.asarray(arr[:n], dtype=np.int64)
