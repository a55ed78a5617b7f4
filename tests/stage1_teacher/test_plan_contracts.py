"""More contracts of domain planning, the store identity and the domain-size messages (a thirteenth mutation
campaign): each document's held-out key by hand (its file's label, its ordinal in that file, the domain's seed), the
reference planner (a domain's own cap, skipped documents, every domain's problem), the provenance (a linked file by
its target, hashes already taken, a pinned hub dataset), the settings a resume shares, a difference of pack
identities that no flag names, and the numbers the size messages give. The keys and digests are computed here from
their formulas (hashlib), not by the code under test."""

from __future__ import annotations

import hashlib
import json

import pytest

from ddk_store.errors import ConfigError
from stage1_teacher.corpus import load_corpora
from stage1_teacher.domain_size import (DomainTooSmall, check_domain_size, check_split_size, heldout_leftover_note,
                                        too_small_together)
from stage1_teacher.packing import HELDOUT_SCHEME, PACKING_SCHEME
from ddk_testkit.corpora import domain_docs
from ddk_testkit.models import build_tiny_tokenizer
from stage1_teacher.plan import (STAGE1_SCHEME, identity_problem, keyed_texts, pack_identity, plan_domains, provenance,
                                 settings_of)
from stage1_teacher.tokenize import DocTokenizer

from .test_corpus import write_yaml


