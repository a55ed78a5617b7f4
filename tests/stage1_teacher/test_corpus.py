"""CORPORA.yaml parsing and readers: formats, deterministic order, bad UTF-8, and error messages."""

from __future__ import annotations

import json
import os
import time

import pytest

from ddk_store.errors import ConfigError
from stage1_teacher.corpus import ReadStats, load_corpora, read_documents


def write_yaml(tmp_path, body: str):
    p = tmp_path / "corpora.yaml"
    p.write_text(body, encoding="utf-8")
    return p


def docs_of(src, **kw):
    stats = ReadStats()
    return list(read_documents(src, stats=stats, **kw)), stats


def test_lines_files_jsonl_parquet_and_relative_globs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("first line\n\n  \nsecond line\r\n", encoding="utf-8")
    code = tmp_path / "code" / "pkg"
    code.mkdir(parents=True)
    # Written in reverse name order: the reader must still sort by path.
    for name in ("z.py", "b.py", "a.py"):
        (code / name).write_text(f"# {name}\n", encoding="utf-8")
    (tmp_path / "empty.py").write_text("   \n", encoding="utf-8")
    (tmp_path / "r.jsonl").write_text(json.dumps({"t": "one"}) + "\n\n" + json.dumps({"t": "two"}) + "\n")
    pq.write_table(pa.table({"body": ["p1", "", "p2"], "n": [1, 2, 3]}), tmp_path / "x.parquet")
    y = write_yaml(tmp_path, """
domains:
  prose: {paths: [a.txt], format: lines}
  code: {paths: ["code/**/*.py"], format: files}
  rec: {paths: [r.jsonl], format: jsonl, text_field: t}
  table: {paths: [x.parquet], format: parquet, text_field: body}
""")
    srcs = {s.name: s for s in load_corpora(y)}
    assert list(srcs) == ["prose", "code", "rec", "table"]  # YAML order is domain order
    assert docs_of(srcs["prose"])[0] == ["first line", "second line"]
    assert docs_of(srcs["code"])[0] == ["# a.py\n", "# b.py\n", "# z.py\n"]
    assert [p.rsplit("/", 1)[1] for p in srcs["code"].files] == ["a.py", "b.py", "z.py"]
    assert docs_of(srcs["rec"])[0] == ["one", "two"]
    docs, stats = docs_of(srcs["table"])
    assert docs == ["p1", "p2"] and stats.n_documents == 2


def test_bad_utf8_is_skipped_and_counted_or_fails_by_flag(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"good one\nbad \xff\xfe here\ngood two\n")
    y = write_yaml(tmp_path, "domains:\n  prose: {paths: [a.txt], format: lines}\n")
    (src,) = load_corpora(y)
    docs, stats = docs_of(src, on_bad_utf8="skip")
    assert docs == ["good one", "good two"]
    assert stats.n_skipped == 1 and stats.skipped_where == [f"{tmp_path}/a.txt:2"]
    with pytest.raises(ConfigError, match=r"a\.txt:2: not valid UTF-8.*--on-bad-utf8 skip"):
        docs_of(src, on_bad_utf8="fail")


def test_a_jsonl_text_with_a_lone_surrogate_escape_is_bad_utf8_text(tmp_path):
    # '\\ud800' is valid JSON and valid UTF-8 bytes, but no UTF-8 text: tokenizers refuse it (it was a traceback)
    (tmp_path / "r.jsonl").write_text('{"t": "good"}\n{"t": "bad \\ud800 half an emoji"}\n{"t": "fine"}\n')
    (src,) = load_corpora(write_yaml(tmp_path, "domains:\n  rec: {paths: [r.jsonl], format: jsonl, text_field: t}\n"))
    docs, stats = docs_of(src, on_bad_utf8="skip")
    assert docs == ["good", "fine"] and stats.n_skipped == 1 and stats.skipped_where == [f"{tmp_path}/r.jsonl:2"]
    with pytest.raises(ConfigError, match=r"r\.jsonl:2: a lone surrogate '\\ud800' at character 4 .*--on-bad-utf8 "
                                          r"skip"):
        docs_of(src, on_bad_utf8="fail")


