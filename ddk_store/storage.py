"""Turn a store URL (path, file://, memory://, s3://) into a zarr Store, and delete a store's own prefix."""

from __future__ import annotations

import functools
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore, MemoryStore

from .errors import ConfigError, MissingDependencyError
from .retry import quiet_orphaned_transient_errors

# memory:// stores live for the life of the process, shared by every open of the same name (tests, notebooks).
_MEMORY: dict[str, dict[str, Any]] = {}
_MEMORY_LOCK = threading.Lock()


def normalize_url(url: str | os.PathLike[str]) -> str:
    """``url`` as a string, its scheme in lower case (``S3://`` is ``s3://``, as URL schemes are case-insensitive)."""
    url = os.fspath(url)
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("store URL is empty: give a local path, file://, memory:// or s3://bucket/prefix")
    scheme, sep, rest = url.partition("://")
    return f"{scheme.lower()}{sep}{rest}" if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme) else url


_SCHEMES = ("file", "memory", "s3")
# "s3:/bucket/x": a URL that lost one of its slashes would otherwise become a local directory named "s3:".
_LOST_SLASH = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/(?!/)")


def url_scheme(url: str) -> str:
    if "://" not in url:
        return "file"
    return urlparse(url).scheme.lower()


def local_path(url: str) -> Path | None:
    """The local directory of a path or file:// URL, else None.

    Raises:
        ConfigError: a file:// URL without an absolute path (``file://store`` names a host, not a directory, and
            ``file://`` alone would mean the current directory).
    """
    if url_scheme(url) != "file":
        return None
    if not url.startswith("file://"):
        return Path(url).expanduser()
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
        raise ConfigError(f"store URL {url!r}: a file:// URL needs an absolute path, e.g. file:///data/stores/smollm2 "
                          "(or give the plain path)")
    return Path(parsed.path)


def check_store_url(url: str | os.PathLike[str]) -> str:
    """Check a store URL without opening it (cheap: run it before any model loads); return it.

    Only the URL's form is checked, plus, for a local path, that it is not a file.

    Raises:
        ConfigError: empty, unsupported scheme, a lost '/', memory:// without a name, s3:// without a prefix,
            a file:// URL without an absolute path, or a local path that is a file.
    """
    url = normalize_url(url)
    scheme = url_scheme(url)
    if scheme not in _SCHEMES:
        raise ConfigError(f"store URL {url!r}: unsupported scheme {scheme!r}; use a path, file://, memory:// or s3://")
    if scheme == "file":
        m = _LOST_SLASH.match(url)
        if m:
            raise ConfigError(f"store URL {url!r}: looks like a {m.group(1)}:// URL missing a '/'; write "
                              f"{m.group(1)}://{url[m.end():]}")
        path = local_path(url)
        if path is not None and path.exists() and not path.is_dir():
            raise ConfigError(f"store URL {url!r} is a file, not a directory: a store is a directory "
                              "(give a new or existing store directory)")
    elif scheme == "memory":
        if not url[len("memory://"):].strip("/"):
            raise ConfigError(f"store URL {url!r}: memory:// needs a name, e.g. memory://my-store")
    elif scheme == "s3":
        parsed = urlparse(url)
        if not parsed.netloc or not parsed.path.strip("/"):
            raise ConfigError(
                f"store URL {url!r}: give a bucket and a prefix, e.g. s3://bucket/teams/smollm2-store "
                "(a store never occupies a bucket root, so overwriting it can never wipe a bucket)"
            )
        if any(part in ("", ".", "..") for part in parsed.path.rstrip("/").split("/")[1:]):
            # Object keys are not paths: a server may resolve 'a//b' or 'a/../b' for a read but list it as written,
            # so the store would not find its own chunks.
            parts = parsed.path.split("/")
            example = ("" if ".." in parts else
                       f", e.g. s3://{parsed.netloc}/{'/'.join(p for p in parts if p not in ('', '.'))}")
            raise ConfigError(f"store URL {url!r}: an empty, '.' or '..' part in the prefix (object keys are not "
                              f"resolved like paths); write the prefix without them{example}")
    return url


