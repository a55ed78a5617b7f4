"""ReadPool: run a read function over a list of planned items in N worker threads, several items in flight, and hand
the results back in plan order.

Why threads: a micro-batch read is zarr chunk fetches (object-store I/O, or file reads) plus blosc decompression and
numpy decoding, all of which release the GIL; threads share the reader's open arrays and connection pool, and need
no pickling. The order of the results is the order of the plan whatever order the reads finish in, so training
sees exactly the batches of a serial reader.

Memory is bounded: at most ``inflight`` items are being read or waiting to be consumed. A read that raises hands
its exception to the consumer, which re-raises it when it reaches that item (the items before it are delivered
first); no item after a failed one is started. A consumer waiting for an item that no worker will hand back (none
is alive, or the one that took it dropped it) raises instead of waiting forever. ``close()`` (also on Ctrl-C, via
the caller's ``finally``) stops handing out work and returns at once: reads already running finish in their daemon
threads and are dropped (``join`` waits for them; the trainer's Prefetcher waits up to 5 s).

No worker may still be reading when the interpreter exits: a daemon thread inside a torch call that released the
GIL is ended by the interpreter's finalization through C++ frames that cannot unwind, and the process aborts
("terminate called without an active exception", exit 134) instead of exiting with its status (130 after a Ctrl-C).
So a pool interrupted while it starts its threads closes itself, and at exit every pool still open is closed and
its running reads are waited for (:func:`_close_pools_at_exit`).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Worker threads per process are capped here: beyond it the decoding, not the I/O, is the bottleneck.
MAX_DEFAULT_WORKERS = 8
#: Seconds the interpreter's exit waits for the reads still running: a read's torch calls take milliseconds; a read
#: stuck retrying an unreachable store is in Python, which the exit may end, and must not hold the exit for long.
EXIT_WAIT_S = 5.0

#: Seconds between the consumer's checks that some worker is still alive while it waits for a result.
_LIVENESS_S = 1.0

_OPEN: weakref.WeakSet[ReadPool] = weakref.WeakSet()  # pools whose workers may still run (their threads hold them)


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_read_workers(local_ranks: int = 1, cores: int | None = None) -> int:
    """Worker threads of one rank when ``--read-workers`` is not given: the host's cores shared by the ``local_ranks``
    training processes on it, at least 2 (so object-store latency overlaps even on one core), at most 8."""
    cores = available_cores() if cores is None else cores
    return max(2, min(MAX_DEFAULT_WORKERS, cores // max(1, local_ranks)))


class _Failed:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class ReadPool(Generic[T, R]):
    """Iterate ``read(item)`` for every item of ``items``, in order, computed by ``workers`` daemon threads with at
    most ``inflight`` results read ahead of the consumer. One pass; iterate it once."""

    def __init__(self, read: Callable[[T], R], items: Sequence[T], *, workers: int, inflight: int,
                 name: str = "ddk-read") -> None:
        if workers < 1 or inflight < 1:
            raise ValueError(f"ReadPool needs workers >= 1 and inflight >= 1, got {workers} and {inflight}")
        self._read = read
        self._items = list(items)
        self._inflight = inflight
        self._cond = threading.Condition()
        self._done: dict[int, R | _Failed] = {}  # index -> result, until the consumer takes it
        self._next_start = 0  # next index a worker will read
        self._next_out = 0  # next index the consumer will take
        self._reading: set[int] = set()  # indexes a worker has taken and not yet handed back
        self._failed = False  # a read raised: start nothing after it
        self._closed = False
        n = max(1, min(workers, inflight, len(self._items)))
        self._threads = [threading.Thread(target=self._work, daemon=True, name=f"{name}-{i}") for i in range(n)]
        _OPEN.add(self)
        try:
            for t in self._threads:
                t.start()  # (waits for the thread to run: a Ctrl-C can land here)
        except BaseException:
            self.close()  # no owner will ever close a pool whose construction failed (the exit still joins it)
            raise

    def _take_index(self) -> int | None:
        """The next index to read, waiting while ``inflight`` items are ahead of the consumer; None: nothing left."""
        with self._cond:
            while True:
                if self._closed or self._failed or self._next_start >= len(self._items):
                    return None
                if self._next_start - self._next_out < self._inflight:
                    i = self._next_start
                    self._next_start += 1
                    self._reading.add(i)
                    return i
                self._cond.wait(_LIVENESS_S)  # (a timeout: a wake-up lost to a bug delays a read, never hangs it)

    def _work(self) -> None:
        while (i := self._take_index()) is not None:
            try:
                result: R | _Failed = self._read(self._items[i])
            except BaseException as e:  # handed to the consumer, which re-raises it with its traceback
                result = _Failed(e)
            with self._cond:
                self._reading.discard(i)
                if self._closed:
                    return
                self._done[i] = result
                if isinstance(result, _Failed):
                    self._failed = True
                self._cond.notify_all()

    def __iter__(self) -> Iterator[R]:
        while True:
            with self._cond:
                if self._next_out >= len(self._items):
                    return
                while self._next_out not in self._done:
                    if self._closed:
                        return
                    if not self._cond.wait(_LIVENESS_S) and (why := self._stranded()):
                        self.close()  # no worker will ever hand it back: fail, never hang
                        raise RuntimeError(f"ddk read pool: {why} (an internal error: please report it; rerunning "
                                           "the same command resumes from the last checkpoint)")
                result = self._done.pop(self._next_out)
                self._next_out += 1
                self._cond.notify_all()  # a slot is free: a waiting worker may start the next read
            if isinstance(result, _Failed):
                self.close()
                raise result.exc
            yield result

    def _stranded(self) -> str:
        """(Under the lock) why the consumer's next item will never be handed back, or "" while it may be: no worker
        is left to read it, or a worker took it and is no longer reading it."""
        i, n = self._next_out, len(self._items)
        if self._closed or i in self._done:
            return ""
        if not any(t.is_alive() for t in self._threads):
            return f"every worker thread exited before item {i} of {n} was read"
        if i < self._next_start and i not in self._reading:
            return f"a worker took item {i} of {n} and never handed it back"
        return ""

    def close(self) -> None:
        """Stop: no new reads start, results not taken are dropped; idle workers exit now, busy ones after their read."""
        with self._cond:
            self._closed = True
            self._done.clear()
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds in all for the worker threads to exit (after :meth:`close` or the last item);
        True when all have."""
        deadline = None if timeout is None else time.monotonic() + timeout
        started = [t for t in self._threads if t.ident is not None]  # (a start interrupted by Ctrl-C: not all are)
        for t in started:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in started)


@atexit.register
def _close_pools_at_exit() -> None:
    """Close every pool still open and wait (up to :data:`EXIT_WAIT_S` in all) for the reads they are running. Runs
    before the interpreter finalizes, which would end a daemon thread inside a torch call by aborting the process."""
    pools = list(_OPEN)
    for pool in pools:
        pool.close()
    deadline = time.monotonic() + EXIT_WAIT_S
    try:
        for pool in pools:
            pool.join(max(0.0, deadline - time.monotonic()))
    except KeyboardInterrupt:  # a second Ctrl-C: stop waiting (no traceback from an exit handler)
        pass
