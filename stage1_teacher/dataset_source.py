"""CORPORA.yaml sources read through `datasets`: what `dataset:` names, reading its documents, failing fast offline.

``dataset:`` is one of three things, decided when CORPORA.yaml is parsed (see :func:`dataset_dir`):

- a local dataset directory, relative to the corpora file (or absolute, or ``~``);
- a packaged builder of local files (``json``, ``parquet``, ...), fed by ``data_files`` (relative to the corpora
  file), so a JSON-lines or Parquet file can be named directly;
- a hub id, whose ``data_files`` (if any) are paths inside the hub repository.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ddk_store.errors import ConfigError, describe
from ddk_store.paths import looks_like_path, resolve_against

if TYPE_CHECKING:
    from .corpus import DomainSource, ReadStats

#: `datasets` builders that read local files named by ``data_files`` (they need it: without it they read the cwd).
LOCAL_BUILDERS = ("arrow", "csv", "json", "parquet", "text")
#: Builders refused by name: `pandas` reads pickle files (datasets releases before 3.4 call pandas.read_pickle), and
#: ddk never loads pickle.
REFUSED_BUILDERS = {"pandas": "it reads pickle files, which ddk never loads; convert them to Parquet or JSONL "
                              "(DataFrame.to_parquet) and use dataset: parquet"}


def dataset_dir(name: str, base: Path, where: str, missing_ok: bool = False) -> str | None:
    """The local directory ``dataset: name`` names (resolved against ``base``), or None for a builder or hub id.
    ``missing_ok``: a directory that is gone is still named (its domain is packed into the store already).

    Raises:
        ConfigError: ``name`` is written as a path (``./x``, ``/x``, ``~/x``, ``a/b/c``) but no such directory exists.
    """
    if name in LOCAL_BUILDERS or "://" in name:
        return None
    resolved = resolve_against(name, base)
    if os.path.isdir(resolved) or (missing_ok and looks_like_path(name)):
        return resolved
    if looks_like_path(name):
        raise ConfigError(f"{where}: dataset directory {name!r} ({resolved}) does not exist; fix 'dataset' in the "
                          f"corpora file (a local dataset directory, relative to the corpora file, or a hub id)")
    return None


def is_on_hub(src: DomainSource) -> bool:
    """Whether a datasets source needs the hub (neither a local directory nor a builder of local files)."""
    return src.format == "dataset" and src.dataset_dir is None and src.dataset not in LOCAL_BUILDERS


def dataset_ref(src: DomainSource, *, pinned: bool = True) -> str:
    """A datasets source as ``NAME/CONFIG/SPLIT``, then ``@REVISION`` when it is pinned (and ``pinned``)."""
    return f"{src.dataset}/{src.dataset_config or ''}/{src.split}" + (f"@{src.revision}" if pinned and src.revision
                                                                      else "")


def dataset_label(src: DomainSource) -> str:
    """How a datasets source names its documents in their held-out keys (packing.doc_key):
    ``dataset:NAME/CONFIG/SPLIT``, without the revision, so that pinning the commit already read moves no document
    across the held-out split (the revision is in the corpus definition a resume must match, and the provenance)."""
    return "dataset:" + dataset_ref(src, pinned=False)


def unpinned_note(src: DomainSource) -> str | None:
    """The note for a hub dataset without 'revision': the select and train passes, and any resume, each read the
    hub's current main branch, so a push in between changes the documents (and which ones are held out). Likewise
    for a local dataset directory named without 'data_files': no file of it is in the provenance a resume checks."""
    if src.format == "dataset" and src.dataset_dir is not None and not src.data_files:
        return (f"note: domain {src.name!r}: dataset directory {src.dataset_dir} is read whole, so a resume cannot "
                "tell whether its files changed since they were packed (a change would mix held-out documents into "
                "training): name its data files with 'data_files' in the corpora file, and their sha256 goes into "
                "the provenance a resume checks")
    if not is_on_hub(src) or src.revision:
        return None
    return (f"note: domain {src.name!r}: hub dataset {src.dataset!r} is not pinned; the pack reads it twice (and again "
            "on a resume), so a change pushed in between would mix held-out documents into training: add "
            "'revision: COMMIT' (the dataset's commit hash on the hub) to its entry in the corpora file")


def read_dataset(src: DomainSource, stats: ReadStats) -> Iterator[str]:
    """Yield the documents of a datasets source in its stored order (deterministic for fixed files or revision)."""
    try:
        import datasets
    except ImportError:
        from ddk_store.errors import MissingDependencyError

        raise MissingDependencyError(f"domain {src.name!r} uses a datasets source: pip install datasets") from None
    label = (f"dataset {src.dataset!r} (config {src.dataset_config!r}, split {src.split!r}"
             + (f", revision {src.revision!r})" if src.revision else ")"))
    on_hub = is_on_hub(src)
    if on_hub:
        _check_hub_reachable(src, label)
    extra = {"data_files": list(src.data_files)} if src.data_files else {}
    if src.revision:
        extra["revision"] = src.revision
    try:
        ds = datasets.load_dataset(src.dataset_dir or src.dataset, src.dataset_config, split=src.split,
                                   streaming=True, **extra)
    except Exception as e:  # offline hub lookups, bad names, bad configs, unreadable files: one user-facing error
        hint = ("offline? use local files, or set HF_DATASETS_OFFLINE=0 with network access" if on_hub else
                "check the files, 'config' and 'split' in the corpora file")
        raise ConfigError(f"domain {src.name!r}: cannot open {label}: {describe(e, 300)} ({hint})") from None
    first, records = True, iter(ds)
    while True:
        try:  # streaming reads lazily: a damaged file (a JSON line cut short) fails here, not in load_dataset
            rec = next(records)
        except StopIteration:
            return
        except Exception as e:
            hint = ("the hub's answer broke off, or a file of it is damaged: rerun, or pin another 'revision'" if on_hub
                    else "a file of it is damaged or not of the builder's format: check the files it reads")
            raise ConfigError(f"domain {src.name!r}: cannot read {label}: {describe(e, 300)} ({hint})") from None
        if first and src.text_field not in rec:
            raise ConfigError(f"domain {src.name!r}: {label} has no field {src.text_field!r} "
                              f"(fields: {sorted(rec)}); fix 'text_field' in the corpora file")
        first = False
        text = rec.get(src.text_field)
        if isinstance(text, str) and text.strip():
            stats.n_documents += 1
            yield text


def _check_hub_reachable(src: DomainSource, label: str) -> None:
    """Fail in seconds, not after the hub client's minute of retries, when a hub dataset cannot be reached."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return  # offline mode: datasets answers from its cache, or fails at once by itself
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
    except OSError as e:
        raise ConfigError(f"domain {src.name!r}: cannot open {label}: it is no directory next to the corpora file, "
                          f"and the hub at {constants.ENDPOINT} is unreachable ({describe(e)}); offline, point "
                          f"'dataset' at a local dataset directory or name local files with 'data_files', or set "
                          f"HF_HUB_OFFLINE=1 to read a cached copy") from None
