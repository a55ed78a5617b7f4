"""More of CORPORA.yaml's contracts (a thirteenth mutation campaign): what the parser refuses (a stray top-level key,
one domain written under two keys, a text_field where it means nothing or is no name, NUL or blank dataset fields),
what it resolves (``~`` in paths, a glob matching folders, files gone where that is allowed, a file it may not
read), what a domain's definition holds for a resume (its split and config), and what the readers count and keep (a
mark at the start of a later line, blank records, records that are no mapping, the hash of a file as its bytes
are)."""

from __future__ import annotations

import hashlib

import pytest

from ddk_store.errors import ConfigError
from stage1_teacher.corpus import ReadStats, load_corpora, read_sourced_documents

from .test_corpus import docs_of, write_yaml


def test_a_corpora_file_with_another_top_level_key_beside_domains_is_refused(tmp_path):
    """A misplaced key (a domain indented one level too little) must not be dropped silently with its domain."""
    (tmp_path / "a.txt").write_text("one\n", encoding="utf-8")
    y = write_yaml(tmp_path, "domains:\n  a: {paths: [a.txt], format: lines}\nb: {paths: [a.txt], format: lines}\n")
    with pytest.raises(ConfigError, match="expected exactly one top-level key 'domains'"):
        load_corpora(y)


