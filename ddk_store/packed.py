"""The packed token rows of a store: written by stage 1's pack phase, read by its score phase.

They live in the Zarr group ``_pack`` (a name no domain can take) beside the domain groups; readers of the store never
look there. Its nodes are written directly (never through zarr's parent creation), so packing creates no root
document: the root stays absent until the score phase creates the store, and a store that holds only ``_pack`` is
still "new" to the writer.

- ``_pack/zarr.json``: a group whose attribute ``ddk_pack`` is the pack document, rewritten whole after a chunk
  (a single object write; how often is the packer's choice, stage1_teacher/pack.py): the pack's identity (the settings that decide the rows) and each domain's state,
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
from .errors import DdkError, InvalidNameError, StoreCorruptError, StoreFormatError, describe
from .groups import DECODE_ERRORS, refuse_foreign_codecs
from .meta import validate_domain_name
from .retry import retry_call
from .storage import normalize_url, open_zarr_store

PACK_PREFIX = spec.PACK_PREFIX
PACK_ATTR = "ddk_pack"
PACK_FORMAT = "ddk-pack"
PACK_VERSION = 1
#: A domain's state in the pack document: held-out rows written and training rows being written, or all written.
TRAINING, PACKED = "training", "packed"
#: The int64 array of a domain's held-out documents' corpus ordinals (and its count's key in a 'training' state).
HELDOUT_DOCS = "heldout_docs"
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


#: Beyond this many chunks the pack document counts but the store lacks, verify names the shortfall once.
MAX_NAMED_MISSING = 100


def _chunk_key(name: str, index: int, ndim: int) -> str:
    """The object of chunk ``index`` (along the first dimension) of the ``ndim``-dimensional array ``_pack/<name>``
    (zarr v3's default chunk keys)."""
    return f"{PACK_PREFIX}/{name}/c/{index}" + "/0" * (ndim - 1)


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
        arr = self._arrays[name]
        if (arr.shape[1:], arr.chunks) != (tuple(shape[1:]), tuple(chunks)):  # else rows would be misplaced
            raise StoreFormatError(f"{self.url}: packed array {path} holds chunks of {arr.chunks}, the pack "
                                   f"document says chunks of {tuple(chunks)}; {_REPACK}")
        return arr

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
                chunk = self._read_chunk(arr, f"{domain}.{split}", index, MAX_ROWS, "packed rows ")
                self._cache = (key, chunk.astype(np.int32))
            hi = min(stop, (index + 1) * chunk_rows)
            parts.append(self._cache[1][row - index * chunk_rows : hi - index * chunk_rows])
            row = hi
        return np.concatenate(parts) if parts else np.zeros((0, seq_len), dtype=np.int32)

    def _chunk_problem(self, arr: zarr.Array, name: str, index: int, count: int) -> tuple[np.ndarray | None, str]:
        """Chunk ``index`` of ``_pack/<name>`` (of which ``count`` items along the first dimension are meaningful),
        or what is wrong with it: ``(None, "missing")`` or ``(None, "fails its crc32c checksum ...")``.

        Every read of packed data goes through here: zarr reads a chunk that is not there as its fill value (0, a
        valid token id and a valid document ordinal), which must never pass for data."""
        key = _chunk_key(name, index, arr.ndim)
        if not retry_call(lambda: sync(self.store.exists(key)), what=f"reading {key}", url=self.url):
            return None, "missing"
        step = arr.chunks[0]
        try:
            return retry_call(lambda: arr[index * step : min(count, (index + 1) * step)],
                              what=f"reading {key}", url=self.url), ""
        except DdkError:  # the store unreachable past the retry budget: not damage
            raise
        except DECODE_ERRORS as e:  # zarr's crc32c codec (checksums do not match), Blosc's (a frame not decoded)
            return None, f"fails its crc32c checksum or cannot be decoded ({describe(e, 120)})"

    def _read_chunk(self, arr: zarr.Array, name: str, index: int, count: int, what: str = "") -> np.ndarray:
        """:meth:`_chunk_problem`'s chunk; StoreCorruptError naming it (``what``: how to call its contents) when
        it is missing or damaged."""
        data, problem = self._chunk_problem(arr, name, index, count)
        if data is None:
            raise StoreCorruptError(f"{self.url}: {what}{PACK_PREFIX}/{name} chunk {index}: {problem}; {_REPACK}")
        return data

    def damaged_chunks(self, dtype: Any) -> list[tuple[str, str]]:
        """(where, what) of every chunk the pack document counts (rows, and the held-out document ordinals a domain
        still being packed needs) that is missing or fails its checksum (``ddk-store verify``); a pack document that
        cannot be read is one problem."""
        try:
            state = self.read_state()
        except StoreFormatError as e:
            return [(f"{PACK_PREFIX}/zarr.json", str(e))]
        if state is None:
            return []
        problems = []
        counted: list[tuple[str, str, int, int]] = []  # (domain, array, items counted, chunk rows; 0: ordinals)
        try:
            seq_len = int(state["identity"]["seq_len"])
            for d, st in state["domains"].items():
                if st.get("state") not in (TRAINING, PACKED):
                    continue
                train = st["train_rows"] if st["state"] == PACKED else st["cursor"]["rows"]
                counted += [(d, split, int(n), int(st["chunk_rows"]))
                            for split, n in (("heldout", st["heldout_rows"]), ("train", train))]
                if st["state"] == TRAINING:  # its train pass still skips them (a packed domain's never reads them)
                    counted.append((d, HELDOUT_DOCS, int(st[HELDOUT_DOCS]), 0))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            return [(f"{PACK_PREFIX}/zarr.json", f"pack document lacks {describe(e, 80)}")]
        for domain, name, count, chunk_rows in counted:
            try:
                validate_domain_name(domain)  # (a name from a stored document becomes a path below)
            except InvalidNameError as e:
                problems.append((f"{PACK_PREFIX}/zarr.json", f"names a domain the store format forbids ({e})"))
                continue
            try:
                arr = (self._rows(domain, name, seq_len, chunk_rows, dtype) if chunk_rows else
                       self._ints(domain, name))
            except StoreFormatError as e:
                problems.append((f"{PACK_PREFIX}/{domain}.{name}", str(e)))
                continue
            needed, stored = -(-count // arr.chunks[0]), self._stored_chunks(f"{domain}.{name}")
            if needed > stored + MAX_NAMED_MISSING:  # (an edited count: one problem, not a loop over what it names)
                problems.append((f"{PACK_PREFIX}/{domain}.{name}", f"the pack document counts {count:,} item(s) in "
                                 f"{needed:,} chunk(s), but {stored:,} are stored"))
                continue
            for index in range(needed):
                _, problem = self._chunk_problem(arr, f"{domain}.{name}", index, count)
                if problem:
                    problems.append((f"{PACK_PREFIX}/{domain}.{name} chunk {index}", problem))
        return problems

    def _stored_chunks(self, name: str) -> int:
        """How many chunk objects array ``_pack/<name>`` has (a listing)."""
        prefix = f"{PACK_PREFIX}/{name}/c/"

        async def count() -> int:
            return sum([1 async for _ in self.store.list_prefix(prefix)])

        return retry_call(lambda: sync(count()), what=f"listing {prefix}", url=self.url)

    def _ints(self, domain: str, name: str) -> zarr.Array:
        return self._array(f"{domain}.{name}", (MAX_ROWS,), (1 << 16,), np.dtype("<i8"))

    def write_ints(self, domain: str, name: str, values: np.ndarray) -> None:
        self._ints(domain, name)[: values.size] = values

    def read_ints(self, domain: str, name: str, n: int) -> np.ndarray:
        """The first ``n`` integers of ``_pack/<domain>.<name>``; StoreCorruptError when a chunk holding them is
        missing or damaged."""
        arr = self._ints(domain, name)
        parts = [self._read_chunk(arr, f"{domain}.{name}", index, n) for index in range(-(-n // arr.chunks[0]))]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
