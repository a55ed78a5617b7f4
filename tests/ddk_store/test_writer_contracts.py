"""StoreWriter contracts that a mutation campaign found unchecked, on real local stores: which layout a reopened store
keeps, what a finished store reopens as, a store another process creates at the same moment (never deleted, joined
only when it is the same), the global unit order shards deal from, a marker written only after its unit's data (on
chunkio's path and on zarr's), a lost temporary file retried and no other error, target log-probs clamped to 0,
reset_units (status first, every unit, none for an empty list) and finalize's recorded statistics. Races and disk
errors are faked at the storage call (or, for the other process's root write, right after this writer's nodes)."""

from __future__ import annotations

import dataclasses
import errno
import math

import numpy as np
import pytest

from ddk_store import StoreWriter, chunkio, objectio, spec
from ddk_store import writer as writer_module
from ddk_store.errors import ConfigError, StoreCorruptError, StoreExistsError, StoreIOError, StoreNotFoundError
from ddk_store.packed import PackedRows
from ddk_store.schema import MARKER_DONE_COL
from ddk_store.testing import StoreFiles, synth_rows, tiny_meta
from ddk_store.validate import validate_store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.group import GroupMetadata
from zarr.storage import LocalStore

T, K, V = 16, 4, 64  # the tiny store's sequence length, top-k and vocabulary
ROWS = {"alpha": {"train": 10, "heldout": 4}, "beta": {"train": 3, "heldout": 5}}


def _new(url: str, **kw) -> StoreWriter:
    kw = {"unit_rows": 4, "chunk_rows": 2, **kw}  # units of 4 rows in chunks of 2 unless a test asks otherwise
    return StoreWriter.open_or_create(url, tiny_meta(domains=tuple(ROWS)), ROWS, **kw)


def _data(unit) -> dict[str, np.ndarray]:
    """Valid random rows of ``unit``, the same each time they are asked for (so a test can recompute them)."""
    rng = np.random.default_rng([unit.index, *map(ord, f"{unit.domain}/{unit.split}")])
    return synth_rows(rng, unit.n_rows, T, K, V)


def _write_all(w: StoreWriter) -> None:
    for u in w.pending_units():
        w.write_unit(u, **_data(u))


# ------------------------------------------------------------------------------------------------ opening
def test_unit_rows_must_be_whole_chunks_and_nothing_is_created_otherwise(tmp_path):
    with pytest.raises(ConfigError, match=r"unit_rows \(6\) must be a multiple of chunk_rows \(4\)"):
        _new(str(tmp_path / "s"), unit_rows=6, chunk_rows=4)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("rows, said", [
    ({"alpha": ROWS["alpha"]}, r"rows are given for domains \['alpha'\] but the metadata lists \['alpha', 'beta'\]"),
    ({**ROWS, "beta": {"train": 3}}, r"domain 'beta': rows must give exactly the splits \['train', 'heldout'\]"),
    ({**ROWS, "beta": {"train": -1, "heldout": 5}}, r"domain 'beta' split 'train': row count must be an int >= 0"),
    ({**ROWS, "beta": {"train": True, "heldout": 5}}, r"row count must be an int >= 0, got True"),
], ids=["a domain missing", "a split missing", "negative", "a bool"])
def test_row_counts_are_checked_before_anything_is_created(tmp_path, rows, said):
    with pytest.raises(ConfigError, match=said):
        StoreWriter.open_or_create(str(tmp_path / "s"), tiny_meta(domains=tuple(ROWS)), rows, unit_rows=4, chunk_rows=2)
    assert not (tmp_path / "s").exists()


def test_a_reopened_store_keeps_its_work_units_unless_others_are_asked_for(tmp_path):
    url = str(tmp_path / "s")
    _new(url)  # units of 4 rows in chunks of 2
    again = StoreWriter.open_or_create(url, tiny_meta(domains=tuple(ROWS)), ROWS)  # no --unit-rows: the store's own
    assert again.resumed and again.layout("alpha", "train").unit_rows == 4
    for asked in ({"chunk_rows": 1}, {"unit_rows": 8, "chunk_rows": 2}):  # either one asked for is a difference
        with pytest.raises(StoreExistsError, match="--unit-rows: the store's work units are 4 rows in chunks of 2"):
            StoreWriter.open_or_create(url, tiny_meta(domains=tuple(ROWS)), ROWS, **asked)


def test_a_finished_store_reopens_as_itself_finished(tmp_path):
    url = str(tmp_path / "s")
    w = _new(url)
    _write_all(w)
    done = w.finalize()
    again = _new(url)
    assert again.resumed and again.complete and again.meta == done  # the stored metadata, statistics included
    assert again.meta.domains[0].heldout_nll is not None and again.pending_units() == []


