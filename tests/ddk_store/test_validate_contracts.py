"""`verify`'s contracts that a mutation campaign (14) found unchecked: a location without a store is a usage error,
not a problem in a store; only the done flag UNIT_DONE marks a unit written; an older store's partial last unit is
checked chunk by chunk without phantom chunks; a missing object is damage of its unit, which repair resets."""

from __future__ import annotations

import numpy as np
import struct
from pathlib import Path

import google_crc32c
import pytest
from click.testing import CliRunner

from ddk_store import StoreNotFoundError, StoreWriter, spec
from ddk_store.cli import main as store_cli
from ddk_store.packed import PackedRows
from ddk_store.crc import crc32_of
from ddk_store.schema import MARKER_DONE_COL, data_arrays
from ddk_store.testing import StoreFiles, make_tiny_store
from ddk_store.validate import validate_store


def test_verify_of_a_location_without_a_store_exits_2_not_1(tmp_path):
    """Exit 1 means 'problems in this store'; a mistyped URL is the user's mistake, exit 2 like every command."""
    url = str(tmp_path / "nothing-here")
    with pytest.raises(StoreNotFoundError):
        validate_store(url)
    for command in ("verify", "repair"):
        res = CliRunner().invoke(store_cli, [command, url])
        assert res.exit_code == 2 and res.output.startswith(f"error: no ddk store at {url}"), res.output
        assert "FAIL" not in res.output


@pytest.mark.parametrize("flag", [2])
def test_a_marker_whose_done_flag_is_not_unit_done_is_not_a_written_unit(tmp_path, flag):
    url = str(tmp_path / "s")
    make_tiny_store(url, domains=("beta",), train_rows=8, heldout_rows=1, unit_rows=4)
    arr = StoreWriter.resume(url)._arrays_of("beta", spec.SPLIT_TRAIN)[spec.ARR_UNITS]
    row = arr[1]
    row[MARKER_DONE_COL] = flag
    arr[1] = row
    assert [str(i) for i in validate_store(url)] == [
        "beta/train unit 1 (rows 4-7) units: completion marker lost in a finalized store"]


def test_an_unsharded_store_with_a_partial_last_unit_is_checked_chunk_by_chunk(tmp_path):
    """Format 1.1: one object per chunk row. Unit 2 of 10 rows by 4 holds rows 8-9; its check asks for chunks 8 and 9
    only (not 10 and 11, which no writer makes), and names a deleted one."""
    url = str(tmp_path / "s")
    make_tiny_store(url, domains=("alpha",), train_rows=10, heldout_rows=3, unit_rows=4, format_version="1.1")
    assert validate_store(url) == []
    StoreFiles(url).chunk_path("alpha", spec.SPLIT_TRAIN, spec.ARR_TOKENS, 9).unlink()
    assert [str(i) for i in validate_store(url)] == [f"alpha/train unit 2 (rows 8-9) {spec.ARR_TOKENS}: chunk(s) [9] "
                                                     "missing"]


def test_a_missing_object_is_damage_of_its_unit_that_repair_resets(tmp_path):
    url = str(tmp_path / "s")
    make_tiny_store(url, domains=("beta",), train_rows=8, heldout_rows=1, unit_rows=4)
    StoreFiles(url).chunk_path("beta", spec.SPLIT_TRAIN, spec.ARR_TOKENS, 1).unlink()
    issues = validate_store(url)
    assert [(i.unit, i.unwritten) for i in issues] == [(("beta", spec.SPLIT_TRAIN, 1), False)], [str(i) for i in issues]
    res = CliRunner().invoke(store_cli, ["repair", url])
    assert res.exit_code == 0 and "reset beta/train unit 1" in res.output and "1 unit(s) marked for rewriting" in \
        res.output, res.output
    assert [(u.domain, u.split, u.index) for u in StoreWriter.resume(url).pending_units()] == [
        ("beta", spec.SPLIT_TRAIN, 1)]


def test_a_non_finite_held_out_target_is_one_problem_of_its_unit_not_of_the_statistics(tmp_path):
    """A NaN target stamped with a matching crc32 (a writer without value checks): verify names the unit's invariant
    once, and does not compare the recorded held-out statistics with a NaN mean as well."""
    url = str(tmp_path / "s")
    make_tiny_store(url, domains=("alpha",), train_rows=4, heldout_rows=4, unit_rows=4)
    w = StoreWriter.resume(url)
    arrays = w._arrays_of("alpha", spec.SPLIT_HELDOUT)
    target = arrays[spec.ARR_TARGET_LOGPROBS][0:4]
    target[1, 2] = np.nan
    arrays[spec.ARR_TARGET_LOGPROBS][0:4] = target
    marker = arrays[spec.ARR_UNITS][0]
    marker[MARKER_DONE_COL + 1 + data_arrays(w.meta.encoding).index(spec.ARR_TARGET_LOGPROBS)] = crc32_of(target)
    arrays[spec.ARR_UNITS][0] = marker
    assert [str(i) for i in validate_store(url)] == [
        f"alpha/heldout unit 0 (rows 0-3) {spec.ARR_TARGET_LOGPROBS}: target log-prob not finite or > 0"]


