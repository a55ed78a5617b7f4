"""Contracts of the store's I/O layer, on real stores and a real disk (no server needed): store URLs and their checks
(storage.py), S3 client options, the delete guards and the temporary names a killed write leaves; local object
writes and reads (objectio.py); the chunk cache (localcache.py, a LocalStore standing in for the remote store);
what --overwrite may delete and in what order (location.py); and the atomic files and directories of paths.py.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import re
import time
from pathlib import Path

import pytest
from zarr.abc.store import SuffixByteRequest
from zarr.storage import LocalStore, MemoryStore

from ddk_store import StoreWriter, objectio, open_store
from ddk_store.errors import ConfigError, StoreExistsError, StoreFormatError
from ddk_store.localcache import (BYPASS_SECONDS, CachedStore, byte_span, cached_store, evict, store_cache_dir,
                                  write_atomic)
from ddk_store.location import check_pack_location, refuse_foreign_entries
from ddk_store.paths import (STALE_AFTER_S, atomic_dir, flush_fd, looks_like_path, replace_file, resolve_against,
                             sync_entry)
from ddk_store.storage import (check_s3_option_names, check_store_url, is_lost_partial, local_path,
                               open_zarr_store, options_without_s3, remove_stale_partials, s3_storage_options,
                               url_scheme)
from ddk_store.testing import make_tiny_store, tiny_meta

HEX = "0123456789abcdef" * 2  # 32 hex digits: the random part of a temporary name


# ====================================================================================== store URLs (storage.py)
@pytest.mark.parametrize("url, says", [
    ("   ", "store URL is empty"),
    ("s3:/bucket/store", "looks like a s3:// URL missing a '/'; write s3://bucket/store"),
    ("file://host/data/store", "a file:// URL needs an absolute path"),
    ("memory:///", "memory:// needs a name"),
    ("s3://bucket", "give a bucket and a prefix"),
    ("s3://bucket/", "give a bucket and a prefix"),
    ("s3://bucket//", "give a bucket and a prefix"),
])
def test_malformed_store_urls_are_refused_before_anything_opens(url, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        check_store_url(url)


def test_a_store_url_naming_a_file_is_refused_and_schemes_compare_in_any_case(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        check_store_url(str(f))
    assert url_scheme("S3://bucket/p") == "s3" and url_scheme("MEMORY://x") == "memory"
    assert local_path("file://localhost/data/store") == Path("/data/store")


def test_s3_client_options_keep_listings_fresh_and_take_the_endpoint_from_the_environment(monkeypatch):
    """s3fs's listing cache is off unless asked for (other processes write the same store); AWS_ENDPOINT_URL_S3 wins
    over AWS_ENDPOINT_URL, and neither overrides an endpoint the caller gave, in endpoint_url or client_kwargs."""
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert s3_storage_options(None) == {"use_listings_cache": False}
    assert s3_storage_options({"use_listings_cache": True})["use_listings_cache"] is True
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://general:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-only:2")
    assert s3_storage_options({})["endpoint_url"] == "http://s3-only:2"
    given = {"client_kwargs": {"endpoint_url": "http://mine:3"}}
    assert "endpoint_url" not in s3_storage_options(given)
    assert s3_storage_options({"endpoint_url": "http://mine:3"})["endpoint_url"] == "http://mine:3"
    for bad in ("http://", "127.0.0.1:8333"):
        with pytest.raises(ConfigError, match="is not an http:// or https:// URL"):
            s3_storage_options({"endpoint_url": bad})


def test_unknown_or_malformed_s3_options_are_named():
    with pytest.raises(ConfigError, match="--storage-option regoin: not an option of the S3 client"):
        check_s3_option_names({"regoin": "eu-west-1"})
    with pytest.raises(ConfigError, match="--storage-option client_kwargs: must be a JSON object"):
        check_s3_option_names({"client_kwargs": "eu-west-1"})
    check_s3_option_names({"key": "k", "client_kwargs": {"region_name": "eu-west-1"}})


def test_options_given_to_an_s3_url_in_capitals_are_not_flagged():
    assert options_without_s3("S3://bucket/prefix", {"key": "k"}) is None
    assert options_without_s3("bucket/prefix", {"key": "k"}) is not None


def test_opening_an_object_store_quiets_orphaned_connection_tracebacks():
    from ddk_store.retry import _ORPHAN_FILTER

    logger = logging.getLogger("asyncio")
    logger.removeFilter(_ORPHAN_FILTER)
    open_zarr_store("s3://bucket/prefix", read_only=True, storage_options={"anon": True})  # (no request is sent)
    assert _ORPHAN_FILTER in logger.filters


def test_every_s3_wildcard_makes_a_store_undeletable():
    from ddk_store.storage import undeletable_reason

    for url in ("s3://b/runs/exp[1]", "s3://b/runs/exp]1", "s3://b/runs/exp*", "s3://b/runs/exp?"):
        assert "wildcards" in (undeletable_reason(url) or ""), url


def test_only_a_killed_writers_temporary_names_count_as_the_stores_own(tmp_path):
    """``<name>.<32 hex>.partial`` is zarr's temporary name; a user's ``results.partial`` is theirs and kept."""
    store = tmp_path / "store"
    (store / "alpha").mkdir(parents=True)
    leftover = store / "alpha" / f"0.{HEX}.partial"
    mine = store / "alpha" / "results.partial"
    leftover.write_bytes(b"x")
    mine.write_bytes(b"y")
    assert remove_stale_partials(str(store)) == 1
    assert not leftover.exists() and mine.read_bytes() == b"y"
    lost = FileNotFoundError(2, "No such file", str(leftover))
    assert is_lost_partial(lost)
    assert not is_lost_partial(PermissionError(13, "Permission denied", str(leftover)))
    assert not is_lost_partial(FileNotFoundError(2, "No such file", str(mine)))


# ============================================================================ local object I/O (objectio.py)
def test_a_local_write_never_escapes_into_a_sibling_folder_whose_name_extends_the_stores(tmp_path):
    """``/x/store-evil`` starts with ``/x/store``: a link to it still leads out of the store."""
    root, sibling = tmp_path / "store", tmp_path / "store-evil"
    root.mkdir()
    sibling.mkdir()
    (root / "legal").symlink_to(sibling)
    with pytest.raises(StoreFormatError, match="leads outside the store"):
        objectio.write_local(root, {"legal/train/tokens/c/0/0": b"rows"})
    assert list(sibling.iterdir()) == []


def test_a_local_write_replaces_a_planted_link_or_a_hard_link_instead_of_writing_through_it(tmp_path):
    """Each object is written under a temporary name and renamed over the old entry: a link planted at a chunk's
    name, or a chunk hard-linked into a snapshot copy, is replaced; the file it pointed to is never changed."""
    root = tmp_path / "store"
    (root / "a" / "c").mkdir(parents=True)
    victim, snapshot = tmp_path / "victim", tmp_path / "snapshot-chunk"
    victim.write_bytes(b"user data")
    (root / "a" / "c" / "0").symlink_to(victim)
    (root / "a" / "c" / "1").write_bytes(b"old rows")
    os.link(root / "a" / "c" / "1", snapshot)
    objectio.write_local(root, {"a/c/0": b"new rows 0", "a/c/1": b"new rows 1"})
    assert victim.read_bytes() == b"user data" and snapshot.read_bytes() == b"old rows"
    assert not (root / "a" / "c" / "0").is_symlink() and (root / "a" / "c" / "0").read_bytes() == b"new rows 0"
    assert (root / "a" / "c" / "1").read_bytes() == b"new rows 1"


def test_a_failed_local_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    root = tmp_path / "store"

    def failing_flush(fd):
        raise OSError(errno.EIO, "Input/output error")  # the disk failing as the data is flushed

    monkeypatch.setattr(objectio, "flush_fd", failing_flush)
    with pytest.raises(OSError, match="Input/output error"):
        objectio.write_local(root, {"a/c/0": b"rows"})
    assert sorted(p.name for p in (root / "a" / "c").iterdir()) == []


def test_a_local_store_deleted_and_created_again_in_one_process_is_written_again(tmp_path):
    import shutil

    root = tmp_path / "store"
    objectio.write_local(root, {"a/c/0": b"first"})
    shutil.rmtree(root)  # (another process, or --overwrite, deleted it)
    objectio.write_local(root, {"a/c/0": b"second"})
    assert (root / "a" / "c" / "0").read_bytes() == b"second"


def test_a_shard_truncated_below_its_index_reads_as_damage_not_an_io_error(tmp_path):
    """A shard cut to a few bytes (a disk that lost its tail) is damage of that unit, reported as such with what
    repairs it, not an OSError from reading before the file's start."""
    from ddk_store.errors import StoreCorruptError

    store = tmp_path / "store"
    make_tiny_store(str(store), domains=("alpha",), train_rows=4, heldout_rows=2, unit_rows=4, seq_len=16, top_k=8,
                    vocab_size=300)
    [shard] = [p for p in (store / "alpha" / "train" / "topk_ids").rglob("*") if p.is_file() and p.name != "zarr.json"]
    shard.write_bytes(shard.read_bytes()[:3])
    with pytest.raises(StoreCorruptError, match=r"alpha/train/topk_ids rows 0-0 \(unit 0\).*ddk-store repair"):
        open_store(str(store)).read_rows("alpha", "train", [0])


