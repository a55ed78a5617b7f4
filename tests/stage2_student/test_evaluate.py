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
