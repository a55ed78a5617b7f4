"""Shared node-level helpers: zarr arguments of the schema's arrays, reading the root and group documents, and
reading a group's array so that a damaged chunk is named by its unit."""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Sequence

import zarr
from zarr.abc.store import Store
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from . import spec
from .encodings import get_encoding
from .errors import DdkError, StoreCorruptError, StoreFormatError, StoreNotFoundError, describe
from .layout import Unit
from .meta import StoreMeta
from .retry import retry_call
from .schema import (DOC_ATTRIBUTES, GroupLayout, chunk_key, chunk_prefix, group_path, group_schema, node_doc_key,
                     object_indices)
from .storage import options_without_s3

__all__ = ["GroupLayout", "group_path", "array_specs", "read_root_doc", "root_meta_from_doc", "root_claim",
           "list_chunk_keys", "open_group", "read_group_layout"]


def array_specs(meta: StoreMeta, layout: GroupLayout) -> dict[str, dict[str, Any]]:
    """Arguments of zarr.create_array for each array of a group: :func:`schema.group_schema` plus its codecs."""
    # Levels chosen by bench/store_codec.py: zstd-1 on tokens (within 0.04 B/token of zstd-3, at the write speed
    # target); the top-k arrays as their encoding declares; level 1 on the float32 targets, where higher levels gain
    # nothing. crc32c last: every chunk carries a checksum that zarr
    # verifies on every read.
    compressors = {spec.ARR_TOKENS: ("shuffle", 1, 0), spec.ARR_TARGET_LOGPROBS: ("bitshuffle", 1, 0)}
    compressors.update({a.name: (a.shuffle, a.clevel, a.blocksize)
                        for a in get_encoding(meta.encoding).arrays(meta.tokenizer.vocab_size)})
    out = {}
    for name, a in group_schema(meta, layout).items():
        if name in compressors:
            shuffle, clevel, blocksize = compressors[name]
            codecs = [BloscCodec(cname="zstd", clevel=clevel, shuffle=shuffle, typesize=a.dtype.itemsize,
                                 blocksize=blocksize), Crc32cCodec()]
        else:
            codecs = [Crc32cCodec()]
        out[name] = dict(shape=a.shape, chunks=a.chunks, dtype=a.dtype, fill_value=a.fill_value, compressors=codecs,
                         dimension_names=a.dims, **({"shards": a.shards} if a.shards else {}))
    return out


def no_store(store: Store, url: str, storage_options: Mapping[str, Any] | None = None) -> StoreNotFoundError:
    """The error for a location without a root document: one that holds only stage 1's packed rows (`ddk-teacher
    pack`, or a dump stopped before scoring) is said to be one, with what finishes it; storage options given for a
    local location are named (a location written without s3://)."""
    try:
        packed = sync(store.exists(f"{spec.PACK_PREFIX}/zarr.json"))
    except (FileNotFoundError, OSError):
        packed = False
    if packed:
        return StoreNotFoundError(f"{url} holds only packed rows (`ddk-teacher pack`), not a scored store yet: run "
                                  f"`ddk-teacher dump` with the same settings and --store {url} to score them")
    hint = options_without_s3(url, storage_options)
    return StoreNotFoundError(f"no ddk store at {url} (no root zarr.json); check the URL"
                              + (f" ({hint})" if hint else "") + ", or create one with `ddk-teacher dump`")


def read_root_doc(store: Store, where: str | None = None) -> Mapping[str, Any] | None:
    """The root group's zarr.json as a dict, or None when there is none (``where`` names the store in errors)."""
    try:
        buf = sync(store.get(node_doc_key(), prototype=default_buffer_prototype()))
    except FileNotFoundError:  # a read-only LocalStore whose directory does not exist
        return None
    if buf is None:
        return None
    name = where or "the store"
    try:
        doc = json.loads(buf.to_bytes())
    except ValueError as e:
        raise StoreFormatError(f"{name}: root zarr.json is not valid JSON: {describe(e, with_type=False)}") from None
    except RecursionError:
        raise StoreFormatError(f"{name}: root zarr.json is nested too deeply to be a store's metadata") from None
    if not isinstance(doc, Mapping):
        raise StoreFormatError(f"{name}: root zarr.json is a JSON {type(doc).__name__}, not an object")
    return doc


