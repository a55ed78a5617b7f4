"""StoreWriter/StoreReader: round trips, resume, overwrite safety, concurrency, corruption, CLI."""

import json
import multiprocessing as mp
import re

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from ddk_store import (StoreCorruptError, StoreExistsError, StoreIncompleteError, StoreNotFoundError, StoreWriter,
                       open_store, spec)
from ddk_store.cli import main as store_cli
from ddk_store.errors import StoreFormatError
from ddk_store.testing import StoreFiles, make_tiny_store, synth_rows, tiny_meta
from ddk_store import writer as writer_module
from ddk_store.validate import validate_store
from ddk_testkit.outages import fake_outage

ROWS = {"alpha": {"train": 10, "heldout": 3}, "beta": {"train": 7, "heldout": 2}}


def _write_all(url, meta, rows, seed=0, shard=None, unit_rows=2):
    w = StoreWriter.open_or_create(url, meta, rows, unit_rows=unit_rows, chunk_rows=1)
    data = _data(meta, rows, seed)
    for u in w.pending_units(shard=shard):
        w.write_unit(u, **{k: v[u.start:u.stop] for k, v in data[(u.domain, u.split)].items()})
    return w, data


def _data(meta, rows, seed):
    rng = np.random.default_rng(seed)
    return {(d, s): synth_rows(rng, n, meta.seq_len, meta.top_k, meta.tokenizer.vocab_size)
            for d, splits in rows.items() for s, n in sorted(splits.items())}


def _assert_same_store(a, b):
    ra, rb = open_store(a), open_store(b)
    assert ra.meta.identity() == rb.meta.identity()
    for d in ra.domains:
        assert ra.meta.domain(d).heldout_nll == rb.meta.domain(d).heldout_nll
        for s in spec.SPLITS:
            n = ra.num_rows(d, s)
            for name, x in ra.read_stored(d, s, np.arange(n)).items():
                np.testing.assert_array_equal(x, rb.read_stored(d, s, np.arange(n))[name])


@settings(max_examples=12, deadline=None)
@given(seq_len=st.integers(2, 40), k=st.integers(1, 12), vocab=st.sampled_from([12, 1000, 70000]),
       enc=st.sampled_from((spec.ENC_IDSORT_Q8, spec.ENC_RANK_F16)), seed=st.integers(0, 1000),
       n_train=st.integers(0, 9))
def test_roundtrip_property(seq_len, k, vocab, enc, seed, n_train):
    k = min(k, vocab)
    url = f"memory://rt-{seed}-{seq_len}-{k}-{vocab}-{enc}-{n_train}"
    meta = tiny_meta(domains=("x", "y"), seq_len=seq_len, top_k=k, vocab_size=vocab, encoding=enc)
    rows = {"x": {"train": n_train, "heldout": 2}, "y": {"train": 3, "heldout": 1}}
    w, data = _write_all(url, meta, rows, seed=seed, unit_rows=2)
    w.finalize()
    r = open_store(url)
    for (d, s), want in data.items():
        idx = np.random.default_rng(seed).integers(0, max(1, rows[d][s]), size=5) if rows[d][s] else []
        b = r.read_rows(d, s, idx, order="rank")
        np.testing.assert_array_equal(b.tokens, want["tokens"][idx])
        np.testing.assert_array_equal(b.target_logprobs, want["target_logprobs"][idx].astype(np.float32))
        for n_, pos in np.ndindex(len(idx), seq_len - 1):
            wi, wl = want["topk_ids"][idx][n_, pos], want["topk_logprobs"][idx][n_, pos]
            assert set(b.topk_ids[n_, pos].tolist()) == set(wi.tolist())
            got = dict(zip(b.topk_ids[n_, pos].tolist(), b.topk_logprobs[n_, pos].tolist()))
            for i, lp in zip(wi.tolist(), wl.tolist()):
                assert abs(got[i] - lp) <= (1 / 32 + 1e-6 if enc == spec.ENC_IDSORT_Q8 else 1e-2)
    nll = -np.mean(data[("x", "heldout")]["target_logprobs"].astype(np.float32), dtype=np.float64)
    assert r.meta.domain("x").heldout_nll == pytest.approx(nll, rel=1e-6)


