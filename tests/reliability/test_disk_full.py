"""A local dump into a filesystem that fills up: one clear error line, then the same command resumes once it grows.

The test mounts its own small tmpfs in a private mount namespace (`unshare -m` as root, `unshare -rm` otherwise),
runs the real `ddk-teacher dump` into it until the disk is full, enlarges the filesystem with
`mount -o remount,size=...`, reruns the same command, and compares the result with an uninterrupted dump.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from ddk_store.validate import validate_store
from ddk_testkit.commands import dump_argv
from ddk_testkit.processes import REPO, child_env, last_error_lines
from ddk_testkit.reference import shared_dump_inputs
from ddk_testkit.snapshots import store_differences, store_snapshot
from ddk_testkit.watch import dump_state

#: The uninterrupted store takes about 1 MB of tmpfs pages; half of that fills up in the middle of the dump.
SMALL, BIG = "480k", "16m"

SCENARIO = r"""
set -u
MNT="$1"; OUT="$2"; shift 2
mount -t tmpfs -o size=$SMALL tmpfs "$MNT" || exit 90
trap 'umount "$MNT" 2>/dev/null' EXIT
"$PY" -m stage1_teacher.cli "$@" > /dev/null 2> "$OUT/err1"; echo $? > "$OUT/rc1"
cp -a "$MNT/store" "$OUT/store_when_full" 2>/dev/null
mount -o remount,size=$BIG "$MNT" || exit 91
"$PY" -m stage1_teacher.cli "$@" > /dev/null 2> "$OUT/err2"; echo $? > "$OUT/rc2"
cp -a "$MNT/store" "$OUT/store"
"""


def namespace_prefix() -> list[str] | None:
    """How to run a script that may mount a tmpfs: a private mount namespace (as root, or as a mapped user)."""
    probe = 'd=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs "$d" && umount "$d"; rc=$?; rmdir "$d"; exit $rc'
    candidates = ([["unshare", "-m"], []] if os.geteuid() == 0 else []) + [["unshare", "-rm"]]
    for prefix in candidates:
        if prefix and shutil.which(prefix[0]) is None:
            continue
        try:
            if subprocess.run([*prefix, "sh", "-c", probe], capture_output=True, timeout=30).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def test_disk_full_stops_with_one_clear_error_then_the_same_command_resumes(tmp_path):
    prefix = namespace_prefix()
    if prefix is None:
        pytest.skip("cannot mount a tmpfs here: not root, and `unshare -rm` (user + mount namespaces) is refused")
    teacher, corpora, reference = shared_dump_inputs()

    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    out.mkdir()
    argv = dump_argv(teacher, corpora, mnt / "store")
    env = child_env(PY=sys.executable, SMALL=SMALL, BIG=BIG)
    proc = subprocess.run([*prefix, "bash", "-c", SCENARIO, "scenario", str(mnt), str(out), *argv], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"scenario failed ({proc.returncode}): {proc.stderr[-2000:]}"

    # 1. The full disk: one error line that says what, where and how to go on; non-zero exit; no traceback.
    err1 = (out / "err1").read_text()
    assert int((out / "rc1").read_text()) != 0, err1[-2000:]
    errors = last_error_lines(err1)
    assert len(errors) == 1, err1[-3000:]
    assert "no space left on device" in errors[0] and str(mnt / "store") in errors[0], errors[0]
    assert "rerun the same command to resume" in errors[0], errors[0]
    assert "Traceback" not in err1, err1[-3000:]
    full = dump_state(out / "store_when_full")
    assert full.status == "writing" and 0 < full.done < full.total, full.describe()  # it stopped mid-dump
    print(f"disk full after {full.done}/{full.total} units: {errors[0]}")

    # 2. After the filesystem grew, the same command resumed the rest and finished.
    err2 = (out / "err2").read_text()
    assert int((out / "rc2").read_text()) == 0, err2[-3000:]
    assert f"resuming; shard 0/1: {full.total - full.done} unit(s) to write" in err2, err2[-2000:]
    assert validate_store(str(out / "store")) == []
    assert store_differences(store_snapshot(str(out / "store")), reference) == []
