"""The JSON field parsers every store document goes through (mutation campaign 14): one StoreFormatError naming the
field for each wrong type, range edge, non-finite number, control character, unknown key and non-object, never a
Python error, and messages cut short however large the value."""

from __future__ import annotations

import math

import pytest

from ddk_store import StoreFormatError, StoreMeta
from ddk_store.jsonfields import parse_float, parse_int, parse_str, reject_unknown, require, short_repr
from ddk_store.meta import SamplingInfo
from ddk_store.testing import tiny_meta


def _refused(edit, match: str) -> str:
    d = tiny_meta().to_dict()
    edit(d)
    with pytest.raises(StoreFormatError, match=match) as e:
        StoreMeta.from_dict(d)
    return str(e.value)


@pytest.mark.parametrize("value", [5, "text", None, ["a"]])
def test_require_and_reject_unknown_refuse_a_document_that_is_not_an_object(value):
    with pytest.raises(StoreFormatError, match="field 'tokenizer': expected an object"):
        require(value, "name", "tokenizer")
    with pytest.raises(StoreFormatError, match="field 'tokenizer': expected an object"):
        reject_unknown(value, SamplingInfo, "tokenizer")
    _refused(lambda d: d.update(tokenizer=value), "field 'tokenizer': expected an object")


@pytest.mark.parametrize("char", ["\x1b", "\n", "\t", "\x00", "\x7f", "\x9b", "\x85"])
def test_a_string_holding_a_c0_or_c1_control_character_is_refused(char):
    """\\x9b is a one-byte CSI: a terminal acts on it as on ESC [ when `ddk-store info` prints the field."""
    _refused(lambda d: d["teacher"].update(engine=f"vllm{char}0.1"), "field 'teacher.engine': holds control characters")
    assert parse_str({"k": "vllm\u00a00.1 é"}, "k") == "vllm\u00a00.1 é"  # no control character: accepted


@pytest.mark.parametrize("field", ["top_k", "seq_len", "logprob_scale"])
def test_a_boolean_is_not_an_int(field):
    _refused(lambda d: d.update({field: True}), f"field '{field}': expected int")


def test_int_ranges_include_their_edges_and_nothing_beyond():
    d = {"a": 5}
    assert parse_int(d, "a", lo=5, hi=5) == 5
    for lo, hi in ((6, None), (None, 4)):
        with pytest.raises(StoreFormatError, match="field 'x.a': expected int in"):
            parse_int(d, "a", "x", lo=lo, hi=hi)
    assert parse_int({"a": None}, "a", optional=True) is None and parse_int({}, "a", optional=True) is None
    with pytest.raises(StoreFormatError, match="field 'a': expected int"):
        parse_int({"a": None}, "a")


@pytest.mark.parametrize("value", [True, math.nan, math.inf, -math.inf, 10**400, "1.5", [1.5]],
                         ids=["bool", "nan", "inf", "-inf", "int-beyond-float", "text", "list"])
def test_a_float_field_must_be_a_finite_number(value):
    _refused(lambda d: d["domains"][0].update(heldout_nll=value), r"domains\[alpha\]\.heldout_nll': expected a finite")


def test_a_float_field_is_null_only_where_it_is_optional():
    assert parse_float({"a": None}, "a", optional=True) is None and parse_float({}, "a", optional=True) is None
    assert parse_float({"a": 2}, "a") == 2.0 and isinstance(parse_float({"a": 2}, "a"), float)
    with pytest.raises(StoreFormatError, match="field 'a': expected a finite number"):
        parse_float({"a": None}, "a")
    with pytest.raises(StoreFormatError, match="field 'a' is missing"):
        parse_float({}, "a")


@pytest.mark.parametrize("key", ["xray", "x", "x-note", "X_note", "_x_note"])
def test_only_keys_starting_with_x_underscore_are_extensions(key):
    _refused(lambda d: d.update({key: 1}), "unknown field")


def test_messages_stay_short_however_large_the_value():
    """A damaged field can be megabytes: the one-line error shows its start, cut with '...'."""
    message = _refused(lambda d: d.update(format_version="1." + "x" * 100_000), "format_version")
    assert len(message) < 400 and "..." in message
    message = _refused(lambda d: d["tokenizer"].update(fingerprint="sha256:" + "z/" * 50_000), "fingerprint")
    assert len(message) < 400 and "..." in message


def test_a_value_nested_too_deeply_to_print_is_still_one_error():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert short_repr(deep) == "<list too large to show>"
    _refused(lambda d: d.update(tool_version=deep), "field 'tool_version': expected a string")


def test_an_empty_string_is_refused_only_where_a_value_is_required():
    assert parse_str({"k": ""}, "k") == ""
    with pytest.raises(StoreFormatError, match="field 'src.k': expected a non-empty string, got ''"):
        parse_str({"k": ""}, "k", "src", allow_empty=False)
