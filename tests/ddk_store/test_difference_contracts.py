"""The first difference between two store identities, in user terms (ddk_store.difference; campaign 18)."""

from __future__ import annotations

from ddk_store import spec
from ddk_store.difference import first_difference, identity_difference, value_at
from ddk_store.testing import tiny_meta
from stage1_teacher.plan import RESUME_FLAGS


def test_a_key_on_one_side_only_is_named_as_absent_on_the_other():
    assert first_difference({"a": 1}, {"a": 1, "b": 2}) == "b: store has '<absent>', this run has 2"
    assert first_difference({"a": 1, "b": 2}, {"a": 1}) == "b: store has 2, this run has '<absent>'"
    assert first_difference({"x": {"a": None}}, {"x": {}}) == "x.a: store has None, this run has '<absent>'"


def test_lists_name_the_index_that_differs_and_lists_of_other_lengths_differ():
    assert first_difference({"s": [1, 2, 3]}, {"s": (1, 2, 3)}) is None  # JSON list == dataclass tuple
    assert first_difference({"s": [1, 2, 3]}, {"s": [1, 5, 3]}) == "s[1]: store has 2, this run has 5"
    assert first_difference({"s": [{"u": "a"}]}, {"s": [{"u": "b"}]}) == "s[0].u: store has 'a', this run has 'b'"
    assert first_difference({"s": [1, 2]}, {"s": [1, 2, 3]}) == "s: store has [1, 2], this run has [1, 2, 3]"


def test_settings_a_user_chooses_come_before_what_follows_from_them():
    a = {"teacher": "t1", "seq_len": 16, "zeta": 1, "alpha": 1}
    b = {"teacher": "t2", "seq_len": 8, "zeta": 2, "alpha": 2}
    assert first_difference(a, b) == "seq_len: store has 16, this run has 8"
    assert first_difference({"zeta": 1, "alpha": 1}, {"zeta": 2, "alpha": 2}).startswith("alpha:")


def test_value_at_maps_a_star_over_lists_and_is_none_where_absent():
    doc = {"domains": [{"name": "a", "sources": [1]}, {"name": "b", "sources": [2]}], "seq_len": 16}
    assert value_at(doc, "domains.*.sources") == [[1], [2]]
    assert value_at(doc, "domains.*") == doc["domains"]
    assert value_at(doc, "seq_len.*") is None
    assert value_at(doc, "seq_len.x") is None and value_at(doc, "nothing") is None


def test_a_named_setting_is_named_by_its_flag_with_the_old_value_first_and_long_values_shortened():
    old, new = tiny_meta(seq_len=16), tiny_meta(seq_len=8)
    assert identity_difference(old, new, RESUME_FLAGS) == "--seq-len was 16, this run has 8"
    assert identity_difference(old, new) == "meta.seq_len: store has 16, this run has 8"
    # several named settings changed: the first in the caller's order is named
    assert identity_difference(old, tiny_meta(seq_len=8, top_k=2), RESUME_FLAGS) == "--seq-len was 16, this run has 8"
    long_a, long_b = tiny_meta(settings={"corpora": "a" * 200}), tiny_meta(settings={"corpora": "b" * 200})
    diff = identity_difference(long_a, long_b, RESUME_FLAGS)
    head = "--corpora (domain definitions) was "
    assert diff == head + "'" + "a" * 76 + "..., this run has '" + "b" * 76 + "..."
    assert identity_difference(tiny_meta(), tiny_meta(encoding=spec.ENC_IDSORT_Q8), {}) == (
        "meta.encoding: store has 'topk-idsort-q8-tail', this run has 'topk-idsort-q8'")
