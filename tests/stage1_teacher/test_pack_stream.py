"""The streaming pack phase: the same rows as the in-memory plan, chunk by chunk, resumable after any chunk, and the
packed rows in the store (``_pack``) invisible to store readers."""

from __future__ import annotations

import re

import numpy as np
import pytest

from ddk_store.errors import ConfigError, StoreCorruptError, StoreFormatError
from ddk_store.packed import PackedRows
from ddk_testkit.commands import HELDOUT, SEQ_LEN
from stage1_teacher.corpus import load_corpora
from stage1_teacher.pack import pack_corpora, pack_identity
from stage1_teacher.packing import RowPacker, pack_rows
from stage1_teacher.plan import plan_domains, settings_of
from stage1_teacher.teacher import load_tokenizer, resolve_teacher
from stage1_teacher.tokenize import DocTokenizer, bos_to_add
from ddk_store import tokenizer_fingerprint


def _docs(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 50, size=int(rng.integers(1, 30))) for _ in range(n)]


@pytest.mark.parametrize("max_rows", [0, 7, 23])
def test_row_packer_equals_pack_rows_and_resumes_at_every_chunk(max_rows):
    docs = _docs(0, 80)
    want = pack_rows(docs, seq_len=8, eos_id=0, max_rows=max_rows).rows
    p = RowPacker(8, 0, 3, max_rows=max_rows)
    chunks, cursors = [], []
    for i, d in enumerate(docs):
        for c in p.add(i, d):
            chunks.append(c)
            cursors.append((p.rows_done, *p.cursor()))
        if p.full:
            break
    chunks.append(p.finish())
    assert np.array_equal(np.concatenate(chunks), want)
    assert all(c.shape[0] == 3 for c in chunks[:-1]) and chunks[-1].shape[0] < 3
    for rows_done, doc, skip in cursors:  # a run stopped after any chunk continues to the same rows
        q = RowPacker(8, 0, 3, max_rows=max_rows, rows_done=rows_done)
        rest = []
        for i in range(doc, len(docs)):
            rest.extend(q.add(i, docs[i], skip if i == doc else 0))
            if q.full:
                break
        rest.append(q.finish())
        assert np.array_equal(np.concatenate([want[:rows_done], *rest]), want), (rows_done, doc, skip)


def _setup(tiny_teacher, corpora_yaml, max_rows=0, heldout=HELDOUT):
    tok = load_tokenizer(resolve_teacher(str(tiny_teacher)))
    corpora = load_corpora(corpora_yaml)
    settings = settings_of(corpora, heldout_seqs=heldout, max_rows_per_domain=max_rows, on_bad_utf8="skip",
                           trust_remote_code=False, bos_token_id=bos_to_add(tok))
    identity = pack_identity(seq_len=SEQ_LEN, fingerprint=tokenizer_fingerprint(tok), eos_token_id=tok.eos_token_id,
                             settings=settings)
    kw = dict(identity=identity, heldout_seqs=heldout, max_rows_per_domain=max_rows, on_bad_utf8="skip",
              eos_id=tok.eos_token_id, bos_id=bos_to_add(tok), vocab_size=len(tok), echo=lambda m: None)
    return tok, corpora, kw


def _rows(packed, domain, split):
    st = packed.domains[domain]
    n = st[f"{split}_rows"]
    return PackedRows(packed.url, read_only=True).read_rows(domain, split, 0, n, seq_len=packed.seq_len,
                                                           chunk_rows=st["chunk_rows"], dtype=packed.dtype)


