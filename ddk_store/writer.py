"""StoreWriter: create or resume a store, write whole units with checksums, finalize last."""

from __future__ import annotations

import asyncio
import datetime as _dt
import time
import uuid
from dataclasses import replace
from typing import Any, Iterator, Mapping

import numpy as np
import zarr
from zarr.core.sync import sync
from zarr.core.buffer import default_buffer_prototype
from zarr.core.group import GroupMetadata

from . import chunkio, codec, objectio, spec
from ._version import __version__
from .difference import identity_difference
from .encodings import encoding_for
from .errors import ConfigError, StoreCorruptError, StoreExistsError, StoreFormatError, StoreIncompleteError
from .crc import crc32_combine, crc32_of
from .groups import (no_store, open_group_arrays, read_group_layout, read_root_doc, read_unit_array, rewrite_hint,
                     root_claim, root_meta_from_doc, units_without_data)
from .heldout import heldout_nll, heldout_ppl
from .layout import Unit, default_chunk_rows, default_unit_rows, shard_owns, unit_range
from .meta import StoreMeta
from .location import delete_whole_store, holds_only_pack
from .retry import retry_call
from .nodes import ensure_nodes, layout_difference, resume_difference, wanted_layouts
from .schema import (MARKER_DONE_COL, GroupLayout, check_rows, check_unit_data, check_unit_values, cleared_marker,
                     data_arrays, done_marker, group_arrays, group_path)
from .storage import is_lost_partial, normalize_url, open_zarr_store, remove_stale_partials

Rows = Mapping[str, Mapping[str, int]]


