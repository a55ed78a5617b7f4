"""StoreMeta parsing: round trips, one clear error per bad field, version and encoding refusal."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ddk_store import InvalidNameError, StoreFormatError, StoreMeta, StoreVersionError, validate_domain_name
from ddk_store.testing import tiny_meta

names = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True)


@settings(max_examples=40, deadline=None)
@given(domains=st.lists(names, min_size=1, max_size=5, unique=True), seq_len=st.integers(2, 4096),
       vocab=st.integers(1, 200000), data=st.data())
def test_roundtrip(domains, seq_len, vocab, data):
    k = data.draw(st.integers(1, vocab))
    m = tiny_meta(domains=domains, seq_len=seq_len, top_k=k, vocab_size=vocab, settings={"a": [1, "x"]})
    assert StoreMeta.from_dict(m.to_dict()) == m


@pytest.mark.parametrize("name", ["", "A", "../x", "a/b", "-x", ".x", "x" * 65, "a b", "é", "zarr.json", "a.partial"])
def test_bad_domain_names(name):
    with pytest.raises(InvalidNameError, match="invalid domain name"):
        validate_domain_name(name)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(top_k=0), "field 'top_k': expected int in"),
    (lambda d: d.update(seq_len="1024"), "field 'seq_len'"),
    (lambda d: d["tokenizer"].update(fingerprint="nohash"), "tokenizer.fingerprint"),
    (lambda d: d.pop("teacher"), "field 'teacher' is missing"),
    (lambda d: d.update(status="done"), "field 'status'"),
    (lambda d: d.update(surprise=1), "unknown field"),
    (lambda d: d["domains"][0].update(name="../etc"), "invalid domain name"),
    (lambda d: d.update(format="zarr"), "not a ddk teacher store"),
])
def test_bad_fields(edit, message):
    d = tiny_meta().to_dict()
    edit(d)
    with pytest.raises(StoreFormatError, match=message.replace("(", r"\(")):
        StoreMeta.from_dict(d)


def test_extension_fields_are_allowed():
    d = tiny_meta().to_dict()
    d["x_team_note"] = "hello"
    assert StoreMeta.from_dict(d) == tiny_meta()


def test_unknown_major_version_and_encoding():
    d = tiny_meta().to_dict()
    d["format_version"] = "2.0"
    with pytest.raises(StoreVersionError, match="format version 2.0 is not supported.*major version 1"):
        StoreMeta.from_dict(d)
    d = tiny_meta().to_dict()
    d["encoding"] = "topk-sampled-counts"
    with pytest.raises(StoreVersionError, match="unknown top-k encoding 'topk-sampled-counts'"):
        StoreMeta.from_dict(d)
