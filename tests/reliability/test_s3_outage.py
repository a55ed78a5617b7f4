"""Object-store outages against a real SeaweedFS server that this module stops and restarts (same port, same data).

(a) The server goes down in the middle of a dump and comes back ten seconds later: the dump retries with backoff,
    finishes, and the store verifies and equals an uninterrupted local dump.
(b) The server goes down for a few seconds while a student trains from it: the trainer's reads retry and training
    completes.
(c) The outage outlasts the retry budget: the dump ends with one clear error line and a non-zero exit, no traceback;
    once the server is back, the same command resumes and finishes with a valid store.
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest

from ddk_store.validate import validate_store
from ddk_testkit.commands import dump_argv, train_argv
from ddk_testkit.processes import last_error_lines, reaped, run_cli, spawn
from ddk_testkit.reference import shared_dump_inputs
from ddk_testkit.s3 import WEED_MISSING, SeaweedS3, weed_binary
from ddk_testkit.snapshots import store_differences, store_snapshot
from ddk_testkit.stores import student_and_store

pytestmark = pytest.mark.s3

#: Every test turns botocore's own retries off (AWS_MAX_ATTEMPTS=1, a standard client setting), so each failed
#: request reaches ddk's retry at once: botocore's jittered backoff could otherwise ride out an outage of random
#: length on its own, and (a) would then see no ddk retry at all.
OUTAGE_S = 10.0
SHORT_OUTAGE_S = 3.0
NO_CLIENT_RETRIES = {"AWS_MAX_ATTEMPTS": "1"}
# Not anchored at a line start: a progress bar on stderr may precede it on the same line.
RETRY_LINE = re.compile(r"ddk: [^\n]*? failed \([^\n]*\); object store unreachable\? retry (\d+) in [\d.]+ s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if weed_binary() is None:
        pytest.skip(WEED_MISSING)
    s3 = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    s3.start()
    try:
        yield s3
    finally:
        s3.stop()


@pytest.fixture(scope="module")
def dump_inputs():
    return shared_dump_inputs()


def s3_dump_argv(server: SeaweedS3, teacher, corpora, prefix: str) -> list[str]:
    pairs = [arg for k, v in server.storage_options.items() for arg in ("--storage-option", f"{k}={v}")]
    return dump_argv(teacher, corpora, f"s3://{server.BUCKET}/{prefix}", *pairs)


def pause_at(proc, predicate, timeout: float, what: str, slice_s: float = 0.1) -> None:
    """Return with ``proc`` paused (SIGSTOP) at the first check where ``predicate`` holds. The process runs in
    slices and every check is made while it is paused: the check itself (an S3 listing) can take longer than a fast
    machine needs to finish the small dump, which would then end before the outage it was meant to meet. A slice is
    as long as the check before it, at least ``slice_s`` seconds: the process runs about half the time wherever the
    listing is slow (with fixed 0.1 s slices and 0.6 s listings it ran a seventh of it, and reaching three units took
    74 s), and never longer between checks than one check takes. The caller resumes it (SIGCONT; :func:`stop_under`
    does)."""
    deadline = time.monotonic() + timeout
    while True:
        proc.send_signal(signal.SIGSTOP)
        if proc.poll() is not None:
            pytest.fail(f"the process ended before {what}: {proc.stderr.read()[-2000:]}")
        t0 = time.monotonic()
        if predicate():
            return
        checked_in = time.monotonic() - t0
        proc.send_signal(signal.SIGCONT)
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(max(slice_s, checked_in))


def stop_under(server: SeaweedS3, proc=None) -> None:
    """Stop the server with the client ``proc`` paused meanwhile: SeaweedFS drains for a moment after SIGTERM and
    still answers, and on a fast machine a small dump could finish in that moment, before any outage it was meant to
    meet. The client resumes against a server that is down."""
    if proc is not None:
        proc.send_signal(signal.SIGSTOP)
    try:
        server.stop()
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGCONT)


def outage(server: SeaweedS3, seconds: float, proc=None) -> float:
    """Stop the server (``proc`` paused while it goes down), keep it down ``seconds``, start it again; returns how
    long S3 was unreachable."""
    t0 = time.monotonic()
    stop_under(server, proc)
    time.sleep(seconds)
    server.start()
    return time.monotonic() - t0


def test_outage_during_dump_is_retried_and_the_dump_finishes(server, dump_inputs):
    teacher, corpora, reference = dump_inputs
    argv = s3_dump_argv(server, teacher, corpora, "a/store")
    with reaped(spawn("stage1_teacher.cli", argv, env=server.client_env(DDK_RETRY_SECONDS="120", **NO_CLIENT_RETRIES))) as proc:
        pause_at(proc, lambda: server.count("a/store", "/units/c/") >= 3, 180, "three units written")
        down = outage(server, OUTAGE_S, proc)
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    retries = RETRY_LINE.findall(err)
    assert retries, f"the dump never hit the outage (no retry logged): {err[-2000:]}"
    assert "Traceback" not in err
    print(f"outage {down:.1f} s survived with {len(retries)} logged retr(ies)")
    url = f"s3://{server.BUCKET}/a/store"
    assert validate_store(url, storage_options=server.storage_options) == []
    assert store_differences(store_snapshot(url, server.storage_options), reference) == []


def s3_training(server, tmp_path: Path, prefix: str, steps: int) -> tuple[list[str], Path]:
    """A tiny student and a tiny store uploaded to s3://BUCKET/prefix; returns (train argv, output dir)."""
    import s3fs

    student, store = student_and_store(tmp_path, train_rows=16, heldout_rows=4)
    fs = s3fs.S3FileSystem(**server.storage_options, skip_instance_cache=True)
    fs.put(str(store), f"{server.BUCKET}/{prefix}", recursive=True)
    url = f"s3://{server.BUCKET}/{prefix}"
    assert validate_store(url, storage_options=server.storage_options) == []
    out = tmp_path / "out"
    argv = train_argv(url, student, out, steps=steps, interval=20, batch_size=4, lr=3e-3, seed=0, eval_batch_size=4,
                      log_every=1, device="cpu")
    return argv, out


