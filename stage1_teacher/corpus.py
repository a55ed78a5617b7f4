"""CORPORA.yaml parsing and the per-format document readers, in a deterministic order."""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddk_store.errors import ConfigError, DdkError, describe
from ddk_store.meta import validate_domain_name
from ddk_store.settings import unknown_key_hints
from ddk_store.yamlio import read_yaml

from .dataset_source import LOCAL_BUILDERS, REFUSED_BUILDERS, dataset_dir, dataset_label, read_dataset, unpinned_note
from .filehash import hashed_lines
from .parquet_source import read_parquet
from .text_decode import ReadStats, decode_text, unicode_ok, without_bom

FORMATS = ("lines", "files", "jsonl", "parquet")
_FILE_KEYS = {"paths", "format", "text_field", "max_rows", "heldout_seed"}
_DATASET_KEYS = {"dataset", "config", "split", "text_field", "max_rows", "heldout_seed", "data_files", "revision"}


@dataclass(frozen=True)
class DomainSource:
    """One domain of CORPORA.yaml: either local files (paths + format) or a `datasets` dataset."""

    name: str
    format: str  # one of FORMATS, or "dataset"
    files: tuple[str, ...] = ()  # resolved, sorted, de-duplicated local files (file formats; local data_files)
    patterns: tuple[str, ...] = ()  # 'paths' (or 'data_files') as written, for messages and provenance
    text_field: str | None = None
    dataset: str | None = None  # as written
    dataset_dir: str | None = None  # the local directory 'dataset' names, resolved; None for a builder or hub id
    data_files: tuple[str, ...] = ()  # what `datasets` gets as data_files: local files resolved, hub paths as written
    dataset_config: str | None = None
    split: str = "train"
    revision: str | None = None  # a hub dataset's commit, tag or branch ('revision'); None: its main branch, unpinned
    max_rows: int | None = None  # this domain's cap on training rows; None = the command's --max-rows-per-domain
    heldout_seed: int = 0  # which pseudo-random draw of documents is held out (0: the one of stores before the key)

    def spec_dict(self) -> dict[str, Any]:
        """The definition as written (no file contents): part of the store's resume-identity settings."""
        d = {"format": self.format, "patterns": list(self.patterns), "text_field": self.text_field,
             "dataset": self.dataset, "config": self.dataset_config, "split": self.split}
        if self.max_rows is not None:  # only when set, so stores dumped before the key existed still resume
            d["max_rows"] = self.max_rows
        if self.heldout_seed:  # likewise: seed 0 is the split every store had before the key existed
            d["heldout_seed"] = self.heldout_seed
        if self.revision is not None:  # likewise
            d["revision"] = self.revision
        return d

    def row_cap(self, default: int) -> int:
        """Training-row cap for this domain: its own ``max_rows``, else the command's default (0 = no cap)."""
        return default if self.max_rows is None else self.max_rows


def load_corpora(path: str | Path, *, missing_ok: bool = False) -> list[DomainSource]:
    """Parse CORPORA.yaml; every problem (bad name, unknown key, no matching file) is collected into one ConfigError.

    ``missing_ok``: a path or glob that matches no file is no problem (its domain just lists fewer files): for a
    store whose rows are packed already, which needs no corpus file.

    Relative paths and globs are resolved against the YAML file's directory, so a corpora file works from any cwd.
    """
    path = Path(path)
    doc = read_yaml(path, "--corpora")  # safe: python/* tags refused; a domain written twice is an error
    if not isinstance(doc, dict) or set(doc) != {"domains"} or not isinstance(doc["domains"], dict):
        raise ConfigError(f"--corpora {path}: expected exactly one top-level key 'domains' mapping names to sources")
    if not doc["domains"]:
        raise ConfigError(f"--corpora {path}: 'domains' is empty; define at least one domain")
    base = path.parent
    out: list[DomainSource] = []
    problems: list[str] = []
    written: dict[str, object] = {}  # domain name -> its key as YAML read it
    for name, spec in doc["domains"].items():
        where = f"{path}: domain {name!r}"
        try:
            validate_domain_name(str(name))
        except DdkError as e:
            problems.append(f"{where}: {e}")
            continue
        if str(name) in written:  # YAML reads 1 and '1' as two keys; both name domain '1'
            problems.append(f"{path}: domain {str(name)!r} is defined twice (as {written[str(name)]!r} and "
                            f"{name!r}); keep one of them")
            continue
        written[str(name)] = name
        if not isinstance(spec, dict):
            problems.append(f"{where}: expected a mapping like {{paths: [...], format: lines}}, got {spec!r}")
            continue
        try:
            out.append(_parse_domain(str(name), spec, base, where, missing_ok))
        except ConfigError as e:
            problems.append(str(e))
    problems += _shared_files(path, out)
    if problems:
        raise ConfigError("; ".join(problems))
    return out


