"""Ctrl-C (or a scheduler's SIGTERM) in a real training process: it says which command continues the run and from
which checkpoint, and that command does."""

from __future__ import annotations

import json
import re
import signal
import threading
import time

import pytest

from ddk_store.errors import ConfigError
from ddk_testkit.commands import train_argv
from ddk_testkit.processes import reaped, run_cli, run_process, spawn
from stage2_student import checkpoint
from stage2_student.checkpoint import checkpoint_step, latest_checkpoint
from stage2_student.rundir import claim_run_dir, release_run_dir

STEPS, K = 40, 4


@pytest.fixture(autouse=True)
def sigint_reaches_children():
    """A child started from here gets SIGINT at its default, as from a terminal: a shell that started the suite in
    the background (``cmd &`` without job control) ignores SIGINT, every child inherits the ignore, and the Ctrl-C
    under test would never arrive. A handler (unlike an ignore) is reset at exec, so installing Python's own for the
    test gives the children the default."""
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def interrupt_after_first_checkpoint(argv: list[str], out, sig: int) -> tuple[int, str]:
    """Run ``argv``, deliver ``sig`` once a checkpoint past step 0 exists; (exit status, stderr)."""
    with reaped(spawn("stage2_student.cli", argv)) as proc:
        deadline = time.monotonic() + 300
        while True:  # checked while the process is stopped, so it cannot finish between the check and the signal
            proc.send_signal(signal.SIGSTOP)
            assert proc.poll() is None, f"the run ended before its first checkpoint: {proc.stderr.read()[-2000:]}"
            if latest_checkpoint(out) is not None and checkpoint_step(latest_checkpoint(out)) >= K:
                break
            proc.send_signal(signal.SIGCONT)
            assert time.monotonic() < deadline, "no checkpoint after the first interval"
            time.sleep(0.05)
        proc.send_signal(sig)
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def advice_step(err: str, out) -> int:
    """The checkpoint step the last stderr line names; fails unless the line is the advice, word for word."""
    last = err.strip().splitlines()[-1]
    m = re.fullmatch(rf"ddk-student: interrupted; `ddk-student train --out {re.escape(str(out))} --resume` continues "
                     r"the run from its last checkpoint, step (\d+) with its saved settings", last)
    assert m, last
    assert "Traceback" not in err
    return int(m.group(1))


def test_ctrl_c_names_the_resume_command_and_the_checkpoint_it_continues_from(tmp_path, store_url, student_dir):
    out = tmp_path / "run"
    argv = train_argv(store_url, student_dir, out, steps=STEPS, interval=K, batch_size=4, eval_batch_size=4,
                      seed=0, device="cpu")
    code, err = interrupt_after_first_checkpoint(argv, out, signal.SIGINT)
    assert code == 130, err[-2000:]
    named = advice_step(err, out)
    assert named % K == 0 and K <= named <= checkpoint_step(latest_checkpoint(out)) < STEPS

    # The command it names, exactly: no other flag is needed, and the run ends where an uninterrupted one does.
    done = run_process("stage2_student.cli", ["train", "--out", str(out), "--resume"], timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["event"] == "step"]
    assert steps == list(range(1, STEPS + 1))  # every step once: none lost, none logged twice
    assert records[-1]["event"] == "final" and records[-1]["step"] == STEPS


def test_sigterm_from_a_scheduler_ends_the_run_as_ctrl_c_does_with_exit_143(tmp_path, store_url, student_dir):
    out = tmp_path / "run"
    argv = train_argv(store_url, student_dir, out, steps=STEPS, interval=K, batch_size=4, eval_batch_size=4,
                      seed=0, device="cpu")
    code, err = interrupt_after_first_checkpoint(argv, out, signal.SIGTERM)
    assert code == 143, err[-2000:]  # 128 + SIGTERM, not a silent death by the signal (-15)
    assert advice_step(err, out) % K == 0


