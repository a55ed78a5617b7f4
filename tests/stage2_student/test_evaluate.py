"""The student's held-out perplexity (the numerator of every ratio DDK steers by) against a float64 reference
written from its definition: exp of the token-weighted mean next-token NLL over a domain's held-out rows, the
softmax taken over the store's vocabulary (a padded head's extra columns are no tokens)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from ddk_store import open_store, spec
from stage2_student.evaluate import evaluate


def reference(model, reader, domain: str, n: int) -> tuple[float, int]:
    """(mean NLL in float64, tokens) of ``model`` on the first ``n`` held-out rows of ``domain``, row by row."""
    tokens = torch.from_numpy(reader.read_rows(domain, spec.SPLIT_HELDOUT, np.arange(n)).tokens.astype(np.int64))
    V = reader.vocab_size
    total, count = 0.0, 0
    with torch.no_grad():
        for row in tokens:
            logits = model(input_ids=row[None]).logits[0, :-1].double()  # (T-1, Vm): position t predicts t+1
            logp = logits[:, :V] - torch.logsumexp(logits[:, :V], dim=-1, keepdim=True)
            total += -float(logp.gather(-1, row[1:, None]).sum())
            count += row.numel() - 1
    return total / count, count


@pytest.mark.parametrize("batch_size,heldout_rows", [(1, None), (3, None), (8, 3)])
def test_held_out_perplexity_matches_the_definition(padded_student_dir, store_url, batch_size, heldout_rows):
    model = AutoModelForCausalLM.from_pretrained(padded_student_dir, dtype=torch.float32)
    reader = open_store(store_url)
    domains = reader.domains
    assert model.config.vocab_size > reader.vocab_size  # the head is padded: its extra columns must be left out
    got = evaluate(model, reader, domains, vocab_size=reader.vocab_size, batch_size=batch_size,
                   heldout_rows=heldout_rows)
    for i, d in enumerate(domains):
        n = reader.num_rows(d, spec.SPLIT_HELDOUT) if heldout_rows is None else heldout_rows
        nll, tokens = reference(model, reader, d, n)
        assert got["tokens"][i] == tokens == n * (reader.meta.seq_len - 1)
        assert got["nll"][i] == pytest.approx(nll, rel=1e-6)
        assert got["ppl"][i] == pytest.approx(math.exp(nll), rel=1e-5)


@pytest.mark.parametrize("limit", [None, 2, 3])
def test_teacher_perplexity_is_scored_on_the_same_heldout_rows(store_url, limit):
    """The denominator of every DDK ratio: exp(-mean of the teacher's stored target log-probs) over exactly the
    held-out rows the student is scored on (the first ``limit`` with --heldout-rows), in float64."""
    from stage2_student.evaluate import teacher_heldout_ppl

    reader = open_store(store_url)
    got = teacher_heldout_ppl(reader, reader.domains, limit)
    for i, d in enumerate(reader.domains):
        n_all = reader.num_rows(d, spec.SPLIT_HELDOUT)
        n = n_all if limit is None else min(limit, n_all)
        tl = reader.read_rows(d, spec.SPLIT_HELDOUT, np.arange(n)).target_logprobs.astype(np.float64)
        want = math.exp(-tl.sum() / tl.size)
        assert got[i] == pytest.approx(want, rel=1e-9)
        if n < n_all:  # the case is only a test if fewer rows give another figure
            all_rows = reader.read_rows(d, spec.SPLIT_HELDOUT, np.arange(n_all)).target_logprobs.astype(np.float64)
            assert abs(math.exp(-all_rows.mean()) / want - 1) > 1e-6


def test_evaluate_puts_a_training_model_back_in_training_mode(student_dir, store_url):
    # evaluate() switches to eval mode (no dropout) for scoring; a student with dropout must train on with it after
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).train()
    reader = open_store(store_url)
    evaluate(model, reader, reader.domains[:1], vocab_size=reader.vocab_size, heldout_rows=1)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    evaluate(model, reader, reader.domains[:1], vocab_size=reader.vocab_size, heldout_rows=1)
    assert not model.training


@pytest.mark.parametrize("n_rows", range(0, 12))
@pytest.mark.parametrize("world", [1, 2, 3, 8])
@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_every_rank_runs_the_forwards_of_the_largest_share(n_rows, world, batch_size):
    """Under FSDP a forward is a collective: every rank runs as many as rank 0's strided share needs."""
    from stage2_student.evaluate import lockstep_batches

    shares = [len(range(r, n_rows, world)) for r in range(world)]
    assert lockstep_batches(n_rows, world, batch_size) == max(math.ceil(s / batch_size) for s in shares)


def test_strided_shares_add_up_to_one_process_with_the_same_forward_count(student_dir, store_url):
    """Three ranks' strided shares of 4 held-out rows, batch 1: rank 0 has two rows, ranks 1 and 2 one each and a
    filler forward that counts nothing. Each rank's sums (as all-reduce would add them) make one process's figures,
    and every rank runs the same number of forwards."""
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    reader = open_store(store_url)
    domains = reader.domains
    assert all(reader.num_rows(d, spec.SPLIT_HELDOUT) == 4 for d in domains)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    whole = evaluate(model, reader, domains, vocab_size=reader.vocab_size, batch_size=1)
    forwards, parts = [], []
    for rank in range(3):
        calls.clear()
        parts.append(evaluate(model, reader, domains, vocab_size=reader.vocab_size, batch_size=1, rank=rank,
                              world_size=3))  # no process group: each rank's own sums, as all-reduce receives them
        forwards.append(len(calls))
    assert forwards == [2 * len(domains)] * 3
    for i in range(len(domains)):
        assert [p["tokens"][i] for p in parts] == [2 * (reader.meta.seq_len - 1), reader.meta.seq_len - 1,
                                                   reader.meta.seq_len - 1]
        total = sum(p["nll"][i] * p["tokens"][i] for p in parts)
        assert sum(p["tokens"][i] for p in parts) == whole["tokens"][i]
        assert total / whole["tokens"][i] == pytest.approx(whole["nll"][i], rel=1e-6)
