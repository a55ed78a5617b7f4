"""The dump scores every pending unit through ONE backend.score_iter stream (the GPU pipeline never drains at a
unit boundary), and the store it writes is the per-unit reference dump's, unit for unit; a write failure mid-stream
stops the stream and the rerun completes the same store."""

from __future__ import annotations

import threading

import pytest

from ddk_testkit.commands import HELDOUT, SEQ_LEN, TOP_K, UNIT_ROWS
from ddk_testkit.snapshots import assert_same_store
from stage1_teacher.backends import BackendOptions
from stage1_teacher.backends.hf import HFBackend
from stage1_teacher.config import Stage1Config
from stage1_teacher.run import run


class CountingHF(HFBackend):
    """The real hf backend, recording how it is called (how many streams, how many units in each)."""

    def __init__(self, opts: BackendOptions) -> None:
        super().__init__(opts)
        self.streams: list[int] = []
        self.single_calls = 0

    def score(self, tokens):
        self.single_calls += 1
        return super().score(tokens)

    def score_iter(self, units):
        self.streams.append(0)

        def counted():
            for u in units:
                self.streams[-1] += 1
                yield u

        return super().score_iter(counted())


def cfg_for(teacher, corpora, store) -> Stage1Config:
    return Stage1Config(teacher=str(teacher), corpora=str(corpora), store=str(store), seq_len=SEQ_LEN, top_k=TOP_K,
                        heldout_seqs=HELDOUT, backend="hf", unit_rows=UNIT_ROWS, batch_tokens=4 * SEQ_LEN,
                        device="cpu", progress=False)


@pytest.fixture(scope="module")
def backend(tiny_teacher):
    return CountingHF(BackendOptions(model_dir=str(tiny_teacher), top_k=TOP_K, seq_len=SEQ_LEN,
                                     batch_tokens=4 * SEQ_LEN, device="cpu"))


def test_every_unit_goes_through_one_stream_and_the_store_equals_the_reference(reference_store, tiny_teacher,
                                                                                corpora_yaml, tmp_path, backend):
    store = tmp_path / "store"
    backend.streams.clear()
    summary = run(cfg_for(tiny_teacher, corpora_yaml, store), echo=lambda _: None, backend=backend)
    assert summary.status == "complete"
    n_units = summary.store_positions // (SEQ_LEN - 1) // UNIT_ROWS  # at least this many units (domains end partially)
    assert len(backend.streams) == 1 and backend.streams[0] >= max(n_units, 2)
    assert backend.single_calls == 0
    assert_same_store(reference_store, store)


def test_a_write_failure_mid_stream_stops_it_and_the_rerun_completes_the_same_store(
        reference_store, tiny_teacher, corpora_yaml, tmp_path, backend, monkeypatch):
    from ddk_store import StoreWriter

    store = tmp_path / "store"
    written = []
    real = StoreWriter.write_unit
    lock = threading.Lock()  # two writer threads: the count and the check are one step

    def failing(self, unit, *a, **k):
        with lock:
            if len(written) == 3:
                raise OSError("disk full (injected)")
            written.append(unit)
        return real(self, unit, *a, **k)

    monkeypatch.setattr(StoreWriter, "write_unit", failing)
    with pytest.raises(OSError, match="injected"):
        run(cfg_for(tiny_teacher, corpora_yaml, store), echo=lambda _: None, backend=backend)
    monkeypatch.setattr(StoreWriter, "write_unit", real)
    backend.streams.clear()
    lines: list[str] = []
    summary = run(cfg_for(tiny_teacher, corpora_yaml, store), echo=lines.append, backend=backend)
    assert summary.status == "complete" and any("resuming" in line for line in lines)
    assert len(backend.streams) == 1
    assert_same_store(reference_store, store)
