"""One uninterrupted dump of the tiny teacher over the tiny corpus, built once per process: what every dump of the
same command (killed, resumed, starved of disk, cut off from S3) must equal."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .commands import dump_argv
from .corpora import write_corpus
from .models import build_tiny_teacher
from .processes import run_cli
from .snapshots import store_snapshot

_SHARED: dict[str, Any] = {}


def shared_dump_inputs() -> tuple[Path, Path, dict[str, Any]]:
    """(teacher, CORPORA.yaml, snapshot of an uninterrupted dump), built once per process for every test module.

    The store records its corpus paths, so every dump compared with this reference must use this very corpus.
    """
    if not _SHARED:
        root = Path(tempfile.mkdtemp(prefix="ddk-reliability-"))
        atexit.register(shutil.rmtree, root, True)
        teacher, corpora = build_tiny_teacher(root / "teacher"), write_corpus(root / "corpus")
        code, err = run_cli("ddk-teacher", dump_argv(teacher, corpora, root / "reference"))
        if code != 0:
            raise RuntimeError(f"reference dump failed: {err[-2000:]}")
        _SHARED.update(teacher=teacher, corpora=corpora, reference=store_snapshot(str(root / "reference")))
    return _SHARED["teacher"], _SHARED["corpora"], _SHARED["reference"]
