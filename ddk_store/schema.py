"""The store's schema, defined once: the groups and arrays of a store, their shapes, chunks, dtypes and fill values,
the unit marker layout, and the keys under which zarr keeps each node's document and chunks.

Pure (numpy only, no I/O). The writer creates arrays from :func:`group_schema` and checks the rows it is given with
:func:`check_unit_data`; the reader and the validator compare what is stored with it; tests and benches find files
through :func:`node_doc_key`, :func:`chunk_key` and :func:`marker_key` (see ddk_store.testing.StoreFiles).
docs/store-format.md is the normative text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from . import spec
from .encodings import PER_ENTRY, encoding_for, get_encoding, id_dtype, id_fill
from .errors import ConfigError, StoreFormatError
from .jsonfields import parse_int, reject_unknown
from .layout import Unit, num_units
from .meta import StoreMeta, validate_domain_name, version_before

#: A unit marker is one row of ARR_UNITS: column MARKER_DONE_COL holds UNIT_DONE once the unit is written, then one
#: crc32 per data array of the group (:func:`data_arrays`), in that order. MARKER_WIDTH and GROUP_ARRAYS are those of
#: the format-1.0 encodings; :func:`marker_width` and :func:`group_arrays` those of any encoding.
MARKER_DONE_COL = 0
MARKER_WIDTH = 1 + len(spec.CHECKSUMMED_ARRAYS)
MARKER_DTYPE = np.dtype("<u4")
TARGET_DTYPE = np.dtype("<f4")

#: The arrays of every <domain>/<split> group, in creation order: the data arrays, then the unit markers.
GROUP_ARRAYS = (*spec.DATA_ARRAYS, spec.ARR_UNITS)
#: Dimension names of each array; the first dimension is the one chunked (rows, or units for ARR_UNITS).
DIMENSIONS: Mapping[str, tuple[str, ...]] = {
    spec.ARR_TOKENS: ("row", "token"),
    spec.ARR_TOPK_IDS: ("row", "position", "k"),
    spec.ARR_TOPK_LOGPROBS: ("row", "position", "k"),
    spec.ARR_TARGET_LOGPROBS: ("row", "position"),
    spec.ARR_TOPK_TAIL: ("row", "position"),
    spec.ARR_UNITS: ("unit", "field"),
}
#: Name of every node's metadata document (Zarr v3), and its key holding the node's attributes.
NODE_DOC = "zarr.json"
DOC_ATTRIBUTES = "attributes"


def data_arrays(encoding: str) -> tuple[str, ...]:
    """The data arrays of a group of a store with this encoding, in marker (crc32 column) order: spec.DATA_ARRAYS, then
    the arrays the encoding adds."""
    extra = tuple(a.name for a in get_encoding(encoding).arrays(1) if a.name not in spec.DATA_ARRAYS)
    return (*spec.DATA_ARRAYS, *extra)


def group_arrays(encoding: str) -> tuple[str, ...]:
    """Every array of a group, in creation order: the data arrays, then the unit markers."""
    return (*data_arrays(encoding), spec.ARR_UNITS)


def marker_width(encoding: str) -> int:
    return 1 + len(data_arrays(encoding))


def group_path(domain: str, split: str) -> str:
    """``<domain>/<split>``, the path of a group inside the store (both checked: they become path components)."""
    validate_domain_name(domain)
    if split not in spec.SPLITS:
        raise StoreFormatError(f"unknown split {split!r}; splits are {list(spec.SPLITS)}")
    return f"{domain}/{split}"


def node_doc_key(*path: str) -> str:
    """Key of the metadata document of the root (no argument), a group or an array: ``node_doc_key(d, s, name)``."""
    return "/".join((*path, NODE_DOC))


def store_doc_keys(domains: Sequence[str] = (), encoding: str = "") -> list[str]:
    """The metadata documents of the root, then of every domain's group, split groups and arrays."""
    return [node_doc_key()] + [node_doc_key(*node) for d in domains for node in [(d,)] + [(d, s) for s in spec.SPLITS]
                               + [(d, s, a) for s in spec.SPLITS for a in group_arrays(encoding)]]


def chunk_prefix(domain: str, split: str, name: str) -> str:
    """Key prefix (a directory on disk) under which an array's chunks lie, one entry per chunk index along rows."""
    return f"{group_path(domain, split)}/{name}/c"


def chunk_key(domain: str, split: str, name: str, index: int) -> str:
    """Key of stored object ``index`` (along the first dimension) of an array: its chunk, or in a sharded array
    (format 1.2 data arrays) its shard of ``GroupLayout.object_rows`` rows; objects span every other dimension."""
    return f"{chunk_prefix(domain, split, name)}/{index}" + "/0" * (len(DIMENSIONS[name]) - 1)


