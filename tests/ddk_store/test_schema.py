"""The store schema is defined once (ddk_store/schema.py) and the teacher's held-out NLL once (ddk_store/heldout.py):
what is on disk matches the schema, and every place that computes the held-out statistic agrees with its formula."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from ddk_store import StoreCorruptError, StoreFormatError, open_store, spec
from ddk_store.heldout import ABS_TOL, REL_TOL, agrees, heldout_nll, heldout_ppl, stats_mismatch
from ddk_store.layout import Unit
from ddk_store.schema import (GROUP_ARRAYS, MARKER_DONE_COL, MARKER_WIDTH, GroupLayout, check_unit_data, chunk_key,
                              group_schema, row_shapes)
from ddk_store.testing import StoreFiles, make_tiny_store, synth_rows, tiny_meta
from ddk_store.validate import validate_store

PACKAGE = Path(__file__).resolve().parents[2] / "ddk_store"


def reference_nll(target: np.ndarray) -> float:
    """The store format's definition, written out: minus the mean over every position, in exact float64 sums."""
    values = [float(x) for x in np.asarray(target).reshape(-1)]
    return -math.fsum(values) / len(values)


@pytest.mark.parametrize("shape", [(1, 1), (3, 15), (64, 1023), (7, 2, 5)])
def test_heldout_nll_matches_a_float64_reference(shape):
    rng = np.random.default_rng(sum(shape))
    target = -rng.gamma(2.0, 1.5, size=shape).astype(np.float32)  # log-probs: <= 0, heavy tail
    nll = heldout_nll(target)
    assert nll == pytest.approx(reference_nll(target), rel=1e-12, abs=1e-15)
    assert heldout_ppl(nll) == pytest.approx(math.exp(reference_nll(target)), rel=1e-12)
    assert heldout_nll(np.zeros((0, 15), np.float32)) is None


def test_one_tolerance_decides_agreement():
    assert agrees(2.0, 2.0 * (1 + REL_TOL / 2)) and not agrees(2.0, 2.0 * (1 + REL_TOL * 2)) and not agrees(None, 1.0)
    assert agrees(0.0, ABS_TOL / 2)
    nll = 1.25
    assert stats_mismatch(nll, math.exp(nll), nll) is None
    assert stats_mismatch(nll * 1.1, math.exp(nll), nll) == ("heldout_nll", nll * 1.1, nll)
    assert stats_mismatch(nll, math.exp(nll) * 1.1, nll)[0] == "heldout_ppl"


def test_finalize_reader_and_evaluate_record_the_same_statistic(tmp_path):
    url = str(tmp_path / "s")
    reader = make_tiny_store(url, heldout_rows=5)
    for dom in reader.meta.domains:
        target = reader.arrays(dom.name, spec.SPLIT_HELDOUT)[spec.ARR_TARGET_LOGPROBS][:]
        assert dom.heldout_nll == heldout_nll(target)  # what finalize recorded
        assert dom.heldout_nll == pytest.approx(reference_nll(target), rel=1e-12)
        assert reader.heldout_nll(dom.name) == dom.heldout_nll
    pytest.importorskip("torch")
    from stage2_student.evaluate import teacher_heldout_ppl

    rows = reader.read_rows("beta", spec.SPLIT_HELDOUT, np.arange(3)).target_logprobs
    assert teacher_heldout_ppl(reader, ["beta"], 3) == [pytest.approx(math.exp(reference_nll(rows)), rel=1e-12)]
    assert teacher_heldout_ppl(reader, ["beta"], None) == [reader.meta.domain("beta").heldout_ppl]


def test_an_edit_beyond_the_tolerance_is_refused_everywhere(tmp_path):
    url = str(tmp_path / "s")
    make_tiny_store(url)
    beta = open_store(url).meta.domain("beta").heldout_nll
    StoreFiles(url).edit_root_meta(lambda m: m["domains"][1].__setitem__("heldout_nll", beta * (1 + 10 * REL_TOL)))
    with pytest.raises(StoreCorruptError, match=r"domains\[beta\]\.heldout_nll records"):
        open_store(url).heldout_nll("beta")
    assert [i.where for i in validate_store(url)] == ["metadata.domains[beta].heldout_nll"]