# ====================================================================================== chunk cache (localcache.py)
def tiny_remote(tmp_path: Path) -> tuple[LocalStore, Path]:
    """A small real store behind a LocalStore (standing in for the remote store), and its folder."""
    path = tmp_path / "remote"
    make_tiny_store(str(path), domains=("alpha",), train_rows=8, heldout_rows=4, seq_len=16, top_k=8, vocab_size=300,
                    unit_rows=4)
    return LocalStore(str(path), read_only=True), path


def chunk_keys(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")
                  if p.is_file() and "/c/" in str(p.relative_to(path)))


def get(cache: CachedStore, key: str, byte_range=None) -> bytes | None:
    buf = asyncio.run(cache.get(key, byte_range=byte_range))
    return None if buf is None else buf.to_bytes()


def test_metadata_documents_of_every_node_are_never_cached(tmp_path):
    remote, path = tiny_remote(tmp_path)
    cache = CachedStore(remote, tmp_path / "cache" / "v1")
    for key in ("zarr.json", "alpha/zarr.json", "alpha/train/tokens/zarr.json"):
        assert get(cache, key) == (path / key).read_bytes()
    assert not (tmp_path / "cache").exists() or not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


def test_memory_and_local_stores_get_no_cache(tmp_path):
    store = MemoryStore()
    assert cached_store(store, "memory://x", {}, tmp_path / "cache") is store
    assert cached_store(store, str(tmp_path / "s"), {}, tmp_path / "cache") is store
    assert isinstance(cached_store(store, "s3://b/p", {}, tmp_path / "cache"), CachedStore)


