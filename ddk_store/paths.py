"""Where ddk keeps things on the local disk, and how names given by users become paths.

One home for: the cache directory (``$DDK_CACHE``), telling a local model directory from a hub id (and fetching a
hub model's snapshot), resolving a path written inside a file against that file's folder, and building a directory
atomically (in a temporary sibling, renamed into place only when complete). No deep-learning imports.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError, describe

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


#: Files a Hugging Face tokenizer is loaded from (any one of them: fast, sentencepiece, BPE or WordPiece).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "merges.txt",
                   "vocab.txt", "spiece.model")


def no_tokenizer_files(name: str, model_dir: str | Path | None = None) -> str | None:
    """When the local model directory ``name`` (found at ``model_dir``, default ``name``) holds none of
    :data:`TOKENIZER_FILES`, the usual slip of saving a model without its tokenizer: what to say (that it has none,
    and how to save them beside the model). None for a directory with one of them, and for a hub id."""
    if not Path(name).expanduser().is_dir():
        return None
    path = Path(model_dir if model_dir is not None else name).expanduser()
    if not path.is_dir() or any((path / f).exists() for f in TOKENIZER_FILES):
        return None
    return (f"{name} has no tokenizer files ({' / '.join(TOKENIZER_FILES[:2])} ...); save them beside the model "
            f"with `tokenizer.save_pretrained(\"{name}\")`")


#: Files of a hub model that ddk needs: config, tokenizer, safetensors weights, and any custom modelling code.
HUB_MODEL_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.py")


def hub_snapshot(flag: str, repo_id: str, revision: str | None = None) -> str:
    """The local snapshot directory of hub model ``repo_id`` (given with ``flag``): the cached copy, or downloaded.

    Fails within seconds, in one line, when the hub cannot be reached and nothing is cached (no retry loop), and for
    an unknown or gated repository or a bad revision.

    Raises:
        ConfigError: naming ``flag`` and ``repo_id``, the cause shortened by :func:`~ddk_store.errors.describe`.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id, revision=revision or None, allow_patterns=list(HUB_MODEL_FILES))
    except LocalEntryNotFoundError as e:  # offline (no network, or HF_HUB_OFFLINE=1) and nothing cached
        raise ConfigError(f"{flag} {repo_id}: not a local directory, and the hub cannot be reached "
                          f"({describe(e.__cause__ or e)}) while no copy is cached; pass a local model directory, or "
                          f"rerun with network access") from None
    except Exception as e:  # unknown or gated repository, bad revision, refused download
        raise ConfigError(f"{flag} {repo_id}: not a local directory, and the hub snapshot could not be fetched "
                          f"({describe(e, 300)}); pass a local model directory") from None


def resolve_against(value: str, base_dir: Path) -> str:
    """``value`` as written inside a file in ``base_dir``: relative local paths are taken relative to ``base_dir``.

    URLs (``s3://``, ``file://``, ``memory://``) and absolute paths are returned unchanged; ``~`` is expanded.
    """
    if not value or "://" in value:
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base_dir / p).resolve())


