"""`ddk-teacher pack`, then `ddk-teacher dump` of the packed store: the dump reads no corpus (a corpus file deleted
in between is harmless) and gives the store a single dump gives; a store packed with other settings is one line."""

from __future__ import annotations

import json
import shutil

import pytest

from ddk_testkit.commands import HELDOUT, dump_argv
from ddk_testkit.corpora import write_corpus
from ddk_testkit.processes import run_cli
from ddk_testkit.snapshots import store_differences, store_snapshot


def pack_argv(teacher, corpora, store, *extra):
    return ["pack", *dump_argv(teacher, corpora, store, *extra)[1:]]


def one_line_error(code: int, err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and lines and lines[-1].startswith("error: "), err
    assert "Traceback" not in err
    return lines[-1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("pack_cli_corpus"), n_docs=60)


def test_pack_then_dump_equals_a_dump_and_needs_no_corpus_file(tiny_teacher, corpus, tmp_path):
    copy = tmp_path / "corpus"
    shutil.copytree(corpus.parent, copy)
    corpora = copy / corpus.name
    store = tmp_path / "s"
    code, err = run_cli("ddk-teacher", pack_argv(tiny_teacher, corpora, store, "--max-rows-per-domain", "6"))
    assert code == 0, err
    assert "packed 3 domain(s)" in err and "Loading weights" not in err
    code, err = run_cli("ddk-teacher", pack_argv(tiny_teacher, corpora, store, "--max-rows-per-domain", "6"))
    assert code == 0 and "packing domain" not in err, err  # packed already: nothing is read again
    assert "already packed with these settings: nothing to do; 3 domain(s)" in err, err
    (copy / "scripture.txt").unlink()  # gone between pack and score: the rows are in the store
    code, err = run_cli("ddk-teacher", dump_argv(tiny_teacher, corpora, store, "--max-rows-per-domain", "6"))
    assert code == 0, err
    assert "packing domain" not in err and "created" in err
    direct = tmp_path / "direct"
    code, err = run_cli("ddk-teacher", dump_argv(tiny_teacher, corpus, direct, "--max-rows-per-domain", "6"))
    assert code == 0, err
    a, b = store_snapshot(str(store)), store_snapshot(str(direct))
    # Same rows, teacher values, identity, settings and statistics; only the provenance paths differ (the corpus was
    # copied), and the pack document is the pack run's.
    a["/attrs"] = json.loads(json.dumps(a["/attrs"]).replace(str(copy), str(corpus.parent)))
    assert [k for k in store_differences(a, b) if "_pack/attrs" not in k] == []


def test_a_store_packed_with_other_settings_is_one_line_naming_the_flag(tiny_teacher, corpus, tmp_path):
    store = tmp_path / "s"
    code, err = run_cli("ddk-teacher", pack_argv(tiny_teacher, corpus, store, "--max-rows-per-domain", "3"))
    assert code == 0, err
    for argv in (pack_argv, dump_argv):
        line = one_line_error(*run_cli("ddk-teacher", argv(tiny_teacher, corpus, store, "--max-rows-per-domain", "3",
                                                            "--heldout-seqs", str(HELDOUT + 1))))
        assert f"--heldout-seqs was {HELDOUT}, this run has {HELDOUT + 1}" in line and "--overwrite" in line
    line = one_line_error(*run_cli("ddk-teacher", pack_argv(tiny_teacher, corpus, store, "--seq-len", "16")))
    assert "--seq-len was 32, this run has 16" in line
    code, err = run_cli("ddk-teacher", pack_argv(tiny_teacher, corpus, store, "--max-rows-per-domain", "2",
                                                 "--overwrite"))
    assert code == 0 and "packing domain" in err, err


def test_a_tokenizer_that_splits_text_otherwise_with_the_same_vocabulary_is_another_pack(tiny_teacher, corpus,
                                                                                         tmp_path):
    """The vocabulary fingerprint (what stage 2 checks) misses a normalizer edit; the packed rows would change."""
    from transformers import AutoTokenizer

    from ddk_store import tokenizer_fingerprint

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teacher, teacher)
    store = tmp_path / "s"
    code, err = run_cli("ddk-teacher", pack_argv(teacher, corpus, store, "--max-rows-per-domain", "3"))
    assert code == 0, err
    before = tokenizer_fingerprint(AutoTokenizer.from_pretrained(teacher))
    config = json.loads((teacher / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ messages }}"  # a change that splits no text otherwise: the pack still counts
    (teacher / "tokenizer_config.json").write_text(json.dumps(config))
    code, err = run_cli("ddk-teacher", pack_argv(teacher, corpus, store, "--max-rows-per-domain", "3"))
    assert code == 0 and "already packed with these settings" in err, err
    doc = json.loads((teacher / "tokenizer.json").read_text())
    doc["normalizer"] = {"type": "Lowercase"}
    (teacher / "tokenizer.json").write_text(json.dumps(doc))
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(teacher)) == before
    line = one_line_error(*run_cli("ddk-teacher", pack_argv(teacher, corpus, store, "--max-rows-per-domain", "3")))
    assert "--teacher (tokenizer: how it splits text; its normalizer, pre-tokenizer or merges changed) was " in line
    assert "--overwrite" in line, line


