"""The pack phase's contracts that a mutation campaign found unchecked: a domain stopped mid-pack is resumed (not
selected again) and counted as packed by this run; a selection whose held-out documents failed to write is not
recorded; --overwrite replaces a half-packed store whose files changed, and leaves none of the old rows; a shard
other than 0 waits for every domain, refuses rows packed meanwhile with other settings, and does not wait for rows
already there; unreadable packed rows hide no domain from the dump; packs from before the file hashes; held-out
rows spanning chunks. Real tokenizer, real stores in tmp_path; a failure is faked by a raising write."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ddk_store import tokenizer_fingerprint
from ddk_store.errors import StoreExistsError
from ddk_store.packed import PackedRows
from ddk_testkit.commands import HELDOUT, SEQ_LEN, TOP_K
from ddk_testkit.corpora import write_corpus
from stage1_teacher import pack
from stage1_teacher.config import Stage1Config
from stage1_teacher.pack import (load_corpora_for, pack_corpora, pack_identity, pack_phase, pack_settings,
                                 packed_domains, run_pack)
from stage1_teacher.teacher import load_tokenizer, resolve_teacher
from stage1_teacher.tokenize import DocTokenizer, bos_to_add, tokenization_hash


class Stop(Exception):
    """A write that fails (a kill, a full disk) at a chosen point."""


def cfg_for(corpora, store, teacher, **kw) -> Stage1Config:
    return Stage1Config(teacher=str(teacher), corpora=str(corpora), store=str(store), seq_len=SEQ_LEN, top_k=TOP_K,
                        workers=1, progress=False, **{"heldout_seqs": HELDOUT, **kw})


@pytest.fixture(scope="module")
def tok(tiny_teacher):
    return load_tokenizer(resolve_teacher(str(tiny_teacher), weights=False))


@pytest.fixture
def corpus(tmp_path):
    """A corpus of this test's own (its files may be edited or deleted)."""
    return write_corpus(tmp_path / "corpus", n_docs=60)


def pack_direct(cfg: Stage1Config, tok, *, chunk_rows: int, **kw):
    """pack_corpora with the identity, settings and tokenizer the pack phase gives it (small ``chunk_rows``: a
    domain's rows span several chunks)."""
    corpora, files_complete = load_corpora_for(cfg)
    with DocTokenizer(tok, workers=1) as coder:
        identity = pack_identity(seq_len=cfg.seq_len, fingerprint=tokenizer_fingerprint(tok),
                                 eos_token_id=tok.eos_token_id, settings=pack_settings(cfg, corpora, tok),
                                 tokenization=tokenization_hash(coder))
        return pack_corpora(cfg.store, corpora, coder, identity=identity,
                            heldout_seqs=cfg.heldout_seqs, max_rows_per_domain=cfg.max_rows_per_domain,
                            on_bad_utf8=cfg.on_bad_utf8, eos_id=tok.eos_token_id, bos_id=bos_to_add(tok),
                            vocab_size=len(tok), chunk_rows=chunk_rows, files_complete=files_complete,
                            storage_options=None, **{"echo": lambda _: None, **kw})


def phase(cfg: Stage1Config, tok, echo, packer=None):
    corpora, files_complete = load_corpora_for(cfg)
    return pack_phase(cfg, corpora, tok, vocab_size=len(tok), files_complete=files_complete, echo=echo,
                      packer=packer)[0]


def stop_in_train_pass(cfg, tok, monkeypatch, domain: str = "scripture", at_chunk: int = 2) -> None:
    """Pack until ``domain``'s train chunk ``at_chunk`` fails (the domains before it packed), its cursor saved after
    every chunk."""
    real = PackedRows.write_chunk
    monkeypatch.setattr(pack, "SAVE_EVERY_S", 0.0)

    def failing(self, domain_, split, index, *a, **k):
        if domain_ == domain and split == "train" and index == at_chunk:
            raise Stop
        return real(self, domain_, split, index, *a, **k)

    monkeypatch.setattr(PackedRows, "write_chunk", failing)
    with pytest.raises(Stop):
        pack_direct(cfg, tok, chunk_rows=4)
    monkeypatch.setattr(PackedRows, "write_chunk", real)
    monkeypatch.setattr(pack, "SAVE_EVERY_S", 2.0)
    st = PackedRows(cfg.store).read_state()["domains"]
    assert st[domain]["state"] == "training" and st[domain]["cursor"]["rows"]