def test_parquet_text_is_decoded_row_by_row_binary_columns_too(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = [b"good", b"bad \xff\xfe bytes", None, b"fine"]
    # A string column holding invalid UTF-8 (Arrow's view does not validate, as writers outside Arrow may not)
    pq.write_table(pa.table({"s": pa.array(raw, pa.binary()).view(pa.string())}), tmp_path / "s.parquet")
    pq.write_table(pa.table({"b": pa.array(raw, pa.binary())}), tmp_path / "b.parquet")
    pq.write_table(pa.table({"n": [1, 2]}), tmp_path / "n.parquet")
    pq.write_table(pa.table({"d": pa.array(["x", "y", "x"]).dictionary_encode()}), tmp_path / "d.parquet")  # categorical
    srcs = {s.name: s for s in load_corpora(write_yaml(tmp_path, """
domains:
  d: {paths: [d.parquet], format: parquet, text_field: d}
  s: {paths: [s.parquet], format: parquet, text_field: s}
  b: {paths: [b.parquet], format: parquet, text_field: b}
  n: {paths: [n.parquet], format: parquet, text_field: n}
"""))}
    for name in ("s", "b"):
        docs, stats = docs_of(srcs[name], on_bad_utf8="skip")
        assert docs == ["good", "fine"] and stats.skipped_where == [f"{tmp_path}/{name}.parquet: row 2"], name
    with pytest.raises(ConfigError, match=r"s\.parquet: row 2: not valid UTF-8"):
        docs_of(srcs["s"], on_bad_utf8="fail")
    assert docs_of(srcs["d"])[0] == ["x", "y", "x"]
    with pytest.raises(ConfigError, match=r"n\.parquet: column 'n' holds int64, not text"):
        docs_of(srcs["n"])


def test_a_domain_listing_relative_and_absolute_paths_gets_labels_from_their_common_directory(tmp_path, monkeypatch):
    from stage1_teacher.corpus import source_labels

    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("a\n")
    (tmp_path / "sub" / "b.txt").write_text("b\n")
    monkeypatch.chdir(tmp_path)
    write_yaml(tmp_path, f"domains:\n  d: {{paths: [a.txt, {tmp_path}/sub/b.txt], format: lines}}\n")
    (src,) = load_corpora("corpora.yaml")
    assert sorted(source_labels(src).values()) == ["a.txt", "sub/b.txt"]
    assert docs_of(src)[0] == ["a", "b"]


def test_missing_paths_and_bad_fields_are_all_reported_at_once(tmp_path):
    y = write_yaml(tmp_path, """
domains:
  Bad-Name: {paths: [a.txt], format: lines}
  nofile: {paths: [missing.txt], format: lines}
  noglob: {paths: ["nothing/*.py"], format: files}
  nofield: {paths: [missing.jsonl], format: jsonl}
  badfmt: {paths: [a.txt], format: csv}
  noformat: {paths: [a.txt]}
  extra: {paths: [a.txt], format: lines, encoding: latin1}
""")
    with pytest.raises(ConfigError) as e:
        load_corpora(y)
    msg = str(e.value)
    assert "domain 'Bad-Name'" in msg
    assert "domain 'nofile': path 'missing.txt'" in msg and "does not exist" in msg
    assert "domain 'noglob': path 'nothing/*.py'" in msg and "matches no file" in msg
    assert "domain 'nofield': format jsonl needs field 'text_field'" in msg
    assert "domain 'badfmt': field 'format' must be one of" in msg
    assert "domain 'noformat': field 'format' is missing; give one of lines, files, jsonl, parquet" in msg
    assert "domain 'extra': unknown key 'encoding' (valid keys: format, heldout_seed, max_rows, paths, text_field; " \
           "or config, data_files, dataset, heldout_seed, max_rows, revision, split, text_field for a datasets source)" in msg


def test_a_file_whose_text_two_domains_read_is_refused(tmp_path):
    (tmp_path / "bible.txt").write_text("In the beginning\n", encoding="utf-8")
    (tmp_path / "both.jsonl").write_text('{"code": "x = 1", "prose": "hello"}\n', encoding="utf-8")
    y = write_yaml(tmp_path, """
domains:
  scripture: {paths: [bible.txt], format: lines}
  legal: {paths: ["*.txt"], format: lines}
  whole: {paths: [bible.txt], format: files}
  code: {paths: [both.jsonl], format: jsonl, text_field: code}
  prose: {paths: [both.jsonl], format: jsonl, text_field: prose}
""")
    with pytest.raises(ConfigError) as e:
        load_corpora(y)
    msg = str(e.value)
    assert f"file {tmp_path / 'bible.txt'} is read by domains 'scripture' and 'legal'" in msg, msg
    # read as one document (files) or one per line (lines), a text file's text is the same
    assert f"file {tmp_path / 'bible.txt'} is read by domains 'scripture' and 'whole'" in msg, msg
    assert "both.jsonl" not in msg  # two text fields of one file: two sets of documents, allowed


def test_many_files_two_domains_share_are_one_problem_naming_the_first(tmp_path):
    (tmp_path / "d").mkdir()
    for i in range(500):
        (tmp_path / "d" / f"{i:03d}.txt").write_text(f"document {i}\n", encoding="utf-8")
    y = write_yaml(tmp_path, "domains:\n  a: {paths: ['d/*.txt'], format: files}\n"
                             "  b: {paths: ['d/0*.txt'], format: lines}\n")
    with pytest.raises(ConfigError) as e:
        load_corpora(y)
    assert str(e.value) == (f"{y}: file {tmp_path / 'd' / '000.txt'} and 99 more are read by domains 'a' and 'b', "
                            "whose documents would then share their text (one could train on the other's held-out "
                            "documents): list each file under one of them")


def test_a_file_reached_twice_within_a_domain_is_read_once_under_its_first_path(tmp_path):
    # A symbolic link (or a linked directory) matched beside its target: read twice, each held-out document's copy
    # would train. Kept once, under the path matched first; a link into another domain's file is still refused.
    (tmp_path / "s.txt").write_text("first line\nsecond line\n", encoding="utf-8")
    (tmp_path / "s_link.txt").symlink_to("s.txt")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "t.txt").write_text("third line\n", encoding="utf-8")
    (tmp_path / "sub_link").symlink_to("sub")
    y = write_yaml(tmp_path, """
domains:
  globbed: {paths: ["*.txt", "sub*/*.txt"], format: lines}
  linked_first: {paths: [s_link.txt, s.txt], format: files}
""")
    with pytest.raises(ConfigError, match="is read by domains 'globbed' and 'linked_first'"):
        load_corpora(y)
    y.write_text("domains:\n  globbed: {paths: ['*.txt', 'sub*/*.txt'], format: lines}\n", encoding="utf-8")
    (src,) = load_corpora(y)
    assert src.files == tuple(str(tmp_path / f) for f in ("s.txt", "sub/t.txt")), src.files
    assert docs_of(src)[0] == ["first line", "second line", "third line"]
    y.write_text("domains:\n  linked: {paths: [s_link.txt, s.txt], format: lines}\n", encoding="utf-8")
    assert load_corpora(y)[0].files == (str(tmp_path / "s_link.txt"),)


