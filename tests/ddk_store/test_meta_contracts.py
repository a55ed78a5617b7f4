"""StoreMeta's field contracts one by one (mutation campaign 14): names that become paths, the ranges of every count
and id, the version and format checks, what a resume compares (identity), and the dataclasses' own checks when a
writer builds metadata directly."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ddk_store import InvalidNameError, StoreFormatError, StoreMeta, StoreVersionError, spec, validate_domain_name
from ddk_store.meta import DomainInfo, SamplingInfo, TokenizerInfo, version_before
from ddk_store.testing import tiny_meta


def _refused(edit, match: str) -> None:
    """A valid metadata document after ``edit`` is refused with a StoreFormatError matching ``match``."""
    d = tiny_meta().to_dict()
    edit(d)
    with pytest.raises(StoreFormatError, match=match):
        StoreMeta.from_dict(d)


@pytest.mark.parametrize("name", ["alpha\n", "alpha\r\n", "\nalpha"])
def test_a_domain_name_with_a_newline_is_refused_not_made_a_path(name):
    """The pattern's '$' would accept a trailing newline with match(); the whole name must match."""
    with pytest.raises(InvalidNameError, match="invalid domain name"):
        validate_domain_name(name)
    _refused(lambda d: d["domains"][0].update(name=name), r"field 'domains\[0\]\.name'")


@pytest.mark.parametrize("name", [None, 7, b"alpha", ["alpha"]])
def test_a_domain_name_that_is_not_text_is_an_invalid_name_not_a_type_error(name):
    with pytest.raises(InvalidNameError, match="invalid domain name"):
        validate_domain_name(name)


@pytest.mark.parametrize("fingerprint", ["sha256:", "sha256:ab/cd", "sha256:a b", ":abc", "SHA256:abc"])
def test_a_tokenizer_fingerprint_must_be_algo_colon_hex(fingerprint):
    """Stage 2 compares fingerprints to refuse a student of another tokenizer: a malformed one is damage."""
    _refused(lambda d: d["tokenizer"].update(fingerprint=fingerprint), "tokenizer.fingerprint")


def test_the_eos_token_must_be_an_id_of_the_vocabulary_or_null():
    v = tiny_meta().tokenizer.vocab_size
    _refused(lambda d: d["tokenizer"].update(eos_token_id=v), r"tokenizer.eos_token_id': expected int in \[0, 63\]")
    _refused(lambda d: d["tokenizer"].update(eos_token_id=-1), "tokenizer.eos_token_id")
    d = tiny_meta().to_dict()
    d["tokenizer"]["eos_token_id"] = v - 1
    assert StoreMeta.from_dict(d).tokenizer.eos_token_id == v - 1
    d["tokenizer"]["eos_token_id"] = None  # a tokenizer without an end-of-sequence token
    assert StoreMeta.from_dict(d).tokenizer.eos_token_id is None


@pytest.mark.parametrize("field, value", [("bytes", -1), ("uri", "")])
def test_a_source_needs_a_uri_and_a_byte_count_of_zero_or_more(field, value):
    _refused(lambda d: d["domains"][0]["sources"][0].update({field: value}), rf"sources\[0\]\.{field}'")


@pytest.mark.parametrize("field", ["n_documents", "n_tokens", "n_skipped"])
def test_a_domain_count_below_zero_is_refused(field):
    _refused(lambda d: d["domains"][1].update({field: -1}), rf"domains\[beta\]\.{field}': expected int in \[0, inf\]")


@pytest.mark.parametrize("sources", ["", {}, "synthetic://alpha", {"uri": "x"}])
def test_sources_must_be_a_list(sources):
    """An empty string or object was iterated as no sources and accepted: a document no writer makes."""
    _refused(lambda d: d["domains"][0].update(sources=sources), r"domains\[alpha\]\.sources': expected a list")


def test_settings_must_be_an_object():
    _refused(lambda d: d.update(settings=[["seq_len", 16]]), "field 'settings': expected an object")


@pytest.mark.parametrize("samples, seed", [(0, 0), (spec.MAX_SAMPLES + 1, 0), (1, -1), (1, 2**63)])
def test_sampling_info_built_by_a_writer_checks_its_own_ranges(samples, seed):
    with pytest.raises(StoreFormatError, match="field 'sampling"):
        SamplingInfo(samples, seed)
    assert SamplingInfo(spec.MAX_SAMPLES, 2**63 - 1).to_dict() == {"samples": spec.MAX_SAMPLES, "seed": 2**63 - 1}


def test_metadata_built_by_a_writer_checks_seq_len_top_k_and_scale():
    meta = tiny_meta()
    with pytest.raises(StoreFormatError, match="field 'seq_len'"):
        meta.replace(seq_len=1)
    with pytest.raises(StoreFormatError, match="field 'top_k'"):
        meta.replace(top_k=meta.tokenizer.vocab_size + 1)
    assert meta.replace(top_k=meta.tokenizer.vocab_size).top_k == meta.tokenizer.vocab_size
    with pytest.raises(StoreFormatError, match="field 'logprob_scale'"):
        meta.replace(logprob_scale=0)
    with pytest.raises(StoreFormatError, match="duplicate domain names"):
        meta.replace(domains=(*meta.domains, meta.domains[0]))


