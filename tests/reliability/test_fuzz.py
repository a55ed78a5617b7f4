"""Property-based fuzzing of the two parsers users feed by hand or by accident: CORPORA.yaml and the store metadata.

The property is the same for both: any input yields either a valid result or a DdkError subclass (which the CLIs
print as one line), never another exception (which the CLIs would print as a traceback).
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddk_store import DdkError, StoreMeta, StoreReader, open_store, validate_domain_name
from ddk_store.groups import read_root_doc, root_meta_from_doc
from ddk_store.storage import open_zarr_store
from ddk_store.testing import tiny_meta
from stage1_teacher.corpus import FORMATS, DomainSource, load_corpora

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def corpus_dir() -> Iterator[Path]:
    """A directory with a few real corpus files; the fuzzed CORPORA.yaml is rewritten in it for every example."""
    d = Path(tempfile.mkdtemp(prefix="ddk-fuzz-corpora-"))
    (d / "a.txt").write_text("some text\n", encoding="utf-8")
    (d / "b.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    (d / "sub").mkdir()
    (d / "sub" / "c.txt").write_text("more text\n", encoding="utf-8")
    yield d
    shutil.rmtree(d)


def check_corpora(path: Path) -> None:
    """The property: load_corpora returns valid domains or raises a DdkError; nothing else."""
    try:
        sources = load_corpora(path)
    except DdkError:
        return
    assert isinstance(sources, list) and sources
    names = [s.name for s in sources]
    assert len(set(names)) == len(names)
    for src in sources:
        assert isinstance(src, DomainSource)
        validate_domain_name(src.name)
        assert src.format in (*FORMATS, "dataset")
        if src.format != "dataset":
            assert src.files and all(Path(f).is_file() for f in src.files)


# --------------------------------------------------------------------------- CORPORA.yaml
#: Pieces of YAML syntax and of the CORPORA.yaml vocabulary; no '/', '~' or '*' so no example globs the filesystem.
YAML_BITS = ["domains:", "\n", "  ", "    ", ": ", "- ", "{", "}", "[", "]", ", ", "paths", "format", "text_field",
             "dataset", "config", "split", "lines", "files", "jsonl", "parquet", "a.txt", "b.jsonl", "'", '"', "&x ",
             "x", "!!python/object/apply:os.system", "!!binary", "<<: ", "? ", "|", ">", "#", "%YAML 1.1\n", "---\n",
             "2024-13-01", "0x1F", ".nan", "~", "null", "yes", "\t", "\\u0000", "é", "..", "\x00"]
yaml_text = st.lists(st.sampled_from(YAML_BITS) | st.text(alphabet=st.characters(exclude_characters="/~*"),
                                                           max_size=4), max_size=40).map("".join)

leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12))
nested = st.recursive(leaf, lambda kids: st.lists(kids, max_size=4)
                      | st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), kids, max_size=4),
                      max_leaves=12)

#: Domain names, including every trick that would escape the store prefix if it became a path.
NAMES = st.one_of(st.sampled_from(["prose", "code-2", "a.b", "../x", "..", "a/b", "/etc", "", " ", "A", "prose\n",
                                   "ｐｒｏｓｅ", "x" * 65, "a\x00b", "-x", ".hidden", "über"]),
                  st.text(max_size=10), st.integers())
#: Paths and globs, all relative to the corpora file (or absolute but without wildcards).
PATHS = st.one_of(st.sampled_from(["a.txt", "b.jsonl", "sub/c.txt", "sub/*.txt", "*.txt", "missing.txt", "../a.txt",
                                   "", "a.txt\x00", "/nonexistent/x", "sub", "[", "~nobody/x"]),
                  st.text(alphabet=st.characters(exclude_characters="/*~"), max_size=8))
SOURCE_KEYS = ["paths", "format", "text_field", "dataset", "config", "split", "path", "extra"]
source_value = st.one_of(PATHS, st.lists(PATHS, max_size=3), st.sampled_from([*FORMATS, "csv", "LINES"]), leaf)
source = st.one_of(st.dictionaries(st.sampled_from(SOURCE_KEYS), source_value, max_size=4), nested)
corpora_doc = st.one_of(st.fixed_dictionaries({"domains": st.dictionaries(NAMES, source, max_size=4)}), nested,
                        st.dictionaries(st.sampled_from(["domains", "domain", "extra"]), nested, max_size=2))


@FUZZ
@given(text=yaml_text)
def test_corpora_yaml_text(corpus_dir: Path, text: str) -> None:
    path = corpus_dir / "corpora.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    check_corpora(path)
    assert not (corpus_dir / "pwned").exists()


@FUZZ
@given(doc=corpora_doc)
def test_corpora_structures(corpus_dir: Path, doc: Any) -> None:
    path = corpus_dir / "corpora.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    check_corpora(path)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_corpora_bytes(corpus_dir: Path, raw: bytes) -> None:
    path = corpus_dir / "corpora.yaml"
    path.write_bytes(raw)
    check_corpora(path)


# --------------------------------------------------------------------------- store metadata
VALID = tiny_meta(settings={"heldout_seqs": 4, "corpora": {"alpha": {"format": "lines"}}}).to_dict()
VALID["domains"][0]["heldout_nll"] = 1.5
VALID["domains"][0]["heldout_ppl"] = 4.48

#: JSON-like values, including the awkward ones: NaN and infinities, ints beyond float and int64 range.
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63, max_value=2**1100),
                      st.just(10**400), st.floats(), st.text(max_size=16),
                      st.sampled_from(["1.0", "2.0", "complete", "writing", "topk-idsort-q8", "sha256:x", "alpha"]))
json_value = st.recursive(json_leaf, lambda kids: st.lists(kids, max_size=3)
                          | st.dictionaries(st.text(max_size=8), kids, max_size=3), max_leaves=8)


def mutate(data: st.DataObject, doc: dict[str, Any], *, json_only: bool = False) -> Any:
    """A deep copy of ``doc`` after 1-4 random edits: delete, replace, add a key, or wrap a value in a list."""
    doc = copy.deepcopy(doc)
    values = json_value if json_only else st.one_of(json_value, st.just(10**5000))
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        parent: Any = doc
        while True:  # walk down a random path; stop at some container
            keys = list(parent) if isinstance(parent, dict) else list(range(len(parent)))
            if not keys:
                break
            key = data.draw(st.sampled_from(keys), label="key")
            child = parent[key]
            if isinstance(child, (dict, list)) and child and data.draw(st.booleans(), label="descend"):
                parent = child
                continue
            op = data.draw(st.sampled_from(["delete", "replace", "add", "wrap"]), label="op")
            if op == "delete":
                del parent[key]
            elif op == "replace":
                parent[key] = data.draw(values, label="value")
            elif op == "wrap":
                parent[key] = [child]
            elif isinstance(parent, dict):
                name = data.draw(st.one_of(st.text(max_size=8), st.sampled_from(["x_ext", "status", "extra"])))
                parent[name] = data.draw(values, label="value")
            break
    if data.draw(st.integers(0, 19), label="replace root") == 0:
        return data.draw(values, label="root")
    return doc


@FUZZ
@given(data=st.data())
def test_store_meta_mutations(data: st.DataObject) -> None:
    doc = mutate(data, VALID)
    try:
        meta = StoreMeta.from_dict(doc)
    except DdkError:
        return
    assert isinstance(meta, StoreMeta)
    assert StoreMeta.from_dict(meta.to_dict()) == meta  # whatever is accepted round-trips


def test_valid_metadata_is_accepted() -> None:
    """The fuzz starts from a valid document: without this, 'always DdkError' would pass it."""
    assert StoreMeta.from_dict(copy.deepcopy(VALID)).to_dict()["domains"][0]["heldout_nll"] == 1.5


@pytest.fixture(scope="module")
def store_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="ddk-fuzz-store-"))
    yield d
    shutil.rmtree(d)


def root_doc(attrs: Any) -> dict[str, Any]:
    return {"zarr_format": 3, "node_type": "group", "attributes": {"ddk": attrs}}


@FUZZ
@given(data=st.data())
def test_open_store_with_mutated_metadata(store_dir: Path, data: st.DataObject) -> None:
    """The path `ddk-store info` and stage 2 take: the root zarr.json's ddk attribute, fuzzed, through open_store."""
    (store_dir / "zarr.json").write_text(json.dumps(root_doc(mutate(data, VALID, json_only=True))))
    try:
        reader = open_store(str(store_dir), allow_incomplete=True)
    except DdkError:
        return
    assert isinstance(reader, StoreReader) and reader.domains