def test_ctrl_c_while_the_last_checkpoint_is_written_waits_for_it_and_says_the_run_finished(
        tmp_path, store_url, student_dir, monkeypatch):
    out, steps = tmp_path / "run", 4
    real_save = checkpoint.save_file

    def save_file(tensors, path, *args, **kwargs):  # the background writer's call, at the final checkpoint's weights
        if f"step-{steps:08d}.tmp" in path and path.endswith("model.safetensors"):
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # Ctrl-C, while the main thread waits
            time.sleep(0.5)  # (and the write is still under way when it lands)
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    result = run_cli("ddk-student", train_argv(store_url, student_dir, out, steps=steps, interval=2, batch_size=4,
                                              eval_batch_size=4, seed=0, device="cpu", no_progress=True))
    assert result.code == 130, result.output[-2000:]
    last = result.output.strip().splitlines()[-1]
    assert last == (f"ddk-student: interrupted; the run had finished: its student and last checkpoint (step {steps}) "
                    f"are saved in {out}; `ddk-student report {out}` writes report.md and its plots"), last
    assert checkpoint_step(latest_checkpoint(out)) == steps  # committed before the process said so
    assert not list((out / "checkpoints").glob("*.tmp"))


def test_a_second_training_of_a_run_in_progress_is_refused(tmp_path, store_url, student_dir):
    out = tmp_path / "run"
    argv = train_argv(store_url, student_dir, out, steps=STEPS, interval=K, batch_size=4, eval_batch_size=4,
                      seed=0, device="cpu")
    with reaped(spawn("stage2_student.cli", argv)) as proc:
        deadline = time.monotonic() + 300
        while not (out / "config.yaml").is_file():  # written once the run holds its directory
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()  # (reading the stderr of a live process would wait for it forever)
                pytest.fail(f"no run directory was written: {proc.communicate()[1][-2000:]}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGSTOP)
        try:
            for again in (["train", "--out", str(out), "--resume"], [*argv, "--overwrite"]):
                second = run_process("stage2_student.cli", again, timeout=120)
                assert second.returncode == 2, second.stderr[-2000:]
                last = second.stderr.strip().splitlines()[-1]
                assert f"--out {out}: `ddk-student train` (pid {proc.pid} on " in last, last
                assert "is training this run right now" in last, last
            assert (out / "config.yaml").is_file()  # --overwrite deleted nothing
            with pytest.raises(ConfigError, match="is training this run right now"):
                claim_run_dir(out)  # (this process sees the same lock)
        finally:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
    # Once it is gone (SIGKILL included), the run is free again
    release_run_dir(claim_run_dir(out))


def test_a_released_lock_leaves_no_file_and_one_opened_before_its_release_is_not_taken(tmp_path, monkeypatch):
    import fcntl
    import os

    from ddk_store.paths import cache_dir

    monkeypatch.setenv("DDK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    fd = claim_run_dir(out)
    [lock] = list(cache_dir("locks").iterdir())
    stale = os.open(lock, os.O_RDWR)  # a second process that opened the file just before the first let go
    release_run_dir(fd)
    assert not lock.exists()  # one file per run directory no longer piles up in the cache
    fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # it gets the old file's lock, which guards nothing now...
    try:
        again = claim_run_dir(out)  # ...so a claim opens a new file, which it holds alone
        assert again is not None and lock.exists() and os.fstat(again).st_ino != os.fstat(stale).st_ino
        with pytest.raises(ConfigError, match="is training this run right now"):
            claim_run_dir(out)
        release_run_dir(again)
    finally:
        os.close(stale)


def test_a_claim_whose_file_is_removed_before_it_locks_it_opens_the_new_one(tmp_path, monkeypatch):
    import fcntl
    import os

    from ddk_store.paths import cache_dir

    monkeypatch.setenv("DDK_CACHE", str(tmp_path / "cache"))
    real, calls = fcntl.flock, []

    def released_meanwhile(fd, op):  # the holder lets go between this claim's open and its flock
        if not calls:
            for f in cache_dir("locks").iterdir():
                f.unlink()
        calls.append(fd)
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", released_meanwhile)
    fd = claim_run_dir(tmp_path / "run")
    [lock] = list(cache_dir("locks").iterdir())
    assert len(calls) == 2 and os.fstat(fd).st_ino == os.stat(lock).st_ino  # the second try holds the file there
    release_run_dir(fd)
    assert not lock.exists()


def test_a_lock_file_that_is_a_link_is_refused_not_followed(tmp_path, monkeypatch):
    import hashlib

    from ddk_store.paths import cache_dir

    monkeypatch.setenv("DDK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    victim = tmp_path / "victim.txt"
    victim.write_text("someone's file\n")
    place = cache_dir("locks") / (hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:32] + ".lock")
    place.parent.mkdir(parents=True)
    place.symlink_to(victim)  # planted in a cache shared between users
    with pytest.raises(ConfigError, match=f"its lock file {re.escape(str(place))} is a symbolic link; remove it"):
        claim_run_dir(out)
    assert victim.read_text() == "someone's file\n"