def object_indices(lay: GroupLayout, start: int, stop: int) -> range:
    """Indices (for :func:`chunk_key`) of the stored objects, chunks or shards, that hold rows [start, stop) of a data
    array of a group of layout ``lay``."""
    return range(start // lay.object_rows, -(-stop // lay.object_rows))


def marker_key(domain: str, split: str, unit: int) -> str:
    """Key of the chunk holding unit ``unit``'s marker (ARR_UNITS has one marker per chunk)."""
    return chunk_key(domain, split, spec.ARR_UNITS, unit)


@dataclass(frozen=True)
class GroupLayout:
    """The ``ddk_group`` attribute of a <domain>/<split> group."""

    n_rows: int
    chunk_rows: int
    unit_rows: int
    #: (format 1.2) rows per shard of the data arrays: one stored object per write unit (= unit_rows). 0: no
    #: sharding, one object per chunk (formats 1.0 and 1.1; the field is then absent from the document).
    shard_rows: int = 0

    @property
    def num_units(self) -> int:
        return num_units(self.n_rows, self.unit_rows)

    @property
    def object_rows(self) -> int:
        """Rows per stored object of a data array: a shard's, or (unsharded) a chunk's."""
        return self.shard_rows or self.chunk_rows

    def to_dict(self) -> dict[str, int]:
        d = {"n_rows": self.n_rows, "chunk_rows": self.chunk_rows, "unit_rows": self.unit_rows}
        return {**d, "shard_rows": self.shard_rows} if self.shard_rows else d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], ctx: str) -> "GroupLayout":
        reject_unknown(d, cls, ctx)
        chunk_rows = parse_int(d, "chunk_rows", ctx, lo=1)
        unit_rows = parse_int(d, "unit_rows", ctx, lo=1)
        if unit_rows % chunk_rows:
            raise StoreFormatError(f"field '{ctx}.unit_rows' ({unit_rows}) must be a multiple of chunk_rows "
                                   f"({chunk_rows})")
        shard_rows = parse_int(d, "shard_rows", ctx, lo=1) if d.get("shard_rows") is not None else 0
        if shard_rows and shard_rows != unit_rows:
            raise StoreFormatError(f"field '{ctx}.shard_rows' ({shard_rows}) must equal unit_rows ({unit_rows})")
        return cls(n_rows=parse_int(d, "n_rows", ctx, lo=0), chunk_rows=chunk_rows, unit_rows=unit_rows,
                   shard_rows=shard_rows)


def sharded(meta: StoreMeta) -> bool:
    """Whether a store's data arrays are sharded, one object per write unit (format 1.2 and later)."""
    return not version_before(meta.format_version, spec.SHARDED_SINCE)


def new_layout(meta: StoreMeta, n_rows: int, chunk_rows: int, unit_rows: int) -> GroupLayout:
    """The layout a writer gives a new <domain>/<split> group of a store of ``meta``'s format."""
    return GroupLayout(n_rows, chunk_rows, unit_rows, unit_rows if sharded(meta) else 0)


@dataclass(frozen=True)
class ArraySchema:
    """What one array of a group must be: shape, chunk shape, dtype, fill value, dimension names."""

    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    fill_value: Any
    dims: tuple[str, ...]
    shards: tuple[int, ...] | None = None  # (format 1.2) the shard shape of a data array

    def mismatch(self, shape: Any, chunks: Any, dtype: Any, shards: Any = None) -> str | None:
        """How a stored array with this shape, chunk (and shard) shape and dtype differs from the schema (None: it
        matches)."""
        if tuple(shape) != self.shape or tuple(chunks) != self.chunks:
            return f"shape {tuple(shape)} chunks {tuple(chunks)}, expected {self.shape} chunks {self.chunks}"
        if (None if shards is None else tuple(shards)) != self.shards:
            return f"shards {shards}, expected {self.shards}"
        if np.dtype(dtype) != self.dtype:
            return f"dtype {np.dtype(dtype)}, expected {self.dtype}"
        return None


def row_shapes(meta: StoreMeta, n_rows: int) -> dict[str, tuple[int, ...]]:
    """Shape of ``n_rows`` rows of each data array: what ``write_unit`` takes and ``read_rows`` returns."""
    t, p, k = meta.seq_len, meta.positions, meta.top_k
    return {spec.ARR_TOKENS: (n_rows, t), spec.ARR_TOPK_IDS: (n_rows, p, k), spec.ARR_TOPK_LOGPROBS: (n_rows, p, k),
            spec.ARR_TARGET_LOGPROBS: (n_rows, p)}


def stored_shapes(meta: StoreMeta, n_rows: int) -> dict[str, tuple[int, ...]]:
    """Shape of ``n_rows`` rows of each stored data array of the store's encoding, in :func:`data_arrays` order."""
    t, p, k = meta.seq_len, meta.positions, meta.top_k
    shapes = {spec.ARR_TOKENS: (n_rows, t), spec.ARR_TARGET_LOGPROBS: (n_rows, p)}
    enc = encoding_for(meta)
    for a in enc.arrays(meta.tokenizer.vocab_size):
        shapes[a.name] = (n_rows, p, enc.slots(k)) if a.kind == PER_ENTRY else (n_rows, p)
    return {name: shapes[name] for name in data_arrays(meta.encoding)}


