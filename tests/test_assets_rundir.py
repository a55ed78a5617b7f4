"""Built-in assets and the run directory: the asset commands on `ddk-teacher`, one cache directory, one atomic
directory build, and the run-directory module (records written, read back and refused in one line)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ddk_store.errors import ConfigError, ReportError
from ddk_store.paths import atomic_dir, cache_dir
from stage2_student import rundir

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def _ddk_teacher(*args: str, env_cache: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if env_cache is not None:
        env["DDK_CACHE"] = str(env_cache)
    return subprocess.run([str(BIN / "ddk-teacher"), *args], capture_output=True, text=True, env=env, cwd=REPO)


# ------------------------------------------------------------------------------------------------ assets --- #


def test_asset_commands_are_ddk_teacher_subcommands():
    from stage1_teacher.cli import cli

    assert {"builtin-teacher", "builtin-corpus"} <= set(cli.commands)
    corpus_flags = {o for p in cli.commands["builtin-corpus"].params for o in p.opts}
    assert {"--out", "--max-mb", "--domains", "--relative-paths", "--no-install", "--force"} <= corpus_flags
    teacher_flags = {o for p in cli.commands["builtin-teacher"].params for o in p.opts}
    assert {"--out", "--force"} <= teacher_flags


def test_builtin_teacher_reuses_a_complete_build_and_prints_its_path(tmp_path):
    from stage1_teacher.assets.teacher import write_marker

    d = tmp_path / "teacher"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "llama"}')
    write_marker(d, {"note": "test"})
    res = _ddk_teacher("builtin-teacher", "--out", str(d))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(d.absolute())
    assert "already built" in res.stderr


def test_builtin_teacher_on_a_file_is_one_line_and_exit_2(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    res = _ddk_teacher("builtin-teacher", "--out", str(f))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"'{f}' is a file" in res.stderr


def test_default_locations_come_from_cache_dir(monkeypatch, tmp_path):
    from stage1_teacher.assets.corpus import default_out_dir
    from stage1_teacher.assets.teacher import default_teacher_dir

    monkeypatch.setenv("DDK_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    assert default_teacher_dir() == cache_dir("teacher", "smollm2-135m")
    assert default_out_dir() == cache_dir("corpus")


def test_no_module_resolves_ddk_cache_itself():
    """$DDK_CACHE is read in one place (ddk_store.paths.cache_dir); nothing else hard-codes ~/.cache/ddk."""
    offenders = []
    for root in ("ddk_store", "stage1_teacher", "stage2_student", "bench"):
        for path in (REPO / root).rglob("*.py"):
            if path == REPO / "ddk_store" / "paths.py":
                continue
            text = path.read_text(encoding="utf-8")
            code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
            if 'os.environ.get("DDK_CACHE"' in code or '".cache"' in code:
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    out = tmp_path / "thing"
    with atomic_dir(out, owner_file="a") as tmp:
        (tmp / "a").write_text("1")
    assert (out / "a").read_text() == "1"
    with pytest.raises(RuntimeError), atomic_dir(out, owner_file="a") as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("killed mid-build")
    assert (out / "a").read_text() == "1"
    with atomic_dir(out, owner_file="a") as tmp:
        (tmp / "b").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]  # no temporary or old copy left


def test_a_build_removes_what_a_killed_build_left_a_day_ago_and_nothing_younger(tmp_path):
    # SIGKILL (or a power loss) skips the cleanup: the temporary sibling stays (540 MB for the teacher).
    from ddk_store.paths import STALE_AFTER_S

    out = tmp_path / "thing"
    old_tmp, old_aside, young = tmp_path / ".thing.tmp-a1", tmp_path / ".thing.old-b2", tmp_path / ".thing.tmp-c3"
    other = tmp_path / ".other.tmp-d4"  # another folder's build: not this one's to remove
    for d in (old_tmp, old_aside, young, other):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "f").write_text("x")
    day_ago = time.time() - STALE_AFTER_S - 60
    for d in (old_tmp, old_aside, other):
        for p in (d, d / "sub", d / "sub" / "f"):
            os.utime(p, (day_ago, day_ago))
    os.utime(young, (day_ago, day_ago))  # an old folder with a file written a minute ago: a build in progress
    with atomic_dir(out, owner_file="a") as tmp:
        (tmp / "a").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-d4", ".thing.tmp-c3", "thing"]


def test_atomic_dir_is_on_the_disk_before_its_rename_and_tolerates_mounts_that_cannot_sync(tmp_path, monkeypatch):
    """The build is flushed (files, then its directory) before the rename that publishes it, and the parent after;
    a mount that cannot fsync directories (EINVAL) is skipped, while an I/O error stops the build."""
    import errno

    events, real_fsync, real_rename = [], os.fsync, os.rename

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        events.append(("fsync", path))
        if os.path.isdir(path) and fail_dirs:
            raise OSError(fail_dirs[0], "cannot sync here")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", lambda a, b: events.append(("rename", str(a))) or real_rename(a, b))
    out, fail_dirs = tmp_path / "thing", []
    with atomic_dir(out, owner_file="a") as tmp:
        (tmp / "a").write_text("1")
    publish = events.index(("rename", str(tmp)))
    assert [e for e in events[:publish] if e[0] == "fsync"] == [("fsync", str(tmp / "a")), ("fsync", str(tmp))]
    assert ("fsync", str(tmp_path)) in events[publish:]
    fail_dirs.append(errno.EINVAL)
    with atomic_dir(out, owner_file="a") as tmp:
        (tmp / "a").write_text("2")
    assert (out / "a").read_text() == "2"
    fail_dirs[0] = errno.EIO
    with pytest.raises(OSError, match="cannot sync here"), atomic_dir(out, owner_file="a") as tmp:
        (tmp / "a").write_text("3")
    assert (out / "a").read_text() == "2"


def test_atomic_dir_never_replaces_a_directory_it_did_not_build(tmp_path):
    # `out` now holds only "b", not the owner file "a": a user's directory as far as atomic_dir can tell
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    with pytest.raises(ConfigError, match=r"mine: exists and is not a directory this command built \(no a there\)"):
        with atomic_dir(mine, owner_file="a") as tmp:
            (tmp / "a").write_text("1")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # nothing was built beside it
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_dir(empty, owner_file="a") as tmp:  # an empty directory is fine to fill
        (tmp / "a").write_text("1")
    assert (empty / "a").read_text() == "1"


# ----------------------------------------------------------------------------------------------- run dir --- #

DOMAINS = ["a", "b"]


def _interval(step: int, event: str = rundir.INTERVAL) -> dict:
    ev = {"ppl": [3.0, 4.0], "nll": [1.1, 1.4]}
    return rundir.interval_record(step, step // 2, DOMAINS, ev, [2.0, 2.0], [1.5, 2.0], [0.4, 0.6], [0.4, 0.6],
                                  event=event)


def _write_run(run: Path, final: bool = True) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / rundir.CONFIG_FILE).write_text("store: s\nstudent: m\nmixing: ddk\nalpha: 0.5\n")
    rundir.start_metrics(run)
    rundir.append_record(run, _interval(0))
    for step in (1, 2):
        rundir.append_record(run, rundir.step_record(step, loss=2.0, ce=1.5, kl=0.5, lr=1e-3, grad_norm=1.0,
                                                     tokens_per_s=10.0))
    rundir.append_record(run, _interval(2))
    if final:
        rundir.append_record(run, _interval(2, rundir.FINAL))


def test_records_have_the_documented_keys():
    assert tuple(_interval(0)) == rundir.INTERVAL_KEYS
    rec = rundir.step_record(1, loss=1.0, ce=1.0, kl=0.0, lr=0.1, grad_norm=0.5, tokens_per_s=0.0)
    assert tuple(rec) == rundir.STEP_KEYS
    json.dumps(_interval(0))  # plain JSON


def test_write_then_read_back(tmp_path):
    run = tmp_path / "run"
    _write_run(run, final=False)
    assert not rundir.is_finished(run)
    intervals, final = rundir.read_metrics(run)
    assert [r["step"] for r in intervals] == [0, 2] and final is None
    rundir.append_record(run, _interval(2, rundir.FINAL))
    assert rundir.is_finished(run)
    assert rundir.read_metrics(run)[1]["event"] == "final"
    assert rundir.read_config(run)["mixing"] == "ddk"
    assert [r["event"] for r in rundir.read_records(run)] == ["interval", "step", "step", "interval", "final"]


def test_truncate_drops_records_after_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    _write_run(run)
    rundir.truncate_metrics(run, 1)
    assert [(r["event"], r["step"]) for r in rundir.read_records(run)] == [("interval", 0), ("step", 1)]


def test_report_reads_through_rundir(tmp_path):
    from stage2_student.report import write_report

    run = tmp_path / "run"
    _write_run(run)
    path = write_report(run)
    assert path == run / rundir.REPORT_FILE
    assert (run / rundir.WEIGHTS_PNG).stat().st_size > 0 and (run / rundir.RATIOS_PNG).stat().st_size > 0
    assert "| a | 2.000 | 3.000 | 3.000 | 1.500 | 0.4000 |" in path.read_text()


@pytest.mark.parametrize("line, words", [
    ("{not json", ["metrics.jsonl:2", "not valid JSON"]),
    ("[1, 2]", ["metrics.jsonl:2", "expected a JSON object, got list"]),
    ('{"event": "interval", "step": 1}', ["metrics.jsonl:2", "needs an int 'step' and a non-empty 'domains'"]),
    ('{"event": "final", "step": 1, "domains": ["a"], "ppl_student": [1], "ppl_teacher": [1], "ratio": ["x"], '
     '"weights": [1]}', ["metrics.jsonl:2", "'ratio' must be a list of 1 numbers"]),
])
def test_damaged_metrics_are_refused_in_one_line(tmp_path, line, words):
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.METRICS_FILE).write_text(json.dumps(_interval(0)) + "\n" + line + "\n")
    with pytest.raises(ReportError) as err:
        rundir.check_run_files(run)
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    with pytest.raises(ReportError):
        rundir.read_metrics(run)


def test_missing_or_damaged_run_files(tmp_path):
    rundir.check_run_files(tmp_path)  # nothing there: the report names the missing file
    with pytest.raises(ReportError, match="metrics.jsonl: not found; pass the --out directory"):
        rundir.read_metrics(tmp_path)
    (tmp_path / rundir.CONFIG_FILE).write_text("- a list\n")
    with pytest.raises(ReportError, match="expected a mapping of field: value, got list"):
        rundir.check_run_files(tmp_path)
    (tmp_path / rundir.CONFIG_FILE).write_text("a: [unclosed\n")
    with pytest.raises(ReportError, match="not a readable YAML config"):
        rundir.read_config(tmp_path)
