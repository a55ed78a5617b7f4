"""The read pool (readpool.py) behind the trainer's Prefetcher: several reads in flight, results in plan order and
bitwise equal to serial reads of a real store, bounded memory, read failures re-raised as the usual error, clean
close."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch

from ddk_store import spec
from ddk_store.errors import StoreCorruptError
from ddk_store.testing import StoreFiles, make_tiny_store
from stage2_student.data import Prefetcher, read_batch
from stage2_student.readpool import ReadPool, default_read_workers

DOMAINS = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("readpool") / "store"
    # unit_rows=4 with one row per chunk: every micro-batch touches many chunks of several domains
    return make_tiny_store(str(path), domains=DOMAINS, train_rows=24, heldout_rows=4, seq_len=16, top_k=8,
                           vocab_size=300, unit_rows=4)


def plans_with_repeats(n_plans: int = 24, b: int = 6, rows: int = 24, seed: int = 3) -> list[np.ndarray]:
    """Micro-batch plans ((b, 2): domain, row) over every domain, rows repeated within and across plans."""
    rng = np.random.default_rng(seed)
    plans = []
    for _ in range(n_plans):
        pairs = np.stack([rng.integers(0, len(DOMAINS), b), rng.integers(0, rows, b)], axis=1)
        pairs[-1] = pairs[0]  # a repeat inside the micro-batch
        plans.append(pairs)
    plans[5] = plans[2].copy()  # and a whole micro-batch planned twice
    return plans


def assert_bitwise_equal(a, b) -> None:
    for name in ("tokens", "topk_ids", "topk_logprobs", "domains", "topk_log_tail"):
        x, y = getattr(a, name, None), getattr(b, name, None)
        if x is None and y is None:  # a field the store's encoding does not carry
            continue
        assert x.dtype == y.dtype and x.shape == y.shape, name
        if x.dtype.is_floating_point:
            x, y = x.view(torch.int32), y.view(torch.int32)  # bit patterns, NaN-safe
        assert torch.equal(x, y), name


def test_pool_output_is_bitwise_the_serial_reads_in_plan_order(store):
    plans = plans_with_repeats()
    serial = [read_batch(store, DOMAINS, p) for p in plans]
    for workers, depth in ((1, 1), (4, 2), (8, 16)):
        pooled = list(Prefetcher(store, DOMAINS, plans, depth=depth, workers=workers))
        assert len(pooled) == len(plans)
        for a, b in zip(pooled, serial):
            assert_bitwise_equal(a, b)


def test_results_come_in_plan_order_whatever_order_reads_finish(store):
    """Early items are made slow: they finish after later ones, yet are delivered first."""
    plans = plans_with_repeats(12)
    serial = [read_batch(store, DOMAINS, p) for p in plans]

    def slow_first(item):
        i, pairs = item
        time.sleep(0.05 if i % 3 == 0 else 0.0)
        return read_batch(store, DOMAINS, pairs)

    pool = ReadPool(slow_first, list(enumerate(plans)), workers=4, inflight=6)
    for a, b in zip(pool, serial, strict=True):
        assert_bitwise_equal(a, b)
    assert pool.join(5)


def test_inflight_bounds_the_reads_ahead_of_the_consumer():
    started, lock = [], threading.Lock()
    consumed = [0]
    ahead = []

    def read(i):
        with lock:
            started.append(i)
            ahead.append(len(started) - consumed[0])
        return i

    pool = ReadPool(read, range(40), workers=4, inflight=3)
    out = []
    for x in pool:
        time.sleep(0.002)  # a slow consumer: the workers would run ahead without a bound
        out.append(x)
        with lock:
            consumed[0] += 1
    assert out == list(range(40))
    assert max(ahead) <= 3 + 1  # read or waiting, plus the one the consumer holds


def test_a_failing_read_is_raised_at_its_batch_as_the_usual_error(tmp_path):
    reader = make_tiny_store(str(tmp_path / "store"), domains=DOMAINS, train_rows=24, heldout_rows=4, seq_len=16,
                             top_k=8, vocab_size=300, unit_rows=4)
    chunk, offset, length = StoreFiles(tmp_path / "store").row_chunk_span("beta", spec.SPLIT_TRAIN,
                                                                           spec.ARR_TOPK_IDS, 7)
    data = bytearray(chunk.read_bytes())
    data[offset + length // 2] ^= 0xFF  # a byte of row 7's chunk (inside its shard)
    chunk.write_bytes(bytes(data))
    good = np.array([[0, 1], [2, 3]])
    plans = [good, good, np.array([[0, 2], [1, 7]]), good, good]
    prefetch = Prefetcher(reader, DOMAINS, plans, depth=4, workers=3)
    got = []
    with pytest.raises(StoreCorruptError) as err:
        for batch in prefetch:
            got.append(batch)
    assert len(got) == 2  # the batches before the damaged one were delivered, in order
    msg = str(err.value)
    assert "\n" not in msg and "beta/train/topk_ids" in msg and "crc32c" in msg and "ddk-store verify" in msg
    prefetch.close()
    assert prefetch._pool.join(5)


def test_close_stops_early_and_the_workers_exit():
    started = []

    def read(i):
        started.append(i)
        time.sleep(0.01)
        return i

    pool = ReadPool(read, range(1000), workers=4, inflight=4)
    it = iter(pool)
    assert [next(it), next(it)] == [0, 1]
    pool.close()
    assert pool.join(5)
    assert len(started) < 20
    assert list(it) == []  # nothing more is delivered after close


def test_a_consumer_interrupted_mid_run_leaves_no_thread_behind():
    """Ctrl-C in the training loop: the loop's ``finally`` closes the prefetcher; no worker outlives it."""
    pool = ReadPool(lambda i: time.sleep(0.01) or i, range(100), workers=3, inflight=3)
    with pytest.raises(KeyboardInterrupt):
        try:
            for i in pool:
                if i == 3:
                    raise KeyboardInterrupt
        finally:
            pool.close()
    assert pool.join(5)


