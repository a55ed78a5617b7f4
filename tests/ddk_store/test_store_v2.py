"""Store format 1.1: the exact tail and the default encoding ``topk-idsort-q8-tail``; 1.0 stores still read.

References are written from the formulas of docs/store-format.md in float64, not from the implementation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ddk_store import codec, open_store, spec
from ddk_store.encodings import REGISTRY, get_encoding
from ddk_store.errors import StoreFormatError, StoreVersionError
from ddk_store.testing import StoreFiles, make_tiny_store, tiny_meta
from ddk_store.validate import validate_store
from ddk_store.writer import StoreWriter

V, K = 200, 8


def distributions(rng: np.random.Generator) -> np.ndarray:
    """float64 (n, V) teacher distributions, confident ones included."""
    rows = [np.exp(rng.normal(size=V) * s) for s in (0.5, 1.0, 2.0, 3.0, 4.0)]
    rows = [r / r.sum() for r in rows]
    for top1, tail in ((0.97, 0.01), (0.9999, 5e-5), (0.5, 0.3), (0.999999, 1e-7)):
        # top-1 = top1; K-1 more entries share 1 - top1 - tail; the other V - K ids share the tail
        p = np.full(V, tail / (V - K))
        rest = np.linspace(2.0, 0.1, K - 1)
        p[1:K] = (1 - top1 - tail) * rest / rest.sum()
        p[0] = top1
        rows.append(rng.permutation(p))
    return np.stack(rows)


def topk(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.argsort(-p, axis=-1, kind="stable")[:, :K]
    return ids, np.log(np.take_along_axis(p, ids, -1)).astype(np.float32)


def test_tail_is_exact_on_every_position_including_confident_ones():
    p = distributions(np.random.default_rng(0))
    ids, lp = topk(p)
    dec = codec.decode_arrays(codec.encode_arrays(ids, lp, encoding=spec.ENC_IDSORT_Q8_TAIL, vocab_size=V),
                              encoding=spec.ENC_IDSORT_Q8_TAIL)
    q = np.exp(dec.logprobs.astype(np.float64))
    tail = np.exp(dec.log_tail.astype(np.float64))
    assert np.abs(q.sum(-1) + tail - 1).max() <= 1e-3
    for n in range(len(p)):
        kept = [(int(i), float(l)) for i, l in zip(dec.ids[n], dec.logprobs[n]) if np.isfinite(l)]
        kept_ids = {i for i, _ in kept}
        assert len(kept_ids) == len(kept) >= 1
        true_outside = 1.0 - sum(p[n, i] for i in kept_ids)  # the teacher's exact mass outside the decoded entries
        assert abs(tail[n] - true_outside) <= 1e-3, (n, tail[n], true_outside)
        for i, logq in kept:  # rounding 1/64 + rescale 1/64, plus the float16 tail's 5e-4
            assert abs(logq - np.log(p[n, i])) <= 1 / 32 + 5e-4
        # dropped entries are exactly those below the floor: code round(-lp * 32) > 253
        for i, lpi in zip(ids[n], lp[n]):
            assert (int(i) in kept_ids) == (np.rint(-lpi * 32) <= 253 or lpi == lp[n].max())
    confident = np.flatnonzero(p.max(-1) >= 0.97)
    assert len(confident) == 3 and (tail[confident] > 0).all()  # a 0.97 top-1 keeps its tail (1.0 made it 0)


def test_q8_derived_tail_was_wrong_on_confident_positions():
    """Why 1.1 exists: with the 1.0 default, 1 - sum of a top-1 of 0.97 with a 1% tail is not the tail."""
    p = distributions(np.random.default_rng(0))
    ids, lp = topk(p)
    dec = codec.decode_arrays(codec.encode_arrays(ids, lp, encoding=spec.ENC_IDSORT_Q8, vocab_size=V),
                              encoding=spec.ENC_IDSORT_Q8)
    derived = np.clip(1 - np.exp(dec.logprobs.astype(np.float64)).sum(-1), 0, 1)
    true = 1 - np.take_along_axis(p, ids, -1).sum(-1)
    assert np.abs(derived - true).max() > 1e-3


def test_absent_slots_come_last_and_repeat_an_id():
    ids = np.array([[5, 9, 2, 7]])
    lp = np.log(np.array([[0.9, 0.0999, 1e-5, 1e-6]], dtype=np.float64)).astype(np.float32)
    st = codec.encode_arrays(ids, lp, encoding=spec.ENC_IDSORT_Q8_TAIL, vocab_size=10)
    # kept: ids 5 (0.9) and 9 (0.0999), sorted by id; then two absent slots (delta 0, code 254)
    assert st[spec.ARR_TOPK_IDS].tolist() == [[5, 4, 0, 0]]
    assert st[spec.ARR_TOPK_LOGPROBS].tolist() == [[round(-np.log(0.9) * 32), round(-np.log(0.0999) * 32), 254, 254]]
    mass = 1 - 0.9 - 0.0999  # outside the kept entries: the dropped 1.1e-5 and the 1e-4 beyond the top-4
    assert float(st[spec.ARR_TOPK_TAIL][0]) == pytest.approx(np.log(mass), rel=1e-3)
    dec = codec.decode_arrays(st, encoding=spec.ENC_IDSORT_Q8_TAIL)
    assert dec.ids.tolist() == [[5, 9, 9, 9]] and np.isneginf(dec.logprobs[0, 2:]).all()


def test_store_round_trip_verify_and_info(tmp_path):
    url = str(tmp_path / "s")
    reader = make_tiny_store(url, top_k=K, vocab_size=V)
    assert reader.meta.encoding == spec.DEFAULT_ENCODING == spec.ENC_IDSORT_Q8_TAIL
    assert reader.meta.format_version == spec.FORMAT_VERSION == "1.2" and reader.meta.logprob_scale == 32
    b = reader.read_rows("alpha", "train", [2, 0, 2])
    assert b.topk_log_tail.shape == (3, 15)
    total = np.exp(b.topk_logprobs.astype(np.float64)).sum(-1) + np.exp(b.topk_log_tail.astype(np.float64))
    assert np.abs(total - 1).max() <= 1e-3
    assert validate_store(url) == []
    from ddk_store.cli import store_summary

    s = store_summary(url, {})
    assert s["encoding"] == spec.ENC_IDSORT_Q8_TAIL and s["exact_tail"] is True


def test_verify_names_a_tail_that_is_not_a_log_mass(tmp_path):
    url = str(tmp_path / "s")
    writer = make_tiny_store(url, top_k=K, vocab_size=V, finalize=False)
    arr = writer._arrays_of("alpha", "train")[spec.ARR_TOPK_TAIL]
    unit = writer.units("alpha", "train")[0]
    data = arr[unit.start:unit.stop]
    data[0, 0] = 0.5  # a mass above 1
    arr[unit.start:unit.stop] = data
    from ddk_store.crc import crc32_of

    markers = writer._arrays_of("alpha", "train")[spec.ARR_UNITS]
    row = markers[unit.index]
    row[-1] = crc32_of(data)  # a consistent checksum: only the invariant can catch it
    markers[unit.index] = row
    writer.finalize()
    issues = [str(i) for i in validate_store(url)]
    assert len(issues) == 1 and "topk_tail: tail log-mass NaN or > 0" in issues[0]


def test_format_1_0_store_still_reads(tmp_path):
    """A store as format 1.0 wrote it: encoding topk-idsort-q8, four data arrays, markers of width 5."""
    url = str(tmp_path / "old")
    make_tiny_store(url, encoding=spec.ENC_IDSORT_Q8, unit_rows=4, format_version="1.0")
    doc = json.loads((Path(url) / "alpha/train/units/zarr.json").read_text())
    assert doc["shape"][1] == 5 and not (Path(url) / "alpha/train" / spec.ARR_TOPK_TAIL).exists()
    r = open_store(url)
    assert r.meta.format_version == "1.0" and r.meta.logprob_scale == 16
    b = r.read_rows("beta", "heldout", [0, 1])
    assert b.topk_log_tail is None and b.topk_logprobs.shape == (2, 15, 4)
    assert validate_store(url) == []
    # a dump with the store's settings resumes it (a newer minor version is not a different store)
    meta = tiny_meta(encoding=spec.ENC_IDSORT_Q8)
    rows = {d: {s: r.num_rows(d, s) for s in spec.SPLITS} for d in r.domains}
    w = StoreWriter.open_or_create(url, meta.replace(domains=r.meta.domains), rows, unit_rows=4, chunk_rows=1)
    assert w.resumed and w.meta.format_version == "1.0"


def test_unknown_encoding_is_refused_by_name():
    with pytest.raises(StoreVersionError, match="unknown top-k encoding 'topk-sampled-n32'"):
        get_encoding("topk-sampled-n32")
    assert tuple(REGISTRY) == spec.ENCODINGS


def test_every_encoding_declares_ids_and_logprobs_first():
    for enc in REGISTRY.values():
        names = [a.name for a in enc.arrays(V)]
        assert names[:2] == [spec.ARR_TOPK_IDS, spec.ARR_TOPK_LOGPROBS]


def test_a_dump_with_another_encoding_does_not_resume_the_store():
    from ddk_store.difference import identity_difference
    from stage1_teacher.plan import RESUME_FLAGS

    diff = identity_difference(tiny_meta(), tiny_meta(encoding=spec.ENC_IDSORT_Q8), RESUME_FLAGS)
    assert diff == "--encoding was 'topk-idsort-q8-tail', this run has 'topk-idsort-q8'"
    q8 = tiny_meta(encoding=spec.ENC_IDSORT_Q8)  # (a tail store cannot be 1.0: the tail came in 1.1)
    assert identity_difference(q8, q8.replace(format_version="1.0")) is None
    with pytest.raises(StoreFormatError, match="field 'encoding': a store of format 1.0 cannot have it"):
        tiny_meta().replace(format_version="1.0")


def test_tail_store_holds_only_spec_codecs_numeric_dtypes_and_no_pickle(tmp_path):
    url = tmp_path / "s"
    make_tiny_store(str(url), train_rows=4, heldout_rows=2)
    arrays = 0
    for path in url.rglob("*"):
        if path.is_dir():
            continue
        if path.name == "zarr.json":
            doc = json.loads(path.read_text())
            if doc["node_type"] == "array":
                arrays += 1
                assert {c["name"] for c in doc["codecs"]} <= spec.ALLOWED_CODECS
                assert doc["data_type"] in {"uint8", "uint16", "uint32", "float16", "float32"}
        else:
            assert "/c/" in path.relative_to(url).as_posix()
            assert path.read_bytes()[:2] not in {b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"}
    assert arrays == 3 * 2 * 6  # domains x splits x (5 data arrays + units)


def formula_decode(codes: np.ndarray, log_tail: np.ndarray, scale: int) -> np.ndarray:
    """float64 log-probs from store-format.md: -v/scale for kept codes (v <= 253), -inf for absent ones (254), then
    every kept entry shifted by log(1 - exp(tail)) - log(sum of the kept probabilities)."""
    lp = np.where(codes <= 253, -codes.astype(np.float64) / scale, -np.inf)
    kept = np.exp(lp).sum(-1)
    return lp + (np.log(-np.expm1(log_tail.astype(np.float64))) - np.log(kept))[..., None]


@pytest.mark.parametrize("path", ["compiled", "numpy"])
@pytest.mark.parametrize("k, contiguous, id_dtype", [(8, True, np.uint16), (7, True, np.uint16), (8, False, np.uint16),
                                                     (64, True, np.uint32)])
def test_decode_matches_the_formula(k, contiguous, id_dtype, path, monkeypatch):
    """The default encoding's decode, compiled (kernels.py) and NumPy, against the format's formula in float64: even
    and odd K, codes that are not contiguous (a view, as a picked or sliced read can hand over), 16- and 32-bit ids,
    a zero tail (log-tail -inf) and a position whose only kept entry holds all the mass."""
    from ddk_store import kernels

    if path == "numpy":
        monkeypatch.setenv(kernels.KERNELS_ENV, "0")
    else:  # the project's install builds the kernels (pyproject ext-modules); a build without them is a failure here
        assert kernels.available(), "ddk_store/_kernels*.so is not built: pip install -e . with a C compiler"
    rng = np.random.default_rng(k)
    codes = rng.integers(0, 254, size=(3, 5, k)).astype(np.uint8)
    kept = rng.integers(1, k + 1, size=(3, 5))
    codes[np.arange(k) >= kept[..., None]] = 254  # absent slots come last
    tail = np.log(rng.uniform(1e-4, 0.5, size=(3, 5))).astype(np.float16)
    tail[0, 0] = -np.inf  # the top-k holds all the mass
    codes[1, 1] = 254
    codes[1, 1, 0] = 3  # one kept entry
    deltas = rng.integers(1, 300 if id_dtype is np.uint16 else 70_000, size=(3, 5, k)).astype(id_dtype)
    deltas[np.arange(k) >= kept[..., None]] = 0  # absent slots repeat the last id
    if not contiguous:
        codes = np.repeat(codes, 2, axis=-1)[..., ::2]
        assert not codes.flags.c_contiguous
    enc = get_encoding(spec.ENC_IDSORT_Q8_TAIL)
    dec = enc.decode({spec.ARR_TOPK_IDS: deltas, spec.ARR_TOPK_LOGPROBS: codes, spec.ARR_TOPK_TAIL: tail}, scale=32)
    want = formula_decode(codes, tail, 32)
    assert dec.logprobs.dtype == np.float32 and dec.logprobs.shape == codes.shape
    np.testing.assert_array_equal(np.isneginf(dec.logprobs), np.isneginf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(dec.logprobs[finite], want[finite], rtol=0, atol=2e-6)
    assert dec.ids.dtype == np.int32
    np.testing.assert_array_equal(dec.ids, np.cumsum(deltas.astype(np.int64), axis=-1))
    np.testing.assert_array_equal(dec.log_tail, tail.astype(np.float32))


def test_training_reads_leave_the_targets_unread(tmp_path):
    """``targets=False`` (what stage 2's batch reads pass) returns the same tokens and top-k without reading
    ``target_logprobs``: with that array's chunks deleted, such reads still succeed and the full read names the loss."""
    import shutil

    from ddk_store.errors import StoreCorruptError

    url = str(tmp_path / "s")
    make_tiny_store(url, train_rows=8, heldout_rows=2)
    rows = np.array([5, 1, 1, 6])
    full = open_store(url).read_rows("alpha", "train", rows)
    shutil.rmtree(tmp_path / "s" / "alpha" / "train" / spec.ARR_TARGET_LOGPROBS / "c")
    reader = open_store(url)
    part = reader.read_rows("alpha", "train", rows, targets=False)
    assert part.target_logprobs is None
    for name in ("tokens", "topk_ids", "topk_logprobs", "topk_log_tail"):
        np.testing.assert_array_equal(getattr(part, name), getattr(full, name), err_msg=name)
    stored = reader.read_stored_rows("alpha", "train", rows, targets=False)
    assert stored.target_logprobs is None
    assert set(stored.topk) == {a.name for a in get_encoding(spec.DEFAULT_ENCODING).arrays(64)}
    with pytest.raises(StoreCorruptError, match=spec.ARR_TARGET_LOGPROBS):
        reader.read_rows("alpha", "train", rows)


def test_verify_refuses_a_format_version_its_encoding_or_layout_contradict(tmp_path):
    """Relabelled stores verified ok: a tail store as 1.0 (the tail came in 1.1), and an unsharded 1.1 store as 1.2
    (sharded since 1.2)."""
    tail = tmp_path / "tail"
    make_tiny_store(str(tail))
    StoreFiles(str(tail)).edit_root_meta(lambda m: m.__setitem__("format_version", "1.0"))
    assert any("field 'encoding': a store of format 1.0 cannot have it" in str(i) for i in validate_store(str(tail)))
    old = tmp_path / "old"
    make_tiny_store(str(old), format_version="1.1")
    assert validate_store(str(old)) == []
    StoreFiles(str(old)).edit_root_meta(lambda m: m.__setitem__("format_version", "1.2"))
    assert any("unsharded arrays in a store of format 1.2" in str(i) for i in validate_store(str(old)))


def test_the_floor_keeps_code_253_and_drops_code_254():
    # -253/32 nats is code 253, the last kept code; -254/32 is code 254: below the floor, into the tail
    ids = np.array([[6, 3, 8]])
    lp = np.array([[-0.01, -253 / 32, -254 / 32]], dtype=np.float32)
    st = codec.encode_arrays(ids, lp, encoding=spec.ENC_IDSORT_Q8_TAIL, vocab_size=10)
    assert st[spec.ARR_TOPK_IDS].tolist() == [[3, 3, 0]]  # kept ids 3 and 6 by ascending id, then one absent slot
    assert st[spec.ARR_TOPK_LOGPROBS].tolist() == [[253, 0, 254]]
    mass = 1 - np.exp(-0.01) - np.exp(-253 / 32)  # float64, from the definition
    assert float(st[spec.ARR_TOPK_TAIL][0]) == pytest.approx(np.log(mass), rel=1e-3)


def test_a_position_with_every_entry_below_the_floor_keeps_its_most_probable_one():
    # a flat teacher: p = 2e-4, 1e-4, 1e-4 (codes 273, 295, 295, all past 253). Rank 0 is kept anyway, saturated at
    # code 253, so no position is left without an entry; the tail is the rest, 1 - 2e-4, and decoding rescales the
    # kept entry back to its true probability 2e-4
    ids = np.array([[4, 1, 7]])
    lp = np.log(np.array([[2e-4, 1e-4, 1e-4]])).astype(np.float32)
    st = codec.encode_arrays(ids, lp, encoding=spec.ENC_IDSORT_Q8_TAIL, vocab_size=10)
    assert st[spec.ARR_TOPK_IDS].tolist() == [[4, 0, 0]]
    assert st[spec.ARR_TOPK_LOGPROBS].tolist() == [[253, 254, 254]]
    assert float(st[spec.ARR_TOPK_TAIL][0]) == pytest.approx(np.log1p(-2e-4), rel=1e-3)
    dec = codec.decode_arrays(st, encoding=spec.ENC_IDSORT_Q8_TAIL)
    assert dec.ids.tolist() == [[4, 4, 4]]
    assert float(dec.logprobs[0, 0]) == pytest.approx(np.log(2e-4), abs=1e-2)
    assert np.isneginf(dec.logprobs[0, 1:]).all()


def test_a_top_k_whose_float32_probabilities_sum_past_one_has_an_empty_tail_not_nan():
    # a backend's log-prob of exactly 0 for a sure token, plus a small other one: in float32 the probabilities sum past
    # 1, and the mass outside them is 0 (stored log -inf), not negative (log NaN, which verify reads as missing data)
    ids = np.array([[2, 5]])
    lp = np.array([[0.0, -7.0]], dtype=np.float32)
    st = codec.encode_arrays(ids, lp, encoding=spec.ENC_IDSORT_Q8_TAIL, vocab_size=10)
    assert np.isneginf(st[spec.ARR_TOPK_TAIL]).all()
    assert get_encoding(spec.ENC_IDSORT_Q8_TAIL).invariants(spec.ARR_TOPK_TAIL, st[spec.ARR_TOPK_TAIL], 10) == []


@pytest.mark.parametrize("path", ["compiled", "numpy"])
def test_a_tail_of_log_zero_leaves_the_kept_log_probs_finite(path, monkeypatch):
    # log-tail 0 (float16 rounds log(1 - 3e-8) to 0): the kept mass 1 - m is 0 and the shift log(0) - log(s) is not a
    # number; the kept code then decodes as stored (-v/32) instead of -inf or NaN
    from ddk_store import kernels

    if path == "numpy":
        monkeypatch.setenv(kernels.KERNELS_ENV, "0")
    else:
        assert kernels.available(), "ddk_store/_kernels*.so is not built: pip install -e . with a C compiler"
    enc = get_encoding(spec.ENC_IDSORT_Q8_TAIL)
    dec = enc.decode({spec.ARR_TOPK_IDS: np.array([[4, 0]], dtype=np.uint16),
                      spec.ARR_TOPK_LOGPROBS: np.array([[253, 254]], dtype=np.uint8),
                      spec.ARR_TOPK_TAIL: np.array([0.0], dtype=np.float16)}, scale=32)
    assert float(dec.logprobs[0, 0]) == pytest.approx(-253 / 32, abs=1e-6)
