"""The pack phase: every domain of --corpora read, tokenized and packed into the store's packed rows
(ddk_store.packed), streaming and resumable; what `ddk-teacher pack` runs and what `ddk-teacher dump` runs first.

A domain goes through the states 'training' (held-out rows written, training rows being written; the cursor says
where) and 'packed' (done; its provenance and counts recorded). The pack document names the settings that decide the
rows (its identity); a run with other settings is refused, naming the flag, unless --overwrite.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ddk_store import DomainInfo, SourceInfo, tokenizer_fingerprint
from ddk_store.codec import id_dtype
from ddk_store.errors import ConfigError, StoreFormatError, describe
from ddk_store.location import check_pack_location, delete_whole_store
from ddk_store.packed import HELDOUT_DOCS, PACKED, TRAINING, PackedRows, pack_chunk_rows

from .config import CORES, Stage1Config
from .corpus import DomainSource, load_corpora
from .filehash import cached_file_sha256s
from .pack_stream import Cursor, EncodingCache, Selection, pack_training, select_heldout
from .domain_size import (DomainTooSmall, check_split_size, heldout_leftover_note, many_files_note,
                          too_small_together)
from .plan import identity_problem, pack_identity, refusal, settings_of, source_uri
from .tokenize import DocTokenizer, bos_to_add, tokenization_hash

#: Seconds between two looks at the pack document by a shard waiting for shard 0 to pack.
POLL_S = 2.0
#: A training chunk's cursor is saved only once this many seconds passed since the pack document was last written,
#: and SAVE_COST_FACTOR times as long as that write took: the document lists every source file of every domain, so
#: with 100,000 files it is about 20 MB, and rewriting it after each 256k-token chunk would write far more than the
#: rows. A kill loses at most that much packing; the rerun writes the same chunks again.
SAVE_EVERY_S, SAVE_COST_FACTOR = 2.0, 20



@dataclass(frozen=True)
class PackedStore:
    """The packed rows of a store, every domain done: what the score phase reads."""

    url: str
    seq_len: int
    dtype: np.dtype
    domains: Mapping[str, Mapping[str, Any]]  # name -> its 'packed' state (with its chunk_rows)
    packed_now: tuple[str, ...] = ()  # the domains this run packed (or finished packing); the rest were packed

    def rows(self) -> dict[str, dict[str, int]]:
        return {d: {"train": st["train_rows"], "heldout": st["heldout_rows"]} for d, st in self.domains.items()}

    def info(self, name: str) -> DomainInfo:
        st = self.domains[name]
        return DomainInfo(name=name, sources=tuple(SourceInfo(**s) for s in st["sources"]),
                          n_documents=st["n_documents"], n_tokens=st["n_tokens"], n_skipped=st["n_skipped"])


def read_pack(url: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The pack document of the store at ``url`` (None: nothing packed, or no store)."""
    return PackedRows(url, storage_options=storage_options).read_state()


def _packed_names(state: Mapping[str, Any] | None) -> set[str]:
    return {d for d, st in ((state or {}).get("domains") or {}).items() if (st or {}).get("state") == PACKED}


def packed_domains(cfg: Stage1Config) -> set[str]:
    """The domains --store holds packed already, whose sources are not read again (none when its packed rows are
    unreadable: the pack phase says why)."""
    try:
        return _packed_names(read_pack(cfg.store, cfg.storage_options_dict))
    except StoreFormatError:
        return set()


def fully_packed(state: Mapping[str, Any] | None, names: list[str]) -> bool:
    return set(names) <= _packed_names(state)


