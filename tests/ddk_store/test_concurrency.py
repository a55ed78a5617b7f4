"""Two writers racing on one new store, and repairing a damaged unit in place."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
from click.testing import CliRunner

from ddk_store import StoreExistsError, StoreIncompleteError, StoreWriter, open_store, spec
from ddk_store.cli import main as store_cli
from ddk_store.testing import StoreFiles, make_tiny_store, synth_rows, tiny_meta
from ddk_store.validate import validate_store

TRIALS = 6


def _rows(meta, n_train=4):
    return {d: {spec.SPLIT_TRAIN: n_train, spec.SPLIT_HELDOUT: 2} for d in meta.domain_names}


def _racer(urls, seq_len, barrier, results, opts):
    meta = tiny_meta(seq_len=seq_len)
    for url in urls:
        barrier.wait(60)
        try:
            w = StoreWriter.open_or_create(url, meta, _rows(meta), unit_rows=2, chunk_rows=1, storage_options=opts)
            for unit in w.pending_units():
                # Seeded by the unit, so two racers that both write a unit write the same data, as real dumps do.
                rng = np.random.default_rng([meta.domain_names.index(unit.domain), spec.SPLITS.index(unit.split),
                                             unit.index])
                w.write_unit(unit, **synth_rows(rng, unit.n_rows, meta.seq_len, meta.top_k, 64))
            w.finalize()
            results.put((url, seq_len, "ok", ""))
        except StoreExistsError as e:
            results.put((url, seq_len, "refused", str(e)))
        except Exception as e:  # noqa: BLE001 - any other outcome fails the test below, with its message
            results.put((url, seq_len, "crash", f"{type(e).__name__}: {e}"))


def _race(base, seq_lens, opts=None):
    urls = [f"{base}/race{i}" for i in range(TRIALS)]
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(len(seq_lens)), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(urls, t, barrier, results, opts)) for t in seq_lens]
    for p in procs:
        p.start()
    out = [results.get(timeout=180) for _ in range(TRIALS * len(seq_lens))]
    for p in procs:
        p.join(60)
    by_url: dict[str, list] = {}
    for url, seq_len, status, msg in out:
        by_url.setdefault(url, []).append((seq_len, status, msg))
    return by_url


@pytest.fixture(params=["local", "s3"])
def race_base(request, tmp_path):
    if request.param == "local":
        return str(tmp_path), None
    s3 = request.getfixturevalue("s3_server")
    return f"s3://ddk/race/{tmp_path.name}", s3.storage_options


def test_two_dumps_with_different_settings_on_one_new_store(race_base):
    """One clear winner or a clear refusal; never a store that mixes the two settings.

    On a local disk the root document is created exclusively, so there is always exactly one winner and the other
    run is told which setting differs. Object stores have no exclusive create: both runs may refuse, never both win.
    """
    base, opts = race_base
    for url, outcomes in _race(base, (16, 8), opts).items():
        assert not [o for o in outcomes if o[1] == "crash"], outcomes
        winners = [o[0] for o in outcomes if o[1] == "ok"]
        assert len(winners) == 1 if opts is None else len(winners) <= 1, outcomes
        for _, status, msg in outcomes:
            if status == "refused":
                assert "different settings" in msg, msg
                if opts is None:
                    assert "seq_len: store has" in msg, msg
        if winners:
            assert validate_store(url, storage_options=opts) == []
            assert open_store(url, storage_options=opts).meta.seq_len == winners[0]
        else:  # both refused: nothing that looks valid was left behind
            with pytest.raises(StoreIncompleteError):
                open_store(url, storage_options=opts)


def test_two_dumps_with_the_same_settings_on_one_new_store(race_base):
    """Same command started twice: both finish (they write identical units) and the store is valid."""
    base, opts = race_base
    for url, outcomes in _race(base, (16, 16), opts).items():
        assert [o[1] for o in outcomes] == ["ok", "ok"], outcomes
        assert validate_store(url, storage_options=opts) == []


@pytest.mark.parametrize("damage", ["flip", "unlink"])
def test_repair_resets_damaged_units_and_a_rerun_restores_the_store(tmp_path, damage):
    url, ref = str(tmp_path / "s"), str(tmp_path / "ref")
    make_tiny_store(url, unit_rows=4)
    make_tiny_store(ref, unit_rows=4)
    chunk = StoreFiles(url).row_chunk_path("beta", "train", "topk_logprobs", 5)
    if damage == "flip":
        b = bytearray(chunk.read_bytes())
        b[len(b) // 2] ^= 0x10
        chunk.write_bytes(bytes(b))
    else:
        chunk.unlink()
    assert validate_store(url)
    res = CliRunner().invoke(store_cli, ["repair", url])
    assert res.exit_code == 0, res.output
    assert "reset beta/train" in res.output and "1 unit(s) marked" in res.output
    with pytest.raises(Exception, match="writing"):
        open_store(url)  # readers refuse it until the rewrite
    # The same "dump" again rewrites only the reset unit and finalizes.
    w = StoreWriter.resume(url)
    assert [(u.domain, u.split, u.index) for u in w.pending_units()] == [("beta", "train", 1)]
    make_tiny_store(url, unit_rows=4)
    assert validate_store(url) == []
    a, b = open_store(url), open_store(ref)
    for dom in a.meta.domain_names:
        got, want = a.read_stored(dom, "train", np.arange(16)), b.read_stored(dom, "train", np.arange(16))
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    res = CliRunner().invoke(store_cli, ["repair", url])
    assert res.exit_code == 0 and "nothing to repair" in res.output


def test_repair_refuses_damage_outside_unit_data(tmp_path):
    url = str(tmp_path / "s")
    make_tiny_store(url, unit_rows=4)
    StoreFiles(url).doc_path("alpha", "heldout").unlink()
    res = CliRunner().invoke(store_cli, ["repair", url])
    assert res.exit_code == 2 and "cannot be repaired in place" in res.output and "Traceback" not in res.output


def test_settings_difference_names_the_command_line_setting_first(tmp_path):
    """When several things differ, the message names the flag a user changed (top_k), not a nested domain field."""
    url = str(tmp_path / "s")
    make_tiny_store(url)
    other = tiny_meta(top_k=8, domains=("alpha", "beta", "zeta"))
    rows = {d: {"train": 16, "heldout": 4} for d in other.domain_names}
    with pytest.raises(StoreExistsError, match=r"\(meta\.top_k: store has 4, this run has 8\)"):
        StoreWriter.open_or_create(url, other, rows)


def test_a_writer_killed_while_rewriting_a_done_unit_leaves_it_whole(tmp_path, monkeypatch):
    """Two identical dumps joined on one store may both write a unit (docs/stage1.md): the one killed half-way
    through rewriting a unit the other already marked done leaves that unit whole (objects are renamed into place),
    and the store finalizes and verifies."""
    import os

    url = str(tmp_path / "s")
    meta = tiny_meta()
    first = StoreWriter.open_or_create(url, meta, _rows(meta), unit_rows=2, chunk_rows=1)
    data = {}
    for unit in first.pending_units():
        data[unit] = synth_rows(np.random.default_rng(unit.index), unit.n_rows, meta.seq_len, meta.top_k, 64)
        first.write_unit(unit, **data[unit])
    second = StoreWriter.open_or_create(url, meta, _rows(meta), unit_rows=2, chunk_rows=1)  # joins: same settings
    assert second.resumed
    unit = next(iter(data))
    real_write = os.write

    def killed_half_way(fd, view):
        real_write(fd, bytes(view[: max(1, len(view) // 2)]))
        raise KeyboardInterrupt  # the kill, half-way through an object

    monkeypatch.setattr(os, "write", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        second.write_unit(unit, **data[unit])
    monkeypatch.setattr(os, "write", real_write)
    first.finalize()
    assert validate_store(url) == []
    np.testing.assert_array_equal(open_store(url).read_rows(unit.domain, unit.split, [0, 1]).tokens,
                                  data[unit]["tokens"][:2])
