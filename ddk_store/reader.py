"""StoreReader: read-only, random access by (domain, split, rows), decoded to numpy, corruption detected."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import zarr
from zarr.core.sync import sync

from . import codec, spec
from .errors import StoreCorruptError, StoreFormatError, StoreIncompleteError, StoreNotFoundError
from .groups import GroupLayout, group_path, read_group_layout, read_root_doc, root_meta_from_doc
from .meta import StoreMeta
from .storage import normalize_url, open_zarr_store


@dataclass(frozen=True)
class RowBatch:
    """Decoded rows. n rows, T = seq_len, P = T - 1 positions, K = top_k."""

    tokens: np.ndarray  #: int32 [n, T]
    topk_ids: np.ndarray  #: int32 [n, P, K]
    topk_logprobs: np.ndarray  #: float32 [n, P, K], nats
    target_logprobs: np.ndarray  #: float32 [n, P], teacher log-prob of tokens[:, 1:]


def _contiguous_runs(sorted_rows: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) runs of consecutive indices in a sorted unique array."""
    if sorted_rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
    starts = np.concatenate(([0], breaks))
    stops = np.concatenate((breaks, [sorted_rows.size]))
    return [(int(sorted_rows[a]), int(sorted_rows[b - 1]) + 1) for a, b in zip(starts, stops)]


