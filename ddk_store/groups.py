"""Shared node-level helpers: group paths, the per-group layout document, reading the root metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from . import codec, spec
from .errors import StoreFormatError
from .layout import num_units
from .meta import StoreMeta, parse_int, validate_domain_name


def group_path(domain: str, split: str) -> str:
    validate_domain_name(domain)
    if split not in spec.SPLITS:
        raise StoreFormatError(f"unknown split {split!r}; splits are {list(spec.SPLITS)}")
    return f"{domain}/{split}"


@dataclass(frozen=True)
class GroupLayout:
    """The ``ddk_group`` attribute of a <domain>/<split> group."""

    n_rows: int
    chunk_rows: int
    unit_rows: int

    @property
    def num_units(self) -> int:
        return num_units(self.n_rows, self.unit_rows)

    def to_dict(self) -> dict[str, int]:
        return {"n_rows": self.n_rows, "chunk_rows": self.chunk_rows, "unit_rows": self.unit_rows}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], ctx: str) -> "GroupLayout":
        chunk_rows = parse_int(d, "chunk_rows", ctx, lo=1)
        unit_rows = parse_int(d, "unit_rows", ctx, lo=1)
        if unit_rows % chunk_rows:
            raise StoreFormatError(f"field '{ctx}.unit_rows' ({unit_rows}) must be a multiple of chunk_rows ({chunk_rows})")
        return cls(n_rows=parse_int(d, "n_rows", ctx, lo=0), chunk_rows=chunk_rows, unit_rows=unit_rows)


def array_specs(meta: StoreMeta, layout: GroupLayout) -> dict[str, dict[str, Any]]:
    """Arguments of zarr.create_array for each array of a group (the on-disk schema of docs/store-format.md)."""
    n, r, t, p, k, v = layout.n_rows, layout.chunk_rows, meta.seq_len, meta.positions, meta.top_k, meta.tokenizer.vocab_size
    idt = codec.id_dtype(v)

    # Levels chosen by bench/store_codec.py: zstd-3 on ids (73 B/token at ~1 M tok/s; zstd-5 saves 1 B/token at
    # 0.4 M tok/s); level 1 elsewhere, where higher levels gain nothing.
    def blosc(typesize: int, shuffle: str, clevel: int = 3) -> list:
        # crc32c last: every chunk carries a checksum that zarr verifies on every read.
        return [BloscCodec(cname="zstd", clevel=clevel, shuffle=shuffle, typesize=typesize), Crc32cCodec()]

    return {
        spec.ARR_TOKENS: dict(shape=(n, t), chunks=(r, t), dtype=idt, fill_value=codec.id_fill(v),
                              compressors=blosc(idt.itemsize, "shuffle"), dimension_names=("row", "token")),
        spec.ARR_TOPK_IDS: dict(shape=(n, p, k), chunks=(r, p, k), dtype=idt, fill_value=codec.id_fill(v),
                                compressors=blosc(idt.itemsize, "shuffle", 3),
                                dimension_names=("row", "position", "k")),
        spec.ARR_TOPK_LOGPROBS: dict(shape=(n, p, k), chunks=(r, p, k), dtype=codec.logprob_dtype(meta.encoding),
                                     fill_value=codec.logprob_fill(meta.encoding),
                                     compressors=blosc(codec.logprob_dtype(meta.encoding).itemsize, "bitshuffle", 1),
                                     dimension_names=("row", "position", "k")),
        spec.ARR_TARGET_LOGPROBS: dict(shape=(n, p), chunks=(r, p), dtype="<f4", fill_value=float("nan"),
                                       compressors=blosc(4, "bitshuffle", 1), dimension_names=("row", "position")),
        spec.ARR_UNITS: dict(shape=(layout.num_units, 1 + len(spec.CHECKSUMMED_ARRAYS)),
                             chunks=(1, 1 + len(spec.CHECKSUMMED_ARRAYS)), dtype="<u4", fill_value=0,
                             compressors=[Crc32cCodec()], dimension_names=("unit", "field")),
    }


def read_root_doc(store: Store, where: str | None = None) -> Mapping[str, Any] | None:
    """The root group's zarr.json as a dict, or None when there is none (``where`` names the store in errors)."""
    try:
        buf = sync(store.get("zarr.json", prototype=default_buffer_prototype()))
    except FileNotFoundError:  # a read-only LocalStore whose directory does not exist
        return None
    if buf is None:
        return None
    name = where or "the store"
    try:
        doc = json.loads(buf.to_bytes())
    except ValueError as e:
        raise StoreFormatError(f"{name}: root zarr.json is not valid JSON: {e}") from None
    except RecursionError:
        raise StoreFormatError(f"{name}: root zarr.json is nested too deeply to be a store's metadata") from None
    if not isinstance(doc, Mapping):
        raise StoreFormatError(f"{name}: root zarr.json is a JSON {type(doc).__name__}, not an object")
    return doc


def root_meta_from_doc(doc: Mapping[str, Any], where: str) -> StoreMeta:
    attrs = doc.get("attributes") if isinstance(doc, Mapping) else None
    if not isinstance(attrs, Mapping) or spec.ROOT_ATTR not in attrs:
        raise StoreFormatError(f"{where} is a zarr group but not a ddk store (no '{spec.ROOT_ATTR}' attribute)")
    try:
        return StoreMeta.from_dict(attrs[spec.ROOT_ATTR])
    except StoreFormatError as e:
        raise type(e)(f"{where}: {e}") from None


def read_group_layout(root: zarr.Group, domain: str, split: str) -> GroupLayout:
    path = group_path(domain, split)
    try:
        grp = root[path]
    except KeyError:
        raise StoreFormatError(f"group '{path}' is missing") from None
    doc = grp.attrs.get(spec.GROUP_ATTR)
    if not isinstance(doc, Mapping):
        raise StoreFormatError(f"group '{path}' has no '{spec.GROUP_ATTR}' attribute")
    return GroupLayout.from_dict(doc, f"{path}.{spec.GROUP_ATTR}")


def crc32_of(a: np.ndarray) -> int:
    """crc32 (zlib polynomial) of the little-endian C-order bytes of ``a``."""
    import zlib

    a = np.ascontiguousarray(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return zlib.crc32(memoryview(a).cast("B"))
