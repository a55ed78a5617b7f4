#!/usr/bin/env python3
"""Build ddk's default six-domain corpus from real text that installs offline, plus its CORPORA.yaml.

Domains and sources (Debian packages in brackets; see also README.md here):

    scripture   `bible -f 'gen1:1-rev22:21'`, one KJV verse per line,        [bible-kjv]       format: lines
                without its "Ge1:1 " reference prefix
    python      the running interpreter's standard-library sources            (no package)      format: files
                (skips site-packages, test/tests and idlelib)
    c           /usr/include/**/*.h                                           (libc6-dev etc.)  format: files
    docs        /usr/share/doc/python3.11/html/_sources/**/*.rst.txt          [python3.11-doc]  format: files
    dictionary  `zcat /usr/share/dictd/gcide.dict.dz`                         [dict-gcide]      format: lines
    legal       /usr/share/doc/*/copyright                                    (always present)  format: files

The text is copied into the output directory (default ``$DDK_CACHE/corpus``, ``~/.cache/ddk/corpus``), so later
changes to the system do not change the corpus, and ``CORPORA.yaml`` is written beside it:

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
only those that are missing); otherwise the script exits non-zero and names the packages, the domains that need them
and the command to run. ``--no-install`` never calls apt-get.

Usage:
    python examples/corpus/build_corpus.py [--out DIR] [--max-mb 2] [--domains scripture,python,...]
                                           [--relative-paths] [--no-install] [--force]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

FORMAT_VERSION = 1
MANIFEST = "CORPUS.json"
CORPORA_YAML = "CORPORA.yaml"
DEFAULT_MAX_MB = 2.0
BLOCK_LINES = 32  # line domains are sampled in blocks of this many consecutive lines

BIBLE_RANGE = "gen1:1-rev22:21"
VERSE_REF = re.compile(r"^[1-3]?[A-Za-z]+\d+:\d+\s+")
GCIDE = Path("/usr/share/dictd/gcide.dict.dz")
PYDOC_SOURCES = Path("/usr/share/doc/python3.11/html/_sources")
INCLUDE_DIR = Path("/usr/include")
DOC_DIR = Path("/usr/share/doc")
PYTHON_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}

# Everything the recipe installs (the extra dictionaries are for optional extra domains, see README.md).
APT_PACKAGES = ["bible-kjv", "dict-gcide", "dict-foldoc", "wordnet-base", "python3.11-doc"]


class CorpusError(Exception):
    """A user-facing failure: printed on one line, exit status 1."""


def default_out_dir() -> Path:
    env = os.environ.get("DDK_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "ddk") / "corpus"


def _say(msg: str) -> None:
    print(f"[ddk corpus] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------- #
# Domains
# ---------------------------------------------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Domain:
    name: str
    format: str  # "lines" | "files"
    packages: tuple[str, ...]  # Debian packages that provide the source
    source: str  # human description, for messages and the manifest
    pattern: str  # glob (relative to the domain directory) written into CORPORA.yaml

    def available(self) -> bool:
        return not self.missing_reason()

    def missing_reason(self) -> str | None:
        if self.name == "scripture":
            return None if shutil.which("bible") else "the `bible` command is not installed"
        if self.name == "dictionary":
            return None if GCIDE.is_file() else f"{GCIDE} does not exist"
        if self.name == "docs":
            return None if PYDOC_SOURCES.is_dir() else f"{PYDOC_SOURCES} does not exist"
        if self.name == "c":
            return None if any(INCLUDE_DIR.glob("*.h")) else f"no C headers in {INCLUDE_DIR}"
        if self.name == "legal":
            return None if any(DOC_DIR.glob("*/copyright")) else f"no {DOC_DIR}/*/copyright files"
        if self.name == "python":
            return None if (_stdlib_dir() / "os.py").is_file() else f"no standard-library sources in {_stdlib_dir()}"
        raise AssertionError(self.name)


DOMAINS: dict[str, Domain] = {
    d.name: d
    for d in [
        Domain("scripture", "lines", ("bible-kjv",), f"bible -f '{BIBLE_RANGE}' (KJV)", "kjv.txt"),
        Domain("python", "files", (), "the Python standard library of this interpreter", "**/*.py"),
        Domain("c", "files", ("libc6-dev",), f"{INCLUDE_DIR}/**/*.h", "**/*.h"),
        Domain("docs", "files", ("python3.11-doc",), f"{PYDOC_SOURCES}/**/*.rst.txt", "**/*.rst.txt"),
        Domain("dictionary", "lines", ("dict-gcide",), f"zcat {GCIDE}", "gcide.txt"),
        Domain("legal", "files", (), f"{DOC_DIR}/*/copyright", "**/copyright"),
    ]
}


def _stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _rank(key: str) -> str:
    """Deterministic pseudo-random order, independent of the file system's listing order."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def _read_text(path: Path) -> str | None:
    """UTF-8 text of a regular file, or None for an unreadable, empty or non-UTF-8 (binary) file."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data.strip():
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if "\x00" not in text else None


def _candidate_files(domain: str) -> list[tuple[str, Path]]:
    """(relative output path, source path) for every source file of a files-format domain, unordered."""
    out: list[tuple[str, Path]] = []
    if domain == "python":
        root = _stdlib_dir()
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in PYTHON_SKIP_DIRS and not d.startswith(".")]
            for name in filenames:
                if name.endswith(".py"):
                    path = Path(dirpath) / name
                    out.append((path.relative_to(root).as_posix(), path))
    elif domain == "c":
        for dirpath, dirnames, filenames in os.walk(INCLUDE_DIR):
            for name in filenames:
                if name.endswith(".h"):
                    path = Path(dirpath) / name
                    out.append((path.relative_to(INCLUDE_DIR).as_posix(), path))
    elif domain == "docs":
        for path in PYDOC_SOURCES.rglob("*.rst.txt"):
            out.append((path.relative_to(PYDOC_SOURCES).as_posix(), path))
    elif domain == "legal":
        for path in DOC_DIR.glob("*/copyright"):
            out.append((f"{path.parent.name}/copyright", path))
    else:
        raise AssertionError(domain)
    return out


def _select_files(domain: str, cap: int | None) -> tuple[list[tuple[str, str]], int, int]:
    """Pick files under the byte cap: rank by path hash, drop duplicates of already-kept contents.

    Returns ([(relative path, text)], number of candidates, files skipped as unreadable/binary/empty/duplicate).
    """
    candidates = sorted(_candidate_files(domain), key=lambda item: (_rank(f"{domain}/{item[0]}"), item[0]))
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
        text = _read_text(path)
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


def _source_lines(domain: str) -> list[str]:
    if domain == "scripture":
        try:
            proc = subprocess.run(
                ["bible", "-f", BIBLE_RANGE], capture_output=True, check=True, timeout=600, env=_c_locale()
            )
        except (OSError, subprocess.SubprocessError) as err:
            raise CorpusError(f"scripture: `bible -f '{BIBLE_RANGE}'` failed: {err}; reinstall bible-kjv") from err
        text = proc.stdout.decode("utf-8", "replace")
    elif domain == "dictionary":
        try:
            text = gzip.decompress(GCIDE.read_bytes()).decode("utf-8", "replace")
        except (OSError, EOFError, gzip.BadGzipFile) as err:
            raise CorpusError(f"dictionary: cannot read {GCIDE}: {err}; reinstall dict-gcide") from err
    else:
        raise AssertionError(domain)
    lines = [line.rstrip() for line in text.splitlines()]
    if domain == "scripture":
        # `bible -f` prefixes each verse with its reference ("Ge1:1 In the beginning ..."): keep the verse text only.
        lines = [VERSE_REF.sub("", line, count=1) for line in lines]
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise CorpusError(f"{domain}: {DOMAINS[domain].source} produced no text; reinstall {DOMAINS[domain].packages[0]}")
    return lines


def _select_lines(domain: str, cap: int | None) -> tuple[list[str], int]:
    """Keep whole blocks of consecutive lines, ranked by hash, in their original order. Returns (lines, total)."""
    lines = _source_lines(domain)
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


def _c_locale() -> dict[str, str]:
    env = dict(os.environ)
    env["LC_ALL"] = "C.UTF-8"
    return env


# ---------------------------------------------------------------------------------------------------------------- #
# Debian packages
# ---------------------------------------------------------------------------------------------------------------- #


def _dpkg_installed(package: str) -> bool:
    if not shutil.which("dpkg-query"):
        return False
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return proc.returncode == 0 and proc.stdout.strip().endswith(" installed")


def missing_packages(packages: list[str]) -> list[str]:
    return [p for p in packages if not _dpkg_installed(p)]


def install_packages(packages: list[str]) -> None:
    """``apt-get install`` the given packages (running ``apt-get update`` once if the first try fails)."""
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _say(f"installing {' '.join(packages)} with apt-get")
    if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode == 0:
        return
    _say("apt-get install failed; running apt-get update and retrying")
    subprocess.run(["apt-get", "update"], env=env, stdout=subprocess.DEVNULL)
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise CorpusError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {tail}")


def ensure_sources(domains: list[str], *, install: bool) -> None:
    """Install what the chosen domains need when possible; otherwise raise naming exactly what is missing."""
    can_install = install and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get") is not None
    wanted = sorted({p for d in domains for p in DOMAINS[d].packages} | (set(APT_PACKAGES) if can_install else set()))
    need = missing_packages(wanted) if can_install else []
    if need:
        install_packages(need)
    unavailable = [(d, DOMAINS[d].missing_reason()) for d in domains if not DOMAINS[d].available()]
    if unavailable:
        pkgs = sorted({p for d, _ in unavailable for p in DOMAINS[d].packages})
        what = "; ".join(f"{d}: {reason}" for d, reason in unavailable)
        if not install:
            how = "rerun without --no-install as root"
        elif not can_install:
            how = "this is not root or has no apt-get"
        else:
            how = "apt-get did not provide it"
        fix = f"install them with `sudo apt-get install -y --no-install-recommends {' '.join(pkgs)}`" if pkgs else ""
        raise CorpusError(
            f"missing corpus sources ({how}): {what}. "
            + (f"Needed Debian packages: {', '.join(pkgs)}; {fix}, " if pkgs else "")
            + "or leave those domains out with --domains"
        )


# ---------------------------------------------------------------------------------------------------------------- #
# Build
# ---------------------------------------------------------------------------------------------------------------- #


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
    _say(f"{domain:<10} {info['bytes'] / 1e6:6.2f} MB, {info['files']} file(s) ({time.perf_counter() - t0:.1f} s)")
    return info


def _yaml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML double-quoted scalar


def corpora_yaml(out: Path, domains: list[str], *, relative: bool) -> str:
    width = max(len(d) for d in domains) + 1
    rows = [
        "# ddk corpora: written by examples/corpus/build_corpus.py; regenerate rather than edit.",
        "# Relative paths are relative to this file." if relative else "# Paths are absolute.",
        "domains:",
    ]
    for d in domains:
        spec = DOMAINS[d]
        path = f"{d}/{spec.pattern}" if relative else f"{out}/{d}/{spec.pattern}"
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
            _say(f"corpus already built in {out} (use --force to rebuild)")
            return out / CORPORA_YAML

    ensure_sources(domains, install=install)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        t0 = time.perf_counter()
        infos = {d: _write_domain(tmp, d, cap) for d in domains}
        (tmp / CORPORA_YAML).write_text(corpora_yaml(out, domains, relative=relative_paths))
        manifest = {
            "params": params,
            "python": sys.version.split()[0],
            "domains": infos,
            "total_bytes": sum(i["bytes"] for i in infos.values()),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            old.rmdir()
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _say(f"corpus ready in {out}: {manifest['total_bytes'] / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out / CORPORA_YAML


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build ddk's six-domain default corpus and its CORPORA.yaml.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", default=None, help=f"output directory [default: {default_out_dir()}]")
    parser.add_argument("--max-mb", type=float, default=DEFAULT_MAX_MB, help="size cap per domain in MB; 0 = no cap")
    parser.add_argument("--domains", default=",".join(DOMAINS), help="comma-separated subset of the domains")
    parser.add_argument(
        "--relative-paths", action="store_true", help="write paths relative to CORPORA.yaml instead of absolute"
    )
    parser.add_argument("--no-install", action="store_true", help="never run apt-get; fail naming what is missing")
    parser.add_argument("--force", action="store_true", help="rebuild even if the same corpus is already there")
    args = parser.parse_args(argv)
    try:
        path = build_corpus(
            args.out,
            max_mb=args.max_mb,
            domains=[d.strip() for d in args.domains.split(",") if d.strip()],
            relative_paths=args.relative_paths,
            install=not args.no_install,
            force=args.force,
        )
    except CorpusError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
