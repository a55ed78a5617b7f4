"""run(cfg): validate inputs, plan rows, open the store, score pending units with the teacher, write, finalize."""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ddk_store import (
    DomainInfo,
    SourceInfo,
    StoreMeta,
    StoreWriter,
    TeacherInfo,
    TokenizerInfo,
    tokenizer_fingerprint,
)
from ddk_store.errors import ConfigError, DdkError
from ddk_store.errors import StoreUnreachableError
from ddk_store.retry import is_transient, retry_call

from .backends import BackendOptions, backend_class, resolve_backend
from .config import Stage1Config
from .corpus import DomainSource, ReadStats, check_dataset_source, file_sha256, load_corpora, read_documents
from .packing import HELDOUT_SCHEME, PACKING_SCHEME, pack_rows, split_rows, tokenize_batched

#: Bumped when stage 1 changes what it writes for the same inputs, so old stores are not resumed by new code.
STAGE1_SCHEME = 1


@dataclass
class DomainPlan:
    """A domain's rows, ready to score: train [N_train, T] and heldout [N_heldout, T], plus its provenance."""

    info: DomainInfo
    train: np.ndarray
    heldout: np.ndarray


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
    store_tokens: int = 0
    heldout_ppl: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Teacher:
    """A resolved teacher: local dir, identity and the numbers validated before it is loaded."""

    name: str
    model_dir: str
    revision: str
    vocab_size: int  # V of the teacher's output layer
    max_context: int | None


