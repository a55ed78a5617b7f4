"""`ddk-store info | verify | finalize | repair` contracts that mutation campaign 14 found unchecked: what info
counts and says of each encoding, info on an unfinished store with a damaged marker, the count of units a
resumed dump still has to write, finalize of a finished store, and damaged packed rows in verify and repair."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from ddk_store import StoreWriter, spec
from ddk_store.cli import main as store_cli
from ddk_store.packed import PackedRows
from ddk_store.testing import StoreFiles, make_tiny_store
from ddk_store.validate import validate_store


def _info(url: str) -> dict:
    res = CliRunner().invoke(store_cli, ["info", url, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_info_counts_the_teacher_positions_of_both_splits(tmp_path):
    """P = seq_len - 1 teacher positions per row, train and held-out; bytes/token divides by their sum."""
    url = str(tmp_path / "s")
    make_tiny_store(url, domains=("alpha", "beta"), train_rows={"alpha": 6, "beta": 3}, heldout_rows=2, seq_len=12)
    info = _info(url)
    assert [(d["train_positions"], d["heldout_positions"]) for d in info["domains"]] == [(6 * 11, 2 * 11),
                                                                                       (3 * 11, 2 * 11)]
    assert info["positions"] == (6 + 3 + 2 + 2) * 11
    assert info["bytes_per_token"] == pytest.approx(info["bytes"] / info["positions"])


@pytest.mark.parametrize("encoding, exact_tail", [(spec.ENC_SAMPLED, False), (spec.ENC_IDSORT_Q8_TAIL, True),
                                                  (spec.ENC_IDSORT_Q8, False)])
def test_info_says_whether_the_stored_tail_is_exact(tmp_path, encoding, exact_tail):
    """A sampled store's tail is estimated from its draws, like its entries: not exact."""
    url = str(tmp_path / "s")
    make_tiny_store(url, domains=("alpha",), train_rows=2, heldout_rows=1, encoding=encoding)
    info = _info(url)
    assert info["exact_tail"] is exact_tail
    text = CliRunner().invoke(store_cli, ["info", url]).output
    if encoding == spec.ENC_SAMPLED:
        assert info["sampling"] == {"samples": spec.DEFAULT_SAMPLES, "seed": 0}
        assert f"encoding {encoding} ({spec.DEFAULT_SAMPLES} draws per position, seed 0)" in text, text
    else:
        assert info["sampling"] is None


def _unfinished(tmp_path, reset: int = 0):
    """A store whose dump wrote every unit but did not finalize, then had its last ``reset`` units cleared."""
    url = str(tmp_path / "s")
    writer = make_tiny_store(url, domains=("alpha", "beta"), train_rows=8, heldout_rows=4, unit_rows=4, finalize=False)
    units = list(writer.all_units())
    if reset:
        writer.reset_units(units[-reset:])
    return url, len(units)


