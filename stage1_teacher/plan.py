"""Domain planning and the run's store identity: corpora -> packed train/held-out rows with provenance, the
settings a resumed run must share with the store, and the flags that name them."""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddk_store import DomainInfo, SourceInfo
from ddk_store.difference import first_difference, value_at
from ddk_store.errors import ConfigError, StoreExistsError

from .corpus import DomainSource, ReadStats, read_sourced_documents
from .dataset_source import dataset_ref
from .filehash import file_sha256
from .packing import HELDOUT_SCHEME, PACKING_SCHEME, doc_key, pack_domain
from .text_decode import starts_with_bom
from .tokenize import DocTokenizer

#: Bumped when stage 1 changes what it writes for the same inputs, so old stores are not resumed by new code.
#: 2: document-level held-out split, BOS where the teacher adds one (PACKING_SCHEME/HELDOUT_SCHEME v2).
STAGE1_SCHEME = 2

#: Store identity path -> the flag a user changes, in the order a user thinks of them: a changed flag is named
#: before the values it changes (a new --heldout-seqs also changes every domain's document counts).
RESUME_FLAGS = {
    "settings.stage1_scheme": "the stage-1 scheme (the store was packed by another ddk version: dump into a new "
                              "--store, or pass --overwrite)",
    "seq_len": "--seq-len",
    "top_k": "--top-k",
    "encoding": "--encoding",
    "sampling.samples": "--samples",
    "sampling.seed": "--sampling-seed",
    "settings.heldout_seqs": "--heldout-seqs",
    "settings.max_rows_per_domain": "--max-rows-per-domain",
    "settings.on_bad_utf8": "--on-bad-utf8",
    "settings.utf8_bom": "the byte-order mark that starts a corpus file (this ddk drops it, the store's version "
                         "kept it: dump into a new --store, or pass --overwrite)",
    "settings.corpora": "--corpora (domain definitions)",
    "domains.*.sources": "--corpora (source files or their contents)",
    "teacher.backend": "--backend",
    "teacher.dtype": "--dtype",
    "teacher.revision": "--teacher (weights)",
    "tokenizer.fingerprint": "--teacher (tokenizer)",
    "tokenizer.eos_token_id": "--teacher (tokenizer: EOS)",
    "tokenizer.tokenization": "--teacher (tokenizer: how it splits text; its normalizer, pre-tokenizer or merges "
                              "changed)",
    "settings.bos_token_id": "--teacher (tokenizer: BOS)",
}


@dataclass
class DomainPlan:
    """A domain's rows, ready to score: train [N_train, T] and heldout [N_heldout, T], plus its provenance.

    ``train_docs``/``heldout_docs``: the 0-based corpus-order ordinals of the documents each split holds (disjoint).
    """

    info: DomainInfo
    train: np.ndarray
    heldout: np.ndarray
    train_docs: np.ndarray
    heldout_docs: np.ndarray


def keyed_texts(src: DomainSource, *, on_bad_utf8: str, stats: ReadStats | None = None,
                hashes: dict[str, tuple[str, int]] | None = None) -> Iterator[tuple[int, str]]:
    """(held-out key, text) of every document of ``src`` in corpus order: :func:`doc_key` of the document's source,
    its ordinal among that source's documents and the domain's ``heldout_seed``."""
    seen: dict[str, int] = {}
    for label, text in read_sourced_documents(src, on_bad_utf8=on_bad_utf8, stats=stats, hashes=hashes):
        index = seen.get(label, 0)
        seen[label] = index + 1
        yield doc_key(src.name, label, index, src.heldout_seed), text


def keyed_documents(src: DomainSource, coder: DocTokenizer, *, on_bad_utf8: str,
                    stats: ReadStats) -> Iterator[tuple[int, np.ndarray]]:
    """(held-out key, token ids) of every document of ``src`` in corpus order."""
    keys: deque[int] = deque()  # keys of the documents read but not yet tokenized (a few batches)

    def texts() -> Iterator[str]:
        for key, text in keyed_texts(src, on_bad_utf8=on_bad_utf8, stats=stats):
            keys.append(key)
            yield text

    for ids in coder.encode(texts()):
        yield keys.popleft(), ids


def plan_domain(src: DomainSource, coder: DocTokenizer, *, seq_len: int, heldout_seqs: int,
                max_rows_per_domain: int, on_bad_utf8: str, eos_id: int, bos_id: int | None) -> DomainPlan:
    """Read, tokenize and pack one domain, its held-out documents apart (pure given the files)."""
    stats = ReadStats()
    split = pack_domain(keyed_documents(src, coder, on_bad_utf8=on_bad_utf8, stats=stats), domain=src.name,
                        seq_len=seq_len, eos_id=eos_id, bos_id=bos_id, heldout_seqs=heldout_seqs,
                        max_train_rows=src.row_cap(max_rows_per_domain))
    info = DomainInfo(name=src.name, sources=provenance(src), n_documents=split.n_documents,
                      n_tokens=split.n_tokens, n_skipped=stats.n_skipped)
    return DomainPlan(info=info, train=split.train, heldout=split.heldout, train_docs=split.train_docs,
                      heldout_docs=split.heldout_docs)