def share_permissions(directory: Path) -> None:
    """mkdtemp and some writers (safetensors) create owner-only entries; give the tree (or one file) the permissions
    of the umask instead, so that other users of a shared cache or run can read it."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [directory, *(directory.rglob("*") if directory.is_dir() else ())]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def sync_tree(path: Path) -> None:
    """Flush every file under ``path`` (a directory or one file) and the directories themselves to the disk, so
    that a rename that commits them afterwards cannot, after a power loss, name a file whose data never landed."""
    path = Path(path)
    for entry in sorted([path, *(path.rglob("*") if path.is_dir() else ())], key=lambda e: -len(e.parts)):
        sync_entry(entry)


#: What fsync (or opening an entry for it) raises where a filesystem cannot sync that entry at all: some network
#: and FUSE mounts for directories, an SMB server for a handle it does not allow to flush, a parent not readable.
_CANNOT_SYNC = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES, errno.EBADF)


def replace_file(path: str | os.PathLike[str], data: bytes | str, *, suffix: str = ".tmp") -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through a new, uniquely named file beside it (created exclusively,
    never through a link) and a rename, which replaces ``path`` itself: a link planted at ``path`` (in a directory a
    team shares) is replaced, never followed, and a kill leaves the old file or the new one."""
    import uuid

    path = Path(path)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}{suffix}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:  # named by the file the caller writes, not by its temporary name
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sync_entry(entry: Path) -> None:
    """fsync one file (opened for writing) or directory (the names in it, e.g. after a rename into it). An entry the
    filesystem cannot sync (:data:`_CANNOT_SYNC`) is skipped; an I/O error is raised."""
    try:
        fd = os.open(entry, os.O_RDONLY if os.path.isdir(entry) else os.O_WRONLY)
    except OSError as e:
        if e.errno not in _CANNOT_SYNC:
            raise
        return
    try:
        flush_fd(fd)
    finally:
        os.close(fd)


def flush_fd(fd: int) -> None:
    """fsync an open file or directory; skipped where the filesystem cannot sync it (:data:`_CANNOT_SYNC`)."""
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _CANNOT_SYNC:
            raise


def check_replaceable(out: Path, owner_file: str) -> None:
    """Refuse (ConfigError) an ``out`` that :func:`atomic_dir` would not replace: a file, or a non-empty directory
    without ``owner_file``. For commands that should say so before long work (installing, downloading)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / owner_file).is_file())):
        raise ConfigError(f"{out}: exists and is not a directory this command built (no {owner_file} there), so it is "
                          f"not replaced; choose another output directory or remove it yourself")


#: A build's temporary sibling untouched for this long belongs to a build that was killed (SIGKILL, power loss):
#: the next build of the same folder removes it. (A build in progress writes into it far more often.)
STALE_AFTER_S = 24 * 3600


def remove_stale_siblings(out: Path) -> None:
    """Remove the temporary siblings of ``out`` (:func:`atomic_dir`'s ``.NAME.tmp-*`` and ``.NAME.old-*``) that no
    build has touched for :data:`STALE_AFTER_S`: a killed build leaves them (hundreds of MB for a teacher)."""
    now = time.time()
    for pattern in (f".{glob.escape(out.name)}.tmp-*", f".{glob.escape(out.name)}.old-*"):
        for p in out.parent.glob(pattern):
            with contextlib.suppress(OSError):  # (another build removing it first, or not ours to remove)
                if p.is_symlink() or now - _newest_mtime(p) < STALE_AFTER_S:
                    continue
                shutil.rmtree(p) if p.is_dir() else p.unlink()


def _newest_mtime(path: Path) -> float:
    """The latest modification time of ``path`` and everything under it."""
    newest = path.lstat().st_mtime
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


@contextlib.contextmanager
def atomic_dir(out: Path, *, owner_file: str) -> Iterator[Path]:
    """Build a directory in a temporary sibling of ``out``; on success move it to ``out``, replacing what is there.

    Only an earlier build is replaced: a non-empty ``out`` without ``owner_file`` (the file every build of this kind
    writes) is refused before anything is built, so a user's own directory is never deleted. Yields the temporary
    directory. If the block raises, the temporary directory is removed and ``out`` is left as it was. The
    replacement renames the old ``out`` aside first, so there is no moment without a complete ``out`` except between
    two renames.

    Raises:
        ConfigError: ``out`` is a file, or a non-empty directory without ``owner_file``.
    """
    out = Path(out)
    check_replaceable(out, owner_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        share_permissions(tmp)
        sync_tree(tmp)
        old = None
        if out.exists() or out.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            old.rmdir()
            os.rename(out, old)
        try:
            os.rename(tmp, out)
            sync_entry(out.parent)
        finally:  # also when another writer put its own ``out`` there first: the old copy never lingers
            if old is not None:
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink(missing_ok=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