def _files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ resuming
def test_a_domain_stopped_mid_pack_is_resumed_from_its_cursor_and_counted_as_packed_now(corpus, tmp_path, tok,
                                                                                        tiny_teacher, monkeypatch):
    # its held-out selection is kept (not selected again), its train pass continues ("resuming"), and `pack` counts
    # it among the domains this run packed: the run did finish it
    cfg = cfg_for(corpus, tmp_path / "s", tiny_teacher)
    stop_in_train_pass(cfg, tok, monkeypatch)
    lines: list[str] = []
    packed = run_pack(cfg, echo=lines.append)
    assert "packing domain scripture: training rows (resuming)" in lines
    assert "packing domain scripture: selecting the held-out documents" not in lines
    assert "packing domain python: selecting the held-out documents" in lines
    assert packed.packed_now == ("scripture", "python", "legal")
    assert any(x.startswith(f"{packed.url}: packed 3 domain(s) in ") for x in lines), lines


def test_a_selection_whose_held_out_documents_failed_to_write_is_not_recorded(corpus, tmp_path, tok, tiny_teacher,
                                                                             monkeypatch):
    # the 'training' state is saved only once the held-out rows and document ordinals are written: a failure in
    # between leaves the domain unselected, and the rerun selects it again and packs the rows a clean pack packs
    cfg = cfg_for(corpus, tmp_path / "s", tiny_teacher)
    real = PackedRows.write_ints

    def failing(self, *a, **k):
        raise Stop

    monkeypatch.setattr(PackedRows, "write_ints", failing)
    with pytest.raises(Stop):
        pack_direct(cfg, tok, chunk_rows=4)
    monkeypatch.setattr(PackedRows, "write_ints", real)
    assert (PackedRows(cfg.store).read_state() or {}).get("domains", {}).get("scripture") is None
    again = pack_direct(cfg, tok, chunk_rows=4)
    ref = pack_direct(cfg_for(corpus, tmp_path / "ref", tiny_teacher), tok, chunk_rows=4)
    assert again.domains == ref.domains


# ------------------------------------------------------------------------------------------------ --overwrite
def test_overwrite_repacks_a_half_packed_domain_whose_file_changed(corpus, tmp_path, tok, tiny_teacher, monkeypatch):
    # without --overwrite it is refused naming the file; with it, the whole store is replaced (not refused as if
    # --overwrite could keep rows packed from another file)
    cfg = cfg_for(corpus, tmp_path / "s", tiny_teacher)
    stop_in_train_pass(cfg, tok, monkeypatch)
    with open(corpus.parent / "scripture.txt", "a", encoding="utf-8") as f:
        f.write("one more line of scripture\n")
    with pytest.raises(StoreExistsError, match="domain 'scripture' was packed from other files than .*scripture.txt"):
        phase(cfg, tok, echo=lambda _: None)
    lines: list[str] = []
    packed = phase(cfg_for(corpus, tmp_path / "s", tiny_teacher, overwrite=True), tok, echo=lines.append)
    assert (f"{packed.url}: --overwrite replaces the store there (its corpus files changed), packed rows included"
            in lines)
    assert packed.packed_now == ("scripture", "python", "legal")


def test_overwrite_leaves_none_of_the_old_packed_rows(corpus, tmp_path, tok, tiny_teacher):
    # rows packed with other settings are deleted, not overwritten in place: a store with fewer rows now holds no
    # chunk of the old ones (a fresh pack's files exactly, but for the pack document's own bytes)
    pack_direct(cfg_for(corpus, tmp_path / "s", tiny_teacher), tok, chunk_rows=4)
    capped = dict(max_rows_per_domain=3)
    pack_direct(cfg_for(corpus, tmp_path / "s", tiny_teacher, **capped), tok, chunk_rows=4,
                overwrite=True)
    pack_direct(cfg_for(corpus, tmp_path / "fresh", tiny_teacher, **capped), tok, chunk_rows=4)
    assert _files(tmp_path / "s").keys() == _files(tmp_path / "fresh").keys()


