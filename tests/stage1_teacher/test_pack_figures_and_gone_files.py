"""More of the pack phase's contracts: the figures it records and prints (a capped domain's token count, the rows
`ddk-teacher pack` reports), a domain's own row cap, the order of the packed domains, how often it rewrites the pack
document when that write is slow, a corpus file gone since its domain was packed (no change to the domain, the
remaining files still compared), and a local dataset directory (noted as read whole, found packed again). Real
tokenizer, real stores in tmp_path; a slow write is faked by a delay before the real one."""

from __future__ import annotations

import time

import pytest

from ddk_store.errors import StoreExistsError
from ddk_store.packed import PackedRows
from ddk_testkit.commands import SEQ_LEN
from stage1_teacher import pack
from stage1_teacher.config import Stage1Config
from stage1_teacher.corpus import load_corpora, read_documents
from stage1_teacher.pack import files_problem, load_corpora_for, run_pack
from stage1_teacher.tokenize import bos_to_add

from .test_corpus_sources import jsonl, offline, project  # noqa: F401  (offline: no hub, for every test here)
from .test_pack_contracts import cfg_for, corpus, pack_direct, tok  # noqa: F401  (fixtures)


def _stream_tokens(tok, text: str) -> int:
    """A document's tokens in the packed stream: its ids, the BOS the tokenizer adds (if any), and the EOS after it."""
    return len(tok(text, add_special_tokens=False)["input_ids"]) + (bos_to_add(tok) is not None) + 1


# ------------------------------------------------------------------------------------------------ figures
def test_a_capped_domain_records_the_tokens_of_every_document_it_read(corpus, tmp_path, tok, tiny_teacher):
    """A domain capped by --max-rows-per-domain records n_documents (the documents read) and n_tokens, the stream
    tokens of exactly those documents, held-out and training alike: also where the training pass filled its rows
    before reaching the last document read (here: python and legal, capped at 3 rows)."""
    cfg = cfg_for(corpus, tmp_path / "s", tiny_teacher, max_rows_per_domain=3)
    packed = pack_direct(cfg, tok, chunk_rows=4)
    for src in load_corpora(cfg.corpora):
        info = packed.info(src.name)
        docs = list(read_documents(src, on_bad_utf8=cfg.on_bad_utf8))
        assert 0 < info.n_documents < len(docs), src.name  # capped: not every document was read
        assert info.n_tokens == sum(_stream_tokens(tok, d) for d in docs[: info.n_documents]), src.name


def test_pack_reports_the_held_out_rows_among_the_rows_it_packed(corpus, tmp_path, tok, tiny_teacher):
    """`ddk-teacher pack`'s last line counts every packed row, held-out rows included (the dump scores them too)."""
    cfg = cfg_for(corpus, tmp_path / "s", tiny_teacher, max_rows_per_domain=3)
    lines: list[str] = []
    packed = run_pack(cfg, echo=lines.append)
    rows = packed.rows()
    total = sum(r["train"] + r["heldout"] for r in rows.values())
    assert all(r["heldout"] > 0 for r in rows.values())
    assert lines[-1].startswith(f"{packed.url}: packed 3 domain(s) in ")
    assert f"; 3 domain(s), {total:,} rows of {SEQ_LEN} tokens ({total * SEQ_LEN:,} tokens); " in lines[-1], lines[-1]


def test_a_domain_cap_above_the_command_cap_is_the_domains_cap(corpus, tmp_path, tok, tiny_teacher):
    """A domain's own max_rows in --corpora replaces --max-rows-per-domain for it, in the training pass too, also
    where it is the larger: scripture capped at 5 rows, the others at the command's 2."""
    corpus.write_text(corpus.read_text().replace("format: lines}", "format: lines, max_rows: 5}"))
    packed = pack_direct(cfg_for(corpus, tmp_path / "s", tiny_teacher, max_rows_per_domain=2), tok, chunk_rows=4)
    assert {d: r["train"] for d, r in packed.rows().items()} == {"scripture": 5, "python": 2, "legal": 2}