class StoreReader:
    """Read-only view of a complete store."""

    def __init__(self, url: str, *, storage_options: Mapping[str, Any] | None = None,
                 allow_incomplete: bool = False) -> None:
        self.url = normalize_url(url)
        self._zstore = open_zarr_store(self.url, read_only=True, storage_options=storage_options)
        doc = read_root_doc(self._zstore)
        if doc is None:
            raise StoreNotFoundError(
                f"no ddk store at {self.url} (no root zarr.json); check the URL, or create one with `ddk-teacher dump`"
            )
        self.meta: StoreMeta = root_meta_from_doc(doc, self.url)
        if self.meta.status != spec.STATUS_COMPLETE and not allow_incomplete:
            raise StoreIncompleteError(
                f"store {self.url} is incomplete (status '{self.meta.status}'): its dump was interrupted or is still "
                "running. Resume it by rerunning the same `ddk-teacher dump ... --store` command; after sharded dumps "
                f"run `ddk-store finalize {self.url}`"
            )
        self._root = zarr.open_group(self._zstore, mode="r")
        self._layouts: dict[tuple[str, str], GroupLayout] = {}
        self._arrays: dict[tuple[str, str], dict[str, Any]] = {}

    # ------------------------------------------------------------- structure
    @property
    def domains(self) -> list[str]:
        return list(self.meta.domain_names)

    @property
    def seq_len(self) -> int:
        return self.meta.seq_len

    @property
    def top_k(self) -> int:
        return self.meta.top_k

    @property
    def vocab_size(self) -> int:
        return self.meta.tokenizer.vocab_size

    def layout(self, domain: str, split: str) -> GroupLayout:
        key = (domain, split)
        if key not in self._layouts:
            if domain not in self.meta.domain_names:
                raise KeyError(f"no domain {domain!r} in store {self.url}; domains: {self.domains}")
            self._layouts[key] = read_group_layout(self._root, domain, split)
        return self._layouts[key]

    def num_rows(self, domain: str, split: str) -> int:
        return self.layout(domain, split).n_rows

    def arrays(self, domain: str, split: str) -> dict[str, zarr.Array]:
        key = (domain, split)
        if key not in self._arrays:
            lay = self.layout(domain, split)
            grp = self._root[group_path(domain, split)]
            arrs = {}
            for name in (*spec.DATA_ARRAYS, spec.ARR_UNITS):
                try:
                    arrs[name] = grp[name]
                except KeyError:
                    raise StoreFormatError(f"array '{group_path(domain, split)}/{name}' is missing") from None
            if arrs[spec.ARR_TOKENS].shape[0] != lay.n_rows:
                raise StoreFormatError(f"array '{group_path(domain, split)}/tokens' has {arrs[spec.ARR_TOKENS].shape[0]} "
                                       f"rows, layout says {lay.n_rows}")
            self._arrays[key] = arrs
        return self._arrays[key]

    # ------------------------------------------------------------- reading
    def read_stored(self, domain: str, split: str, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Raw stored (encoded) arrays for sorted unique ``rows``: one concurrent fetch for all four arrays."""
        arrays = self.arrays(domain, split)
        runs = _contiguous_runs(rows)

        async def fetch(name: str) -> np.ndarray:
            arr = arrays[name]._async_array
            if len(runs) == 1:
                return await arr.getitem(slice(*runs[0]))
            return await arr.get_orthogonal_selection((rows,) + (slice(None),) * (len(arr.shape) - 1))

        async def fetch_all() -> list[np.ndarray]:
            return await asyncio.gather(*(fetch(name) for name in spec.DATA_ARRAYS))

        try:
            out = sync(fetch_all())
        except ValueError as e:  # crc32c mismatch or undecodable chunk
            raise StoreCorruptError(
                f"{group_path(domain, split)} rows {rows[:8].tolist()}{'...' if rows.size > 8 else ''}: "
                f"corrupt chunk ({e}); run `ddk-store verify {self.url}` to locate every damaged unit"
            ) from None
        return dict(zip(spec.DATA_ARRAYS, out))

    def read_rows(self, domain: str, split: str, rows: Sequence[int] | np.ndarray, *, order: str = "stored") -> RowBatch:
        """Decode rows (any order, repeats allowed) of one domain/split.

        Args:
            order: "stored" keeps the encoding's entry order within a position (ascending id for the default
                encoding: fine for losses); "rank" sorts entries by descending log-prob (slower).
        Raises:
            StoreCorruptError: a chunk fails its checksum, or a chunk is missing (fill values decoded).
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        n_rows = self.num_rows(domain, split)
        if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
            raise IndexError(f"{group_path(domain, split)}: rows must be in [0, {n_rows}), got {rows.min()}..{rows.max()}")
        uniq, inverse = np.unique(rows, return_inverse=True)
        st = self.read_stored(domain, split, uniq)
        meta = self.meta
        v = meta.tokenizer.vocab_size
        bad = []
        if st[spec.ARR_TOKENS].size and st[spec.ARR_TOKENS].max() >= v:
            bad.append(spec.ARR_TOKENS)
        if np.isnan(st[spec.ARR_TARGET_LOGPROBS]).any():
            bad.append(spec.ARR_TARGET_LOGPROBS)
        lp = st[spec.ARR_TOPK_LOGPROBS]
        if lp.size and (np.isnan(lp).any() if lp.dtype.kind == "f" else lp.max() > spec.Q8_MAX):
            bad.append(spec.ARR_TOPK_LOGPROBS)
        topk = codec.decode_topk(st[spec.ARR_TOPK_IDS], lp, encoding=meta.encoding, scale=meta.logprob_scale)
        if topk.ids.size and topk.ids.max() >= v:
            bad.append(spec.ARR_TOPK_IDS)
        if bad:
            raise StoreCorruptError(
                f"{group_path(domain, split)} rows {uniq[:8].tolist()}: missing chunk(s) in {bad} (fill values read); "
                f"run `ddk-store verify {self.url}` to locate every damaged unit"
            )
        if order == "rank":
            topk = codec.sort_by_rank(topk)
        elif order != "stored":
            raise ValueError(f"order must be 'stored' or 'rank', got {order!r}")
        same = uniq.size == rows.size and np.array_equal(uniq, rows)
        pick = (lambda a: a) if same else (lambda a: a[inverse])
        return RowBatch(
            tokens=pick(st[spec.ARR_TOKENS].astype(np.int32)),
            topk_ids=pick(topk.ids),
            topk_logprobs=pick(topk.logprobs),
            target_logprobs=pick(st[spec.ARR_TARGET_LOGPROBS]),
        )

    def bytes_on_disk(self) -> int:
        """Total stored bytes under the store prefix."""
        return int(sync(self._zstore.getsize_prefix("")))


def open_store(url: str, *, storage_options: Mapping[str, Any] | None = None,
               allow_incomplete: bool = False) -> StoreReader:
    """Open a store read-only. Raises StoreNotFoundError, StoreIncompleteError, StoreFormatError/StoreVersionError."""
    return StoreReader(url, storage_options=storage_options, allow_incomplete=allow_incomplete)