def test_repair_recomputes_edited_heldout_statistics_from_the_data(tmp_path):
    from click.testing import CliRunner

    from ddk_store.cli import main as store_cli

    url = str(tmp_path / "s")
    make_tiny_store(url)
    StoreFiles(url).edit_root_meta(lambda m: m["domains"][1].update(heldout_nll=9.0, heldout_ppl=math.exp(9.0)))
    assert [i.where for i in validate_store(url)] == ["metadata.domains[beta].heldout_nll"]
    res = CliRunner().invoke(store_cli, ["repair", url])
    assert res.exit_code == 0 and "recomputed metadata.domains[beta].heldout_nll" in res.output, res.output
    assert validate_store(url) == []
    reader = open_store(url)
    target = reader.arrays("beta", spec.SPLIT_HELDOUT)[spec.ARR_TARGET_LOGPROBS][:]
    beta = reader.meta.domain("beta")
    assert beta.heldout_nll == pytest.approx(reference_nll(target), rel=1e-12)
    assert beta.heldout_ppl == pytest.approx(math.exp(reference_nll(target)), rel=1e-12)
    assert reader.meta.status == spec.STATUS_COMPLETE


def test_arrays_on_disk_are_the_schema(tmp_path):
    url = str(tmp_path / "s")
    reader = make_tiny_store(url, train_rows=10, heldout_rows=3, unit_rows=4, vocab_size=70000,
                             encoding=spec.ENC_IDSORT_Q8, format_version="1.0")  # format-1.0 layout; 1.2: test_plain_zarr
    files = StoreFiles(url)
    for dom in reader.domains:
        for split in spec.SPLITS:
            lay = files.layout(dom, split)
            assert lay == reader.layout(dom, split) == GroupLayout(lay.n_rows, 1, 4)
            schema = group_schema(reader.meta, lay)
            assert tuple(schema) == GROUP_ARRAYS == (*spec.DATA_ARRAYS, spec.ARR_UNITS)
            for name, want in schema.items():
                doc = files.read_doc(dom, split, name)
                assert tuple(doc["shape"]) == want.shape
                assert tuple(doc["chunk_grid"]["configuration"]["chunk_shape"]) == want.chunks
                assert tuple(doc["dimension_names"]) == want.dims
                arr = reader.arrays(dom, split)[name]
                assert want.mismatch(arr.shape, arr.chunks, arr.dtype) is None
            assert schema[spec.ARR_UNITS].shape == (lay.num_units, MARKER_WIDTH)
            assert schema[spec.ARR_TOKENS].dtype == np.dtype("<u4")  # vocab >= 65535
            markers = reader.arrays(dom, split)[spec.ARR_UNITS][:]
            assert (markers[:, MARKER_DONE_COL] == spec.UNIT_DONE).all()
            assert files.markers_written(dom, split) == set(range(lay.num_units))
            assert files.units_with_chunks(dom, split, lay) == set(range(lay.num_units))
            for c in range(lay.n_rows):  # chunk_rows 1: one chunk per row
                assert files.chunk_path(dom, split, spec.ARR_TOPK_IDS, c).is_file(), chunk_key(dom, split,
                                                                                               spec.ARR_TOPK_IDS, c)
    assert files.status() == spec.STATUS_COMPLETE and files.meta() == reader.meta


def test_mismatch_names_shape_then_dtype():
    meta = tiny_meta()
    want = group_schema(meta, GroupLayout(8, 2, 4))[spec.ARR_TOPK_IDS]
    assert want.shape == (8, 15, 4) and want.chunks == (2, 15, 4)
    assert want.mismatch((9, 15, 4), (2, 15, 4), want.dtype) == ("shape (9, 15, 4) chunks (2, 15, 4), "
                                                                 "expected (8, 15, 4) chunks (2, 15, 4)")
    assert want.mismatch(want.shape, want.chunks, "<u4") == "dtype uint32, expected uint16"


def test_write_unit_checks_rows_against_the_schema():
    meta = tiny_meta()
    unit = Unit("alpha", spec.SPLIT_TRAIN, 0, 0, 3)
    rows = synth_rows(np.random.default_rng(0), 3, meta.seq_len, meta.top_k, meta.tokenizer.vocab_size)
    assert {k: v.shape for k, v in check_unit_data(meta, unit, rows).items()} == row_shapes(meta, 3)
    with pytest.raises(ValueError, match=r"topk_ids has shape \(3, 15, 3\), expected \(3, 15, 4\)"):
        check_unit_data(meta, unit, {**rows, "topk_ids": rows["topk_ids"][..., :3]})
    with pytest.raises(ValueError, match="ids outside"):
        check_unit_data(meta, unit, {**rows, "tokens": rows["tokens"] + 64})
    repeated = rows["topk_ids"].copy()
    repeated[2, 7, -1] = repeated[2, 7, 0]
    with pytest.raises(ValueError, match="topk_ids repeats an id within a position"):
        check_unit_data(meta, unit, {**rows, "topk_ids": repeated})
    bad = rows["target_logprobs"].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="target_logprobs holds NaN"):
        check_unit_data(meta, unit, {**rows, "target_logprobs": bad})


