"""Working directories of the benchmarks and chaos campaigns: the one the user names is kept, a temporary one is
removed when the run ends (a GPU train benchmark leaves about 1.5 GB otherwise)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def work_dir(given: Path | None, prefix: str) -> Iterator[Path]:
    """``given`` (created if needed, kept), or a new temporary directory named ``prefix...`` removed afterwards."""
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