def pack_corpora(url: str, corpora: list[DomainSource], coder: DocTokenizer, *, identity: Mapping[str, Any],
                 heldout_seqs: int, max_rows_per_domain: int, on_bad_utf8: str, eos_id: int, bos_id: int | None,
                 vocab_size: int, overwrite: bool = False, storage_options: Mapping[str, Any] | None = None,
                 echo: Callable[[str], None] = print, packer: bool = True, files_complete: bool = True,
                 chunk_rows: int = 0) -> PackedStore:
    """Pack every domain not packed yet (resuming a domain from its cursor); return the packed rows.

    Args:
        packer: False for a shard other than 0: wait until another process has packed everything, pack nothing.
        files_complete: False when some corpus file named by --corpora is gone (allowed once its domain is packed).
        chunk_rows: rows per packed chunk of a domain packed from scratch (0: ddk_store.packed's default); a domain
            being resumed keeps its own.

    Raises:
        StoreExistsError: the store was packed with other settings or other corpus files (and not ``overwrite``),
            or its location holds something that is not a ddk store.
        ConfigError: a domain is empty or too small (every domain's problem in one error).
    """
    seq_len = int(identity["seq_len"])
    pack = PackedRows(url, storage_options=storage_options)
    check_pack_location(pack.store, pack.url)
    try:
        state, unreadable = pack.read_state(), ""
    except StoreFormatError as e:  # another version's or a damaged pack document: only --overwrite replaces it
        if not overwrite:
            raise
        state, unreadable = None, describe(e, 160)
    diff = identity_problem(state["identity"], identity) if state is not None else ""
    if unreadable or (state is not None and (diff or (overwrite and _files_changed(state, corpora, files_complete)))):
        if not overwrite:
            raise refusal(pack.url, diff)
        echo(f"{pack.url}: --overwrite replaces the store there ({unreadable or diff or 'its corpus files changed'}), "
             "packed rows included")
        delete_whole_store(pack.writable(), pack.url)
        pack = PackedRows(url, storage_options=storage_options)
        state = None
    names = [s.name for s in corpora]
    if not packer and not fully_packed(state, names):
        state = _wait_for_packer(pack, identity, names, echo)
    domains: dict[str, Any] = dict((state or {}).get("domains") or {})
    chunk_rows = chunk_rows or pack_chunk_rows(seq_len)
    dtype = id_dtype(vocab_size)

    def save_as(name: str) -> Callable[[dict[str, Any]], None]:
        def save(st: dict[str, Any]) -> None:
            domains[name] = st
            pack.write_state(identity, domains)

        return save

    # Every domain's select pass first: a domain too small is refused before anything is written.
    todo: list[tuple[DomainSource, Mapping[str, Any] | Selection]] = []
    problems: list[str] = []
    small: list[DomainTooSmall] = []  # said in one line when there are several
    cache = EncodingCache()  # ids the select passes tokenized, for the train passes
    for src in corpora:
        st = domains.get(src.name)
        if st is not None and st.get("state") in (PACKED, TRAINING):
            _check_files(pack.url, src, st, files_complete or st["state"] == TRAINING)
            if st["state"] == TRAINING:
                todo.append((src, st))
            continue
        echo(f"packing domain {src.name}: selecting the held-out documents")
        if note := many_files_note(src.name, src.files):
            echo(note)
        try:
            sel = select_heldout(src, coder, seq_len=seq_len, heldout_seqs=heldout_seqs,
                                 max_train_rows=src.row_cap(max_rows_per_domain), on_bad_utf8=on_bad_utf8,
                                 eos_id=eos_id, bos_id=bos_id, cache=cache)
        except DomainTooSmall as e:
            small.append(e)
            continue
        except ConfigError as e:
            problems.append(str(e))
            continue
        todo.append((src, sel))
        if note := heldout_leftover_note(src.name, src.format, docs=sel.heldout_docs.size, held_tokens=sel.held_tokens,
                                         rows=sel.heldout_rows.shape[0], seq_len=seq_len):
            echo(note)
    if small:
        problems.insert(0, too_small_together(small))
    if problems:
        raise ConfigError("; ".join(problems))
    for src, st in todo:
        if isinstance(st, Selection):
            st = _write_selection(pack, src.name, st, save=save_as(src.name), chunk_rows=chunk_rows, dtype=dtype)
        echo(f"packing domain {src.name}: training rows" + (" (resuming)" if st["cursor"]["rows"] else ""))
        _pack_domain(pack, src, coder, st, save=save_as(src.name), seq_len=seq_len, heldout_seqs=heldout_seqs,
                     max_train_rows=src.row_cap(max_rows_per_domain), on_bad_utf8=on_bad_utf8, eos_id=eos_id,
                     bos_id=bos_id, dtype=dtype, cached=cache.take(src.name))
    return PackedStore(url=pack.url, seq_len=seq_len, dtype=dtype, domains={n: domains[n] for n in names},
                       packed_now=tuple(src.name for src, _ in todo))


