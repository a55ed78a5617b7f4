"""Per-domain held-out perplexity of a student (and the teacher's, from the store): the inputs of Eq. 1 and Eq. 2.

Perplexity = exp(token-weighted mean next-token NLL over the domain's held-out rows) (docs/reweighting.md): NLL and
token counts are summed over all rows first, then divided, never averaged per batch. Under DDP and FSDP each rank
scores a strided share of the rows and the sums are all-reduced, so every rank gets the same numbers. Every rank runs
the same number of forward passes per domain (under FSDP a forward is a collective): a rank whose share ran out
scores a filler batch and discards it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import numpy as np
import torch

from ddk_store import spec
from ddk_store.heldout import heldout_nll, heldout_ppl

from .data import read_batch
from .losses import token_nll_sum
from .parallel import all_reduce_sum


def heldout_row_count(reader, domain: str, limit: int | None) -> int:
    n = reader.num_rows(domain, spec.SPLIT_HELDOUT)
    return n if limit is None else min(n, limit)


def teacher_heldout_ppl(reader, domains: Sequence[str], limit: int | None) -> list[float]:
    """Teacher perplexity per domain on the same held-out rows the student is scored on.

    The store's recorded ``heldout_nll`` is first checked against its held-out ``target_logprobs`` (a few MB per
    domain), so an edited or damaged store is refused here, before any training, instead of silently skewing every
    student/teacher ratio. With all rows the result is the value stage 1 recorded; with ``limit`` it is recomputed
    from the stored ``target_logprobs`` of the first ``limit`` rows, so student and teacher are always compared on
    identical rows.

    Raises:
        StoreCorruptError: the held-out data is damaged or disagrees with the metadata (names domain and field).
    """
    out = []
    for d in domains:
        reader.heldout_nll(d)  # raises on damaged data or edited statistics
        info = reader.meta.domain(d)
        n_all = reader.num_rows(d, spec.SPLIT_HELDOUT)
        n = heldout_row_count(reader, d, limit)
        if n == n_all and info.heldout_ppl is not None:
            out.append(float(info.heldout_ppl))
            continue
        nll = heldout_nll(reader.read_rows(d, spec.SPLIT_HELDOUT, np.arange(n)).target_logprobs)  # rows (n, P)
        out.append(math.nan if nll is None else heldout_ppl(nll))
    return out


def lockstep_batches(n_rows: int, world_size: int, batch_size: int) -> int:
    """Forward passes every rank runs over a domain of ``n_rows`` held-out rows: those of the largest strided share
    (rank 0's, ceil(n_rows / world_size) rows), so that no rank waits in a collective for a forward that never
    comes."""
    largest_share = -(-n_rows // world_size)  # (ceiling division)
    return -(-largest_share // batch_size)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    reader,
    domains: Sequence[str],
    *,
    vocab_size: int,
    batch_size: int = 8,
    heldout_rows: int | None = None,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, list[float]]:
    """Student held-out NLL and perplexity per domain.

    Returns:
        {"nll": [D floats], "ppl": [D floats], "tokens": [D ints]} in ``domains`` order.
    """
    was_training = model.training
    model.eval()
    device = torch.device(device)
    sums = torch.zeros((len(domains), 2), dtype=torch.float64)  # (D, [nll_sum, tokens])
    for i, d in enumerate(domains):
        n_rows = heldout_row_count(reader, d, heldout_rows)
        rows = np.arange(n_rows)[rank::world_size]  # this rank's share
        for s in range(0, lockstep_batches(n_rows, world_size, batch_size) * batch_size, batch_size):
            share = rows[s : s + batch_size]
            filler = len(share) == 0  # the other ranks still have rows: run the forward on row 0, keep nothing
            picked = share if not filler else np.zeros(1, dtype=np.int64)
            pairs = np.stack([np.full(len(picked), i), picked], axis=1)
            batch = read_batch(reader, domains, pairs, split=spec.SPLIT_HELDOUT).to(device)
            ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
            with ctx:
                logits = model(input_ids=batch.tokens, use_cache=False).logits  # (b, T, Vm)
            if not filler:
                nll, n = token_nll_sum(logits, batch.tokens[:, 1:], vocab_size=vocab_size)
                sums[i, 0] += nll
                sums[i, 1] += n
            del logits
    if world_size > 1:
        sums = all_reduce_sum(sums)
    if was_training:
        model.train()
    nll = [float(s / max(n, 1.0)) for s, n in sums.tolist()]
    for d, (_, n) in zip(domains, sums.tolist()):
        if n == 0:
            raise ValueError(f"domain {d!r} has no held-out rows to evaluate; the store must hold a held-out split")
    return {"nll": nll, "ppl": [heldout_ppl(x) for x in nll], "tokens": [int(n) for _, n in sums.tolist()]}
