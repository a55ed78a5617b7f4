"""The built-in six-domain corpus: real text that installs offline, copied into a directory with its CORPORA.yaml.

Command line: ``ddk-teacher builtin-corpus [--out DIR] [--max-mb 2] [--domains scripture,python,...]
[--relative-paths] [--no-install] [--force]``, which prints the path of the CORPORA.yaml that
``ddk-teacher dump --corpora`` reads. The domains and where their text comes from are in
:mod:`stage1_teacher.assets.corpus_sources`; examples/corpus/README.md has the table.

The text is copied into the output directory (default ``$DDK_CACHE/corpus``, see :func:`ddk_store.paths.cache_dir`),
so later changes to the system do not change the corpus, and ``CORPORA.yaml`` is written beside it:

    domains:
      scripture: {paths: ["<out>/scripture/kjv.txt"], format: lines}
      python:    {paths: ["<out>/python/**/*.py"], format: files}
      ...

Each domain is capped at ``--max-mb`` megabytes (default 2, which keeps ``make demo`` fast; 0 = no cap). What is
kept under the cap is a deterministic spread over the whole source, not its alphabetical head: files are ranked by a
hash of their relative path (identical contents kept once), and line domains are cut into blocks of consecutive lines
ranked the same way, then written back in their original order. The same sources and flags give byte-identical output;
``CORPUS.json`` records per-domain sizes, counts and SHA-256 digests.

Missing Debian packages are installed with ``apt-get install -y --no-install-recommends`` when running as root (and
only those that are missing); otherwise the build fails with one line naming the packages, the domains that need them
and the command to run. ``--no-install`` never calls apt-get.
"""

from __future__ import annotations

import glob
import hashlib
import json
import sys
import time
from pathlib import Path

from ddk_store.errors import CorpusError
from ddk_store.paths import atomic_dir, cache_dir, check_replaceable

from .corpus_sources import DOMAINS, VERSE_REF, candidate_files, ensure_sources, read_text, say, source_lines

__all__ = ["DOMAINS", "VERSE_REF", "CorpusError", "build_corpus", "corpora_yaml", "default_out_dir", "ensure_sources"]

FORMAT_VERSION = 1
MANIFEST = "CORPUS.json"
CORPORA_YAML = "CORPORA.yaml"
DEFAULT_MAX_MB = 2.0
BLOCK_LINES = 32  # line domains are sampled in blocks of this many consecutive lines


def default_out_dir() -> Path:
    """Where :func:`build_corpus` writes by default: ``$DDK_CACHE/corpus``."""
    return cache_dir("corpus")


