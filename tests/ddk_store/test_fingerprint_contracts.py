"""Tokenizer fingerprint contracts (docs/store-format.md, "Tokenizer fingerprint"), on real Hugging Face tokenizers.

The fingerprint is stored in every store's metadata and compared by stage 2 to refuse a student whose tokenizer differs
from the teacher's, so both its value (stores already on disk must keep matching) and what it covers are contracts.
"""

from __future__ import annotations

import hashlib
import re

import pytest

from ddk_store import open_store, tokenizer_fingerprint

#: Word-level vocabulary with non-ASCII tokens (the JSON is hashed without ASCII escaping).
VOCAB = {"<unk>": 0, "<eos>": 1, "hello": 2, "world": 3, "héllo": 4, "日本": 5, "ok": 6, "zz": 7}


def _wordlevel(vocab: dict[str, int], **special):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel(vocab=dict(vocab), unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", **special)


def _reference(vocab_pairs, special_pairs) -> str:
    """The documented fingerprint, written out by hand: compact JSON, no ASCII escaping, vocab sorted by (id, token),
    special sorted by token (ids null outside the map)."""

    def s(x):  # a JSON string literal, non-ASCII kept as is
        return '"' + x.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def pair(tok, i):
        return "[" + s(tok) + "," + ("null" if i is None else str(int(i))) + "]"

    vocab = sorted(vocab_pairs, key=lambda kv: (kv[1], kv[0]))
    special = sorted(special_pairs, key=lambda kv: kv[0])
    text = ('{"vocab":[' + ",".join(pair(t, i) for t, i in vocab) + '],"special":['
            + ",".join(pair(t, i) for t, i in special) + "]}")
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


class _DuckTokenizer:
    """The two attributes the fingerprint reads (it is documented as duck-typed)."""

    def __init__(self, vocab: dict[str, int], special: list[str]):
        self._vocab, self.all_special_tokens = dict(vocab), list(special)

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)


def test_value_is_the_documented_hash_of_a_real_tokenizer():
    tok = _wordlevel(VOCAB, eos_token="<eos>")
    fp = tokenizer_fingerprint(tok)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", fp), fp
    specials = sorted(set(tok.all_special_tokens))
    assert specials == ["<eos>", "<unk>"]
    assert fp == _reference(VOCAB.items(), [(t, VOCAB[t]) for t in specials])


def test_value_of_the_tiny_bpe_tokenizer_matches_the_reference(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    vocab = tok.get_vocab()
    assert any(not k.isascii() for k in vocab)  # byte-level BPE: "Ġ"-prefixed tokens
    want = _reference(vocab.items(), [(t, vocab.get(t)) for t in set(tok.all_special_tokens)])
    assert tokenizer_fingerprint(tok) == want
    # Loading the same files again gives the same fingerprint.
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))) == want


def test_ids_of_a_token_outside_the_map_hash_as_null_and_ties_sort_by_token():
    vocab = {"b": 1, "a": 1, "c": 0, "d": 2}  # two tokens on one id: (id, token) order decides
    tok = _DuckTokenizer(vocab, ["d", "<pad>", "c"])
    assert tokenizer_fingerprint(tok) == _reference(vocab.items(), [("<pad>", None), ("c", 0), ("d", 2)])


def test_order_of_the_map_and_of_the_special_tokens_does_not_matter():
    fwd = _DuckTokenizer(VOCAB, ["<unk>", "<eos>"])
    rev = _DuckTokenizer(dict(reversed(list(VOCAB.items()))), ["<eos>", "<unk>"])
    assert tokenizer_fingerprint(fwd) == tokenizer_fingerprint(rev)


@pytest.mark.parametrize("change", ["swap-ids", "rename-token", "extra-special", "other-special"])
def test_each_covered_difference_changes_the_fingerprint(change):
    base = _wordlevel(VOCAB, eos_token="<eos>")
    if change == "swap-ids":  # same strings, same id set, two ids exchanged
        other = _wordlevel({**VOCAB, "hello": 3, "world": 2}, eos_token="<eos>")
    elif change == "rename-token":  # same ids, one string differs
        other = _wordlevel({**{k: v for k, v in VOCAB.items() if k != "zz"}, "zy": 7}, eos_token="<eos>")
    elif change == "extra-special":  # same map, one more special token (eos)
        other = _wordlevel(VOCAB, eos_token="<eos>", bos_token="ok")
    else:  # same map, eos is another token of it
        other = _wordlevel(VOCAB, eos_token="zz")
    assert sorted(other.get_vocab().values()) == sorted(base.get_vocab().values())
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(base)


def test_stage2_refuses_a_student_tokenizer_with_permuted_ids(tmp_path):
    from ddk_testkit.stores import make_store
    from ddk_store.errors import StudentError
    from stage2_student.student import check_tokenizer

    teacher = _wordlevel(VOCAB, eos_token="<eos>")
    make_store(tmp_path / "store", teacher, train_rows=2, heldout_rows=1, domains=("alpha",), top_k=4)
    meta = open_store(str(tmp_path / "store")).meta
    check_tokenizer(_wordlevel(VOCAB, eos_token="<eos>"), meta, student="same", store="s")  # accepted
    permuted = _wordlevel({**VOCAB, "héllo": 5, "日本": 4}, eos_token="<eos>")
    with pytest.raises(StudentError, match="tokenizer fingerprint"):
        check_tokenizer(permuted, meta, student="permuted", store="s")