def test_no_module_writes_the_schema_out_again():
    """Shapes, the marker width and the held-out formula live in schema.py and heldout.py only."""
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name in ("schema.py", "heldout.py"):
            continue
        text = path.read_text()
        assert not re.search(r"np\.zeros\(\(?0?,? ?5\b|dtype=\"<u4\"\)", text), path.name  # marker rows
        assert "np.mean(target" not in text and "math.isclose(" not in text, path.name  # held-out statistics
        assert "(lay.n_rows, p, k)" not in text and "(n, p, k)" not in text, path.name  # array shapes


def test_synth_rows_builds_dense_logits_a_block_at_a_time(monkeypatch):
    """A real vocabulary at a real length must not build [n, T, V] float64 at once (bench/score_cpu.py's synthetic
    fallback did, 24 x 1023 x 49,152 values: killed at 24 GB); the blocked result is the one-block result, and a
    block is what the bound allows."""
    import ddk_store.testing as testing

    whole = synth_rows(np.random.default_rng(3), 5, 16, 4, 64, sharpness=2.0)
    seen = []

    class Recording:  # the same generator, recording the size of every normal() draw
        def __init__(self, rng):
            self.rng = rng

        def integers(self, *a, **kw):
            return self.rng.integers(*a, **kw)

        def normal(self, *a, size=None, **kw):
            seen.append(size)
            return self.rng.normal(*a, size=size, **kw)

    monkeypatch.setattr(testing, "SYNTH_BLOCK_VALUES", 2 * 15 * 64)  # two rows of [15, 64] logits
    blocked = synth_rows(Recording(np.random.default_rng(3)), 5, 16, 4, 64, sharpness=2.0)
    assert seen == [(2, 15, 64), (2, 15, 64), (1, 15, 64)]
    for k in whole:
        np.testing.assert_array_equal(blocked[k], whole[k])
    assert synth_rows(np.random.default_rng(0), 0, 16, 4, 64)["topk_ids"].shape == (0, 15, 4)


def test_group_layout_refuses_unknown_fields_but_keeps_extensions():
    doc = {"n_rows": 8, "chunk_rows": 2, "unit_rows": 4}
    assert GroupLayout.from_dict({**doc, "x_note": "kept"}, "alpha/train.ddk_group") == GroupLayout(8, 2, 4)
    with pytest.raises(StoreFormatError, match=r"unknown field\(s\) \['surprise'\] in 'alpha/train.ddk_group'"):
        GroupLayout.from_dict({**doc, "surprise": 1}, "alpha/train.ddk_group")


def test_a_minor_version_of_thousands_of_digits_is_compared_as_text_not_int():
    # int() of a string of 4,300+ digits raises (Python's int-string limit): `verify` crashed with a traceback on a
    # format_version that parses as a valid 1.x
    from ddk_store.schema import sharded

    meta = tiny_meta()
    assert sharded(meta)  # today's format
    huge = type(meta).from_dict({**meta.to_dict(), "format_version": "1." + "9" * 5000})
    assert sharded(huge)
    from ddk_store.meta import version_before

    assert version_before("1." + "0" * 5000 + "1", (1, 2)) and not version_before("1." + "9" * 5000, (1, 2))


def test_recorded_statistics_agree_within_the_documented_tolerance_and_report_the_perplexity():
    # docs/store-format.md: recorded and recomputed statistics agree to 1e-6 relative
    assert agrees(2.0, 2.0 * (1 + 5e-7)) and not agrees(2.0, 2.0 * (1 + 5e-6))
    field, recorded, computed = stats_mismatch(3.0, math.exp(3.0) * 1.1, 3.0)
    assert field == "heldout_ppl" and recorded == math.exp(3.0) * 1.1
    assert computed == pytest.approx(math.exp(3.0), rel=1e-12)  # the perplexity the data gives, not its NLL
