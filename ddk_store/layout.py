"""Pure layout arithmetic: chunk and unit sizes, unit row ranges, shard assignment. No I/O."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Target tokens per chunk. One chunk of a 1024-token row keeps random row reads free of read amplification.
CHUNK_TOKENS = 1024
#: Target tokens per unit (the resume and checksum granularity): large enough to amortize per-unit overhead (new
#: directories and objects, the marker: about 1.2x scoring throughput over 16,384, docs/benchmarks.md) and to keep
#: the object count of a 20 B-token store near 2 M, small enough that a killed dump loses under a second of a GPU
#: teacher's work. Each group records its own unit_rows, so stores written with another default read the same.
UNIT_TOKENS = 65536


@dataclass(frozen=True)
class Unit:
    """A write unit: rows [start, stop) of one (domain, split); always whole chunks."""

    domain: str
    split: str
    index: int
    start: int
    stop: int

    @property
    def n_rows(self) -> int:
        return self.stop - self.start

    def __str__(self) -> str:
        return f"{self.domain}/{self.split} unit {self.index} (rows {self.start}-{self.stop - 1})"


def default_chunk_rows(seq_len: int) -> int:
    return max(1, CHUNK_TOKENS // seq_len)


def default_unit_rows(seq_len: int, chunk_rows: int) -> int:
    chunks = max(1, UNIT_TOKENS // (seq_len * chunk_rows))
    return chunks * chunk_rows


def num_units(n_rows: int, unit_rows: int) -> int:
    return -(-n_rows // unit_rows)


def unit_range(index: int, n_rows: int, unit_rows: int) -> tuple[int, int]:
    start = index * unit_rows
    return start, min(n_rows, start + unit_rows)


def shard_owns(ordinal: int, shard: tuple[int, int] | None) -> bool:
    """Units are dealt round-robin by their global ordinal, so shards get balanced, disjoint, stable sets."""
    if shard is None:
        return True
    i, n = shard
    return ordinal % n == i


def contiguous_runs(sorted_rows: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) runs of consecutive indices in a sorted unique array."""
    if sorted_rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
    starts = np.concatenate(([0], breaks))
    stops = np.concatenate((breaks, [sorted_rows.size]))
    return [(int(sorted_rows[a]), int(sorted_rows[b - 1]) + 1) for a, b in zip(starts, stops)]