def _wait_for_packer(pack: PackedRows, identity: Mapping[str, Any], names: list[str],
                     echo: Callable[[str], None]) -> Mapping[str, Any]:
    echo(f"waiting for shard 0 (or `ddk-teacher pack`) to pack the corpora into {pack.url}; start it if it is not "
         "running")
    while True:
        time.sleep(POLL_S)
        state = pack.read_state()
        if state is not None and (diff := identity_problem(state["identity"], identity)):
            raise refusal(pack.url, diff)
        if fully_packed(state, names):
            return state


def _files_changed(state: Mapping[str, Any], corpora: list[DomainSource], files_complete: bool) -> bool:
    """Whether a packed domain's corpus files changed since (what :func:`_check_files` refuses): with --overwrite the
    packed rows are then packed again, not kept."""
    domains = state.get("domains") or {}
    return any(st.get("state") in (PACKED, TRAINING)
               and files_problem(src, st["sources"], files_complete or st["state"] == TRAINING)
               for src in corpora if (st := domains.get(src.name)) is not None)


def _check_files(url: str, src: DomainSource, st: Mapping[str, Any], files_complete: bool) -> None:
    """A packed domain's corpus files must still be the ones packed (same path, size and contents) where they still
    exist; a file gone since is harmless: the rows are in the store."""
    if changed := files_problem(src, st["sources"], files_complete):
        raise refusal(url, f"--corpora (source files or their contents): domain {src.name!r} was packed from other "
                           f"files than {changed}")


def _write_selection(pack: PackedRows, name: str, sel: Selection, *, save: Callable[[dict[str, Any]], None],
                     chunk_rows: int, dtype: np.dtype) -> dict[str, Any]:
    """Write a domain's held-out rows and documents, then its 'training' state (cursor at the start)."""
    for i in range(0, sel.heldout_rows.shape[0], chunk_rows):
        pack.write_chunk(name, "heldout", i // chunk_rows, sel.heldout_rows[i : i + chunk_rows],
                         chunk_rows=chunk_rows, dtype=dtype)
    pack.write_ints(name, HELDOUT_DOCS, sel.heldout_docs)
    st = {"state": TRAINING, "chunk_rows": chunk_rows, "heldout_rows": int(sel.heldout_rows.shape[0]),
          HELDOUT_DOCS: int(sel.heldout_docs.size), "held_tokens": sel.held_tokens, "n_read": sel.n_read,
          "n_tokens": sel.n_tokens, "n_skipped": sel.n_skipped,
          "skipped_where": list(sel.skipped_where), "sources": [s.to_dict() for s in sel.sources],
          "cursor": Cursor().to_dict()}
    save(st)
    return st