def memory_note(url: str) -> str | None:
    """For a command that writes the store at ``url``: a ``note:`` line when it is a memory:// store, which lives
    only inside this process (gone when the command ends); None for any other URL."""
    url = normalize_url(url)
    if url_scheme(url) != "memory":
        return None
    return (f"note: {url} lives only inside this process: the store is gone when this command ends (give a directory "
            "path or an s3:// URL to keep it)")


def s3_storage_options(storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """s3fs options: the caller's, plus a custom endpoint from AWS_ENDPOINT_URL(_S3) when set, and s3fs's listing
    cache off unless the caller sets ``use_listings_cache``.

    A store is written by several processes (shards, teammates), and s3fs answers ``exists`` from a directory
    listing it cached earlier in the process: a key another process wrote since reads as missing, one it deleted as
    present. (A second dump in one Python process refused a location emptied in between as "not empty".) Every
    check then asks the server; zarr reads chunks by key, never by listing, so reading is as fast as before.

    Raises:
        ConfigError: the endpoint is not an http(s) URL (botocore would fail later with a bare ValueError).
    """
    opts = dict(storage_options or {})
    check_s3_option_names(opts)
    opts.setdefault("use_listings_cache", False)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and "endpoint_url" not in opts and "client_kwargs" not in opts:
        opts["endpoint_url"] = endpoint
    client_kwargs = opts.get("client_kwargs")
    for given in (opts.get("endpoint_url"), (client_kwargs or {}).get("endpoint_url")
                  if isinstance(client_kwargs, Mapping) else None):
        if given is not None and not (isinstance(given, str) and urlparse(given).scheme in ("http", "https")
                                      and urlparse(given).netloc):
            raise ConfigError(f"object store endpoint {given!r} (--storage-option endpoint_url=, or AWS_ENDPOINT_URL) "
                              "is not an http:// or https:// URL; give e.g. endpoint_url=http://127.0.0.1:8333")
    return opts


@functools.cache
def _s3_option_names() -> frozenset[str]:
    """Every option the S3 client accepts: s3fs's own, fsspec's (listing cache, instance cache, event loop) and the
    botocore session's, to which s3fs passes any other name (and which refuses it when it first connects)."""
    import inspect

    import aiobotocore.session
    import fsspec.asyn
    import fsspec.dircache
    import s3fs

    names = {"skip_instance_cache"}  # (fsspec's instance cache reads it before any __init__)
    for init in (s3fs.S3FileSystem.__init__, fsspec.asyn.AsyncFileSystem.__init__, fsspec.dircache.DirCache.__init__,
                 aiobotocore.session.AioSession.__init__):
        names |= {p.name for p in inspect.signature(init).parameters.values()
                  if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"}
    return frozenset(names)


def check_s3_option_names(opts: Mapping[str, Any]) -> None:
    """ConfigError for a storage option the S3 client does not know (it would fail at the first request with a bare
    TypeError), or a ``client_kwargs``/``config_kwargs`` that is not a mapping."""
    unknown = sorted(set(map(str, opts)) - _s3_option_names())
    if unknown:
        raise ConfigError(f"--storage-option {unknown[0]}: not an option of the S3 client (s3fs); the common ones are "
                          "endpoint_url, key, secret, token, anon, profile, client_kwargs and config_kwargs (a region "
                          "goes in client_kwargs, e.g. client_kwargs={\"region_name\": \"eu-west-1\"})")
    for name in ("client_kwargs", "config_kwargs", "s3_additional_kwargs"):
        if name in opts and not isinstance(opts[name], Mapping):
            raise ConfigError(f"--storage-option {name}: must be a JSON object, e.g. {name}={{\"region_name\": "
                              f"\"eu-west-1\"}}; got {type(opts[name]).__name__}")


def options_without_s3(url: str, storage_options: Mapping[str, Any] | None) -> str | None:
    """Storage options given for a store that is not s3:// (they apply to s3:// only): what to say, or None.

    Most likely an object-store location written without its scheme. A command that creates a store refuses it (the
    location would become a local folder); a reader only adds it to its "no store there" error, since a run's saved
    settings may carry an S3 run's options to a local copy of its store. Names the option keys, never their values.
    """
    if not storage_options or url_scheme(normalize_url(url)) == "s3":
        return None
    return (f"storage options ({', '.join(map(str, dict(storage_options)))}) were given, which apply to s3:// "
            f"stores only: an object store's location is written s3://bucket/prefix")


def open_zarr_store(url: str, *, read_only: bool, storage_options: Mapping[str, Any] | None = None) -> Store:
    """Return a zarr Store rooted at the store's own prefix."""
    url = check_store_url(url)  # (storage options apply to s3:// only: see options_without_s3)
    scheme = url_scheme(url)
    if scheme == "file":
        path = local_path(url)
        assert path is not None
        return LocalStore(path, read_only=read_only)
    if scheme == "memory":
        name = url[len("memory://"):].strip("/")
        with _MEMORY_LOCK:
            backing = _MEMORY.setdefault(name, {})
        return MemoryStore(backing, read_only=read_only)
    try:
        import s3fs  # noqa: F401
    except ImportError:
        raise MissingDependencyError("s3:// stores need s3fs: pip install s3fs (or pip install -e '.[s3]' in the ddk checkout)") from None
    quiet_orphaned_transient_errors()
    return FsspecStore.from_url(url, storage_options=s3_storage_options(storage_options), read_only=read_only)


def undeletable_reason(url: str) -> str | None:
    """Why the store at ``url`` must never be deleted, wholly or in part (a local filesystem root or the home
    directory; an s3:// prefix with wildcards), or None."""
    if url_scheme(url) == "s3" and any(c in url for c in "*?[]"):  # s3fs expands them in deletes
        return (f"store URL {url!r}: '*', '?', '[' and ']' are wildcards to the S3 client, which would delete every "
                "prefix they match with this store's; copy the store to a prefix without them to replace or repair it")
    path = local_path(url)
    if path is None:
        return None
    path = path.resolve()
    if path == Path(path.anchor) or path == Path.home().resolve():
        return f"refusing to delete {path}: a store cannot live at a filesystem root or home directory"
    return None


def refuse_undeletable(url: str) -> None:
    """ConfigError with :func:`undeletable_reason`, before any delete from the store at ``url``."""
    if why := undeletable_reason(normalize_url(url)):
        raise ConfigError(why)


async def delete_store_prefix(store: Store, url: str) -> None:
    """Delete everything under the store's own prefix (never a parent directory, never a bucket)."""
    refuse_undeletable(url)
    path = local_path(url)
    if path is not None:
        path = path.resolve()
        if path.exists():
            shutil.rmtree(path)
        return
    await store.delete_dir("")


#: zarr's LocalStore writes a chunk to "<key>.<32 hex>.partial" and renames it into place; a kill in between
#: leaves the temporary file behind (object stores write whole objects and leave nothing).
PARTIAL_NAME = re.compile(r"\.[0-9a-f]{32}\.partial$")


def is_lost_partial(exc: BaseException) -> bool:
    """A local chunk write failed because its temporary file vanished: a finalize of the same store by another writer
    (the same dump started twice) removed it. Writing the chunk again is harmless."""
    return isinstance(exc, FileNotFoundError) and bool(PARTIAL_NAME.search(str(exc.filename or "")))


def remove_stale_partials(url: str) -> int:
    """Delete the temporary chunk files that killed writers left in a local store; returns how many.

    Only safe when no writer is active on the store (the writer calls it from finalize, when every unit is done).
    Object stores and memory stores have none: returns 0.
    """
    path = local_path(url) if url_scheme(url) == "file" else None
    if path is None or not path.is_dir():
        return 0
    n = 0
    for f in path.rglob("*.partial"):
        if PARTIAL_NAME.search(f.name) and f.is_file():
            f.unlink(missing_ok=True)
            n += 1
    return n