def test_packed_rows_of_another_version_are_refused_and_replaced_with_overwrite(tiny_teacher, corpus, tmp_path):
    """The refusal says to pass --overwrite, and --overwrite does replace them."""
    store = tmp_path / "s"
    code, err = run_cli("ddk-teacher", pack_argv(tiny_teacher, corpus, store, "--max-rows-per-domain", "3"))
    assert code == 0, err
    doc_path = store / "_pack" / "zarr.json"
    doc = json.loads(doc_path.read_text())
    doc["attributes"]["ddk_pack"]["version"] += 1  # as a later ddk would write them
    doc_path.write_text(json.dumps(doc))
    line = one_line_error(*run_cli("ddk-teacher", pack_argv(tiny_teacher, corpus, store, "--max-rows-per-domain", "3")))
    assert "packed rows of version" in line and "pass --overwrite" in line, line
    code, err = run_cli("ddk-teacher", pack_argv(tiny_teacher, corpus, store, "--max-rows-per-domain", "3",
                                                 "--overwrite"))
    assert code == 0 and "--overwrite replaces the store there (" in err and "packing domain" in err, err
    assert json.loads(doc_path.read_text())["attributes"]["ddk_pack"]["version"] == doc["attributes"]["ddk_pack"][
        "version"] - 1


