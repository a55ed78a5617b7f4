"""StoreWriter: create or resume a store, write whole units with checksums, finalize last."""

from __future__ import annotations

import datetime as _dt
import math
import time
import uuid
from typing import Any, Iterator, Mapping

import numpy as np
import zarr
from zarr.core.sync import sync
from zarr.core.buffer import default_buffer_prototype
from zarr.core.group import GroupMetadata
from zarr.errors import ContainsArrayError, ContainsGroupError

from . import codec, spec
from ._version import __version__
from .errors import ConfigError, StoreCorruptError, StoreExistsError, StoreFormatError, StoreIncompleteError
from .groups import GroupLayout, array_specs, crc32_of, group_path, read_group_layout, read_root_doc, root_meta_from_doc
from .layout import Unit, default_chunk_rows, default_unit_rows, shard_owns, unit_range
from .meta import StoreMeta, validate_domain_name
from .retry import retry_call
from .storage import delete_store_prefix, normalize_url, open_zarr_store, remove_stale_partials

Rows = Mapping[str, Mapping[str, int]]


# Settings a user chooses on the command line come first in a difference message: they are what to fix.
_DIFF_FIRST = ("seq_len", "top_k", "encoding", "logprob_scale", "settings", "teacher", "tokenizer", "domains")


def _diff_order(key: Any) -> tuple[int, str]:
    return (_DIFF_FIRST.index(key) if key in _DIFF_FIRST else len(_DIFF_FIRST), str(key))


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Dotted path and values of the first difference between two JSON-like values (command-line settings first)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b), key=_diff_order):
            sub = f"{path}.{key}" if path else str(key)
            if key not in a or key not in b:
                return f"{sub}: store has {a.get(key, '<absent>')!r}, this run has {b.get(key, '<absent>')!r}"
            diff = _first_difference(a[key], b[key], sub)
            if diff:
                return diff
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            diff = _first_difference(x, y, f"{path}[{i}]")
            if diff:
                return diff
        return None
    return None if a == b else f"{path}: store has {a!r}, this run has {b!r}"


def _check_rows(meta: StoreMeta, rows: Rows) -> dict[str, dict[str, int]]:
    names = set(meta.domain_names)
    if set(rows) != names:
        raise ConfigError(f"rows are given for domains {sorted(rows)} but the metadata lists {sorted(names)}")
    out: dict[str, dict[str, int]] = {}
    for dom, splits in rows.items():
        validate_domain_name(dom)
        if set(splits) != set(spec.SPLITS):
            raise ConfigError(f"domain {dom!r}: rows must give exactly the splits {list(spec.SPLITS)}, got {sorted(splits)}")
        out[dom] = {}
        for split, n in splits.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ConfigError(f"domain {dom!r} split {split!r}: row count must be an int >= 0, got {n!r}")
            out[dom][split] = n
    return out


def _ensure_nodes(root: zarr.Group, meta: StoreMeta, rows: Rows, chunk_rows: int, unit_rows: int) -> None:
    """Create every domain/split group and array that does not exist yet.

    Another process may be creating the same nodes at the same moment (two dumps, or shards, started together):
    a node that appears between the check and the creation is taken as it is; `_layout_difference` then checks it.
    """
    def group(parent: zarr.Group, name: str, **kwargs: Any) -> zarr.Group:
        if name not in parent:
            try:
                return parent.create_group(name, **kwargs)
            except ContainsGroupError:
                pass
        return parent[name]

    for dom in meta.domain_names:
        dgrp = group(root, dom)
        for split in spec.SPLITS:
            layout = GroupLayout(rows[dom][split], chunk_rows, unit_rows)
            sgrp = group(dgrp, split, attributes={spec.GROUP_ATTR: layout.to_dict()})
            for name, kwargs in array_specs(meta, layout).items():
                if name not in sgrp:
                    try:
                        sgrp.create_array(name, **kwargs)
                    except (ContainsArrayError, ContainsGroupError):
                        pass


