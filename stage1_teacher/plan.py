"""Domain planning and the run's store identity: corpora -> packed train/held-out rows with provenance, the
settings a resumed run must share with the store, and the flags that name them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ddk_store import DomainInfo, SourceInfo
from ddk_store.errors import ConfigError

from .corpus import DomainSource, ReadStats, file_sha256, read_documents
from .packing import HELDOUT_SCHEME, PACKING_SCHEME, pack_rows, split_rows, tokenize_batched

#: Bumped when stage 1 changes what it writes for the same inputs, so old stores are not resumed by new code.
STAGE1_SCHEME = 1

#: Store identity path -> the flag a user changes, in the order a user thinks of them: a changed flag is named
#: before the values it changes (a new --heldout-seqs also changes every domain's document counts).
RESUME_FLAGS = {
    "seq_len": "--seq-len",
    "top_k": "--top-k",
    "settings.heldout_seqs": "--heldout-seqs",
    "settings.max_rows_per_domain": "--max-rows-per-domain",
    "settings.on_bad_utf8": "--on-bad-utf8",
    "settings.corpora": "--corpora (domain definitions)",
    "domains.*.sources": "--corpora (source files or their contents)",
    "teacher.backend": "--backend",
    "teacher.dtype": "--dtype",
    "teacher.revision": "--teacher (weights)",
    "tokenizer.fingerprint": "--teacher (tokenizer)",
}


@dataclass
class DomainPlan:
    """A domain's rows, ready to score: train [N_train, T] and heldout [N_heldout, T], plus its provenance."""

    info: DomainInfo
    train: np.ndarray
    heldout: np.ndarray


def plan_domain(src: DomainSource, tok, *, seq_len: int, heldout_seqs: int, max_rows_per_domain: int,
                on_bad_utf8: str) -> DomainPlan:
    """Read, tokenize and pack one domain, then split off its held-out rows (pure given the files)."""
    stats = ReadStats()
    docs = read_documents(src, on_bad_utf8=on_bad_utf8, stats=stats)

    def encode(texts: list[str]) -> list[list[int]]:
        return tok(texts, add_special_tokens=False)["input_ids"]

    max_train = src.row_cap(max_rows_per_domain)
    cap = heldout_seqs + max_train if max_train else 0
    packed = pack_rows(tokenize_batched(docs, encode), seq_len, tok.eos_token_id, max_rows=cap)
    train, heldout = split_rows(packed, src.name, heldout_seqs, max_train, seq_len)
    info = DomainInfo(name=src.name, sources=provenance(src), n_documents=packed.n_documents,
                      n_tokens=packed.n_tokens, n_skipped=stats.n_skipped)
    return DomainPlan(info=info, train=train, heldout=heldout)


def plan_domains(corpora: list[DomainSource], tok, *, seq_len: int, heldout_seqs: int, max_rows_per_domain: int,
                 on_bad_utf8: str) -> dict[str, DomainPlan]:
    """:func:`plan_domain` for every domain; every domain's problem is collected into one ConfigError."""
    plans: dict[str, DomainPlan] = {}
    problems = []
    for src in corpora:
        try:
            plans[src.name] = plan_domain(src, tok, seq_len=seq_len, heldout_seqs=heldout_seqs,
                                          max_rows_per_domain=max_rows_per_domain, on_bad_utf8=on_bad_utf8)
        except ConfigError as e:
            problems.append(str(e))
    if problems:
        raise ConfigError("; ".join(problems))
    return plans


def provenance(src: DomainSource) -> tuple[SourceInfo, ...]:
    """Where a domain's documents come from: each local file with its sha256 and size, or the dataset reference."""
    if src.format == "dataset" and not src.files:
        return (SourceInfo(uri=f"hf://{src.dataset}/{src.dataset_config or ''}/{src.split}", sha256="", bytes=0),)
    return tuple(SourceInfo(uri=Path(p).resolve().as_uri(), sha256=d, bytes=n)
                 for p in src.files for d, n in [file_sha256(p)])


def settings_of(corpora: list[DomainSource], *, heldout_seqs: int, max_rows_per_domain: int, on_bad_utf8: str,
                trust_remote_code: bool) -> dict:
    """The settings a resumed run must share with the store (the rest of its identity is in StoreMeta)."""
    spec = {s.name: s.spec_dict() for s in corpora}
    return {
        "stage1_scheme": STAGE1_SCHEME,
        "corpora": spec,
        "corpora_sha256": hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest(),
        "heldout_seqs": heldout_seqs,
        "max_rows_per_domain": max_rows_per_domain,
        "on_bad_utf8": on_bad_utf8,
        "packing": PACKING_SCHEME,
        "heldout_selection": HELDOUT_SCHEME,
        "temperature": 1.0,
        "trust_remote_code": trust_remote_code,
    }
