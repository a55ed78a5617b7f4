"""A damaged store seen by `ddk-student train`: it stops before any optimizer step on damaged data, with one error
line naming the domain/split/array/rows and pointing at `ddk-store verify` / `ddk-store repair`. Also: two
`ddk-store finalize` processes racing on one store.

Damage to the train split is only seen when those rows are read, so for those cases the test replays the sampler's
plan (uniform mixing makes it independent of the model) and checks that exactly the steps before the first batch
holding a damaged row were taken. Damage to the held-out split or the metadata must stop the run before the student
is even loaded.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ddk_store import open_store
from ddk_store.validate import validate_store
from ddk_testkit.commands import train_argv
from ddk_testkit.processes import REPO, child_env, last_error_lines
from ddk_testkit.stores import student_and_store

DOMAINS = ("alpha", "beta", "gamma")
TRAIN_ROWS, HELDOUT_ROWS, UNIT_ROWS = 8, 4, 2  # chunk_rows 1: every row is its own chunk, two rows per unit
FLAGS = dict(steps=8, interval=4, batch_size=4, lr=3e-3, seed=0, eval_batch_size=4, mixing="uniform", log_every=1,
             device="cpu")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    # Format 1.1's layout (one object per chunk of one row), so that damage lands on exactly one row and the step
    # that first reads it is known. Damage inside a 1.2 shard (a chunk, the index, a whole shard) is covered by
    # tests/ddk_store (test_store, test_chunkio) and tests/stage2_student/test_readpool.py.
    student, store = student_and_store(tmp_path_factory.mktemp("corruption"), domains=DOMAINS,
                                       train_rows=TRAIN_ROWS, heldout_rows=HELDOUT_ROWS, unit_rows=UNIT_ROWS,
                                       format_version="1.1")
    assert validate_store(str(store)) == []
    return store, student


def training_plan() -> list[np.ndarray]:
    """(domain, row) pairs of every step, as the trainer draws them with uniform mixing."""
    from stage2_student.reweighting import uniform_weights
    from stage2_student.sampler import DomainSampler

    k, b, steps = FLAGS["interval"], FLAGS["batch_size"], FLAGS["steps"]
    sampler = DomainSampler([TRAIN_ROWS] * len(DOMAINS), rows_per_interval=k * b, seed=FLAGS["seed"])
    plan = []
    for interval in range(steps // k):
        sampler.start_interval(interval, uniform_weights(len(DOMAINS)))
        plan += [sampler.rows_for(s, batch_size=b, chunk=0, num_chunks=1) for s in range(k)]
    return plan


def row_at(step: int) -> tuple[str, int]:
    """The first (domain, row) of a step's batch: damage placed there is first read at that step."""
    d, r = training_plan()[step][0]
    return DOMAINS[int(d)], int(r)


def first_step_reading(domain: str, rows: set[int]) -> int:
    """Index (0-based) of the first step whose batch holds one of ``rows`` of ``domain``."""
    for i, pairs in enumerate(training_plan()):
        if any(DOMAINS[int(d)] == domain and int(r) in rows for d, r in pairs):
            return i
    raise AssertionError(f"{domain} rows {rows} are never read in {FLAGS['steps']} steps")


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def chunk_file(store: Path, domain: str, split: str, array: str, row: int) -> Path:
    ndim = {"tokens": 2, "target_logprobs": 2, "topk_ids": 3, "topk_logprobs": 3}[array]
    return store / domain / split / array / "c" / str(row) / "/".join(["0"] * (ndim - 1))


def delete_unit(store: Path, domain: str, split: str, unit: int) -> None:
    """Remove every data chunk of a unit and leave its 'done' marker: a unit marked done whose data is missing."""
    for array in ("tokens", "topk_ids", "topk_logprobs", "target_logprobs"):
        for row in range(unit * UNIT_ROWS, (unit + 1) * UNIT_ROWS):
            chunk_file(store, domain, split, array, row).unlink()


def edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def train_in_process(store: Path, student: Path, out: Path):
    from stage2_student.cli import cli

    return CliRunner().invoke(cli, train_argv(str(store), student, out, **FLAGS))