def _pack_domain(pack: PackedRows, src: DomainSource, coder: DocTokenizer, st: Mapping[str, Any], *,
                 save: Callable[[dict[str, Any]], None], seq_len: int, heldout_seqs: int, max_train_rows: int,
                 on_bad_utf8: str, eos_id: int, bos_id: int | None, dtype: np.dtype,
                 cached: dict[int, np.ndarray] | None = None) -> None:
    """The train pass of a domain in state 'training', from its cursor (``cached``: ids its select pass tokenized in
    this run); then its 'packed' state."""
    name, chunk_rows = src.name, st["chunk_rows"]
    st = dict(st)

    last = [time.monotonic(), 0.0]  # (when the document was last written, how long that took)

    def saved(c: Cursor) -> None:
        st["cursor"] = c.to_dict()
        if time.monotonic() - last[0] >= max(SAVE_EVERY_S, SAVE_COST_FACTOR * last[1]):
            t0 = time.monotonic()
            save(dict(st))
            last[:] = [time.monotonic(), time.monotonic() - t0]

    held = pack.read_ints(name, HELDOUT_DOCS, st[HELDOUT_DOCS])  # (missing or damaged: StoreCorruptError)
    train_rows, train_tokens = pack_training(
        src, coder, Cursor(**st["cursor"]), heldout_docs=held, n_read=st["n_read"], seq_len=seq_len,
        max_train_rows=max_train_rows, chunk_rows=chunk_rows, on_bad_utf8=on_bad_utf8, eos_id=eos_id, bos_id=bos_id,
        write_chunk=lambda i, rows: pack.write_chunk(name, "train", i, rows, chunk_rows=chunk_rows, dtype=dtype),
        save=saved, cached=cached)
    n_tokens = st["n_tokens"] if st["n_tokens"] is not None else st["held_tokens"] + train_tokens
    check_split_size(name, n_tokens, seq_len, heldout_seqs, st["heldout_rows"], train_rows)  # (select checked it)
    save({"state": PACKED, "chunk_rows": chunk_rows, "train_rows": train_rows, "heldout_rows": st["heldout_rows"],
          "n_documents": st["n_read"], "n_tokens": n_tokens, "n_skipped": st["n_skipped"],
          "skipped_where": st.get("skipped_where", []), "sources": st["sources"]})


def load_corpora_for(cfg: Stage1Config) -> tuple[list[DomainSource], bool]:
    """--corpora parsed, and whether every file it names is there: a file gone since its domain was packed into
    --store is no problem (the score phase reads the store), any other missing file is the usual error."""
    try:
        return load_corpora(cfg.corpora), True
    except ConfigError as e:
        corpora = load_corpora(cfg.corpora, missing_ok=True)  # any other problem is raised here
        state = PackedRows(cfg.store, storage_options=cfg.storage_options_dict, read_only=True).read_state()
        if not fully_packed(state, [s.name for s in corpora]):
            raise e from None
        return corpora, False


def pack_settings(cfg: Stage1Config, corpora: list[DomainSource], tok: Any) -> dict[str, Any]:
    """The settings this run records in the store (plan.settings_of), known without reading the corpora."""
    return settings_of(corpora, heldout_seqs=cfg.heldout_seqs, max_rows_per_domain=cfg.max_rows_per_domain,
                       on_bad_utf8=cfg.on_bad_utf8, trust_remote_code=cfg.trust_remote_code,
                       bos_token_id=bos_to_add(tok))


def files_problem(src: DomainSource, sources: list[Mapping[str, Any]], files_complete: bool) -> str | None:
    """Whether ``src``'s corpus files are still the ``sources`` a domain was packed from (same path, size and
    sha256 where they still exist; with ``files_complete``, the same set of files): the first changed file, or None.

    Sizes are compared first; contents only when every size matches, each file hashed again only when its
    modification time changed since it was last hashed (:func:`.filehash.cached_file_sha256s`).
    """
    if not src.files:
        return None
    packed = {s["uri"]: s for s in sources}
    here = {source_uri(f): f for f in src.files if os.path.exists(f)}
    changed = [u for u, f in here.items() if u not in packed or packed[u]["bytes"] != os.path.getsize(f)]
    if files_complete and set(here) != set(packed):
        changed = changed or sorted(set(here) ^ set(packed))
    if not changed:
        digests = cached_file_sha256s(f for u, f in here.items() if packed[u].get("sha256"))
        changed = [u for u, f in here.items() if f in digests and digests[f] != packed[u]["sha256"]]
    return changed[0] if changed else None


