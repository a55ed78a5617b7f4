"""SIGKILL a real dump and a real training run at seeded moments; rerunning the same command must end identical.

The fast CI slice of bench/chaos/kill_dump.py and bench/chaos/kill_train.py (20 kills each): three kills of each,
one of them while a unit's chunks are being written (dump) or a checkpoint is being written (training), one during
finalize or the final export.
"""

from __future__ import annotations

import pytest

from ddk_testkit.commands import dump_argv, train_argv
from ddk_testkit.kills import DumpMoment, TrainMoment, dump_kill_chain, format_table, train_kill_chain
from ddk_testkit.processes import spawn
from ddk_testkit.reference import shared_dump_inputs
from ddk_testkit.stores import student_and_store

SEED = 6


@pytest.fixture(scope="module")
def dump_inputs():
    return shared_dump_inputs()


def test_sigkill_dump_three_moments_then_rerun_is_identical(dump_inputs, tmp_path):
    teacher, corpora, reference = dump_inputs
    n_units = sum(len(reference[k]) for k in reference if k.endswith("/units"))  # one marker row per unit
    assert n_units >= 12
    moments = [DumpMoment("chunk", SEED), DumpMoment("marker", n_units // 2), DumpMoment("finalize", 0)]
    store = tmp_path / "store"
    # One store killed three times in a row: each rerun of the same command is the next victim.
    results = dump_kill_chain(dump_argv(teacher, corpora, store), store, moments, reference, resume_inprocess=True)
    table = format_table("dump kills", results)
    print(table)
    assert all(r.fired for r in results), table  # every kill hit a live process
    assert all(r.identical for r in results), table
    done = [int(r.progress.split("/")[0]) for r in results]
    assert done[0] < done[1] < n_units, table  # each kill left work to resume, and each rerun made progress


@pytest.fixture(scope="module")
def train_inputs(tmp_path_factory):
    student, store = student_and_store(tmp_path_factory.mktemp("kill_train"), train_rows=16, heldout_rows=4)
    return str(store), student


FLAGS = dict(steps=40, interval=8, batch_size=4, lr=3e-3, seed=0, eval_batch_size=4, save_every=3, log_every=1,
             device="cpu")


def test_sigkill_training_three_moments_then_resume_is_identical(train_inputs, tmp_path):
    store, student = train_inputs
    ref_out = tmp_path / "ref"
    # The uninterrupted reference runs while the first victim starts (two cores).
    ref = spawn("stage2_student.cli", train_argv(store, student, ref_out, **FLAGS))

    def wait_reference() -> None:
        assert ref.wait(timeout=300) == 0, ref.stderr.read()[-2000:]

    moments = [TrainMoment("ckpt", 5 + SEED), TrainMoment("step", 17 + SEED), TrainMoment("final", 0)]
    out = tmp_path / "run"
    # One run killed three times in a row: each `--resume` rerun is the next victim.
    results = train_kill_chain(train_argv(store, student, out, **FLAGS), out, moments, ref_out,
                               wait_reference=wait_reference)
    table = format_table("training kills", results)
    print(table)
    assert all(r.fired for r in results), table  # every kill hit a live process
    assert all(r.identical for r in results), table