def steps_logged(out: Path) -> int:
    try:
        return sum('"event": "step"' in ln for ln in (out / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def test_outage_during_training_reads_is_retried_and_training_completes(server, tmp_path):
    steps = 60
    argv, out = s3_training(server, tmp_path, "b/store", steps)
    env = server.client_env(DDK_RETRY_SECONDS="120", **NO_CLIENT_RETRIES)
    with reaped(spawn("stage2_student.cli", argv, env=env)) as proc:
        pause_at(proc, lambda: steps_logged(out) >= 5, 180, "five training steps")
        at = steps_logged(out)
        down = outage(server, SHORT_OUTAGE_S, proc)
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert at < steps, "training finished before the outage"
    retries = RETRY_LINE.findall(err)
    assert retries, f"training never hit the outage (no retry logged): {err[-2000:]}"
    assert "Traceback" not in err
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["event"] == "step"] == list(range(1, steps + 1))
    assert lines[-1]["event"] == "final" and (out / "model.safetensors").exists()
    print(f"outage {down:.1f} s at step {at} survived with {len(retries)} logged retr(ies)")


def test_credentials_revoked_mid_training_end_in_one_error_line_then_resume(server, tmp_path):
    """The store's secret key is rotated while a run reads from it: every request is now refused (403). The run
    stops at the first refusal (a refusal is never retried) with one line naming the cause and the fix; with the
    new credentials, `--resume` finishes it."""
    steps = 60
    argv, out = s3_training(server, tmp_path, "e/store", steps)
    env = server.client_env(DDK_RETRY_SECONDS="120", **NO_CLIENT_RETRIES)
    with reaped(spawn("stage2_student.cli", argv, env=env)) as proc:
        pause_at(proc, lambda: steps_logged(out) >= 5, 180, "five training steps")
        old_secret = server.secret
        try:
            server.rotate_secret("rotated-secret")
        finally:
            proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
    assert server.secret != old_secret
    assert proc.returncode == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]  # (retry lines may precede it: the restart itself is an outage)
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    assert "access denied" in errors[0] and "s3://ddk/e/store" in errors[0], errors[0]
    assert "check the credentials" in errors[0] and "--resume" in errors[0], errors[0]
    assert steps_logged(out) < steps

    resumed = spawn("stage2_student.cli", [*argv, "--resume"], env=server.client_env(**NO_CLIENT_RETRIES))
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["event"] == "final" and (out / "model.safetensors").exists()


