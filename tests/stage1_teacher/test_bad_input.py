"""Bad input: one clear `error: ...` line, exit 2, and (where possible) no model load.

The teacher used here has garbage in place of its weights: any of these runs that got as far as loading the model
would fail with a weights error instead of the expected message, so each test proves the check runs first.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys

import pytest

from ddk_store import open_store
from ddk_store.validate import validate_store
from ddk_testkit.commands import HELDOUT, dump_argv
from ddk_testkit.corpora import write_corpus
from ddk_testkit.processes import run_cli


@pytest.fixture(scope="module")
def broken_teacher(tiny_teacher, tmp_path_factory):
    d = tmp_path_factory.mktemp("broken") / "teacher"
    shutil.copytree(tiny_teacher, d)
    (d / "model.safetensors").write_bytes(b"these are not weights")
    return d


def expect_error(argv, *needles):
    code, err = run_cli("ddk-teacher", argv)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert lines and lines[-1].startswith("error: "), err
    assert "Traceback" not in err and "Loading weights" not in err
    for n in needles:
        assert n in lines[-1], (n, lines[-1])
    return lines[-1]


def corpora(tmp_path, body: str, files: dict[str, str | bytes]):
    for name, content in files.items():
        p = tmp_path / name
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
    y = tmp_path / "corpora.yaml"
    y.write_text(body)
    return y


def test_missing_source(broken_teacher, tmp_path):
    y = corpora(tmp_path, "domains:\n  prose: {paths: [gone.txt], format: lines}\n", {})
    expect_error(dump_argv(broken_teacher, y, tmp_path / "s"), "domain 'prose'", "gone.txt", "does not exist")


def test_empty_domain(broken_teacher, tmp_path):
    y = corpora(tmp_path, "domains:\n  prose: {paths: [a.txt], format: lines}\n  void: {paths: [b.txt], format: lines}\n",
                {"a.txt": "some words here\n" * 200, "b.txt": "\n\n   \n"})
    expect_error(dump_argv(broken_teacher, y, tmp_path / "s"), "domain 'void' is empty")


def test_domain_too_small_for_heldout_rows(broken_teacher, corpora_yaml, tmp_path):
    msg = expect_error(dump_argv(broken_teacher, corpora_yaml, tmp_path / "s", "--heldout-seqs", "100000"),
                       "3 domains are too small", "--heldout-seqs 100000 needs at least 100001 rows")
    assert all(f"{d} has " in msg or f", {d} " in msg for d in ("scripture", "python", "legal"))  # all, one line
    assert msg.count("--heldout-seqs 100000") == 1


def test_unknown_text_field(broken_teacher, tmp_path):
    y = corpora(tmp_path, "domains:\n  rec: {paths: [r.jsonl], format: jsonl, text_field: text}\n",
                {"r.jsonl": json.dumps({"content": "x"}) + "\n"})
    expect_error(dump_argv(broken_teacher, y, tmp_path / "s"), "no text field 'text'", "r.jsonl:1", "content")


def test_non_utf8_fails_by_flag(broken_teacher, tmp_path):
    y = corpora(tmp_path, "domains:\n  prose: {paths: [a.txt], format: lines}\n", {"a.txt": b"ok\n\xff\xfe\n"})
    expect_error(dump_argv(broken_teacher, y, tmp_path / "s", "--on-bad-utf8", "fail"), "a.txt:2: not valid UTF-8")


def test_top_k_above_vocabulary(broken_teacher, corpora_yaml, tmp_path):
    expect_error(dump_argv(broken_teacher, corpora_yaml, tmp_path / "s", "--top-k", "100000"),
                 "--top-k 100000 exceeds", "use --top-k <=")


def test_seq_len_above_model_context(broken_teacher, corpora_yaml, tmp_path):
    expect_error(dump_argv(broken_teacher, corpora_yaml, tmp_path / "s", "--seq-len", "600", "--batch-tokens", "600"),
                 "--seq-len 600 exceeds the teacher's context of 512", "use --seq-len <= 512")


def test_invalid_domain_name(broken_teacher, tmp_path):
    y = corpora(tmp_path, "domains:\n  '../evil': {paths: [a.txt], format: lines}\n", {"a.txt": "x\n"})
    expect_error(dump_argv(broken_teacher, y, tmp_path / "s"), "domain '../evil'")


def test_missing_teacher(corpora_yaml, tmp_path):
    expect_error(dump_argv(tmp_path / "no-such-model", corpora_yaml, tmp_path / "s"), "--teacher", "no-such-model")


def test_teacher_without_weights_is_refused_before_the_store_is_made(tiny_teacher, corpora_yaml, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_teacher, bare, ignore=shutil.ignore_patterns("*.safetensors"))
    expect_error(dump_argv(bare, corpora_yaml, tmp_path / "s"), f"--teacher {bare}", "has a config.json but no weights")
    assert not (tmp_path / "s").exists()


def test_non_store_data_at_store_location(broken_teacher, corpora_yaml, tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "precious.txt").write_text("keep me")
    expect_error(dump_argv(broken_teacher, corpora_yaml, tmp_path / "s"), "holds no ddk store")
    assert (tmp_path / "s" / "precious.txt").read_text() == "keep me"


def test_the_same_teacher_through_another_path_finds_the_store_complete(reference_store, tiny_teacher, corpora_yaml,
                                                                        tmp_path):
    store = tmp_path / "s"
    shutil.copytree(reference_store, store)
    (tmp_path / "link").symlink_to(tiny_teacher)  # the same weights and tokenizer under another name
    code, err = run_cli("ddk-teacher", dump_argv(tmp_path / "link", corpora_yaml, store))
    assert code == 0 and "nothing to do" in err, err


def test_existing_store_with_other_settings_needs_overwrite(reference_store, tiny_teacher, corpora_yaml, tmp_path):
    store = tmp_path / "s"
    shutil.copytree(reference_store, store)
    expect_error(dump_argv(tiny_teacher, corpora_yaml, store, "--top-k", "4"),
                 "already holds a ddk store made with different settings", "--top-k was 8, this run has 4",
                 "--overwrite")
    # Files of the user's own kept beside the store: --overwrite deletes the store, never them, so it refuses
    (store / "NOTES.md").write_text("mine")
    (store / "results").mkdir()
    overwrite = dump_argv(tiny_teacher, corpora_yaml, store, "--top-k", "4", "--overwrite",
                          "--max-rows-per-domain", "2")
    expect_error(overwrite, "also holds NOTES.md, results, which are not part of the ddk store",
                 "move that out of the store's location first")
    assert (store / "NOTES.md").read_text() == "mine" and (store / "results").is_dir()
    assert open_store(str(store)).top_k == 8  # the store itself is untouched too
    (store / "NOTES.md").unlink()
    (store / "results").rmdir()
    # Entries that only look like the store's own: a Zarr group of the user's (no domain of the store) and a folder
    # whose name ends in .partial without a killed write's 32 hex digits
    (store / "mydata").mkdir()
    (store / "mydata" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    (store / "results.partial").mkdir()
    expect_error(overwrite, "also holds mydata, results.partial, which are not part of the ddk store")
    assert (store / "mydata" / "zarr.json").is_file() and (store / "results.partial").is_dir()
    shutil.rmtree(store / "mydata")
    (store / "results.partial").rmdir()
    code, err = run_cli("ddk-teacher", overwrite)
    assert code == 0, err
    assert open_store(str(store)).top_k == 4
    assert f"{store}: --overwrite replaces the store there (--max-rows-per-domain was 0, this run has 2)" in err, err


def test_resumed_store_with_different_settings(tiny_teacher, corpora_yaml, tmp_path):
    store = tmp_path / "s"
    # A half-written store: shard 0 of 2 only (status "writing").
    code, err = run_cli("ddk-teacher", dump_argv(tiny_teacher, corpora_yaml, store, "--shard", "0/2",
                                                 "--max-rows-per-domain", "20"))
    assert code == 0, err
    msg = expect_error(dump_argv(tiny_teacher, corpora_yaml, store, "--max-rows-per-domain", "20",
                                 "--heldout-seqs", str(HELDOUT + 1)), "different settings")
    assert f"--heldout-seqs was {HELDOUT}, this run has {HELDOUT + 1}" in msg
    # Changing a corpus file is a different store too (its hash is part of the provenance).
    other = write_corpus(tmp_path / "corpus2", n_docs=121)
    expect_error(dump_argv(tiny_teacher, other, store, "--max-rows-per-domain", "20"), "different settings",
                 "--corpora (source files or their contents)")
    # So is another held-out draw of the same files.
    shutil.copytree(corpora_yaml.parent, tmp_path / "corpus3")
    seeded = tmp_path / "corpus3" / "corpora.yaml"
    seeded.write_text(corpora_yaml.read_text().replace("}", ", heldout_seed: 1}"), encoding="utf-8")
    expect_error(dump_argv(tiny_teacher, seeded, store, "--max-rows-per-domain", "20"), "different settings",
                 "--corpora")
    # --overwrite gets past a changed corpus: the packed rows are packed again from the files as they are now
    code, err = run_cli("ddk-teacher", dump_argv(tiny_teacher, other, store, "--max-rows-per-domain", "20",
                                                 "--overwrite"))
    assert code == 0, err
    assert validate_store(str(store)) == []
    code, err = run_cli("ddk-teacher", dump_argv(tiny_teacher, other, store, "--max-rows-per-domain", "20"))
    assert code == 0 and "nothing to do" in err, err  # and the same command without it now finds it complete


def test_corpus_edit_that_keeps_the_size_is_seen(tiny_teacher, tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    store = tmp_path / "s"
    argv = dump_argv(tiny_teacher, corpus, store, "--max-rows-per-domain", "20")
    code, err = run_cli("ddk-teacher", argv)
    assert code == 0, err
    text = corpus.parent / "scripture.txt"
    # Touched, same bytes (a copy, a checkout): hashed again, found the same, the store is complete
    later = text.stat().st_mtime_ns + 10**9
    os.utime(text, ns=(later, later))
    code, err = run_cli("ddk-teacher", argv)
    assert code == 0 and "nothing to do" in err, err
    # One letter changed, the size kept: refused like any other corpus change
    data = text.read_bytes()
    i = data.index(b"a")
    text.write_bytes(data[:i] + b"e" + data[i + 1:])
    os.utime(text, ns=(later + 10**9, later + 10**9))  # (a coarse-clock filesystem could keep the time)
    assert text.stat().st_size == len(data)
    expect_error(argv, "different settings", "--corpora (source files or their contents)", "scripture.txt")
    # --overwrite packs it again: the store's provenance is the file as it is now
    code, err = run_cli("ddk-teacher", argv + ["--overwrite"])
    assert code == 0, err
    scripture = next(d for d in open_store(str(store)).meta.domains if d.name == "scripture")
    assert [s.sha256 for s in scripture.sources] == [hashlib.sha256(text.read_bytes()).hexdigest()]
    code, err = run_cli("ddk-teacher", argv)
    assert code == 0 and "nothing to do" in err, err
    # --overwrite keeps a complete store of the same settings, and says so
    code, err = run_cli("ddk-teacher", argv + ["--overwrite"])
    assert code == 0 and "nothing to do (--overwrite replaces only a store made with other settings" in err, err


def test_a_resume_keeps_the_stores_work_units_unless_asked_for_others(tiny_teacher, corpora_yaml, tmp_path):
    store = tmp_path / "s"
    argv = dump_argv(tiny_teacher, corpora_yaml, store, "--max-rows-per-domain", "20")
    code, err = run_cli("ddk-teacher", argv + ["--unit-rows", "8", "--shard", "0/2"])
    assert code == 0, err
    expect_error(argv + ["--unit-rows", "4", "--shard", "1/2"],
                 "--unit-rows: the store's work units are 8 rows in chunks of 8, this run's 4 in chunks of 4; omit "
                 "--unit-rows to resume")
    # Without --unit-rows (0, the default) the second shard resumes with the store's units
    code, err = run_cli("ddk-teacher", argv + ["--unit-rows", "0", "--shard", "1/2"])
    assert code == 0 and "resuming" in err, err
    code, err = run_cli("ddk-store", ["finalize", str(store)])
    assert code == 0, err
    assert validate_store(str(store)) == []


def test_vllm_backend_requested_but_not_installed(broken_teacher, corpora_yaml, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # fake the package's absence (imports now raise ImportError)
    argv = dump_argv(broken_teacher, corpora_yaml, tmp_path / "s")
    argv[argv.index("--backend") + 1] = "vllm"
    expect_error(argv, "backend 'vllm' needs: pip install -e '.[vllm]'", "--backend hf")


def test_a_teacher_path_with_control_characters_is_refused_before_any_store(tiny_teacher, corpora_yaml, tmp_path):
    odd = tmp_path / "teach\ner"  # a store records the name, and its readers refuse control characters in it
    shutil.copytree(tiny_teacher, odd)
    expect_error(dump_argv(odd, corpora_yaml, tmp_path / "s"), "holds control characters")
    assert not (tmp_path / "s").exists()
