"""The pack phase costs no pass over the teacher's weights, a dump rerun on a complete store says so before any pack
work (also for a store of the format before packed rows, which holds none), and the corpus files no reader hashed
are hashed in the tokenizer workers, to the same digests."""

from __future__ import annotations

import shutil

import pytest

from ddk_testkit.commands import HELDOUT, SEQ_LEN, TOP_K, dump_argv
from ddk_testkit.processes import run_cli
from ddk_testkit.snapshots import assert_same_store
from stage1_teacher import teacher as teacher_mod
from stage1_teacher.config import Stage1Config
from stage1_teacher.corpus import load_corpora
from stage1_teacher.filehash import file_sha256
from stage1_teacher.pack import run_pack
from stage1_teacher.teacher import load_tokenizer, resolve_teacher
from stage1_teacher.tokenize import DocTokenizer


def test_pack_never_hashes_the_teachers_weights(tiny_teacher, corpora_yaml, tmp_path, monkeypatch):
    monkeypatch.setenv("DDK_CACHE", str(tmp_path / "cache"))  # no cached hash to fall back on

    def hashed(files):
        raise AssertionError(f"the pack phase hashed the teacher's weights: {files}")

    monkeypatch.setattr(teacher_mod, "_hash_files", hashed)
    packed = run_pack(Stage1Config(teacher=str(tiny_teacher), corpora=str(corpora_yaml), store=str(tmp_path / "s"),
                                   seq_len=SEQ_LEN, top_k=TOP_K, heldout_seqs=HELDOUT, workers=1, progress=False),
                      echo=lambda _: None)
    assert packed.domains and all(st["state"] == "packed" for st in packed.domains.values())
    assert resolve_teacher(str(tiny_teacher), weights=False).revision == ""


def test_a_complete_store_without_packed_rows_is_complete_before_any_pack_work(reference_store, tiny_teacher,
                                                                                 corpora_yaml, tmp_path):
    store = tmp_path / "old"
    shutil.copytree(reference_store, store)
    shutil.rmtree(store / "_pack")  # a store of the format before the pack phase: no packed rows at all
    code, err = run_cli("ddk-teacher", dump_argv(tiny_teacher, corpora_yaml, store))
    assert code == 0, err
    assert "already complete with these settings: nothing to do" in err
    assert "packing domain" not in err and not (store / "_pack").exists()
    shutil.copytree(reference_store / "_pack", store / "_pack")  # back to the reference's files, for the comparison
    assert_same_store(reference_store, store)


def test_a_complete_store_with_other_settings_still_names_the_flag(reference_store, tiny_teacher, corpora_yaml):
    code, err = run_cli("ddk-teacher", dump_argv(tiny_teacher, corpora_yaml, reference_store, "--top-k", "4"))
    assert code == 2 and "--top-k was" in err.splitlines()[-1], err


@pytest.mark.parametrize("workers", [1, 2])
def test_unread_files_are_hashed_in_the_workers_to_the_same_digests(tiny_teacher, corpora_yaml, workers):
    files = [f for s in load_corpora(corpora_yaml) for f in s.files]
    assert len(files) >= 2
    tok = load_tokenizer(resolve_teacher(str(tiny_teacher), weights=False))
    with DocTokenizer(tok, workers=workers) as coder:
        assert coder.hash_files(files) == {f: file_sha256(f) for f in files}
