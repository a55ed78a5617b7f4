"""The local chunk cache of remote stores (localcache.py), against a real S3 server (SeaweedFS on loopback): a
second read comes from disk, a store rewritten at the same URL is never served stale, two processes fill one cache
at once correctly, the size cap holds, and damaged cache files are fetched again."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from ddk_store import open_store, spec
from ddk_store.errors import StoreCorruptError
from ddk_store.localcache import CachedStore, checksum_ok, evict, store_cache_dir, write_atomic
from ddk_store.testing import make_tiny_store
from ddk_testkit.processes import REPO

DOMAINS = ("alpha", "beta", "gamma")
FIELDS = ("tokens", "topk_ids", "topk_logprobs", "target_logprobs")


# ------------------------------------------------------------------------------------------ no server needed
def test_checksum_and_identity_rules(tmp_path):
    import google_crc32c

    body = b"chunk bytes"
    good = body + google_crc32c.value(body).to_bytes(4, "little")
    assert checksum_ok(good) and not checksum_ok(good[:-1] + b"\0") and not checksum_ok(b"ab")
    doc = {"attributes": {spec.ROOT_ATTR: {"seq_len": 16}, spec.CLAIM_ATTR: "a" * 32}}
    rewritten = {"attributes": {spec.ROOT_ATTR: {"seq_len": 16}, spec.CLAIM_ATTR: "b" * 32}}
    a = store_cache_dir(tmp_path, "s3://ddk/x", doc)
    assert a == store_cache_dir(tmp_path, "s3://ddk/x", json.loads(json.dumps(doc)))  # stable
    assert a != store_cache_dir(tmp_path, "s3://ddk/x", rewritten)  # a new creation claim: a new directory
    assert a != store_cache_dir(tmp_path, "s3://ddk/y", doc)
    assert a.parent == tmp_path and a.name.startswith("ddk_x-")


def test_local_stores_are_never_cached(tmp_path):
    reader = make_tiny_store(str(tmp_path / "store"))
    cached = open_store(str(tmp_path / "store"), cache_dir=str(tmp_path / "cache"))
    assert not isinstance(cached._zstore, CachedStore)
    np.testing.assert_array_equal(cached.read_rows("alpha", "train", [3, 1]).tokens,
                                  reader.read_rows("alpha", "train", [3, 1]).tokens)
    assert not (tmp_path / "cache").exists()


def test_eviction_deletes_least_recently_used_first_and_only_cached_chunks(tmp_path):
    import os

    cached = store_cache_dir(tmp_path, "s3://bucket/store", {"attributes": {}})
    for i in range(10):
        write_atomic(cached / "a" / f"c{i}", b"x" * 100)
        os.utime(cached / "a" / f"c{i}", (1000 + i, 1000 + i))
    (cached / "a" / "c9.abc.tmp").write_bytes(b"y" * 100)  # another process's file being written: kept
    # a --cache-dir that also holds the user's own files, older than every chunk: never counted, never deleted
    for mine in (tmp_path / "notes.txt", tmp_path / "runs" / "model.safetensors"):
        mine.parent.mkdir(exist_ok=True)
        mine.write_bytes(b"m" * 300)
        os.utime(mine, (1, 1))
    assert evict(tmp_path, max_bytes=2000) == 1000  # under the cap: nothing goes
    left = evict(tmp_path, max_bytes=500)
    assert left <= 400
    assert sorted(p.name for p in (cached / "a").iterdir()) == ["c6", "c7", "c8", "c9", "c9.abc.tmp"]
    assert (tmp_path / "notes.txt").read_bytes() == b"m" * 300
    assert (tmp_path / "runs" / "model.safetensors").read_bytes() == b"m" * 300


def test_a_hit_on_one_chunk_of_a_shard_reads_and_checks_that_chunk_only(tmp_path, monkeypatch):
    """A hit with a byte range (a shard's index, one of its chunks) read and checked the whole shard every time. A
    range that ends with its own crc32c is now read and checked alone; another range, or a chunk whose bytes were
    damaged on disk, has the whole object checked: a damaged one is fetched again and replaced."""
    import asyncio

    from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
    from zarr.storage import LocalStore

    from ddk_store import chunkio, localcache

    make_tiny_store(str(tmp_path / "store"), domains=DOMAINS, train_rows=12, heldout_rows=4, seq_len=16, top_k=8,
                    vocab_size=300, unit_rows=4)
    remote = LocalStore(str(tmp_path / "store"), read_only=True)  # stands for the remote store here
    key = "alpha/train/topk_ids/c/1/0/0"  # a shard of one unit: 4 rows, one chunk per row
    whole = (tmp_path / "store" / key).read_bytes()
    n = 4  # chunks in the shard; its index: n (offset, nbytes) pairs, then its crc32c
    index = np.frombuffer(whole[-(16 * n + 4):-4], dtype="<u8").reshape(n, 2)
    offset, nbytes = (int(v) for v in index[1])
    chunk = RangeByteRequest(offset, offset + nbytes)
    checked = []
    monkeypatch.setattr(localcache, "checksum_ok", lambda data: checked.append(len(data)) or chunkio.object_ok(data))
    cache = CachedStore(remote, tmp_path / "cache" / "v1")

    def get(byte_range=None) -> bytes:
        return asyncio.run(cache.get(key, byte_range=byte_range)).to_bytes()

    assert get() == whole and cache.fills == 1 and checked == [len(whole)]  # the miss: fetched whole, checked
    checked.clear()
    assert get(SuffixByteRequest(16 * n + 4)) == whole[-(16 * n + 4):] and get(chunk) == whole[offset:offset + nbytes]
    assert checked == [] and cache.hits == 2  # the index and one chunk, each checked by its own crc32c
    assert get(OffsetByteRequest(offset)) == whole[offset:] and checked == [len(whole)]  # no crc of its own
    cached = tmp_path / "cache" / "v1" / key
    with open(cached, "r+b") as f:  # one byte of the chunk flipped in place, as a failing disk would leave it
        f.seek(offset + 1)
        f.write(bytes([whole[offset + 1] ^ 0xFF]))
    assert get(chunk) == whole[offset:offset + nbytes] and cache.fills == 2  # fetched again, replaced
    assert cached.read_bytes() == whole
    with open(cached, "r+b") as f:  # damaged again, while a failed cache write keeps the cache from being filled
        f.seek(offset + 1)
        f.write(bytes([whole[offset + 1] ^ 0xFF]))
    cache._root.bypass_until = time.monotonic() + 60
    assert get(chunk) == whole[offset:offset + nbytes] and cache.fills == 2
    assert not cached.exists()  # not kept to be read whole and found damaged at every request


# ------------------------------------------------------------------------------------------ real S3 server
@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The AWS variables of the test server, so that stores are written and read as a user's would be."""
    for k, v in s3_server.client_env().items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    return s3_server


def fs_of(server):
    import s3fs

    return s3fs.S3FileSystem(**server.storage_options, skip_instance_cache=True)


def write_store(url: str, seed: int, overwrite: bool = False):
    return make_tiny_store(url, domains=DOMAINS, train_rows=12, heldout_rows=4, seq_len=16, top_k=8, vocab_size=300,
                           unit_rows=4, seed=seed, overwrite=overwrite)


def read_all(reader) -> dict[str, np.ndarray]:
    """Every row of every group, rows in a shuffled order with repeats."""
    out = {}
    for d in DOMAINS:
        for split in spec.SPLITS:
            n = reader.num_rows(d, split)
            rows = np.concatenate([np.random.default_rng(1).permutation(n), [0, n - 1]])
            b = reader.read_rows(d, split, rows)
            for f in FIELDS:
                out[f"{d}/{split}/{f}"] = getattr(b, f)
    return out


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k


def delete_chunks(server, prefix: str) -> int:
    """Delete every chunk object of the store at s3://ddk/prefix, keeping its metadata documents."""
    fs = fs_of(server)
    keys = [k for k in fs.find(f"{server.BUCKET}/{prefix}") if not k.endswith("zarr.json")]
    fs.rm(keys)
    return len(keys)


@pytest.mark.s3
def test_second_read_is_served_from_the_cache(s3_env, tmp_path):
    url = "s3://ddk/cache/second-read"
    expected = read_all(write_store(url, seed=0))
    cache = tmp_path / "cache"
    first = open_store(url, cache_dir=str(cache))
    assert_same(read_all(first), expected)
    # every object verified and cached (a shard's later byte ranges in the same read are already served from disk)
    assert first._zstore.fills > 0 and first._zstore.unverified == 0
    assert delete_chunks(s3_env, "cache/second-read") > 0
    with pytest.raises(StoreCorruptError, match="chunk missing"):  # the remote store alone cannot serve them now
        read_all(open_store(url))
    second = open_store(url, cache_dir=str(cache))
    assert_same(read_all(second), expected)  # every chunk came from the local disk
    assert second._zstore.fills == 0 and second._zstore.hits > 0
    assert not list(cache.rglob("*.tmp"))


@pytest.mark.s3
def test_a_store_rewritten_at_the_same_url_is_not_served_stale(s3_env, tmp_path):
    url = "s3://ddk/cache/rewritten"
    old = read_all(write_store(url, seed=0))
    cache = tmp_path / "cache"
    assert_same(read_all(open_store(url, cache_dir=str(cache))), old)
    new = read_all(write_store(url, seed=1, overwrite=True))  # same URL, same shapes, other data
    assert any(old[k].tobytes() != new[k].tobytes() for k in old)
    assert_same(read_all(open_store(url, cache_dir=str(cache))), new)
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2  # one directory per store version


@pytest.mark.s3
def test_damaged_cache_files_are_fetched_again_and_replaced(s3_env, tmp_path):
    url = "s3://ddk/cache/damaged"
    expected = read_all(write_store(url, seed=2))
    cache = tmp_path / "cache"
    read_all(open_store(url, cache_dir=str(cache)))
    files = [p for p in cache.rglob("*") if p.is_file()]
    for p in files[::2]:
        data = bytearray(p.read_bytes())
        data[0] ^= 0xFF
        p.write_bytes(bytes(data))
    again = open_store(url, cache_dir=str(cache))
    assert_same(read_all(again), expected)
    assert again._zstore.fills == len(files[::2])


@pytest.mark.s3
def test_the_size_cap_holds(s3_env, tmp_path):
    url = "s3://ddk/cache/capped"
    expected = read_all(write_store(url, seed=3))
    full = tmp_path / "full"
    read_all(open_store(url, cache_dir=str(full)))
    total = sum(p.stat().st_size for p in full.rglob("*") if p.is_file())
    cap = total // 3
    capped = tmp_path / "capped"
    assert_same(read_all(open_store(url, cache_dir=str(capped), cache_max_bytes=cap)), expected)
    assert 0 < sum(p.stat().st_size for p in capped.rglob("*") if p.is_file()) <= cap


CHILD = """
import hashlib, sys
import numpy as np
from ddk_store import open_store, spec
url, cache, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
reader = open_store(url, cache_dir=cache)
rows_seen = {}
for d in ("alpha", "beta", "gamma"):
    for split in spec.SPLITS:
        n = reader.num_rows(d, split)
        for rows in np.array_split(np.random.default_rng(seed).permutation(n), 3):  # each child its own order
            b = reader.read_rows(d, split, rows)
            for r, i in enumerate(rows):
                for f in ("tokens", "topk_ids", "topk_logprobs", "target_logprobs"):
                    rows_seen[f"{d}/{split}/{i}/{f}"] = getattr(b, f)[r].tobytes()
h = hashlib.sha256()
for key in sorted(rows_seen):
    h.update(key.encode() + rows_seen[key])
print(h.hexdigest(), reader._zstore.fills, reader._zstore.hits)
"""


def digest_of(reader) -> str:
    """The CHILD's digest: every row's fields, keyed and hashed in key order."""
    rows_seen = {}
    for d in DOMAINS:
        for split in spec.SPLITS:
            n = reader.num_rows(d, split)
            b = reader.read_rows(d, split, np.arange(n))
            for i in range(n):
                for f in FIELDS:
                    rows_seen[f"{d}/{split}/{i}/{f}"] = getattr(b, f)[i].tobytes()
    h = hashlib.sha256()
    for key in sorted(rows_seen):
        h.update(key.encode() + rows_seen[key])
    return h.hexdigest()


@pytest.mark.s3
def test_two_processes_fill_one_cache_at_once(s3_env, tmp_path):
    url = "s3://ddk/cache/two-ranks"
    expected = digest_of(write_store(url, seed=4))
    cache = tmp_path / "cache"
    env = s3_env.client_env()
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, url, str(cache), str(seed)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (10, 11)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert out.split()[0] == expected
    assert not list(cache.rglob("*.tmp"))
    delete_chunks(s3_env, "cache/two-ranks")
    assert digest_of(open_store(url, cache_dir=str(cache))) == expected  # what they cached is whole and correct


def cache_bytes(root) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_several_readers_filling_one_cache_keep_near_its_cap(s3_env, tmp_path):
    """Four readers (the ranks of a host) fill one capped cache in turn. Each kept its own running total and
    rescanned only when its own fills passed the cap, so the cache grew to 2-3 times the cap; each now rescans
    after adding 1/32 of it."""
    from ddk_store.localcache import RESCAN_FRACTION

    url = "s3://ddk/cache/four-ranks"
    make_tiny_store(url, domains=DOMAINS, train_rows=64, heldout_rows=4, seq_len=16, top_k=8, vocab_size=300,
                    unit_rows=4, seed=5)
    full = tmp_path / "full"
    read_all(open_store(url, cache_dir=str(full)))
    cap = cache_bytes(full) // 3
    capped = tmp_path / "capped"
    readers = [open_store(url, cache_dir=str(capped), cache_max_bytes=cap) for _ in range(4)]
    largest, peak = max(p.stat().st_size for p in full.rglob("*") if p.is_file()), 0
    for step in range(16):
        for i, reader in enumerate(readers):
            reader.read_rows(DOMAINS[(i + step) % 3], spec.SPLIT_TRAIN, np.arange(step * 4, step * 4 + 4))
            peak = max(peak, cache_bytes(capped))
    # each reader may add up to 1/32 of the cap (and its last object) before it sees the others' fills
    assert 0 < peak <= cap * (1 + 4 * RESCAN_FRACTION) + 4 * largest, (peak, cap)


class CountingStore:
    """Counts the bytes a store serves (wrapping the real S3 store; metadata documents not counted)."""

    def __init__(self, store):
        self.store, self.bytes = store, 0

    async def get(self, key, prototype=None, byte_range=None):
        buf = await self.store.get(key, prototype, byte_range)
        if buf is not None and not key.endswith("zarr.json"):
            self.bytes += len(buf)
        return buf


def test_a_cache_that_cannot_be_written_fetches_only_what_is_read(s3_env, tmp_path):
    """A miss fetches a whole shard to cache it; when the cache cannot be written (a full or read-only disk) every
    chunk read fetched the whole shard again (5x the bytes here, ~65x at the default shard size) while `fills`
    counted objects it never cached. After a failed write, misses fetch only the byte ranges asked for."""
    url = "s3://ddk/cache/unwritable"
    make_tiny_store(url, domains=DOMAINS, train_rows=64, heldout_rows=4, seq_len=16, top_k=8, vocab_size=300,
                    unit_rows=16, seed=6)
    (tmp_path / "a-file").write_text("not a directory")
    fetched, rows, fills = {}, {}, {}
    for name, cache in (("working", tmp_path / "cache"), ("unwritable", tmp_path / "a-file" / "cache")):
        reader = open_store(url, cache_dir=str(cache))
        counter = CountingStore(reader._zstore._store)
        reader._zstore._store = counter
        rows[name] = {d: reader.read_rows(d, spec.SPLIT_TRAIN, np.arange(64)) for d in DOMAINS}
        fetched[name], fills[name] = counter.bytes, reader._zstore.fills
    assert fills["working"] > 0 and fills["unwritable"] == 0  # nothing was cached, and the count says so
    for d in DOMAINS:
        for f in FIELDS:
            assert getattr(rows["working"][d], f).tobytes() == getattr(rows["unwritable"][d], f).tobytes()
    # A working cache fetches each object once, whole; the unwritable one fetched one whole shard before its write
    # failed, then only the ranges read (about the same bytes: every row is read once).
    assert fetched["unwritable"] <= 1.5 * fetched["working"], fetched