@pytest.mark.parametrize("fmt", ["ddk-teacher-store2", "zarr", "DDK-TEACHER-STORE"])
def test_another_format_name_is_not_a_ddk_store(fmt):
    _refused(lambda d: d.update(format=fmt), "not a ddk teacher store")


@pytest.mark.parametrize("version", ["1.2junk", "1", "1.2.0", " 1.2", "v1.2", "1.-2"])
def test_a_format_version_must_be_exactly_major_dot_minor(version):
    _refused(lambda d: d.update(format_version=version), "field 'format_version': expected 'MAJOR.MINOR'")


def test_a_format_version_with_leading_zeros_is_the_same_version():
    d = tiny_meta().to_dict()
    d["format_version"] = "01.02"
    assert StoreMeta.from_dict(d).format_version == "01.02"
    d["format_version"] = "02.0"
    with pytest.raises(StoreVersionError, match="major version 1"):
        StoreMeta.from_dict(d)


@pytest.mark.parametrize("version, since, before", [
    ("1.10", (1, 2), False), ("1.9", (1, 10), True), ("1.02", (1, 2), False), ("01.1", (1, 2), True),
    ("1.2", (1, 2), False), ("1.1", (1, 2), True), ("0.99", (1, 0), True),
])
def test_version_before_compares_numbers_not_text(version, since, before):
    assert version_before(version, since) is before


def test_a_minor_version_above_nine_keeps_what_its_format_allows():
    """1.10 is newer than 1.2: a sampled store of a future minor version reads (its sampling field is not 'added
    later than its version')."""
    d = tiny_meta(encoding=spec.ENC_SAMPLED).to_dict()
    d["format_version"] = "1.10"
    assert StoreMeta.from_dict(d).sampling is not None


def test_the_tail_encoding_in_a_format_1_0_store_is_an_edit():
    with pytest.raises(StoreFormatError, match="field 'encoding': a store of format 1.0 cannot have it"):
        tiny_meta(encoding=spec.ENC_IDSORT_Q8_TAIL, format_version="1.0")
    assert tiny_meta(encoding=spec.ENC_IDSORT_Q8, format_version="1.0").encoding == spec.ENC_IDSORT_Q8


def test_a_null_sampling_field_is_no_sampling():
    d = tiny_meta().to_dict()
    d["sampling"] = None
    assert StoreMeta.from_dict(d).sampling is None


def test_sampling_on_a_store_of_another_encoding_is_refused():
    d = tiny_meta().to_dict()
    d["sampling"] = {"samples": 4, "seed": 0}
    with pytest.raises(StoreFormatError, match="field 'sampling': required with encoding 'topk-sampled' and only"):
        StoreMeta.from_dict(d)


def test_identity_ignores_what_may_differ_on_resume():
    """A rerun resumes a store whose status, version stamps, format minor version, tokenizer name, local teacher's
    path or held-out statistics differ: none of them changes what the store holds."""
    meta = tiny_meta(format_version="1.1")
    assert meta.teacher.revision.startswith("sha256:")
    other = meta.replace(
        status=spec.STATUS_COMPLETE, tool_version="9.9", created_at="2030-01-01", format_version="1.2",
        tokenizer=replace(meta.tokenizer, name="/elsewhere/tokenizer"),
        teacher=replace(meta.teacher, name="./teacher-link"),
        domains=tuple(replace(d, heldout_nll=1.5, heldout_ppl=4.48) for d in meta.domains))
    assert other.identity() == meta.identity()
    assert meta.replace(seq_len=8).identity() != meta.identity()
    assert meta.replace(tokenizer=replace(meta.tokenizer, fingerprint="sha256:other")).identity() != meta.identity()


def test_identity_keeps_the_name_of_a_hub_teacher():
    """A hub teacher's revision is a commit of *its* repository: another name at the same revision is another
    teacher, and must not resume the store."""
    hub = tiny_meta().replace(teacher=replace(tiny_meta().teacher, name="org/teacher-a", revision="0123abcd"))
    other = hub.replace(teacher=replace(hub.teacher, name="org/teacher-b"))
    assert hub.identity() != other.identity()
    assert hub.identity()["teacher"]["name"] == "org/teacher-a"


def test_a_domain_built_with_a_bad_name_is_refused():
    with pytest.raises(InvalidNameError):
        DomainInfo(name="../etc")


def test_a_tokenizer_of_no_tokens_is_refused():
    with pytest.raises(StoreFormatError, match="tokenizer.vocab_size': expected int in \\[1, "):
        TokenizerInfo.from_dict({"name": "t", "vocab_size": 0, "fingerprint": "sha256:0", "eos_token_id": None})
