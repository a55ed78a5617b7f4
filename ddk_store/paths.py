"""Where ddk keeps things on the local disk, and how names given by users become paths.

One home for: the cache directory (``$DDK_CACHE``), telling a local model directory from a hub id, resolving a
path written inside a file against that file's folder, and building a directory atomically (in a temporary
sibling, renamed into place only when complete). No deep-learning imports.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: Environment variable naming the cache root (models, corpora built by ddk); default ``~/.cache/ddk``.
CACHE_ENV = "DDK_CACHE"


def cache_dir(*parts: str) -> Path:
    """``$DDK_CACHE`` (default ``~/.cache/ddk``), joined with ``parts``. Nothing is created."""
    env = os.environ.get(CACHE_ENV)
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "ddk"
    return root.joinpath(*parts)


def looks_like_path(name: str) -> bool:
    """True when ``name`` is written as a filesystem path rather than a hub id (``org/name``).

    A name starting with '/', '.' or '~', or with more than one '/', is a path; a missing one must be reported as
    a missing directory, not sent to the hub as a malformed id.
    """
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def model_ref_problem(flag: str, name: str) -> str | None:
    """A one-line problem when ``name`` (a model given by ``flag``) is written as a path but is no directory.

    Returns None for an existing directory and for anything that may be a hub id.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return None
    if path.exists():
        return f"{flag} {name}: is a file; give a Hugging Face model directory (save_pretrained output) or hub id"
    if looks_like_path(name):
        return f"{flag} {name}: directory does not exist; give a Hugging Face model directory or hub id"
    return None


def resolve_against(value: str, base_dir: Path) -> str:
    """``value`` as written inside a file in ``base_dir``: relative local paths are taken relative to ``base_dir``.

    URLs (``s3://``, ``file://``, ``memory://``) and absolute paths are returned unchanged; ``~`` is expanded.
    """
    if not value or "://" in value:
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base_dir / p).resolve())


def _share_permissions(directory: Path) -> None:
    """mkdtemp and some writers create owner-only entries; give the tree the permissions of the umask instead, so
    that other users of a shared cache can read it."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [directory, *directory.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Build a directory in a temporary sibling of ``out``; on success move it to ``out``, replacing what is there.

    Yields the temporary directory. If the block raises, the temporary directory is removed and ``out`` is left as
    it was. The replacement renames the old ``out`` aside first, so there is no moment without a complete ``out``
    except between two renames.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        _share_permissions(tmp)
        old = None
        if out.exists() or out.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            old.rmdir()
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