def _shared_files(path: Path, sources: list[DomainSource]) -> list[str]:
    """A file whose text two domains read gives both the same text, so one domain's held-out documents would be
    another's training rows: one problem per pair of domains, naming the first such file (and how many more). A
    text file's text is the same whether it is read as ``lines`` or as ``files`` (one document per line, or one
    for the file), and holds every field of a file of records read so; a file of records (JSONL, Parquet, a
    dataset's data files) read through two text fields gives two sets of documents and is fine."""
    readers: dict[object, dict[str | None, str]] = {}  # a file -> how it is read (None: its whole text) -> domain
    shared: dict[tuple[str, str], list[str]] = {}
    for src in sources:
        for f in src.files:
            text = None if src.format in ("lines", "files") else src.text_field  # lines and files: the whole text
            by = readers.setdefault(same_file_key(f), {})
            other = next((d for t, d in by.items() if d != src.name and (t == text or None in (t, text))), src.name)
            by.setdefault(text, src.name)
            if other != src.name:
                shared.setdefault((other, src.name), []).append(f)
    return [f"{path}: file {files[0]}{f' and {len(files) - 1:,} more' if len(files) > 1 else ''} "
            f"{'is' if len(files) == 1 else 'are'} read by domains {a!r} and {b!r}, whose documents would then share "
            f"{'its' if len(files) == 1 else 'their'} text (one could train on the other's held-out documents): list "
            f"{'the file' if len(files) == 1 else 'each file'} under one of them"
            for (a, b), files in shared.items()]


def _int_field(spec: dict, key: str, where: str, *, least: int, meaning: str, default: str) -> int | None:
    """The optional integer field ``key`` of a domain (None when absent), at least ``least``."""
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        kind = "a positive integer" if least == 1 else f"an integer >= {least}"
        raise ConfigError(f"{where}: field {key!r} must be {kind} ({meaning}), got {value!r}; remove it {default}")
    return value


def _any_source_fields(spec: dict, where: str) -> dict[str, Any]:
    """The DomainSource fields every kind of source may set: ``max_rows`` and ``heldout_seed``."""
    return {"max_rows": _int_field(spec, "max_rows", where, least=1, meaning="training rows kept for this domain",
                                   default="to use --max-rows-per-domain"),
            "heldout_seed": _int_field(spec, "heldout_seed", where, least=0,
                                       meaning="which pseudo-random draw of documents is held out",
                                       default="for draw 0") or 0}


def _parse_domain(name: str, spec: dict, base: Path, where: str, missing_ok: bool = False) -> DomainSource:
    shared = _any_source_fields(spec, where)
    if "dataset" in spec:
        return _parse_dataset(name, spec, base, where, shared, missing_ok)
    unknown = set(spec) - _FILE_KEYS
    if unknown:
        raise ConfigError(f"{where}: " + "; ".join(unknown_key_hints(
            sorted(unknown, key=str), sorted(_FILE_KEYS),
            f"{', '.join(sorted(_FILE_KEYS))}; or {', '.join(sorted(_DATASET_KEYS))} for a datasets source")))
    fmt = spec.get("format")
    if fmt is None:
        raise ConfigError(f"{where}: field 'format' is missing; give one of {', '.join(FORMATS)} (lines: a document "
                          f"per line; files: a document per file)")
    if fmt not in FORMATS:
        raise ConfigError(f"{where}: field 'format' must be one of {', '.join(FORMATS)}, got {fmt!r}")
    patterns = _patterns(spec.get("paths"), "paths", where)
    text_field = spec.get("text_field")
    if fmt in ("jsonl", "parquet") and not (isinstance(text_field, str) and text_field):
        raise ConfigError(f"{where}: format {fmt} needs field 'text_field' (the column holding the text)")
    if fmt in ("lines", "files") and text_field is not None:
        raise ConfigError(f"{where}: 'text_field' only applies to jsonl/parquet, not format {fmt}")
    return DomainSource(name=name, format=fmt, files=match_files(patterns, base, where, "paths", missing_ok), patterns=patterns,
                        text_field=text_field, **shared)