def test_outage_longer_than_the_budget_fails_clearly_then_the_same_command_resumes(server, dump_inputs):
    teacher, corpora, reference = dump_inputs
    argv = s3_dump_argv(server, teacher, corpora, "c/store")
    proc = spawn("stage1_teacher.cli", argv, env=server.client_env(DDK_RETRY_SECONDS="1", **NO_CLIENT_RETRIES))
    try:
        pause_at(proc, lambda: server.count("c/store", "/units/c/") >= 3, 180, "three units written")
        stop_under(server, proc)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=300)
        gave_up_after = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        if server.proc is None:
            server.start()
    assert proc.returncode != 0
    errors = last_error_lines(err)
    assert len(errors) == 1, err[-3000:]
    assert "object store unreachable" in errors[0] and "rerun the same command to resume" in errors[0], errors[0]
    assert "s3://ddk/c/store" in errors[0] and "DDK_RETRY_SECONDS=1" in errors[0], errors[0]
    assert "Traceback" not in err, err[-3000:]
    print(f"gave up {gave_up_after:.1f} s into the outage: {errors[0]}")

    # The server is back: the very same command resumes the units that are left and finalizes.
    code, err = run_cli("ddk-teacher", argv)
    assert code == 0, err
    assert "resuming" in err
    url = f"s3://{server.BUCKET}/c/store"
    assert validate_store(url, storage_options=server.storage_options) == []
    assert store_differences(store_snapshot(url, server.storage_options), reference) == []


# ---------------------------------------------------------------- the retry policy itself (no outage needed)
def test_retry_policy_retries_connection_and_server_errors_only(server, monkeypatch):
    """Classify the exceptions s3fs/aiobotocore really raise: a dead endpoint and 5xx/throttling are retried;
    a missing key, bad credentials and a full disk are not."""
    import errno

    import s3fs
    from botocore.exceptions import EndpointConnectionError
    from s3fs.errors import translate_boto_error

    from ddk_store.errors import StoreNoSpaceError, StoreUnreachableError
    from ddk_store.retry import is_transient, retry_call

    from .test_retry_contracts import client_error as raw_client_error

    def client_error(code: str, status: int) -> BaseException:  # as s3fs raises the server's answer
        return translate_boto_error(raw_client_error(code, status))

    assert is_transient(EndpointConnectionError(endpoint_url=server.endpoint_url))
    assert is_transient(client_error("SlowDown", 503)) and is_transient(client_error("InternalError", 500))
    assert not is_transient(client_error("AccessDenied", 403)) and not is_transient(client_error("NoSuchKey", 404))
    assert not is_transient(OSError(errno.ENOSPC, "No space left on device"))
    # From the live server: a missing key and wrong credentials are permanent.
    good = s3fs.S3FileSystem(**server.storage_options, skip_instance_cache=True)
    bad = s3fs.S3FileSystem(**{**server.storage_options, "secret": "wrong"}, skip_instance_cache=True)
    for fs in (good, bad):
        with pytest.raises(Exception) as info:
            fs.cat(f"{server.BUCKET}/no/such/key")
        assert not is_transient(info.value), repr(info.value)

    # Backoff: exponential with jitter, one log line per retry, then one StoreUnreachableError.
    delays, logs = [], []
    clock = [0.0]
    monkeypatch.setattr("ddk_store.retry.time.monotonic", lambda: clock[0])

    def sleep(d: float) -> None:
        delays.append(d)
        clock[0] += d

    def down() -> None:
        raise EndpointConnectionError(endpoint_url=server.endpoint_url)

    with pytest.raises(StoreUnreachableError) as info:
        retry_call(down, what="writing x", url="s3://ddk/x", budget_s=20, sleep=sleep, log=logs.append)
    assert len(logs) == len(delays) >= 4 and sum(delays) == pytest.approx(20)
    assert all(0.5 * 0.5 * 2 ** i <= d <= 1.5 * 0.5 * 2 ** i for i, d in enumerate(delays[:4])), delays
    assert "object store unreachable" in str(info.value) and "rerun the same command to resume" in str(info.value)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise client_error("ServiceUnavailable", 503)
        return "ok"

    assert retry_call(flaky, what="reading y", url="s3://ddk/y", sleep=lambda d: None, log=logs.append) == "ok"
    with pytest.raises(StoreNoSpaceError, match="no space left on device writing /data/store"):
        retry_call(lambda: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")), what="w", url="/data/store",
                   sleep=sleep)
    # Refusals: named at once, with the fix for an object store or a local directory.
    from ddk_store.errors import StoreAccessError
    from ddk_store.retry import is_access_denied

    assert is_access_denied(client_error("AccessDenied", 403)) and not is_access_denied(client_error("NoSuchKey", 404))
    with pytest.raises(StoreAccessError, match=r"access denied: w at s3://ddk/p .*check the credentials"):
        retry_call(lambda: (_ for _ in ()).throw(client_error("InvalidAccessKeyId", 403)), what="w", url="s3://ddk/p",
                   sleep=sleep)
    with pytest.raises(StoreAccessError, match=r"access denied: w at /data/store .*permissions of the store"):
        retry_call(lambda: (_ for _ in ()).throw(PermissionError(13, "Permission denied")), what="w",
                   url="/data/store", sleep=sleep)
    with pytest.raises(FileNotFoundError):  # permanent: raised unchanged, at once
        retry_call(lambda: good.cat(f"{server.BUCKET}/no/such/key"), what="r", url="s3://ddk/z", sleep=sleep)
    # Any other 4xx answer (a malformed request, a bad bucket name) is one error line naming the status
    from ddk_store.errors import StoreIOError

    for code, status in (("BadRequest", 400), ("InvalidBucketName", 400)):
        with pytest.raises(StoreIOError, match=rf"the object store refused r at s3://ddk/z with HTTP {status} .*"
                                               r"check the URL's bucket and prefix and the endpoint"):
            retry_call(lambda: (_ for _ in ()).throw(client_error(code, status)), what="r", url="s3://ddk/z",
                       sleep=sleep)
    monkeypatch.setenv("DDK_RETRY_SECONDS", "soon")
    with pytest.raises(ValueError, match="DDK_RETRY_SECONDS='soon' is not a number"):
        retry_call(down, what="w", url="s3://ddk/x", sleep=sleep)


