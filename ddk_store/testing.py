"""Test kit shared by every package: tiny stores of valid random teacher data, and store assertions."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import spec
from .meta import DomainInfo, SamplingInfo, SourceInfo, StoreMeta, TeacherInfo, TokenizerInfo
from .reader import StoreReader, open_store
from .schema import DOC_ATTRIBUTES, GroupLayout, chunk_key, chunk_prefix, marker_key, node_doc_key
from .writer import StoreWriter


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def topk_of(logprobs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank-ordered top-k (ids, logprobs) of full log-prob rows (..., V)."""
    ids = np.argsort(-logprobs, axis=-1, kind="stable")[..., :k]
    return ids, np.take_along_axis(logprobs, ids, -1)


def tiny_meta(*, domains: Sequence[str] = ("alpha", "beta", "gamma"), seq_len: int = 16, top_k: int = 4,
              vocab_size: int = 64, fingerprint: str = "sha256:test", encoding: str = spec.DEFAULT_ENCODING,
              settings: Mapping[str, Any] | None = None, format_version: str = "") -> StoreMeta:
    """Metadata of a synthetic store; ``format_version`` "1.0" or "1.1" makes a writer lay it out as that version
    did (one object per chunk, no shards)."""
    return StoreMeta(
        teacher=TeacherInfo(name="random-teacher", revision="sha256:0", dtype="float32", backend="synthetic", engine="numpy"),
        tokenizer=TokenizerInfo(name="tiny", vocab_size=vocab_size, fingerprint=fingerprint, eos_token_id=0),
        seq_len=seq_len,
        top_k=top_k,
        domains=tuple(DomainInfo(name=d, sources=(SourceInfo(uri=f"synthetic://{d}"),), n_documents=1, n_tokens=0)
                      for d in domains),
        encoding=encoding,
        settings=dict(settings or {}),
        sampling=SamplingInfo(spec.DEFAULT_SAMPLES, 0) if encoding == spec.ENC_SAMPLED else None,
        **({"format_version": format_version} if format_version else {}),
    )


#: The most dense logit values synth_rows holds at once (float64: 8 bytes each).
SYNTH_BLOCK_VALUES = 1 << 25


