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
from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import MemoryStore

from . import spec
from .errors import InvalidNameError, StoreCorruptError, StoreFormatError, describe
from .groups import refuse_foreign_codecs
from .meta import validate_domain_name
from .retry import retry_call
from .storage import normalize_url, open_zarr_store

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


def _node_doc(make: Any) -> bytes:
    """The zarr.json of a node made by ``make(store)`` in a scratch memory store (so no parent node is written)."""
    scratch = MemoryStore()
    make(scratch)
    return sync(scratch.get("n/zarr.json", prototype=default_buffer_prototype())).to_bytes()


#: How to recover from damaged packed rows (the store's readers never read them).
_REPACK = (f"delete {PACK_PREFIX} under the store (readers never need it) and rerun the same `ddk-teacher dump` "
           "command: it packs the corpora again")


def _chunk_key(domain: str, split: str, index: int) -> str:
    """The object of chunk ``index`` of the packed rows of ``domain/split`` (zarr v3's default chunk keys)."""
    return f"{PACK_PREFIX}/{domain}.{split}/c/{index}/0"


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
                # every chunk written is stored, one of zeros too: a chunk that is not there is missing, never rows
                arr = zarr.open_array(store, path=path, mode="r" if self.read_only else "r+").with_config(
                    {"write_empty_chunks": True})
            except (FileNotFoundError, KeyError, ValueError) as e:
                raise StoreFormatError(f"{self.url}: packed array {path} is missing or unreadable ({e}); "
                                       f"{_REPACK}") from None
            refuse_foreign_codecs(arr, f"{self.url}: packed array {path}", _REPACK)
            self._arrays[name] = arr
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
                # zarr reads a missing chunk as its fill value (0, a valid token id): rows of token 0 must not be
                # scored as data
                where = f"{self.url}: packed rows {PACK_PREFIX}/{domain}.{split} chunk {index}"
                chunk_key = _chunk_key(domain, split, index)
                if not retry_call(lambda: sync(self.store.exists(chunk_key)), what=f"reading {chunk_key}",
                                  url=self.url):
                    raise StoreCorruptError(f"{where} are missing; {_REPACK}")
                try:
                    chunk = arr[index * chunk_rows : (index + 1) * chunk_rows]
                except ValueError as e:  # zarr's crc32c codec: "Stored and computed checksum do not match"
                    raise StoreCorruptError(f"{where} are damaged ({describe(e, 120)}); {_REPACK}") from None
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
                validate_domain_name(domain)  # (a name from a stored document becomes a path below)
            except InvalidNameError as e:
                problems.append((f"{PACK_PREFIX}/zarr.json", f"names a domain the store format forbids ({e})"))
                continue
            try:
                arr = self._rows(domain, split, seq_len, chunk_rows, dtype)
            except StoreFormatError as e:
                problems.append((f"{PACK_PREFIX}/{domain}.{split}", str(e)))
                continue
            for index in range(-(-n_rows // chunk_rows)):
                where = f"{PACK_PREFIX}/{domain}.{split} chunk {index}"
                key = _chunk_key(domain, split, index)
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