def test_an_orphaned_connection_failure_logs_no_traceback_other_orphans_still_do():
    """aiohttp's body-writing task can die with a connection reset after its request already failed (the retry line
    reports that failure); nothing awaits it, so asyncio would print its traceback. Opening an object store installs
    the filter that drops exactly those reports; an orphaned exception of any other kind is still logged."""
    import asyncio
    import gc
    import logging

    from aiohttp.client_exceptions import ClientConnectionResetError

    from ddk_store.storage import open_zarr_store

    open_zarr_store("s3://ddk/never/opened", read_only=True, storage_options={"endpoint_url": "http://127.0.0.1:9"})

    async def fail(exc: BaseException) -> None:
        raise exc

    def orphan(exc: BaseException) -> None:
        loop = asyncio.new_event_loop()
        try:
            task = loop.create_task(fail(exc))
            loop.run_until_complete(asyncio.sleep(0.01))
            assert task.done()
        finally:
            loop.close()
        del task
        gc.collect()

    # A handler on the asyncio logger itself (the filter runs before any handler): other tests' libraries may have
    # reconfigured logging (disabled existing loggers, stopped propagation), which this must not depend on.
    gc.collect()  # tasks other tests left unreferenced are reported now, before this test listens
    log = logging.getLogger("asyncio")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append
    saved = log.disabled, log.level
    log.disabled = False
    log.setLevel(logging.ERROR)
    log.addHandler(handler)
    try:
        orphan(ClientConnectionResetError("Cannot write to closing transport"))
        assert records == []
        bug = ValueError("a bug, not an outage")
        orphan(bug)
        mine = [r for r in records if r.exc_info and r.exc_info[1] is bug]
        assert len(mine) == 1 and "never retrieved" in mine[0].getMessage(), records
    finally:
        log.removeHandler(handler)
        log.disabled, log.level = saved