def synth_rows(rng: np.random.Generator, n: int, seq_len: int, top_k: int, vocab_size: int,
               sharpness: float = 1.0) -> dict[str, np.ndarray]:
    """Random rows whose top-k and target log-probs come from real (random) distributions.

    The dense logits are built a block of rows at a time (at most ``SYNTH_BLOCK_VALUES`` values), so a real vocabulary
    at a real sequence length costs a few hundred MB, not [n, T, V] float64 at once."""
    tokens = rng.integers(0, vocab_size, size=(n, seq_len))
    block = max(1, SYNTH_BLOCK_VALUES // max(1, (seq_len - 1) * vocab_size))
    parts = []
    for lo in range(0, max(n, 1), block):  # one (empty) block when n == 0
        toks = tokens[lo:lo + block]
        logits = rng.normal(size=(len(toks), seq_len - 1, vocab_size)) * sharpness
        # Make the realized next token likely, so the teacher "knows" the data (held-out NLL well below log V).
        np.put_along_axis(logits, toks[:, 1:, None], logits.max(axis=-1, keepdims=True) + sharpness, axis=-1)
        lp = log_softmax(logits)
        del logits
        ids, top = topk_of(lp, top_k)
        parts.append((ids, top, np.take_along_axis(lp, toks[:, 1:, None], -1)[..., 0]))
    ids, top, target = (np.concatenate(p) for p in zip(*parts))
    return {"tokens": tokens, "topk_ids": ids, "topk_logprobs": top, "target_logprobs": target}


def make_tiny_store(url: str, *, domains: Sequence[str] = ("alpha", "beta", "gamma"),
                    train_rows: int | Mapping[str, int] = 16, heldout_rows: int | Mapping[str, int] = 4, seq_len: int = 16, top_k: int = 4, vocab_size: int = 64,
                    fingerprint: str = "sha256:test", seed: int = 0, encoding: str = spec.DEFAULT_ENCODING,
                    sharpness: Mapping[str, float] | None = None, unit_rows: int | None = None,
                    finalize: bool = True, teacher_nll: Any = None,
                    overwrite: bool = False, format_version: str = "") -> StoreReader | StoreWriter:
    """Write a complete store of synthetic teacher data and return a reader on it (a writer if not finalized).

    ``sharpness`` (per domain, default 1.0..2.0 spread) controls how peaked the teacher is, hence its held-out NLL.
    ``teacher_nll`` is accepted as an alias of ``sharpness`` for older callers. ``train_rows`` and ``heldout_rows``:
    one count for every domain, or a count per domain.
    """
    sharpness = dict(sharpness or teacher_nll or {})
    meta = tiny_meta(domains=domains, seq_len=seq_len, top_k=top_k, vocab_size=vocab_size, fingerprint=fingerprint,
                     encoding=encoding, format_version=format_version)
    def count(n: int | Mapping[str, int], d: str) -> int:
        return n if isinstance(n, int) else n[d]

    rows = {d: {spec.SPLIT_TRAIN: count(train_rows, d), spec.SPLIT_HELDOUT: count(heldout_rows, d)} for d in domains}
    writer = StoreWriter.open_or_create(url, meta, rows, unit_rows=unit_rows, chunk_rows=1 if unit_rows else None,
                                        overwrite=overwrite)
    rng = np.random.default_rng(seed)
    for i, d in enumerate(domains):
        sharp = sharpness.get(d, 1.0 + i / max(1, len(domains) - 1))
        for split in spec.SPLITS:
            for unit in writer.units(d, split):
                writer.write_unit(unit, **synth_rows(rng, unit.n_rows, seq_len, top_k, vocab_size, sharp))
    if not finalize:
        return writer
    writer.finalize()
    return open_store(url)


class StoreFiles:
    """The files of a local store, found through the schema (schema.py), for tests and benches that watch, inspect or
    damage a store on disk. Reads only a few small documents and directory listings (no zarr), so it is cheap and safe
    while a writer runs. ``node`` arguments name a node: none for the root, (domain, split) for a group,
    (domain, split, array) for an array.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------ documents
    def doc_path(self, *node: str) -> Path:
        return self.root / node_doc_key(*node)

    def read_doc(self, *node: str) -> dict[str, Any]:
        """A node's zarr.json (raises OSError or ValueError when it is missing, half-written or not JSON)."""
        return json.loads(self.doc_path(*node).read_text())

    def edit_doc(self, edit: Callable[[dict[str, Any]], None], *node: str) -> None:
        """Rewrite a node's zarr.json after ``edit`` changed it in place."""
        doc = self.read_doc(*node)
        edit(doc)
        self.doc_path(*node).write_text(json.dumps(doc))

    def edit_root_meta(self, edit: Callable[[dict[str, Any]], None]) -> None:
        """Rewrite the store metadata document (the root's ``ddk`` attribute) after ``edit`` changed it in place."""
        self.edit_doc(lambda doc: edit(doc[DOC_ATTRIBUTES][spec.ROOT_ATTR]))

    def edit_group_layout(self, domain: str, split: str, edit: Callable[[dict[str, Any]], None]) -> None:
        """Rewrite a group's layout document (its ``ddk_group`` attribute) after ``edit`` changed it in place."""
        self.edit_doc(lambda doc: edit(doc[DOC_ATTRIBUTES][spec.GROUP_ATTR]), domain, split)

    def meta(self) -> StoreMeta | None:
        """The store metadata, or None while there is no readable root document yet."""
        try:
            return StoreMeta.from_dict(self.read_doc()[DOC_ATTRIBUTES][spec.ROOT_ATTR])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def status(self) -> str | None:
        meta = self.meta()
        return None if meta is None else meta.status

    def layout(self, domain: str, split: str) -> GroupLayout | None:
        """A group's layout, or None while the group's document does not exist (or is being written)."""
        try:
            return GroupLayout.from_dict(self.read_doc(domain, split)[DOC_ATTRIBUTES][spec.GROUP_ATTR], domain)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # ------------------------------------------------------------ chunks
    def chunk_path(self, domain: str, split: str, name: str, index: int) -> Path:
        """The file of stored object ``index`` (along rows) of an array: a chunk, or a shard (format 1.2)."""
        return self.root / chunk_key(domain, split, name, index)

    def row_chunk_path(self, domain: str, split: str, name: str, row: int) -> Path:
        """The file of the chunk (or shard) holding ``row`` of an array."""
        layout = self.layout(domain, split)
        if layout is None:
            raise FileNotFoundError(f"{self.root}: no layout for {domain}/{split}")
        rows = 1 if name == spec.ARR_UNITS else layout.object_rows  # one marker per chunk of ARR_UNITS
        return self.chunk_path(domain, split, name, row // rows)

    def row_chunk_span(self, domain: str, split: str, name: str, row: int) -> tuple[Path, int, int]:
        """(file, offset, length) of the bytes of the chunk holding ``row``: the whole file of an unsharded array,
        the chunk's entry of the shard index in a sharded one (format 1.2)."""
        path = self.row_chunk_path(domain, split, name, row)
        layout = self.layout(domain, split)
        if not layout.shard_rows or name == spec.ARR_UNITS:
            return path, 0, path.stat().st_size
        per = layout.shard_rows // layout.chunk_rows
        data = path.read_bytes()
        index = np.frombuffer(data[len(data) - 16 * per - 4:-4], dtype="<u8").reshape(per, 2)
        offset, length = index[(row % layout.shard_rows) // layout.chunk_rows]
        return path, int(offset), int(length)

    def marker_path(self, domain: str, split: str, unit: int) -> Path:
        return self.root / marker_key(domain, split, unit)

    def _chunk_indices(self, domain: str, split: str, name: str) -> set[int]:
        """Chunk indices (along rows) whose directory exists: created just before the chunk's file is written."""
        try:
            return {int(c) for c in os.listdir(self.root / chunk_prefix(domain, split, name)) if c.isdigit()}
        except OSError:
            return set()

    def marker_dirs(self, domain: str, split: str) -> set[int]:
        """Units whose marker chunk has a directory: the marker is being written, or is in place."""
        return self._chunk_indices(domain, split, spec.ARR_UNITS)

    def markers_written(self, domain: str, split: str) -> set[int]:
        """Units whose marker file is in place (written; the reader still checks its done flag)."""
        return {u for u in self.marker_dirs(domain, split) if self.marker_path(domain, split, u).exists()}

    def units_with_chunks(self, domain: str, split: str, layout: GroupLayout,
                          names: Sequence[str] = spec.DATA_ARRAYS) -> set[int]:
        """Units with at least one data chunk (or its directory) of ``names`` on disk: written or being written."""
        return {c * layout.object_rows // layout.unit_rows for name in names
                for c in self._chunk_indices(domain, split, name)}