def root_meta_from_doc(doc: Mapping[str, Any], where: str) -> StoreMeta:
    attrs = doc.get(DOC_ATTRIBUTES) if isinstance(doc, Mapping) else None
    if not isinstance(attrs, Mapping) or spec.ROOT_ATTR not in attrs:
        raise StoreFormatError(f"{where} is a zarr group but not a ddk store (no '{spec.ROOT_ATTR}' attribute)")
    try:
        return StoreMeta.from_dict(attrs[spec.ROOT_ATTR])
    except StoreFormatError as e:
        raise type(e)(f"{where}: {e}") from None


def root_claim(doc: Mapping[str, Any] | None) -> Any:
    """The creation claim recorded in a root document (see spec.CLAIM_ATTR), or None."""
    return ((doc or {}).get(DOC_ATTRIBUTES) or {}).get(spec.CLAIM_ATTR)


#: How a store whose group is missing or damaged is mended, unless a caller knows better.
GROUP_FIX = ("a dump stopped while creating the store leaves it so: rerun the same `ddk-teacher dump`; in a finished "
             "store it was damaged or edited: restore it from a copy of the store, or dump the store again")


def open_group(root: zarr.Group, path: str, hint: str = GROUP_FIX) -> zarr.Group:
    """Group ``path`` of ``root``. StoreFormatError ending with ``hint`` when it is missing, or its zarr.json is not
    a group's (damaged bytes, not JSON, another node type): one line, not zarr's traceback."""
    try:
        node = root[path]
    except KeyError:
        raise StoreFormatError(f"group '{path}' is missing; {hint}") from None
    except DdkError:
        raise
    except ZARR_METADATA_ERRORS as e:
        raise StoreFormatError(f"group '{path}': its zarr.json is not a zarr group's ({describe(e, 160)}); "
                               f"{hint}") from None
    if not isinstance(node, zarr.Group):
        raise StoreFormatError(f"'{path}' is an array, not a group; {hint}")
    return node


def list_chunk_keys(store: Store, url: str, domain: str, split: str, name: str) -> set[str]:
    """Keys of the stored objects of one array (see :func:`schema.chunk_key`); a listing only."""
    prefix = chunk_prefix(domain, split, name) + "/"

    async def collect() -> set[str]:
        return {k async for k in store.list_prefix(prefix)}

    return retry_call(lambda: sync(collect()), what=f"listing the chunks of {group_path(domain, split)}/{name}",
                      url=url)


def read_group_layout(root: zarr.Group, domain: str, split: str) -> GroupLayout:
    path = group_path(domain, split)
    grp = open_group(root, path)
    doc = grp.attrs.get(spec.GROUP_ATTR)
    if not isinstance(doc, Mapping):
        raise StoreFormatError(f"group '{path}' has no '{spec.GROUP_ATTR}' attribute")
    return GroupLayout.from_dict(doc, f"{path}.{spec.GROUP_ATTR}")


#: What zarr raises for metadata it cannot turn into a node (wrong node type, unknown codec, bad field).
ZARR_METADATA_ERRORS = (zarr.errors.BaseZarrError, zarr.errors.UnknownCodecError, TypeError, ValueError,
                        AttributeError)


def refuse_foreign_codecs(array: Any, where: str, hint: str) -> None:
    """Refuse (StoreFormatError) to decode ``array`` when it declares a codec outside the store format's
    allowlist: only the spec's codecs are ever run on stored bytes (no pickle or third-party codec). Every opener of
    stored arrays calls this before reading a chunk."""
    bad = [n for n in codec_names(array.metadata.codecs) if n not in spec.ALLOWED_CODECS]
    if bad:
        raise StoreFormatError(f"{where} declares codec(s) {bad}, outside the store format's "
                               f"{sorted(spec.ALLOWED_CODECS)}; refusing to decode it; {hint}")