def test_a_damaged_remote_chunk_is_served_but_never_cached(tmp_path):
    remote, path = tiny_remote(tmp_path)
    key = chunk_keys(path)[0]
    data = bytearray((path / key).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / key).write_bytes(bytes(data))
    cache = CachedStore(remote, tmp_path / "cache" / "v1")
    assert get(cache, key) == bytes(data)
    assert cache.unverified == 1 and cache.fills == 0 and not (tmp_path / "cache" / "v1" / key).exists()


def test_a_failed_cache_write_bypasses_the_cache_for_a_minute(tmp_path):
    """A cache that cannot be written (here its directory is a file) costs only the cache: the read succeeds, and
    for BYPASS_SECONDS misses fetch just the bytes asked for instead of whole objects to cache."""
    remote, path = tiny_remote(tmp_path)
    key = chunk_keys(path)[0]
    (tmp_path / "cache").write_text("not a directory")
    cache = CachedStore(remote, tmp_path / "cache" / "v1")
    cache._root.bypass_until = 0.0
    assert get(cache, key) == (path / key).read_bytes() and cache.fills == 0
    assert BYPASS_SECONDS == 60.0
    assert cache._root.bypass_until > time.monotonic() + BYPASS_SECONDS - 5


def test_a_hit_refreshes_a_chunks_age_so_eviction_keeps_what_is_read(tmp_path):
    remote, path = tiny_remote(tmp_path)
    keys = chunk_keys(path)[:3]
    directory = store_cache_dir(tmp_path / "cache", "s3://b/p", {"attributes": {}})
    cache = CachedStore(remote, directory)
    for key in keys:
        get(cache, key)
        os.utime(directory / key, (1000, 1000))  # cached long ago
    assert get(cache, keys[0]) is not None and cache.hits == 1  # read again now
    sizes = {k: (directory / k).stat().st_size for k in keys}
    cap = sum(sizes.values()) - 1  # over it: evicted down to the size of one chunk
    evict(tmp_path / "cache", max_bytes=cap, keep_fraction=sizes[keys[0]] / cap)
    assert [k for k in keys if (directory / k).exists()] == [keys[0]]


