"""`datasets` sources of CORPORA.yaml: local directories and data_files resolved against the YAML's folder, offline.

Every test here runs with the hub switched off: local sources must never need it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ddk_store import open_store
from ddk_store.errors import ConfigError
from stage1_teacher.config import Stage1Config
from stage1_teacher.corpus import ReadStats, load_corpora, read_documents
from stage1_teacher.dataset_source import is_on_hub
from stage1_teacher.plan import provenance
from stage1_teacher.run import run


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No hub: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE as the libraries see them."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)


def jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    return path


def project(tmp_path: Path, domains: str) -> Path:
    """A corpora file in tmp_path/project; tests then run from another directory (tmp_path/elsewhere)."""
    root = tmp_path / "project"
    root.mkdir(exist_ok=True)
    (tmp_path / "elsewhere").mkdir(exist_ok=True)
    y = root / "corpora.yaml"
    y.write_text("domains:\n" + domains, encoding="utf-8")
    return y


def docs(src) -> list[str]:
    return list(read_documents(src, stats=ReadStats()))


def test_json_lines_named_by_data_files_relative_to_the_yaml(tmp_path, monkeypatch):
    y = project(tmp_path, "  web: {dataset: json, data_files: data/*.jsonl, text_field: body}\n")
    jsonl(y.parent / "data" / "b.jsonl", ["b0", "b1"], "body")
    jsonl(y.parent / "data" / "a.jsonl", ["a0", "a1", "a2"], "body")
    monkeypatch.chdir(tmp_path / "elsewhere")
    (src,) = load_corpora(y)
    assert src.format == "dataset" and not is_on_hub(src)
    assert src.data_files == src.files == (str(y.parent / "data" / "a.jsonl"), str(y.parent / "data" / "b.jsonl"))
    assert src.spec_dict()["patterns"] == ["data/*.jsonl"]  # as written: the identity does not depend on the cwd
    assert docs(src) == ["a0", "a1", "a2", "b0", "b1"]  # files in sorted order, rows in file order
    assert [s.uri for s in provenance(src)] == [Path(f).as_uri() for f in src.files]
    assert all(len(s.sha256) == 64 and s.bytes > 0 for s in provenance(src))


def test_parquet_files_named_by_a_data_files_list(tmp_path, monkeypatch):
    y = project(tmp_path, "  tab: {dataset: parquet, data_files: [t2.parquet, t1.parquet]}\n")
    pq.write_table(pa.table({"text": ["one", "two"]}), y.parent / "t1.parquet")
    pq.write_table(pa.table({"text": ["three"]}), y.parent / "t2.parquet")
    monkeypatch.chdir(tmp_path / "elsewhere")
    (src,) = load_corpora(y)
    assert src.text_field == "text"
    assert docs(src) == ["three", "one", "two"]  # the list's order, as written


def test_relative_dataset_directory_is_resolved_against_the_yaml(tmp_path, monkeypatch):
    y = project(tmp_path, "  web: {dataset: corpora/web, split: train}\n")
    jsonl(y.parent / "corpora" / "web" / "train.jsonl", [f"doc {i}" for i in range(4)])
    monkeypatch.chdir(tmp_path / "elsewhere")
    (src,) = load_corpora(y)
    assert src.dataset_dir == str(y.parent / "corpora" / "web") and not is_on_hub(src)
    assert src.spec_dict()["dataset"] == "corpora/web"
    assert docs(src) == [f"doc {i}" for i in range(4)]


def test_missing_local_dataset_directory_names_the_directory_not_the_hub(tmp_path, monkeypatch):
    y = project(tmp_path, "  web: {dataset: ./corpora/missing}\n")
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(ConfigError) as info:
        load_corpora(y)
    msg = str(info.value)
    assert "domain 'web'" in msg and "dataset directory './corpora/missing'" in msg and "does not exist" in msg
    assert str(y.parent / "corpora" / "missing") in msg and "hub" in msg.split("; ", 1)[1]  # only as the other choice
    assert "unreachable" not in msg


def test_data_files_problems_are_one_line_each(tmp_path):
    y = project(tmp_path, "  a: {dataset: json}\n"
                          "  b: {dataset: json, data_files: nothing/*.jsonl}\n"
                          "  c: {dataset: json, data_files: []}\n")
    with pytest.raises(ConfigError) as info:
        load_corpora(y)
    msg = str(info.value)
    assert "domain 'a': dataset 'json' reads local files: name them with 'data_files'" in msg
    assert "domain 'b': data_files 'nothing/*.jsonl'" in msg and "matches no file; fix 'data_files'" in msg
    assert "domain 'c': field 'data_files' must be a non-empty list of paths or globs" in msg


def test_hub_data_files_are_paths_inside_the_repository(tmp_path):
    y = project(tmp_path, "  c4: {dataset: allenai/c4, data_files: en/c4-train.00000-of-01024.json.gz}\n")
    (src,) = load_corpora(y)
    assert is_on_hub(src) and src.dataset_dir is None and src.files == ()
    assert src.data_files == ("en/c4-train.00000-of-01024.json.gz",)


def test_a_hub_dataset_is_pinned_by_revision_and_an_unpinned_one_gets_a_note(tmp_path):
    """Without 'revision' the select pass, the train pass and any resume each read the hub's main branch: a push in
    between would move documents across the held-out split. The revision is part of the definition a resume must
    match and of the provenance; a local source refuses it."""
    from stage1_teacher.dataset_source import dataset_label, unpinned_note

    commit = "a" * 40
    y = project(tmp_path, f"  c4: {{dataset: allenai/c4, data_files: en/x.json.gz, revision: {commit}}}\n"
                          "  wiki: {dataset: wikimedia/wikipedia, config: 20231101.en}\n")
    c4, wiki = load_corpora(y)
    assert c4.revision == commit and c4.spec_dict()["revision"] == commit and "revision" not in wiki.spec_dict()
    # held-out keys name the documents without the revision: pinning the commit already read moves none of them
    assert dataset_label(c4) == "dataset:allenai/c4//train" == dataset_label(dataclasses.replace(c4, revision=None))
    assert provenance(c4)[0].uri == f"hf://allenai/c4//train@{commit}"
    assert unpinned_note(c4) is None
    note = unpinned_note(wiki)
    assert note.startswith("note: domain 'wiki': hub dataset 'wikimedia/wikipedia' is not pinned") and "revision: " in note
    y = project(tmp_path, "  web: {dataset: json, data_files: data/*.jsonl, revision: main}\n")
    (tmp_path / "project" / "data").mkdir(exist_ok=True)
    (tmp_path / "project" / "data" / "a.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(ConfigError, match="'revision' pins a hub dataset; 'json' is read from local files"):
        load_corpora(y)
    assert unpinned_note(load_corpora(project(tmp_path, "  web: {dataset: json, data_files: data/*.jsonl}\n"))[0]) is None


def test_dump_from_a_json_lines_file_named_by_data_files(tiny_teacher, tmp_path, monkeypatch):
    """A whole dump with no network: the file's hash is in the store's provenance and its settings."""
    texts = [f"the quick brown fox {i} jumps over the lazy dog {i * 7}" for i in range(60)]
    y = project(tmp_path, "  web: {dataset: json, data_files: data/web.jsonl, text_field: text}\n")
    data = jsonl(y.parent / "data" / "web.jsonl", texts)
    monkeypatch.chdir(tmp_path / "elsewhere")
    store = tmp_path / "store"
    summary = run(Stage1Config(teacher=str(tiny_teacher), corpora=str(y), store=str(store), seq_len=16, top_k=4,
                               heldout_seqs=2, backend="hf", device="cpu", batch_tokens=64, progress=False),
                  echo=lambda _: None)
    assert summary.status == "complete"
    meta = open_store(str(store)).meta
    (source,) = meta.domains[0].sources
    assert source.uri == data.resolve().as_uri() and source.bytes == data.stat().st_size
    assert meta.settings["corpora"]["web"]["patterns"] == ["data/web.jsonl"]


def test_a_packed_dataset_domain_needs_its_directory_no_more(tiny_teacher, tmp_path, monkeypatch):
    """Like a text file, a local dataset directory may be gone once its domain is packed: the dump that scores the
    packed rows, and a rerun on the complete store, read the store, not the directory (both used to stop at the
    directory's absence)."""
    import shutil

    from stage1_teacher.pack import run_pack

    texts = [f"a local dataset row {i}, with words {i * 3} and {i * 5}" for i in range(60)]
    y = project(tmp_path, "  web: {dataset: ./corpora/web, text_field: text}\n")
    jsonl(y.parent / "corpora" / "web" / "train.jsonl", texts)
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = Stage1Config(teacher=str(tiny_teacher), corpora=str(y), store=str(tmp_path / "store"), seq_len=16, top_k=4,
                       heldout_seqs=2, backend="hf", device="cpu", batch_tokens=64, progress=False)
    run_pack(cfg, echo=lambda _: None)
    shutil.rmtree(y.parent / "corpora" / "web")
    assert run(cfg, echo=lambda _: None).status == "complete"  # scored from the packed rows alone
    rows = open_store(str(tmp_path / "store")).read_rows("web", "train", [0, 1]).tokens
    assert run(cfg, echo=lambda _: None).status == "noop"  # the complete store: nothing to dump again
    assert (open_store(str(tmp_path / "store")).read_rows("web", "train", [0, 1]).tokens == rows).all()