def test_pack_refuses_bad_input_in_one_line(tiny_teacher, corpus, tmp_path):
    line = one_line_error(*run_cli("ddk-teacher", pack_argv(tiny_teacher, corpus, tmp_path / "s", "--workers", "0")))
    assert "--workers must be >= 1" in line and not (tmp_path / "s").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    line = one_line_error(*run_cli("ddk-teacher", pack_argv(tiny_teacher, corpus, tmp_path / "other")))
    assert "holds no ddk store" in line and (tmp_path / "other" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("damage", ["flipped byte", "deleted chunk"])
def test_damaged_packed_rows_stop_the_dump_in_one_line_that_says_how_to_recover(tiny_teacher, corpus, tmp_path,
                                                                                damage):
    store = tmp_path / "s"
    code, err = run_cli("ddk-teacher", pack_argv(tiny_teacher, corpus, store, "--max-rows-per-domain", "6"))
    assert code == 0, err
    chunk = sorted(p for p in (store / "_pack" / "scripture.train").rglob("*")
                   if p.is_file() and p.name != "zarr.json")[0]
    if damage == "flipped byte":
        b = bytearray(chunk.read_bytes())
        b[len(b) // 2] ^= 0x01  # the chunk's crc32c no longer matches
        chunk.write_bytes(bytes(b))
    else:
        chunk.unlink()  # zarr would read its fill value: rows of token 0, scored as if they were data
    dump = dump_argv(tiny_teacher, corpus, store, "--max-rows-per-domain", "6")
    line = one_line_error(*run_cli("ddk-teacher", dump))
    said = "fails its crc32c checksum" if damage == "flipped byte" else "missing;"
    assert f"packed rows _pack/scripture.train chunk 0: {said}" in line and "delete _pack" in line, line
    shutil.rmtree(store / "_pack")  # what the line says: the corpora are packed again and the dump completes
    code, err = run_cli("ddk-teacher", dump)
    assert code == 0 and "packing domain" in err, err


def test_verify_finds_damaged_packed_rows_of_a_finished_store_and_repair_deletes_them(tiny_teacher, corpus, tmp_path):
    store = tmp_path / "s"
    dump = dump_argv(tiny_teacher, corpus, store, "--max-rows-per-domain", "6")
    code, err = run_cli("ddk-teacher", dump)
    assert code == 0, err
    code, out = run_cli("ddk-store", ["verify", str(store)])
    assert code == 0, out
    chunk = store / "_pack" / "legal.heldout" / "c" / "0" / "0"
    b = bytearray(chunk.read_bytes())
    b[len(b) // 2] ^= 0x01
    chunk.write_bytes(bytes(b))
    (store / "_pack" / "python.train" / "c" / "0" / "0").unlink()
    (store / "_pack" / "scripture.train" / "zarr.json").unlink()
    code, out = run_cli("ddk-store", ["verify", str(store)])
    assert code == 1, out
    assert "FAIL _pack/legal.heldout chunk 0: fails its crc32c checksum" in out, out
    assert "FAIL _pack/python.train chunk 0: missing" in out, out
    assert "FAIL _pack/scripture.train: " in out and "missing or unreadable" in out, out
    assert "repair" in out.strip().splitlines()[-1]
    code, out = run_cli("ddk-store", ["repair", str(store)])
    assert code == 0 and "deleted _pack" in out and "nothing else to repair" in out, out
    assert not (store / "_pack").exists()
    code, out = run_cli("ddk-store", ["verify", str(store)])
    assert code == 0, out
    code, err = run_cli("ddk-teacher", dump)  # the finished store needs no packed rows
    assert code == 0 and "nothing to do" in err, err


def test_documents_skipped_for_invalid_utf8_are_located_in_the_note_on_every_run(tiny_teacher, corpus, tmp_path):
    copy = tmp_path / "corpus"
    shutil.copytree(corpus.parent, copy)
    with open(copy / "scripture.txt", "ab") as f:
        f.write(b"a line that is not \xff UTF-8\n")
    (copy / "python" / "mod_0003.py").write_bytes(b"def f():\n    return '\xfe'\n")
    store = tmp_path / "s"
    for attempt in ("packs", "finds it packed"):
        code, err = run_cli("ddk-teacher", pack_argv(tiny_teacher, copy / corpus.name, store))
        assert code == 0, err
        lines = [x for x in err.splitlines() if "invalid UTF-8" in x]
        assert f"domain scripture: skipped 1 document(s) with invalid UTF-8 (first: {copy}/scripture.txt:61)" \
            in lines and f"domain python: skipped 1 document(s) with invalid UTF-8 (first: " \
            f"{copy}/python/mod_0003.py)" in lines, (attempt, err)


def test_a_memory_store_is_said_to_live_only_in_this_process(tiny_teacher, corpus, tmp_path):
    """pack and dump into memory:// work, and each says, first, that the store is gone when the command ends (a
    later `ddk-store info memory://...` finds nothing); a store on disk gets no such note."""
    note = ("note: memory://{} lives only inside this process: the store is gone when this command ends (give a "
            "directory path or an s3:// URL to keep it)")
    for argv, name in ((pack_argv, "mem-note-pack"), (dump_argv, "mem-note-dump")):
        code, err = run_cli("ddk-teacher", argv(tiny_teacher, corpus, f"memory://{name}", "--max-rows-per-domain",
                                                "2"))
        assert code == 0, err
        lines = err.splitlines()
        assert note.format(name) in lines, err
        assert lines.index(note.format(name)) < min(i for i, x in enumerate(lines) if x.startswith("packing domain"))
    code, err = run_cli("ddk-teacher", pack_argv(tiny_teacher, corpus, tmp_path / "s", "--max-rows-per-domain", "2"))
    assert code == 0 and "lives only inside this process" not in err, err


def test_info_on_a_packed_store_shows_its_rows_and_the_command_that_scores_them(tiny_teacher, corpus, tmp_path):
    store = tmp_path / "s"
    code, err = run_cli("ddk-teacher", pack_argv(tiny_teacher, corpus, store, "--max-rows-per-domain", "3"))
    assert code == 0, err
    code, out = run_cli("ddk-store", ["info", str(store)])
    assert code == 0, out
    assert out.splitlines() == [
        f"store      {store}  (packed rows only, not scored yet: 3 domain(s) packed)",
        "layout     seq_len 32",
        f"next       run `ddk-teacher dump` with the same settings and --store {store} to score them",
        "",
        "domain           train rows heldout rows  state",
        *(f"{d:<16}{3:>11}{HELDOUT:>13}  packed" for d in ("scripture", "python", "legal")),
    ]
    code, out = run_cli("ddk-store", ["info", str(store), "--json"])
    got = json.loads(out)
    assert code == 0 and got["status"] == "packed" and got["seq_len"] == 32, out
    assert got["domains"][0] == {"name": "scripture", "state": "packed", "train_rows": 3, "heldout_rows": HELDOUT}
    # A pack stopped part-way through a domain: that domain is still being packed, and the pack command goes on.
    doc_path = store / "_pack" / "zarr.json"
    doc = json.loads(doc_path.read_text())
    legal = doc["attributes"]["ddk_pack"]["domains"]["legal"]
    doc["attributes"]["ddk_pack"]["domains"]["legal"] = {
        "state": "training", "chunk_rows": legal["chunk_rows"], "heldout_rows": legal["heldout_rows"],
        "cursor": {"rows": 0, "doc": 0, "skip": 0, "tokens": 0}}
    doc_path.write_text(json.dumps(doc))
    code, out = run_cli("ddk-store", ["info", str(store)])
    assert code == 0 and "(packed rows only, not scored yet: 2 domain(s) packed, 1 being packed)" in out, out
    assert f"next       rerun the same `ddk-teacher pack` (or `ddk-teacher dump`) command with --store {store} to " \
           "finish packing" in out and f"legal{0:>22}{HELDOUT:>13}  packing" in out, out
    # A damaged pack document: one error line, no traceback
    del doc["attributes"]["ddk_pack"]["domains"]["legal"]["heldout_rows"]
    doc_path.write_text(json.dumps(doc))
    code, out = run_cli("ddk-store", ["info", str(store)])
    assert code == 2 and out.splitlines() == [
        f"error: {store}: the packed rows' document lacks 'heldout_rows' for domain 'legal' (edited or damaged); "
        f"delete the location and pack again"], out
