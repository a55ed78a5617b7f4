"""validate_store: every checksum and invariant of docs/store-format.md, reported with its location."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from . import spec
from .errors import ConfigError, DdkError, StoreIOError, StoreNotFoundError, describe
from .codec import id_dtype
from .crc import crc32_of
from .heldout import heldout_nll, stats_mismatch
from .packed import PACK_PREFIX, PackedRows
from .reader import StoreReader
from .retry import retry_call
from .encodings import Encoding, encoding_for
from .groups import DECODE_ERRORS
from .schema import (MARKER_DONE_COL, MARKER_DTYPE, chunk_key, data_arrays, group_path, group_schema, marker_width,
                     object_indices, sharded)


#: ``Issue.where`` of the problem "the store is not finalized" (its status is still 'writing').
STATUS_ISSUE = "metadata.status"


@dataclass(frozen=True)
class Issue:
    """One problem: where (domain/split/array rows a-b, or a metadata field) and what is wrong."""

    where: str
    what: str
    unit: tuple[str, str, int] | None = None  # (domain, split, unit index) when the problem lies in one unit's data
    unwritten: bool = False  # the unit is not written yet (an unfinished dump), which is not damage
    pack: bool = False  # the problem lies in the packed rows (`_pack`), which readers never use

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def validate_store(url: str, *, storage_options: Mapping[str, Any] | None = None,
                   progress: Callable[[str], None] | None = None) -> list[Issue]:
    """Return every problem found in the store at ``url`` (an empty list means the store is valid).

    Raises:
        StoreIOError: the store cannot be reached or read (credentials, permissions, network): not a problem *in*
            the store, so it is raised as every other command raises it.
        StoreNotFoundError: no store at ``url`` (a mistyped URL): a usage mistake, not damage.
    """
    try:
        reader = StoreReader(url, storage_options=storage_options, allow_incomplete=True, verifying=True)
    except (StoreIOError, StoreNotFoundError, ConfigError):  # unreachable, no store there, or a malformed URL:
        raise  # not a problem in the store (exit 2 like every other command, not verify's 1)
    except DdkError as e:
        return [Issue("store", str(e))]
    meta = reader.meta
    issues: list[Issue] = []

    def read(fn: Callable[[], Any], what: str) -> Any:
        """A read retried through transient store failures (an outage is not damage: past the retry budget it ends
        the check as StoreUnreachableError); a checksum failure comes back at once as zarr's ValueError."""
        return retry_call(fn, what=f"reading {what}", url=url)

    if meta.status != spec.STATUS_COMPLETE:
        issues.append(Issue(STATUS_ISSUE, f"store is '{meta.status}', not '{spec.STATUS_COMPLETE}': it must be "
                                               "resumed and finalized before use"))
    v = meta.tokenizer.vocab_size
    enc = encoding_for(meta)
    for dom in meta.domain_names:
        try:  # the domain's own group document (reads open its splits' groups only)
            reader.check_group(dom)
        except StoreIOError:
            raise
        except DdkError as e:
            issues.append(Issue(dom, str(e)))
        for split in spec.SPLITS:
            path = group_path(dom, split)
            if progress:
                progress(path)
            try:
                lay = reader.layout(dom, split)
                arrays = reader.arrays(dom, split)
            except StoreIOError:
                raise
            except (DdkError, KeyError) as e:
                issues.append(Issue(path, str(e)))
                continue
            if bool(lay.shard_rows) != sharded(meta):  # the layout follows the version the store was created at
                issues.append(Issue(path, f"{'sharded' if lay.shard_rows else 'unsharded'} arrays in a store of format "
                                          f"{meta.format_version} (sharded since "
                                          f"{'.'.join(map(str, spec.SHARDED_SINCE))}): the metadata was edited"))
                continue
            for name, want in group_schema(meta, lay).items():
                problem = want.mismatch(arrays[name].shape, arrays[name].chunks, arrays[name].dtype,
                                        arrays[name].shards)
                if problem:
                    issues.append(Issue(f"{path}/{name}", problem))
            if any(i.where.startswith(path + "/") for i in issues):
                continue
            names = data_arrays(meta.encoding)
            present = {name: reader.chunk_keys(dom, split, name) for name in names}
            try:  # all markers in one read; if one is damaged, unit by unit below
                units = (read(lambda: arrays[spec.ARR_UNITS][:], f"{path} completion markers") if lay.num_units
                         else np.zeros((0, marker_width(meta.encoding)), MARKER_DTYPE))
            except StoreIOError:
                raise
            except Exception:  # noqa: BLE001 - zarr raises a plain ValueError on a checksum mismatch
                units = None
            for u in range(lay.num_units):
                start, stop = u * lay.unit_rows, min(lay.n_rows, (u + 1) * lay.unit_rows)
                where = f"{path} unit {u} (rows {start}-{stop - 1})"
                uid = (dom, split, u)
                try:  # one marker chunk per unit: a damaged one is this unit's problem, not the whole check's
                    marker = units[u] if units is not None else read(lambda: arrays[spec.ARR_UNITS][u],
                                                                     f"{where} completion marker")
                except StoreIOError:
                    raise
                except Exception as e:  # noqa: BLE001 - as above
                    issues.append(Issue(f"{where} {spec.ARR_UNITS}", f"completion marker unreadable ({describe(e)})",
                                        uid))
                    continue
                if marker[MARKER_DONE_COL] != spec.UNIT_DONE:
                    if meta.status == spec.STATUS_COMPLETE:  # finalize saw every marker: this one was lost since
                        issues.append(Issue(f"{where} {spec.ARR_UNITS}", "completion marker lost in a finalized "
                                                                         "store", uid))
                    else:
                        issues.append(Issue(where, "not written (no completion marker)", uid, unwritten=True))
                    continue
                good = {}
                for col, name in enumerate(names, start=MARKER_DONE_COL + 1):
                    arr = arrays[name]
                    missing = [c for c in object_indices(lay, start, stop)
                               if chunk_key(dom, split, name, c) not in present[name]]
                    if missing:
                        issues.append(Issue(f"{where} {name}", f"chunk(s) {missing} missing", uid))
                        continue
                    try:
                        data = read(lambda: arr[start:stop], f"{where} {name}")
                    except StoreIOError:  # an outage past the retry budget (a DdkError, so a ValueError): not damage
                        raise
                    except DECODE_ERRORS as e:  # a failed checksum, or a Blosc frame that does not decode
                        issues.append(Issue(f"{where} {name}", f"chunk fails its crc32c checksum or cannot be "
                                                              f"decoded (flipped or truncated bytes): "
                                                              f"{describe(e)}", uid))
                        continue
                    if crc32_of(data) != int(marker[col]):
                        issues.append(Issue(f"{where} {name}", "content does not match the unit's crc32 "
                                                              "(chunk replaced or data altered)", uid))
                        continue
                    found = _invariants(name, data, enc, v)
                    issues.extend(Issue(f"{where} {name}", msg, uid) for msg in found)
                    if not found:
                        good[name] = data
                if all(a.name in good for a in enc.arrays(v)):  # checks across the encoding's arrays
                    issues.extend(Issue(f"{where} {spec.ARR_TOPK_IDS}", msg, uid) for msg in enc.pair_invariants(good))
            if split == spec.SPLIT_HELDOUT and lay.n_rows and meta.status == spec.STATUS_COMPLETE:
                issues.extend(_check_heldout_stats(reader, dom, arrays))
    if progress:
        progress(PACK_PREFIX)
    packed = PackedRows(url, storage_options=storage_options, read_only=True)
    issues.extend(Issue(where, what, pack=True) for where, what in packed.damaged_chunks(id_dtype(v)))
    return issues


