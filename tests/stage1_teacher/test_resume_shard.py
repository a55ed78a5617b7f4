"""Kill a real dump with SIGKILL and resume it; run two shard processes at once and finalize: both must equal
the uninterrupted single-process store, array for array."""

from __future__ import annotations

import signal
import time

import pytest
from click.testing import CliRunner

from ddk_store import open_store
from ddk_store.cli import main as store_cli
from ddk_store.errors import StoreIncompleteError
from ddk_testkit.commands import dump_argv
from ddk_testkit.processes import run_cli, spawn
from ddk_testkit.snapshots import assert_same_store


def units_done(store) -> tuple[int, int]:
    """(done, total) units of a store being written, read with plain zarr (0, 0 before it exists)."""
    import warnings

    import zarr

    try:
        with warnings.catch_warnings():  # half-written nodes of a live store warn while being listed
            warnings.simplefilter("ignore")
            root = zarr.open_group(str(store), mode="r")
            flags = [split["units"][:, 0] for _, dom in root.groups() for _, split in dom.groups()]
    except Exception:  # not created yet, or caught between two metadata writes
        return 0, 0
    return int(sum((f == 1).sum() for f in flags)), int(sum(f.size for f in flags))


def test_sigkill_mid_dump_then_rerun_equals_uninterrupted(reference_store, tiny_teacher, corpora_yaml, tmp_path):
    store = tmp_path / "store"
    argv = dump_argv(tiny_teacher, corpora_yaml, store)
    proc = spawn("stage1_teacher.cli", argv)
    deadline = time.monotonic() + 180
    done = total = 0
    while time.monotonic() < deadline and proc.poll() is None:
        done, total = units_done(store)
        if done >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"dump ended before it was killed: {err[-2000:]}"
    done, total = units_done(store)
    assert 3 <= done < total, (done, total)
    with pytest.raises(StoreIncompleteError):
        open_store(str(store))  # a killed store is never mistaken for a complete one

    code, err = run_cli("ddk-teacher", argv)  # the same command again
    assert code == 0, err
    assert "resuming" in err and f"{total - done} unit(s) to write" in err
    assert_same_store(store, reference_store)


def test_two_shards_at_once_then_finalize_equals_single_process(reference_store, tiny_teacher, corpora_yaml,
                                                                 tmp_path):
    store = tmp_path / "store"
    procs = [spawn("stage1_teacher.cli", dump_argv(tiny_teacher, corpora_yaml, store, "--shard", f"{i}/2"))
             for i in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    for p, err in zip(procs, errs):
        assert p.returncode == 0, err[-3000:]
        assert "done;" in err
    assert any(f"run `ddk-store finalize {store}`" in e for e in errs), errs
    with pytest.raises(StoreIncompleteError):
        open_store(str(store))  # shards never finalize: only `ddk-store finalize` does
    res = CliRunner().invoke(store_cli, ["finalize", str(store)])
    assert res.exit_code == 0, res.output
    assert_same_store(store, reference_store)


def test_finalize_refuses_while_a_shard_is_missing(tiny_teacher, corpora_yaml, tmp_path):
    store = tmp_path / "store"
    code, err = run_cli("ddk-teacher", dump_argv(tiny_teacher, corpora_yaml, store, "--shard", "0/2",
                                                 "--max-rows-per-domain", "40"))
    assert code == 0, err
    assert "unit(s) of other shards still pending" in err
    res = CliRunner().invoke(store_cli, ["finalize", str(store)])
    assert res.exit_code != 0 and "not written yet" in res.output
    # The missing shard completes the store; the single-process rerun then finalizes it.
    code, err = run_cli("ddk-teacher", dump_argv(tiny_teacher, corpora_yaml, store, "--shard", "1/2",
                                                 "--max-rows-per-domain", "40"))
    assert code == 0 and "all units written" in err
    code, err = run_cli("ddk-teacher", dump_argv(tiny_teacher, corpora_yaml, store, "--max-rows-per-domain", "40"))
    assert code == 0 and "0 unit(s) to write" in err
    assert open_store(str(store)).meta.status == "complete"