def test_the_packed_domains_are_those_of_corpora_in_its_order(corpus, tmp_path, tok, tiny_teacher):
    """The packed store a run works with lists --corpora's domains in --corpora's order, also where the store was
    packed from the same domains listed in another order (which the pack settings allow)."""
    pack_direct(cfg_for(corpus, tmp_path / "s", tiny_teacher, max_rows_per_domain=3), tok, chunk_rows=4)
    head, *domains = corpus.read_text(encoding="utf-8").splitlines()
    reordered = corpus.parent / "reordered.yaml"
    reordered.write_text("\n".join([head, *reversed(domains)]) + "\n", encoding="utf-8")
    again = pack_direct(cfg_for(reordered, tmp_path / "s", tiny_teacher, max_rows_per_domain=3), tok, chunk_rows=4)
    assert again.packed_now == ()
    assert list(again.domains) == ["legal", "python", "scripture"] == list(again.rows())


# ------------------------------------------------------------------------------------------------ the pack document
def test_a_slow_pack_document_write_spaces_the_next_ones_by_its_cost(corpus, tmp_path, tok, tiny_teacher,
                                                                     monkeypatch):
    """Even with no minimum interval (SAVE_EVERY_S 0), a cursor is saved again only SAVE_COST_FACTOR times as long
    after a write as that write took: with writes of 0.25 s (a pack document listing 100,000 files), a domain's
    training pass saves its cursor after its first chunk and not after each of the others."""
    monkeypatch.setattr(pack, "SAVE_EVERY_S", 0.0)
    real = PackedRows.write_state
    cursors: dict[str, list[int]] = {}

    def slow(self, identity, domains):
        time.sleep(0.25)
        for d, st in domains.items():
            if st.get("state") == "training" and st["cursor"]["rows"]:
                seen = cursors.setdefault(d, [])
                if st["cursor"]["rows"] not in seen:
                    seen.append(st["cursor"]["rows"])
        return real(self, identity, domains)

    monkeypatch.setattr(PackedRows, "write_state", slow)
    packed = pack_direct(cfg_for(corpus, tmp_path / "s", tiny_teacher), tok, chunk_rows=4)
    for d, st in packed.domains.items():
        full_chunks = st["train_rows"] // 4
        assert full_chunks >= 4, (d, st["train_rows"])  # a cursor per chunk would be saved 4 times or more
        assert 1 <= len(cursors.get(d, [])) <= 2, (d, cursors.get(d))


# ------------------------------------------------------------------------------------------------ gone files
@pytest.fixture
def two_file_corpus(corpus):
    """The corpus with a second file for scripture (more.txt), named explicitly in --corpora."""
    (corpus.parent / "more.txt").write_text("".join(f"more scripture, verse {i}\n" for i in range(20)))
    corpus.write_text(corpus.read_text().replace("paths: [scripture.txt]", "paths: [scripture.txt, more.txt]"))
    return corpus


def test_a_file_gone_since_its_domain_was_packed_changes_nothing(two_file_corpus, tmp_path, tiny_teacher):
    """A file --corpora names, deleted once its domain is packed: --corpora is read without it (not every file is
    there), and `ddk-teacher pack` finds everything packed with these settings; the domain's remaining file is still
    compared, so an edit of it is refused."""
    cfg = cfg_for(two_file_corpus, tmp_path / "s", tiny_teacher, max_rows_per_domain=3)
    run_pack(cfg, echo=lambda _: None)
    (two_file_corpus.parent / "more.txt").unlink()
    corpora, files_complete = load_corpora_for(cfg)
    assert files_complete is False
    assert [f.rsplit("/", 1)[-1] for f in corpora[0].files] == ["scripture.txt"]
    lines: list[str] = []
    assert run_pack(cfg, echo=lines.append).packed_now == ()
    assert "nothing to do" in lines[-1] and not any(x.startswith("packing domain") for x in lines), lines
    with open(two_file_corpus.parent / "scripture.txt", "a", encoding="utf-8") as f:
        f.write("one more line of scripture\n")
    with pytest.raises(StoreExistsError, match="domain 'scripture' was packed from other files than .*scripture.txt"):
        run_pack(cfg, echo=lambda _: None)


