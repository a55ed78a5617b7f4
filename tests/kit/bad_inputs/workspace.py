"""The tiny real assets every bad-input case shares (built once), and the dump and train flags that fit them."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

#: Flags of every dump (after --teacher/--corpora/--store): tiny rows, few held-out rows, the hf backend on CPU.
DUMP_FLAGS = ["--seq-len", "16", "--top-k", "4", "--heldout-seqs", "2", "--backend", "hf", "--device", "cpu",
              "--batch-tokens", "64", "--unit-rows", "8", "--no-progress"]
#: Flags of every train (after --store/--student/--out): a few steps on CPU.
TRAIN_FLAGS = ["--steps", "4", "--interval", "2", "--batch-size", "2", "--eval-batch-size", "2", "--device", "cpu"]


@dataclass(frozen=True)
class Workspace:
    """Tiny real assets shared (read-only) by every case; built once in ``root``."""

    root: Path
    tokenizer: Path  #: tiny BPE tokenizer (the store's)
    teacher: Path  #: tiny Llama + tokenizer whose weight file is garbage: a case that loads weights fails otherwise
    student: Path  #: tiny Llama student sharing the store's tokenizer
    student_other_tok: Path  #: the same student with another tokenizer
    not_causal: Path  #: a ViT config plus the store's tokenizer: no causal-LM class exists for it
    corpora: Path  #: a valid two-domain CORPORA.yaml
    store: Path  #: complete store whose tokenizer is the student's
    store_writing: Path  #: status 'writing', no unit written
    store_v2: Path  #: format_version "2.0"
    store_unknown_encoding: Path  #: encoding "topk-zip-q3"
    store_plain_zarr: Path  #: a zarr group without the ddk attribute
    store_bad_json: Path  #: root zarr.json is not JSON
    not_a_store: Path  #: a directory of unrelated files
    a_file: Path  #: a regular file

    @classmethod
    def build(cls, root: Path) -> Workspace:
        import zarr
        from transformers import ViTConfig

        from ddk_store import spec, tokenizer_fingerprint
        from ddk_store.schema import node_doc_key
        from ddk_store.testing import tiny_meta
        from ddk_store.writer import StoreWriter

        from ..models import build_tiny_student, build_tiny_tokenizer
        from ..stores import SEQ_LEN, TOP_K, make_store

        root.mkdir(parents=True, exist_ok=True)
        tok = build_tiny_tokenizer(root / "tokenizer")
        teacher = build_tiny_student(root / "teacher", root / "tokenizer")
        (teacher / "model.safetensors").write_bytes(b"these are not weights")
        student = build_tiny_student(root / "student", root / "tokenizer")
        other = root / "student_other_tok"
        shutil.copytree(student, other)
        build_tiny_tokenizer(other, vocab_size=300)
        not_causal = root / "not_causal"
        not_causal.mkdir()
        ViTConfig().to_json_file(not_causal / "config.json")
        tok.save_pretrained(not_causal)

        corpus = root / "corpus"
        corpus.mkdir()
        (corpus / "prose.txt").write_text("".join(f"the quick brown fox {i} jumps over the lazy dog\n"
                                                  for i in range(120)), encoding="utf-8")
        (corpus / "notes.jsonl").write_text("".join(json.dumps({"text": f"note {i}: buy milk and eggs"}) + "\n"
                                                    for i in range(120)), encoding="utf-8")
        corpora = corpus / "corpora.yaml"
        corpora.write_text("domains:\n  prose: {paths: [prose.txt], format: lines}\n"
                           "  notes: {paths: [notes.jsonl], format: jsonl, text_field: text}\n", encoding="utf-8")

        make_store(root / "store", tok, train_rows=8, heldout_rows=2)
        writing = root / "store_writing"
        meta = tiny_meta(fingerprint=tokenizer_fingerprint(tok), vocab_size=len(tok), seq_len=SEQ_LEN, top_k=TOP_K)
        StoreWriter.open_or_create(str(writing), meta, {d: {"train": 8, "heldout": 2} for d in meta.domain_names})
        for name, key, value in (("store_v2", "format_version", "2.0"),
                                 ("store_unknown_encoding", "encoding", "topk-zip-q3")):
            shutil.copytree(root / "store", root / name)
            grp = zarr.open_group(str(root / name), mode="r+")
            grp.attrs[spec.ROOT_ATTR] = {**grp.attrs[spec.ROOT_ATTR], key: value}
        zarr.open_group(str(root / "store_plain_zarr"), mode="w").attrs["owner"] = "someone else"
        shutil.copytree(root / "store", root / "store_bad_json")
        (root / "store_bad_json" / node_doc_key()).write_text("{this is not json")
        (root / "not_a_store").mkdir()
        (root / "not_a_store" / "notes.txt").write_text("keep me")
        (root / "a_file.txt").write_text("just a file")
        return cls(root=root, tokenizer=root / "tokenizer", teacher=teacher, student=student,
                   student_other_tok=other, not_causal=not_causal, corpora=corpora, store=root / "store",
                   store_writing=writing, store_v2=root / "store_v2",
                   store_unknown_encoding=root / "store_unknown_encoding", store_plain_zarr=root / "store_plain_zarr",
                   store_bad_json=root / "store_bad_json", not_a_store=root / "not_a_store",
                   a_file=root / "a_file.txt")