def plan_domains(corpora: list[DomainSource], coder: DocTokenizer, *, seq_len: int, heldout_seqs: int,
                 max_rows_per_domain: int, on_bad_utf8: str, eos_id: int,
                 bos_id: int | None) -> dict[str, DomainPlan]:
    """:func:`plan_domain` for every domain; every domain's problem is collected into one ConfigError."""
    plans: dict[str, DomainPlan] = {}
    problems = []
    for src in corpora:
        try:
            plans[src.name] = plan_domain(src, coder, seq_len=seq_len, heldout_seqs=heldout_seqs,
                                          max_rows_per_domain=max_rows_per_domain, on_bad_utf8=on_bad_utf8,
                                          eos_id=eos_id, bos_id=bos_id)
        except ConfigError as e:
            problems.append(str(e))
    if problems:
        raise ConfigError("; ".join(problems))
    return plans


def provenance(src: DomainSource, known: Mapping[str, tuple[str, int]] | None = None) -> tuple[SourceInfo, ...]:
    """Where a domain's documents come from: each local file with its sha256 and size, or the dataset reference.

    ``known``: (sha256, size) of files already hashed while they were read (corpus.read_sourced_documents); the
    others are read here.
    """
    if src.format == "dataset" and not src.files:
        return (SourceInfo(uri=f"hf://{dataset_ref(src)}", sha256="", bytes=0),)
    known = known or {}
    return tuple(SourceInfo(uri=source_uri(p), sha256=d, bytes=n)
                 for p in src.files for d, n in [known.get(p) or file_sha256(p)])


def source_uri(path: str) -> str:
    """How a local corpus file is named in the store's provenance."""
    return Path(path).resolve().as_uri()


def settings_of(corpora: list[DomainSource], *, heldout_seqs: int, max_rows_per_domain: int, on_bad_utf8: str,
                trust_remote_code: bool, bos_token_id: int | None) -> dict:
    """The settings a resumed run must share with the store (the rest of its identity is in StoreMeta)."""
    spec = {s.name: s.spec_dict() for s in corpora}
    # Present only where a file starts with a byte-order mark, which the reader drops (versions before 2026-12-04
    # kept it): a store they packed from files without one holds the same rows, and still resumes.
    bom = {"utf8_bom": "dropped"} if any(starts_with_bom(p) for s in corpora if s.format in ("lines", "files", "jsonl")
                                         for p in s.files) else {}
    return {
        "stage1_scheme": STAGE1_SCHEME,
        "corpora": spec,
        "corpora_sha256": hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest(),
        "heldout_seqs": heldout_seqs,
        "max_rows_per_domain": max_rows_per_domain,
        "on_bad_utf8": on_bad_utf8,
        **bom,
        "packing": PACKING_SCHEME,
        "heldout_selection": HELDOUT_SCHEME,
        "bos_token_id": bos_token_id,
        "temperature": 1.0,
        "trust_remote_code": trust_remote_code,
    }


# ----------------------------------------------------------------------------------- the packed rows' identity
def pack_identity(*, seq_len: int, fingerprint: str, eos_token_id: int, settings: Mapping[str, Any],
                  tokenization: str | None = None) -> dict[str, Any]:
    """The settings that decide the packed rows, laid out as in the store identity (so RESUME_FLAGS name them). The
    fingerprint covers the vocabulary and the set of special tokens, not which of them ends a document, nor how
    text is split into tokens: ``tokenization`` (:func:`.tokenize.tokenization_hash`) covers that."""
    tokenizer = {"fingerprint": fingerprint, "eos_token_id": eos_token_id}
    if tokenization is not None:
        tokenizer["tokenization"] = tokenization
    return {"seq_len": seq_len, "tokenizer": tokenizer, "settings": dict(settings)}


#: Keys of a pack identity's ``tokenizer`` that a pack written by an earlier version lacks: such a pack is compared
#: without them.
_LATER_TOKENIZER_KEYS = ("eos_token_id", "tokenization")


def identity_problem(have: Mapping[str, Any], want: Mapping[str, Any]) -> str | None:
    """The first difference between a pack's identity and this run's, by flag name where there is one. A pack
    written before the identity held the EOS id or the tokenization hash is compared without it."""
    missing = [k for k in _LATER_TOKENIZER_KEYS if k not in (have.get("tokenizer") or {})]
    if missing:
        want = {**want, "tokenizer": {k: v for k, v in (want.get("tokenizer") or {}).items() if k not in missing}}
    for path, name in RESUME_FLAGS.items():
        if "*" not in path and first_difference(value_at(have, path), value_at(want, path)) is not None:
            return f"{name} was {value_at(have, path)!r}, this run has {value_at(want, path)!r}"
    return first_difference({"pack": dict(have)}, {"pack": dict(want)})


def refusal(url: str, diff: str) -> StoreExistsError:
    return StoreExistsError(f"{url} already holds a ddk store made with different settings ({diff}); rerun with the "
                            "store's settings to resume it, choose another --store, or pass --overwrite to replace it")
