"""The stat-keyed cache of local files' sha256 (corpus provenance checks, teacher weights)."""

from __future__ import annotations

import hashlib
import os

from stage1_teacher.filehash import FILE_KIND, cache_entry_path, cached_file_sha256, file_sha256


def test_a_file_is_hashed_once_while_its_size_and_time_hold(tmp_path, monkeypatch):
    monkeypatch.setenv("DDK_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "corpus.txt"
    f.write_bytes(b"alpha beta\n" * 1000)
    want = hashlib.sha256(f.read_bytes()).hexdigest()
    assert file_sha256(str(f)) == (want, 11000)
    assert cached_file_sha256(str(f)) == want
    assert cache_entry_path(FILE_KIND, f).is_file()
    calls = []
    monkeypatch.setattr("stage1_teacher.filehash.file_sha256", lambda p: calls.append(p) or ("x", 0))
    assert cached_file_sha256(str(f)) == want and calls == []  # the cached value: no read
    # The same size, a new modification time: hashed again
    t = f.stat().st_mtime_ns + 10**9
    os.utime(f, ns=(t, t))
    assert cached_file_sha256(str(f)) == "x" and calls == [str(f)]


def test_an_unwritable_cache_only_costs_a_rehash(tmp_path, monkeypatch):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory would be")
    monkeypatch.setenv("DDK_CACHE", str(blocker))
    f = tmp_path / "a.txt"
    f.write_text("x")
    assert cached_file_sha256(str(f)) == hashlib.sha256(b"x").hexdigest()