#: A child process whose reads run torch calls (0.2 s each) in 4 workers; `{setup}` runs first, `{make}` makes the pool.
_EXITING = textwrap.dedent("""
    import sys, threading, time, torch
    from stage2_student.readpool import ReadPool
    x = torch.randn(256, 256)
    def read(i):
        end = time.monotonic() + 0.2
        while time.monotonic() < end:
            torch.mm(x, x)
        return i
    {setup}
    try:
        {make}
    except KeyboardInterrupt:
        pass
    sys.exit(130)  # neither closed nor joined, as after an exception that skipped the owner's finally
""")


def _exits_cleanly(setup: str, make: str) -> None:
    script = _EXITING.format(setup=setup, make=make)
    for _ in range(3):  # each exit without the guard aborts in nearly every try
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert done.returncode == 130, done.stderr[-2000:]
        assert done.stderr == "", done.stderr[-2000:]  # no "terminate called", no error from an atexit handler


def test_a_process_exiting_while_reads_run_in_torch_exits_with_its_status():
    """A process that exits (a Ctrl-C's 130, an error's 2) while workers are inside torch calls: its pools are
    closed and their reads waited for at exit; a daemon thread still in a torch call when the interpreter finalizes
    aborts the process instead ("terminate called without an active exception", status 134)."""
    _exits_cleanly("", "next(iter(ReadPool(read, range(1000), workers=4, inflight=8)))")


def test_a_pool_whose_thread_start_is_interrupted_stops_its_started_threads():
    """A Ctrl-C while the pool starts its threads (``Thread.start`` waits for each; faked at the third start): the
    threads already running stop and are waited for at exit, though no caller holds the pool to close it, and the
    threads never started are not waited for."""
    setup = textwrap.dedent("""
        real_start, calls = threading.Thread.start, []
        def start(thread):
            calls.append(thread)
            if len(calls) == 3:
                raise KeyboardInterrupt
            real_start(thread)
        threading.Thread.start = start
    """)
    _exits_cleanly(setup, "ReadPool(read, range(1000), workers=4, inflight=8)")


def test_default_read_workers_share_the_cores_between_local_ranks():
    assert default_read_workers(1, cores=16) == 8
    assert default_read_workers(2, cores=16) == 8
    assert default_read_workers(4, cores=16) == 4
    assert default_read_workers(8, cores=16) == 2
    assert default_read_workers(1, cores=1) == 2  # object-store latency overlaps even on one core
    assert default_read_workers(1, cores=2) == 2


@pytest.mark.s3
def test_training_from_s3_through_the_cache_then_from_the_cache_alone(s3_server, tmp_path):
    """`ddk-student train --cache-dir` over a real S3 server: a second run with every chunk gone from the server reads
    them all from the cache and trains exactly as the first run did (same losses, same final weights)."""
    import json

    import s3fs
    from safetensors.numpy import load_file

    from ddk_testkit.commands import train_argv
    from ddk_testkit.processes import run_cli
    from ddk_testkit.stores import student_and_store

    student, store = student_and_store(tmp_path, train_rows=16, heldout_rows=4)
    fs = s3fs.S3FileSystem(**s3_server.storage_options, skip_instance_cache=True)
    prefix = f"{s3_server.BUCKET}/readpool/cached-train"
    fs.put(str(store), prefix, recursive=True)
    opts = [a for k, v in s3_server.storage_options.items() for a in ("--storage-option", f"{k}={v}")]
    cache = tmp_path / "cache"

    def train(out):
        argv = train_argv(f"s3://{prefix}", student, out, steps=6, interval=3, batch_size=4, lr=3e-3, seed=0,
                          eval_batch_size=4, device="cpu", read_workers=3, cache_dir=cache, no_progress=True)
        code, output = run_cli("ddk-student", argv + opts)
        assert code == 0, output[-3000:]
        steps = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in steps if r["event"] == "step"], load_file(out / "model.safetensors")

    losses, weights = train(tmp_path / "first")
    assert any(p.is_file() for p in cache.rglob("*"))
    chunks = [k for k in fs.find(prefix) if not k.endswith("zarr.json")]
    assert chunks
    fs.rm(chunks)  # only the metadata stays on the server
    losses2, weights2 = train(tmp_path / "second")
    assert losses2 == losses
    assert weights2.keys() == weights.keys() and all(np.array_equal(weights[k], weights2[k]) for k in weights)
