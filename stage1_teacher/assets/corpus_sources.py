"""Where the text of the built-in corpus comes from: the six domains, their sources on a Debian/Ubuntu system, and
the Debian packages that provide them (installed with apt-get when running as root).

    scripture   `bible -f 'gen1:1-rev22:21'`, one KJV verse per line,        [bible-kjv]       format: lines
                without its "Ge1:1 " reference prefix
    python      the running interpreter's standard-library sources            (no package)      format: files
                (skips site-packages, test/tests and idlelib)
    c           /usr/include/**/*.h                                           (libc6-dev etc.)  format: files
    docs        /usr/share/doc/python3.11/html/_sources/**/*.rst.txt          [python3.11-doc]  format: files
    dictionary  `zcat /usr/share/dictd/gcide.dict.dz`                         [dict-gcide]      format: lines
    legal       /usr/share/doc/*/copyright                                    (always present)  format: files

:mod:`stage1_teacher.assets.corpus` picks and copies the text; this module only finds it.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from ddk_store.errors import CorpusError

BIBLE_RANGE = "gen1:1-rev22:21"
VERSE_REF = re.compile(r"^[1-3]?[A-Za-z]+\d+:\d+\s+")
GCIDE = Path("/usr/share/dictd/gcide.dict.dz")
PYDOC_SOURCES = Path("/usr/share/doc/python3.11/html/_sources")
INCLUDE_DIR = Path("/usr/include")
DOC_DIR = Path("/usr/share/doc")
PYTHON_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}

# Everything the recipe installs as root. dict-foldoc and wordnet-base feed no domain of their own; they are installed
# because the legal domain is every installed package's copyright file, so the set installed is part of that corpus:
# the same set on every machine gives the legal rows the documented figures were measured on.
APT_PACKAGES = ["bible-kjv", "dict-gcide", "dict-foldoc", "wordnet-base", "python3.11-doc"]


def say(msg: str) -> None:
    """Progress of a corpus build, on stderr."""
    print(f"[ddk corpus] {msg}", file=sys.stderr, flush=True)


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


def read_text(path: Path) -> str | None:
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


def candidate_files(domain: str) -> list[tuple[str, Path]]:
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


def source_lines(domain: str) -> list[str]:
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
    # Wait up to 10 minutes for another apt user (a second set-up, a fresh VM's unattended upgrades) instead of
    # failing on dpkg's lock at once.
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]
    cmd = [*apt, "install", "-y", "--no-install-recommends", *packages]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    say(f"installing {' '.join(packages)} with apt-get")
    if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode == 0:
        return
    say("apt-get install failed; running apt-get update and retrying")
    subprocess.run([*apt, "update"], env=env, stdout=subprocess.DEVNULL)
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
        # (with the recipe's other packages: the legal domain's rows depend on every package installed)
        all_missing = sorted(set(pkgs) | set(missing_packages(APT_PACKAGES)))
        fix = (f"install them with `sudo apt-get install -y --no-install-recommends {' '.join(all_missing)}`"
               if pkgs else "")
        raise CorpusError(
            f"missing corpus sources ({how}): {what}. "
            + (f"Needed Debian packages: {', '.join(pkgs)}; {fix}, " if pkgs else "")
            + "or leave those domains out with --domains"
        )