def key(domain: str, source: str, index: int, seed: int = 0) -> int:
    text = f"{domain}\0{source}\0{index}" + (f"\0{seed}" if seed else "")
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------ held-out keys
@pytest.mark.parametrize("seed", [0, 3])
def test_a_documents_key_is_its_files_label_its_ordinal_in_that_file_and_the_seed(tmp_path, seed):
    """The ordinal counts within one file: adding a document to one file moves no other file's keys."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("one\n\ntwo\n", encoding="utf-8")
    (tmp_path / "sub" / "b.txt").write_text("three\n", encoding="utf-8")
    (src,) = load_corpora(write_yaml(tmp_path, f"domains:\n  d: {{paths: [a.txt, sub/b.txt], format: lines, "
                                               f"heldout_seed: {seed}}}\n"))
    assert list(keyed_texts(src, on_bad_utf8="skip")) == [
        (key("d", "a.txt", 0, seed), "one"), (key("d", "a.txt", 1, seed), "two"),
        (key("d", "sub/b.txt", 0, seed), "three")]


def test_a_domain_of_one_file_labels_its_documents_with_the_files_name(tmp_path):
    """(Not '.': the label is the file relative to its folder, as for a domain of many files.)"""
    (tmp_path / "a.txt").write_text("one\ntwo\n", encoding="utf-8")
    (src,) = load_corpora(write_yaml(tmp_path, "domains:\n  d: {paths: [a.txt], format: lines}\n"))
    assert list(keyed_texts(src, on_bad_utf8="skip")) == [(key("d", "a.txt", 0), "one"), (key("d", "a.txt", 1), "two")]


# ------------------------------------------------------------------------------------------------ the planner
def test_the_planner_keeps_a_domains_own_cap_counts_skipped_documents_and_reports_every_domain(tmp_path):
    """plan_domains, the reference the streaming pack is compared with: a domain's max_rows caps its training rows
    (the command sets no cap), its invalid UTF-8 lines are counted, and two domains too small are both named."""
    (tmp_path / "a.txt").write_bytes("\n".join(domain_docs("scripture", 60)).encode() + b"\nbad \xff line\n")
    (tmp_path / "t1.txt").write_text("in the beginning\n", encoding="utf-8")
    (tmp_path / "t2.txt").write_text("and the earth\n", encoding="utf-8")
    tok = build_tiny_tokenizer(tmp_path / "tok")
    kw = {"seq_len": 8, "heldout_seqs": 2, "max_rows_per_domain": 0, "on_bad_utf8": "skip",
          "eos_id": tok.eos_token_id, "bos_id": None}
    with DocTokenizer(tok, workers=1) as coder:
        (a,) = load_corpora(write_yaml(tmp_path, "domains:\n  a: {paths: [a.txt], format: lines, max_rows: 3}\n"))
        plan = plan_domains([a], coder, **kw)["a"]
        assert (plan.train.shape, plan.heldout.shape, plan.info.n_skipped) == ((3, 8), (2, 8), 1)
        small = load_corpora(write_yaml(tmp_path, "domains:\n  t1: {paths: [t1.txt], format: lines}\n"
                                                  "  t2: {paths: [t2.txt], format: lines}\n"))
        with pytest.raises(ConfigError) as e:
            plan_domains(small, coder, **kw)
    assert "domain 't1' is " in str(e.value) and "domain 't2' is " in str(e.value)


# -------------------------------------------------------------------------------------------------- provenance
def test_provenance_names_a_linked_file_by_its_target_and_takes_hashes_already_made(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_bytes(b"one\n")
    (tmp_path / "b.txt").write_bytes(b"two two\n")
    (tmp_path / "link.txt").symlink_to(tmp_path / "data" / "a.txt")
    (src,) = load_corpora(write_yaml(tmp_path, "domains:\n  d: {paths: [link.txt, b.txt], format: lines}\n"))
    (a, b) = provenance(src)
    assert (a.uri, a.sha256, a.bytes) == ((tmp_path / "data" / "a.txt").resolve().as_uri(), sha(b"one\n"), 4)
    assert (b.uri, b.sha256, b.bytes) == ((tmp_path / "b.txt").resolve().as_uri(), sha(b"two two\n"), 8)
    # a hash taken as the file was read is used as it is: the file is not read again
    (_, b_known) = provenance(src, known={str(tmp_path / "b.txt"): ("9" * 64, 8)})
    assert (b_known.sha256, b_known.bytes) == ("9" * 64, 8)


def test_provenance_of_a_pinned_hub_dataset_is_its_reference_with_the_revision(tmp_path):
    (src,) = load_corpora(write_yaml(tmp_path, "domains:\n  w: {dataset: org/name, config: en, split: test, "
                                               "revision: abc123}\n"))
    (only,) = provenance(src)
    assert (only.uri, only.sha256, only.bytes) == ("hf://org/name/en/test@abc123", "", 0)


# ------------------------------------------------------------------------------------------ identity and settings
def test_the_settings_a_resume_shares(tmp_path):
    (tmp_path / "a.txt").write_text("one\n", encoding="utf-8")
    (tmp_path / "r.jsonl").write_bytes("\ufeff".encode() + b'{"t": "x"}\n')
    y = write_yaml(tmp_path, "domains:\n  a: {paths: [a.txt], format: lines, max_rows: 3}\n"
                             "  r: {paths: [r.jsonl], format: jsonl, text_field: t}\n")
    corpora = load_corpora(y)
    spec = {"a": {"format": "lines", "patterns": ["a.txt"], "text_field": None, "dataset": None, "config": None,
                  "split": "train", "max_rows": 3},
            "r": {"format": "jsonl", "patterns": ["r.jsonl"], "text_field": "t", "dataset": None, "config": None,
                  "split": "train"}}
    got = settings_of(corpora, heldout_seqs=4, max_rows_per_domain=9, on_bad_utf8="fail", trust_remote_code=False,
                      bos_token_id=None)
    assert got == {"stage1_scheme": STAGE1_SCHEME, "corpora": spec,
                   "corpora_sha256": sha(json.dumps(spec, sort_keys=True).encode()), "heldout_seqs": 4,
                   "max_rows_per_domain": 9, "on_bad_utf8": "fail", "utf8_bom": "dropped",  # (the JSONL file's mark)
                   "packing": PACKING_SCHEME, "heldout_selection": HELDOUT_SCHEME, "bos_token_id": None,
                   "temperature": 1.0, "trust_remote_code": False}


def identity() -> dict:
    return pack_identity(seq_len=16, fingerprint="fp", eos_token_id=0, settings={"heldout_seqs": 4, "packing": "v2"})


def test_a_difference_no_flag_names_is_still_a_difference():
    """A setting outside RESUME_FLAGS (here the packing scheme) still refuses the pack, named by its path."""
    other = identity()
    other["settings"]["packing"] = "v3"
    assert identity_problem(identity(), other) == "pack.settings.packing: store has 'v2', this run has 'v3'"


# ------------------------------------------------------------------------------------------------- domain sizes
def test_a_domain_of_exactly_one_row_is_not_empty():
    check_domain_size("d", 16, 16)
    with pytest.raises(ConfigError, match=r"domain 'd' is empty: its documents give 15 tokens, fewer than one row of "
                                          r"--seq-len 16 \(2 document\(s\) were skipped as invalid UTF-8"):
        check_domain_size("d", 15, 16, skipped=2)


def test_the_split_check_tells_too_few_documents_from_too_few_tokens():
    check_split_size("d", 100, 16, 4, heldout_rows=4, train_rows=1)  # full held-out rows and a training row: fine
    with pytest.raises(ConfigError, match=r"has too few documents: .* the 1 that fill --heldout-seqs 4 leave 7 "
                                          r"tokens for training, .*`format: lines` makes one per line\)$"):
        check_split_size("d", 71, 16, 4, 4, 0, held_documents=1, train_tokens=7)
    with pytest.raises(ConfigError, match=r"the 3 that fill .*, or lower --heldout-seqs$"):
        check_split_size("d", 71, 16, 4, 4, 0, held_documents=3, train_tokens=7)
    with pytest.raises(DomainTooSmall, match=r"5 rows of --seq-len 16 but --heldout-seqs 6 .*lower --heldout-seqs "
                                             r"\(to at most 4\) or --seq-len, or add text") as e:
        check_split_size("d", 95, 16, 6, heldout_rows=5, train_rows=3)  # held-out rows short, training rows left
    assert (e.value.domain, e.value.rows, e.value.seq_len, e.value.heldout_seqs) == ("d", 5, 16, 6)
    with pytest.raises(DomainTooSmall, match=r"1 rows of --seq-len 16 .*; lower --seq-len \(one row is too few"):
        check_split_size("d", 31, 16, 1, heldout_rows=1, train_rows=0)


def test_domains_too_small_together_say_the_need_once_and_the_least_rows_minus_one():
    def small(name: str, rows: int) -> DomainTooSmall:
        return DomainTooSmall(f"{name} alone", name, rows, 16, 4)

    assert too_small_together([small("a", 3)]) == "a alone"
    assert too_small_together([small("a", 3), small("b", 2)]) == (
        "2 domains are too small: --heldout-seqs 4 needs at least 5 rows of --seq-len 16 tokens per domain "
        "(held-out rows take whole documents, and one row must be left to train on); a has 3, b 2; lower "
        "--heldout-seqs (to at most 1) or --seq-len, or add text")
    assert too_small_together([small("a", 3), small("b", 1)]).endswith("; a has 3, b 1; lower --seq-len, or add text")


def test_the_held_out_leftover_note_starts_beyond_one_row():
    assert heldout_leftover_note("d", "jsonl", docs=2, held_tokens=4 * 16 + 16, rows=4, seq_len=16) is None
    note = heldout_leftover_note("d", "jsonl", docs=2, held_tokens=4 * 16 + 17, rows=4, seq_len=16)
    assert note is not None and note.startswith("note: domain d: its held-out documents (2) hold 17 tokens beyond "
                                                "the 4 held-out rows")
    assert "split long records into shorter ones, or raise --heldout-seqs (up to 5;" in note
    assert "split long lines" in heldout_leftover_note("d", "lines", docs=1, held_tokens=100, rows=1, seq_len=16)