def test_a_hard_link_is_the_same_file(tmp_path):
    # Another name for the same data (cp -l, a deduplicating sync): its real path differs, its text does not.
    (tmp_path / "a.txt").write_text("one\ntwo\n", encoding="utf-8")
    os.link(tmp_path / "a.txt", tmp_path / "b.txt")
    (tmp_path / "c.txt").write_text("one\ntwo\n", encoding="utf-8")  # a copy is another file (equal text is allowed)
    y = write_yaml(tmp_path, "domains:\n  prose: {paths: ['*.txt'], format: lines}\n")
    assert load_corpora(y)[0].files == (str(tmp_path / "a.txt"), str(tmp_path / "c.txt"))
    y.write_text("domains:\n  x: {paths: [a.txt], format: lines}\n  y: {paths: [b.txt], format: files}\n",
                 encoding="utf-8")
    with pytest.raises(ConfigError, match=f"file {tmp_path / 'b.txt'} is read by domains 'x' and 'y'"):
        load_corpora(y)


def test_file_level_errors(tmp_path):
    with pytest.raises(ConfigError, match="--corpora .*nope.yaml: file not found"):
        load_corpora(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="exactly one top-level key 'domains'"):
        load_corpora(write_yaml(tmp_path, "python: {paths: [a], format: lines}\n"))
    with pytest.raises(ConfigError, match="'domains' is empty"):
        load_corpora(write_yaml(tmp_path, "domains: {}\n"))