def test_eviction_never_follows_a_link_to_a_folder_outside_the_cache(tmp_path):
    root, mine = tmp_path / "cache", tmp_path / "mine"
    mine.mkdir()
    (mine / "model.safetensors").write_bytes(b"m" * 1000)
    os.utime(mine / "model.safetensors", (1, 1))
    write_atomic(store_cache_dir(root, "s3://b/p", {"attributes": {}}) / "a" / "c0", b"x" * 100)
    (root / f"linked-{'0' * 24}").symlink_to(mine, target_is_directory=True)  # named like a store's directory
    evict(root, max_bytes=50)
    assert (mine / "model.safetensors").read_bytes() == b"m" * 1000


def cached_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def other_process_fill(root: Path, n: int, size: int) -> None:
    """Chunks another process on the host cached under the same root (long ago: the first to be evicted)."""
    other = store_cache_dir(root, "s3://b/other", {"attributes": {}})
    for i in range(n):
        write_atomic(other / "a" / f"c{i}", b"o" * size)
        os.utime(other / "a" / f"c{i}", (1, 1))


def test_the_first_fill_of_a_process_brings_an_over_full_cache_under_its_cap(tmp_path):
    remote, path = tiny_remote(tmp_path)
    root = tmp_path / "cache"
    other_process_fill(root, 40, 1000)  # left by earlier runs: 40 kB under a 32 kB cap
    key = next(k for k in chunk_keys(path) if "/topk_ids/" in k)  # well under 1/32 of the cap
    cache = CachedStore(remote, store_cache_dir(root, "s3://b/p", {"attributes": {}}), max_bytes=32_000, root=root)
    get(cache, key)
    assert cache.fills == 1 and cached_bytes(root) <= 32_000 * 0.8


def test_a_process_rescans_after_adding_a_32nd_of_the_cap_and_sees_what_others_filled(tmp_path):
    """N processes fill one cache; each sees the others' chunks only by a scan, made after it adds 1/32 of the cap,
    so together they overshoot the cap by a little, never by the others' whole fill."""
    remote, path = tiny_remote(tmp_path)
    root = tmp_path / "cache"
    keys = [k for k in chunk_keys(path) if "/topk_ids/" in k][:2]
    cap = 32 * 200  # each of these chunks is more than 1/32 of it
    cache = CachedStore(remote, store_cache_dir(root, "s3://b/p", {"attributes": {}}), max_bytes=cap, root=root)
    get(cache, keys[0])  # the first fill scans the root
    other_process_fill(root, 8, 1000)  # meanwhile another process fills 8 kB
    get(cache, keys[1])
    assert cache.fills == 2 and cached_bytes(root) <= cap


def test_a_suffix_longer_than_the_object_is_the_whole_object():
    assert byte_span(SuffixByteRequest(100), 10) == (0, 10)


# ==================================================================== what --overwrite may delete (location.py)
def test_a_users_empty_folder_or_zarr_group_beside_a_store_is_never_deleted(tmp_path):
    """An empty folder a user made, or a Zarr group of theirs that the store's metadata does not list, is not the
    store's: --overwrite refuses rather than delete it."""
    import zarr

    url = str(tmp_path / "store")
    make_tiny_store(url, domains=("alpha",), train_rows=2, heldout_rows=1)
    (tmp_path / "store" / "scratch").mkdir()
    store = LocalStore(url)
    with pytest.raises(StoreExistsError, match="also holds scratch, which is not part of the ddk store"):
        refuse_foreign_entries(store, url)
    (tmp_path / "store" / "scratch").rmdir()
    zarr.open_group(store=LocalStore(url), path="results", mode="w")  # a user's own Zarr group
    with pytest.raises(StoreExistsError, match="also holds results"):
        StoreWriter.open_or_create(url, tiny_meta(domains=("alpha",), seq_len=8),
                                   {"alpha": {"train": 2, "heldout": 1}}, overwrite=True)
    assert (tmp_path / "store" / "results" / "zarr.json").is_file()