def test_info_on_an_unfinished_store_with_a_damaged_marker_counts_that_group_as_unwritten(tmp_path):
    url, total = _unfinished(tmp_path)
    marker = StoreFiles(url).marker_path("beta", spec.SPLIT_TRAIN, 1)
    b = bytearray(marker.read_bytes())
    b[len(b) // 2] ^= 0x01
    marker.write_bytes(bytes(b))
    info = _info(url)
    beta_train_units = 8 // 4
    assert (info["units_written"], info["units_total"]) == (total - beta_train_units, total)


@pytest.mark.parametrize("reset", [1, 3])
def test_the_next_step_counts_the_units_a_rerun_dump_still_writes(tmp_path, reset):
    url, total = _unfinished(tmp_path, reset)
    res = CliRunner().invoke(store_cli, ["info", url])
    assert res.exit_code == 0 and f"writing: {total - reset} of {total} units written" in res.output, res.output
    nxt = [ln for ln in res.output.splitlines() if ln.startswith("next")]
    assert len(nxt) == 1 and f"the dump is unfinished ({reset} unit(s) not written yet)" in nxt[0], res.output
    res = CliRunner().invoke(store_cli, ["verify", url])
    assert res.exit_code == 1 and f"({reset} unit(s) not written yet)" in res.output, res.output


def test_finalize_of_a_finished_store_says_so_and_writes_nothing(tmp_path):
    url = str(tmp_path / "s")
    make_tiny_store(url, domains=("alpha",), train_rows=4, heldout_rows=1)
    root = StoreFiles(url).doc_path()
    before = root.read_bytes(), root.stat().st_mtime_ns
    res = CliRunner().invoke(store_cli, ["finalize", url])
    assert res.exit_code == 0 and res.output == f"{url} is already complete\n", res.output
    assert (root.read_bytes(), root.stat().st_mtime_ns) == before


def _damage_pack(url: str) -> None:
    """A pack document counting rows of a domain whose packed chunks were never written (or were deleted)."""
    PackedRows(url).write_state({"seq_len": 16}, {"alpha": {"state": "packed", "chunk_rows": 2, "heldout_rows": 2,
                                                            "train_rows": 2}})


def test_verify_names_damaged_packed_rows_and_says_repair_deletes_them(tmp_path):
    url = str(tmp_path / "s")
    make_tiny_store(url, domains=("alpha",), train_rows=4, heldout_rows=1)
    _damage_pack(url)
    res = CliRunner().invoke(store_cli, ["verify", url])
    error = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 1 and len(error) == 1 and res.output.count("FAIL _pack") >= 1, res.output
    assert f"`ddk-store repair {url}` deletes the damaged packed rows (readers never use them)" in error[0], error


def test_repair_deletes_damaged_packed_rows_and_still_recomputes_edited_statistics(tmp_path):
    """Both at once: the packed rows are deleted and, every unit being intact, the held-out statistics rewritten."""
    url = str(tmp_path / "s")
    make_tiny_store(url, domains=("alpha", "beta"), train_rows=4, heldout_rows=2)
    _damage_pack(url)
    StoreFiles(url).edit_root_meta(lambda m: m["domains"][1].update(heldout_nll=9.0, heldout_ppl=math.exp(9.0)))
    assert {(i.pack, i.where.startswith("metadata.")) for i in validate_store(url)} == {(True, False), (False, True)}
    res = CliRunner().invoke(store_cli, ["repair", url])
    assert res.exit_code == 0 and "deleted _pack" in res.output, res.output
    assert "recomputed metadata.domains[beta].heldout_nll" in res.output, res.output
    assert validate_store(url) == [] and not (tmp_path / "s" / spec.PACK_PREFIX).exists()
    assert StoreWriter.resume(url).complete


@pytest.mark.parametrize("domains, identity", [
    ({"alpha": "packed"}, {"seq_len": 16}), (["alpha"], {"seq_len": 16}), ({"alpha": ["packed"]}, {"seq_len": 16}),
    ({}, ["seq_len", 16]), ({"alpha": {"state": "training", "heldout_rows": 2, "cursor": None}}, {}),
], ids=["state-is-text", "domains-is-a-list", "state-is-a-list", "identity-is-a-list", "cursor-is-null"])
def test_info_on_packed_rows_whose_document_has_the_wrong_shape_is_one_line(tmp_path, domains, identity):
    """A pack document edited by hand, with text or a list where an object belongs, was an AttributeError traceback
    from `ddk-store info`; it is one line saying to delete the location and pack again, as a missing field is."""
    url = str(tmp_path / "p")
    PackedRows(url).write_state(identity, domains)
    res = CliRunner().invoke(store_cli, ["info", url])
    assert res.exit_code == 2 and "Traceback" not in res.output, (res.output, res.exception)
    assert res.output.startswith(f"error: {url}: the packed rows' document ") and res.output.endswith(
        "(edited or damaged); delete the location and pack again\n"), res.output


def test_info_on_packed_rows_says_what_finishes_them(tmp_path):
    url = str(tmp_path / "p")
    PackedRows(url).write_state({"seq_len": 16}, {
        "alpha": {"state": "packed", "chunk_rows": 2, "heldout_rows": 2, "train_rows": 6},
        "beta": {"state": "training", "chunk_rows": 2, "heldout_rows": 2, "cursor": {"rows": 4}}})
    info = _info(url)
    assert (info["status"], info["seq_len"]) == ("packed", 16)
    assert [(d["name"], d["state"], d["train_rows"]) for d in info["domains"]] == [("alpha", "packed", 6),
                                                                                   ("beta", "packing", 4)]
    assert "rerun the same `ddk-teacher pack`" in info["next"] and "finish packing" in info["next"]
    beta = {"state": "packed", "chunk_rows": 2, "heldout_rows": 2, "train_rows": 4}
    PackedRows(url).write_state({"seq_len": 16}, {"alpha": beta, "beta": beta})
    assert _info(url)["next"].startswith("run `ddk-teacher dump` with the same settings")


def test_info_of_a_finished_store_counts_every_unit_without_reading_its_markers(tmp_path):
    """finalize saw every marker: info takes the status for them (a marker damaged since is verify's to name)."""
    url = str(tmp_path / "s")
    make_tiny_store(url, domains=("alpha", "beta"), train_rows=8, heldout_rows=4, unit_rows=4)
    marker = StoreFiles(url).marker_path("beta", spec.SPLIT_TRAIN, 1)
    b = bytearray(marker.read_bytes())
    b[len(b) // 2] ^= 0x01
    marker.write_bytes(bytes(b))
    info = _info(url)
    assert info["units_written"] == info["units_total"] == 2 * (8 // 4 + 4 // 4) and info["bytes_per_token"] > 0