def _layout_difference(root: zarr.Group, meta: StoreMeta, wanted: Mapping[str, Mapping[str, dict]]) -> str | None:
    """First difference between the groups and arrays on disk and the layout this run wants (None if they match)."""
    for dom in meta.domain_names:
        for split in spec.SPLITS:
            try:
                have = read_group_layout(root, dom, split)
            except (KeyError, StoreFormatError) as e:
                return f"{dom}/{split}: {e}"
            diff = _first_difference({"rows": {dom: {split: have.to_dict()}}}, {"rows": {dom: {split: wanted[dom][split]}}})
            if diff:
                return diff
            grp = root[group_path(dom, split)]
            for name, kwargs in array_specs(meta, have).items():
                if name not in grp:
                    return f"{dom}/{split}/{name}: array missing"
                arr = grp[name]
                if tuple(arr.shape) != tuple(kwargs["shape"]) or np.dtype(arr.dtype) != np.dtype(kwargs["dtype"]):
                    return (f"{dom}/{split}/{name}: store has shape {tuple(arr.shape)} {arr.dtype}, this run has "
                            f"{tuple(kwargs['shape'])} {np.dtype(kwargs['dtype'])}")
    return None


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
                       chunk_rows: int | None = None, _retry: bool = False) -> "StoreWriter":
        """Create a new store, resume an identical unfinished one, or return a finished identical one.

        Raises:
            StoreExistsError: the location holds a different store (or other data) and ``overwrite`` is False.
        """
        url = normalize_url(url)
        rows = _check_rows(meta, rows)
        chunk_rows = chunk_rows or default_chunk_rows(meta.seq_len)
        unit_rows = unit_rows or default_unit_rows(meta.seq_len, chunk_rows)
        if unit_rows % chunk_rows:
            raise ConfigError(f"unit_rows ({unit_rows}) must be a multiple of chunk_rows ({chunk_rows})")
        store = open_zarr_store(url, read_only=False, storage_options=storage_options)
        wanted = {d: {s: GroupLayout(n, chunk_rows, unit_rows).to_dict() for s, n in sp.items()} for d, sp in rows.items()}

        doc = read_root_doc(store, url)
        if doc is None and not sync(store.is_empty("")):
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
            diff = _first_difference({"meta": existing.identity()}, {"meta": meta.identity()})
            if diff is None:
                # A writer killed while creating the store leaves groups or arrays missing: add them (idempotent).
                if existing.status == spec.STATUS_WRITING:
                    _ensure_nodes(root, existing, rows, chunk_rows, unit_rows)
                diff = _layout_difference(root, existing, wanted)
            if diff is None:
                return cls(url, store, root, existing, resumed=True)
            if not overwrite:
                raise StoreExistsError(
                    f"{url} already holds a ddk store made with different settings ({diff}); rerun with the "
                    "store's settings to resume it, choose another --store, or pass --overwrite to replace it"
                )
            sync(delete_store_prefix(store, url))
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
        if ((read_root_doc(store) or {}).get("attributes") or {}).get(spec.CLAIM_ATTR) != claim:
            if _retry:
                raise StoreExistsError(f"{url}: another process keeps recreating this store; stop the other dump")
            # Another process created it between our look and our write: decide as for any existing store.
            return cls.open_or_create(url, meta, rows, overwrite=False, storage_options=storage_options,
                                      unit_rows=unit_rows, chunk_rows=chunk_rows, _retry=True)
        root = zarr.open_group(store, mode="r+")
        _ensure_nodes(root, meta, rows, chunk_rows, unit_rows)
        # Two processes may have created this store at the same moment (a second dump pointed at the same new
        # store by mistake). The last root write wins; check what is there now before writing any data.
        doc = read_root_doc(store) or {}
        winner = root_meta_from_doc(doc, url)
        ours = (doc.get("attributes") or {}).get(spec.CLAIM_ATTR) == claim
        diff = _first_difference({"meta": winner.identity()}, {"meta": meta.identity()})
        if diff is None:
            diff = _layout_difference(zarr.open_group(store, mode="r+"), meta, wanted)
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
            from .errors import StoreNotFoundError

            raise StoreNotFoundError(f"no ddk store at {url}")
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
            def open_arrays() -> dict[str, zarr.Array]:
                grp = self._root[group_path(domain, split)]
                return {name: grp[name] for name in (*spec.DATA_ARRAYS, spec.ARR_UNITS)}

            self._arrays[key] = self._retry(open_arrays, f"opening the arrays of {domain}/{split}")
        return self._arrays[key]

    def _retry(self, fn: Any, what: str) -> Any:
        """Run one idempotent store operation through transient object-store faults (see retry.py)."""
        return retry_call(fn, what=what, url=self.url)

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
        return self._retry(lambda: units[:, 0], f"reading the unit markers of {domain}/{split}") == spec.UNIT_DONE

    def is_done(self, unit: Unit) -> bool:
        units = self._arrays_of(unit.domain, unit.split)[spec.ARR_UNITS]
        return bool(self._retry(lambda: units[unit.index, 0], f"reading the marker of {unit}") == spec.UNIT_DONE)

    def pending_units(self, shard: tuple[int, int] | None = None) -> list[Unit]:
        """Units not yet written, restricted to ``shard=(i, n)`` (round-robin over the global unit order)."""
        if shard is not None and not (0 <= shard[0] < shard[1]):
            raise ConfigError(f"shard {shard[0]}/{shard[1]}: expected I/N with 0 <= I < N")
        done = {(d, s): self.done_flags(d, s) for d in self.meta.domain_names for s in spec.SPLITS}
        return [u for ordinal, u in enumerate(self.all_units())
                if shard_owns(ordinal, shard) and not done[(u.domain, u.split)][u.index]]

    def write_unit(self, unit: Unit, tokens: np.ndarray, topk_ids: np.ndarray, topk_logprobs: np.ndarray,
                   target_logprobs: np.ndarray) -> None:
        """Encode and write the rows of ``unit``, then mark it done with its checksums (the marker is written last)."""
        meta, n = self.meta, unit.n_rows
        t, p, k, v = meta.seq_len, meta.positions, meta.top_k, meta.tokenizer.vocab_size
        expect = {"tokens": (n, t), "topk_ids": (n, p, k), "topk_logprobs": (n, p, k), "target_logprobs": (n, p)}
        given = {"tokens": tokens, "topk_ids": topk_ids, "topk_logprobs": topk_logprobs, "target_logprobs": target_logprobs}
        for name, shape in expect.items():
            if tuple(np.shape(given[name])) != shape:
                raise ValueError(f"{unit}: {name} has shape {tuple(np.shape(given[name]))}, expected {shape}")
        tokens = np.asarray(tokens)
        topk_ids = np.asarray(topk_ids)
        for name, a in (("tokens", tokens), ("topk_ids", topk_ids)):
            if a.size and (a.min() < 0 or a.max() >= v):
                raise ValueError(f"{unit}: {name} holds ids outside [0, {v})")
        target = np.asarray(target_logprobs, dtype=np.float32)
        if not np.isfinite(target).all():
            raise ValueError(f"{unit}: target_logprobs holds NaN or inf")
        if not np.isfinite(np.asarray(topk_logprobs, dtype=np.float32)).all():
            raise ValueError(f"{unit}: topk_logprobs holds NaN or inf")
        ids_enc, lp_enc = codec.encode_topk(topk_ids, np.minimum(topk_logprobs, 0.0), encoding=meta.encoding,
                                            vocab_size=v, scale=meta.logprob_scale)
        stored = {
            spec.ARR_TOKENS: tokens.astype(codec.id_dtype(v)),
            spec.ARR_TOPK_IDS: ids_enc,
            spec.ARR_TOPK_LOGPROBS: lp_enc,
            spec.ARR_TARGET_LOGPROBS: np.minimum(target, 0.0),
        }
        arrays = self._arrays_of(unit.domain, unit.split)
        # Each write is whole chunks, so repeating it after a transient failure is harmless.
        for name in spec.DATA_ARRAYS:
            self._retry(lambda: arrays[name].__setitem__(slice(unit.start, unit.stop), stored[name]),
                        f"writing {unit} {name}")
        marker = np.array([spec.UNIT_DONE] + [crc32_of(stored[name]) for name in spec.CHECKSUMMED_ARRAYS], dtype="<u4")
        self._retry(lambda: arrays[spec.ARR_UNITS].__setitem__(unit.index, marker), f"writing the marker of {unit}")

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
            self._retry(lambda: arr.__setitem__(unit.index, np.zeros(5, dtype="<u4")), f"clearing the marker of {unit}")

    # ----------------------------------------------------------------- finalize
    def missing_units(self) -> list[Unit]:
        return self.pending_units()

    def finalize(self) -> StoreMeta:
        """Check every unit is written, record teacher held-out statistics, and mark the store complete.

        The status flip is one write of the root zarr.json (atomic on local disks and object stores), and it comes
        last: a reader sees either a complete store or one it refuses.
        """
        missing = self.missing_units()
        if missing:
            raise StoreIncompleteError(
                f"cannot finalize {self.url}: {len(missing)} unit(s) are not written yet (first: {missing[0]}); "
                "rerun the dump (every --shard) with the same settings to write them, then finalize"
            )
        domains = []
        for dom in self.meta.domains:
            arrays = self._arrays_of(dom.name, spec.SPLIT_HELDOUT)
            target = self._retry(lambda: arrays[spec.ARR_TARGET_LOGPROBS][:],
                                 f"reading {dom.name}/heldout/{spec.ARR_TARGET_LOGPROBS}")
            if target.size == 0:
                domains.append(dom.__class__(**{**dom.__dict__, "heldout_nll": None, "heldout_ppl": None}))
                continue
            if not np.isfinite(target).all():
                raise StoreCorruptError(f"{dom.name}/heldout/{spec.ARR_TARGET_LOGPROBS}: missing or non-finite values; "
                                        f"run `ddk-store verify {self.url}` to locate them")
            nll = float(-np.mean(target, dtype=np.float64))
            domains.append(dom.__class__(**{**dom.__dict__, "heldout_nll": nll, "heldout_ppl": math.exp(nll)}))
        self.meta = self.meta.replace(domains=tuple(domains), status=spec.STATUS_COMPLETE)
        remove_stale_partials(self.url)  # every unit is in: no writer can still own one
        doc = self.meta.to_dict()
        self._retry(lambda: self._root.attrs.__setitem__(spec.ROOT_ATTR, doc), "writing the root metadata (finalize)")
        return self.meta