def test_one_domain_written_under_two_yaml_keys_is_refused(tmp_path):
    """YAML reads ``1`` and ``'1'`` as two keys; both name domain '1', whose two sources the store would mix."""
    (tmp_path / "a.txt").write_text("one\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("two\n", encoding="utf-8")
    y = write_yaml(tmp_path, "domains:\n  1: {paths: [a.txt], format: lines}\n  '1': {paths: [b.txt], format: lines}\n")
    with pytest.raises(ConfigError, match=r"domain '1' is defined twice \(as 1 and '1'\); keep one of them"):
        load_corpora(y)
    y.write_text("domains:\n  2024: {paths: [a.txt], format: lines}\n  '1': {paths: [b.txt], format: lines}\n")
    assert [s.name for s in load_corpora(y)] == ["2024", "1"]  # a number is a name like any other


@pytest.mark.parametrize("order", ["records first", "whole text first"])
def test_a_records_file_read_whole_by_another_domain_is_refused(tmp_path, order):
    """Read as lines or files, a JSONL file's text holds every record's text: one domain's held-out records would
    be inside the other's training documents (a broad glob of a 'files' domain reaching another domain's records)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "legal.jsonl").write_text('{"body": "the contract", "note": "x"}\n', encoding="utf-8")
    (tmp_path / "data" / "page.html").write_text("<p>a page</p>\n", encoding="utf-8")
    legal = "  legal: {paths: [data/legal.jsonl], format: jsonl, text_field: body}\n"
    web = "  web: {paths: ['data/*'], format: files}\n"
    first, second = ("legal", "web") if order == "records first" else ("web", "legal")
    y = write_yaml(tmp_path, "domains:\n" + (legal + web if first == "legal" else web + legal))
    with pytest.raises(ConfigError) as e:
        load_corpora(y)
    assert str(e.value) == (f"{y}: file {tmp_path / 'data' / 'legal.jsonl'} is read by domains {first!r} and "
                            f"{second!r}, whose documents would then share its text (one could train on the other's "
                            "held-out documents): list the file under one of them")
    y.write_text("domains:\n" + legal + "  notes: {paths: [data/legal.jsonl], format: jsonl, text_field: note}\n"
                 "  web: {paths: ['data/*.html'], format: files}\n", encoding="utf-8")
    assert [len(s.files) for s in load_corpora(y)] == [1, 1, 1]  # two text fields of one file: allowed


def test_gone_files_are_no_problem_only_where_the_caller_allows_them(tmp_path):
    """``missing_ok`` (a store whose rows are packed already): the domain lists the files still there."""
    (tmp_path / "a.txt").write_text("one\n", encoding="utf-8")
    y = write_yaml(tmp_path, "domains:\n  a: {paths: [a.txt, gone.txt, 'none/*.txt'], format: lines}\n")
    assert load_corpora(y, missing_ok=True)[0].files == (str(tmp_path / "a.txt"),)
    with pytest.raises(ConfigError, match="path 'gone.txt' .* does not exist or is not a file"):
        load_corpora(y)


@pytest.mark.parametrize("field", ["''", "3", "[body]"])
def test_a_records_format_needs_a_text_field_that_is_a_name(tmp_path, field):
    (tmp_path / "r.jsonl").write_text('{"body": "x"}\n', encoding="utf-8")
    y = write_yaml(tmp_path, f"domains:\n  rec: {{paths: [r.jsonl], format: jsonl, text_field: {field}}}\n")
    with pytest.raises(ConfigError, match="domain 'rec': format jsonl needs field 'text_field'"):
        load_corpora(y)


def test_a_text_field_on_a_text_format_is_refused_not_ignored(tmp_path):
    (tmp_path / "a.txt").write_text("one\n", encoding="utf-8")
    for fmt in ("lines", "files"):
        y = write_yaml(tmp_path, f"domains:\n  a: {{paths: [a.txt], format: {fmt}, text_field: body}}\n")
        with pytest.raises(ConfigError, match=f"'text_field' only applies to jsonl/parquet, not format {fmt}"):
            load_corpora(y)


@pytest.mark.parametrize("entry, field", [
    ("dataset: null", "dataset"),
    ('dataset: "a\\0b"', "dataset"),
    ("dataset: org/name, split: '  '", "split"),
    ('dataset: org/name, config: "en\\0"', "config"),
    ("dataset: org/name, revision: ''", "revision"),
])
def test_a_dataset_field_that_is_no_usable_string_is_one_line(tmp_path, entry, field):
    """A NUL would reach the hub client or a path; a blank split or config names nothing; a null dataset is none."""
    y = write_yaml(tmp_path, f"domains:\n  web: {{{entry}}}\n")
    with pytest.raises(ConfigError, match=f"domain 'web': field '{field}' must be a non-empty string"):
        load_corpora(y)


def test_a_path_with_a_nul_is_one_line_not_a_traceback(tmp_path):
    y = write_yaml(tmp_path, 'domains:\n  a: {paths: ["a\\0.txt"], format: lines}\n')
    with pytest.raises(ConfigError, match="field 'paths' must be a non-empty list of paths or globs"):
        load_corpora(y)


def test_a_datasets_split_and_config_are_kept_and_part_of_the_identity(tmp_path):
    """Another split or config is another corpus: a resume must see the change in the domain's definition."""
    y = write_yaml(tmp_path, "domains:\n  wiki: {dataset: wikimedia/wikipedia, config: 20231101.en, split: test}\n"
                             "  web: {dataset: org/web}\n")
    wiki, web = load_corpora(y)
    assert (wiki.dataset_config, wiki.split) == ("20231101.en", "test")
    assert (web.dataset_config, web.split, web.text_field) == (None, "train", "text")  # the defaults
    assert wiki.spec_dict() == {"format": "dataset", "patterns": [], "text_field": "text",
                                "dataset": "wikimedia/wikipedia", "config": "20231101.en", "split": "test"}
    assert web.spec_dict()["config"] is None and web.spec_dict()["split"] == "train"


def test_a_domains_own_row_cap_wins_over_the_commands_either_way(tmp_path):
    (tmp_path / "a.txt").write_text("one\n", encoding="utf-8")
    (src,) = load_corpora(write_yaml(tmp_path, "domains:\n  a: {paths: [a.txt], format: lines, max_rows: 70}\n"))
    assert (src.row_cap(50), src.row_cap(0), src.row_cap(100)) == (70, 70, 70)  # 0: the command sets no cap
    (src,) = load_corpora(write_yaml(tmp_path, "domains:\n  a: {paths: [a.txt], format: lines}\n"))
    assert (src.row_cap(50), src.row_cap(0), src.heldout_seed, src.max_rows) == (50, 0, 0, None)


def test_a_path_starting_with_a_tilde_is_in_the_home_directory(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "corpus").mkdir(parents=True)
    (home / "corpus" / "a.txt").write_text("from home\n", encoding="utf-8")
    (tmp_path / "project").mkdir()
    monkeypatch.setenv("HOME", str(home))
    y = write_yaml(tmp_path / "project", "domains:\n  a: {paths: ['~/corpus/*.txt'], format: lines}\n")
    (src,) = load_corpora(y)
    assert src.files == (str(home / "corpus" / "a.txt"),) and docs_of(src)[0] == ["from home"]


def test_a_glob_matching_folders_reads_only_the_files(tmp_path):
    (tmp_path / "data" / "sub.d").mkdir(parents=True)
    (tmp_path / "data" / "a.d").write_text("a file\n", encoding="utf-8")
    y = write_yaml(tmp_path, "domains:\n  a: {paths: ['data/*'], format: lines}\n")
    assert load_corpora(y)[0].files == (str(tmp_path / "data" / "a.d"),)
    y.write_text("domains:\n  a: {paths: ['data/sub.d'], format: lines}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"path 'data/sub.d' .* does not exist or is not a file"):
        load_corpora(y)


def test_a_file_the_filesystem_refuses_to_read_is_named_when_the_corpora_file_is_read(tmp_path, monkeypatch):
    """Before any model loads, not mid-pack. (The refusal is faked: as root every file is readable.)"""
    import os

    (tmp_path / "a.txt").write_text("one\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("two\n", encoding="utf-8")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: not str(p).endswith("b.txt") and real_access(p, mode))
    with pytest.raises(ConfigError, match=f"domain 'a': file {tmp_path / 'b.txt'} is not readable"):
        load_corpora(write_yaml(tmp_path, "domains:\n  a: {paths: ['*.txt'], format: lines}\n"))


def test_a_mark_starting_a_later_line_is_text_not_a_file_start(tmp_path):
    """Only the file's first bytes can be its byte-order mark: a line starting with U+FEFF further on keeps it (a
    JSONL record starting with one is no JSON, named by its line)."""
    bom = "\ufeff"
    (tmp_path / "a.txt").write_text(f"first\n{bom}second\n", encoding="utf-8")
    (tmp_path / "r.jsonl").write_text(f'{{"t": "one"}}\n{bom}{{"t": "two"}}\n', encoding="utf-8")
    prose, rec = load_corpora(write_yaml(tmp_path, "domains:\n  prose: {paths: [a.txt], format: lines}\n"
                                                   "  rec: {paths: [r.jsonl], format: jsonl, text_field: t}\n"))
    assert docs_of(prose)[0] == ["first", f"{bom}second"]
    with pytest.raises(ConfigError, match=r"domain 'rec': .*r\.jsonl:2: not valid JSON"):
        docs_of(rec)


def test_every_reader_counts_its_documents_and_drops_blank_records(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\n \t \ntwo\r\n", encoding="utf-8")
    (tmp_path / "f.txt").write_text("whole file\n", encoding="utf-8")
    (tmp_path / "r.jsonl").write_text('{"t": "x"}\n{"t": "  \\n "}\n\n   \n{"t": "y"}\n', encoding="utf-8")
    srcs = load_corpora(write_yaml(tmp_path, "domains:\n  lines: {paths: [a.txt], format: lines}\n"
                                             "  files: {paths: [f.txt], format: files}\n"
                                             "  rec: {paths: [r.jsonl], format: jsonl, text_field: t}\n"))
    got = {s.name: docs_of(s) for s in srcs}
    assert {n: (docs, st.n_documents) for n, (docs, st) in got.items()} == {
        "lines": (["one", "two"], 2), "files": (["whole file\n"], 1), "rec": (["x", "y"], 2)}


@pytest.mark.parametrize("record, found", [("5", "int"), ('"the text of it"', "str"), ("[1, 2]", "list")])
def test_a_jsonl_record_that_is_no_mapping_is_one_line(tmp_path, record, found):
    (tmp_path / "r.jsonl").write_text(f'{{"text": "fine"}}\n{record}\n', encoding="utf-8")
    y = write_yaml(tmp_path, "domains:\n  rec: {paths: [r.jsonl], format: jsonl, text_field: text}\n")
    (src,) = load_corpora(y)
    with pytest.raises(ConfigError, match=rf"domain 'rec': .*r\.jsonl:2: no text field 'text' \(found: {found}\)"):
        docs_of(src)


def test_the_hash_recorded_as_a_file_is_read_is_of_its_bytes_as_they_are(tmp_path):
    """The provenance a resume compares: sha256 and size of the file's bytes, its byte-order mark included, for
    each reader that hashes while it reads (lines, files, jsonl)."""
    bom = "\ufeff".encode()
    raw = {"a.txt": bom + b"one\ntwo\n", "f.txt": bom + b"whole\n", "r.jsonl": bom + b'{"t": "x"}\n'}
    for name, data in raw.items():
        (tmp_path / name).write_bytes(data)
    srcs = load_corpora(write_yaml(tmp_path, "domains:\n  lines: {paths: [a.txt], format: lines}\n"
                                             "  files: {paths: [f.txt], format: files}\n"
                                             "  rec: {paths: [r.jsonl], format: jsonl, text_field: t}\n"))
    hashes: dict[str, tuple[str, int]] = {}
    for src in srcs:
        list(read_sourced_documents(src, stats=ReadStats(), hashes=hashes))
    assert hashes == {str(tmp_path / n): (hashlib.sha256(d).hexdigest(), len(d)) for n, d in raw.items()}