class StoreWriter:
    """Writes one store. Several processes may hold writers on the same store and write disjoint units."""

    def __init__(self, url: str, store: Any, root: zarr.Group, meta: StoreMeta, *, resumed: bool) -> None:
        self.url = url
        self._store = store
        self._root = root
        self.meta = meta
        self.resumed = resumed
        self._layouts: dict[tuple[str, str], GroupLayout] = {}
        self._arrays: dict[tuple[str, str], dict[str, zarr.Array]] = {}

    # ----------------------------------------------------------------- opening
    @classmethod
    def open_or_create(cls, url: str, meta: StoreMeta, rows: Rows, *, overwrite: bool = False,
                       storage_options: Mapping[str, Any] | None = None, unit_rows: int | None = None,
                       chunk_rows: int | None = None, setting_names: Mapping[str, str] | None = None,
                       _retry: bool = False) -> "StoreWriter":
        """Create a new store, resume an identical unfinished one, or return a finished identical one.

        A sibling process creating the same store at the same moment (shards started together) is tolerated: the
        store's creation is idempotent, and this call resumes what the other made. ``setting_names`` maps identity
        paths to the caller's flag names (see :func:`ddk_store.difference.identity_difference`), so that a refusal
        names the setting the user changed.

        Raises:
            StoreExistsError: the location holds a different store (or other data) and ``overwrite`` is False.
        """
        url = normalize_url(url)
        rows = check_rows(meta, rows)
        asked = bool(unit_rows or chunk_rows)  # else an existing store is resumed with its own work units
        chunk_rows = chunk_rows or default_chunk_rows(meta.seq_len)
        unit_rows = unit_rows or default_unit_rows(meta.seq_len, chunk_rows)
        if unit_rows % chunk_rows:
            raise ConfigError(f"unit_rows ({unit_rows}) must be a multiple of chunk_rows ({chunk_rows})")
        store = open_zarr_store(url, read_only=False, storage_options=storage_options)

        doc = read_root_doc(store, url)
        if doc is None and not holds_only_pack(store):  # a store packed by `ddk-teacher pack` only
            # Another writer may be creating the store this instant (its root document is being written).
            for _ in range(20):
                time.sleep(0.1)
                doc = read_root_doc(store)
                if doc is not None:
                    break
            if doc is None:
                raise StoreExistsError(
                    f"{url} is not empty and holds no ddk store; refusing to write there (and to delete it even with "
                    "--overwrite): choose an empty or new location"
                )
        if doc is not None:
            try:
                existing = root_meta_from_doc(doc, url)
            except StoreFormatError as e:
                raise StoreExistsError(f"{url} holds something that is not a readable ddk store ({e}); "
                                       "refusing to touch it: choose another location") from None
            root = zarr.open_group(store, mode="r+")
            diff = identity_difference(existing, meta, setting_names)
            if diff is None:
                diff = resume_difference(root, existing, rows, chunk_rows, unit_rows, asked=asked)
            if diff is None:
                return cls(url, store, root, existing, resumed=True)
            if not overwrite:
                raise StoreExistsError(
                    f"{url} already holds a ddk store made with different settings ({diff}); rerun with the "
                    "store's settings to resume it, choose another --store, or pass --overwrite to replace it"
                )
            delete_whole_store(store, url)
            store = open_zarr_store(url, read_only=False, storage_options=storage_options)

        now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
        meta = meta.replace(status=spec.STATUS_WRITING, tool_version=f"ddk {__version__}", created_at=now)
        # Root metadata (status 'writing') first: from then on readers refuse the store and a rerun recognizes it
        # as its own, even if this process dies before every group and array exists.
        claim = uuid.uuid4().hex
        # Exclusive create where the storage has one (local disks: a hard link that fails if the file exists);
        # object stores check then write, and the read-back below catches the rest of the race.
        doc = {spec.ROOT_ATTR: meta.to_dict(), spec.CLAIM_ATTR: claim}
        sync(store.set_if_not_exists("zarr.json", GroupMetadata(attributes=doc).to_buffer_dict(
            default_buffer_prototype())["zarr.json"]))
        if root_claim(read_root_doc(store)) != claim:
            if _retry:
                raise StoreExistsError(f"{url}: another process keeps recreating this store; stop the other dump")
            # Another process created it between our look and our write: decide as for any existing store.
            return cls.open_or_create(url, meta, rows, overwrite=False, storage_options=storage_options,
                                      unit_rows=unit_rows, chunk_rows=chunk_rows, setting_names=setting_names,
                                      _retry=True)
        root = zarr.open_group(store, mode="r+")
        ensure_nodes(root, meta, rows, chunk_rows, unit_rows)
        # Two processes may have created this store at the same moment (a second dump pointed at the same new
        # store by mistake). The last root write wins; check what is there now before writing any data.
        doc = read_root_doc(store) or {}
        winner = root_meta_from_doc(doc, url)
        ours = root_claim(doc) == claim
        diff = identity_difference(winner, meta, setting_names)
        if diff is None:
            diff = layout_difference(zarr.open_group(store, mode="r+"), meta,
                                     wanted_layouts(meta, rows, chunk_rows, unit_rows))
        if diff is not None:
            raise StoreExistsError(
                f"another process created a ddk store at {url} at the same moment with different settings ({diff}); "
                "nothing was written by this run. Stop one of the two dumps, then rerun the other"
                + ("" if ours else " with --overwrite")
            )
        return cls(url, store, zarr.open_group(store, mode="r+"), winner, resumed=not ours)

    @classmethod
    def resume(cls, url: str, meta: StoreMeta | None = None, *,
               storage_options: Mapping[str, Any] | None = None) -> "StoreWriter":
        """Open an existing store for writing (finalize, or more units), whatever its layout."""
        url = normalize_url(url)
        store = open_zarr_store(url, read_only=False, storage_options=storage_options)
        doc = retry_call(lambda: read_root_doc(store), what="reading the root metadata", url=url)
        if doc is None:
            raise no_store(store, url, storage_options)
        existing = root_meta_from_doc(doc, url)
        root = retry_call(lambda: zarr.open_group(store, mode="r+"), what="opening the root group", url=url)
        return cls(url, store, root, existing, resumed=True)

    @property
    def complete(self) -> bool:
        return self.meta.status == spec.STATUS_COMPLETE

    # ----------------------------------------------------------------- units
    def layout(self, domain: str, split: str) -> GroupLayout:
        key = (domain, split)
        if key not in self._layouts:
            self._layouts[key] = self._retry(lambda: read_group_layout(self._root, domain, split),
                                             f"reading the layout of {domain}/{split}")
        return self._layouts[key]

    def _arrays_of(self, domain: str, split: str) -> dict[str, zarr.Array]:
        key = (domain, split)
        if key not in self._arrays:
            def open_arrays() -> dict[str, zarr.Array]:  # (a resumed store's arrays: written by someone else)
                return open_group_arrays(self._root, self.url, domain, split, group_arrays(self.meta.encoding),
                                         "delete the store and dump it again, or dump into another --store")

            self._arrays[key] = self._retry(open_arrays, f"opening the arrays of {domain}/{split}")
        return self._arrays[key]

    def _retry(self, fn: Any, what: str) -> Any:
        """Run one idempotent store operation through transient object-store faults (see retry.py), and again when
        another writer's finalize removed its temporary chunk file (storage.is_lost_partial)."""
        for attempt in range(4):
            try:
                return retry_call(fn, what=what, url=self.url)
            except FileNotFoundError as e:
                if attempt == 3 or not is_lost_partial(e):
                    raise

    def units(self, domain: str, split: str) -> list[Unit]:
        lay = self.layout(domain, split)
        return [Unit(domain, split, i, *unit_range(i, lay.n_rows, lay.unit_rows)) for i in range(lay.num_units)]

    def all_units(self) -> Iterator[Unit]:
        """Every unit of the store in a fixed order: domains as listed in the metadata, train then heldout."""
        for dom in self.meta.domain_names:
            for split in spec.SPLITS:
                yield from self.units(dom, split)

    def done_flags(self, domain: str, split: str) -> np.ndarray:
        units = self._arrays_of(domain, split)[spec.ARR_UNITS]
        if not units.shape[0]:
            return np.zeros(0, dtype=bool)
        return read_unit_array(self.url, self.units(domain, split), spec.ARR_UNITS, units,
                               lambda: units[:, MARKER_DONE_COL]) == spec.UNIT_DONE

    def is_done(self, unit: Unit) -> bool:
        units = self._arrays_of(unit.domain, unit.split)[spec.ARR_UNITS]
        return bool(read_unit_array(self.url, [unit], spec.ARR_UNITS, units, lambda: units[unit.index, MARKER_DONE_COL])
                    == spec.UNIT_DONE)

    def pending_units(self, shard: tuple[int, int] | None = None) -> list[Unit]:
        """Units not yet written, restricted to ``shard=(i, n)`` (round-robin over the global unit order)."""
        if shard is not None and not (0 <= shard[0] < shard[1]):
            raise ConfigError(f"shard {shard[0]}/{shard[1]}: expected I/N with 0 <= I < N")
        done = {(d, s): self.done_flags(d, s) for d in self.meta.domain_names for s in spec.SPLITS}
        return [u for ordinal, u in enumerate(self.all_units())
                if shard_owns(ordinal, shard) and not done[(u.domain, u.split)][u.index]]

    def write_unit(self, unit: Unit, tokens: np.ndarray, topk_ids: np.ndarray, topk_logprobs: np.ndarray,
                   target_logprobs: np.ndarray) -> None:
        """Encode and write the rows of ``unit``, then mark it done with its checksums (the marker is written last).
        Row blocks are checked, encoded, checksummed and compressed in parallel (chunkio.codec_pool); each array's
        objects (its shard, or its chunks) are then written whole. Layouts chunkio does not handle take zarr's path."""
        meta = self.meta
        given = check_unit_data(meta, unit, {spec.ARR_TOKENS: tokens, spec.ARR_TOPK_IDS: topk_ids,
                                             spec.ARR_TOPK_LOGPROBS: topk_logprobs,
                                             spec.ARR_TARGET_LOGPROBS: target_logprobs}, values=False)
        names = data_arrays(meta.encoding)
        arrays = self._arrays_of(unit.domain, unit.split)
        codecs = {name: chunkio.chunk_codec(arrays[name]) for name in names}
        if any(c is None for c in codecs.values()):
            check_unit_values(meta, unit, given)
            self._write_unit_zarr(unit, self._stored(given, 0, unit.n_rows), arrays, names)
            return
        rows = codecs[names[0]].chunk_rows
        n_chunks = -(-unit.n_rows // rows)
        per = -(-n_chunks // (2 * chunkio.codec_threads())) * rows  # about two tasks per pool thread

        def piece(lo: int) -> tuple[dict[str, tuple[int, int]], dict[str, list[bytes]]]:
            """Rows [lo, lo + per): checked, encoded, checksummed (crc32, length) and compressed, in a pool thread."""
            hi = min(lo + per, unit.n_rows)
            check_unit_values(meta, unit, {name: a[lo:hi] for name, a in given.items()})
            stored = self._stored(given, lo, hi)
            return ({name: (crc32_of(stored[name]), stored[name].nbytes) for name in names},
                    {name: [chunkio.encode_chunk(codecs[name], stored[name][i:i + rows])
                            for i in range(0, len(stored[name]), rows)] for name in names})

        pieces = list(chunkio.codec_pool().map(piece, range(0, unit.n_rows, per)))
        files: dict[str, bytes] = {}
        crcs = {name: 0 for name in names}  # crc32 of each whole array: the pieces' combined in row order
        for name in names:
            files.update(chunkio.objects(codecs[name], unit.start // rows, [c for p in pieces for c in p[1][name]]))
            for sums, _ in pieces:
                crcs[name] = crc32_combine(crcs[name], *sums[name])
        self._write_objects(files, f"writing {unit} ({', '.join(names)})")
        self._mark_done(unit, arrays, crcs)

    def _stored(self, given: Mapping[str, np.ndarray], lo: int, hi: int) -> dict[str, np.ndarray]:
        """The stored (encoded) arrays of rows [lo, hi) of a unit's checked data."""
        meta, v = self.meta, self.meta.tokenizer.vocab_size
        topk = codec.encode_arrays(given[spec.ARR_TOPK_IDS][lo:hi], given[spec.ARR_TOPK_LOGPROBS][lo:hi],
                                   encoding=encoding_for(meta), vocab_size=v, scale=meta.logprob_scale)
        return {spec.ARR_TOKENS: given[spec.ARR_TOKENS][lo:hi].astype(codec.id_dtype(v)),
                spec.ARR_TARGET_LOGPROBS: np.minimum(given[spec.ARR_TARGET_LOGPROBS][lo:hi], 0.0), **topk}

    def _write_unit_zarr(self, unit: Unit, stored: Mapping[str, np.ndarray], arrays: Mapping[str, zarr.Array],
                         names: tuple[str, ...]) -> None:
        """The zarr path of :meth:`write_unit`, for arrays whose layout chunkio does not handle."""
        rows = slice(unit.start, unit.stop)

        async def write_all() -> None:  # one call: zarr compresses every array's chunks at once
            await asyncio.gather(*(arrays[name]._async_array.setitem(rows, stored[name]) for name in names))

        self._retry(lambda: sync(write_all()), f"writing {unit} ({', '.join(names)})")
        self._mark_done(unit, arrays, {name: crc32_of(stored[name]) for name in names})

    def _mark_done(self, unit: Unit, arrays: Mapping[str, zarr.Array], crcs: Mapping[str, int]) -> None:
        marker = done_marker(dict(crcs))
        c = chunkio.chunk_codec(arrays[spec.ARR_UNITS])
        if c is None or c.chunk_rows != 1 or c.shard_rows:  # not one marker per object: zarr's path
            self._retry(lambda: arrays[spec.ARR_UNITS].__setitem__(unit.index, marker), f"writing the marker of {unit}")
            return
        # Directly, as the unit's objects: zarr's path costs a few ms per unit in event-loop hand-offs.
        self._write_objects(chunkio.objects(c, unit.index, [chunkio.encode_chunk(c, marker[None])]),
                            f"writing the marker of {unit}")

    def _write_objects(self, files: Mapping[str, bytes], what: str) -> None:
        """Whole objects, never torn (a retry is harmless; a full disk is one clear error)."""
        local = objectio.local_root(self._store)
        if local is not None:
            self._retry(lambda: objectio.write_local(local, files), what)
        else:  # an object store: every object at once
            self._retry(lambda: sync(objectio.put_objects(self._store, files)), what)

    def reset_units(self, units: list[Unit]) -> None:
        """Clear the completion marker of ``units`` (and the store's 'complete' status) so a rerun rewrites them.

        Used by ``ddk-store repair`` on units whose data fails verification. The status flips to 'writing' first, so
        readers refuse the store from the moment any marker is cleared until it is finalized again.
        """
        if not units:
            return
        if self.meta.status != spec.STATUS_WRITING:
            self.meta = self.meta.replace(status=spec.STATUS_WRITING)
            doc = self.meta.to_dict()
            self._retry(lambda: self._root.attrs.__setitem__(spec.ROOT_ATTR, doc), "writing the root metadata")
        for unit in units:
            arr = self._arrays_of(unit.domain, unit.split)[spec.ARR_UNITS]
            cleared = cleared_marker(self.meta.encoding)
            self._retry(lambda: arr.__setitem__(unit.index, cleared), f"clearing the marker of {unit}")

    # ----------------------------------------------------------------- finalize
    def finalize(self) -> StoreMeta:
        """Check every unit is written, record teacher held-out statistics, and mark the store complete.

        The status flip is one write of the root zarr.json (atomic on local disks and object stores), and it comes
        last: a reader sees either a complete store or one it refuses.
        """
        missing = self.pending_units()
        if missing:
            raise StoreIncompleteError(
                f"cannot finalize {self.url}: {len(missing)} unit(s) are not written yet (first: {missing[0]}); "
                "rerun the dump (every --shard) with the same settings to write them, then finalize"
            )
        lost = units_without_data(self._store, self.url, data_arrays(self.meta.encoding),
                                  [(d, s, self.layout(d, s), self.units(d, s), self.done_flags(d, s))
                                   for d in self.meta.domain_names for s in spec.SPLITS])
        if lost:
            raise StoreCorruptError(f"cannot finalize {self.url}: {len(lost)} unit(s) are marked written but a data "
                                    f"object of theirs is missing (first: {lost[0]}); {rewrite_hint(self.url)}")
        domains = []
        for dom in self.meta.domains:
            arrays = self._arrays_of(dom.name, spec.SPLIT_HELDOUT)
            target = read_unit_array(self.url, self.units(dom.name, spec.SPLIT_HELDOUT), spec.ARR_TARGET_LOGPROBS,
                                     arrays[spec.ARR_TARGET_LOGPROBS], lambda: arrays[spec.ARR_TARGET_LOGPROBS][:])
            if not np.isfinite(target).all():
                raise StoreCorruptError(f"{self.url}: {dom.name}/heldout/{spec.ARR_TARGET_LOGPROBS}: missing or "
                                        f"non-finite values; {rewrite_hint(self.url)}")
            nll = heldout_nll(target)
            domains.append(replace(dom, heldout_nll=nll, heldout_ppl=None if nll is None else heldout_ppl(nll)))
        self.meta = self.meta.replace(domains=tuple(domains), status=spec.STATUS_COMPLETE)
        remove_stale_partials(self.url)  # every unit is in: no writer can still own one
        doc = self.meta.to_dict()
        self._retry(lambda: self._root.attrs.__setitem__(spec.ROOT_ATTR, doc), "writing the root metadata (finalize)")
        return self.meta

