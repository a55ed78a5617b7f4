"""More of the file-hash contracts (a thirteenth mutation campaign): sizes past one read block, a hash recorded only
for a file read to its end, the stat key of a model's weights (name, size, time) and the cache holding one value per
key, an unwritable cache, the corpus cache's documents (per real directory, their scheme, damaged entries, the newer
entry winning) and seeding from a file gone since it was read. Real files in tmp_path; the hash references are
hashlib's over the files' bytes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time

from stage1_teacher import filehash
from stage1_teacher.filehash import (FILE_KIND, WEIGHTS_KIND, cache_entry_path, cached, cached_file_sha256,
                                     cached_file_sha256s, file_sha256, hashed_lines, seed_file_hashes, stat_key)

HOUR_NS = 3600 * 10**9


def test_a_file_of_several_read_blocks_has_its_whole_size(tmp_path):
    data = os.urandom(1 << 20) * 2 + b"tail of 7"
    (tmp_path / "w.bin").write_bytes(data)
    assert file_sha256(str(tmp_path / "w.bin")) == (hashlib.sha256(data).hexdigest(), len(data))


def test_a_file_is_hashed_as_read_only_when_read_to_its_end(tmp_path):
    """A reader stopped early (a capped domain) records no hash: a partial one would fail the resume's check."""
    data = b"one\ntwo\nthree\n"
    hashes: dict[str, tuple[str, int]] = {}
    lines = hashed_lines(io.BytesIO(data), "p", hashes)
    assert next(lines) == b"one\n"
    lines.close()
    assert hashes == {}
    assert list(hashed_lines(io.BytesIO(data), "p", hashes)) == [b"one\n", b"two\n", b"three\n"]
    assert hashes == {"p": (hashlib.sha256(data).hexdigest(), len(data))}


def test_the_stat_key_of_weights_is_each_files_name_size_and_time(tmp_path):
    """Two shards of one size swapped by name are other weights: the name is part of the key."""
    a, b = tmp_path / "model-1.safetensors", tmp_path / "model-2.safetensors"
    a.write_bytes(b"aaaa")
    b.write_bytes(b"bbbb")
    os.utime(a, ns=(10**18, 10**18))
    os.utime(b, ns=(10**18, 10**18))
    assert stat_key([a, b]) == [["model-1.safetensors", 4, 10**18], ["model-2.safetensors", 4, 10**18]]


def test_the_cache_gives_a_value_only_for_its_key_and_computes_once_per_key(tmp_path, monkeypatch):
    monkeypatch.setenv("DDK_CACHE", str(tmp_path / "cache"))
    calls: list[str] = []

    def compute(value: str):
        return lambda: calls.append(value) or value

    assert cached(WEIGHTS_KIND, tmp_path, [["w", 1, 2]], compute("first")) == "first"
    assert cached(WEIGHTS_KIND, tmp_path, [["w", 1, 2]], compute("again")) == "first"  # from the cache file
    assert cached(WEIGHTS_KIND, tmp_path, [["w", 1, 3]], compute("second")) == "second"  # another key
    assert calls == ["first", "second"]
    doc = json.loads(cache_entry_path(WEIGHTS_KIND, tmp_path).read_text())
    assert doc == {"key": {"scheme": 1, "target": str(tmp_path.resolve()), "key": [["w", 1, 3]]}, "value": "second"}


def test_an_unwritable_cache_still_gives_the_computed_value(tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("a file where the cache directory would be")
    monkeypatch.setenv("DDK_CACHE", str(tmp_path / "cache"))
    assert cached(WEIGHTS_KIND, tmp_path, [], lambda: "value") == "value"


def test_a_directory_reached_through_a_link_has_the_cache_place_of_the_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("DDK_CACHE", str(tmp_path / "cache"))
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    assert cache_entry_path(WEIGHTS_KIND, tmp_path / "link") == cache_entry_path(WEIGHTS_KIND, tmp_path / "real")


def test_a_linked_file_is_cached_under_its_real_directory_and_name(tmp_path, monkeypatch):
    monkeypatch.setenv("DDK_CACHE", str(tmp_path / "cache"))
    (tmp_path / "data").mkdir()
    (tmp_path / "view").mkdir()
    (tmp_path / "data" / "a.txt").write_bytes(b"text\n")
    (tmp_path / "view" / "l.txt").symlink_to(tmp_path / "data" / "a.txt")
    digest = hashlib.sha256(b"text\n").hexdigest()
    assert cached_file_sha256(str(tmp_path / "view" / "l.txt")) == digest
    assert not cache_entry_path(FILE_KIND, tmp_path / "view").exists()
    doc = json.loads(cache_entry_path(FILE_KIND, tmp_path / "data").read_text())
    assert list(doc["files"]) == ["a.txt"]
    monkeypatch.setattr(filehash, "file_sha256", lambda p: (_ for _ in ()).throw(AssertionError(f"{p} hashed")))
    assert cached_file_sha256(str(tmp_path / "data" / "a.txt")) == digest  # one entry for both names


def test_a_cache_document_of_another_scheme_or_with_a_damaged_digest_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv("DDK_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "a.txt"
    f.write_bytes(b"x")
    st = f.stat()
    place = cache_entry_path(FILE_KIND, tmp_path)
    place.parent.mkdir(parents=True)
    for scheme, digest in ((2, "0" * 64), (1, 12345)):
        place.write_text(json.dumps({"scheme": scheme, "directory": str(tmp_path.resolve()),
                                     "files": {"a.txt": [st.st_size, st.st_mtime_ns, digest]}}))
        assert cached_file_sha256(str(f)) == hashlib.sha256(b"x").hexdigest(), (scheme, digest)


def test_a_files_new_entry_replaces_its_old_one_in_the_document(tmp_path, monkeypatch):
    monkeypatch.setenv("DDK_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "a.txt"
    f.write_bytes(b"old")
    cached_file_sha256s([str(f)])
    f.write_bytes(b"newer")
    t = time.time_ns() + 10**9
    os.utime(f, ns=(t, t))
    assert cached_file_sha256(str(f)) == hashlib.sha256(b"newer").hexdigest()
    files = json.loads(cache_entry_path(FILE_KIND, tmp_path).read_text())["files"]
    assert files == {"a.txt": [5, t, hashlib.sha256(b"newer").hexdigest()]}


def test_seeding_passes_over_a_file_gone_since_it_was_read(tmp_path, monkeypatch):
    """(A corpus file removed while the pack ran: its hash is simply not seeded.)"""
    monkeypatch.setenv("DDK_CACHE", str(tmp_path / "cache"))
    kept = tmp_path / "kept.txt"
    kept.write_bytes(b"kept\n")
    os.utime(kept, ns=(time.time_ns() - HOUR_NS, time.time_ns() - HOUR_NS))
    digest = hashlib.sha256(b"kept\n").hexdigest()
    seed_file_hashes({str(tmp_path / "gone.txt"): ("0" * 64, 5), str(kept): (digest, 5)}, read_since_ns=time.time_ns())
    files = json.loads(cache_entry_path(FILE_KIND, tmp_path).read_text())["files"]
    assert files == {"kept.txt": [5, kept.stat().st_mtime_ns, digest]}