def test_unknown_text_field_names_file_line_and_found_keys(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "r.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "x.parquet")
    y = write_yaml(tmp_path, """
domains:
  rec: {paths: [r.jsonl], format: jsonl, text_field: text}
  tab: {paths: [x.parquet], format: parquet, text_field: text}
""")
    rec, tab = load_corpora(y)
    with pytest.raises(ConfigError, match=r"domain 'rec': .*r\.jsonl:1: no text field 'text' \(found: \['body'\]\)"):
        docs_of(rec)
    with pytest.raises(ConfigError, match=r"domain 'tab': .*x\.parquet: no column 'text' \(columns: \['body'\]\)"):
        docs_of(tab)


def test_local_datasets_directory_streams_in_order(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    (d / "train.jsonl").write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(5)))
    y = write_yaml(tmp_path, f"domains:\n  web: {{dataset: {d}, split: train}}\n")
    (src,) = load_corpora(y)
    assert src.format == "dataset" and src.text_field == "text"
    assert docs_of(src)[0] == [f"doc {i}" for i in range(5)]


def test_a_local_dataset_directory_read_whole_gets_a_note_that_a_resume_cannot_check_it(tmp_path):
    # Named without data_files, its documents come from files no resume compares (a record added before a resume
    # moved the held-out documents into training): the dump and pack say so, and how to have them checked.
    from stage1_teacher.dataset_source import unpinned_note

    d = tmp_path / "ds"
    d.mkdir()
    (d / "train.jsonl").write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(5)))
    (whole,) = load_corpora(write_yaml(tmp_path, f"domains:\n  web: {{dataset: {d}, split: train}}\n"))
    note = unpinned_note(whole)
    assert note is not None and f"dataset directory {d} is read whole" in note and "'data_files'" in note
    (named,) = load_corpora(write_yaml(tmp_path, f"domains:\n  web: {{dataset: {d}, data_files: ds/train.jsonl, "
                                                 f"split: train}}\n"))
    assert unpinned_note(named) is None and named.files == (str(d / "train.jsonl"),)


def test_unreachable_hub_dataset_fails_fast_with_a_clear_message(tmp_path):
    y = write_yaml(tmp_path, "domains:\n  wiki: {dataset: someorg/some-dataset, config: en, split: train}\n")
    (src,) = load_corpora(y)
    t = time.perf_counter()
    try:
        docs = docs_of(src)[0][:1]
    except ConfigError as e:
        assert "domain 'wiki': cannot open dataset 'someorg/some-dataset'" in str(e)
    else:  # a networked machine with that dataset would get here; this build machine never does
        assert docs
    assert time.perf_counter() - t < 15