@FUZZ
@given(data=st.data())
def test_root_doc_bytes(store_dir: Path, data: st.DataObject) -> None:
    """Damaged bytes of the root zarr.json (truncated, overwritten, spliced): parsed to a StoreMeta or a DdkError."""
    text = bytearray(json.dumps(root_doc(VALID)).encode())
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        at = data.draw(st.integers(0, len(text)), label="at")
        op = data.draw(st.sampled_from(["truncate", "overwrite", "insert"]), label="op")
        if op == "truncate":
            del text[at:]
        else:
            chunk = data.draw(st.binary(min_size=1, max_size=4), label="bytes")
            text[at:at + (len(chunk) if op == "overwrite" else 0)] = chunk
    (store_dir / "zarr.json").write_bytes(bytes(text))
    try:
        doc = read_root_doc(open_zarr_store(str(store_dir), read_only=True))
        if doc is None:
            return
        meta = root_meta_from_doc(doc, str(store_dir))
    except DdkError:
        return
    assert isinstance(meta, StoreMeta)


# --------------------------------------------------------------------------- known defects (files not edited here)
def test_deeply_nested_root_doc(store_dir: Path) -> None:
    (store_dir / "zarr.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DdkError):
        read_root_doc(open_zarr_store(str(store_dir), read_only=True))


@pytest.mark.parametrize("outer", [{"node_type": "array"}, {"node_type": 5}, {"codecs": []}],
                         ids=["array-node", "bad-node-type", "unknown-key"])
def test_root_doc_that_is_not_a_group(store_dir: Path, outer: dict[str, Any]) -> None:
    (store_dir / "zarr.json").write_text(json.dumps({**root_doc(VALID), **outer}))
    with pytest.raises(DdkError):
        open_store(str(store_dir), allow_incomplete=True)