def _invariants(name: str, data: np.ndarray, enc: Encoding, vocab_size: int) -> list[str]:
    if data.size == 0:
        return []
    if name == spec.ARR_TOKENS and data.max() >= vocab_size:
        return [f"token id {int(data.max())} >= vocab_size {vocab_size}"]
    if name == spec.ARR_TARGET_LOGPROBS and (~np.isfinite(data) | (data > 0)).any():
        return ["target log-prob not finite or > 0"]
    if name in (spec.ARR_TOKENS, spec.ARR_TARGET_LOGPROBS):
        return []
    return enc.invariants(name, data, vocab_size)


def _check_heldout_stats(reader: StoreReader, dom: str, arrays: Mapping[str, Any]) -> list[Issue]:
    info = reader.meta.domain(dom)
    try:
        target = retry_call(lambda: arrays[spec.ARR_TARGET_LOGPROBS][:], what=f"reading {dom}/heldout target "
                            "log-probs", url=reader.url)
    except StoreIOError:  # an outage past the retry budget: not damage, and not to be passed over
        raise
    except DECODE_ERRORS:
        return []  # already reported per unit
    if not np.isfinite(target).all():
        return []
    bad = stats_mismatch(info.heldout_nll, info.heldout_ppl, heldout_nll(target))
    if bad is None:
        return []
    field, recorded, computed = bad
    return [Issue(f"metadata.domains[{dom}].{field}", f"records {recorded}, data gives {computed:.6f}")]


__all__ = ["Issue", "STATUS_ISSUE", "validate_store"]