@pytest.mark.parametrize("max_rows", [0, 5])
def test_streaming_pack_gives_the_plans_rows(tiny_teacher, corpora_yaml, tmp_path, max_rows):
    tok, corpora, kw = _setup(tiny_teacher, corpora_yaml, max_rows)
    with DocTokenizer(tok, workers=2, batch=16) as coder:
        plans = plan_domains(corpora, coder, seq_len=SEQ_LEN, heldout_seqs=HELDOUT, max_rows_per_domain=max_rows,
                             on_bad_utf8="skip", eos_id=tok.eos_token_id, bos_id=bos_to_add(tok))
        packed = pack_corpora(str(tmp_path / "s"), corpora, coder, chunk_rows=4, **kw)
    for d, plan in plans.items():
        assert np.array_equal(_rows(packed, d, "train"), plan.train), d
        assert np.array_equal(_rows(packed, d, "heldout"), plan.heldout), d
        info = packed.info(d)
        assert (info.n_documents, info.n_tokens, info.sources) == (plan.info.n_documents, plan.info.n_tokens,
                                                                    plan.info.sources)
    if max_rows == 0:  # packed arrays read with other chunk rows than they hold: refused, not the wrong rows
        d = next(iter(packed.domains))
        with pytest.raises(StoreFormatError, match=rf"_pack/{d}\.train holds chunks of \(4, {SEQ_LEN}\), the "
                                                   rf"pack document says chunks of \(8, {SEQ_LEN}\)"):
            PackedRows(packed.url, read_only=True).read_rows(d, "train", 0, 4, seq_len=packed.seq_len, chunk_rows=8,
                                                             dtype=packed.dtype)


class Stop(Exception):
    """A fault injected into the store writes: the process 'dies' after some chunks."""


def stop_pack_at(stop_at: int, monkeypatch, url: str, corpora, coder, kw) -> None:
    """Pack into ``url`` until the ``stop_at``-th chunk write, where the process 'dies' (the rest is left to a
    rerun); the store's writes are the real ones again afterwards."""
    real = PackedRows.write_chunk
    count = [0]

    def failing(self, *a, **k):
        count[0] += 1
        if count[0] == stop_at:
            raise Stop
        return real(self, *a, **k)

    monkeypatch.setattr(PackedRows, "write_chunk", failing)
    try:
        with pytest.raises(Stop):
            pack_corpora(url, corpora, coder, chunk_rows=4, **kw)
    finally:
        monkeypatch.setattr(PackedRows, "write_chunk", real)