def steps_taken(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum(json.loads(ln)["event"] == "step" for ln in path.read_text().splitlines() if ln.strip())


def assert_one_clear_error(output: str, store: Path, *where: str) -> str:
    errors = last_error_lines(output)
    assert len(errors) == 1, output[-3000:]
    line = errors[0]
    for piece in where:
        assert piece in line, f"{piece!r} not in: {line}"
    assert f"ddk-store verify {store}" in line and f"ddk-store repair {store}" in line, line
    assert "Traceback" not in output
    return line


# ---------------------------------------------------------------- damage in the train split: seen when read
TRAIN_DAMAGE = {
    # name: (step whose first row is damaged, array, damage, words the error must hold)
    "flipped-bytes": (2, "topk_logprobs", flip_byte, "crc32c"),
    "truncated-chunk": (3, "topk_ids", truncate, "crc32c"),
    "missing-chunk": (1, "tokens", lambda p: p.unlink(), "missing"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_DAMAGE))
def test_damaged_train_chunk_stops_before_the_step_that_would_read_it(inputs, tmp_path, case):
    pristine, student = inputs
    step, array, damage, word = TRAIN_DAMAGE[case]
    domain, row = row_at(step)
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    damage(chunk_file(store, domain, "train", array, row))
    stop_at = first_step_reading(domain, {row})
    assert stop_at == step

    res = train_in_process(store, student, tmp_path / "out")
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output[-3000:]
    assert_one_clear_error(res.output, store, f"{domain}/train/{array} rows {row}-{row} (unit {row // UNIT_ROWS})",
                           word)
    assert steps_taken(tmp_path / "out") == stop_at  # every clean step ran, the damaged one never did


def test_unit_marked_done_without_its_data_stops_before_reading_it(inputs, tmp_path):
    pristine, student = inputs
    domain, row = row_at(2)
    unit = row // UNIT_ROWS
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    delete_unit(store, domain, "train", unit)
    stop_at = first_step_reading(domain, set(range(unit * UNIT_ROWS, (unit + 1) * UNIT_ROWS)))

    res = train_in_process(store, student, tmp_path / "out")
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output[-3000:]
    assert_one_clear_error(res.output, store, f"{domain}/train/tokens rows", f"(unit {unit})", "missing")
    assert steps_taken(tmp_path / "out") == stop_at


def test_real_entry_point_prints_one_line_and_no_traceback(inputs, tmp_path):
    """The same refusal through `python -m stage2_student.cli` (what a user's shell runs)."""
    pristine, student = inputs
    domain, row = row_at(0)
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    # (Training reads tokens and the top-k arrays; the train split's target_logprobs is never read by it, so damage
    # there is for `ddk-store verify` to find.)
    flip_byte(chunk_file(store, domain, "train", "topk_ids", row))
    argv = train_argv(str(store), student, tmp_path / "out", **FLAGS)
    proc = subprocess.run([sys.executable, "-m", "stage2_student.cli", *argv], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert_one_clear_error(proc.stderr, store, f"{domain}/train/topk_ids rows {row}-{row}")
    assert steps_taken(tmp_path / "out") == 0


# ---------------------------------------------------------------- held-out or metadata damage: refused up front
def nll_scaled(doc: dict) -> None:
    doc["attributes"]["ddk"]["domains"][0]["heldout_nll"] *= 1.1


def nll_and_ppl_scaled(doc: dict) -> None:
    dom = doc["attributes"]["ddk"]["domains"][1]
    dom["heldout_nll"] *= 0.9
    dom["heldout_ppl"] = math.exp(dom["heldout_nll"])  # consistent with each other, not with the data


def layout_rows(doc: dict) -> None:
    doc["attributes"]["ddk_group"]["n_rows"] = TRAIN_ROWS - 2


def array_rows(doc: dict) -> None:
    doc["shape"][0] = TRAIN_ROWS + 2


UP_FRONT = {
    # name: (damage(store), words the error must hold)
    "heldout-flipped-bytes": (lambda s: flip_byte(chunk_file(s, "beta", "heldout", "target_logprobs", 1)),
                              ("beta/heldout/target_logprobs rows 1-1 (unit 0)", "crc32c")),
    "heldout-unit-data-missing": (lambda s: delete_unit(s, "gamma", "heldout", 1),
                                  ("gamma/heldout/", "rows 2-2 (unit 1)", "missing")),
    "heldout-nll-edited": (lambda s: edit_json(s / "zarr.json", nll_scaled),
                           ("metadata domains[alpha].heldout_nll", "alpha/heldout/target_logprobs rows 0-3")),
    "heldout-nll-and-ppl-edited": (lambda s: edit_json(s / "zarr.json", nll_and_ppl_scaled),
                                   ("metadata domains[beta].heldout_nll",)),
    "row-count-edited-in-layout": (lambda s: edit_json(s / "beta" / "train" / "zarr.json", layout_rows),
                                   ("beta/train/tokens", f"shape ({TRAIN_ROWS}, 16)", f"{TRAIN_ROWS - 2} rows")),
    "row-count-edited-in-array": (lambda s: edit_json(s / "gamma" / "train" / "topk_ids" / "zarr.json", array_rows),
                                  ("gamma/train/topk_ids", f"shape ({TRAIN_ROWS + 2}, 15, 8)")),
}


@pytest.mark.parametrize("case", sorted(UP_FRONT))
def test_damaged_heldout_or_metadata_stops_before_training(inputs, tmp_path, case):
    pristine, student = inputs
    damage, words = UP_FRONT[case]
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    damage(store)
    res = train_in_process(store, student, tmp_path / "out")
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output[-3000:]
    assert_one_clear_error(res.output, store, *words)
    assert steps_taken(tmp_path / "out") == 0 and not (tmp_path / "out" / "checkpoints").exists()
    # `ddk-store verify`, which the message points to, finds the same problem.
    assert validate_store(str(store)) != []


# ---------------------------------------------------------------- racing finalizers
def test_two_finalize_processes_racing_both_succeed_and_the_store_verifies(tmp_path):
    from ddk_store.testing import make_tiny_store

    for trial in range(3):
        url = str(tmp_path / f"store{trial}")
        make_tiny_store(url, unit_rows=4, finalize=False, seed=trial)
        procs = [subprocess.Popen([sys.executable, "-m", "ddk_store.cli", "finalize", url], cwd=REPO,
                                  env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, err
            assert out.startswith(f"finalized {url}") or out.strip() == f"{url} is already complete", out + err
            assert "Traceback" not in err
        assert validate_store(url) == []
        assert open_store(url).meta.status == "complete"
