"""validate_store: every checksum and invariant of docs/store-format.md, reported with its location."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
from zarr.core.sync import sync

from . import codec, spec
from .errors import DdkError
from .groups import array_specs, crc32_of, group_path
from .reader import StoreReader


@dataclass(frozen=True)
class Issue:
    """One problem: where (domain/split/array rows a-b, or a metadata field) and what is wrong."""

    where: str
    what: str
    unit: tuple[str, str, int] | None = None  # (domain, split, unit index) when the problem lies in one unit's data

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def _chunk_keys(reader: StoreReader, domain: str, split: str, name: str) -> set[str]:
    prefix = f"{group_path(domain, split)}/{name}/c/"

    async def collect() -> set[str]:
        return {k async for k in reader._zstore.list_prefix(prefix)}

    return sync(collect())


def validate_store(url: str, *, storage_options: Mapping[str, Any] | None = None,
                   progress: Callable[[str], None] | None = None) -> list[Issue]:
    """Return every problem found in the store at ``url`` (an empty list means the store is valid)."""
    try:
        reader = StoreReader(url, storage_options=storage_options, allow_incomplete=True)
    except DdkError as e:
        return [Issue("store", str(e))]
    meta = reader.meta
    issues: list[Issue] = []
    if meta.status != spec.STATUS_COMPLETE:
        issues.append(Issue("metadata.status", f"store is '{meta.status}', not '{spec.STATUS_COMPLETE}': it must be "
                                               "resumed and finalized before use"))
    v = meta.tokenizer.vocab_size
    for dom in meta.domain_names:
        for split in spec.SPLITS:
            path = group_path(dom, split)
            if progress:
                progress(path)
            try:
                lay = reader.layout(dom, split)
                arrays = reader.arrays(dom, split)
            except (DdkError, KeyError) as e:
                issues.append(Issue(path, str(e)))
                continue
            for name, want in array_specs(meta, lay).items():
                arr = arrays[name]
                if tuple(arr.shape) != tuple(want["shape"]) or tuple(arr.chunks) != tuple(want["chunks"]):
                    issues.append(Issue(f"{path}/{name}", f"shape {arr.shape} chunks {arr.chunks}, expected "
                                                          f"{want['shape']} chunks {want['chunks']}"))
                elif np.dtype(arr.dtype) != np.dtype(want["dtype"]):
                    issues.append(Issue(f"{path}/{name}", f"dtype {arr.dtype}, expected {np.dtype(want['dtype'])}"))
            if any(i.where.startswith(path + "/") for i in issues):
                continue
            present = {name: _chunk_keys(reader, dom, split, name) for name in spec.DATA_ARRAYS}
            units = arrays[spec.ARR_UNITS][:] if lay.num_units else np.zeros((0, 5), dtype="<u4")
            for u in range(lay.num_units):
                start, stop = u * lay.unit_rows, min(lay.n_rows, (u + 1) * lay.unit_rows)
                where = f"{path} unit {u} (rows {start}-{stop - 1})"
                uid = (dom, split, u)
                if units[u, 0] != spec.UNIT_DONE:
                    issues.append(Issue(where, "not written (no completion marker)", uid))
                    continue
                for col, name in enumerate(spec.CHECKSUMMED_ARRAYS, start=1):
                    arr = arrays[name]
                    nd = len(arr.shape)
                    missing = [c for c in range(start // lay.chunk_rows, -(-stop // lay.chunk_rows))
                               if f"{path}/{name}/c/{c}" + "/0" * (nd - 1) not in present[name]]
                    if missing:
                        issues.append(Issue(f"{where} {name}", f"chunk(s) {missing} missing", uid))
                        continue
                    try:
                        data = arr[start:stop]
                    except ValueError as e:
                        issues.append(Issue(f"{where} {name}", f"chunk fails its crc32c checksum or cannot be "
                                                              f"decoded (flipped or truncated bytes): {e}", uid))
                        continue
                    if crc32_of(data) != int(units[u, col]):
                        issues.append(Issue(f"{where} {name}", "content does not match the unit's crc32 "
                                                              "(chunk replaced or data altered)", uid))
                        continue
                    issues.extend(Issue(f"{where} {name}", msg, uid)
                                  for msg in _invariants(name, data, meta.encoding, v))
            if split == spec.SPLIT_HELDOUT and lay.n_rows and meta.status == spec.STATUS_COMPLETE:
                issues.extend(_check_heldout_stats(reader, dom, arrays))
    return issues


def _invariants(name: str, data: np.ndarray, encoding: str, vocab_size: int) -> list[str]:
    if data.size == 0:
        return []
    if name == spec.ARR_TOKENS and data.max() >= vocab_size:
        return [f"token id {int(data.max())} >= vocab_size {vocab_size}"]
    if name == spec.ARR_TOPK_IDS:
        if encoding == spec.ENC_IDSORT_Q8:
            if (data[..., 1:] == 0).any():
                return ["repeated top-k id within a position (zero delta)"]
            ids = np.cumsum(data, axis=-1, dtype=np.int64)
        else:
            ids = data.astype(np.int64)
        if ids.max() >= vocab_size:
            return [f"top-k id {int(ids.max())} >= vocab_size {vocab_size}"]
    if name == spec.ARR_TOPK_LOGPROBS:
        if data.dtype.kind == "f" and (~np.isfinite(data) | (data > 0)).any():
            return ["top-k log-prob not finite or > 0"]
        if data.dtype.kind == "u" and data.max() > spec.Q8_MAX:
            return [f"quantized log-prob {int(data.max())} > {spec.Q8_MAX} (fill value: missing data)"]
    if name == spec.ARR_TARGET_LOGPROBS and (~np.isfinite(data) | (data > 0)).any():
        return ["target log-prob not finite or > 0"]
    return []


def _check_heldout_stats(reader: StoreReader, dom: str, arrays: Mapping[str, Any]) -> list[Issue]:
    info = reader.meta.domain(dom)
    try:
        target = arrays[spec.ARR_TARGET_LOGPROBS][:]
    except ValueError:
        return []  # already reported per unit
    if not np.isfinite(target).all():
        return []
    nll = float(-np.mean(target, dtype=np.float64))
    if info.heldout_nll is None or not math.isclose(info.heldout_nll, nll, rel_tol=1e-6, abs_tol=1e-9):
        return [Issue(f"metadata.domains[{dom}].heldout_nll", f"records {info.heldout_nll}, data gives {nll:.6f}")]
    if info.heldout_ppl is None or not math.isclose(info.heldout_ppl, math.exp(nll), rel_tol=1e-6):
        return [Issue(f"metadata.domains[{dom}].heldout_ppl", f"records {info.heldout_ppl}, data gives {math.exp(nll):.6f}")]
    return []


__all__ = ["Issue", "validate_store", "codec"]
