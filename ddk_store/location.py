"""What is at a store's location, and deleting it: the checks ``--overwrite`` and packing make before they write, and
deletions ordered so that a kill part-way never leaves a location the next run refuses as someone else's.

A location holds a store's own entries only: its root document (``zarr.json``), its domain groups (each a Zarr node
with its own ``zarr.json``), its packed rows (``_pack``, ddk_store.packed) and the temporary names a killed write
or deletion leaves (``*.partial``). Anything else is the user's, never deleted.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from pathlib import Path

from zarr.abc.store import RangeByteRequest, Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore

from . import spec
from .errors import StoreExistsError, StoreFormatError
from .groups import read_root_doc, root_meta_from_doc
from .retry import retry_call
from .schema import NODE_DOC
from .storage import PARTIAL_NAME, delete_store_prefix, local_path, normalize_url, refuse_undeletable

PACK_PREFIX = spec.PACK_PREFIX


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
    not the store's own, i.e. neither the root document, nor the packed rows, nor a domain group (one the root
    metadata lists; any Zarr node when that cannot be read), nor a temporary ``<name>.<32 hex>.partial`` a killed
    write left: a user's notes or results kept beside the store, a Zarr group of theirs included, are never deleted
    with it."""
    async def is_node(name: str) -> bool:
        return await store.exists(f"{name}/zarr.json")

    names = top_level_names(store) - {NODE_DOC, PACK_PREFIX}
    domains = _domain_names(store)
    foreign = sorted(n for n in names if not PARTIAL_NAME.search(n)
                     and not (n in domains if domains is not None else sync(is_node(n))))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise StoreExistsError(f"{url} also holds {shown}, which {'is' if len(foreign) == 1 else 'are'} not part of "
                               "the ddk store, so --overwrite does not delete it; move that out of the store's "
                               "location first")


def _domain_names(store: Store) -> set[str] | None:
    """The domains the root metadata lists, or None when there is no readable root document."""
    try:
        doc = read_root_doc(store)
        domains = (doc or {}).get("attributes", {}).get(spec.ROOT_ATTR, {}).get("domains")
        return {d["name"] for d in domains if isinstance(d.get("name"), str)} if isinstance(domains, list) else None
    except (StoreFormatError, AttributeError, TypeError):
        return None


def delete_whole_store(store: Store, url: str) -> None:
    """``--overwrite`` of a store and its packed rows: everything under its prefix, once
    :func:`refuse_foreign_entries` has found nothing there that is not the store's own. The groups go first, then
    the rest (packed rows and root document, in whatever order the storage deletes a prefix): a kill part-way
    leaves a store's root document or packed rows, which the next ``--overwrite`` deletes, never a location refused
    as holding something else."""
    delete_all_but_pack(store, url, keep_root_doc=True)
    sync(delete_store_prefix(store, url))


def delete_pack(store: Store, url: str) -> None:
    """Delete the packed rows (readers never need them; a dump packs the corpora again), their document first."""
    refuse_undeletable(url)
    with contextlib.suppress(FileNotFoundError, KeyError):
        sync(store.delete(f"{PACK_PREFIX}/zarr.json"))
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


def delete_all_but_pack(store: Store, url: str, *, keep_root_doc: bool = False) -> None:
    """Delete the store's Zarr hierarchy (groups, arrays, then the root document unless ``keep_root_doc``) and keep
    its packed rows: what ``--overwrite`` does once the pack phase has written rows this run is going to score. The
    root document goes last: until then the location still reads as a ddk store (``--overwrite`` may finish)."""
    refuse_undeletable(url)
    refuse_foreign_entries(store, url)
    path = local_path(normalize_url(url))
    names = sorted(top_level_names(store) - {PACK_PREFIX} - ({NODE_DOC} if keep_root_doc else set()),
                   key=lambda name: (name == NODE_DOC, name))
    for name in names:  # a prefix (a group) or one object (the root document)
        _delete_entry(store, path, name)


def _delete_entry(store: Store, path: Path | None, name: str) -> None:
    """Delete top-level entry ``name`` (one object or a group) so that a kill part-way leaves only what
    :func:`refuse_foreign_entries` knows as the store's own: a local group is renamed to ``<name>.<hex>.partial``
    first (atomic), an object store's group loses its zarr.json after everything else in it."""
    async def children() -> list[str]:
        return [c async for c in store.list_dir(name)]

    if path is not None:
        p = path / name
        if p.is_dir() and not p.is_symlink():
            doomed = p.rename(p.with_name(f"{name}.{uuid.uuid4().hex}.partial"))
            shutil.rmtree(doomed)
        else:
            p.unlink()
        return
    for key in [f"{name}/{c}" for c in sorted(sync(children()), key=lambda c: (c == NODE_DOC, c))] + [name]:
        sync(store.delete_dir(key))
        with contextlib.suppress(FileNotFoundError, KeyError):
            sync(store.delete(key))