def _undecodable(path: Path, offset: int, length: int) -> None:
    """Make the chunk at [offset, offset + length) of ``path`` a Blosc frame that cannot be decoded, under a crc32c
    that matches it (damage before the checksum was computed, or a chunk forged to pass it): Blosc's RuntimeError,
    not the checksum's ValueError."""
    data = bytearray(path.read_bytes())
    body = bytearray(data[offset:offset + length - 4])
    body[16:] = bytes(x ^ 0xFF for x in body[16:])
    body[12:16] = struct.pack("<I", 0x7FFFFFFF)  # the frame's compressed size, far past its end
    data[offset:offset + length] = bytes(body) + struct.pack("<I", google_crc32c.value(bytes(body)))
    path.write_bytes(bytes(data))


def test_a_chunk_that_passes_its_checksum_but_does_not_decode_is_damage_verify_names(tmp_path):
    """verify and repair ended in Blosc's RuntimeError traceback; readers and finalize already named the unit."""
    url = str(tmp_path / "s")
    make_tiny_store(url, domains=("alpha",), train_rows=4, heldout_rows=8, unit_rows=4)
    _undecodable(*StoreFiles(url).row_chunk_span("alpha", spec.SPLIT_HELDOUT, spec.ARR_TARGET_LOGPROBS, 5))
    issues = validate_store(url)
    assert [(i.where, i.unit) for i in issues] == [(f"alpha/heldout unit 1 (rows 4-7) {spec.ARR_TARGET_LOGPROBS}",
                                                    ("alpha", spec.SPLIT_HELDOUT, 1))], [str(i) for i in issues]
    assert "chunk fails its crc32c checksum or cannot be decoded" in issues[0].what
    res = CliRunner().invoke(store_cli, ["verify", url])
    assert res.exit_code == 1 and not isinstance(res.exception, RuntimeError), res.output
    assert "FAIL alpha/heldout unit 1 (rows 4-7) target_logprobs: chunk fails" in res.output, res.output
    res = CliRunner().invoke(store_cli, ["repair", url])
    assert res.exit_code == 0 and "reset alpha/heldout unit 1 (rows 4-7)" in res.output, res.output


def test_a_packed_chunk_that_passes_its_checksum_but_does_not_decode_is_one_problem(tmp_path):
    url = str(tmp_path / "s")
    make_tiny_store(url, domains=("alpha",), train_rows=4, heldout_rows=2)
    rows = PackedRows(url)
    for split in ("heldout", "train"):
        rows.write_chunk("alpha", split, 0, np.ones((2, 16), np.int32), chunk_rows=2, dtype=np.uint16)
    rows.write_state({"seq_len": 16}, {"alpha": {"state": "packed", "chunk_rows": 2, "heldout_rows": 2,
                                                 "train_rows": 2}})
    assert validate_store(url) == []
    chunk = next(p for p in (tmp_path / "s" / spec.PACK_PREFIX / "alpha.train" / "c").rglob("*") if p.is_file())
    _undecodable(chunk, 0, chunk.stat().st_size)
    issues = [str(i) for i in validate_store(url)]
    assert len(issues) == 1 and issues[0].startswith(f"{spec.PACK_PREFIX}/alpha.train chunk 0: fails its crc32c "
                                                     "checksum or cannot be decoded"), issues


@pytest.mark.parametrize("edit, problem", [
    (lambda doc: doc.__setitem__("data_type", "uint32"), "dtype uint32, expected uint16"),
    (lambda doc: doc["codecs"][0]["configuration"]["chunk_shape"].__setitem__(0, 2),
     "shape (4, 16) chunks (2, 16), expected (4, 16) chunks (1, 16)"),
], ids=["dtype", "chunk-shape"])
def test_an_array_that_differs_from_the_schema_is_one_problem_and_its_data_is_not_read(tmp_path, edit, problem):
    """Its bytes would be decoded as another dtype or chunk grid: the group's data checks are skipped, not reported
    as a cascade of checksum failures."""
    url = str(tmp_path / "s")
    make_tiny_store(url, domains=("alpha",), train_rows=4, heldout_rows=4, unit_rows=4)
    StoreFiles(url).edit_doc(edit, "alpha", spec.SPLIT_TRAIN, spec.ARR_TOKENS)
    assert [str(i) for i in validate_store(url)] == [f"alpha/train/{spec.ARR_TOKENS}: {problem}"]