def test_an_overwrite_removes_a_linked_group_folder_without_touching_what_it_points_to(tmp_path):
    url = tmp_path / "store"
    make_tiny_store(str(url), domains=("alpha",), train_rows=2, heldout_rows=1)
    elsewhere = tmp_path / "elsewhere"
    (url / "alpha").rename(elsewhere)
    (url / "alpha").symlink_to(elsewhere, target_is_directory=True)  # a domain group moved to another disk
    before = sorted(str(p.relative_to(elsewhere)) for p in elsewhere.rglob("*"))
    w = StoreWriter.open_or_create(str(url), tiny_meta(domains=("alpha",), seq_len=8),
                                   {"alpha": {"train": 2, "heldout": 1}}, overwrite=True)
    assert w.meta.seq_len == 8 and not (url / "alpha").is_symlink()
    assert sorted(str(p.relative_to(elsewhere)) for p in elsewhere.rglob("*")) == before


def test_packing_refuses_a_location_holding_something_else(tmp_path):
    url = str(tmp_path / "loc")
    (tmp_path / "loc").mkdir()
    check_pack_location(LocalStore(url), url)  # empty: fine
    (tmp_path / "loc" / "notes.txt").write_text("mine")
    with pytest.raises(StoreExistsError, match="is not empty and holds no ddk store"):
        check_pack_location(LocalStore(url), url)
    (tmp_path / "loc" / "notes.txt").unlink()
    (tmp_path / "loc" / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                            "attributes": {}}))
    with pytest.raises(StoreExistsError, match="holds something that is not a readable ddk store"):
        check_pack_location(LocalStore(url), url)


def unlinked(monkeypatch) -> list[str]:
    """From now on, every path os.unlink removes, in order (each is still removed)."""
    removed, real_unlink = [], os.unlink

    def unlink(path, *args, **kwargs):
        removed.append(os.fspath(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    return removed


def test_deleting_packed_rows_removes_their_document_before_any_chunk(tmp_path, monkeypatch):
    """A kill part-way through deleting packed rows must never leave their document naming chunks that are gone."""
    import numpy as np

    from ddk_store import spec
    from ddk_store.location import delete_pack
    from ddk_store.packed import PACKED, PackedRows

    url = str(tmp_path / "s")
    pack = PackedRows(url)
    rows = np.arange(12, dtype=np.int64).reshape(4, 3)
    for i in range(2):
        pack.write_chunk("d", "train", i, rows[2 * i:2 * i + 2], chunk_rows=2, dtype=np.uint16)
    pack.write_state({"seq_len": 3}, {"d": {"state": PACKED, "chunk_rows": 2, "train_rows": 4, "heldout_rows": 0}})
    removed = unlinked(monkeypatch)
    delete_pack(LocalStore(url), url)
    assert len(removed) > 2 and removed[0] == str(tmp_path / "s" / spec.PACK_PREFIX / "zarr.json"), removed
    assert not (tmp_path / "s" / spec.PACK_PREFIX).exists()


def test_deleting_all_but_the_packed_rows_removes_the_root_document_last(tmp_path, monkeypatch):
    """Until the last deletion the location still reads as a ddk store (a kill part-way leaves one that the next
    --overwrite takes, never "holds no ddk store"); the packed rows are kept."""
    import numpy as np

    from ddk_store import spec
    from ddk_store.location import delete_all_but_pack
    from ddk_store.packed import PackedRows

    url = str(tmp_path / "s")
    make_tiny_store(url, domains=("alpha", "beta"), train_rows=2, heldout_rows=1)
    PackedRows(url).write_chunk("alpha", "train", 0, np.arange(6).reshape(2, 3), chunk_rows=2, dtype=np.uint16)
    removed = unlinked(monkeypatch)
    delete_all_but_pack(LocalStore(url), url)
    assert len(removed) > 2 and removed[-1] == str(tmp_path / "s" / "zarr.json"), removed[-3:]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [spec.PACK_PREFIX]


# ============================================================================ atomic files and folders (paths.py)
def test_a_failed_replace_leaves_no_temporary_file_and_names_the_target(tmp_path):
    target = tmp_path / "dir-in-the-way"
    (target / "child").mkdir(parents=True)  # os.replace cannot put a file over a non-empty directory
    with pytest.raises(OSError):
        replace_file(target, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir-in-the-way"]
    missing = tmp_path / "no" / "such" / "file.json"
    with pytest.raises(FileNotFoundError) as info:
        replace_file(missing, "{}")
    assert info.value.filename == str(missing)


def test_flushing_skips_filesystems_that_cannot_sync_and_raises_io_errors(tmp_path, monkeypatch):
    """fsync failing with EINVAL (a mount that cannot sync) is skipped; EIO (data lost) is raised."""
    f = tmp_path / "f"
    f.write_bytes(b"x")
    fails = []

    def fsync(fd):
        raise OSError(fails[0], os.strerror(fails[0]))

    monkeypatch.setattr(os, "fsync", fsync)
    fd = os.open(f, os.O_RDONLY)
    try:
        for code in (errno.EINVAL, errno.ENOTSUP, errno.EACCES):
            fails[:] = [code]
            flush_fd(fd)
            sync_entry(f)
        fails[:] = [errno.EIO]
        with pytest.raises(OSError) as info:
            flush_fd(fd)
        assert info.value.errno == errno.EIO
        with pytest.raises(OSError):
            sync_entry(f)
    finally:
        os.close(fd)


def test_a_build_leaves_a_temporary_sibling_younger_than_a_day(tmp_path):
    out = tmp_path / "thing"
    hours_ago = time.time() - 2 * 3600
    for name in (".thing.tmp-a1", ".thing.old-b2"):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (hours_ago, hours_ago))
    assert STALE_AFTER_S == 24 * 3600
    with atomic_dir(out, owner_file="a") as tmp:
        (tmp / "a").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".thing.old-b2", ".thing.tmp-a1", "thing"]


def test_a_stale_looking_link_beside_a_build_is_never_removed(tmp_path):
    out, target = tmp_path / "thing", tmp_path / "mine.txt"
    target.write_text("mine")
    link = tmp_path / ".thing.old-zz"
    link.symlink_to(target)
    os.utime(link, (1, 1), follow_symlinks=False)
    os.utime(target, (1, 1))
    with atomic_dir(out, owner_file="a") as tmp:
        (tmp / "a").write_text("1")
    assert link.is_symlink() and target.read_text() == "mine"


def test_a_build_is_readable_by_others_and_replaces_its_old_copy_without_leftovers(tmp_path):
    out = tmp_path / "thing"
    old = os.umask(0o022)
    try:
        for text in ("1", "2"):
            with atomic_dir(out, owner_file="a") as tmp:
                (tmp / "sub").mkdir()
                (tmp / "a").write_text(text)
    finally:
        os.umask(old)
    assert (out / "a").read_text() == "2"
    assert oct(out.stat().st_mode & 0o777) == oct(0o755) and oct((out / "sub").stat().st_mode & 0o777) == oct(0o755)
    assert oct((out / "a").stat().st_mode & 0o777) == oct(0o644)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]


