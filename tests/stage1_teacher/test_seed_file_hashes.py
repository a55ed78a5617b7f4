"""The pack hashes each corpus file as it reads it; those hashes go into the file-hash cache, so that the check a
rerun or resume makes of the corpus files (same contents as packed?) does not read every file again. A file modified
while or after it was read is not cached from that reading."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

from ddk_testkit.commands import HELDOUT, SEQ_LEN, TOP_K
from ddk_testkit.corpora import write_corpus
from stage1_teacher import filehash
from stage1_teacher.config import Stage1Config
from stage1_teacher.filehash import FILE_KIND, cache_entry_path, cached_file_sha256, seed_file_hashes
from stage1_teacher.pack import run_pack

HOUR_NS = 3600 * 10**9


def age(paths, ns: int) -> None:
    for p in paths:
        os.utime(p, ns=(time.time_ns() - ns, time.time_ns() - ns))


def no_hashing(monkeypatch) -> None:
    def refuse(path):
        raise AssertionError(f"{path} was hashed again")

    monkeypatch.setattr(filehash, "file_sha256", refuse)


def test_only_files_unchanged_since_before_the_reading_are_seeded(tmp_path, monkeypatch):
    monkeypatch.setenv("DDK_CACHE", str(tmp_path / "cache"))
    old, recent, resized = (tmp_path / n for n in ("old.txt", "recent.txt", "resized.txt"))
    for p in (old, recent, resized):
        p.write_bytes(b"some text\n")
    age([old, resized], HOUR_NS)
    digest = hashlib.sha256(b"some text\n").hexdigest()
    seed_file_hashes({str(old): (digest, 10), str(recent): (digest, 10), str(resized): (digest, 9)},
                     read_since_ns=time.time_ns())
    cached = json.loads(cache_entry_path(FILE_KIND, tmp_path).read_text())["files"]
    assert cached == {"old.txt": [10, old.stat().st_mtime_ns, digest]}  # not recent.txt: modified within the slack
    # of the reading; not resized.txt: not the size that was hashed
    no_hashing(monkeypatch)
    assert cached_file_sha256(str(old)) == digest
    with pytest.raises(AssertionError, match="hashed again"):
        cached_file_sha256(str(recent))
    old.write_bytes(b"other text\n")  # a change of size and time: the seeded entry no longer applies
    with pytest.raises(AssertionError, match="hashed again"):
        cached_file_sha256(str(old))


def test_a_rerun_on_a_packed_store_checks_the_files_without_reading_them(tiny_teacher, tmp_path, monkeypatch):
    monkeypatch.setenv("DDK_CACHE", str(tmp_path / "cache"))
    yaml = write_corpus(tmp_path / "corpus", n_docs=40)
    files = [p for p in (tmp_path / "corpus").rglob("*") if p.is_file() and p != yaml]
    age(files, HOUR_NS)
    cfg = Stage1Config(teacher=str(tiny_teacher), corpora=str(yaml), store=str(tmp_path / "s"), seq_len=SEQ_LEN,
                       top_k=TOP_K, heldout_seqs=HELDOUT, workers=1, progress=False)
    run_pack(cfg, echo=lambda _: None)
    for d in {p.parent for p in files}:
        cached = json.loads(cache_entry_path(FILE_KIND, d).read_text())["files"]
        assert sorted(cached) == sorted(p.name for p in files if p.parent == d)
    no_hashing(monkeypatch)
    packed = run_pack(cfg, echo=lambda _: None)  # the packed domains' files are checked against their hashes
    assert packed.domains and all(st["state"] == "packed" for st in packed.domains.values())
    # The check does compare contents: a file rewritten in place (same size, new time) is found.
    first = sorted(p for p in files if p.suffix == ".py")[0]
    first.write_bytes(bytes(reversed(first.read_bytes())))
    with pytest.raises(AssertionError, match="hashed again"):
        run_pack(cfg, echo=lambda _: None)
