"""Creating and checking the groups and arrays of a store: what a writer lays out, and how what is on disk differs."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import zarr
from zarr.errors import ContainsArrayError, ContainsGroupError

from . import spec
from .difference import first_difference
from .errors import StoreFormatError
from .groups import array_specs, read_group_layout
from .meta import StoreMeta
from .schema import GroupLayout, group_path, new_layout

Rows = Mapping[str, Mapping[str, int]]


def ensure_nodes(root: zarr.Group, meta: StoreMeta, rows: Rows, chunk_rows: int, unit_rows: int) -> None:
    """Create every domain/split group and array that does not exist yet.

    This is the one place that tolerates racing creators (two dumps, or shards, started together on a new store):
    zarr refuses to create a node that appeared between the check and the creation (ContainsGroupError,
    ContainsArrayError), and the node is then taken as it is; `layout_difference` checks it afterwards.
    """
    def node(parent: zarr.Group, name: str, create: Any, **kwargs: Any) -> Any:
        if name not in parent:
            try:
                return create(name, **kwargs)
            except (ContainsArrayError, ContainsGroupError):
                pass  # another process created it this instant
        return parent[name]

    for dom in meta.domain_names:
        dgrp = node(root, dom, root.create_group)
        for split in spec.SPLITS:
            layout = new_layout(meta, rows[dom][split], chunk_rows, unit_rows)
            sgrp = node(dgrp, split, dgrp.create_group, attributes={spec.GROUP_ATTR: layout.to_dict()})
            for name, kwargs in array_specs(meta, layout).items():
                node(sgrp, name, sgrp.create_array, **kwargs)


def layout_difference(root: zarr.Group, meta: StoreMeta, wanted: Mapping[str, Mapping[str, dict]]) -> str | None:
    """First difference between the groups and arrays on disk and the layout this run wants (None if they match)."""
    for dom in meta.domain_names:
        for split in spec.SPLITS:
            try:
                have = read_group_layout(root, dom, split)
            except (KeyError, StoreFormatError) as e:
                return f"{dom}/{split}: {e}"
            diff = first_difference({"rows": {dom: {split: have.to_dict()}}}, {"rows": {dom: {split: wanted[dom][split]}}})
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


def wanted_layouts(meta: StoreMeta, rows: Rows, chunk_rows: int, unit_rows: int) -> dict[str, dict[str, dict]]:
    """The group layouts a writer gives a store of ``meta``'s format with these rows and work units."""
    return {d: {s: new_layout(meta, n, chunk_rows, unit_rows).to_dict() for s, n in sp.items()}
            for d, sp in rows.items()}


def first_layout(root: zarr.Group, meta: StoreMeta) -> GroupLayout | None:
    """The layout of the store's first <domain>/<split> group (every group of a store has the same work units),
    or None while it does not exist yet."""
    try:
        return read_group_layout(root, meta.domain_names[0], spec.SPLITS[0])
    except (KeyError, IndexError, StoreFormatError):
        return None


def resume_difference(root: zarr.Group, meta: StoreMeta, rows: Rows, chunk_rows: int, unit_rows: int, *,
                      asked: bool) -> str | None:
    """How the groups of the existing store ``meta`` (same identity) differ from what this run lays out; None: it
    can be resumed. Unless this run ``asked`` for its work units (--unit-rows), it takes the store's own. A store
    still being written gets the groups and arrays a killed writer left missing first (idempotent)."""
    have = first_layout(root, meta)
    if have is not None and not asked:
        chunk_rows, unit_rows = have.chunk_rows, have.unit_rows
    if meta.status == spec.STATUS_WRITING:
        ensure_nodes(root, meta, rows, chunk_rows, unit_rows)
    diff = layout_difference(root, meta, wanted_layouts(meta, rows, chunk_rows, unit_rows))
    if diff is not None and have is not None and (have.unit_rows, have.chunk_rows) != (unit_rows, chunk_rows):
        return (f"--unit-rows: the store's work units are {have.unit_rows} rows in chunks of {have.chunk_rows}, "
                f"this run's {unit_rows} in chunks of {chunk_rows}; omit --unit-rows to resume with the store's")
    return diff