def _parse_dataset(name: str, spec: dict, base: Path, where: str, shared: dict[str, Any],
                   missing_ok: bool = False) -> DomainSource:
    unknown = set(spec) - _DATASET_KEYS
    if unknown:
        raise ConfigError(f"{where}: " + "; ".join(unknown_key_hints(
            sorted(unknown, key=str), sorted(_DATASET_KEYS),
            f"{', '.join(sorted(_DATASET_KEYS))} for a datasets source")))
    for key, optional in (("dataset", False), ("config", True), ("split", True), ("text_field", True),
                          ("revision", True)):
        value = spec.get(key)
        if not (isinstance(value, str) and value.strip() and "\0" not in value) and not (optional and value is None):
            raise ConfigError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
    dataset = spec["dataset"]
    if dataset in REFUSED_BUILDERS:
        raise ConfigError(f"{where}: dataset {dataset!r} is not read: {REFUSED_BUILDERS[dataset]}")
    local_dir = dataset_dir(dataset, base, where, missing_ok)
    patterns = () if spec.get("data_files") is None else _patterns(spec["data_files"], "data_files", where)
    if dataset in LOCAL_BUILDERS and not patterns:
        raise ConfigError(f"{where}: dataset {dataset!r} reads local files: name them with 'data_files' (paths or "
                          f"globs relative to the corpora file)")
    local = local_dir is not None or dataset in LOCAL_BUILDERS  # else a hub id: data_files are paths in its repo
    if local and spec.get("revision") is not None:
        raise ConfigError(f"{where}: 'revision' pins a hub dataset; {dataset!r} is read from local files")
    files = match_files(patterns, base, where, "data_files", missing_ok) if local else ()
    return DomainSource(name=name, format="dataset", dataset=dataset, dataset_dir=local_dir, files=files,
                        patterns=patterns, data_files=files if local else patterns, dataset_config=spec.get("config"),
                        split=spec.get("split") or "train", text_field=spec.get("text_field") or "text",
                        revision=spec.get("revision"), **shared)


def _patterns(value: Any, key: str, where: str) -> tuple[str, ...]:
    """A 'paths' or 'data_files' field: one path or glob, or a non-empty list of them."""
    if isinstance(value, str):
        value = [value]
    if not value or not isinstance(value, list) or not all(isinstance(p, str) and p and "\0" not in p for p in value):
        raise ConfigError(f"{where}: field {key!r} must be a non-empty list of paths or globs, got {value!r}")
    return tuple(value)


def match_files(patterns: tuple[str, ...], base: Path, where: str, key: str,
                missing_ok: bool = False) -> tuple[str, ...]:
    """The readable files ``patterns`` (field ``key``, relative to ``base``) match: sorted per pattern, each real file
    once, under its first path (one read twice, via overlapping globs or a link, would train on its held-out text).

    Raises:
        ConfigError: a pattern matches no file, or a match is not readable.
    """
    files: list[str] = []
    for pat in patterns:
        absolute = os.path.isabs(os.path.expanduser(pat))
        full = os.path.expanduser(pat if absolute else str(base / pat))
        # The YAML's folder is a place, not a pattern: a cache or checkout path with [ ] in it must still match.
        pattern = os.path.expanduser(pat) if absolute else os.path.join(glob.escape(str(base)), pat)
        # sorted(): glob order depends on the filesystem; the document order must not.
        matches = sorted(m for m in glob.glob(pattern, recursive=True) if os.path.isfile(m))
        if not matches and os.path.isfile(full):
            matches = [full]  # a file named with [ ] or ? written as it is (glob reads them as a pattern)
        if not matches and not missing_ok:
            kind = "matches no file" if glob.has_magic(full) else "does not exist or is not a file"
            noun = "path" if key == "paths" else key
            raise ConfigError(f"{where}: {noun} {pat!r} ({full}) {kind}; fix {key!r} in the corpora file")
        for m in matches:
            if not os.access(m, os.R_OK):
                raise ConfigError(f"{where}: file {m} is not readable (check its permissions)")
        files.extend(matches)
    first: dict[object, str] = {}  # the file -> the path that matched it first (as _shared_files compares files)
    for f in files:
        first.setdefault(same_file_key(f), f)
    return tuple(first.values())