def test_a_location_holding_only_packed_rows_becomes_the_store_and_keeps_them(tmp_path):
    url = str(tmp_path / "s")
    PackedRows(url).write_state({"seq_len": T}, {})
    w = _new(url)
    assert not w.resumed and StoreFiles(url).status() == spec.STATUS_WRITING
    assert PackedRows(url, read_only=True).read_state()["domains"] == {}


def test_resuming_where_no_store_is_says_so_and_names_packed_rows(tmp_path):
    url = str(tmp_path / "s")
    with pytest.raises(StoreNotFoundError, match="no ddk store at .* create one with `ddk-teacher dump`"):
        StoreWriter.resume(url)
    PackedRows(url).write_state({"seq_len": T}, {})
    with pytest.raises(StoreNotFoundError, match="holds only packed rows"):
        StoreWriter.resume(url)


def _their_root_doc(meta):
    """The root document (a zarr buffer) another process creating a store of ``meta`` writes, with its own claim."""
    doc = {spec.ROOT_ATTR: meta.replace(status=spec.STATUS_WRITING).to_dict(), spec.CLAIM_ATTR: "theirs"}
    return GroupMetadata(attributes=doc).to_buffer_dict(default_buffer_prototype())["zarr.json"]


def test_a_store_another_process_creates_before_ours_is_never_deleted_even_with_overwrite(tmp_path, monkeypatch):
    # The other process's root document lands between this writer's look (nothing there) and its exclusive create:
    # --overwrite meant the store that was there when the user ran the command, not one being created now.
    url = str(tmp_path / "s")
    theirs = tiny_meta(domains=tuple(ROWS), fingerprint="sha256:theirs")
    real = LocalStore.set_if_not_exists

    async def racing(self, key, value):
        monkeypatch.setattr(LocalStore, "set_if_not_exists", real)
        await real(self, key, _their_root_doc(theirs))
        return await real(self, key, value)

    monkeypatch.setattr(LocalStore, "set_if_not_exists", racing)
    with pytest.raises(StoreExistsError, match="different settings"):
        _new(url, overwrite=True)
    assert StoreFiles(url).meta().tokenizer.fingerprint == "sha256:theirs"


@pytest.mark.parametrize("other", ["same settings", "another tokenizer", "other work units"])
def test_a_root_document_rewritten_by_a_process_creating_the_store_at_the_same_moment(tmp_path, monkeypatch, other):
    # Both creates passed; the other process's root document is written last, after this writer made its nodes.
    url = str(tmp_path / "s")
    real = writer_module.ensure_nodes

    def then_theirs(root, meta, *a):
        real(root, meta, *a)
        if other == "another tokenizer":
            meta = meta.replace(tokenizer=dataclasses.replace(meta.tokenizer, fingerprint="sha256:x"))
        (tmp_path / "s" / "zarr.json").write_bytes(_their_root_doc(meta).to_bytes())
        if other == "other work units":
            StoreFiles(url).edit_group_layout("alpha", "train", lambda lay: lay.update(unit_rows=8))

    monkeypatch.setattr(writer_module, "ensure_nodes", then_theirs)
    if other == "same settings":
        w = _new(url)
        assert w.resumed  # the store is theirs: this writer joins it
        return
    with pytest.raises(StoreExistsError, match="at the same moment with different settings") as e:
        _new(url)
    assert str(e.value).endswith("then rerun the other with --overwrite")  # ours lost: only --overwrite takes it


# ------------------------------------------------------------------------------------------------ units
def test_units_are_dealt_to_shards_round_robin_in_one_global_order(tmp_path):
    w = _new(str(tmp_path / "s"))
    order = [(u.domain, u.split, u.index) for u in w.all_units()]
    assert order == [("alpha", "train", 0), ("alpha", "train", 1), ("alpha", "train", 2), ("alpha", "heldout", 0),
                     ("beta", "train", 0), ("beta", "heldout", 0), ("beta", "heldout", 1)]  # train, then heldout
    units = list(w.all_units())
    for n in (2, 3):
        assert [w.pending_units((i, n)) for i in range(n)] == [units[i::n] for i in range(n)]
    for bad in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(ConfigError, match="expected I/N with 0 <= I < N"):
            w.pending_units(bad)


