"""`ddk-teacher dump`'s own lines before the run (campaign 15): a memory:// store is announced as living only inside
the process, and a directory store is not; both then fail in one line on a missing --corpora (no teacher loaded)."""

from __future__ import annotations

from ddk_testkit.processes import run_cli


def _dump(tmp_path, store: str):
    return run_cli("ddk-teacher", ["dump", "--teacher", str(tmp_path / "t"), "--corpora", str(tmp_path / "c.yaml"),
                                   "--store", store, "--device", "cpu", "--backend", "hf"])


def test_a_memory_store_dump_says_the_store_ends_with_the_process(tmp_path):
    """memory://name: one ``note:`` naming the URL and that the store is gone when the command ends; a local
    directory store gets no such note."""
    res = _dump(tmp_path, "memory://campaign15")
    notes = [ln for ln in res.output.splitlines() if ln.startswith("note: memory://campaign15")]
    assert res.code == 2 and len(notes) == 1, res.output
    assert "gone when this command ends" in notes[0]
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "--corpora" in errors[0], res.output
    local = _dump(tmp_path, str(tmp_path / "store"))
    assert local.code == 2 and "note: memory" not in local.output and "lives only inside" not in local.output
