"""The stat-keyed cache of local files' sha256 (corpus provenance checks, teacher weights)."""

from __future__ import annotations

import hashlib
import os

import json

from stage1_teacher.filehash import FILE_KIND, cache_entry_path, cached_file_sha256, cached_file_sha256s, file_sha256


def test_a_file_is_hashed_once_while_its_size_and_time_hold(tmp_path, monkeypatch):
    monkeypatch.setenv("DDK_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "corpus.txt"
    f.write_bytes(b"alpha beta\n" * 1000)
    want = hashlib.sha256(f.read_bytes()).hexdigest()
    assert file_sha256(str(f)) == (want, 11000)
    assert cached_file_sha256(str(f)) == want
    doc = json.loads(cache_entry_path(FILE_KIND, tmp_path).read_text())  # one document for the file's directory
    st = f.stat()
    assert doc["directory"] == str(tmp_path.resolve()) and doc["files"] == {"corpus.txt": [11000, st.st_mtime_ns, want]}
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


def test_a_directory_of_files_is_one_cache_document_written_once_per_call(tmp_path, monkeypatch):
    """A corpus of a million small files must not leave a million cache files (4 KB each on most disks)."""
    monkeypatch.setenv("DDK_CACHE", str(tmp_path / "cache"))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    files = [str(d / f"doc{i}.txt") for d in (a, b) for i in range(50)]
    for i, path in enumerate(files):
        with open(path, "w") as f:
            f.write(f"document {i}\n")
    want = {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in files}
    writes = []
    real_replace = os.replace
    monkeypatch.setattr("stage1_teacher.filehash.os.replace", lambda s, d: writes.append(d) or real_replace(s, d))
    assert cached_file_sha256s(files) == want
    assert sorted(map(str, writes)) == sorted(str(cache_entry_path(FILE_KIND, d)) for d in (a, b))
    assert sorted(p.name for p in (tmp_path / "cache" / FILE_KIND).iterdir()) == sorted(
        cache_entry_path(FILE_KIND, d).name for d in (a, b))
    writes.clear()
    assert cached_file_sha256s(reversed(files)) == want and writes == []  # all cached: nothing hashed or written
    # One file of a changes (size and time): only a's document is written again, and it keeps the other entries
    with open(files[0], "a") as f:
        f.write("more\n")
    want[files[0]] = hashlib.sha256(open(files[0], "rb").read()).hexdigest()
    assert cached_file_sha256s(files) == want and writes == [cache_entry_path(FILE_KIND, a)]
    assert len(json.loads(cache_entry_path(FILE_KIND, a).read_text())["files"]) == 50


def test_a_damaged_or_foreign_cache_document_is_hashed_again(tmp_path, monkeypatch):
    monkeypatch.setenv("DDK_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "a.txt"
    f.write_text("x")
    digest = hashlib.sha256(b"x").hexdigest()
    place = cache_entry_path(FILE_KIND, tmp_path)
    place.parent.mkdir(parents=True)
    st = f.stat()
    for doc in ("{not json", json.dumps({"scheme": 1, "directory": "/elsewhere",
                                         "files": {"a.txt": [st.st_size, st.st_mtime_ns, "0" * 64]}}),
                json.dumps({"scheme": 1, "directory": str(tmp_path.resolve()), "files": {"a.txt": ["1", 2, 3]}})):
        place.write_text(doc)
        assert cached_file_sha256(str(f)) == digest