def resolve_teacher(cfg: Stage1Config) -> Teacher:
    """Find the teacher's files and identity without loading its weights."""
    from transformers import AutoConfig

    path = Path(cfg.teacher).expanduser()
    if path.is_dir():
        model_dir, revision = str(path), weights_hash(path)
    elif path.exists() or cfg.teacher.startswith((".", "/", "~")) or cfg.teacher.count("/") > 1:
        raise ConfigError(f"--teacher {cfg.teacher}: not a model directory (expected a directory with config.json)")
    else:
        model_dir, revision = _hub_snapshot(cfg.teacher, cfg.teacher_revision or None)
    if not (Path(model_dir) / "config.json").is_file():
        raise ConfigError(f"--teacher {cfg.teacher}: {model_dir} has no config.json; give a Hugging Face model "
                          f"directory (save_pretrained output) or hub id")
    try:
        mcfg = AutoConfig.from_pretrained(model_dir, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:  # unknown architecture, remote code refused, bad JSON: one user-facing error
        raise ConfigError(f"--teacher {cfg.teacher}: cannot read its config ({' '.join(str(e).split())[:300]})"
                          + ("; pass --trust-remote-code if you trust its code" if "remote" in str(e) else "")
                          ) from None
    text_cfg = mcfg.get_text_config() if hasattr(mcfg, "get_text_config") else mcfg
    if not isinstance(getattr(text_cfg, "vocab_size", None), int):
        raise ConfigError(f"--teacher {cfg.teacher}: not a causal language model (its {type(mcfg).__name__} has no "
                          "vocab_size); give a decoder LM such as a Llama-style model directory")
    return Teacher(name=cfg.teacher.rstrip("/"), model_dir=model_dir, revision=revision,
                   vocab_size=int(text_cfg.vocab_size),
                   max_context=getattr(text_cfg, "max_position_embeddings", None))


def weights_hash(model_dir: Path) -> str:
    """``sha256:`` over config.json and the weight files: the teacher revision of a local directory."""
    h = hashlib.sha256()
    files = sorted(p for p in model_dir.iterdir()
                   if p.is_file() and (p.suffix in (".safetensors", ".bin", ".pt", ".gguf") or p.name == "config.json"))
    for p in files:
        digest, _ = file_sha256(str(p))
        h.update(f"{p.name}\0{digest}\n".encode())
    return "sha256:" + h.hexdigest()


def _hub_snapshot(repo_id: str, revision: str | None) -> tuple[str, str]:
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id, revision=revision,
                                  allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.py"])
    except Exception as e:
        raise ConfigError(f"--teacher {repo_id}: not a local directory, and the hub snapshot could not be fetched "
                          f"({' '.join(str(e).split())[:200]}); pass a local model directory") from None
    return local, Path(local).name  # snapshot dirs are named by commit hash


def load_tokenizer(cfg: Stage1Config, teacher: Teacher):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(teacher.model_dir, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:
        raise ConfigError(f"--teacher {cfg.teacher}: cannot load its tokenizer ({' '.join(str(e).split())[:300]})"
                          ) from None
    if tok.eos_token_id is None:
        raise ConfigError(f"--teacher {cfg.teacher}: its tokenizer has no EOS token, which separates packed "
                          f"documents; set eos_token in its tokenizer_config.json")
    return tok


def plan_domain(cfg: Stage1Config, src: DomainSource, tok) -> DomainPlan:
    """Read, tokenize and pack one domain, then split off its held-out rows (pure given the files)."""
    stats = ReadStats()
    docs = read_documents(src, on_bad_utf8=cfg.on_bad_utf8, stats=stats)

    def encode(texts: list[str]) -> list[list[int]]:
        return tok(texts, add_special_tokens=False)["input_ids"]

    max_train = src.row_cap(cfg.max_rows_per_domain)
    cap = cfg.heldout_seqs + max_train if max_train else 0
    packed = pack_rows(tokenize_batched(docs, encode), cfg.seq_len, tok.eos_token_id, max_rows=cap)
    train, heldout = split_rows(packed, src.name, cfg.heldout_seqs, max_train, cfg.seq_len)
    if src.format == "dataset":
        sources = (SourceInfo(uri=f"hf://{src.dataset}/{src.dataset_config or ''}/{src.split}", sha256="", bytes=0),)
    else:
        sources = tuple(SourceInfo(uri=Path(p).resolve().as_uri(), sha256=d, bytes=n)
                        for p in src.files for d, n in [file_sha256(p)])
    info = DomainInfo(name=src.name, sources=sources, n_documents=packed.n_documents, n_tokens=packed.n_tokens,
                      n_skipped=stats.n_skipped)
    return DomainPlan(info=info, train=train, heldout=heldout)


def settings_of(cfg: Stage1Config, corpora: list[DomainSource]) -> dict:
    """The settings a resumed run must share with the store (the rest of its identity is in StoreMeta)."""
    spec = {s.name: s.spec_dict() for s in corpora}
    return {
        "stage1_scheme": STAGE1_SCHEME,
        "corpora": spec,
        "corpora_sha256": hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest(),
        "heldout_seqs": cfg.heldout_seqs,
        "max_rows_per_domain": cfg.max_rows_per_domain,
        "on_bad_utf8": cfg.on_bad_utf8,
        "packing": PACKING_SCHEME,
        "heldout_selection": HELDOUT_SCHEME,
        "temperature": 1.0,
        "trust_remote_code": cfg.trust_remote_code,
    }


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

    # 1. Cheap checks: backend choice, corpora file, teacher config and tokenizer (no weights).
    backend_name, why = resolve_backend(cfg.backend)
    echo(why)
    cls = backend_class(backend_name)
    corpora = load_corpora(cfg.corpora)
    teacher = resolve_teacher(cfg)
    tok = load_tokenizer(cfg, teacher)
    problems = []
    if teacher.max_context is not None and cfg.seq_len > cls.max_seq_len(teacher.max_context):
        most = cls.max_seq_len(teacher.max_context)
        problems.append(f"--seq-len {cfg.seq_len} exceeds the teacher's context of {teacher.max_context} tokens "
                        f"(max_position_embeddings in {teacher.model_dir}/config.json)"
                        + (f"; the {backend_name} backend can score rows of at most {most} tokens" if most !=
                           teacher.max_context else "") + f"; use --seq-len <= {most}")
    limit = cls.max_top_k(teacher.vocab_size)
    if cfg.top_k > limit:
        problems.append(f"--top-k {cfg.top_k} exceeds the {backend_name} backend's limit for this teacher "
                        f"(vocabulary of {teacher.vocab_size}); use --top-k <= {limit}")
    if len(tok) > teacher.vocab_size:
        problems.append(f"--teacher {cfg.teacher}: tokenizer has {len(tok)} tokens but the model outputs only "
                        f"{teacher.vocab_size}; tokenizer and model do not match")
    if problems:
        raise ConfigError("; ".join(problems))
    for src in corpora:
        if src.format == "dataset":
            check_dataset_source(src)  # offline hub lookups fail here, in seconds, not after the model loads

    # 2. Plan every domain's rows; collect all domain problems into one error.
    plans: dict[str, DomainPlan] = {}
    problems = []
    for src in corpora:
        try:
            plans[src.name] = plan_domain(cfg, src, tok)
        except ConfigError as e:
            problems.append(str(e))
    if problems:
        raise ConfigError("; ".join(problems))
    for p in plans.values():
        if p.info.n_skipped:
            echo(f"domain {p.info.name}: skipped {p.info.n_skipped} document(s) with invalid UTF-8")

    # 3. Open (create, resume, or find complete) the store: settings mismatches fail here, before the model loads.
    meta = StoreMeta(
        teacher=TeacherInfo(name=teacher.name, revision=teacher.revision, dtype=cfg.dtype, backend=backend_name,
                            engine=cls.engine()),
        tokenizer=TokenizerInfo(name=teacher.name, vocab_size=teacher.vocab_size,
                                fingerprint=tokenizer_fingerprint(tok), eos_token_id=tok.eos_token_id),
        seq_len=cfg.seq_len, top_k=cfg.top_k, domains=tuple(p.info for p in plans.values()),
        settings=settings_of(cfg, corpora),
    )
    rows = {d: {"train": int(p.train.shape[0]), "heldout": int(p.heldout.shape[0])} for d, p in plans.items()}
    check_resume_settings(cfg, meta)
    # Creating or resuming is idempotent, so a transient object-store failure retries the whole step.
    writer = retry_call(lambda: open_writer(cfg, meta, rows), what="opening the store for writing", url=cfg.store)
    summary = DumpSummary(url=cfg.store, backend=backend_name, status="complete",
                          store_tokens=sum(r["train"] + r["heldout"] for r in rows.values()) * cfg.seq_len)
    if writer.complete:
        echo(f"{cfg.store} is already complete with these settings: nothing to do")
        summary.status = "noop"
        _fill_stats(summary, writer.meta, cfg)
        return summary
    shard = (cfg.shard_index, cfg.shard_count)
    pending = writer.pending_units(shard=shard)
    total_units = sum(1 for _ in writer.all_units())
    echo(f"{cfg.store}: {'resuming' if writer.resumed else 'created'}; shard {cfg.shard}: {len(pending)} unit(s) "
         f"to write ({total_units} in the store)")

    # 4. Load the teacher and score; a background thread encodes and writes while the teacher computes.
    if pending:
        owned = backend is None
        if owned:
            backend = cls(BackendOptions(model_dir=teacher.model_dir, top_k=cfg.top_k, seq_len=cfg.seq_len,
                                         dtype=cfg.dtype, device=cfg.device, batch_tokens=cfg.batch_tokens,
                                         tensor_parallel_size=cfg.tensor_parallel_size,
                                         trust_remote_code=cfg.trust_remote_code))
        elif backend.name != backend_name:
            raise ConfigError(f"run(): a {backend.name} backend was passed but the config resolves to {backend_name}")
        try:
            t_score = time.perf_counter()
            summary.tokens_scored, summary.teacher_seconds = score_units(cfg, backend, writer, pending, plans)
            summary.score_seconds = time.perf_counter() - t_score
        finally:
            if owned:
                backend.close()

    # 5. Finalize (single process), or leave that to `ddk-store finalize` once every shard is done.
    if cfg.shard_count == 1:
        meta = writer.finalize()
        _fill_stats(summary, meta, cfg)
    else:
        summary.status = "shard-done"
        left = len(writer.pending_units())
        echo(f"shard {cfg.shard} done; " + (f"{left} unit(s) of other shards still pending" if left else
                                           f"all units written: run `ddk-store finalize {cfg.store}`"))
    summary.seconds = time.perf_counter() - t0
    print_summary(summary, echo)
    return summary


#: (flag, getter) in the order a user thinks of them: a changed flag is named before the values it changes
#: (the store's own check walks fields alphabetically and would name e.g. n_documents for a new --heldout-seqs).
_RESUME_CHECKS = (
    ("--seq-len", lambda m: m.seq_len),
    ("--top-k", lambda m: m.top_k),
    ("--heldout-seqs", lambda m: m.settings.get("heldout_seqs")),
    ("--max-rows-per-domain", lambda m: m.settings.get("max_rows_per_domain")),
    ("--on-bad-utf8", lambda m: m.settings.get("on_bad_utf8")),
    ("--corpora (domain definitions)", lambda m: m.settings.get("corpora")),
    ("--corpora (source files or their contents)", lambda m: [[s.to_dict() for s in d.sources] for d in m.domains]),
    ("--backend", lambda m: m.teacher.backend),
    ("--dtype", lambda m: m.teacher.dtype),
    ("--teacher (weights)", lambda m: m.teacher.revision),
    ("--teacher (tokenizer)", lambda m: m.tokenizer.fingerprint),
)


def check_resume_settings(cfg: Stage1Config, meta: StoreMeta) -> None:
    """Refuse, naming the flag, to resume a store made with other settings (unless --overwrite)."""
    from ddk_store import open_store
    from ddk_store.errors import StoreExistsError, StoreNotFoundError

    if cfg.overwrite:
        return
    try:
        existing = open_store(cfg.store, storage_options=cfg.storage_options_dict, allow_incomplete=True).meta
    except StoreNotFoundError:
        return
    except StoreUnreachableError:
        raise
    except DdkError:
        return  # not a readable store: open_or_create gives the precise refusal
    for flag, get in _RESUME_CHECKS:
        old, new = get(existing), get(meta)
        if old != new:
            show = (lambda v: v if len(repr(v)) < 80 else repr(v)[:77] + "...")
            raise StoreExistsError(
                f"{cfg.store} already holds a ddk store made with different settings: {flag} was {show(old)!r}, "
                f"this run has {show(new)!r}; rerun with the store's settings to resume it, choose another --store, "
                f"or pass --overwrite to replace it")


def open_writer(cfg: Stage1Config, meta: StoreMeta, rows: dict) -> StoreWriter:
    """StoreWriter.open_or_create, tolerant of a sibling shard creating the same store at the same moment."""
    from ddk_store.layout import default_chunk_rows

    chunk_rows = math.gcd(cfg.unit_rows, default_chunk_rows(cfg.seq_len)) if cfg.unit_rows else None
    for attempt in range(5):
        try:
            return StoreWriter.open_or_create(cfg.store, meta, rows, overwrite=cfg.overwrite,
                                              storage_options=cfg.storage_options_dict,
                                              unit_rows=cfg.unit_rows or None, chunk_rows=chunk_rows)
        except DdkError:
            raise
        except Exception:
            # Two shards creating one store race on zarr's "create group/array if absent" (ContainsArrayError and
            # friends). The store's own creation is idempotent, so waiting and retrying resumes what the other made.
            if cfg.shard_count == 1 or attempt == 4:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def score_units(cfg: Stage1Config, backend, writer: StoreWriter, pending, plans) -> tuple[int, float]:
    """Score ``pending`` units in order and hand each to a writer thread; returns (tokens, teacher seconds)."""
    from tqdm import tqdm

    q: queue.Queue = queue.Queue(maxsize=2)  # bounded: at most two scored units wait in memory
    failure: list[BaseException] = []

    def write_loop() -> None:
        # The writer needs ~1% of a core; at the lowest CPU priority it never takes a core from a CPU teacher
        # (Linux sets niceness per thread; elsewhere this is a no-op).
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        while (item := q.get()) is not None:
            if failure:
                continue  # drain so the producer never blocks after a failure
            try:
                unit, tokens, scored = item
                writer.write_unit(unit, tokens, scored.topk_ids, scored.topk_logprobs, scored.target_logprobs)
            except BaseException as e:  # re-raised in the main thread
                failure.append(e)

    thread = threading.Thread(target=write_loop, name="ddk-store-writer", daemon=True)
    thread.start()
    total = sum(u.n_rows for u in pending) * cfg.seq_len
    bar = tqdm(total=total, unit="tok", unit_scale=True, disable=not cfg.progress, dynamic_ncols=True,
               file=sys.stderr, smoothing=0.1)
    done_rows = 0
    teacher_s = 0.0
    try:
        for unit in pending:
            if failure:
                break
            split_rows_ = plans[unit.domain].train if unit.split == "train" else plans[unit.domain].heldout
            tokens = split_rows_[unit.start : unit.stop]  # [n, T]
            t = time.perf_counter()
            scored = backend.score(tokens)
            teacher_s += time.perf_counter() - t
            q.put((unit, tokens, scored))
            done_rows += unit.n_rows
            bar.set_postfix_str(f"{unit.domain}/{unit.split} rows {done_rows}/{total // cfg.seq_len}", refresh=False)
            bar.update(unit.n_rows * cfg.seq_len)
    finally:
        q.put(None)
        thread.join()
        bar.close()
    if failure:
        raise failure[0]
    return done_rows * cfg.seq_len, teacher_s


def _fill_stats(summary: DumpSummary, meta: StoreMeta, cfg: Stage1Config) -> None:
    summary.heldout_ppl = {d.name: d.heldout_ppl for d in meta.domains if d.heldout_ppl is not None}
    try:
        from ddk_store import open_store

        summary.store_bytes = open_store(cfg.store, storage_options=cfg.storage_options_dict).bytes_on_disk()
    except Exception as e:
        # Some object stores cannot size a prefix, and a store that just went away must not fail a finished dump:
        # the summary just omits the size.
        if not isinstance(e, (DdkError, NotImplementedError, OSError)) and not is_transient(e):
            raise
        summary.store_bytes = None


def print_summary(s: DumpSummary, echo: Callable[[str], None]) -> None:
    rate = s.tokens_scored / s.seconds if s.seconds else 0.0
    echo(f"summary: {s.tokens_scored:,} tokens scored by {s.backend} in {s.seconds:.1f} s ({rate:,.0f} tok/s)")
    if s.store_bytes is not None and s.store_tokens:
        echo(f"summary: store {s.store_bytes:,} bytes for {s.store_tokens:,} tokens "
             f"({s.store_bytes / s.store_tokens:.1f} bytes/token)")
    for name, ppl in s.heldout_ppl.items():
        echo(f"summary: teacher held-out perplexity {name}: {ppl:.3f}")
