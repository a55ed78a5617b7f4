"""run(cfg): the conductor of a dump. Validate inputs, pack rows into the store, open it, score pending units, finalize.

Who does what: teacher.py (teacher identity and fit), corpus.py / dataset_source.py (documents), pack.py (the pack
phase: rows into the store's packed rows), plan.py (the store identity), the writer (create, resume or refuse a
store), scoring.py (teacher reading packed rows, and writer thread).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ddk_store import StoreMeta, StoreWriter, TeacherInfo, TokenizerInfo, open_store, spec, tokenizer_fingerprint
from ddk_store.meta import SamplingInfo
from ddk_store import DomainInfo, StoreReader
from ddk_store.difference import identity_difference
from ddk_store.errors import (ConfigError, DdkError, StoreExistsError, StoreFormatError, StoreIncompleteError,
                              StoreNotFoundError)
from ddk_store.layout import default_chunk_rows
from ddk_store.location import delete_all_but_pack
from ddk_store.retry import is_transient, retry_call
from ddk_store.storage import open_zarr_store

from .backends import BackendOptions, backend_class, resolve_backend, resolve_dtype
from .config import Stage1Config
from .corpus import check_dataset_source
from .corpus import DomainSource
from .devices import FINALIZER_ENV
from .pack import files_problem, load_corpora_for, pack_phase, pack_settings, packed_domains
from .plan import RESUME_FLAGS
from .scoring import score_units
from .teacher import fit_problems, load_tokenizer, resolve_teacher, token_id_bound


@dataclass
class DumpSummary:
    """What a run did; printed at the end and returned to callers (tests, the benchmark)."""

    url: str
    backend: str
    status: str  # "complete" | "noop" (already complete) | "shard-done"
    tokens_scored: int = 0
    seconds: float = 0.0
    teacher_seconds: float = 0.0  # time inside backend.score
    score_seconds: float = 0.0  # wall time of the scoring loop, writer drained (the benchmark's "full dump")
    store_bytes: int | None = None
    store_positions: int = 0  # teacher positions stored (seq_len - 1 per row): what bytes/token counts, as `info`
    heldout_ppl: dict[str, float] = field(default_factory=dict)


def run(cfg: Stage1Config, *, echo: Callable[[str], None] | None = None, backend=None) -> DumpSummary:
    """Dump the teacher's top-k over every domain of ``cfg.corpora`` into ``cfg.store``.

    Every check that needs no model runs first (config, corpora, teacher config, tokenizer, packing, store
    settings); only then is the teacher loaded. Units already marked done in the store are skipped, so rerunning
    the same command after a crash resumes it.

    Args:
        cfg: the resolved settings.
        echo: where status lines go (default: stderr).
        backend: an already loaded backend of the resolved kind, reused instead of loading the teacher again
            (tests and the benchmark share one vLLM engine this way); the caller keeps ownership of it.

    Raises:
        DdkError: any user-facing problem (bad config, corpora, store conflicts), with an actionable message.
    """
    echo = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    options = cfg.storage_options_dict

    # 1. Cheap checks: backend choice, corpora file, teacher config and tokenizer (no weights).
    backend_name, why = resolve_backend(cfg.backend, cfg.teacher, revision=cfg.teacher_revision,
                                        trust_remote_code=cfg.trust_remote_code)
    echo(why)
    cls = backend_class(backend_name)
    corpora, files_complete = load_corpora_for(cfg)
    teacher = resolve_teacher(cfg.teacher, revision=cfg.teacher_revision, trust_remote_code=cfg.trust_remote_code)
    tok = load_tokenizer(teacher, trust_remote_code=cfg.trust_remote_code)
    problems = fit_problems(teacher, token_id_bound(tok), cls, seq_len=cfg.seq_len, top_k=cfg.top_k)
    if problems:
        raise ConfigError("; ".join(problems))
    packed = packed_domains(cfg)  # (their datasets are not read again: a packed domain needs neither hub nor dir)
    for src in corpora:
        if src.format == "dataset" and src.name not in packed:
            # offline hub lookups fail here, in seconds, not after the model loads
            if note := check_dataset_source(src):
                echo(note)

    dtype = resolve_dtype(cfg.dtype, cfg.device if backend_name == "hf" else "auto")

    settings = pack_settings(cfg, corpora, tok)

    def meta_of(domains: Iterable[DomainInfo]) -> StoreMeta:
        return StoreMeta(
            teacher=TeacherInfo(name=teacher.name, revision=teacher.revision, dtype=dtype, backend=backend_name,
                                engine=cls.engine()),
            tokenizer=TokenizerInfo(name=teacher.name, vocab_size=teacher.vocab_size,
                                    fingerprint=tokenizer_fingerprint(tok), eos_token_id=tok.eos_token_id),
            seq_len=cfg.seq_len, top_k=cfg.top_k, encoding=cfg.encoding, domains=tuple(domains), settings=settings,
            sampling=SamplingInfo(cfg.samples, cfg.sampling_seed) if cfg.encoding == spec.ENC_SAMPLED else None,
        )

    # 2. A store already complete with these settings: nothing to pack or score (a store of an older format may
    # hold no packed rows at all, and a complete one needs none).
    if (done := complete_store(cfg.store, meta_of, corpora, files_complete, options)) is not None:
        echo(_nothing_to_do(cfg))
        summary = DumpSummary(url=cfg.store, backend=backend_name, status="noop",
                              store_positions=sum(done.num_rows(d, s) for d in done.domains for s in spec.SPLITS)
                              * (cfg.seq_len - 1))
        _fill_stats(summary, done.meta, options)
        return summary

    # 3. Pack every domain's rows into the store (tokenizing in --workers processes), or find them packed there.
    packed, _ = pack_phase(cfg, corpora, tok, vocab_size=teacher.vocab_size, files_complete=files_complete,
                           echo=echo)

    # 4. Open (create, resume, or find complete) the store: settings mismatches fail here, before the model loads.
    meta = meta_of(packed.info(s.name) for s in corpora)
    rows = packed.rows()
    # Creating or resuming is idempotent, so a transient object-store failure retries the whole step.
    writer = retry_call(lambda: open_writer(cfg.store, meta, rows, overwrite=cfg.overwrite, storage_options=options,
                                            unit_rows=cfg.unit_rows, echo=echo),
                        what="opening the store for writing", url=cfg.store)
    summary = DumpSummary(url=cfg.store, backend=backend_name, status="complete",
                          store_positions=sum(r["train"] + r["heldout"] for r in rows.values()) * (cfg.seq_len - 1))
    if writer.complete:
        echo(_nothing_to_do(cfg))
        summary.status = "noop"
        _fill_stats(summary, writer.meta, options)
        return summary
    pending = writer.pending_units(shard=(cfg.shard_index, cfg.shard_count))
    total_units = sum(1 for _ in writer.all_units())
    echo(f"{cfg.store}: {'resuming' if writer.resumed else 'created'}; shard {cfg.shard}: {len(pending)} unit(s) "
         f"to write ({total_units} in the store)")

    # 5. Load the teacher and score; a background thread encodes and writes while the teacher computes.
    if pending:
        owned = backend is None
        if owned:
            echo(f"loading teacher {teacher.name} ({backend_name}, {dtype})"
                 + ("" if cfg.verbose or backend_name != "vllm" else "; --verbose shows the engine's log"))
            backend = cls(BackendOptions(model_dir=teacher.model_dir, top_k=cfg.top_k, seq_len=cfg.seq_len,
                                         dtype=dtype, device=cfg.device, batch_tokens=cfg.batch_tokens,
                                         tensor_parallel_size=cfg.tensor_parallel_size,
                                         trust_remote_code=cfg.trust_remote_code, verbose=cfg.verbose))
        elif backend.name != backend_name:
            raise ConfigError(f"run(): a {backend.name} backend was passed but the config resolves to {backend_name}")
        try:
            t_score = time.perf_counter()
            summary.tokens_scored, summary.teacher_seconds = score_units(
                backend, writer, pending, packed, storage_options=options, progress=cfg.progress)
            summary.score_seconds = time.perf_counter() - t_score
        finally:
            if owned:
                backend.close()

    # 6. Finalize (single process), or leave that to `ddk-store finalize` once every shard is done.
    if cfg.shard_count == 1:
        _fill_stats(summary, writer.finalize(), options)
    else:
        summary.status = "shard-done"
        left = len(writer.pending_units())
        finalizer = os.environ.get(FINALIZER_ENV)
        echo(f"shard {cfg.shard} done; " + (f"{left} unit(s) of other shards still pending" if left else
                                           f"all units written; {finalizer} finalizes the store" if finalizer else
                                           f"all units written: run `ddk-store finalize {cfg.store}`"))
    summary.seconds = time.perf_counter() - t0
    print_summary(summary, echo)
    return summary


def _nothing_to_do(cfg: Stage1Config) -> str:
    return (f"{cfg.store} is already complete with these settings: nothing to do"
            + (" (--overwrite replaces only a store made with other settings; to dump it again, delete it first)"
               if cfg.overwrite else ""))


def complete_store(url: str, meta_of: Callable[[Iterable[DomainInfo]], StoreMeta], corpora: list[DomainSource],
                   files_complete: bool, storage_options: Mapping[str, Any] | None) -> StoreReader | None:
    """The store at ``url`` when it is complete and this run would make the very same store: the same identity
    once its domains' provenance is taken as this run's, and every corpus file still the one it was packed from
    (same path, size and contents, the pack phase's own test). None otherwise (no store, not complete, other
    settings: the usual path then packs, resumes or refuses, naming the flag)."""
    try:
        reader = open_store(url, storage_options=storage_options)
    except (StoreNotFoundError, StoreIncompleteError, StoreFormatError):
        return None
    have = reader.meta
    by_name = {d.name: d for d in have.domains}
    if [d.name for d in have.domains] != [s.name for s in corpora]:
        return None
    if identity_difference(have, meta_of(have.domains)) is not None:
        return None
    for src in corpora:
        if files_problem(src, [s.to_dict() for s in by_name[src.name].sources], files_complete):
            return None
    return reader


def open_writer(url: str, meta: StoreMeta, rows: Mapping[str, Mapping[str, int]], *, overwrite: bool,
                storage_options: Mapping[str, Any] | None, unit_rows: int,
                echo: Callable[[str], None] = lambda m: None) -> StoreWriter:
    """Create, resume or refuse the store at ``url`` (the writer names a changed setting by its flag, and tolerates
    sibling shards creating the same store at the same moment). ``unit_rows`` 0 = the store's default. With
    ``overwrite``, a store of other settings is replaced, its packed rows (this run's, see pack.py) kept."""
    chunk_rows = math.gcd(unit_rows, default_chunk_rows(meta.seq_len)) if unit_rows else None

    def opened() -> StoreWriter:
        return StoreWriter.open_or_create(url, meta, rows, storage_options=storage_options, unit_rows=unit_rows or None,
                                          chunk_rows=chunk_rows, setting_names=RESUME_FLAGS)

    try:
        return opened()
    except StoreExistsError as e:
        if not overwrite:
            raise
        echo(f"{url}: --overwrite replaces the store there ({str(e).partition('(')[2].rpartition(')')[0] or e})")
    # The pack phase has checked that the location holds a ddk store, and written the rows this run scores: replace
    # the store's hierarchy and keep its packed rows.
    store = open_zarr_store(url, read_only=False, storage_options=storage_options)
    delete_all_but_pack(store, url)
    return opened()


def _fill_stats(summary: DumpSummary, meta: StoreMeta, storage_options: Mapping[str, Any] | None) -> None:
    summary.heldout_ppl = {d.name: d.heldout_ppl for d in meta.domains if d.heldout_ppl is not None}
    try:
        summary.store_bytes = open_store(summary.url, storage_options=storage_options).bytes_on_disk()
    except Exception as e:
        # Some object stores cannot size a prefix, and a store that just went away must not fail a finished dump:
        # the summary just omits the size.
        if not isinstance(e, (DdkError, NotImplementedError, OSError)) and not is_transient(e):
            raise
        summary.store_bytes = None


def print_summary(s: DumpSummary, echo: Callable[[str], None]) -> None:
    rate = s.tokens_scored / s.seconds if s.seconds else 0.0
    echo(f"summary: {s.tokens_scored:,} tokens scored by {s.backend} in {s.seconds:.1f} s ({rate:,.0f} tok/s)")
    if s.store_bytes is not None and s.store_positions:
        echo(f"summary: store {s.store_bytes:,} bytes for {s.store_positions:,} teacher positions "
             f"({s.store_bytes / s.store_positions:.1f} bytes/token)")
    for name, ppl in s.heldout_ppl.items():
        echo(f"summary: teacher held-out perplexity {name}: {ppl:.3f}")
