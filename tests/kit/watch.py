"""What a running dump or training run has on disk, read with a few directory listings (safe while it writes).

A run directory is read through the names of :mod:`stage2_student.rundir`.

Store files are found through the store's schema (:mod:`ddk_store.schema`): node documents by ``node_doc_key``,
chunks by ``chunk_key`` and unit markers by ``marker_key``. A chunk's directory is created just before its file is
written, and ``tokens`` is the first array a unit writes and ``units`` (its marker) the last, so a ``tokens`` chunk
directory without the unit's marker directory means the unit is being written right now.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddk_store import spec
from ddk_store.errors import DdkError
from ddk_store.meta import StoreMeta
from ddk_store.schema import DIMENSIONS, GroupLayout, chunk_key, group_path, marker_key, node_doc_key
from stage2_student import rundir


def listdir(p: Path) -> list[str]:
    """Names in directory ``p``; [] when it does not exist (yet)."""
    try:
        return os.listdir(p)
    except OSError:
        return []


# ------------------------------------------------------------------------------------------------ stores
def _node_attrs(store: Path, *path: str) -> Mapping[str, Any]:
    """The attributes of a node's document (OSError/ValueError while it is absent or half-written)."""
    return json.loads((store / node_doc_key(*path)).read_text())["attributes"]


def _root_meta(store: Path) -> StoreMeta:
    return StoreMeta.from_dict(_node_attrs(store)[spec.ROOT_ATTR])


def _layout(store: Path, domain: str, split: str) -> GroupLayout:
    where = f"{group_path(domain, split)}.{spec.GROUP_ATTR}"
    return GroupLayout.from_dict(_node_attrs(store, domain, split)[spec.GROUP_ATTR], where)


def chunk_indices(store: Path, domain: str, split: str, name: str) -> set[int]:
    """First-dimension indices of the chunks of array ``name`` with a directory on disk (written or being written):
    the entries of the directory above the chunk key's index (and its trailing zeros)."""
    index_dir = Path(chunk_key(domain, split, name, 0)).parents[len(DIMENSIONS[name]) - 1]
    return {int(n) for n in listdir(store / index_dir) if n.isdigit()}


def marker_written(store: Path, domain: str, split: str, unit: int) -> bool:
    """Unit ``unit``'s marker file is in place (not only its directory)."""
    return (store / marker_key(domain, split, unit)).exists()


def _groups(store: Path) -> list[tuple[str, str, GroupLayout]]:
    """(domain, split, layout) of every group; raises OSError/ValueError/KeyError/DdkError until all exist."""
    return [(d, s, _layout(store, d, s)) for d in _root_meta(store).domain_names for s in spec.SPLITS]


_NOT_THERE_YET = (OSError, ValueError, KeyError, DdkError)  # not created yet, or caught between two writes


@dataclass
class DumpState:
    """What a (possibly running) dump has on disk: units marked done, units being written, temp files, status."""

    done: int = 0
    total: int = 0
    in_flight: list[str] = field(default_factory=list)  # units with data chunks written (or started), no marker
    partial_files: int = 0  # *.partial temp files of interrupted chunk writes
    status: str = "absent"

    def describe(self) -> str:
        bits = [f"{self.done}/{self.total} units", f"status {self.status}"]
        if self.in_flight:
            bits.append(f"mid-unit {self.in_flight[0]}")
        if self.partial_files:
            bits.append(f"{self.partial_files} temp chunk file(s)")
        return ", ".join(bits)


def dump_state(store: Path) -> DumpState:
    """Scan a local store directory (cheap: a few directory listings; safe while a writer runs)."""
    st = DumpState()
    try:
        meta = _root_meta(store)
    except _NOT_THERE_YET:
        return st
    st.status = meta.status
    for dom in meta.domain_names:
        for split in spec.SPLITS:
            try:
                lay = _layout(store, dom, split)
            except _NOT_THERE_YET:
                continue
            st.total += lay.num_units
            marked = {u for u in chunk_indices(store, dom, split, spec.ARR_UNITS)
                      if marker_written(store, dom, split, u)}
            st.done += len(marked)
            started = {c * lay.object_rows // lay.unit_rows
                       for arr in spec.DATA_ARRAYS for c in chunk_indices(store, dom, split, arr)}
            st.in_flight += [f"{dom}/{split} unit {u}" for u in sorted(started - marked)]
    st.partial_files = sum(1 for _ in store.rglob("*.partial"))
    return st


class DumpWatch:
    """Progress of a running dump from two directory listings per group, so a kill lands within a millisecond or so
    of what it waits for (a unit's chunk writes take a few milliseconds on a local disk)."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.groups: list[tuple[str, str, GroupLayout]] = []
        self.total = 0

    def _load(self) -> bool:
        try:
            self.groups = _groups(self.store)
        except _NOT_THERE_YET:
            return False
        self.total = sum(lay.num_units for _, _, lay in self.groups)
        return True

    def all_markers_written(self) -> bool:
        """Every marker file is in place (not only its directory): the dump has moved on to finalizing."""
        return all(marker_written(self.store, d, s, u)
                   for d, s, _ in self.groups for u in chunk_indices(self.store, d, s, spec.ARR_UNITS))

    def poll(self) -> tuple[int, int, bool]:
        """(markers, total units, a unit is mid-write); (0, 0, False) until the store's layout exists."""
        if not self.groups and not self._load():
            return 0, 0, False
        done, busy = 0, False
        for d, s, lay in self.groups:
            markers = chunk_indices(self.store, d, s, spec.ARR_UNITS)
            done += len(markers)
            if not busy:
                started = {c * lay.object_rows // lay.unit_rows
                           for c in chunk_indices(self.store, d, s, spec.ARR_TOKENS)}
                busy = bool(started - markers)
        return done, self.total, busy


# ------------------------------------------------------------------------------------------------ training runs
def has_metrics(out: Path) -> bool:
    """metrics.jsonl has its first line: training has started."""
    try:
        return (out / rundir.METRICS_FILE).stat().st_size > 0
    except OSError:
        return False


def train_state(out: Path) -> tuple[int, int | None, bool, bool]:
    """(steps logged, last complete checkpoint step, a checkpoint being written, final line logged)."""
    steps, final = 0, False
    try:
        for ln in (out / rundir.METRICS_FILE).read_text().splitlines():
            if not ln.strip():
                continue
            try:
                rec = json.loads(ln)
            except ValueError:
                continue  # a line being written
            steps += rec.get("event") == rundir.STEP
            final = final or rec.get("event") == rundir.FINAL
    except OSError:
        pass
    names = listdir(out / rundir.CHECKPOINTS_DIR)  # step-XXXXXXXX, step-XXXXXXXX.tmp while being written
    done = [int(n[5:13]) for n in names if n.startswith("step-") and not n.endswith(".tmp")]
    return steps, (max(done) if done else None), any(n.endswith(".tmp") for n in names), final