def test_incomplete_store_is_refused_and_resumes(tmp_path):
    url = str(tmp_path / "s")
    meta = tiny_meta(domains=tuple(ROWS))
    w = StoreWriter.open_or_create(url, meta, ROWS, unit_rows=2, chunk_rows=1)
    data = _data(meta, ROWS, 0)
    units = w.pending_units()
    for u in units[:3]:  # "killed" after three units
        w.write_unit(u, **{k: v[u.start:u.stop] for k, v in data[(u.domain, u.split)].items()})
    # ... in the middle of a chunk write: zarr's temporary file of the interrupted write stays behind.
    stale = tmp_path / "s" / "alpha" / "train" / "tokens" / "c" / f"9.{'ab' * 16}.partial"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"half a chunk")
    user_file = tmp_path / "s" / "notes.partial"  # not zarr's pattern: never touched
    user_file.write_text("mine")
    with pytest.raises(StoreIncompleteError, match="incomplete.*rerunning the same"):
        open_store(url)
    with pytest.raises(StoreIncompleteError, match="not written yet"):
        w.finalize()
    w2 = StoreWriter.open_or_create(url, meta, ROWS, unit_rows=2, chunk_rows=1)
    assert w2.resumed and not w2.complete
    assert w2.pending_units() == units[3:]
    for u in w2.pending_units():
        w2.write_unit(u, **{k: v[u.start:u.stop] for k, v in data[(u.domain, u.split)].items()})
    assert stale.exists()  # resuming leaves it (another shard could own a live one) ...
    w2.finalize()
    assert not stale.exists() and user_file.exists()  # ... finalize, with every unit in, removes it
    ref, _ = _write_all(str(tmp_path / "ref"), meta, ROWS)
    ref.finalize()
    _assert_same_store(url, str(tmp_path / "ref"))
    again = StoreWriter.open_or_create(url, meta, ROWS, unit_rows=2, chunk_rows=1)
    assert again.complete and again.pending_units() == []


def test_existing_store_is_never_clobbered(tmp_path):
    url = str(tmp_path / "stores" / "s")
    make_tiny_store(url)
    sibling = tmp_path / "stores" / "keep.txt"
    sibling.write_text("precious")
    before = open_store(url).read_stored("alpha", "train", np.arange(4))
    other = tiny_meta(seq_len=8)
    rows = {d: {"train": 2, "heldout": 1} for d in other.domain_names}
    with pytest.raises(StoreExistsError, match="different settings.*seq_len: store has 16, this run has 8.*--overwrite"):
        StoreWriter.open_or_create(url, other, rows)
    after = open_store(url).read_stored("alpha", "train", np.arange(4))
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    # --overwrite replaces only the store's own directory.
    w = StoreWriter.open_or_create(url, other, rows, overwrite=True)
    assert not w.resumed and sibling.read_text() == "precious"
    # A non-empty directory that is not a store is refused even with overwrite.
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "data.bin").write_bytes(b"x")
    with pytest.raises(StoreExistsError, match="not empty and holds no ddk store"):
        StoreWriter.open_or_create(str(junk), other, rows, overwrite=True)
    assert (junk / "data.bin").exists()


def _shard_worker(url, shard, n):
    meta = tiny_meta(domains=tuple(ROWS))
    _write_all(url, meta, ROWS, shard=(shard, n))


def test_two_processes_writing_disjoint_units_equal_one(tmp_path):
    url = str(tmp_path / "sharded")
    meta = tiny_meta(domains=tuple(ROWS))
    StoreWriter.open_or_create(url, meta, ROWS, unit_rows=2, chunk_rows=1)  # metadata before the workers start
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_shard_worker, args=(url, i, 2)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    res = CliRunner().invoke(store_cli, ["finalize", url])
    assert res.exit_code == 0, res.output
    ref, _ = _write_all(str(tmp_path / "single"), meta, ROWS)
    ref.finalize()
    _assert_same_store(url, str(tmp_path / "single"))
    assert validate_store(url) == []


def _chunk(store_dir, domain, split, name, row):
    return StoreFiles(store_dir).row_chunk_path(domain, split, name, row)


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing", "metadata", "done_without_data", "marker_crc",
                                    "marker_flip"])
