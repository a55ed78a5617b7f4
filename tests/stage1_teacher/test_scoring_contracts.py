"""Stage 1 contracts that a mutation campaign found unchecked: topk_logprobs beyond the hf backend's own call (a
tempered realized-token log-prob, no targets, targets not aligned with the positions, k = 0), byte-order marks
inside text, and the tokenization hash's definition. Every expected value is written from the definition."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from stage1_teacher.corpus import ReadStats, load_corpora, read_documents
from stage1_teacher.teacher import load_tokenizer, resolve_teacher
from stage1_teacher.tokenize import TOKENIZATION_PROBE, DocTokenizer, tokenization_hash
from stage1_teacher.topk import topk_logprobs


# ------------------------------------------------------------------------------------------------ topk_logprobs
def test_the_realized_token_log_prob_is_taken_at_the_top_ks_temperature():
    # the stored distribution is the tempered one: the target log-prob must be read from it too, not from the raw
    # logits normalized at temperature 1 (or by the tempered normalizer)
    logits = torch.tensor([[[1.0, 2.0, 3.0, 0.5], [0.0, -1.0, 4.0, 2.0]]])
    targets = [0, 3]
    tk = topk_logprobs(logits, 2, targets=torch.tensor([targets]), temperature=2.0)
    for p, row in enumerate(logits[0].tolist()):
        z = math.log(math.fsum(math.exp(x / 2.0) for x in row))
        want = [x / 2.0 - z for x in row]
        assert tk.target_logprobs[0, p].item() == pytest.approx(want[targets[p]], abs=1e-6)
        assert tk.logprobs[0, p].tolist() == pytest.approx(sorted(want, reverse=True)[:2], abs=1e-6)


def test_without_targets_the_realized_token_log_prob_is_nan_never_a_valid_looking_value():
    # NaN is what the writer and `verify` refuse; 0.0 (a certain token) would pass every check and fake a perplexity
    tk = topk_logprobs(torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0)), 2)
    assert tk.target_logprobs.shape == (2, 3) and tk.target_logprobs.dtype == torch.float32
    assert torch.isnan(tk.target_logprobs).all()


@pytest.mark.parametrize("shape", [(2, 1), (1, 3), (2, 2), (2, 4)])
def test_targets_not_shaped_like_the_positions_are_refused_by_name(shape):
    # [B, 1] and [1, P] would broadcast silently (every position scored against one target); [B, T] instead of the
    # shifted [B, T - 1] is the off-by-one of the position alignment
    logits = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(1))  # B = 2 rows, P = 3 positions
    with pytest.raises(ValueError, match=r"targets must be \[B, P\] = \(2, 3\)"):
        topk_logprobs(logits, 2, targets=torch.zeros(shape, dtype=torch.long))


def test_k_of_zero_is_refused_by_name():
    with pytest.raises(ValueError, match=r"k must be in \[1, V=4\], got 0"):
        topk_logprobs(torch.zeros(1, 1, 4), 0)


# ------------------------------------------------------------------------------------------------ byte-order marks
def test_a_byte_order_mark_is_dropped_only_at_the_start_of_a_file(tmp_path):
    # U+FEFF elsewhere is text: inside a file's first line or document, and at the start of any later line
    bom = "\ufeff"
    (tmp_path / "a.txt").write_text(f"{bom}first {bom}mid\n{bom}second\nthird\n", encoding="utf-8")
    (tmp_path / "d.txt").write_text(f"{bom}doc {bom}one\n", encoding="utf-8")
    (tmp_path / "corpora.yaml").write_text("domains:\n  prose: {paths: [a.txt], format: lines}\n"
                                           "  docs: {paths: [d.txt], format: files}\n", encoding="utf-8")
    srcs = {s.name: s for s in load_corpora(tmp_path / "corpora.yaml")}
    assert list(read_documents(srcs["prose"], stats=ReadStats())) == [f"first {bom}mid", f"{bom}second", "third"]
    assert list(read_documents(srcs["docs"], stats=ReadStats())) == [f"doc {bom}one\n"]


# ------------------------------------------------------------------------------------------------ tokenization hash
def test_the_tokenization_hash_is_sha256_of_the_probes_ids_as_int32_little_endian(tiny_teacher):
    # recorded in every store and compared on resume: another byte layout of the same ids is another hash, and
    # every store written before would be refused as made with another tokenizer
    tok = load_tokenizer(resolve_teacher(str(tiny_teacher)))
    ids = tok(TOKENIZATION_PROBE, add_special_tokens=False)["input_ids"]
    raw = b"".join(int(i).to_bytes(4, "little", signed=True) for i in ids)
    with DocTokenizer(tok) as coder:
        assert tokenization_hash(coder) == "sha256:" + hashlib.sha256(raw).hexdigest()
