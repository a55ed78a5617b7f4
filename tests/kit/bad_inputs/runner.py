"""Run one case as a user would and record what it printed and what it left behind on every path it named."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ddk_store import spec
from ddk_store.schema import node_doc_key

from ..processes import ERROR_PREFIX, USAGE_PREFIX, CliResult, run_cli
from ..snapshots import tree_snapshot
from .cases import BadInput
from .workspace import Workspace


def local_paths(argv: list[str], roots: tuple[Path, ...]) -> list[Path]:
    """Paths on the command line under one of ``roots`` (file:// stripped), in order, without duplicates."""
    found: dict[str, Path] = {}
    for arg in argv:
        value = arg[len("file://"):] if arg.startswith("file://") else arg
        if any(value.startswith(str(r)) for r in roots):
            found.setdefault(value, Path(value))
    return list(found.values())


def looks_valid(path: Path) -> str | None:
    """What under ``path`` looks like a successful output (a complete store, a saved model), or None."""
    if not path.is_dir():
        return None
    for doc in path.rglob(node_doc_key()):
        try:
            attrs = json.loads(doc.read_text()).get("attributes") or {}
        except (ValueError, OSError):
            continue
        meta = attrs.get(spec.ROOT_ATTR)
        if isinstance(meta, dict) and meta.get("status") == spec.STATUS_COMPLETE:
            return f"complete store at {doc.parent}"
    for name in ("model.safetensors", "pytorch_model.bin", "report.md"):
        hits = list(path.rglob(name))
        if hits:
            return f"output file {hits[0]}"
    return None


@dataclass(frozen=True)
class Outcome:
    """A case's run: the CLI result and the command line, plus the state of every path it named."""

    result: CliResult
    argv: list[str]
    before: dict[str, dict[str, str] | None]
    after: dict[str, dict[str, str] | None]
    valid_outputs: list[str]

    @property
    def error_line(self) -> str:
        lines = self.result.lines_starting(ERROR_PREFIX) + self.result.lines_starting(USAGE_PREFIX)
        return lines[0] if lines else ""


def run_case(case: BadInput, ws: Workspace, tmp: Path) -> Outcome:
    """Build the case in ``tmp`` and run it, snapshotting every path on its command line before and after."""
    tmp.mkdir(parents=True, exist_ok=True)
    argv = case.build(ws, tmp)
    paths = local_paths(argv, (ws.root, tmp))
    before = {str(p): tree_snapshot(p) for p in paths}
    result = run_cli(case.cli, argv)
    after = {str(p): tree_snapshot(p) for p in paths}
    valid = [v for p in paths if before[str(p)] is None and (v := looks_valid(p))]
    return Outcome(result, argv, before, after, valid)