def test_done_is_told_per_unit_and_only_by_the_done_flag(tmp_path):
    w = _new(str(tmp_path / "s"))
    units = w.units("alpha", "train")
    w.write_unit(units[1], **_data(units[1]))
    assert [w.is_done(u) for u in units] == [False, True, False]
    markers = w._arrays_of("alpha", "train")[spec.ARR_UNITS]
    odd = markers[0]
    odd[MARKER_DONE_COL] = spec.UNIT_DONE + 1  # neither written nor cleared: not a unit to trust
    markers[0] = odd
    assert w.done_flags("alpha", "train").tolist() == [False, True, False] and not w.is_done(units[0])


def test_a_slightly_positive_target_log_prob_is_stored_as_zero(tmp_path):
    # A teacher's log_softmax can round log(1) to a hair above 0: stored clamped, never as damage verify reports.
    url = str(tmp_path / "s")
    w = _new(url)
    u = w.units("alpha", "heldout")[0]
    data = _data(u)
    data["target_logprobs"][1, 2] = 3e-7
    w.write_unit(u, **data)
    stored = w._arrays_of("alpha", "heldout")[spec.ARR_TARGET_LOGPROBS][1, 2]
    assert stored == 0.0
    _write_all(w)
    meta = w.finalize()
    want = data["target_logprobs"].astype(np.float32).astype(np.float64)
    want[1, 2] = 0.0
    assert math.isclose(meta.domains[0].heldout_nll, -want.mean(), rel_tol=1e-9)
    assert validate_store(url) == []


def _failing_data_writes(monkeypatch, module, name: str) -> None:
    """Make ``module.name`` (a unit's data write) fail as a disk error would; marker writes still work."""
    real = getattr(module, name)

    def failing(*a, **k):
        files = a[1] if len(a) > 1 else None
        if isinstance(files, dict) and all("/units/" in key for key in files):
            return real(*a, **k)
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(module, name, failing)


def test_a_unit_whose_data_write_fails_is_not_marked_written(tmp_path, monkeypatch):
    w = _new(str(tmp_path / "s"))
    u = w.units("alpha", "train")[1]
    _failing_data_writes(monkeypatch, objectio, "write_local")
    with pytest.raises((StoreIOError, OSError)):
        w.write_unit(u, **_data(u))
    monkeypatch.undo()
    assert not w.is_done(u) and u in w.pending_units()


def test_a_lost_temporary_file_is_written_again_and_other_missing_files_are_errors(tmp_path, monkeypatch):
    # Another writer's finalize removes temporary files it takes for a killed writer's: that write is retried.
    w = _new(str(tmp_path / "s"))
    real = objectio.write_local
    calls = []

    def losing(root, files, lose=3, filename="x/c/0.0123456789abcdef0123456789abcdef.partial"):
        calls.append(sorted(files))
        if len(calls) <= lose:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", filename)
        return real(root, files)

    monkeypatch.setattr(objectio, "write_local", losing)
    u = w.units("alpha", "train")[0]
    w.write_unit(u, **_data(u))
    assert len(calls) == 5 and calls[0] == calls[3] and w.is_done(u)  # data 4 times (3 lost), then the marker
    calls.clear()
    monkeypatch.setattr(objectio, "write_local", lambda root, files: losing(root, files, lose=4))
    with pytest.raises(FileNotFoundError):  # lost on every try: not forever
        w.write_unit(w.units("alpha", "train")[1], **_data(u))
    assert len(calls) == 4 and not w.is_done(w.units("alpha", "train")[1])
    calls.clear()
    monkeypatch.setattr(objectio, "write_local", lambda root, files: losing(root, files, filename="x/c/0"))
    with pytest.raises(FileNotFoundError):  # any other missing file: at once
        w.write_unit(w.units("alpha", "train")[1], **_data(u))
    assert len(calls) == 1


def _failing_store_writes(monkeypatch, fails) -> None:
    """Make zarr's writes (and deletes: a chunk of fill values) of the keys ``fails(key)`` picks in a local store fail
    as a disk error would."""
    for method in ("set", "delete"):
        real = getattr(LocalStore, method)

        async def failing(self, key, *a, _real=real):
            if fails(key):
                raise OSError(errno.EIO, "I/O error", key)
            return await _real(self, key, *a)

        monkeypatch.setattr(LocalStore, method, failing)