# ------------------------------------------------------------------------------------------------ shards
def _in_thread(fn):
    out: dict = {}

    def go():
        try:
            out["value"] = fn()
        except Exception as e:  # handed to the test
            out["error"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, out


def _until(pred, what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_shard_waits_for_every_domain_and_packs_nothing_itself(corpus, tmp_path, tok, tiny_teacher, monkeypatch):
    # shard 1 of 2 finds two domains packed and the last one half-packed: it waits (said once) until shard 0 has
    # packed them all, then scores the rows shard 0 packed; it never packs (two packers would write the same rows)
    monkeypatch.setattr(pack, "POLL_S", 0.02)
    cfg = cfg_for(corpus, tmp_path / "s", tiny_teacher)
    stop_in_train_pass(cfg, tok, monkeypatch, domain="legal")
    said: list[str] = []
    t, out = _in_thread(lambda: phase(cfg_for(corpus, tmp_path / "s", tiny_teacher, shard="1/2"), tok, said.append))
    _until(lambda: any(x.startswith("waiting for shard 0") for x in said) or not t.is_alive(), "the shard to wait")
    time.sleep(0.2)  # it looks again, and finds the last domain still packing
    assert t.is_alive() and "error" not in out, out
    ref = phase(cfg, tok, echo=lambda _: None)
    t.join(60)
    assert not t.is_alive() and "error" not in out, out
    assert out["value"].packed_now == () and out["value"].domains == ref.domains
    assert not any(x.startswith("packing domain") for x in said)


def test_a_waiting_shard_refuses_rows_packed_meanwhile_with_other_settings(corpus, tmp_path, tok, tiny_teacher,
                                                                          monkeypatch):
    monkeypatch.setattr(pack, "POLL_S", 0.02)
    said: list[str] = []
    shard = cfg_for(corpus, tmp_path / "s", tiny_teacher, shard="1/2", max_rows_per_domain=3)
    t, out = _in_thread(lambda: phase(shard, tok, said.append))
    _until(lambda: any(x.startswith("waiting for shard 0") for x in said) or not t.is_alive(), "the shard to wait")
    phase(cfg_for(corpus, tmp_path / "s", tiny_teacher, max_rows_per_domain=5), tok, echo=lambda _: None)
    t.join(60)
    assert not t.is_alive()
    assert isinstance(out.get("error"), StoreExistsError) and "--max-rows-per-domain" in str(out["error"]), out


def test_a_shard_finding_every_domain_packed_does_not_wait(corpus, tmp_path, tok, tiny_teacher, monkeypatch):
    monkeypatch.setattr(pack, "POLL_S", 0.02)
    cfg = cfg_for(corpus, tmp_path / "s", tiny_teacher)
    ref = phase(cfg, tok, echo=lambda _: None)
    said: list[str] = []
    packed = phase(cfg_for(corpus, tmp_path / "s", tiny_teacher, shard="1/2"), tok, said.append)
    assert packed.domains == ref.domains and packed.packed_now == ()
    assert not any(x.startswith("waiting") for x in said), said


# ------------------------------------------------------------------------------------------------ the pack document
def test_unreadable_packed_rows_hide_no_domain_from_the_dump(corpus, tmp_path, tok, tiny_teacher):
    # packed_domains() lists the domains whose sources need not be read: for a pack document this ddk cannot read
    # it is none (the pack phase then refuses it or, with --overwrite, replaces it), never an error before that
    import json

    cfg = cfg_for(corpus, tmp_path / "s", tiny_teacher)
    phase(cfg, tok, echo=lambda _: None)
    assert packed_domains(cfg) == {"scripture", "python", "legal"}
    doc_path = tmp_path / "s" / "_pack" / "zarr.json"
    doc = json.loads(doc_path.read_text())
    doc["attributes"]["ddk_pack"]["version"] += 1  # as a later ddk would write them
    doc_path.write_text(json.dumps(doc))
    assert packed_domains(cfg) == set()


def _strip_hashes(url: str) -> None:
    rows = PackedRows(url)
    state = rows.read_state()
    for st in state["domains"].values():
        for s in st["sources"]:
            s.pop("sha256", None)
    rows.write_state(state["identity"], state["domains"])


def test_a_pack_without_file_hashes_is_checked_by_size(corpus, tmp_path, tok, tiny_teacher):
    # a pack written before files were hashed records sizes only: its unchanged files are accepted (nothing to do),
    # a file of another size is still refused
    cfg = cfg_for(corpus, tmp_path / "s", tiny_teacher)
    phase(cfg, tok, echo=lambda _: None)
    _strip_hashes(cfg.store)
    lines: list[str] = []
    assert run_pack(cfg, echo=lines.append).packed_now == ()
    assert any("already packed with these settings: nothing to do" in x for x in lines), lines
    with open(corpus.parent / "legal.jsonl", "a", encoding="utf-8") as f:
        f.write('{"id": 999, "body": "an added document"}\n')
    with pytest.raises(StoreExistsError, match="domain 'legal' was packed from other files than .*legal.jsonl"):
        run_pack(cfg, echo=lambda _: None)


def test_held_out_rows_spanning_chunks_are_all_written(corpus, tmp_path, tok, tiny_teacher):
    # five held-out rows in chunks of four: the fifth row is in a chunk of its own
    cfg = cfg_for(corpus, tmp_path / "s", tiny_teacher, heldout_seqs=5)
    packed = pack_direct(cfg, tok, chunk_rows=4)
    big = pack_direct(cfg_for(corpus, tmp_path / "one_chunk", tiny_teacher, heldout_seqs=5), tok, chunk_rows=64)
    for d, st in packed.domains.items():
        assert st["heldout_rows"] == 5
        got = PackedRows(packed.url, read_only=True).read_rows(d, "heldout", 0, 5, seq_len=SEQ_LEN, chunk_rows=4,
                                                               dtype=packed.dtype)
        want = PackedRows(big.url, read_only=True).read_rows(d, "heldout", 0, 5, seq_len=SEQ_LEN, chunk_rows=64,
                                                             dtype=big.dtype)
        assert np.array_equal(got, want) and got.any(axis=1).all()