def test_per_domain_max_rows_is_parsed_validated_and_part_of_the_identity(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("one\ntwo\n", encoding="utf-8")
    srcs = load_corpora(write_yaml(tmp_path, "domains:\n  a: {paths: [a.txt], format: lines, max_rows: 7}\n"
                                             "  b: {paths: [b.txt], format: lines}\n"))
    assert [s.max_rows for s in srcs] == [7, None]
    assert [s.row_cap(50) for s in srcs] == [7, 50]
    assert srcs[0].spec_dict()["max_rows"] == 7
    assert "max_rows" not in srcs[1].spec_dict()  # unset: the same identity as before the key existed
    for bad in ("0", "-3", "lots", "true", "2.5"):
        with pytest.raises(ConfigError, match=r"domain 'a'.*'max_rows' must be a positive integer"):
            load_corpora(write_yaml(tmp_path, f"domains:\n  a: {{paths: [a.txt], format: lines, max_rows: {bad}}}\n"))


def test_per_domain_heldout_seed_is_parsed_validated_and_part_of_the_identity(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("one\ntwo\n", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text('{"text": "one"}\n', encoding="utf-8")
    srcs = load_corpora(write_yaml(tmp_path, "domains:\n  a: {paths: [a.txt], format: lines, heldout_seed: 3}\n"
                                             "  b: {paths: [b.txt], format: lines, heldout_seed: 0}\n"
                                             "  c: {dataset: json, data_files: c.jsonl, heldout_seed: 2}\n"))
    assert [s.heldout_seed for s in srcs] == [3, 0, 2]
    assert srcs[0].spec_dict()["heldout_seed"] == 3
    assert "heldout_seed" not in srcs[1].spec_dict()  # draw 0: the same identity as before the key existed
    for bad in ("-1", "some", "true", "1.5"):
        with pytest.raises(ConfigError, match=r"domain 'a'.*'heldout_seed' must be an integer >= 0"):
            load_corpora(write_yaml(tmp_path, f"domains:\n  a: {{paths: [a.txt], format: lines, heldout_seed: {bad}}}\n"))


def test_a_byte_order_mark_at_the_start_of_a_file_is_dropped_and_kept_elsewhere(tmp_path):
    bom = "\ufeff"
    (tmp_path / "a.txt").write_text(f"{bom}first\nsecond {bom}mid\n", encoding="utf-8")
    (tmp_path / "only.txt").write_text(f"{bom}\nreal\n", encoding="utf-8")  # a mark alone on its line: no document
    (tmp_path / "d1.txt").write_text(f"{bom}doc one\n", encoding="utf-8")
    (tmp_path / "r.jsonl").write_text(f'{bom}{{"t": "one"}}\n{{"t": "{bom}two"}}\n', encoding="utf-8")
    srcs = {s.name: s for s in load_corpora(write_yaml(tmp_path, """
domains:
  prose: {paths: [a.txt, only.txt], format: lines}
  docs: {paths: [d1.txt], format: files}
  rec: {paths: [r.jsonl], format: jsonl, text_field: t}
"""))}
    assert docs_of(srcs["prose"])[0] == ["first", f"second {bom}mid", "real"]
    assert docs_of(srcs["docs"])[0] == ["doc one\n"]
    assert docs_of(srcs["rec"])[0] == ["one", f"{bom}two"]  # (a JSONL file with a mark was refused as bad JSON)


def test_brackets_in_the_yaml_folder_or_a_file_name_are_not_patterns(tmp_path):
    # DDK_CACHE=/runs/exp[1] made every domain of the built-in corpus "match no file": glob read the folder as a
    # character class. A file named a[1].txt, written as it is, is that file.
    base = tmp_path / "exp[1]"
    (base / "docs").mkdir(parents=True)
    (base / "docs" / "a.txt").write_text("one\n", encoding="utf-8")
    (base / "docs" / "b[1].txt").write_text("two\n", encoding="utf-8")
    y = base / "corpora.yaml"
    y.write_text("domains:\n  globbed: {paths: ['docs/*.txt'], format: lines}\n", encoding="utf-8")
    assert docs_of(load_corpora(y)[0])[0] == ["one", "two"]
    y.write_text(f"domains:\n  named: {{paths: ['docs/b[1].txt', '{base}/docs/a.txt'], format: lines}}\n",
                 encoding="utf-8")
    assert docs_of(load_corpora(y)[0])[0] == ["two", "one"]