def test_a_folder_named_like_the_owner_file_is_no_earlier_build(tmp_path):
    out = tmp_path / "thing"
    (out / "a").mkdir(parents=True)  # "a" is the owner file's name, but a folder
    (out / "a" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not a directory this command built"):
        with atomic_dir(out, owner_file="a") as tmp:
            (tmp / "a").write_text("1")
    assert (out / "a" / "notes.txt").read_text() == "mine"


def test_names_written_as_paths_and_urls_inside_files(tmp_path):
    assert looks_like_path("models/team/student") and not looks_like_path("org/name")
    assert resolve_against("s3://bucket/store", tmp_path) == "s3://bucket/store"
    assert resolve_against("memory://x", tmp_path) == "memory://x"
    assert resolve_against("store", tmp_path) == str(tmp_path / "store")


# ============================================================================ an object store (SeaweedFS on loopback)
@pytest.mark.s3
def test_a_console_folder_inside_an_s3_location_holds_no_data(s3_server):
    """A console's "create folder" inside the location leaves a zero-byte ``sub/`` object: no data, so packing there
    is not refused; a real object under it still is."""
    import s3fs

    from ddk_store.location import holds_only_pack, top_level_names

    fs = s3fs.S3FileSystem(**s3_server.storage_options, skip_instance_cache=True)
    url = "s3://ddk/io-contracts/folder-loc"
    fs.pipe("ddk/io-contracts/folder-loc/sub/", b"")
    store = open_zarr_store(url, read_only=True, storage_options=s3_server.storage_options)
    assert top_level_names(store) == set() and holds_only_pack(store)
    check_pack_location(store, url)
    fs.pipe("ddk/io-contracts/folder-loc/sub/NOTES.md", b"mine")
    assert top_level_names(store) == {"sub"}
    with pytest.raises(StoreExistsError, match="is not empty and holds no ddk store"):
        check_pack_location(store, url)
