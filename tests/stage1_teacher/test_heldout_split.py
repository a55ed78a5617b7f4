"""The document-level held-out split (packing v2): on a real dump no held-out document is in a training row, the
split is the same in every run, and the rule is recorded in the store; BOS where the teacher's tokenizer adds one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from ddk_store import open_store
from ddk_testkit.commands import HELDOUT, SEQ_LEN, dump_argv
from ddk_testkit.processes import run_cli
from ddk_testkit.snapshots import store_differences, store_snapshot
from stage1_teacher.corpus import load_corpora
from stage1_teacher.packing import HELDOUT_SCHEME, PACKING_SCHEME, doc_key, pack_domain
from stage1_teacher.plan import STAGE1_SCHEME, plan_domains
from stage1_teacher.teacher import load_tokenizer, resolve_teacher
from stage1_teacher.tokenize import DocTokenizer, bos_to_add


def _plans(teacher_dir, corpora_yaml, workers=1, batch=256, max_rows=0):
    teacher = resolve_teacher(str(teacher_dir))
    tok = load_tokenizer(teacher)
    with DocTokenizer(tok, workers=workers, batch=batch) as coder:
        return plan_domains(load_corpora(corpora_yaml), coder, seq_len=SEQ_LEN, heldout_seqs=HELDOUT,
                            max_rows_per_domain=max_rows, on_bad_utf8="skip", eos_id=tok.eos_token_id,
                            bos_id=bos_to_add(tok))


def test_no_heldout_document_is_in_a_training_row_of_a_real_dump(reference_store, tiny_teacher, corpora_yaml):
    plans = _plans(tiny_teacher, corpora_yaml)
    r = open_store(str(reference_store))
    s = r.meta.settings
    assert (s["stage1_scheme"], s["packing"], s["heldout_selection"]) == (STAGE1_SCHEME, PACKING_SCHEME,
                                                                          HELDOUT_SCHEME)
    for d, p in plans.items():
        # The plan is what the dump wrote...
        assert np.array_equal(r.read_rows(d, "heldout", range(HELDOUT)).tokens, p.heldout)
        assert np.array_equal(r.read_rows(d, "train", range(r.num_rows(d, "train"))).tokens, p.train)
        # ...and its held-out documents are in no training row: the document sets are disjoint and complete.
        held, train = set(p.heldout_docs.tolist()), set(p.train_docs.tolist())
        assert held and not held & train and held | train == set(range(p.info.n_documents))
        # Spread over the domain, not one contiguous run of documents at a fixed place.
        assert max(held) - min(held) > len(held)


def test_the_split_is_identical_in_a_second_run(reference_store, tiny_teacher, corpora_yaml, tmp_path):
    code, err = run_cli("ddk-teacher", dump_argv(tiny_teacher, corpora_yaml, tmp_path / "again"))
    assert code == 0, err
    a, b = open_store(str(reference_store)), open_store(str(tmp_path / "again"))
    for d in a.domains:
        for split in ("train", "heldout"):
            n = a.num_rows(d, split)
            assert n == b.num_rows(d, split)
            assert np.array_equal(a.read_rows(d, split, range(n)).tokens, b.read_rows(d, split, range(n)).tokens)


def test_lowest_keys_fill_the_heldout_rows_whatever_the_document_order():
    """The held-out set depends on the keys only (a lower key arriving late displaces a higher one)."""
    docs = [(doc_key("d", "f", i), [i + 1] * (1 + i % 5)) for i in range(60)]
    a = pack_domain(docs, domain="d", seq_len=4, eos_id=0, heldout_seqs=3)
    need = 3 * 4
    by_key = sorted(range(60), key=lambda i: docs[i][0])
    filled, expect = 0, []
    for i in by_key:
        if filled >= need:
            break
        expect.append(i)
        filled += len(docs[i][1]) + 1
    assert a.heldout_docs.tolist() == sorted(expect)
    rev = pack_domain(docs[::-1], domain="d", seq_len=4, eos_id=0, heldout_seqs=3)
    assert sorted(59 - i for i in rev.heldout_docs.tolist()) == sorted(expect)


def test_document_keys_by_hand():
    def ref(text: str) -> int:
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")

    assert doc_key("law", "a/b.txt", 12) == ref("law\0a/b.txt\x0012") == doc_key("law", "a/b.txt", 12, seed=0)
    assert doc_key("law", "a/b.txt", 12, seed=5) == ref("law\0a/b.txt\x0012\x005") != doc_key("law", "a/b.txt", 12)


def test_a_heldout_seed_draws_other_heldout_documents_from_a_real_corpus(tiny_teacher, corpora_yaml, tmp_path):
    seeded = tmp_path / "corpora.yaml"
    shutil.copytree(corpora_yaml.parent, tmp_path, dirs_exist_ok=True)
    seeded.write_text(corpora_yaml.read_text().replace("}", ", heldout_seed: 1}"), encoding="utf-8")
    assert [s.heldout_seed for s in load_corpora(seeded)] == [1, 1, 1]
    draw0, draw1 = _plans(tiny_teacher, corpora_yaml), _plans(tiny_teacher, seeded)
    for d in draw0:
        held, train = set(draw1[d].heldout_docs.tolist()), set(draw1[d].train_docs.tolist())
        assert held and not held & train and held | train == set(range(draw1[d].info.n_documents))
        assert held != set(draw0[d].heldout_docs.tolist()), d  # another sample of documents
        assert draw1[d].heldout.shape == draw0[d].heldout.shape
    again = _plans(tiny_teacher, seeded)
    assert all(np.array_equal(again[d].heldout_docs, draw1[d].heldout_docs) for d in draw1)  # and a fixed one
    # The dump's streaming pack phase draws the same documents as the plan.
    code, err = run_cli("ddk-teacher", dump_argv(tiny_teacher, seeded, tmp_path / "s"))
    assert code == 0, err
    r = open_store(str(tmp_path / "s"))
    for d, p in draw1.items():
        assert np.array_equal(r.read_rows(d, "heldout", range(HELDOUT)).tokens, p.heldout)
        assert np.array_equal(r.read_rows(d, "train", range(r.num_rows(d, "train"))).tokens, p.train)


def test_a_capped_domain_stops_reading_once_both_sides_are_full():
    read = []

    def docs():
        for i in range(10_000):
            read.append(i)
            yield doc_key("d", "f", i), [7, 7, 7]

    s = pack_domain(docs(), domain="d", seq_len=4, eos_id=0, heldout_seqs=2, max_train_rows=3)
    assert s.train.shape == (3, 4) and s.heldout.shape == (2, 4)
    assert len(read) < 50 and not set(s.train_docs.tolist()) & set(s.heldout_docs.tolist())


# ------------------------------------------------------------------------------------------------ BOS
def _with_bos(tiny_teacher, dst):
    """A copy of the tiny teacher whose tokenizer adds BOS (its <|endoftext|>) before every text, as Llama's does."""
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    shutil.copytree(tiny_teacher, dst)
    t = Tokenizer.from_file(str(dst / "tokenizer.json"))
    bos = "<|endoftext|>"
    t.post_processor = TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                          special_tokens=[(bos, t.token_to_id(bos))])
    t.save(str(dst / "tokenizer.json"))
    return dst


