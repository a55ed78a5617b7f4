"""`ddk-teacher dump --encoding topk-sampled` end to end: a real tiny teacher, byte-identical reruns and shards,
`ddk-store verify`/`info`, and a `ddk-student train` run from the sampled store (and its temperature refusal)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddk_store import open_store, spec
from ddk_testkit.commands import dump_argv, train_args
from ddk_testkit.models import build_tiny_student
from ddk_testkit.processes import run_cli
from ddk_testkit.snapshots import store_differences, store_snapshot

SAMPLED = ["--encoding", "topk-sampled", "--samples", "6", "--sampling-seed", "7", "--max-rows-per-domain", "3"]


def data_files(store: Path) -> dict[str, bytes]:
    """Every stored object but the node documents (the root's holds the creation time)."""
    return {str(p.relative_to(store)): p.read_bytes() for p in store.rglob("*")
            if p.is_file() and p.name != "zarr.json"}


def test_sampled_dump_is_deterministic_verifies_and_trains(tiny_teacher, corpora_yaml, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for store in (a, b):
        code, err = run_cli("ddk-teacher", dump_argv(tiny_teacher, corpora_yaml, store, *SAMPLED))
        assert code == 0, err
    for shard in ("0/2", "1/2"):
        code, err = run_cli("ddk-teacher", dump_argv(tiny_teacher, corpora_yaml, c, *SAMPLED, "--shard", shard))
        assert code == 0, err
    code, err = run_cli("ddk-store", ["finalize", str(c)])
    assert code == 0, err
    files = data_files(a)
    assert any("topk_logprobs" in k for k in files)
    assert data_files(b) == files and data_files(c) == files  # rerun and shards: the same bytes
    snap = store_snapshot(str(a))  # ... and the same metadata (settings, sampling, statistics), creation time aside
    for other in (b, c):
        assert store_differences(snap, store_snapshot(str(other))) == [], other

    r = open_store(str(a))
    assert r.meta.encoding == spec.ENC_SAMPLED and r.meta.sampling.to_dict() == {"samples": 6, "seed": 7}
    rows = r.read_rows("python", "train", np.arange(3))
    assert rows.topk_ids.shape[-1] == 6  # min(N = 6, K = 8) slots
    total = np.exp(rows.topk_logprobs.astype(np.float64)).sum(-1) + np.exp(rows.topk_log_tail.astype(np.float64))
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
    code, err = run_cli("ddk-teacher", dump_argv(tiny_teacher, corpora_yaml, a, *SAMPLED, "--samples", "5"))
    assert code == 2 and "--samples" in err, err  # a resume with another N is refused, naming the flag
    code, err = run_cli("ddk-store", ["verify", str(a)])
    assert code == 0, err
    code, out = run_cli("ddk-store", ["info", str(a)])
    assert code == 0 and "encoding topk-sampled (6 draws per position, seed 7)" in out, out

    student = build_tiny_student(tmp_path / "student", Path(tiny_teacher).parent / "tok")
    code, err = run_cli("ddk-student", train_args(str(a), student, tmp_path / "run", steps=4, interval=2))
    assert code == 0, err
    code, err = run_cli("ddk-student", train_args(str(a), student, tmp_path / "hot", steps=4, interval=2,
                                                  temperature=2.0))
    assert code == 2
    assert "--temperature 2.0" in err and "estimate the teacher at temperature 1 only" in err, err