def pack_phase(cfg: Stage1Config, corpora: list[DomainSource], tok: Any, *, vocab_size: int, files_complete: bool,
               echo: Callable[[str], None], packer: bool | None = None) -> tuple[PackedStore, dict[str, Any]]:
    """Pack --corpora into --store as ``cfg`` says; returns the packed rows and the settings recorded in the store.

    ``packer`` (default: this is shard 0): pack what is missing; else wait until another process has packed it.
    """
    bos_id = bos_to_add(tok)
    settings = pack_settings(cfg, corpora, tok)
    with DocTokenizer(tok, workers=cfg.workers or CORES) as coder:
        identity = pack_identity(seq_len=cfg.seq_len, fingerprint=tokenizer_fingerprint(tok),
                                 eos_token_id=tok.eos_token_id, settings=settings,
                                 tokenization=tokenization_hash(coder))
        packed = pack_corpora(cfg.store, corpora, coder, identity=identity, heldout_seqs=cfg.heldout_seqs,
                              max_rows_per_domain=cfg.max_rows_per_domain, on_bad_utf8=cfg.on_bad_utf8,
                              eos_id=tok.eos_token_id, bos_id=bos_id, vocab_size=vocab_size,
                              overwrite=cfg.overwrite, storage_options=cfg.storage_options_dict, echo=echo,
                              packer=cfg.shard_index == 0 if packer is None else packer,
                              files_complete=files_complete)
    for name, st in packed.domains.items():
        if st["n_skipped"]:
            where = st.get("skipped_where") or []  # (packs from before it was kept have none)
            echo(f"domain {name}: skipped {st['n_skipped']} document(s) with invalid UTF-8"
                 + (f" (first: {', '.join(where)})" if where else ""))
    return packed, settings


def run_pack(cfg: Stage1Config, *, echo: Callable[[str], None]) -> PackedStore:
    """`ddk-teacher pack`: the pack phase alone (the teacher's tokenizer and config, never its weights)."""
    from .corpus import check_dataset_source
    from .teacher import load_tokenizer, resolve_teacher, token_id_bound, tokenizer_fit_problem

    t0 = time.perf_counter()
    corpora, files_complete = load_corpora_for(cfg)
    # No weights: their identity is the score phase's business (and a hub teacher's are not even downloaded).
    teacher = resolve_teacher(cfg.teacher, revision=cfg.teacher_revision, trust_remote_code=cfg.trust_remote_code,
                              weights=False)
    tok = load_tokenizer(teacher, trust_remote_code=cfg.trust_remote_code)
    if problem := tokenizer_fit_problem(teacher, token_id_bound(tok)):  # (as dump refuses it: rows with ids it cannot score)
        raise ConfigError(problem)
    packed_before = packed_domains(cfg)  # (as for a dump: a packed domain's dataset needs neither hub nor directory)
    for src in corpora:
        if src.format == "dataset" and src.name not in packed_before and (note := check_dataset_source(src)):
            echo(note)
    packed, _ = pack_phase(cfg, corpora, tok, vocab_size=teacher.vocab_size, files_complete=files_complete,
                           echo=echo, packer=True)
    rows = sum(r["train"] + r["heldout"] for r in packed.rows().values())
    seconds = time.perf_counter() - t0
    what = (f"packed {len(packed.packed_now)} domain(s) in {seconds:.1f} s" if packed.packed_now else
            "already packed with these settings: nothing to do")
    echo(f"{packed.url}: {what}; {len(packed.domains)} domain(s), {rows:,} rows of {cfg.seq_len} tokens "
         f"({rows * cfg.seq_len:,} tokens); `ddk-teacher dump` with the same settings scores them")
    return packed
