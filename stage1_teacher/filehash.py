"""Content hashes of local files (corpus files, teacher weights), and a cache of them keyed by the files' stat.

Hashing a 140 GB teacher or a terabyte of corpus at every start, resume and shard would cost minutes to hours, so a
hash is kept in ``$DDK_CACHE/<kind>/`` and reused while the files keep their resolved path, size and modification
time (ddk never writes into a user's model or corpus directory, which may be shared or read-only). Trade-off: a file
rewritten in place with the same size *and* the same modification time is not noticed (editors, `cp` and tools
that write files change the time).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from ddk_store.paths import cache_dir

T = TypeVar("T")

#: The version of the cache entries' key: bump it when what a key holds changes.
HASH_CACHE_SCHEME = 1
#: The cache folders, one per kind of hash: a model directory's weights (one document per model), and corpus files
#: (one document per directory of files: a corpus of a million small files must not leave a million cache files).
WEIGHTS_KIND = "weights-hash"
FILE_KIND = "dir-file-hash"


def file_sha256(path: str) -> tuple[str, int]:
    """(hex sha256, size in bytes) of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            n += len(block)
    return h.hexdigest(), n


def hashed_lines(f: Any, path: str, hashes: dict[str, tuple[str, int]] | None) -> Iterator[bytes]:
    """The lines of binary file ``f``; with ``hashes``, its sha256 and size are recorded there once the last line is
    read (the hash is computed from the very bytes the reader parses: no second pass over the file)."""
    if hashes is None:
        yield from f
        return
    h = hashlib.sha256()
    n = 0
    for raw in f:
        h.update(raw)
        n += len(raw)
        yield raw
    hashes[path] = (h.hexdigest(), n)


def cache_entry_path(kind: str, target: Path) -> Path:
    """Where the cached hash of ``target`` (a file or a directory) lives: ``$DDK_CACHE/<kind>/<sha256 of its
    resolved path>.json``."""
    return cache_dir(kind) / (hashlib.sha256(str(target.resolve()).encode()).hexdigest()[:32] + ".json")


def stat_key(files: list[Path]) -> list[list[Any]]:
    """What identifies the unchanged state of ``files``: (name, size, mtime_ns) of each."""
    return [[p.name, st.st_size, st.st_mtime_ns] for p in files for st in [p.stat()]]


def cached(kind: str, target: Path, key: Any, compute: Callable[[], T]) -> T:
    """``compute()``, or the value it gave last time for ``target`` while ``key`` (JSON: the files' :func:`stat_key`)
    is unchanged. The value must be JSON (lists come back as lists). An unwritable cache only costs a recompute."""
    resolved = target.resolve()
    key = {"scheme": HASH_CACHE_SCHEME, "target": str(resolved), "key": key}
    place = cache_entry_path(kind, resolved)
    try:
        entry = json.loads(place.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        entry = None
    if isinstance(entry, dict) and entry.get("key") == key and "value" in entry:
        return entry["value"]
    value = compute()
    tmp = place.with_name(f"{place.name}.{os.getpid()}.tmp")
    try:
        place.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"key": key, "value": value}, indent=1), encoding="utf-8")
        os.replace(tmp, place)  # atomic: shards starting together never read half a file
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return value


def cached_file_sha256s(paths: Iterable[str]) -> dict[str, str]:
    """path -> hex sha256 of each local file, hashed again only when its size or modification time changed since it
    was last hashed. The hashes of a directory's files are one cache document, read and written once per call."""
    out: dict[str, str] = {}
    for directory, files in _by_directory(paths).items():
        place = cache_entry_path(FILE_KIND, Path(directory))
        entries, new = _read_entries(place, directory), {}
        for path, name in files:
            st = os.stat(path)  # (before the hash: a file changed while it is read is not cached under its new time)
            entry = entries.get(name)
            if _is_entry(entry) and entry[:2] == [st.st_size, st.st_mtime_ns]:
                out[path] = entry[2]
            else:
                out[path] = digest = file_sha256(path)[0]
                new[name] = [st.st_size, st.st_mtime_ns, digest]
        if new:
            _write_entries(place, directory, new)
    return out


def cached_file_sha256(path: str) -> str:
    """The hex sha256 of a local file, hashed again only when its size or modification time changed."""
    return cached_file_sha256s([path])[path]


#: How much older than the reading a file's modification time must be for its hash to be cached (filesystems keep
#: modification times as coarsely as 1-2 s).
SEED_SLACK_NS = 2_000_000_000


def seed_file_hashes(hashes: Mapping[str, tuple[str, int]], *, read_since_ns: int) -> None:
    """Put into the file-hash cache the (sha256, size) of files hashed as they were read, the reading having started
    at ``read_since_ns`` (``time.time_ns()``), so that a resume's check of the corpus does not read every file again.
    Only a file last modified before the reading (by :data:`SEED_SLACK_NS`) and still of the size hashed: one
    written while it was read is hashed again when asked."""
    for directory, files in _by_directory(hashes).items():
        new = {}
        for path, name in files:
            try:
                st = os.stat(path)
            except OSError:
                continue
            digest, size = hashes[path]
            if st.st_size == size and st.st_mtime_ns < read_since_ns - SEED_SLACK_NS:
                new[name] = [st.st_size, st.st_mtime_ns, digest]
        if new:
            _write_entries(cache_entry_path(FILE_KIND, Path(directory)), directory, new)


def _by_directory(paths: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
    """The paths grouped by the real directory of their file: {directory: [(path, file name)]}."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for path in paths:
        real = os.path.realpath(path)
        groups.setdefault(os.path.dirname(real), []).append((path, os.path.basename(real)))
    return groups


def _is_entry(entry: Any) -> bool:
    return (isinstance(entry, list) and len(entry) == 3 and all(isinstance(x, int) for x in entry[:2])
            and isinstance(entry[2], str))


def _read_entries(place: Path, directory: str) -> dict[str, Any]:
    """The cached {file name: [size, mtime_ns, sha256]} of ``directory``; empty when there is none (or a damaged
    one, or one of another directory or scheme)."""
    try:
        doc = json.loads(place.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    ok = isinstance(doc, dict) and doc.get("scheme") == HASH_CACHE_SCHEME and doc.get("directory") == directory
    return doc["files"] if ok and isinstance(doc.get("files"), dict) else {}


def _write_entries(place: Path, directory: str, new: Mapping[str, list[Any]]) -> None:
    """Add ``new`` entries to ``directory``'s cache document (read again just before: another process may have
    added its own; a write lost to a race costs a rehash). An unwritable cache only costs a rehash."""
    entries = {**_read_entries(place, directory), **new}
    tmp = place.with_name(f"{place.name}.{os.getpid()}.tmp")
    try:
        place.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"scheme": HASH_CACHE_SCHEME, "directory": directory, "files": entries}),
                       encoding="utf-8")
        os.replace(tmp, place)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