def test_files_problem_passes_over_a_listed_file_gone_since(two_file_corpus, tmp_path, tiny_teacher):
    """files_problem compares the files that still exist: a file the domain lists but which is gone since (deleted
    after --corpora was read) is no change unless the whole set of files must match, and then it is the file
    named."""
    cfg = cfg_for(two_file_corpus, tmp_path / "s", tiny_teacher, max_rows_per_domain=3)
    run_pack(cfg, echo=lambda _: None)
    src = load_corpora(cfg.corpora)[0]
    sources = PackedRows(cfg.store, read_only=True).read_state()["domains"]["scripture"]["sources"]
    assert files_problem(src, sources, files_complete=True) is None
    (two_file_corpus.parent / "more.txt").unlink()
    assert files_problem(src, sources, files_complete=False) is None
    assert files_problem(src, sources, files_complete=True).endswith("more.txt")


# ------------------------------------------------------------------------------------------------ dataset directory
def test_a_local_dataset_directory_is_noted_as_read_whole_and_found_packed_again(tiny_teacher, tmp_path, monkeypatch):
    """`ddk-teacher pack` of a domain read from a local dataset directory (no 'data_files'): it says, before packing,
    that a resume cannot check the directory's files; a rerun finds the domain packed (no corpus file of it is
    listed, so there is none to compare), not packed from other files."""
    texts = [f"a local dataset row {i}, with words {i * 3} and {i * 5}" for i in range(60)]
    y = project(tmp_path, "  web: {dataset: ./corpora/web, text_field: text}\n")
    jsonl(y.parent / "corpora" / "web" / "train.jsonl", texts)
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = Stage1Config(teacher=str(tiny_teacher), corpora=str(y), store=str(tmp_path / "store"), seq_len=16, top_k=4,
                       heldout_seqs=2, workers=1, progress=False)
    lines: list[str] = []
    run_pack(cfg, echo=lines.append)
    note = f"note: domain 'web': dataset directory {y.parent / 'corpora' / 'web'} is read whole, so a resume cannot"
    assert any(x.startswith(note) for x in lines), lines
    assert lines.index(next(x for x in lines if x.startswith(note))) < lines.index(
        "packing domain web: selecting the held-out documents")
    lines.clear()
    assert run_pack(cfg, echo=lines.append).packed_now == ()
    assert "already packed with these settings: nothing to do" in lines[-1], lines


def test_a_packed_dataset_domain_needs_its_directory_no_more_for_pack_either(tiny_teacher, tmp_path, monkeypatch):
    """As for the dump (test_corpus_sources): once a local dataset directory's domain is packed, `ddk-teacher pack`
    finds it packed without the directory; it does not try to open the dataset first."""
    import shutil

    y = project(tmp_path, "  web: {dataset: ./corpora/web, text_field: text}\n")
    jsonl(y.parent / "corpora" / "web" / "train.jsonl", [f"a local dataset row {i}, words {i * 3}" for i in range(60)])
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = Stage1Config(teacher=str(tiny_teacher), corpora=str(y), store=str(tmp_path / "store"), seq_len=16, top_k=4,
                       heldout_seqs=2, workers=1, progress=False)
    run_pack(cfg, echo=lambda _: None)
    shutil.rmtree(y.parent / "corpora" / "web")
    lines: list[str] = []
    assert run_pack(cfg, echo=lines.append).packed_now == ()
    assert "already packed with these settings: nothing to do" in lines[-1], lines
