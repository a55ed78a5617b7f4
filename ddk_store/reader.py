"""StoreReader: read-only, random access by (domain, split, rows), decoded to numpy, corruption detected."""

from __future__ import annotations

import asyncio
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import zarr
import zarr.errors
from zarr.core.sync import sync

from . import chunkio, codec, objectio, spec
from .errors import DdkError, StoreCorruptError, StoreFormatError, StoreIncompleteError, describe
from .groups import (DECODE_ERRORS, ZARR_METADATA_ERRORS, list_chunk_keys, no_store, open_group, open_group_arrays,
                     read_group_layout, read_root_doc, rewrite_hint, root_meta_from_doc)
from .heldout import heldout_nll_of_blocks, stats_mismatch
from .layout import contiguous_runs
from .localcache import cached_store
from .meta import StoreMeta
from .retry import is_transient, retry_call
from .rows import RowBatch, StoredRows
from .encodings import encoding_for
from .schema import GroupLayout, chunk_prefix, data_arrays, group_arrays, group_path, group_schema, store_doc_keys
from .storage import normalize_url, open_zarr_store


HELDOUT_BLOCK_BYTES = 64 << 20  #: held-out log-probs :meth:`StoreReader.heldout_nll` holds at once (whole chunks)


class StoreReader:
    """Read-only view of a complete store."""

    def __init__(self, url: str, *, storage_options: Mapping[str, Any] | None = None,
                 allow_incomplete: bool = False, cache_dir: str | None = None,
                 cache_max_bytes: int | None = None, verifying: bool = False) -> None:
        """``verifying``: opened by ``ddk-store verify``, whose problems then say what repairs them, not to verify."""
        self.url = normalize_url(url)
        self.verifying = verifying
        self._zstore = open_zarr_store(self.url, read_only=True, storage_options=storage_options)
        objectio.check_local_docs(local := objectio.local_root(self._zstore), store_doc_keys(), self.url)
        doc = retry_call(lambda: read_root_doc(self._zstore), what="reading the root metadata", url=self.url)
        if doc is None:
            raise no_store(self._zstore, self.url, storage_options)
        self.meta: StoreMeta = root_meta_from_doc(doc, self.url)
        objectio.check_local_docs(local, store_doc_keys(self.meta.domain_names, self.meta.encoding), self.url)
        # remote stores only: chunks read through a local disk cache keyed by this root document (localcache.py)
        self._zstore = cached_store(self._zstore, self.url, doc, cache_dir, max_bytes=cache_max_bytes)
        if self.meta.status != spec.STATUS_COMPLETE and not allow_incomplete:
            raise StoreIncompleteError(
                f"store {self.url} is incomplete (status '{self.meta.status}'): its dump was interrupted or is still "
                "running. Resume it by rerunning the same `ddk-teacher dump ... --store` command; after sharded dumps "
                f"run `ddk-store finalize {self.url}`")
        def open_root() -> zarr.Group:
            try:
                return zarr.open_group(self._zstore, mode="r")
            except ZARR_METADATA_ERRORS as e:
                raise StoreFormatError(f"store {self.url}: root zarr.json is not a zarr group ({describe(e)}); "
                                       "this is not a ddk store, or its metadata was damaged") from None

        self._root = retry_call(open_root, what="opening the root group", url=self.url)
        self._layouts: dict[tuple[str, str], GroupLayout] = {}
        self._arrays: dict[tuple[str, str], dict[str, Any]] = {}
        self._chunk_codecs: dict[tuple[str, str], dict[str, chunkio.ChunkCodec] | None] = {}
        self._shard_indexes: dict[str, list | None] = {}  # shard key -> its index (objectio.read_rows)

    # ------------------------------------------------------------- structure
    @property
    def domains(self) -> list[str]:
        return list(self.meta.domain_names)

    @property
    def seq_len(self) -> int:
        return self.meta.seq_len

    @property
    def top_k(self) -> int:
        return self.meta.top_k

    @property
    def vocab_size(self) -> int:
        return self.meta.tokenizer.vocab_size

    def layout(self, domain: str, split: str) -> GroupLayout:
        key = (domain, split)
        if key not in self._layouts:
            if domain not in self.meta.domain_names:
                raise KeyError(f"no domain {domain!r} in store {self.url}; domains: {self.domains}")
            try:
                self._layouts[key] = retry_call(lambda: read_group_layout(self._root, domain, split), url=self.url,
                                                what=f"reading the layout of {domain}/{split}")
            except StoreFormatError as e:
                raise type(e)(f"store {self.url}: {e}") from None
        return self._layouts[key]

    def check_group(self, path: str) -> None:
        """StoreFormatError when group ``path`` (a domain's: reads never open it) is missing or not a group."""
        retry_call(lambda: open_group(self._root, path), what=f"opening group {path}", url=self.url)

    def num_rows(self, domain: str, split: str) -> int:
        return self.layout(domain, split).n_rows

    def arrays(self, domain: str, split: str) -> dict[str, zarr.Array]:
        """The five arrays of a group, opened once; their shapes are checked against the group layout."""
        key = (domain, split)
        if key not in self._arrays:
            lay = self.layout(domain, split)
            path = group_path(domain, split)

            def open_arrays() -> dict[str, Any]:
                return open_group_arrays(self._root, self.url, domain, split, group_arrays(self.meta.encoding),
                                         self._verify_hint())

            arrs = retry_call(open_arrays, what=f"opening the arrays of {path}", url=self.url)
            t, k = self.meta.seq_len, self.meta.top_k
            for name, schema in group_schema(self.meta, lay).items():
                shape = schema.shape
                if tuple(arrs[name].shape) != shape:
                    raise StoreFormatError(
                        f"store {self.url}: array '{path}/{name}' has shape {tuple(arrs[name].shape)} but the group "
                        f"layout ({spec.GROUP_ATTR}: {lay.n_rows} rows, {lay.num_units} units) and the root metadata "
                        f"(seq_len {t}, top_k {k}) give {shape}: the metadata was edited or the store is damaged; "
                        f"{self._verify_hint()}")
            self._arrays[key] = arrs
        return self._arrays[key]

    def _verify_hint(self) -> str:
        if self.verifying:  # (only the store's structure fails while verify opens it: no unit data to repair)
            return ("`ddk-store repair` cannot fix this in place: delete the store (or give another --store), then "
                    "rerun the `ddk-teacher dump` command that made it (--overwrite does not replace a store of the "
                    "same settings)")
        return rewrite_hint(self.url)

    def _where(self, domain: str, split: str, name: str, rows: tuple[int, int]) -> str:
        lay = self.layout(domain, split)
        units = sorted({r // lay.unit_rows for r in range(rows[0], rows[1])})
        unit = f"unit {units[0]}" if len(units) == 1 else f"units {units[0]}-{units[-1]}"
        return f"{group_path(domain, split)}/{name} rows {rows[0]}-{rows[1] - 1} ({unit})"

    def check_structure(self) -> None:
        """Cheap checks before a store is used: metadata documents only, no chunk data (a few small reads per group).

        Every group's arrays exist and have the shapes its layout and the root metadata give. Chunk data is checked
        as it is read (crc32c, fill values), held-out statistics by :meth:`heldout_nll`, and everything by
        ``ddk-store verify``.

        Raises:
            StoreFormatError: a group or array is missing or does not match the metadata (names which and how).
        """
        for dom, split in ((d, s) for d in self.domains for s in spec.SPLITS):
            self.arrays(dom, split)

    def heldout_nll(self, domain: str) -> float | None:
        """Teacher mean NLL over the domain's held-out split, computed from the data and checked against the metadata.

        Raises:
            StoreCorruptError: the data is damaged, or the metadata's ``heldout_nll``/``heldout_ppl`` disagree with it
                (relative tolerance 1e-6, as ``ddk-store verify``).
        """
        n = self.num_rows(domain, spec.SPLIT_HELDOUT)
        info = self.meta.domain(domain)
        if n == 0:
            return None
        # Only target_logprobs, in blocks of whole chunks: a row count edited into the metadata costs neither the
        # memory it names nor more than one block past the first missing chunk.
        split, name = spec.SPLIT_HELDOUT, spec.ARR_TARGET_LOGPROBS
        arr, lay = self.arrays(domain, split)[name], self.layout(domain, split)
        per = max(1, HELDOUT_BLOCK_BYTES // (4 * self.meta.positions * lay.chunk_rows)) * lay.chunk_rows

        def blocks() -> Iterator[np.ndarray]:
            for lo in range(0, n, per):
                hi = min(n, lo + per)
                try:
                    target = retry_call(lambda: arr[lo:hi], what=f"reading {group_path(domain, split)}/{name}",
                                        url=self.url)
                except DdkError:  # an outage past the retry budget (a ValueError too): not damage
                    raise
                except DECODE_ERRORS as e:  # crc32c mismatch or undecodable chunk
                    raise StoreCorruptError(self._locate_bad_chunk(domain, split, name, np.arange(lo, hi), e)
                                            ) from None
                missing = np.flatnonzero(np.isnan(target).any(axis=1))  # (rows, P): NaN is the fill value
                if missing.size:
                    raise StoreCorruptError(self._missing_chunk_message(domain, split, name, lo + int(missing[0])))
                yield target

        nll = heldout_nll_of_blocks(blocks())
        bad = stats_mismatch(info.heldout_nll, info.heldout_ppl, nll)
        if bad is not None:
            field, recorded, computed = bad
            source = "" if field == "heldout_nll" else "exp(heldout_nll) from "
            raise StoreCorruptError(
                f"store {self.url}: metadata domains[{domain}].{field} records {recorded} but {source}{domain}/heldout/"
                f"{spec.ARR_TARGET_LOGPROBS} rows 0-{n - 1} give {computed:.6f}: the metadata was edited or the data "
                f"altered; {self._verify_hint()}")
        return nll

    # ------------------------------------------------------------- reading
    def read_stored(self, domain: str, split: str, rows: np.ndarray, without: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Raw stored (encoded) arrays for sorted unique ``rows``: one concurrent fetch for every data array but
        those named in ``without``.

        Transient object-store failures are retried (retry.py); a chunk that fails its crc32c is located and named.
        """
        arrays = self.arrays(domain, split)
        every = data_arrays(self.meta.encoding)
        names = [n for n in every if n not in without]
        if (domain, split) not in self._chunk_codecs:  # chunkio's path, unless an array needs zarr's own
            cs = {name: chunkio.chunk_codec(arrays[name]) for name in every}
            self._chunk_codecs[(domain, split)] = None if None in cs.values() else cs
        if (codecs := self._chunk_codecs[(domain, split)]) is not None:
            return self._read_direct(domain, split, rows, {name: codecs[name] for name in names})
        runs = contiguous_runs(rows)

        async def fetch(name: str) -> np.ndarray:
            arr = arrays[name]._async_array
            if len(runs) == 1:
                return await arr.getitem(slice(*runs[0]))
            return await arr.get_orthogonal_selection((rows,) + (slice(None),) * (len(arr.shape) - 1))

        async def fetch_all() -> list[Any]:
            return await asyncio.gather(*(fetch(name) for name in names), return_exceptions=True)

        def attempt() -> list[Any]:
            out = sync(fetch_all())
            for r in out:
                # Raise (so retry_call retries it, or names a refusal) all but a chunk that fails to decode.
                if isinstance(r, Exception) and (is_transient(r) or not isinstance(r, (ValueError, RuntimeError))):
                    raise r
            return out

        span = f"{rows[0]}-{rows[-1]}" if rows.size else "none"
        out = retry_call(attempt, what=f"reading {group_path(domain, split)} rows {span}", url=self.url)
        for name, r in zip(names, out):
            if isinstance(r, (ValueError, RuntimeError)):  # crc32c mismatch or undecodable chunk
                raise StoreCorruptError(self._locate_bad_chunk(domain, split, name, rows, r)) from None
            if isinstance(r, BaseException):
                raise r
        return dict(zip(names, out))

    def _read_direct(self, domain: str, split: str, rows: np.ndarray, codecs: Mapping[str, chunkio.ChunkCodec]
                     ) -> dict[str, np.ndarray]:
        """read_stored through chunkio: every array's objects in one or two rounds of requests, decoded here."""
        span = f"{rows[0]}-{rows[-1]}" if rows.size else "none"
        out = retry_call(lambda: objectio.read_rows(self._zstore, codecs, rows, self._shard_indexes),
                         what=f"reading {group_path(domain, split)} rows {span}", url=self.url)
        for name, r in out.items():
            if isinstance(r, Exception):  # crc32c mismatch or undecodable bytes: damage, not retried
                raise StoreCorruptError(self._locate_bad_chunk(domain, split, name, rows, r)) from None
        return out

    def _locate_bad_chunk(self, domain: str, split: str, name: str, rows: np.ndarray, err: BaseException) -> str:
        """The message for a chunk that cannot be decoded: read the requested chunks one by one to find it."""
        lay = self.layout(domain, split)
        arr = self.arrays(domain, split)[name]
        bad = None
        for c in np.unique(rows // lay.chunk_rows):
            span = (int(c) * lay.chunk_rows, min(lay.n_rows, (int(c) + 1) * lay.chunk_rows))
            try:
                retry_call(lambda: arr[span[0]:span[1]], what=f"reading {group_path(domain, split)}/{name}",
                           url=self.url)
            except DdkError:  # the store unreachable while looking: say that, not damage
                raise
            except DECODE_ERRORS:
                bad = span
                break
        span = bad or (int(rows[0]), int(rows[-1]) + 1)
        detail = describe(err, 120, with_type=False)
        return (f"store {self.url}: {self._where(domain, split, name, span)}: chunk fails its crc32c checksum or "
                f"cannot be decoded (flipped or truncated bytes: {detail}); {self._verify_hint()}")

    def _missing_chunk_message(self, domain: str, split: str, name: str, row: int, also: Sequence[str] = ()) -> str:
        """The message for fill values read at ``row``: the chunk holding it is missing (or was never written)."""
        lay = self.layout(domain, split)
        c = row // lay.chunk_rows
        span = (c * lay.chunk_rows, min(lay.n_rows, (c + 1) * lay.chunk_rows))
        more = f" (also damaged in these rows: {', '.join(also)})" if also else ""
        return (f"store {self.url}: {self._where(domain, split, name, span)}: chunk missing or never written (fill "
                f"values read where a unit marked done must hold data){more}; {self._verify_hint()}")

    def _read_checked(self, domain: str, split: str, rows: Sequence[int] | np.ndarray, *, targets: bool = True):
        """(stored arrays of the unique rows, pick): the stored values of ``rows`` checked for fill values (a missing
        chunk), and ``pick`` mapping an array of the unique rows to the requested order. ``targets=False`` leaves
        out ``target_logprobs``."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        n_rows = self.num_rows(domain, split)
        if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
            raise IndexError(f"{group_path(domain, split)}: rows must be in [0, {n_rows}), got {rows.min()}..{rows.max()}")
        uniq, inverse = np.unique(rows, return_inverse=True)
        st = self.read_stored(domain, split, uniq, () if targets else (spec.ARR_TARGET_LOGPROBS,))
        v = self.meta.tokenizer.vocab_size
        # A missing chunk decodes to fill values, all of them invalid (store-format.md section 6): find them by row.
        bad_rows = {}
        if uniq.size:
            bad_rows[spec.ARR_TOKENS] = (st[spec.ARR_TOKENS] >= v).reshape(len(uniq), -1).any(axis=1)
            bad_rows.update(encoding_for(self.meta).missing(st, v))
            if targets:
                bad_rows[spec.ARR_TARGET_LOGPROBS] = np.isnan(st[spec.ARR_TARGET_LOGPROBS]).reshape(len(uniq), -1).any(1)
        bad = [name for name, mask in bad_rows.items() if mask.any()]
        if bad:
            row = int(uniq[np.flatnonzero(bad_rows[bad[0]])[0]])
            raise StoreCorruptError(self._missing_chunk_message(domain, split, bad[0], row, also=bad[1:]))
        same = uniq.size == rows.size and np.array_equal(uniq, rows)
        return st, (lambda a: a) if same else (lambda a: a[inverse])

    def read_rows(self, domain: str, split: str, rows: Sequence[int] | np.ndarray, *, order: str = "stored",
                  targets: bool = True) -> RowBatch:
        """Decode rows (any order, repeats allowed) of one domain/split.

        Args:
            order: "stored" keeps the encoding's entry order within a position (ascending id for the default
                encoding: fine for losses); "rank" sorts entries by descending log-prob (slower).
            targets: False leaves ``target_logprobs`` unread (None): training reads do not use it.
        Raises:
            StoreCorruptError: a chunk fails its checksum, or a chunk is missing (fill values decoded).
        """
        if order not in ("stored", "rank"):
            raise ValueError(f"order must be 'stored' or 'rank', got {order!r}")
        r = self.read_stored_rows(domain, split, rows, targets=targets)  # in the requested order: fewer bytes to move
        topk = encoding_for(self.meta).decode(r.topk, scale=self.meta.logprob_scale)
        if order == "rank":
            topk = codec.sort_by_rank(topk)
        return RowBatch(tokens=r.tokens, topk_ids=topk.ids, topk_logprobs=topk.logprobs,
                        target_logprobs=r.target_logprobs, topk_log_tail=topk.log_tail)

    def read_stored_rows(self, domain: str, split: str, rows: Sequence[int] | np.ndarray, *,
                         targets: bool = True) -> StoredRows:
        """Rows (any order, repeats allowed) checked as :meth:`read_rows` checks them, with the top-k arrays left as
        stored, for a decoder elsewhere (``stage2_student.device_decode`` decodes the default encoding on the
        training device: a quarter of the host-to-device bytes and no decode on the host); ``targets`` as there."""
        st, pick = self._read_checked(domain, split, rows, targets=targets)
        enc = encoding_for(self.meta)
        return StoredRows(tokens=pick(st[spec.ARR_TOKENS].astype(np.int32)),
                          target_logprobs=pick(st[spec.ARR_TARGET_LOGPROBS]) if targets else None,
                          topk={a.name: pick(st[a.name]) for a in enc.arrays(self.meta.tokenizer.vocab_size)})

    def bytes_on_disk(self) -> int:
        """Total stored bytes under the store prefix."""
        return int(retry_call(lambda: sync(self._zstore.getsize_prefix("")), what="sizing the store", url=self.url))

    def chunk_keys(self, domain: str, split: str, name: str) -> set[str]:
        """Keys of the chunks of one array that exist in the store (see :func:`schema.chunk_key`); a listing only."""
        return list_chunk_keys(self._zstore, self.url, domain, split, name)


def open_store(url: str, *, storage_options: Mapping[str, Any] | None = None, allow_incomplete: bool = False,
               cache_dir: str | None = None, cache_max_bytes: int | None = None) -> StoreReader:
    """Open a store read-only (a remote one through a local chunk cache in ``cache_dir``, see localcache.py).
    Raises StoreNotFoundError, StoreIncompleteError, StoreFormatError/StoreVersionError."""
    return StoreReader(url, storage_options=storage_options, allow_incomplete=allow_incomplete, cache_dir=cache_dir,
                       cache_max_bytes=cache_max_bytes)