def test_a_pack_stopped_after_any_chunk_resumes_to_the_same_rows(tiny_teacher, corpora_yaml, tmp_path, monkeypatch):
    tok, corpora, kw = _setup(tiny_teacher, corpora_yaml)
    with DocTokenizer(tok, workers=1) as coder:
        ref = pack_corpora(str(tmp_path / "ref"), corpora, coder, chunk_rows=4, **kw)
        ref_state = PackedRows(ref.url).read_state()
        n_chunks = sum(-(-st["train_rows"] // 4) + -(-st["heldout_rows"] // 4) for st in ref.domains.values())
        for stop_at in (1, 5, n_chunks // 2, n_chunks - 1):
            url = str(tmp_path / f"s{stop_at}")
            stop_pack_at(stop_at, monkeypatch, url, corpora, coder, kw)
            again = pack_corpora(url, corpora, coder, chunk_rows=4, **kw)
            assert PackedRows(url).read_state() == ref_state, stop_at
            for d in ref.domains:
                for split in ("train", "heldout"):
                    assert np.array_equal(_rows(again, d, split), _rows(ref, d, split)), (stop_at, d, split)


def test_too_small_domains_are_one_error_naming_each(tiny_teacher, corpora_yaml, tmp_path):
    tok, corpora, kw = _setup(tiny_teacher, corpora_yaml, heldout=100_000)
    with DocTokenizer(tok, workers=1) as coder, pytest.raises(ConfigError) as e:
        pack_corpora(str(tmp_path / "s"), corpora, coder, **kw)
    msg = str(e.value)
    # One compact line: the need said once, each domain's rows, the --heldout-seqs every domain could give.
    m = re.fullmatch(r"3 domains are too small: --heldout-seqs 100000 needs at least 100001 rows of --seq-len "
                     rf"{SEQ_LEN} tokens per domain \(held-out rows take whole documents, and one row must be left "
                     r"to train on\); scripture has (\d+), python (\d+), legal (\d+); lower --heldout-seqs \(to at "
                     r"most (\d+)\) or --seq-len, or add text", msg)
    assert m, msg
    rows = {d: int(n) for d, n in zip(("scripture", "python", "legal"), m.groups())}
    for d, n in rows.items():  # each count is the one the domain's own check gives
        with DocTokenizer(tok, workers=1) as coder, pytest.raises(ConfigError) as one:
            pack_corpora(str(tmp_path / d), [c for c in corpora if c.name == d], coder, **kw)
        assert f"domain {d!r} is too small: {n} rows of --seq-len {SEQ_LEN}" in str(one.value)
    assert int(m.group(4)) == min(rows.values()) - 1


def test_a_domain_of_one_document_says_to_add_documents_not_to_lower_heldout_seqs(tiny_teacher, tmp_path):
    # One long document (a file read with `format: files`): it fills the held-out rows whatever --heldout-seqs is,
    # so the advice to lower --heldout-seqs could never work.
    (tmp_path / "one.txt").write_text(" ".join(f"word{i}" for i in range(400)), encoding="utf-8")
    (tmp_path / "many.txt").write_text("\n".join(f"line {i} of many" for i in range(200)), encoding="utf-8")
    (tmp_path / "c.yaml").write_text("domains:\n  one: {paths: [one.txt], format: files}\n"
                                     "  many: {paths: [many.txt], format: lines}\n")
    tok, corpora, kw = _setup(tiny_teacher, tmp_path / "c.yaml", heldout=1)
    with DocTokenizer(tok, workers=1) as coder, pytest.raises(ConfigError) as e:
        pack_corpora(str(tmp_path / "s"), corpora, coder, **kw)
    msg = str(e.value)
    assert "domain 'one' has too few documents: its held-out rows take whole documents, and the 1 that fill " \
           "--heldout-seqs 1 leave 0 tokens for training" in msg, msg
    assert "lower --heldout-seqs" not in msg and "'many'" not in msg


@pytest.mark.parametrize("fmt, documents", [("files", "files"), ("jsonl", "records")])
def test_held_out_tokens_beyond_the_held_out_rows_are_named(tiny_teacher, tmp_path, fmt, documents):
    # Two long documents: the one held out fills --heldout-seqs 1 with most of its tokens to spare, which go to
    # neither split; the user is told how many, and the two ways to keep them, in the words of the domain's format
    # (a file, a record): split such documents, or raise --heldout-seqs to the number it names, which keeps them all.
    texts = {name: " ".join(f"{name}{i}" for i in range(300)) for name in ("a.txt", "b.txt")}
    if fmt == "files":
        for name, text in texts.items():
            (tmp_path / name).write_text(text, encoding="utf-8")
        (tmp_path / "c.yaml").write_text("domains:\n  long: {paths: [a.txt, b.txt], format: files}\n")
    else:
        (tmp_path / "r.jsonl").write_text("".join(f'{{"body": "{t}"}}\n' for t in texts.values()), encoding="utf-8")
        (tmp_path / "c.yaml").write_text("domains:\n  long: {paths: [r.jsonl], format: jsonl, text_field: body}\n")
    tok, corpora, kw = _setup(tiny_teacher, tmp_path / "c.yaml", heldout=1)
    said = []
    with DocTokenizer(tok, workers=1) as coder:
        packed = pack_corpora(str(tmp_path / "s"), corpora, coder, **{**kw, "echo": said.append})
    sizes = {len(tok(text)["input_ids"]) for text in texts.values()}
    assert len(sizes) == 1  # whichever is held out
    held_doc = sizes.pop()
    unused = [m for m in said if m.startswith("note: domain long: its held-out documents (1) hold ")]
    assert len(unused) == 1, said
    n = int(unused[0].split(" hold ")[1].split(" tokens")[0].replace(",", ""))
    assert held_doc - SEQ_LEN <= n <= held_doc + 2 - SEQ_LEN  # the document (with BOS/EOS) less the one row used
    assert packed.domains["long"]["heldout_rows"] == 1 and packed.domains["long"]["train_rows"] >= 1
    m = re.search(rf"; to keep them, split long {documents} into shorter ones, or raise --heldout-seqs \(up to "
                  r"(\d+); it applies to every domain\) so the held-out rows use them$", unused[0])
    assert m and "format: lines" not in unused[0], unused[0]
    raised = int(m.group(1))
    tok, corpora, kw = _setup(tiny_teacher, tmp_path / "c.yaml", heldout=raised)
    said = []
    with DocTokenizer(tok, workers=1) as coder:
        packed = pack_corpora(str(tmp_path / "s2"), corpora, coder, **{**kw, "echo": said.append})
    assert not [x for x in said if x.startswith("note:")], said  # the same document, every row of it held out
    assert packed.domains["long"]["heldout_rows"] == raised and packed.domains["long"]["train_rows"] >= 1
    assert raised * SEQ_LEN > held_doc - SEQ_LEN  # (one document's rows: the other still trains)


def test_a_location_with_packed_rows_only_is_named_so_by_every_store_command(tiny_teacher, corpora_yaml, tmp_path):
    from click.testing import CliRunner

    from ddk_store.cli import main as store_cli

    tok, corpora, kw = _setup(tiny_teacher, corpora_yaml)
    url = str(tmp_path / "s")
    with DocTokenizer(tok, workers=1) as coder:
        pack_corpora(url, corpora, coder, **kw)
    want = f"{url} holds only packed rows (`ddk-teacher pack`), not a scored store yet: run `ddk-teacher dump` " \
           f"with the same settings and --store {url}"
    for command in ("finalize", "repair", "verify"):  # (`info` shows the packed rows: test_pack_cli.py)
        res = CliRunner().invoke(store_cli, [command, url])
        assert res.exit_code != 0 and want in res.output, (command, res.output)
        assert "--overwrite" not in res.output, (command, res.output)  # which would throw the packed rows away
    assert PackedRows(url, read_only=True).read_state() is not None  # and nothing was touched


@pytest.mark.parametrize("damage", ["deleted", "flipped byte"])
def test_a_resumed_pack_refuses_damaged_held_out_document_ordinals(tiny_teacher, corpora_yaml, tmp_path, monkeypatch,
                                                                   damage):
    # A pack stopped inside a domain's train pass resumes it skipping the held-out documents its `heldout_docs` array
    # names: read as zeros (a missing chunk) those documents would train. Refused, named, and seen by verify.
    tok, corpora, kw = _setup(tiny_teacher, corpora_yaml)
    url = str(tmp_path / "s")
    real = PackedRows.write_chunk

    def failing(self, domain, split, *a, **k):
        if split == "train":
            raise Stop
        return real(self, domain, split, *a, **k)

    monkeypatch.setattr(PackedRows, "write_chunk", failing)
    with DocTokenizer(tok, workers=1) as coder, pytest.raises(Stop):
        pack_corpora(url, corpora, coder, chunk_rows=4, **kw)
    monkeypatch.setattr(PackedRows, "write_chunk", real)
    d = next(d for d, st in PackedRows(url).read_state()["domains"].items() if st["state"] == "training")
    chunk = tmp_path / "s" / "_pack" / f"{d}.heldout_docs" / "c" / "0"
    if damage == "deleted":
        chunk.unlink()
        said = "missing"
    else:
        b = bytearray(chunk.read_bytes())
        b[len(b) // 2] ^= 0x01
        chunk.write_bytes(bytes(b))
        said = "fails its crc32c checksum"
    where = f"_pack/{d}.heldout_docs chunk 0"
    assert [(w, p[: len(said)]) for w, p in PackedRows(url).damaged_chunks(np.int32)] == [(where, said)]
    with DocTokenizer(tok, workers=1) as coder, pytest.raises(StoreCorruptError) as e:
        pack_corpora(url, corpora, coder, chunk_rows=4, **kw)
    assert f"{where}: {said}" in str(e.value) and "delete _pack" in str(e.value), str(e.value)


def test_a_tokenizer_that_ends_documents_with_another_eos_is_another_pack():
    # Two tokenizers with the same vocabulary and special tokens but another EOS (a base and an instruct variant)
    # share a fingerprint; a pack resumed with the other would mix separators mid-domain.
    from stage1_teacher.pack import identity_problem

    a = pack_identity(seq_len=16, fingerprint="sha256:x", eos_token_id=0, settings={"heldout_seqs": 2})
    b = pack_identity(seq_len=16, fingerprint="sha256:x", eos_token_id=384, settings={"heldout_seqs": 2})
    assert identity_problem(a, a) is None
    assert identity_problem(a, b) == "--teacher (tokenizer: EOS) was 0, this run has 384"
    legacy = {**a, "tokenizer": {"fingerprint": "sha256:x"}}  # a pack written before the identity held it
    assert identity_problem(legacy, b) is None
    assert identity_problem(legacy, {**b, "seq_len": 32}) == "--seq-len was 16, this run has 32"
    # the tokenization hash likewise: a pack written before it is compared without it, a later one by it
    c = pack_identity(seq_len=16, fingerprint="sha256:x", eos_token_id=0, settings={"heldout_seqs": 2},
                      tokenization="sha256:t1")
    d = pack_identity(seq_len=16, fingerprint="sha256:x", eos_token_id=0, settings={"heldout_seqs": 2},
                      tokenization="sha256:t2")
    assert identity_problem(a, c) is None and identity_problem(c, c) is None
    assert identity_problem(c, d).startswith("--teacher (tokenizer: how it splits text")
    assert identity_problem(legacy, d) is None


def test_a_file_starting_with_a_byte_order_mark_changes_the_identity_and_no_other_file_does(tmp_path):
    # The reader drops a leading mark (earlier versions kept it): a pack of such files written before holds other
    # rows, so the settings record it; without a marked file they are unchanged and older packs still resume.
    from stage1_teacher.pack import identity_problem

    (tmp_path / "a.txt").write_text("plain\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("\ufeffmarked\n", encoding="utf-8")

    def settings(name):
        y = tmp_path / f"{name}.yaml"
        y.write_text(f"domains:\n  prose: {{paths: [{name}.txt], format: lines}}\n", encoding="utf-8")
        return settings_of(load_corpora(y), heldout_seqs=2, max_rows_per_domain=0, on_bad_utf8="skip",
                           trust_remote_code=False, bos_token_id=None)

    plain, marked = settings("a"), settings("b")
    assert "utf8_bom" not in plain and marked["utf8_bom"] == "dropped"
    old = pack_identity(seq_len=16, fingerprint="sha256:x", eos_token_id=0,
                        settings={k: v for k, v in marked.items() if k != "utf8_bom"})
    new = pack_identity(seq_len=16, fingerprint="sha256:x", eos_token_id=0, settings=marked)
    assert identity_problem(new, new) is None
    assert identity_problem(old, new).startswith("the byte-order mark that starts a corpus file (this ddk drops it")


def test_the_pack_document_is_rewritten_per_chunk_only_as_often_as_its_cost_allows(tiny_teacher, corpora_yaml,
                                                                                  tmp_path, monkeypatch):
    """The document lists every source file, so with many files a rewrite per chunk would cost more than the rows:
    its writes are spaced in time (stage1_teacher.pack.SAVE_EVERY_S, SAVE_COST_FACTOR) and the rows and the final
    document are the same."""
    import stage1_teacher.pack as pack_module

    writes = []
    real = PackedRows.write_state

    def counted(self, identity, domains):
        writes.append({d: st.get("cursor", {}).get("rows") for d, st in domains.items()})
        return real(self, identity, domains)

    monkeypatch.setattr(PackedRows, "write_state", counted)
    tok, corpora, kw = _setup(tiny_teacher, corpora_yaml)
    runs = {}
    for every in (0.0, 3600.0):
        monkeypatch.setattr(pack_module, "SAVE_EVERY_S", every)
        monkeypatch.setattr(pack_module, "SAVE_COST_FACTOR", 0 if every == 0 else 20)
        writes.clear()
        with DocTokenizer(tok, workers=1, batch=16) as coder:
            packed = pack_corpora(str(tmp_path / f"s{every}"), corpora, coder, chunk_rows=4, **kw)
        runs[every] = (list(writes), packed)
    per_chunk, spaced = runs[0.0][0], runs[3600.0][0]
    chunks = sum(-(-st["train_rows"] // 4) for st in runs[0.0][1].domains.values())
    assert len(per_chunk) >= chunks > 3 * len(corpora)  # a cursor after (nearly) every training chunk...
    assert len(spaced) == 2 * len(corpora)  # ...or only each domain's two states: selected, then packed
    for d in runs[0.0][1].domains:
        for split in ("train", "heldout"):
            assert np.array_equal(_rows(runs[0.0][1], d, split), _rows(runs[3600.0][1], d, split))
    docs = [PackedRows(p.url, read_only=True).read_state() for _, p in runs.values()]
    assert docs[0] == docs[1]


def test_a_pack_stopped_chunks_after_its_last_saved_cursor_resumes_to_the_same_rows(tiny_teacher, corpora_yaml,
                                                                                    tmp_path, monkeypatch):
    import stage1_teacher.pack as pack_module

    monkeypatch.setattr(pack_module, "SAVE_EVERY_S", 3600.0)  # no cursor saved within a domain's training pass
    tok, corpora, kw = _setup(tiny_teacher, corpora_yaml)
    with DocTokenizer(tok, workers=1, batch=16) as coder:
        ref = pack_corpora(str(tmp_path / "ref"), corpora, coder, chunk_rows=4, **kw)
    real, written = PackedRows.write_chunk, []

    def dies_mid_domain(self, domain, split, index, rows, **k):
        if split == "train" and domain == corpora[1].name and index == 5:
            raise RuntimeError("killed")  # five chunks of the second domain written, its cursor still at 0
        written.append((domain, split, index))
        return real(self, domain, split, index, rows, **k)

    monkeypatch.setattr(PackedRows, "write_chunk", dies_mid_domain)
    with DocTokenizer(tok, workers=1, batch=16) as coder, pytest.raises(RuntimeError, match="killed"):
        pack_corpora(str(tmp_path / "s"), corpora, coder, chunk_rows=4, **kw)
    state = PackedRows(str(tmp_path / "s"), read_only=True).read_state()["domains"][corpora[1].name]
    assert state["state"] == "training" and state["cursor"]["rows"] == 0 and (corpora[1].name, "train", 4) in written
    monkeypatch.setattr(PackedRows, "write_chunk", real)
    with DocTokenizer(tok, workers=1, batch=16) as coder:
        again = pack_corpora(str(tmp_path / "s"), corpora, coder, chunk_rows=4, **kw)
    for d in ref.domains:
        for split in ("train", "heldout"):
            assert np.array_equal(_rows(again, d, split), _rows(ref, d, split)), (d, split)
    assert PackedRows(again.url, read_only=True).read_state() == PackedRows(ref.url, read_only=True).read_state()


def test_row_packer_hands_out_the_last_full_chunk_under_a_cap_from_add():
    """With max_rows a multiple of chunk_rows, the chunk that reaches the cap is a chunk like any other: add yields it
    (so pack_training writes it and saves a cursor after it) and finish has nothing left."""
    from stage1_teacher.packing import RowPacker

    packer = RowPacker(3, 99, 2, max_rows=4)
    chunks = list(packer.add(0, np.arange(20, dtype=np.int64)))  # 21 stream tokens: 7 rows' worth, capped at 4
    expected = np.arange(12, dtype=np.int32).reshape(2, 2, 3)
    assert len(chunks) == 2
    for got, want in zip(chunks, expected):
        np.testing.assert_array_equal(got, want)
    assert packer.full and packer.rows_done == 4
    assert packer.cursor() == (0, 12)
    assert packer.finish().shape == (0, 3)


def test_row_packer_counts_the_full_documents_before_its_cursor():
    """tokens_before_cursor: stream tokens (ids + EOS) of every document wholly before the cursor's document, counted
    in full even where that document was added with a skip; summed here from the documents' lengths."""
    docs = _docs(3, 40)
    p = RowPacker(8, 0, 3)
    for i, d in enumerate(docs):
        for _ in p.add(i, d):
            doc, _skip = p.cursor()
            assert p.tokens_before_cursor() == sum(len(x) + 1 for x in docs[:doc]), (i, doc)


def test_a_resumed_pack_records_the_same_domain_figures(tiny_teacher, corpora_yaml, tmp_path, monkeypatch):
    """A pack stopped mid-domain and resumed records the same per-domain figures (n_tokens included: the cursor's
    token count carries the training tokens before it) as an uninterrupted pack. The cursor is saved after every
    chunk here (not rate-limited), so the resumed run starts mid-domain, past training documents already in rows."""
    import stage1_teacher.pack as pack_mod

    monkeypatch.setattr(pack_mod, "SAVE_EVERY_S", 0.0)
    monkeypatch.setattr(pack_mod, "SAVE_COST_FACTOR", 0.0)
    tok, corpora, kw = _setup(tiny_teacher, corpora_yaml)
    with DocTokenizer(tok, workers=1) as coder:
        ref = pack_corpora(str(tmp_path / "ref"), corpora, coder, chunk_rows=4, **kw)
        for stops in ((3,), (5,), (3, 2)):  # (3, 2): stopped, resumed, stopped again, resumed
            url = str(tmp_path / ("s" + "_".join(map(str, stops))))
            for stop_at in stops:
                stop_pack_at(stop_at, monkeypatch, url, corpora, coder, kw)
            again = pack_corpora(url, corpora, coder, chunk_rows=4, **kw)
            assert again.domains == ref.domains, stops