def test_verify_locates_every_corruption(tmp_path, damage):
    url = str(tmp_path / "s")
    make_tiny_store(url, unit_rows=4)
    assert validate_store(url) == []
    chunk = _chunk(url, "beta", "train", "topk_logprobs", 5)  # unit 1, rows 4-7
    expect = "beta/train unit 1 (rows 4-7) topk_logprobs"
    if damage == "flip":  # a byte of row 5's chunk (inside its shard, in format 1.2)
        _, offset, length = StoreFiles(url).row_chunk_span("beta", "train", "topk_logprobs", 5)
        b = bytearray(chunk.read_bytes())
        b[offset + length // 2] ^= 0x01
        chunk.write_bytes(bytes(b))
    elif damage == "truncate":
        chunk.write_bytes(chunk.read_bytes()[:-7])
    elif damage in ("missing", "done_without_data"):
        chunk.unlink()
    elif damage == "metadata":
        StoreFiles(url).edit_root_meta(lambda meta: meta["domains"][0].__setitem__("heldout_nll", 0.123))
        expect = "metadata.domains[alpha].heldout_nll"
    elif damage == "marker_crc":
        w = StoreWriter.resume(url)
        arr = w._arrays_of("beta", "train")[spec.ARR_UNITS]
        row = arr[1]
        row[3] ^= 1
        arr[1] = row
    elif damage == "marker_flip":  # a byte of unit 1's completion-marker chunk: its checksum fails on read
        marker = StoreFiles(url).marker_path("beta", "train", 1)
        b = bytearray(marker.read_bytes())
        b[len(b) // 2] ^= 0x01
        marker.write_bytes(bytes(b))
        expect = "beta/train unit 1 (rows 4-7) units: completion marker unreadable"
    issues = validate_store(url)
    assert issues, damage
    assert any(str(i).startswith(expect) for i in issues), [str(i) for i in issues]
    res = CliRunner().invoke(store_cli, ["verify", url])
    assert res.exit_code == 1 and expect in res.output
    if damage == "marker_flip":  # only that unit is named, and repair resets it for the dump to rewrite
        assert [i.unit for i in issues] == [("beta", "train", 1)], [str(i) for i in issues]
        res = CliRunner().invoke(store_cli, ["repair", url])
        assert res.exit_code == 0, res.output
        after = [str(i) for i in validate_store(url) if i.unit is not None]
        assert after == ["beta/train unit 1 (rows 4-7): not written (no completion marker)"], after
    if damage in ("flip", "truncate", "missing"):
        with pytest.raises(StoreCorruptError, match="beta/train"):
            open_store(url).read_rows("beta", "train", [5])
        open_store(url).read_rows("beta", "train", [0, 1, 9])  # undamaged rows still read


@pytest.mark.parametrize("damaged", ["marker", "held-out target"])
def test_a_damaged_chunk_stops_a_resume_or_finalize_in_one_line_that_names_the_unit_and_works(tmp_path, damaged):
    # A flipped byte in a unit's completion marker (read by every resume and by finalize) or in the held-out target
    # log-probs (read by finalize): zarr's checksum ValueError was a raw traceback. Now one line naming the unit, whose
    # advice (repair, then rewrite the units the dump rewrites) ends in a valid store.
    url = str(tmp_path / "s")
    meta = make_tiny_store(url, unit_rows=4, finalize=False).meta
    files = StoreFiles(url)
    if damaged == "marker":
        path = files.marker_path("beta", "train", 1)
        offset, length = 0, path.stat().st_size
        expect = "beta/train unit 1 (rows 4-7): completion marker fails its crc32c checksum"
    else:
        path, offset, length = files.row_chunk_span("beta", "heldout", spec.ARR_TARGET_LOGPROBS, 2)
        expect = f"beta/heldout unit 0 (rows 0-3): {spec.ARR_TARGET_LOGPROBS} fails its crc32c checksum"
    b = bytearray(path.read_bytes())
    b[offset + length // 2] ^= 0x01
    path.write_bytes(bytes(b))
    if damaged == "marker":  # what `ddk-teacher dump` asks first when it resumes, any shard
        with pytest.raises(StoreCorruptError, match=re.escape(expect)):
            StoreWriter.resume(url).pending_units(shard=(1, 2))
    res = CliRunner().invoke(store_cli, ["finalize", url])
    errors = [x for x in res.output.splitlines() if x.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and "Traceback" not in res.output, res.output
    assert f"{url}: {expect}" in errors[0] and f"`ddk-store repair {url}`" in errors[0], errors[0]
    res = CliRunner().invoke(store_cli, ["repair", url])
    assert res.exit_code == 0 and "1 unit(s) marked for rewriting" in res.output, res.output
    w = StoreWriter.resume(url)
    rng = np.random.default_rng(1)
    for u in w.pending_units():  # what the rerun dump does
        w.write_unit(u, **synth_rows(rng, u.n_rows, meta.seq_len, meta.top_k, meta.tokenizer.vocab_size))
    res = CliRunner().invoke(store_cli, ["finalize", url])
    assert res.exit_code == 0 and validate_store(url) == [], res.output


def test_a_marker_lost_from_a_finalized_store_is_damage_that_repair_resets(tmp_path):
    """verify called a finalized store's lost marker "not written" (an unfinished dump), repair then had nothing to
    do, the store stayed 'complete' and a dump of a complete store has nothing to do either: no way out."""
    url = str(tmp_path / "s")
    meta = make_tiny_store(url, unit_rows=4).meta
    StoreFiles(url).marker_path("beta", "heldout", 0).unlink()
    res = CliRunner().invoke(store_cli, ["verify", url])
    assert res.exit_code == 1 and "beta/heldout unit 0 (rows 0-3) units: completion marker lost in a finalized store" \
        in res.output, res.output
    res = CliRunner().invoke(store_cli, ["repair", url])
    assert res.exit_code == 0 and "1 unit(s) marked for rewriting" in res.output, res.output
    w = StoreWriter.resume(url)
    assert w.meta.status == spec.STATUS_WRITING and [(u.domain, u.split, u.index) for u in w.pending_units()] == [
        ("beta", "heldout", 0)]
    rng = np.random.default_rng(1)
    for u in w.pending_units():  # what the rerun dump does
        w.write_unit(u, **synth_rows(rng, u.n_rows, meta.seq_len, meta.top_k, meta.tokenizer.vocab_size))
    assert CliRunner().invoke(store_cli, ["finalize", url]).exit_code == 0 and validate_store(url) == []


def test_verify_of_damaged_array_metadata_says_what_repairs_it_not_to_run_verify(tmp_path):
    """An array whose metadata disagrees with the group layout: a reader's error says to run verify; verify's own
    FAIL line says instead that repair cannot fix it in place and the dump must be made again, as repair then says."""
    url = str(tmp_path / "s")
    make_tiny_store(url)
    StoreFiles(url).edit_doc(lambda doc: doc.__setitem__("shape", [doc["shape"][0] + 1, *doc["shape"][1:]]),
                             "alpha", "heldout", spec.ARR_TOKENS)
    with pytest.raises(StoreFormatError, match=f"`ddk-store verify {url}` lists the damage"):
        open_store(url).check_structure()
    res = CliRunner().invoke(store_cli, ["verify", url])
    assert res.exit_code == 1, res.output
    fail = [x for x in res.output.splitlines() if x.startswith("FAIL ")]
    assert len(fail) == 1 and fail[0].startswith("FAIL alpha/heldout: ") and "ddk-store verify" not in res.output
    assert fail[0].endswith("the metadata was edited or the store is damaged; `ddk-store repair` cannot fix this in "
                            "place: delete the store (or give another --store), then rerun the `ddk-teacher dump` "
                            "command that made it (--overwrite does not replace a store of the same settings)"), fail
    res = CliRunner().invoke(store_cli, ["repair", url])
    assert res.exit_code != 0 and "cannot be repaired in place; delete the store" in res.output, res.output


def test_cli_info_json_and_errors(tmp_path):
    url = str(tmp_path / "s")
    make_tiny_store(url)
    res = CliRunner().invoke(store_cli, ["info", url, "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["status"] == "complete" and info["top_k"] == 4
    assert [d["name"] for d in info["domains"]] == ["alpha", "beta", "gamma"]
    assert info["domains"][0]["train_rows"] == 16 and info["bytes"] > 0 and info["bytes_per_token"] > 0
    assert info["domains"][1]["teacher_heldout_ppl"] == pytest.approx(np.exp(info["domains"][1]["teacher_heldout_nll"]))
    res = CliRunner().invoke(store_cli, ["info", url])
    assert "bytes/token" in res.output and "gamma" in res.output
    res = CliRunner().invoke(store_cli, ["info", str(tmp_path / "nope")])
    assert res.exit_code == 2 and res.output.startswith("error: no ddk store at") and "Traceback" not in res.output
    with pytest.raises(StoreNotFoundError):
        open_store(str(tmp_path / "nope"))


@pytest.mark.parametrize("encoding, says", [("topk-rank-f16", "(float16 log-probs, tail derived as 1 - top-k mass)"),
                                             ("topk-idsort-q8", "(1/16 nat steps, tail derived as 1 - top-k mass)"),
                                             ("topk-idsort-q8-tail", "(1/32 nat steps, exact tail stored)")])
def test_cli_info_describes_each_encoding_as_stored(tmp_path, encoding, says):
    url = str(tmp_path / "s")
    make_tiny_store(url, encoding=encoding)
    res = CliRunner().invoke(store_cli, ["info", url])
    assert res.exit_code == 0, res.output
    assert f"encoding {encoding} {says}" in res.output


def test_file_url_and_memory_url(tmp_path):
    r = make_tiny_store(f"file://{tmp_path}/f")
    assert open_store(str(tmp_path / "f")).meta == r.meta
    assert StoreFiles(tmp_path / "f").doc_path().exists()
    r2 = make_tiny_store("memory://test-memory-url")
    assert open_store("memory://test-memory-url").num_rows("gamma", "heldout") == 4
    assert r2.meta.domain_names == ("alpha", "beta", "gamma")


def test_an_overwrite_killed_part_way_leaves_a_location_the_next_overwrite_takes(tmp_path, monkeypatch):
    """--overwrite deletes the old store file by file; killed after every 4th deletion, what is left still reads
    as the store's own (each group is renamed to a temporary name first and the root document goes last), so
    rerunning with --overwrite finishes the job instead of refusing the location as holding something else."""
    import os
    import shutil
    import threading

    template = tmp_path / "template"
    make_tiny_store(str(template), domains=("alpha",), train_rows=2, heldout_rows=1)
    other = tiny_meta(domains=("alpha",), seq_len=8)
    rows = {d: {"train": 2, "heldout": 1} for d in other.domain_names}
    real_unlink, real_rmdir = os.unlink, os.rmdir
    for kill_after in range(1, 10_000, 4):
        url = tmp_path / f"s{kill_after}"
        shutil.copytree(template, url)
        deleted = 0

        def counting(real):
            def delete(*args, **kwargs):
                nonlocal deleted
                if threading.current_thread() is not threading.main_thread():
                    return real(*args, **kwargs)  # (zarr's I/O thread: an interrupt there would hang its loop)
                if deleted == kill_after:
                    raise KeyboardInterrupt  # the kill, between two deletions
                real(*args, **kwargs)
                deleted += 1
            return delete

        monkeypatch.setattr(os, "unlink", counting(real_unlink))
        monkeypatch.setattr(os, "rmdir", counting(real_rmdir))
        try:
            StoreWriter.open_or_create(str(url), other, rows, overwrite=True)
            finished = True
        except KeyboardInterrupt:
            finished = False
        monkeypatch.setattr(os, "unlink", real_unlink)
        monkeypatch.setattr(os, "rmdir", real_rmdir)
        if finished:
            break
        w = StoreWriter.open_or_create(str(url), other, rows, overwrite=True)  # not refused: the store's own is left
        assert not w.resumed and w.meta.seq_len == 8
    assert kill_after > 20  # the old store's files and directories were kill points throughout


@pytest.mark.s3
def test_s3_roundtrip(s3_server):
    url = "s3://ddk/team-a/stores/tiny"
    opts = s3_server.storage_options
    meta = tiny_meta(domains=tuple(ROWS))
    w = StoreWriter.open_or_create(url, meta, ROWS, storage_options=opts, unit_rows=2, chunk_rows=1)
    data = _data(meta, ROWS, 0)
    for u in w.pending_units():
        w.write_unit(u, **{k: v[u.start:u.stop] for k, v in data[(u.domain, u.split)].items()})
    w.finalize()
    r = open_store(url, storage_options=opts)
    b = r.read_rows("alpha", "train", [9, 0, 4])
    np.testing.assert_array_equal(b.tokens, data[("alpha", "train")]["tokens"][[9, 0, 4]])
    assert validate_store(url, storage_options=opts) == []
    # A neighbour prefix in the same bucket survives an --overwrite of this store.
    import s3fs

    fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
    fs.pipe("ddk/team-a/stores/tiny-other/keep", b"keep")
    StoreWriter.open_or_create(url, tiny_meta(seq_len=8), {d: {"train": 1, "heldout": 1} for d in tiny_meta().domain_names},
                               storage_options=opts, overwrite=True)
    assert fs.cat("ddk/team-a/stores/tiny-other/keep") == b"keep"
    res = CliRunner().invoke(store_cli, ["info", url, "--json"] + sum((["--storage-option", f"{k}={v}"]
                                                                        for k, v in opts.items()), []))
    assert res.exit_code == 0 and json.loads(res.output)["status"] == "writing"
    with pytest.raises(Exception, match="give a bucket and a prefix"):
        open_store("s3://ddk", storage_options=opts)


def test_verify_rides_out_a_store_outage_instead_of_calling_it_damage(tmp_path, monkeypatch):
    """A connection failure while verify reads markers and data (faked: the first read of each such chunk raises
    ConnectionError, as an unreachable object store does) is retried, not reported as damage; an outage that
    outlasts the retry budget ends the check in one StoreUnreachableError."""
    from ddk_store import StoreUnreachableError

    url = str(tmp_path / "s")
    make_tiny_store(url, unit_rows=4)
    outage = fake_outage(
        monkeypatch, lambda key: key.startswith("beta/train/") and ("/units/" in key or "/topk_ids/" in key), "first")
    monkeypatch.setenv("DDK_RETRY_SECONDS", "5")
    assert validate_store(url) == []
    assert any("/units/" in k for k in outage.seen) and any("/topk_ids/" in k for k in outage.seen)
    outage.mode = "all"
    monkeypatch.setenv("DDK_RETRY_SECONDS", "0.5")
    with pytest.raises(StoreUnreachableError):
        validate_store(url)


def test_an_outage_past_the_retry_budget_is_never_reported_as_damage(tmp_path, monkeypatch):
    """Markers read fine, but every read of the data arrays (or of the held-out log-probs) fails as an unreachable
    store does (faked: ConnectionError from the storage layer). verify, repair, info and the held-out check end in
    StoreUnreachableError: none of them calls the units damaged (repair would have reset good units for a re-dump)."""
    from click.testing import CliRunner

    from ddk_store import StoreUnreachableError
    from ddk_store.cli import main as store_cli
    from ddk_store.testing import StoreFiles

    url = str(tmp_path / "s")
    make_tiny_store(url, unit_rows=4)
    failing = ["/topk_ids/"]
    fake_outage(monkeypatch, lambda key: any(part in key for part in failing))
    monkeypatch.setenv("DDK_RETRY_SECONDS", "0.2")
    with pytest.raises(StoreUnreachableError):
        validate_store(url)
    res = CliRunner().invoke(store_cli, ["repair", url])
    assert res.exit_code == 2 and "store unreachable" in res.output, res.output
    assert "reset" not in res.output and StoreFiles(url).status() == spec.STATUS_COMPLETE
    failing[:] = ["heldout/target_logprobs/"]
    with pytest.raises(StoreUnreachableError):
        open_store(url).heldout_nll("alpha")
    with pytest.raises(StoreUnreachableError):
        validate_store(url)
    failing[:] = ["/units/"]
    StoreFiles(url).edit_root_meta(lambda m: m.update(status=spec.STATUS_WRITING))  # info reads the markers
    res = CliRunner().invoke(store_cli, ["info", url])
    assert res.exit_code == 2 and "store unreachable" in res.output, res.output


def test_url_schemes_are_case_insensitive_and_object_keys_are_not_paths():
    from ddk_store.errors import ConfigError
    from ddk_store.storage import check_store_url

    assert check_store_url("S3://bucket/teams/store") == "s3://bucket/teams/store"
    assert check_store_url("Memory://x") == "memory://x"
    for bad in ("s3://bucket//teams/store", "s3://bucket/teams/./store", "s3://bucket/teams/../store"):
        with pytest.raises(ConfigError, match="an empty, '.' or '..' part in the prefix"):
            check_store_url(bad)


def test_storage_options_for_a_store_that_is_not_s3_are_named_where_no_store_is_found(tmp_path):
    from ddk_store.errors import StoreNotFoundError
    from ddk_store.storage import open_zarr_store, options_without_s3

    opts = {"endpoint_url": "http://127.0.0.1:8333", "secret": "s3cr3t"}
    for url in ("bucket/prefix", "memory://x"):
        hint = options_without_s3(url, opts)
        assert hint is not None and "(endpoint_url, secret)" in hint and "s3cr3t" not in hint, hint
    assert options_without_s3("s3://bucket/prefix", opts) is None and options_without_s3("memory://x", {}) is None
    # A reader ignores them on a local store (a run's saved settings may carry an S3 run's options to a local copy)...
    url = str(tmp_path / "store")
    make_tiny_store(url)
    assert open_store(url, storage_options=opts).domains
    assert open_zarr_store(url, read_only=True, storage_options=opts) is not None
    # ... and names them when there is no store there: most likely an s3:// location written without its scheme.
    with pytest.raises(StoreNotFoundError) as e:
        open_store(str(tmp_path / "bucket" / "prefix"), storage_options=opts)
    msg = str(e.value)
    assert "no ddk store at" in msg and "storage options (endpoint_url, secret) were given" in msg, msg
    assert "s3cr3t" not in msg


def test_suggested_commands_keep_the_endpoint_and_never_a_secret():
    from ddk_store.cli import target, unfinished_hint

    opts = {"endpoint_url": "http://127.0.0.1:8333", "key": "AKIA", "secret": "s3cr3t", "session_token": "tok-123",
            "client_kwargs": {"aws_secret_access_key": "kw-s3cr3t"}, "requester_pays": True}
    assert target("s3://b/p", opts) == ("s3://b/p --storage-option endpoint_url=http://127.0.0.1:8333 "
                                        "--storage-option requester_pays=true")
    hint = unfinished_hint("s3://b/my store", 0, opts)
    assert "`ddk-store finalize 's3://b/my store' --storage-option endpoint_url=http://127.0.0.1:8333" in hint
    assert not any(secret in hint for secret in ("AKIA", "s3cr3t", "tok-123", "client_kwargs"))


@pytest.mark.parametrize("encoding,found", [
    (spec.ENC_RANK_F16, "repeated top-k id within a position"), (spec.ENC_IDSORT_Q8, "repeated top-k id within a position"),
    # id deltas: a repeat is a zero delta on a kept entry, seen only across its ids and log-prob codes
    (spec.ENC_IDSORT_Q8_TAIL, "topk_ids: repeated kept id within a position (zero delta on a kept entry)")])
def test_verify_finds_a_top_k_id_repeated_within_a_position(tmp_path, monkeypatch, encoding, found):
    """The format requires the K ids of a position to be distinct (store-format.md, section 6): the writer refuses
    a repeat, and a store written without that check (an earlier ddk) is caught by verify in every top-k encoding
    (each array alone is valid); the same store with distinct ids passes."""
    def write(url: str, ids_of_position: list[int]) -> None:
        meta = tiny_meta(domains=("alpha",), seq_len=4, top_k=3, vocab_size=64, encoding=encoding)
        w = StoreWriter.open_or_create(url, meta, {"alpha": {"train": 2, "heldout": 1}})
        for split in spec.SPLITS:
            for u in w.units("alpha", split):
                n = u.n_rows
                w.write_unit(u, np.ones((n, 4), np.int32), np.tile(np.array(ids_of_position, np.int32), (n, 3, 1)),
                             np.tile(np.array([-1.0, -2.0, -3.0], np.float32), (n, 3, 1)),
                             np.full((n, 3), -1.0, np.float32))  # (T - 1 = 3 predicted positions)
        w.finalize()

    write(str(tmp_path / "ok"), [5, 9, 7])
    assert validate_store(str(tmp_path / "ok")) == []
    with pytest.raises(ValueError, match="topk_ids repeats an id within a position"):
        write(str(tmp_path / "refused"), [5, 5, 7])
    monkeypatch.setattr(writer_module, "check_unit_values", lambda *args: None)  # the fault: a writer without it
    write(str(tmp_path / "bad"), [5, 5, 7])
    issues = [str(i) for i in validate_store(str(tmp_path / "bad"))]
    where = [f"alpha/{s} unit 0 (rows 0-{n - 1})" for s, n in (("train", 2), ("heldout", 1))]
    assert [i[:len(w)] for i, w in zip(issues, where)] == where and len(issues) == 2, issues
    assert all(found in i for i in issues), issues


@pytest.mark.s3
def test_an_s3_store_sees_what_other_processes_wrote_and_deleted_since_it_listed(s3_server):
    """s3fs answers ``exists`` from a listing it cached: a store opened twice in one process (or read while other
    shards write) must still see keys written and deleted by anyone else since."""
    import s3fs
    from zarr.core.sync import sync

    from ddk_store.storage import open_zarr_store

    other = s3fs.S3FileSystem(**s3_server.storage_options, skip_instance_cache=True)  # another writer
    other.pipe("ddk/listing/first", b"1")
    store = open_zarr_store("s3://ddk/listing", read_only=True, storage_options=s3_server.storage_options)

    async def listed() -> set[str]:
        return {k async for k in store.list_dir("")}

    assert sync(listed()) == {"first"}  # (the listing s3fs would cache)
    other.pipe("ddk/listing/second", b"2")
    other.rm("ddk/listing/first")
    again = open_zarr_store("s3://ddk/listing", read_only=True, storage_options=s3_server.storage_options)
    for s in (store, again):
        assert sync(s.exists("second")) and not sync(s.exists("first"))
    assert sync(listed()) == {"second"}


def test_a_domain_with_no_held_out_rows_finalizes_with_no_statistics(tmp_path):
    """finalize read the held-out targets through a helper that named the first unit, and an empty split has none:
    an IndexError traceback. (`ddk-teacher dump` always holds rows out; the writer accepts none.)"""
    url = str(tmp_path / "s")
    meta = make_tiny_store(url, heldout_rows={"alpha": 0, "beta": 4, "gamma": 4}, finalize=False).finalize()
    assert [d.heldout_nll is None for d in meta.domains] == [True, False, False]
    assert validate_store(url) == []


def test_finalize_refuses_a_unit_marked_written_whose_data_object_is_gone(tmp_path):
    """A marker outliving its data (a power loss before the data reached the disk, a deleted object): finalize refuses
    the store naming the unit and how it is rewritten, and verify's hint is repair, not finalize."""
    from ddk_store.testing import StoreFiles

    url = str(tmp_path / "s")
    make_tiny_store(url, unit_rows=4)
    StoreFiles(url).edit_root_meta(lambda m: m.update(status=spec.STATUS_WRITING))  # every unit written, not final
    shard = tmp_path / "s" / "beta" / "train" / "tokens" / "c" / "1" / "0"
    assert shard.is_file()
    shard.unlink()
    res = CliRunner().invoke(store_cli, ["finalize", url])
    assert res.exit_code == 2, res.output
    assert "1 unit(s) are marked written but a data object of theirs is missing (first: beta/train unit 1" in \
        res.output and "ddk-store repair" in res.output, res.output
    assert StoreFiles(url).status() == spec.STATUS_WRITING
    res = CliRunner().invoke(store_cli, ["verify", url])
    assert res.exit_code == 1 and "repair" in res.output and "run `ddk-store finalize" not in res.output, res.output


def test_a_units_objects_reach_the_disk_before_their_rename_and_the_marker_after_them(tmp_path, monkeypatch):
    """write_local flushes each file before renaming it and its directories after; write_unit's marker comes later.
    (Recorded by wrapping os.fsync and os.replace: the order is the point, the disk is real.)"""
    import os

    from ddk_store import objectio

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(objectio.os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    make_tiny_store(str(tmp_path / "s"), domains=("alpha",), unit_rows=4)
    renames = [i for i, (kind, p) in enumerate(events) if kind == "rename" and "/c/" in p]  # the units' objects
    assert renames
    for i in renames:
        target = events[i][1]
        assert any(k == "fsync" and p.startswith(target + ".") and p.endswith(".partial") for k, p in events[:i]), \
            target  # the file's data, flushed under its temporary name before the rename
    data = [i for i in renames if "/tokens/c/" in events[i][1]]
    markers = [i for i in renames if "/units/c/" in events[i][1]]
    assert data and markers
    first_data_dir = os.path.dirname(events[data[0]][1])
    synced_dir = next(i for i, (k, p) in enumerate(events) if k == "fsync" and p == first_data_dir)
    assert synced_dir < min(m for m in markers if m > data[0])  # its directory flushed before the unit's marker
    made_in = os.path.dirname(first_data_dir)  # the unit's directory was made: its entry lives in its parent
    assert any(k == "fsync" and p == made_in for k, p in events[:min(m for m in markers if m > data[0])]), made_in


def test_an_s3_store_whose_url_holds_wildcards_is_never_deleted_from():
    """s3fs expands * ? [ ] in deletes: replacing s3://b/runs/exp[1] deleted the sibling store runs/exp1. Such a
    store is still read and written; every delete path refuses it before touching the store."""
    from zarr.core.sync import sync
    from zarr.storage import MemoryStore

    from ddk_store.errors import ConfigError
    from ddk_store.location import delete_all_but_pack, delete_pack
    from ddk_store.storage import check_store_url, delete_store_prefix, undeletable_reason

    url = "s3://bucket/runs/exp[1]"
    assert check_store_url(url) == url  # readable and writable
    assert "wildcards to the S3 client" in undeletable_reason(url)
    assert undeletable_reason("s3://bucket/runs/exp1") is None
    store = MemoryStore()
    for delete in (lambda: sync(delete_store_prefix(store, url)), lambda: delete_pack(store, url),
                   lambda: delete_all_but_pack(store, url)):
        with pytest.raises(ConfigError, match=r"wildcards to the S3 client"):
            delete()