def units_without_data(store: Store, url: str, names: Sequence[str],
                       groups: Sequence[tuple[str, str, GroupLayout, Sequence[Unit], Any]]) -> list[Unit]:
    """Of ``groups`` ((domain, split, layout, units, done flags) each), the units marked done that lack an object of
    an array of ``names`` (a file lost after its marker: a power loss before it reached the disk, a deleted
    object). A listing of each array; no data is read."""
    lost: list[Unit] = []
    for dom, split, lay, units, done in groups:
        if not done.any():
            continue
        present = {n: list_chunk_keys(store, url, dom, split, n) for n in names}
        lost += [u for u in units if done[u.index] and any(
            chunk_key(dom, split, n, c) not in present[n] for n in names for c in object_indices(lay, u.start, u.stop))]
    return lost


def open_group_arrays(root: Any, url: str, domain: str, split: str, names: Sequence[str],
                      hint: str) -> dict[str, Any]:
    """The arrays ``names`` of group ``domain/split`` under ``root``, each refused (StoreFormatError, ending with
    ``hint``: how to recover) when it is missing, when zarr cannot read its metadata, or when it declares a codec
    outside the allowlist (:func:`refuse_foreign_codecs`)."""
    path = group_path(domain, split)
    try:
        grp, arrs = open_group(root, path), {}  # (a missing group: GROUP_FIX, which knows unfinished dumps)
    except StoreFormatError as e:
        raise StoreFormatError(f"store {url}: {e}") from None
    for name in names:
        where = f"store {url}: array '{path}/{name}'"
        try:
            arrs[name] = grp[name]
        except KeyError:
            raise StoreFormatError(f"{where} is missing; {hint}") from None
        except ZARR_METADATA_ERRORS as e:
            raise StoreFormatError(f"{where} has metadata ddk refuses ({describe(e)}); {hint}") from None
        refuse_foreign_codecs(arrs[name], where, hint)
    return arrs


#: What zarr raises for a chunk that fails its crc32c checksum or cannot be decoded (damage, never retried).
DECODE_ERRORS = (ValueError, RuntimeError)


def read_unit_array(url: str, units: Sequence[Unit], name: str, array: Any, read: Callable[[], Any]) -> Any:
    """``read()`` of ``array`` (array ``name`` of the group of ``units``) through transient faults. A
    chunk that fails its checksum or cannot be decoded (DECODE_ERRORS) is a StoreCorruptError naming the first of
    ``units`` whose part fails alone (a marker's row, or its rows of data) and how to have the damaged units
    rewritten; when none fails alone, the error is not damage and is raised as it is."""
    if not units:  # an empty split (no rows): nothing to read or name
        return read()
    try:
        return retry_call(read, what=f"reading {group_path(units[0].domain, units[0].split)}/{name}", url=url)
    except DdkError:  # (an outage past the retry budget is not damage)
        raise
    except DECODE_ERRORS as e:
        for u in units:
            try:
                retry_call(lambda: array[u.index] if name == spec.ARR_UNITS else array[u.start:u.stop],
                           what=f"reading {u} {name}", url=url)
            except DECODE_ERRORS as bad:
                if isinstance(bad, DdkError):
                    raise
                where = str(u)
                break
        else:  # every unit reads alone: not damage of the stored bytes (a closed session, say)
            raise
        what = "completion marker" if name == spec.ARR_UNITS else name
        raise StoreCorruptError(f"{url}: {where}: {what} fails its crc32c checksum or cannot be decoded "
                                f"({describe(e, 60)}); {rewrite_hint(url)}") from None


def rewrite_hint(url: str) -> str:
    """How the damaged units of a store get written again."""
    return (f"`ddk-store verify {url}` lists the damage and `ddk-store repair {url}` marks the damaged units for "
            "rewriting; then rerun the same `ddk-teacher dump` command to rewrite them and finalize the store (after "
            f"sharded dumps: rerun every --shard, then `ddk-store finalize {url}`)")


def codec_names(codecs: Sequence[Any]) -> list[str]:
    """Names of every codec an array declares, those inside a shard (its chunk and index codecs) included."""
    out = []
    for c in codecs:
        out.append(c.to_dict()["name"])
        out += codec_names([*getattr(c, "codecs", ()), *getattr(c, "index_codecs", ())])
    return out
