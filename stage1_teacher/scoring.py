"""The scoring loop: the teacher scores pending units in order, their token rows read from the store's packed rows one
unit ahead, while a background thread encodes and writes them."""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ddk_store import StoreWriter, Unit
from ddk_store.packed import PackedRows
from ddk_store.retry import retry_call

from .pack import PackedStore


def unit_tokens(packed: PackedStore, pending: list[Unit], *,
                storage_options: Mapping[str, Any] | None) -> Iterator[tuple[Unit, np.ndarray]]:
    """(unit, its token rows int32 [n, T]) of every pending unit in order, read from the packed rows in a background
    thread one unit ahead of the caller."""
    rows = PackedRows(packed.url, storage_options=storage_options, read_only=True)

    def read(u: Unit) -> np.ndarray:
        return retry_call(lambda: rows.read_rows(u.domain, u.split, u.start, u.stop, seq_len=packed.seq_len,
                                                 chunk_rows=packed.domains[u.domain]["chunk_rows"], dtype=packed.dtype),
                          what=f"reading the packed rows of {u}", url=packed.url)

    with ThreadPoolExecutor(1, thread_name_prefix="ddk-rows") as pool:
        ahead = pool.submit(read, pending[0]) if pending else None
        for i, unit in enumerate(pending):
            tokens = ahead.result()
            ahead = pool.submit(read, pending[i + 1]) if i + 1 < len(pending) else None
            yield unit, tokens


def score_units(backend, writer: StoreWriter, pending: list[Unit], packed: PackedStore, *,
                storage_options: Mapping[str, Any] | None, progress: bool) -> tuple[int, float]:
    """Score ``pending`` units in order and hand each to a writer thread; returns (tokens, teacher seconds).

    At most two scored units wait in memory; a write failure stops the scoring and is re-raised here.
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

    thread = threading.Thread(target=write_loop, name="ddk-store-writer", daemon=True)
    thread.start()
    total = sum(u.n_rows for u in pending) * seq_len
    bar = tqdm(total=total, unit="tok", unit_scale=True, disable=not progress, dynamic_ncols=True,
               file=sys.stderr, smoothing=0.1)
    done_rows = 0
    teacher_s = 0.0
    try:
        for unit, tokens in unit_tokens(packed, pending, storage_options=storage_options):  # tokens [n, T]
            if failure:
                break
            t = time.perf_counter()
            scored = backend.score(tokens)
            teacher_s += time.perf_counter() - t
            q.put((unit, tokens, scored))
            done_rows += unit.n_rows
            bar.set_postfix_str(f"{unit.domain}/{unit.split} rows {done_rows}/{total // seq_len}", refresh=False)
            bar.update(unit.n_rows * seq_len)
    finally:
        q.put(None)
        thread.join()
        bar.close()
    if failure:
        raise failure[0]
    return done_rows * seq_len, teacher_s