def same_file_key(path: str) -> object:
    """Equal for two paths to the same file: through a symbolic link, or a hard link (another name for the same
    data). The real path where the filesystem numbers no inodes."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino) if st.st_ino else os.path.realpath(path)


def read_documents(src: DomainSource, *, on_bad_utf8: str = "skip",
                   stats: ReadStats | None = None) -> Iterator[str]:
    """Yield the documents of one domain in a deterministic order (files sorted; rows in file order).

    Empty documents (blank lines, empty files) are not documents and are silently dropped.
    """
    yield from (text for _, text in read_sourced_documents(src, on_bad_utf8=on_bad_utf8, stats=stats))


def source_labels(src: DomainSource) -> dict[str, str]:
    """Each local file of ``src`` -> its path relative to the directory all of the domain's files share (``/``
    separated): the part of a document's identity that does not change when the corpus moves."""
    if not src.files:
        return {}
    absolute = {p: os.path.abspath(p) for p in src.files}  # (a domain may list relative and absolute paths)
    root = os.path.commonpath([os.path.dirname(a) for a in absolute.values()])
    return {p: Path(os.path.relpath(a, root)).as_posix() for p, a in absolute.items()}


def read_sourced_documents(src: DomainSource, *, on_bad_utf8: str = "skip", stats: ReadStats | None = None,
                           hashes: dict[str, tuple[str, int]] | None = None) -> Iterator[tuple[str, str]]:
    """:func:`read_documents` with each document's source: its file's :func:`source_labels` entry, or for a
    datasets source ``dataset:NAME/CONFIG/SPLIT``.

    With ``hashes``, every local file read to its end gets its (sha256, size) recorded there as its bytes are read
    (parquet files, read by pyarrow, are not: hash them with :func:`.filehash.file_sha256`).
    """
    stats = stats if stats is not None else ReadStats()
    if src.format == "dataset":
        label = dataset_label(src)
        for text in read_dataset(src, stats):
            yield label, text
        return
    labels = source_labels(src)
    for path in src.files:
        label = labels[path]
        if src.format == "lines":
            with open(path, "rb") as f:
                for lineno, raw in enumerate(hashed_lines(f, path, hashes), 1):
                    raw = without_bom(raw) if lineno == 1 else raw
                    text = decode_text(raw, f"{path}:{lineno}", on_bad_utf8, stats)
                    text = text.rstrip("\r\n") if text is not None else None
                    if text and text.strip():
                        stats.n_documents += 1
                        yield label, text
        elif src.format == "files":
            with open(path, "rb") as f:
                data = f.read()
            if hashes is not None:
                hashes[path] = (hashlib.sha256(data).hexdigest(), len(data))
            text = decode_text(without_bom(data), path, on_bad_utf8, stats)
            if text and text.strip():
                stats.n_documents += 1
                yield label, text
        elif src.format == "jsonl":
            with open(path, "rb") as f:
                for lineno, raw in enumerate(hashed_lines(f, path, hashes), 1):
                    where = f"{path}:{lineno}"
                    line = decode_text(without_bom(raw) if lineno == 1 else raw, where, on_bad_utf8, stats)
                    if line is None or not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ConfigError(f"domain {src.name!r}: {where}: not valid JSON ({e.msg})") from None
                    text = unicode_ok(_field(rec, src, where), where, on_bad_utf8, stats)
                    if text is not None and text.strip():
                        stats.n_documents += 1
                        yield label, text
        elif src.format == "parquet":
            for text in read_parquet(path, src, stats, on_bad_utf8):
                yield label, text
        else:  # pragma: no cover - _parse_domain admits only FORMATS
            raise AssertionError(src.format)


def _field(rec: Any, src: DomainSource, where: str) -> str:
    if not isinstance(rec, dict) or src.text_field not in rec:
        keys = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
        raise ConfigError(f"domain {src.name!r}: {where}: no text field {src.text_field!r} (found: {keys}); "
                          f"fix 'text_field' in the corpora file")
    text = rec[src.text_field]
    if not isinstance(text, str):
        raise ConfigError(f"domain {src.name!r}: {where}: field {src.text_field!r} is "
                          f"{type(text).__name__}, expected a string")
    return text


def check_dataset_source(src: DomainSource) -> str | None:
    """Fail fast (before any model load) when a datasets source cannot be opened or lacks its text field; returns
    a note to print when it is a hub dataset without a pinned 'revision' (:func:`.dataset_source.unpinned_note`)."""
    for _ in read_dataset(src, ReadStats()):
        break
    return unpinned_note(src)