def test_bos_is_detected_from_what_the_tokenizer_adds(tiny_teacher, tmp_path):
    plain = load_tokenizer(resolve_teacher(str(tiny_teacher)))
    assert plain.bos_token_id is not None and bos_to_add(plain) is None  # has a BOS token, never adds it
    with_bos = load_tokenizer(resolve_teacher(str(_with_bos(tiny_teacher, tmp_path / "bos"))))
    assert bos_to_add(with_bos) == with_bos.bos_token_id


def test_every_document_starts_with_bos_and_the_store_records_it(tiny_teacher, corpora_yaml, reference_store,
                                                                 tmp_path):
    teacher = _with_bos(tiny_teacher, tmp_path / "bos")
    code, err = run_cli("ddk-teacher", dump_argv(teacher, corpora_yaml, tmp_path / "s", "--max-rows-per-domain", "4"))
    assert code == 0, err
    r = open_store(str(tmp_path / "s"))
    bos = load_tokenizer(resolve_teacher(str(teacher))).bos_token_id
    assert r.meta.settings["bos_token_id"] == bos
    assert open_store(str(reference_store)).meta.settings["bos_token_id"] is None
    plans = _plans(teacher, corpora_yaml, max_rows=4)
    for d in r.domains:
        tokens = r.read_rows(d, "train", range(4)).tokens
        assert tokens[0, 0] == bos  # the first training document starts the first row
        assert np.array_equal(tokens, plans[d].train[:4])
    s = pack_domain([(1, [5, 6]), (2, [7])], domain="d", seq_len=3, eos_id=0, heldout_seqs=1, bos_id=9)
    assert s.heldout.tolist() == [[9, 5, 6]] and s.train.tolist() == [[9, 7, 0]]


# ------------------------------------------------------------------------------------------------ workers
def test_workers_tokenize_to_the_same_rows(tiny_teacher, corpora_yaml):
    one = _plans(tiny_teacher, corpora_yaml, workers=1, batch=16)
    two = _plans(tiny_teacher, corpora_yaml, workers=2, batch=16)  # 8 batches per domain: the pool is used
    for d in one:
        for field in ("train", "heldout", "train_docs", "heldout_docs"):
            assert np.array_equal(getattr(one[d], field), getattr(two[d], field)), (d, field)


def test_dump_with_two_workers_is_identical_to_one(tiny_teacher, tmp_path):
    from ddk_testkit.corpora import write_corpus

    big = write_corpus(tmp_path / "corpus", n_docs=300)  # 300 documents a domain: two batches of up to 256
    one_domain = big.parent / "one.yaml"
    one_domain.write_text("domains:\n  scripture: {paths: [scripture.txt], format: lines}\n", encoding="utf-8")
    snaps = []
    for w in ("1", "2"):
        code, err = run_cli("ddk-teacher", dump_argv(tiny_teacher, one_domain, tmp_path / f"s{w}", "--workers", w))
        assert code == 0, err
        snaps.append(store_snapshot(str(tmp_path / f"s{w}")))
    assert store_differences(*snaps) == []


def test_zero_workers_is_one_clear_line(tiny_teacher, corpora_yaml, tmp_path):
    code, err = run_cli("ddk-teacher", dump_argv(tiny_teacher, corpora_yaml, tmp_path / "s", "--workers", "0"))
    assert code == 2
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "--workers must be >= 1" in lines[0], err
    assert not (tmp_path / "s").exists()


def test_settings_are_json(reference_store):
    s = open_store(str(reference_store)).meta.settings
    assert json.loads(json.dumps(s)) == s


def test_a_worker_that_dies_is_one_clear_error(tiny_teacher):
    import signal

    from ddk_store.errors import CorpusError

    tok = load_tokenizer(resolve_teacher(str(tiny_teacher)))
    with DocTokenizer(tok, workers=2, batch=2) as coder:
        ids = coder.encode(f"document {i}" for i in range(400))
        next(ids)  # the pool is up
        for pid in list(coder._pool._processes):  # a worker killed from outside (OOM killer, operator)
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(CorpusError, match=r"a tokenizer worker process died .*--workers 1"):
            list(ids)