def _zarr_path_store(url: str) -> StoreWriter:
    """A store whose data arrays hold big-endian chunks and whose marker array holds two units per chunk: layouts
    chunkio leaves to zarr (another writer's, or an older ddk's), so every write takes write_unit's zarr path."""
    _new(url)
    files = StoreFiles(url)

    def big_endian(doc):
        for codec in doc["codecs"][0]["configuration"]["codecs"]:
            if codec["name"] == "bytes" and "configuration" in codec:
                codec["configuration"]["endian"] = "big"

    for d, splits in ROWS.items():
        for split in splits:
            for name in spec.DATA_ARRAYS:
                if files.doc_path(d, split, name).exists():
                    files.edit_doc(big_endian, d, split, name)
            files.edit_doc(lambda doc: doc["chunk_grid"]["configuration"].update(chunk_shape=[2, doc["shape"][1]]),
                           d, split, spec.ARR_UNITS)
    w = StoreWriter.resume(url)
    arrays = w._arrays_of("alpha", "train")
    assert chunkio.chunk_codec(arrays[spec.ARR_TOKENS]) is None
    assert chunkio.chunk_codec(arrays[spec.ARR_UNITS]).chunk_rows == 2  # not one marker per object
    return w


def test_zarr_s_path_checks_values_marks_units_after_their_data_and_finalizes(tmp_path, monkeypatch):
    w = _zarr_path_store(str(tmp_path / "s"))
    u = w.units("alpha", "train")[0]
    bad = _data(u)
    bad["tokens"][0, 0] = V
    with pytest.raises(ValueError, match="ids outside"):
        w.write_unit(u, **bad)
    assert not w.is_done(u)
    _failing_store_writes(monkeypatch, lambda key: "/c/" in key and f"/{spec.ARR_UNITS}/" not in key)
    with pytest.raises(OSError):
        w.write_unit(u, **_data(u))
    monkeypatch.undo()
    assert not w.is_done(u)
    _write_all(w)
    assert [w.done_flags(d, s).all() for d in ROWS for s in spec.SPLITS] == [True] * 4
    meta = w.finalize()
    held = w._arrays_of("alpha", "heldout")[spec.ARR_TARGET_LOGPROBS][:]
    assert meta.status == spec.STATUS_COMPLETE and math.isclose(meta.domains[0].heldout_nll, -held.mean(dtype=float))


# ------------------------------------------------------------------------------------------------ reset, finalize
def test_reset_units_clears_every_marker_given_after_the_status_and_nothing_for_none(tmp_path, monkeypatch):
    url = str(tmp_path / "s")
    w = _new(url)
    _write_all(w)
    w.finalize()
    w.reset_units([])  # nothing to rewrite: the store stays finished
    assert w.complete and StoreFiles(url).status() == spec.STATUS_COMPLETE
    units = [*w.units("alpha", "train")[:2], w.units("beta", "heldout")[1]]
    _failing_store_writes(monkeypatch, lambda key: f"/{spec.ARR_UNITS}/" in key)
    with pytest.raises(OSError):  # a failure clearing the first marker: readers refuse the store already
        StoreWriter.resume(url).reset_units(units)
    monkeypatch.undo()
    assert StoreFiles(url).status() == spec.STATUS_WRITING
    StoreWriter.resume(url).reset_units(units)
    again = StoreWriter.resume(url)
    assert not again.complete and again.pending_units() == units  # every one, and only those
    for u in units:
        again.write_unit(u, **_data(u))
    assert again.finalize().status == spec.STATUS_COMPLETE and validate_store(url) == []


def test_finalize_records_each_domains_held_out_statistics_from_the_data(tmp_path):
    url = str(tmp_path / "s")
    w = _new(url)
    _write_all(w)
    meta = w.finalize()
    assert w.complete and w.meta == meta == StoreFiles(url).meta()
    for dom in meta.domains:
        target = np.concatenate([_data(u)["target_logprobs"] for u in w.units(dom.name, "heldout")])
        nll = -np.minimum(target.astype(np.float32), 0).astype(np.float64).mean()
        assert ROWS[dom.name]["heldout"] == len(target)
        assert math.isclose(dom.heldout_nll, nll, rel_tol=1e-12), dom.name
        assert math.isclose(dom.heldout_ppl, math.exp(nll), rel_tol=1e-12), dom.name


def test_finalize_refuses_held_out_targets_that_are_not_finite(tmp_path):
    # A held-out value that reads as NaN (edited, or a chunk of fill values inside a shard): no NaN statistics recorded.
    url = str(tmp_path / "s")
    w = _new(url)
    _write_all(w)
    w._arrays_of("beta", "heldout")[spec.ARR_TARGET_LOGPROBS][3, 5] = np.nan
    with pytest.raises(StoreCorruptError, match="beta/heldout/target_logprobs: missing or non-finite values"):
        w.finalize()
    assert not w.complete and StoreFiles(url).status() == spec.STATUS_WRITING