def _rank(key: str) -> str:
    """Deterministic pseudo-random order, independent of the file system's listing order."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def _select_files(domain: str, cap: int | None) -> tuple[list[tuple[str, str]], int, int]:
    """Pick files under the byte cap: rank by path hash, drop duplicates of already-kept contents.

    Returns ([(relative path, text)], number of candidates, files skipped as unreadable/binary/empty/duplicate).
    """
    candidates = sorted(candidate_files(domain), key=lambda item: (_rank(f"{domain}/{item[0]}"), item[0]))
    kept: list[tuple[str, str]] = []
    seen: set[str] = set()
    total = skipped = 0
    for rel, path in candidates:
        if cap is not None and total >= cap:
            break
        try:
            if cap is not None and path.stat().st_size > cap - total:
                continue  # does not fit in what is left of the cap; a smaller file may
        except OSError:
            skipped += 1
            continue
        text = read_text(path)
        if text is None:
            skipped += 1
            continue
        digest = hashlib.sha256(text.encode()).hexdigest()
        size = len(text.encode())
        if digest in seen:
            skipped += 1
            continue
        if cap is not None and total + size > cap:
            continue
        seen.add(digest)
        kept.append((rel, text))
        total += size
    kept.sort(key=lambda item: item[0])
    return kept, len(candidates), skipped


def _select_lines(domain: str, cap: int | None) -> tuple[list[str], int]:
    """Keep whole blocks of consecutive lines, ranked by hash, in their original order. Returns (lines, total)."""
    lines = source_lines(domain)
    if cap is None or sum(len(line.encode()) + 1 for line in lines) <= cap:
        return lines, len(lines)
    blocks = [lines[i : i + BLOCK_LINES] for i in range(0, len(lines), BLOCK_LINES)]
    order = sorted(range(len(blocks)), key=lambda i: _rank(f"{domain}/block/{i}"))
    chosen: list[int] = []
    total = 0
    for i in order:
        size = sum(len(line.encode()) + 1 for line in blocks[i])
        if total + size > cap:
            continue
        chosen.append(i)
        total += size
    return [line for i in sorted(chosen) for line in blocks[i]], len(lines)


def _write_domain(root: Path, domain: str, cap: int | None) -> dict:
    spec = DOMAINS[domain]
    ddir = root / domain
    ddir.mkdir(parents=True)
    digest = hashlib.sha256()
    t0 = time.perf_counter()
    if spec.format == "lines":
        lines, n_source = _select_lines(domain, cap)
        data = ("\n".join(lines) + "\n").encode()
        (ddir / spec.pattern).write_bytes(data)
        digest.update(data)
        info = {"files": 1, "lines": len(lines), "source_lines": n_source, "bytes": len(data)}
    else:
        kept, n_candidates, skipped = _select_files(domain, cap)
        if not kept:
            raise CorpusError(f"{domain}: no usable text files found in {spec.source}")
        total = 0
        for rel, text in kept:
            target = ddir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            data = text.encode()
            target.write_bytes(data)
            digest.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
            total += len(data)
        info = {"files": len(kept), "source_files": n_candidates, "skipped_files": skipped, "bytes": total}
    info.update({"format": spec.format, "source": spec.source, "sha256": digest.hexdigest()})
    say(f"{domain:<10} {info['bytes'] / 1e6:6.2f} MB, {info['files']} file(s) ({time.perf_counter() - t0:.1f} s)")
    return info


def _yaml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML double-quoted scalar


def corpora_yaml(out: Path, domains: list[str], *, relative: bool) -> str:
    width = max(len(d) for d in domains) + 1
    rows = [
        "# ddk corpora: written by `ddk-teacher builtin-corpus`; regenerate rather than edit.",
        "# Relative paths are relative to this file." if relative else "# Paths are absolute.",
        "domains:",
    ]
    for d in domains:
        spec = DOMAINS[d]
        # (the folder escaped: a cache path such as /runs/exp[1] is a place, not a pattern)
        path = f"{d}/{spec.pattern}" if relative else f"{glob.escape(str(out))}/{d}/{spec.pattern}"
        rows.append(f"  {(d + ':').ljust(width)} {{paths: [{_yaml_str(path)}], format: {spec.format}}}")
    return "\n".join(rows) + "\n"


def _params(domains: list[str], cap: int | None, relative: bool) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "domains": domains,
        "max_bytes": cap,
        "relative_paths": relative,
        "block_lines": BLOCK_LINES,
    }


def build_corpus(
    out_dir: str | Path | None = None,
    *,
    max_mb: float = DEFAULT_MAX_MB,
    domains: list[str] | None = None,
    relative_paths: bool = False,
    install: bool = True,
    force: bool = False,
) -> Path:
    """Build the corpus into ``out_dir`` (default ``$DDK_CACHE/corpus``) and return the path of its CORPORA.yaml.

    A corpus built earlier with the same parameters is reused unless ``force``; otherwise the new one is built in
    a temporary sibling directory and swapped in whole.
    """
    out = (Path(out_dir).expanduser() if out_dir is not None else default_out_dir()).absolute()
    domains = list(domains) if domains else list(DOMAINS)
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown:
        raise CorpusError(f"unknown domain(s) {', '.join(unknown)}; choose from {', '.join(DOMAINS)}")
    if len(set(domains)) != len(domains):
        raise CorpusError(f"--domains lists a domain twice: {','.join(domains)}")
    if max_mb < 0:
        raise CorpusError(f"--max-mb must be >= 0 (0 = no cap), got {max_mb}")
    cap = int(max_mb * 1_000_000) if max_mb > 0 else None
    params = _params(domains, cap, relative_paths)

    if out.exists() and not out.is_dir():
        raise CorpusError(f"corpus output {out} exists and is not a directory; remove it or pass --out")
    manifest_path = out / MANIFEST
    if not force and manifest_path.is_file() and (out / CORPORA_YAML).is_file():
        try:
            previous = json.loads(manifest_path.read_text())
        except ValueError:
            previous = {}
        if previous.get("params") == params:
            say(f"corpus already built in {out} (use --force to rebuild)")
            return out / CORPORA_YAML

    check_replaceable(out, MANIFEST)  # before any package is installed
    ensure_sources(domains, install=install)
    t0 = time.perf_counter()
    with atomic_dir(out, owner_file=MANIFEST) as tmp:
        infos = {d: _write_domain(tmp, d, cap) for d in domains}
        (tmp / CORPORA_YAML).write_text(corpora_yaml(out, domains, relative=relative_paths))
        manifest = {
            "params": params,
            "python": sys.version.split()[0],
            "domains": infos,
            "total_bytes": sum(i["bytes"] for i in infos.values()),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    say(f"corpus ready in {out}: {manifest['total_bytes'] / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s")
    return out / CORPORA_YAML