def group_schema(meta: StoreMeta, layout: GroupLayout) -> dict[str, ArraySchema]:
    """Every array of a <domain>/<split> group with this layout: the data arrays, then ARR_UNITS."""
    v = meta.tokenizer.vocab_size
    ids = id_dtype(v)
    stored = {spec.ARR_TOKENS: (ids, id_fill(v)), spec.ARR_TARGET_LOGPROBS: (TARGET_DTYPE, float("nan"))}
    stored.update({a.name: (a.dtype, a.fill) for a in get_encoding(meta.encoding).arrays(v)})
    out = {name: ArraySchema(shape, (layout.chunk_rows, *shape[1:]), np.dtype(stored[name][0]), stored[name][1],
                             DIMENSIONS[name], (layout.shard_rows, *shape[1:]) if layout.shard_rows else None)
           for name, shape in stored_shapes(meta, layout.n_rows).items()}
    width = marker_width(meta.encoding)
    out[spec.ARR_UNITS] = ArraySchema((layout.num_units, width), (1, width), MARKER_DTYPE, 0,
                                      DIMENSIONS[spec.ARR_UNITS])
    return out


def done_marker(checksums: Mapping[str, int]) -> np.ndarray:
    """The marker row of a written unit: UNIT_DONE, then the crc32 of each data array (``checksums`` holds exactly
    the group's data arrays, in :func:`data_arrays` order)."""
    return np.array([spec.UNIT_DONE, *checksums.values()], dtype=MARKER_DTYPE)


def cleared_marker(encoding: str) -> np.ndarray:
    """The marker row of a unit not written (the array's fill value): a dump writes it again."""
    return np.zeros(marker_width(encoding), dtype=MARKER_DTYPE)


def check_rows(meta: StoreMeta, rows: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """Row counts per domain and split for a new store: every domain of ``meta``, exactly the splits, ints >= 0."""
    names = set(meta.domain_names)
    if set(rows) != names:
        raise ConfigError(f"rows are given for domains {sorted(rows)} but the metadata lists {sorted(names)}")
    out: dict[str, dict[str, int]] = {}
    for dom, splits in rows.items():
        validate_domain_name(dom)
        if set(splits) != set(spec.SPLITS):
            raise ConfigError(f"domain {dom!r}: rows must give exactly the splits {list(spec.SPLITS)}, "
                              f"got {sorted(splits)}")
        out[dom] = {}
        for split, n in splits.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ConfigError(f"domain {dom!r} split {split!r}: row count must be an int >= 0, got {n!r}")
            out[dom][split] = n
    return out


def check_unit_data(meta: StoreMeta, unit: Unit, data: Mapping[str, Any], *, values: bool = True
                    ) -> dict[str, np.ndarray]:
    """The rows of ``unit`` as arrays, after checking their shapes (and, unless ``values`` is False, their values:
    :func:`check_unit_values`) against the schema.

    Raises:
        ValueError: a shape differs from :func:`row_shapes`, or a value check fails.
    """
    arrays = {}
    for name, shape in row_shapes(meta, unit.n_rows).items():
        a = np.asarray(data[name])
        if a.shape != shape:
            raise ValueError(f"{unit}: {name} has shape {a.shape}, expected {shape}")
        arrays[name] = a
    for name in (spec.ARR_TARGET_LOGPROBS, spec.ARR_TOPK_LOGPROBS):
        arrays[name] = np.asarray(arrays[name], dtype=np.float32)
    if values:
        check_unit_values(meta, unit, arrays)
    return arrays


def check_unit_values(meta: StoreMeta, unit: Unit, arrays: Mapping[str, np.ndarray]) -> None:
    """Check rows of ``unit`` (all of them, or any row block: the writer checks its blocks in parallel).

    Raises:
        ValueError: an id lies outside [0, vocab_size), a position's top-k repeats an id, or a log-prob is NaN or
            infinite (a bug of the producer, not of the user).
    """
    v = meta.tokenizer.vocab_size
    for name in (spec.ARR_TOKENS, spec.ARR_TOPK_IDS):
        a = arrays[name]
        if a.dtype.kind == "i":  # one pass: a negative id read as unsigned is above any vocabulary
            a = a.view(np.dtype(f"u{a.dtype.itemsize}").newbyteorder(a.dtype.byteorder))
        if a.size and ((a.dtype.kind not in "ui" and a.min() < 0) or a.max() >= v):
            raise ValueError(f"{unit}: {name} holds ids outside [0, {v})")
    ids = np.sort(arrays[spec.ARR_TOPK_IDS], axis=-1)  # a top-k holds distinct tokens: a repeat would count twice
    if ids.shape[-1] > 1 and (ids[..., 1:] == ids[..., :-1]).any():
        raise ValueError(f"{unit}: {spec.ARR_TOPK_IDS} repeats an id within a position")
    for name in (spec.ARR_TARGET_LOGPROBS, spec.ARR_TOPK_LOGPROBS):
        if not np.isfinite(arrays[name]).all():
            raise ValueError(f"{unit}: {name} holds NaN or inf")
