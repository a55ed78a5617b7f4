"""The scoring loop: the teacher scores pending units in order while a background thread encodes and writes them."""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Mapping

from ddk_store import StoreWriter, Unit

from .plan import DomainPlan


def score_units(backend, writer: StoreWriter, pending: list[Unit], plans: Mapping[str, DomainPlan], *, seq_len: int,
                progress: bool) -> tuple[int, float]:
    """Score ``pending`` units in order and hand each to a writer thread; returns (tokens, teacher seconds).

    At most two scored units wait in memory; a write failure stops the scoring and is re-raised here.
    """
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
        for unit in pending:
            if failure:
                break
            plan = plans[unit.domain]
            tokens = (plan.train if unit.split == "train" else plan.heldout)[unit.start : unit.stop]  # [n, T]
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
