"""What "identical" compares: a store, a training run or a file tree reduced to plain values, and differences."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np


# ------------------------------------------------------------------------------------------------ stores
def store_snapshot(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every array (raw stored values) and every metadata document of a store, timestamps and claim removed.

    Two dumps of the same inputs must give equal snapshots: that is what "identical" means for a store.
    """
    import zarr

    from ddk_store import spec
    from ddk_store.storage import open_zarr_store

    store = open_zarr_store(url, read_only=True, storage_options=storage_options)
    root = zarr.open_group(store, mode="r")
    attrs = dict(root.attrs)
    attrs.pop(spec.CLAIM_ATTR, None)
    meta = dict(attrs.get(spec.ROOT_ATTR, {}))
    meta.pop("created_at", None)
    attrs[spec.ROOT_ATTR] = meta
    snap: dict[str, Any] = {"/attrs": attrs}
    for dom_name, dom in sorted(root.groups()):
        snap[f"{dom_name}/attrs"] = dict(dom.attrs)
        for split_name, split in sorted(dom.groups()):
            snap[f"{dom_name}/{split_name}/attrs"] = dict(split.attrs)
            for arr_name, arr in sorted(split.arrays()):
                key = f"{dom_name}/{split_name}/{arr_name}"
                snap[key + "/meta"] = arr.metadata.to_dict()
                snap[key] = arr[...]
    return snap


def store_arrays(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Every stored array (raw, as encoded) keyed ``domain/split/name``: the basis of "array-identical"."""
    return {k: v for k, v in store_snapshot(url, storage_options).items() if isinstance(v, np.ndarray)}



def assert_same_store(a, b) -> None:
    """Two local stores hold equal arrays, the same identity and the same held-out NLLs."""
    from ddk_store import open_store

    xa, xb = store_arrays(str(a)), store_arrays(str(b))
    assert sorted(xa) == sorted(xb)
    for key in xa:
        assert np.array_equal(xa[key], xb[key]), key
    ma, mb = open_store(str(a)).meta, open_store(str(b)).meta
    assert ma.identity() == mb.identity()
    assert [d.heldout_nll for d in ma.domains] == [d.heldout_nll for d in mb.domains]

def store_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two snapshots (empty: identical)."""
    diffs = [f"{k}: only in one store" for k in sorted(set(a) ^ set(b))]
    for k in sorted(set(a) & set(b)):
        x, y = a[k], b[k]
        same = (np.array_equal(x, y, equal_nan=x.dtype.kind == "f") if isinstance(x, np.ndarray)
                else json.dumps(x, sort_keys=True, default=str) == json.dumps(y, sort_keys=True, default=str))
        if not same:
            diffs.append(f"{k}: differs")
    return diffs


# ------------------------------------------------------------------------------------------------ training runs
def run_trajectory(out: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without its wall-clock field (tokens_per_s): what an identical run must reproduce exactly."""
    from stage2_student.rundir import METRICS_FILE

    recs = []
    for ln in (out / METRICS_FILE).read_text().splitlines():
        if ln.strip():
            rec = json.loads(ln)
            rec.pop("tokens_per_s", None)
            recs.append(rec)
    return recs


def run_params(out: Path) -> dict[str, Any]:
    """The exported student's parameters (model.safetensors) as numpy arrays."""
    from safetensors.numpy import load_file

    return load_file(str(out / "model.safetensors"))


def run_differences(out: Path, ref_out: Path) -> list[str]:
    """How a finished run differs from the reference run (empty: same trajectory, bit-identical parameters)."""
    a, b = run_trajectory(out), run_trajectory(ref_out)
    if len(a) != len(b):
        return [f"metrics.jsonl has {len(a)} lines, reference {len(b)}"]
    for ra, rb in zip(a, b):
        if ra != rb:
            return [f"metrics differ at {ra.get('event')} step {ra.get('step')}"]
    pa, pb = run_params(out), run_params(ref_out)
    if pa.keys() != pb.keys():
        return ["parameter names differ"]
    return [f"parameter {k} differs" for k in pa if not np.array_equal(pa[k], pb[k])][:1]


# ------------------------------------------------------------------------------------------------ file trees
def tree_snapshot(path: Path) -> dict[str, str] | None:
    """Every file and directory under ``path`` with a digest of its bytes (None when ``path`` does not exist)."""
    if not path.exists() and not path.is_symlink():
        return None

    def digest(p: Path) -> str:
        try:
            return hashlib.sha256(p.read_bytes()).hexdigest()
        except OSError as e:  # an unreadable file (a case of its own): its link target and error stand for it
            return f"unreadable {os.path.realpath(p)} {e.errno}"

    if path.is_file():
        return {"": digest(path)}
    out: dict[str, str] = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        out[rel] = digest(p) if p.is_file() else "dir"
    return out
