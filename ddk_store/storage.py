"""Turn a store URL (path, file://, memory://, s3://) into a zarr Store, and delete a store's own prefix."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore, MemoryStore

from .errors import ConfigError, MissingDependencyError

# memory:// stores live for the life of the process, shared by every open of the same name (tests, notebooks).
_MEMORY: dict[str, dict[str, Any]] = {}
_MEMORY_LOCK = threading.Lock()


def normalize_url(url: str | os.PathLike[str]) -> str:
    url = os.fspath(url)
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("store URL is empty: give a local path, file://, memory:// or s3://bucket/prefix")
    return url


def url_scheme(url: str) -> str:
    if "://" not in url:
        return "file"
    return urlparse(url).scheme.lower()


def local_path(url: str) -> Path | None:
    """The local directory of a path or file:// URL, else None."""
    scheme = url_scheme(url)
    if scheme != "file":
        return None
    return Path(urlparse(url).path if url.startswith("file://") else url).expanduser()


def s3_storage_options(storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """s3fs options: the caller's, plus a custom endpoint from AWS_ENDPOINT_URL(_S3) when set."""
    opts = dict(storage_options or {})
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and "endpoint_url" not in opts and "client_kwargs" not in opts:
        opts["endpoint_url"] = endpoint
    return opts


def open_zarr_store(url: str, *, read_only: bool, storage_options: Mapping[str, Any] | None = None) -> Store:
    """Return a zarr Store rooted at the store's own prefix."""
    url = normalize_url(url)
    scheme = url_scheme(url)
    if scheme == "file":
        path = local_path(url)
        return LocalStore(path, read_only=read_only)
    if scheme == "memory":
        name = url[len("memory://"):].strip("/")
        if not name:
            raise ConfigError(f"store URL {url!r}: memory:// needs a name, e.g. memory://my-store")
        with _MEMORY_LOCK:
            backing = _MEMORY.setdefault(name, {})
        return MemoryStore(backing, read_only=read_only)
    if scheme == "s3":
        parsed = urlparse(url)
        if not parsed.netloc or not parsed.path.strip("/"):
            raise ConfigError(
                f"store URL {url!r}: give a bucket and a prefix, e.g. s3://bucket/teams/smollm2-store "
                "(a store never occupies a bucket root, so overwriting it can never wipe a bucket)"
            )
        try:
            import s3fs  # noqa: F401
        except ImportError:
            raise MissingDependencyError("s3:// stores need s3fs: pip install 'ddk[s3]'") from None
        return FsspecStore.from_url(url, storage_options=s3_storage_options(storage_options), read_only=read_only)
    raise ConfigError(f"store URL {url!r}: unsupported scheme {scheme!r}; use a path, file://, memory:// or s3://")


async def delete_store_prefix(store: Store, url: str) -> None:
    """Delete everything under the store's own prefix (never a parent directory, never a bucket)."""
    path = local_path(url)
    if path is not None:
        path = path.resolve()
        if path == Path(path.anchor) or path == Path.home().resolve():
            raise ConfigError(f"refusing to delete {path}: a store cannot live at a filesystem root or home directory")
        if path.exists():
            shutil.rmtree(path)
        return
    await store.delete_dir("")
