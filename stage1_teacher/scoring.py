"""The scoring loop: every pending unit goes through ONE ``backend.score_iter`` stream (so the GPU pipeline never
drains at a unit boundary), its token rows read from the store's packed rows in a background thread a few units
ahead, while another background thread encodes and writes each scored unit (a unit is written and marked as soon as
its rows are scored: resume keeps the unit granularity)."""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from typing import Any

import numpy as np

from ddk_store import StoreWriter, Unit
from ddk_store.packed import PackedRows
from ddk_store.retry import retry_call

from .pack import PackedStore


#: Units whose token rows are read ahead of the teacher (a unit is a few MB of int32 rows at most).
READ_AHEAD = 4
#: Scored units encoded and written at once. One unit's write has serial parts (checks, checksums, its objects'
#: I/O, the marker) during which a second unit's chunks keep the codec pool's cores busy (bench/score_cpu.py).
WRITE_THREADS = 2


def unit_tokens(packed: PackedStore, pending: list[Unit], *, storage_options: Mapping[str, Any] | None,
                ahead: int = READ_AHEAD, waited: list[float] | None = None) -> Iterator[tuple[Unit, np.ndarray]]:
    """(unit, its token rows int32 [n, T]) of every pending unit in order, read from the packed rows in a background
    thread up to ``ahead`` units ahead of the caller; ``waited[0]`` accumulates the seconds the caller waited for
    rows not read yet."""
    rows = PackedRows(packed.url, storage_options=storage_options, read_only=True)

    def read(u: Unit) -> np.ndarray:
        return retry_call(lambda: rows.read_rows(u.domain, u.split, u.start, u.stop, seq_len=packed.seq_len,
                                                 chunk_rows=packed.domains[u.domain]["chunk_rows"], dtype=packed.dtype),
                          what=f"reading the packed rows of {u}", url=packed.url)

    with ThreadPoolExecutor(1, thread_name_prefix="ddk-rows") as pool:
        reads = deque(pool.submit(read, u) for u in pending[:ahead])
        try:
            for i, unit in enumerate(pending):
                t = time.perf_counter()
                tokens = reads.popleft().result()
                if waited is not None:
                    waited[0] += time.perf_counter() - t
                if i + ahead < len(pending):
                    reads.append(pool.submit(read, pending[i + ahead]))
                yield unit, tokens
        finally:
            for f in reads:
                f.cancel()


def score_units(backend, writer: StoreWriter, pending: list[Unit], packed: PackedStore, *,
                storage_options: Mapping[str, Any] | None, progress: bool, write_threads: int | None = None
                ) -> tuple[int, float]:
    """Score ``pending`` units in order through one ``backend.score_iter`` stream and hand each scored unit to one
    of ``write_threads`` (default :data:`WRITE_THREADS`) writer threads; returns (tokens, teacher seconds: time inside the stream, less its waits
    for rows).

    At most two scored units wait in memory besides those being written; a write failure stops the scoring and is
    re-raised here. Units may be marked done out of order (each has its own marker).
    """
    seq_len = packed.seq_len
    from tqdm import tqdm

    q: queue.Queue = queue.Queue(maxsize=2)  # bounded: at most two scored units wait in memory
    failure: list[BaseException] = []

    def write_loop() -> None:
        # The writer needs ~1% of a core; at the lowest CPU priority it never takes a core from a CPU teacher
        # (Linux sets niceness per thread; elsewhere this is a no-op).
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        while (item := q.get()) is not None:
            if failure:
                continue  # drain so the producer never blocks after a failure
            try:
                unit, tokens, scored = item
                writer.write_unit(unit, tokens, scored.topk_ids, scored.topk_logprobs, scored.target_logprobs)
            except BaseException as e:  # re-raised in the main thread
                failure.append(e)

    threads = [threading.Thread(target=write_loop, name=f"ddk-store-writer-{i}", daemon=True)
               for i in range(max(1, WRITE_THREADS if write_threads is None else write_threads))]
    for thread in threads:
        thread.start()
    total = sum(u.n_rows for u in pending) * seq_len
    bar = tqdm(total=total, unit="tok", unit_scale=True, disable=not progress, dynamic_ncols=True,
               file=sys.stderr, smoothing=0.1)
    done_rows = 0
    teacher_s = 0.0
    waited = [0.0]  # seconds the stream waited for rows (not the teacher's)
    fed: deque[tuple[Unit, np.ndarray]] = deque()  # units handed to the stream, not yet scored (in order)

    def feed() -> Iterator[np.ndarray]:
        with closing(unit_tokens(packed, pending, storage_options=storage_options, waited=waited)) as units:
            for unit, tokens in units:
                if failure:
                    return  # a write failed: feed no more, the stream ends after what it holds
                fed.append((unit, tokens))
                yield tokens  # [n, T]

    stream = backend.score_iter(feed())
    try:
        while True:
            t, w = time.perf_counter(), waited[0]
            scored = next(stream, None)
            teacher_s += time.perf_counter() - t - (waited[0] - w)
            if scored is None or failure:
                break
            unit, tokens = fed.popleft()  # score_iter yields one result per unit, in order
            q.put((unit, tokens, scored))
            done_rows += unit.n_rows
            bar.set_postfix_str(f"{unit.domain}/{unit.split} rows {done_rows}/{total // seq_len}", refresh=False)
            bar.update(unit.n_rows * seq_len)
    finally:
        try:
            stream.close()
        finally:  # (the writers end even when closing the teacher's stream raises)
            for thread in threads:
                q.put(None)
            for thread in threads:
                thread.join()
            bar.close()
    if failure:
        raise failure[0]
    return done_rows * seq_len, teacher_s
