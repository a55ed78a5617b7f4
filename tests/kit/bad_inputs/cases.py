"""The cases: for each CLI, the bad inputs a user can give, how to build each one's argv, and what its error
line must say."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ddk_store import spec
from ddk_store.schema import node_doc_key

from ..processes import ERROR_PREFIX, USAGE_PREFIX
from .workspace import DUMP_FLAGS, TRAIN_FLAGS, Workspace

ENTRY_POINTS = ("ddk-teacher", "ddk-student", "ddk-store")


def is_root() -> bool:
    """Root reads files of any mode: permission cases cannot fail for it."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


Build = Callable[[Workspace, Path], list[str]]


@dataclass(frozen=True)
class BadInput:
    """One row of the table: the CLI, the bad input in words, how to build its argv, and what the error must say."""

    id: str
    cli: str  #: one of ENTRY_POINTS
    input: str  #: the bad input, in words (the table's "input" column)
    build: Build  #: (workspace, fresh case dir) -> argv after the program name
    expect: tuple[str, ...] = ()  #: substrings of the error line
    usage: bool = False  #: click's own parameter error ("Error:") rather than a ddk check ("error:")
    in_output: tuple[str, ...] = ()  #: substrings expected elsewhere in the output (e.g. verify's FAIL lines)
    xfail: str | None = None  #: a known defect in a file this work may not edit (reason names file and fix)

    @property
    def prefix(self) -> str:
        return USAGE_PREFIX if self.usage else ERROR_PREFIX


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def dump(ws: Workspace, tmp: Path, *extra: str, teacher: Path | str | None = None, corpora: Path | str | None = None,
         store: Path | str | None = None) -> list[str]:
    return ["dump", "--teacher", str(teacher or ws.teacher), "--corpora", str(corpora or ws.corpora),
            "--store", str(store or tmp / "store"), *DUMP_FLAGS, *extra]


def dump_corpora(body: str, *flags: str, **files: str | bytes) -> Build:
    """A dump (plus ``flags``) whose CORPORA.yaml is ``body``, next to ``files`` (name -> content)."""
    def build(ws: Workspace, tmp: Path) -> list[str]:
        for name, content in files.items():
            write(tmp / name, content)
        return dump(ws, tmp, *flags, corpora=write(tmp / "corpora.yaml", body))
    return build


def _parquet(table_of: Callable[[], object], *, damage_pages: bool = False) -> Build:
    """A parquet domain reading t.parquet, written from ``table_of()``; ``damage_pages``: every byte between the
    magic number and the footer overwritten (the footer intact, so the file opens and fails as a row group is read)."""
    def build(ws: Workspace, tmp: Path) -> list[str]:
        import pyarrow.parquet as pq

        pq.write_table(table_of(), tmp / "t.parquet")
        if damage_pages:
            data = bytearray((tmp / "t.parquet").read_bytes())
            footer = int.from_bytes(data[-8:-4], "little") + 8
            data[4:-footer] = b"\xff" * (len(data) - footer - 4)
            (tmp / "t.parquet").write_bytes(bytes(data))
        return dump_corpora("domains:\n  tab: {paths: [t.parquet], format: parquet, text_field: text}\n")(ws, tmp)
    return build


def _two_text_columns() -> object:
    import pyarrow as pa

    return pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["text", "text"])


def _rows_of_text() -> object:
    import pyarrow as pa

    return pa.table({"text": [f"row {i}" for i in range(100)]})


def _hard_linked_in_two_domains(ws: Workspace, tmp: Path) -> list[str]:
    """a.txt read by one domain and, as b.txt (another name for the same file), by another."""
    os.link(write(tmp / "a.txt", TEXT), tmp / "b.txt")
    return dump_corpora("domains:\n  prose: {paths: [a.txt], format: lines}\n"
                        "  other: {paths: [b.txt], format: lines}\n")(ws, tmp)


def dump_config(body: str) -> Build:
    def build(ws: Workspace, tmp: Path) -> list[str]:
        return dump(ws, tmp, "--config", str(write(tmp / "dump.yaml", body)))
    return build


def dump_teacher(edit: Callable[[Path], None], command: str = "dump") -> Build:
    """A dump (or ``pack``: the same flags but the scoring ones) whose teacher is a copy of the workspace teacher
    changed by ``edit``."""
    def build(ws: Workspace, tmp: Path) -> list[str]:
        teacher = tmp / "teacher"
        shutil.copytree(ws.teacher, teacher)
        edit(teacher)
        argv = dump(ws, tmp, teacher=teacher)
        if command == "pack":
            argv = ["pack", *argv[1:argv.index("--seq-len")], "--seq-len", "16", "--heldout-seqs", "2", "--no-progress"]
        return argv
    return build


def _model_smaller_than_its_tokenizer(teacher: Path) -> None:
    """The config's vocab_size 8 below the tokenizer's size: ids the model cannot score."""
    _edit_json(teacher / "config.json", vocab_size=json.loads((teacher / "config.json").read_text())["vocab_size"] - 8)


def train(ws: Workspace, tmp: Path, *extra: str, store: Path | str | None = None,
          student: Path | str | None = None, out: Path | None = None) -> list[str]:
    return ["train", "--store", str(store or ws.store), "--student", str(student or ws.student),
            "--out", str(out or tmp / "run"), *TRAIN_FLAGS, *extra]


def train_config(body: str | bytes) -> Build:
    def build(ws: Workspace, tmp: Path) -> list[str]:
        return train(ws, tmp, "--config", str(write(tmp / "train.yaml", body)))
    return build


def _no_eos(teacher: Path) -> None:
    cfg = teacher / "tokenizer_config.json"
    doc = json.loads(cfg.read_text())
    doc["eos_token"] = None
    doc["bos_token"] = None
    cfg.write_text(json.dumps(doc))


def _rm_tokenizer(teacher: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (teacher / name).unlink()


def _unreadable(path: Path) -> Path:
    """A file whose read fails: mode 000 for a normal user; for root (who reads any mode) a link to
    /proc/self/mem, which exists, is a regular file, and fails every read at offset 0 with EIO."""
    if is_root():
        path.unlink()
        path.symlink_to("/proc/self/mem")
    else:
        path.chmod(0)
    return path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_json(path: Path, **changes: object) -> Path:
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))
    return path


def _root_is_array(ws: Workspace, tmp: Path) -> Path:
    store = _copy(ws.store, tmp / "store")
    _edit_json(store / node_doc_key(), node_type="array")
    return store


def _group_doc_not_json(ws: Workspace, tmp: Path, *group: str) -> Path:
    """A copy of the store whose zarr.json of ``group`` (a domain, or a domain and split) is not JSON."""
    store = _copy(ws.store, tmp / "store")
    write(store / node_doc_key(*group), b"{not json")
    return store


def _no_training_rows(ws: Workspace, tmp: Path) -> Path:
    """A complete store of the workspace's tokenizer whose every domain has held-out rows and no training rows."""
    from transformers import AutoTokenizer

    from ..stores import make_store

    make_store(tmp / "store", AutoTokenizer.from_pretrained(str(ws.tokenizer)), train_rows=0, heldout_rows=2)
    return tmp / "store"


def _writing_without_group(ws: Workspace, tmp: Path) -> Path:
    """The workspace's 'writing' store without its alpha/heldout group (a dump killed while creating the store)."""
    store = _copy(ws.store_writing, tmp / "store")
    shutil.rmtree(store / "alpha" / spec.SPLIT_HELDOUT)
    return store


def _unknown_codec(ws: Workspace, tmp: Path) -> Path:
    store = _copy(ws.store, tmp / "store")
    meta = store / node_doc_key("alpha", spec.SPLIT_TRAIN, spec.ARR_TOKENS)
    codecs = json.loads(meta.read_text())["codecs"]
    _edit_json(meta, codecs=[codecs[0], {"name": "evil.exec"}])
    return store


def _run_with_metrics(tmp: Path, lines: str) -> Path:
    return write(tmp / "run" / "metrics.jsonl", lines).parent


def _run_with_bad_config(tmp: Path) -> Path:
    run = tmp / "run"
    (run / "checkpoints").mkdir(parents=True)
    write(run / "config.yaml", "store: [unclosed\n")
    return run


def _symlink(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


def _strip_tokenizer(model: Path, dst: Path) -> Path:
    shutil.copytree(model, dst)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (dst / name).unlink()
    return dst


#: File a YAML python tag would create if it were ever executed (safe_load refuses the tag).
MARKER = "pwned"
PYTHON_TAG = "!!python/object/apply:os.system ['touch {marker}']\n"
LINES = "domains:\n  prose: {paths: [a.txt], format: lines}\n"
TEXT = "a line of text long enough to pack\n" * 40

CASES: list[BadInput] = [
    # ------------------------------------------------------------------ ddk-teacher dump: paths
    BadInput("teacher-missing-dir", "ddk-teacher", "--teacher names a directory that does not exist",
             lambda ws, t: dump(ws, t, teacher=t / "no-such-model"), ("--teacher", "no-such-model")),
    BadInput("teacher-dir-without-config", "ddk-teacher", "--teacher directory has no config.json",
             dump_teacher(lambda d: (d / "config.json").unlink()), ("--teacher", "no config.json")),
    BadInput("teacher-is-a-file", "ddk-teacher", "--teacher is a file (config.json), not a directory",
             lambda ws, t: dump(ws, t, teacher=ws.teacher / "config.json"), ("--teacher", "not a model directory")),
    BadInput("teacher-config-not-json", "ddk-teacher", "teacher config.json is not JSON",
             dump_teacher(lambda d: write(d / "config.json", "{oops")), ("--teacher", "cannot read its config")),
    BadInput("teacher-not-causal-lm", "ddk-teacher", "--teacher is a ViT (no causal LM, no vocabulary)",
             lambda ws, t: dump(ws, t, teacher=ws.not_causal), ("--teacher", "not a causal language model")),
    BadInput("teacher-without-tokenizer", "ddk-teacher", "teacher directory has no tokenizer files",
             dump_teacher(_rm_tokenizer), ("--teacher", "tokenizer")),
    BadInput("teacher-tokenizer-corrupt", "ddk-teacher", "teacher tokenizer.json is garbage",
             dump_teacher(lambda d: write(d / "tokenizer.json", "{not a tokenizer")),
             ("--teacher", "cannot load its tokenizer")),
    BadInput("teacher-tokenizer-without-eos", "ddk-teacher", "teacher tokenizer defines no EOS token",
             dump_teacher(_no_eos), ("--teacher", "no EOS token")),
    BadInput("teacher-tokenizer-larger-than-model", "ddk-teacher", "the teacher's tokenizer has ids its output layer "
             "lacks (config vocab_size too small)", dump_teacher(_model_smaller_than_its_tokenizer),
             ("--teacher", "but the model outputs only", "do not match")),
    BadInput("pack-tokenizer-larger-than-model", "ddk-teacher", "pack with a teacher whose tokenizer has ids its output "
             "layer lacks", dump_teacher(_model_smaller_than_its_tokenizer, "pack"),
             ("--teacher", "but the model outputs only", "do not match")),
    BadInput("corpora-missing-file", "ddk-teacher", "--corpora file does not exist",
             lambda ws, t: dump(ws, t, corpora=t / "nope.yaml"), ("--corpora", "nope.yaml", "not found")),
    BadInput("corpora-is-a-directory", "ddk-teacher", "--corpora is a directory",
             lambda ws, t: dump(ws, t, corpora=t), ("--corpora", "is a directory")),
    BadInput("corpora-dangling-symlink", "ddk-teacher", "--corpora is a symlink to nothing",
             lambda ws, t: dump(ws, t, corpora=_symlink(t / "c.yaml", t / "gone.yaml")), ("--corpora", "not found")),
    BadInput("corpora-unreadable", "ddk-teacher", "--corpora file cannot be read (mode 000; EIO as root)",
             lambda ws, t: dump(ws, t, corpora=_unreadable(write(t / "c.yaml", LINES))),
             ("--corpora", "cannot read it")),
    BadInput("store-bad-scheme", "ddk-teacher", "--store ftp://host/store (unsupported scheme)",
             lambda ws, t: dump(ws, t, store="ftp://host/store"), ("ftp://host/store", "unsupported scheme")),
    BadInput("store-options-for-a-local-path", "ddk-teacher",
             "--store bucket/prefix (no s3://) with --storage-option endpoint_url=...",
             lambda ws, t: dump(ws, t, "--storage-option", "endpoint_url=http://127.0.0.1:8333", store="bucket/prefix"),
             ("--store 'bucket/prefix' is not an s3:// location", "apply to s3:// stores only",
              "s3://bucket/prefix")),
    BadInput("store-s3-without-prefix", "ddk-teacher", "--store s3://bucket (no prefix: a bucket root)",
             lambda ws, t: dump(ws, t, store="s3://bucket"), ("s3://bucket", "prefix")),
    BadInput("store-file-url-without-path", "ddk-teacher", "--store file:// (no path: would be the cwd)",
             lambda ws, t: dump(ws, t, store="file://"), ("file://", "absolute path")),
    BadInput("store-file-url-relative", "ddk-teacher", "--store file://store (host part, not a path)",
             lambda ws, t: dump(ws, t, store="file://store"), ("file://store", "absolute path")),
    BadInput("store-scheme-lost-slash", "ddk-teacher", "--store s3:/bucket/store (one '/' lost)",
             lambda ws, t: dump(ws, t, store="s3:/bucket/store"), ("s3:/bucket/store", "missing a '/'")),
    BadInput("store-memory-without-name", "ddk-teacher", "--store memory:// (no name)",
             lambda ws, t: dump(ws, t, store="memory://"), ("memory://", "needs a name")),
    BadInput("store-is-a-file", "ddk-teacher", "--store is an existing regular file",
             lambda ws, t: dump(ws, t, store=write(t / "store.txt", "x")), ("store.txt", "is a file, not a directory")),
    BadInput("store-holds-other-data", "ddk-teacher", "--store directory holds unrelated files",
             lambda ws, t: dump(ws, t, store=_copy(ws.not_a_store, t / "data")), ("holds no ddk store",)),
    BadInput("store-format-2.0", "ddk-teacher", "--store holds a store of format_version 2.0",
             lambda ws, t: dump(ws, t, store=_copy(ws.store_v2, t / "v2")), ("2.0", "not a readable ddk store")),
    BadInput("store-not-ddk-zarr", "ddk-teacher", "--store holds a zarr group that is not a ddk store",
             lambda ws, t: dump(ws, t, store=_copy(ws.store_plain_zarr, t / "z")), ("not a ddk store",)),
    # ------------------------------------------------------------------ ddk-teacher dump: --config
    BadInput("dump-config-missing", "ddk-teacher", "--config file does not exist",
             lambda ws, t: dump(ws, t, "--config", str(t / "none.yaml")), ("--config", "not found")),
    BadInput("dump-config-not-yaml", "ddk-teacher", "--config is not YAML ('seq_len: [16')",
             dump_config("seq_len: [16\n"), ("--config", "not valid YAML")),
    BadInput("dump-config-not-a-mapping", "ddk-teacher", "--config is a YAML list",
             dump_config("- seq_len\n- 16\n"), ("--config", "expected a mapping", "list")),
    BadInput("dump-config-unknown-key", "ddk-teacher", "--config has unknown key 'topk'",
             dump_config("topk: 4\n"), ("unknown key 'topk'",)),
    BadInput("dump-config-wrong-type", "ddk-teacher", "--config has max_rows_per_domain: lots",
             dump_config("max_rows_per_domain: lots\n"), ("max_rows_per_domain", "expected int", "lots")),
    BadInput("dump-config-duplicate-key", "ddk-teacher", "--config sets max_rows_per_domain twice",
             dump_config("max_rows_per_domain: 5\nmax_rows_per_domain: 6\n"),
             ("--config", "duplicate key 'max_rows_per_domain'")),
    BadInput("dump-config-python-tag", "ddk-teacher", "--config holds !!python/object/apply:os.system",
             lambda ws, t: dump(ws, t, "--config", str(write(t / "c.yaml", PYTHON_TAG.format(marker=t / MARKER)))),
             ("--config", "not valid YAML", "python/object/apply")),
    BadInput("dump-config-is-a-directory", "ddk-teacher", "--config is a directory",
             lambda ws, t: dump(ws, t, "--config", str(t)), ("--config", "is a directory"), usage=True),
    # ------------------------------------------------------------------ ddk-teacher dump: CORPORA.yaml
    BadInput("corpora-not-yaml", "ddk-teacher", "CORPORA.yaml is not YAML",
             dump_corpora("domains: {prose: [\n"), ("--corpora", "not valid YAML")),
    BadInput("corpora-not-a-mapping", "ddk-teacher", "CORPORA.yaml is a list",
             dump_corpora("- prose\n- notes\n"), ("--corpora", "top-level key 'domains'")),
    BadInput("corpora-unknown-top-level-key", "ddk-teacher", "CORPORA.yaml has 'domain:' instead of 'domains:'",
             dump_corpora("domain:\n  prose: {paths: [a.txt], format: lines}\n"), ("top-level key 'domains'",)),
    BadInput("corpora-no-domains", "ddk-teacher", "CORPORA.yaml 'domains' is empty",
             dump_corpora("domains: {}\n"), ("'domains' is empty",)),
    BadInput("corpora-unknown-domain-key", "ddk-teacher", "domain uses 'path:' instead of 'paths:'",
             dump_corpora("domains:\n  prose: {path: [a.txt], format: lines}\n", **{"a.txt": TEXT}),
             ("domain 'prose': unknown key 'path' (did you mean 'paths'?)",)),
    BadInput("corpora-domain-not-a-mapping", "ddk-teacher", "domain maps to a string, not a mapping",
             dump_corpora("domains:\n  prose: a.txt\n"), ("domain 'prose'", "expected a mapping")),
    BadInput("corpora-format-missing", "ddk-teacher", "domain without 'format'",
             dump_corpora("domains:\n  prose: {paths: [a.txt]}\n", **{"a.txt": TEXT}),
             ("domain 'prose'", "field 'format' is missing")),
    BadInput("corpora-text-file-in-two-domains", "ddk-teacher", "one text file read as lines by a domain, as files "
             "by another",
             dump_corpora("domains:\n  prose: {paths: [a.txt], format: lines}\n"
                          "  whole: {paths: [a.txt], format: files}\n", **{"a.txt": TEXT}),
             ("is read by domains 'prose' and 'whole'",)),
    BadInput("corpora-records-file-read-whole-by-another-domain", "ddk-teacher", "a JSONL file read by its text "
             "field by one domain, whole (format files) by another",
             dump_corpora("domains:\n  notes: {paths: [n.jsonl], format: jsonl, text_field: text}\n"
                          "  whole: {paths: [n.jsonl], format: files}\n", **{"n.jsonl": '{"text": "x"}\n'}),
             ("n.jsonl is read by domains 'notes' and 'whole'",)),
    BadInput("corpora-domain-under-two-keys", "ddk-teacher", "domain written as 1 and as '1' (two YAML keys, one name)",
             dump_corpora("domains:\n  1: {paths: [a.txt], format: lines}\n  '1': {paths: [b.txt], format: lines}\n",
                          **{"a.txt": TEXT, "b.txt": TEXT + "more\n"}), ("domain '1' is defined twice",)),
    BadInput("corpora-hard-link-in-two-domains", "ddk-teacher", "a text file read by a domain, and through a hard "
             "link by another",
             _hard_linked_in_two_domains,
             ("b.txt is read by domains 'prose' and 'other'",)),
    BadInput("corpora-paths-wrong-type", "ddk-teacher", "domain paths: 5",
             dump_corpora("domains:\n  prose: {paths: 5, format: lines}\n"), ("domain 'prose'", "'paths'")),
    BadInput("corpora-domain-path-traversal", "ddk-teacher", "domain named '../x'",
             dump_corpora("domains:\n  '../x': {paths: [a.txt], format: lines}\n", **{"a.txt": TEXT}),
             ("domain '../x'", "invalid domain name")),
    BadInput("corpora-domain-with-slash", "ddk-teacher", "domain named 'a/b'",
             dump_corpora("domains:\n  a/b: {paths: [a.txt], format: lines}\n", **{"a.txt": TEXT}),
             ("domain 'a/b'", "invalid domain name")),
    BadInput("corpora-domain-absolute-path", "ddk-teacher", "domain named '/etc/x'",
             dump_corpora("domains:\n  /etc/x: {paths: [a.txt], format: lines}\n", **{"a.txt": TEXT}),
             ("domain '/etc/x'", "invalid domain name")),
    BadInput("corpora-domain-empty-name", "ddk-teacher", "domain named ''",
             dump_corpora("domains:\n  '': {paths: [a.txt], format: lines}\n", **{"a.txt": TEXT}),
             ("domain ''", "invalid domain name")),
    BadInput("corpora-domain-unicode-lookalike", "ddk-teacher", "domain named 'ｐｒｏｓｅ' (fullwidth letters)",
             dump_corpora("domains:\n  ｐｒｏｓｅ: {paths: [a.txt], format: lines}\n", **{"a.txt": TEXT}),
             ("invalid domain name",)),
    BadInput("corpora-domain-trailing-newline", "ddk-teacher", "domain named 'prose\\n' (quoted, with a newline)",
             dump_corpora('domains:\n  "prose\\n": {paths: [a.txt], format: lines}\n', **{"a.txt": TEXT}),
             ("invalid domain name",)),
    BadInput("corpora-duplicate-domain", "ddk-teacher", "domain 'prose' defined twice",
             dump_corpora("domains:\n  prose: {paths: [a.txt], format: lines}\n"
                          "  prose: {paths: [b.txt], format: lines}\n", **{"a.txt": TEXT, "b.txt": TEXT}),
             ("--corpora", "duplicate key 'prose'")),
    BadInput("corpora-unknown-format", "ddk-teacher", "domain format: csv",
             dump_corpora("domains:\n  prose: {paths: [a.txt], format: csv}\n", **{"a.txt": TEXT}),
             ("domain 'prose'", "'format'", "'csv'")),
    BadInput("corpora-jsonl-without-text-field", "ddk-teacher", "jsonl domain without text_field",
             dump_corpora("domains:\n  notes: {paths: [n.jsonl], format: jsonl}\n", **{"n.jsonl": '{"text": "x"}\n'}),
             ("domain 'notes'", "text_field")),
    BadInput("corpora-dataset-pandas", "ddk-teacher", "dataset: pandas (its builder reads pickle files)",
             dump_corpora("domains:\n  frames: {dataset: pandas, data_files: 'x.pkl'}\n"),
             ("dataset 'pandas' is not read", "pickle", "dataset: parquet")),
    BadInput("corpora-dataset-not-a-string", "ddk-teacher", "dataset source with dataset: [1, 2]",
             dump_corpora("domains:\n  wiki: {dataset: [1, 2], split: train}\n"), ("domain 'wiki'", "'dataset'")),
    BadInput("corpora-source-missing", "ddk-teacher", "domain path names a missing file",
             dump_corpora(LINES), ("domain 'prose'", "a.txt", "does not exist")),
    BadInput("corpora-python-tag", "ddk-teacher", "CORPORA.yaml holds !!python/object/apply:os.system",
             lambda ws, t: dump(ws, t, corpora=write(t / "c.yaml", PYTHON_TAG.format(marker=t / MARKER))),
             ("--corpora", "python/object/apply")),
    # ------------------------------------------------------------------ ddk-teacher dump: flags
    BadInput("seq-len-zero", "ddk-teacher", "--seq-len 0", lambda ws, t: dump(ws, t, "--seq-len", "0"),
             ("--seq-len must be >= 2",)),
    BadInput("top-k-negative", "ddk-teacher", "--top-k -1", lambda ws, t: dump(ws, t, "--top-k", "-1"),
             ("--top-k must be >= 1",)),
    BadInput("heldout-seqs-zero", "ddk-teacher", "--heldout-seqs 0", lambda ws, t: dump(ws, t, "--heldout-seqs", "0"),
             ("--heldout-seqs must be >= 1",)),
    BadInput("max-rows-negative", "ddk-teacher", "--max-rows-per-domain -5",
             lambda ws, t: dump(ws, t, "--max-rows-per-domain", "-5"), ("--max-rows-per-domain must be >= 0",)),
    BadInput("batch-tokens-below-seq-len", "ddk-teacher", "--batch-tokens 8 with --seq-len 16",
             lambda ws, t: dump(ws, t, "--batch-tokens", "8"), ("--batch-tokens (8) must be >= --seq-len (16)",)),
    BadInput("top-k-above-vocab", "ddk-teacher", "--top-k 100000 (vocabulary has 384 tokens)",
             lambda ws, t: dump(ws, t, "--top-k", "100000"), ("--top-k 100000 exceeds", "use --top-k <=")),
    BadInput("seq-len-above-context", "ddk-teacher", "--seq-len 600 (teacher context 512)",
             lambda ws, t: dump(ws, t, "--seq-len", "600", "--batch-tokens", "600"),
             ("--seq-len 600 exceeds the teacher's context of 512",)),
    BadInput("shard-index-too-large", "ddk-teacher", "--shard 3/2",
             lambda ws, t: dump(ws, t, "--shard", "3/2"), ("--shard must be I/N", "'3/2'")),
    BadInput("shard-not-a-fraction", "ddk-teacher", "--shard x",
             lambda ws, t: dump(ws, t, "--shard", "x"), ("--shard must be I/N", "'x'")),
    BadInput("shard-zero-count", "ddk-teacher", "--shard 0/0",
             lambda ws, t: dump(ws, t, "--shard", "0/0"), ("--shard must be I/N",)),
    BadInput("shard-leading-zero", "ddk-teacher", "--shard 00/3",
             lambda ws, t: dump(ws, t, "--shard", "00/3"), ("--shard must be I/N", "'00/3'")),
    BadInput("overwrite-with-shards", "ddk-teacher", "--overwrite with --shard 0/2",
             lambda ws, t: dump(ws, t, "--overwrite", "--shard", "0/2"), ("--overwrite cannot be combined",)),
    BadInput("storage-option-malformed", "ddk-teacher", "--storage-option endpoint (no '=')",
             lambda ws, t: dump(ws, t, "--storage-option", "endpoint"), ("--storage-option", "KEY=VALUE"), usage=True),
    BadInput("dump-config-storage-options-not-a-mapping", "ddk-teacher", "--config has storage_options: [1, 2]",
             dump_config("storage_options: [1, 2]\n"), ("storage_options", "expected a mapping")),
    BadInput("top-k-not-an-integer", "ddk-teacher", "--top-k abc", lambda ws, t: dump(ws, t, "--top-k", "abc"),
             ("--top-k", "abc"), usage=True),
    BadInput("backend-unknown", "ddk-teacher", "--backend tpu", lambda ws, t: dump(ws, t, "--backend", "tpu"),
             ("--backend", "tpu"), usage=True),
    # ------------------------------------------------------------------ ddk-teacher dump: corpus contents
    BadInput("corpus-empty-domain", "ddk-teacher", "domain whose file holds only blank lines",
             dump_corpora(LINES + "  void: {paths: [b.txt], format: lines}\n", **{"a.txt": TEXT, "b.txt": "\n  \n\n"}),
             ("domain 'void' is empty",)),
    BadInput("corpus-domain-all-non-utf8", "ddk-teacher", "domain whose every line is invalid UTF-8 (skipped)",
             dump_corpora(LINES + "  bin: {paths: [b.txt], format: lines}\n",
                          **{"a.txt": TEXT, "b.txt": b"\xff\xfe one\n\xff two\n"}),
             ("domain 'bin' is empty", "2 document(s) were skipped as invalid UTF-8")),
    BadInput("corpus-too-small-for-heldout", "ddk-teacher", "--heldout-seqs 100000 (more than the domain's rows)",
             lambda ws, t: dump(ws, t, "--heldout-seqs", "100000"), ("too small", "--heldout-seqs 100000")),
    BadInput("corpus-non-utf8-fail", "ddk-teacher", "invalid UTF-8 line with --on-bad-utf8 fail",
             dump_corpora(LINES, "--on-bad-utf8", "fail", **{"a.txt": TEXT.encode() + b"\xff\xfe\n"}),
             ("a.txt:41: not valid UTF-8", "--on-bad-utf8 skip")),
    BadInput("corpus-jsonl-missing-text-field", "ddk-teacher", "jsonl rows lack the text_field",
             dump_corpora("domains:\n  notes: {paths: [n.jsonl], format: jsonl, text_field: body}\n",
                          **{"n.jsonl": '{"text": "x"}\n'}), ("no text field 'body'", "n.jsonl:1")),
    BadInput("corpus-jsonl-not-json", "ddk-teacher", "jsonl line is not JSON",
             dump_corpora("domains:\n  notes: {paths: [n.jsonl], format: jsonl, text_field: text}\n",
                          **{"n.jsonl": '{"text": "x"}\n{broken\n'}), ("n.jsonl:2: not valid JSON",)),
    BadInput("corpus-jsonl-text-not-string", "ddk-teacher", "jsonl text_field holds a number",
             dump_corpora("domains:\n  notes: {paths: [n.jsonl], format: jsonl, text_field: text}\n",
                          **{"n.jsonl": '{"text": 42}\n'}), ("field 'text' is int, expected a string",)),
    BadInput("corpus-bad-parquet", "ddk-teacher", "parquet domain whose file is not parquet",
             dump_corpora("domains:\n  tab: {paths: [t.parquet], format: parquet, text_field: text}\n",
                          **{"t.parquet": b"PAR1 this is not parquet"}), ("t.parquet", "not a readable parquet file")),
    BadInput("corpus-parquet-two-text-columns", "ddk-teacher", "parquet file with two columns named like text_field",
             _parquet(_two_text_columns), ("t.parquet: 2 columns are named 'text'",)),
    BadInput("corpus-parquet-damaged-pages", "ddk-teacher", "parquet file whose data pages are damaged (footer intact)",
             _parquet(_rows_of_text, damage_pages=True), ("t.parquet: row group 1 of 1 is damaged", "write the file")),
    BadInput("corpus-dataset-json-damaged-line", "ddk-teacher", "dataset: json whose second line is cut short",
             dump_corpora("domains:\n  web: {dataset: json, data_files: a.jsonl}\n",
                          **{"a.jsonl": '{"text": "fine"}\n{"text": "cut sh\n'}),
             ("domain 'web': cannot read dataset 'json'", "damaged or not of the builder's format")),
    # ------------------------------------------------------------------ ddk-student train: the store
    BadInput("train-store-missing", "ddk-student", "--store path does not exist",
             lambda ws, t: train(ws, t, store=t / "no-store"), ("no ddk store", "no-store")),
    BadInput("train-store-bad-scheme", "ddk-student", "--store gs://bucket/store (unsupported scheme)",
             lambda ws, t: train(ws, t, store="gs://bucket/store"), ("unsupported scheme 'gs'",)),
    BadInput("train-store-missing-with-storage-options", "ddk-student",
             "--store bucket/prefix (no s3://, no such folder) with --storage-option endpoint_url=...",
             lambda ws, t: train(ws, t, "--storage-option", "endpoint_url=http://127.0.0.1:8333",
                                 store=t / "bucket" / "prefix"),
             ("no ddk store at", "storage options (endpoint_url) were given", "s3://bucket/prefix")),
    BadInput("train-store-is-a-file", "ddk-student", "--store is a regular file",
             lambda ws, t: train(ws, t, store=ws.a_file), ("a_file.txt", "is a file, not a directory")),
    BadInput("train-store-format-2.0", "ddk-student", "store of format_version 2.0",
             lambda ws, t: train(ws, t, store=ws.store_v2), ("format version 2.0 is not supported",)),
    BadInput("train-store-unknown-encoding", "ddk-student", "store encoding 'topk-zip-q3'",
             lambda ws, t: train(ws, t, store=ws.store_unknown_encoding), ("unknown top-k encoding 'topk-zip-q3'",)),
    BadInput("train-store-writing", "ddk-student", "store with status 'writing' (interrupted dump)",
             lambda ws, t: train(ws, t, store=ws.store_writing), ("is incomplete", "status 'writing'")),
    BadInput("train-store-not-ddk", "ddk-student", "--store is a zarr group without ddk metadata",
             lambda ws, t: train(ws, t, store=ws.store_plain_zarr), ("not a ddk store",)),
    BadInput("train-store-root-not-json", "ddk-student", "store root zarr.json is not JSON",
             lambda ws, t: train(ws, t, store=ws.store_bad_json), ("zarr.json is not valid JSON",)),
    BadInput("train-store-group-doc-not-json", "ddk-student", "the store's alpha/train zarr.json is not JSON",
             lambda ws, t: train(ws, t, store=_group_doc_not_json(ws, t, "alpha", spec.SPLIT_TRAIN)),
             ("group 'alpha/train'", "not a zarr group's", "restore it from a copy of the store")),
    # ------------------------------------------------------------------ ddk-student train: the student
    BadInput("train-student-missing", "ddk-student", "--student names a directory that does not exist",
             lambda ws, t: train(ws, t, student=t / "no-student"), ("--student", "no-student", "does not exist")),
    BadInput("train-student-is-a-file", "ddk-student", "--student is a regular file",
             lambda ws, t: train(ws, t, student=ws.a_file), ("--student", "a_file.txt", "is a file")),
    BadInput("train-student-other-tokenizer", "ddk-student", "student tokenizer differs from the store's teacher",
             lambda ws, t: train(ws, t, student=ws.student_other_tok), ("tokenizer fingerprint", "same vocabulary")),
    BadInput("train-student-not-causal-lm", "ddk-student", "--student is a ViT directory (not a causal LM)",
             lambda ws, t: train(ws, t, student=ws.not_causal), ("cannot load the student model", "ViTConfig")),
    BadInput("train-student-without-tokenizer", "ddk-student", "student directory has no tokenizer files",
             lambda ws, t: train(ws, t, student=_strip_tokenizer(ws.student, t / "s")),
             ("cannot load the student tokenizer",)),
    # ------------------------------------------------------------------ ddk-student train: flags and --config
    BadInput("train-alpha-above-one", "ddk-student", "--alpha 1.5", lambda ws, t: train(ws, t, "--alpha", "1.5"),
             ("--alpha must be in [0, 1], got 1.5",)),
    BadInput("train-alpha-negative", "ddk-student", "--alpha -0.1", lambda ws, t: train(ws, t, "--alpha", "-0.1"),
             ("--alpha must be in [0, 1]",)),
    BadInput("train-steps-zero", "ddk-student", "--steps 0 (with --interval 2)",
             lambda ws, t: train(ws, t, "--steps", "0"), ("--steps must be >= 1",)),
    BadInput("train-batch-size-negative", "ddk-student", "--batch-size -2",
             lambda ws, t: train(ws, t, "--batch-size", "-2"), ("--batch-size must be >= 1",)),
    BadInput("train-seed-negative", "ddk-student", "--seed -1", lambda ws, t: train(ws, t, "--seed", "-1"),
             ("--seed must be in [0, 2^63), got -1",)),
    BadInput("train-store-no-training-rows", "ddk-student", "--mixing natural on a store none of whose domains has "
             "training rows", lambda ws, t: train(ws, t, "--mixing", "natural", store=_no_training_rows(ws, t)),
             ("no domain has training rows", "dump the store again")),
    BadInput("train-cache-max-gib-inf", "ddk-student", "--cache-max-gib inf",
             lambda ws, t: train(ws, t, "--cache-dir", str(t / "cache"), "--cache-max-gib", "inf"),
             ("--cache-max-gib must be a finite number, got inf",)),
    BadInput("train-lr-zero", "ddk-student", "--lr 0", lambda ws, t: train(ws, t, "--lr", "0"), ("--lr must be > 0",)),
    BadInput("train-temperature-zero", "ddk-student", "--temperature 0",
             lambda ws, t: train(ws, t, "--temperature", "0"), ("--temperature must be > 0",)),
    BadInput("train-cache-dir-is-a-file", "ddk-student", "--cache-dir names a file",
             lambda ws, t: train(ws, t, "--cache-dir", str(write(t / "afile", "x"))),
             ("--cache-dir", "afile", "not a directory this process can create or write to")),
    BadInput("train-interval-above-steps", "ddk-student", "--interval 9 with --steps 4",
             lambda ws, t: train(ws, t, "--interval", "9"), ("--interval 9 is larger than the run",)),
    BadInput("train-heldout-rows-zero", "ddk-student", "--heldout-rows 0",
             lambda ws, t: train(ws, t, "--heldout-rows", "0"), ("--heldout-rows must be >= 1",)),
    BadInput("train-static-weights-malformed", "ddk-student", "--mixing static --static-weights 'alpha=x'",
             lambda ws, t: train(ws, t, "--mixing", "static", "--static-weights", "alpha=x"),
             ("--static-weights: cannot parse 'alpha=x'",)),
    BadInput("train-static-weights-unknown-domain", "ddk-student", "--static-weights naming a domain not in the store",
             lambda ws, t: train(ws, t, "--mixing", "static", "--static-weights", "alpha=0.5,zeta=0.5"),
             ("--static-weights: unknown domain(s) 'zeta'", "alpha, beta, gamma")),
    BadInput("train-static-weights-without-static", "ddk-student", "--static-weights with --mixing ddk",
             lambda ws, t: train(ws, t, "--static-weights", "alpha=1"), ("only used with --mixing static",)),
    BadInput("train-resume-and-overwrite", "ddk-student", "--resume together with --overwrite",
             lambda ws, t: train(ws, t, "--resume", "--overwrite"), ("--resume and --overwrite exclude each other",)),
    BadInput("train-store-flag-missing", "ddk-student", "no --store at all",
             lambda ws, t: ["train", "--student", str(ws.student), "--out", str(t / "run")], ("--store is required",)),
    BadInput("train-mixing-unknown", "ddk-student", "--mixing best", lambda ws, t: train(ws, t, "--mixing", "best"),
             ("--mixing", "best"), usage=True),
    BadInput("train-steps-not-an-integer", "ddk-student", "--steps many",
             lambda ws, t: train(ws, t, "--steps", "many"), ("--steps", "many"), usage=True),
    BadInput("train-out-is-a-file", "ddk-student", "--out is an existing regular file",
             lambda ws, t: train(ws, t, out=write(t / "run.txt", "x")),
             ("--out", "not a directory")),
    BadInput("train-out-holds-other-data", "ddk-student", "--out directory holds unrelated files",
             lambda ws, t: (write(t / "run" / "notes.txt", "keep me"), train(ws, t))[1], ("holds no ddk-student run",)),
    BadInput("train-overwrite-project-with-config-yaml", "ddk-student",
             "--overwrite of a project folder that has its own config.yaml",
             lambda ws, t: (write(t / "run" / "config.yaml", "lr: 3.0e-4\n"), write(t / "run" / "src" / "main.py", "x"),
                            train(ws, t, "--overwrite"))[2], ("holds no ddk-student run",)),
    BadInput("train-out-inside-store", "ddk-student", "--out inside the --store directory",
             lambda ws, t: train(ws, t, store=_copy(ws.store, t / "store"), out=t / "store" / "run"),
             ("is inside the store", "outside it")),
    BadInput("train-resume-alone-where-no-run", "ddk-student", "--out DIR --resume alone, DIR holding no run (a typo)",
             lambda ws, t: ["train", "--out", str(t / "typo"), "--resume"],
             ("--resume", "no ddk-student run there", "check --out")),
    BadInput("train-resume-run-config-not-yaml", "ddk-student", "--resume on a run whose config.yaml is not YAML",
             lambda ws, t: train(ws, t, "--resume", out=_run_with_bad_config(t)), ("config.yaml", "not valid YAML")),
    BadInput("train-config-missing", "ddk-student", "--config file does not exist",
             lambda ws, t: train(ws, t, "--config", str(t / "none.yaml")), ("--config", "file not found")),
    BadInput("train-config-not-yaml", "ddk-student", "--config is not YAML",
             train_config("steps: [4\n"), ("--config", "not valid YAML")),
    BadInput("train-config-not-a-mapping", "ddk-student", "--config is a YAML list",
             train_config("- steps\n"), ("--config", "expected a mapping")),
    BadInput("train-config-unknown-key", "ddk-student", "--config has unknown key 'batchsize'",
             train_config("batchsize: 3\n"), ("unknown key 'batchsize' (did you mean 'batch_size'?)",)),
    BadInput("train-config-wrong-type", "ddk-student", "--config has alpha: high",
             train_config("alpha: high\n"), ("--alpha: expected float", "high")),
    BadInput("train-config-duplicate-key", "ddk-student", "--config sets alpha twice",
             train_config("alpha: 0.5\nalpha: 0.6\n"), ("--config", "duplicate key 'alpha'")),
    BadInput("train-config-not-utf8", "ddk-student", "--config file is not UTF-8",
             train_config(b"steps: \xff\xfe\n"), ("--config", "not valid YAML")),
    BadInput("train-config-python-tag", "ddk-student", "--config holds !!python/object/apply:os.system",
             lambda ws, t: train(ws, t, "--config", str(write(t / "c.yaml", PYTHON_TAG.format(marker=t / MARKER)))),
             ("--config", "not valid YAML", "python/object/apply")),
    BadInput("train-config-is-a-directory", "ddk-student", "--config is a directory",
             lambda ws, t: train(ws, t, "--config", str(t)), ("--config", "is a directory"), usage=True),
    # ------------------------------------------------------------------ ddk-student eval / report / init
    BadInput("eval-store-missing", "ddk-student", "eval --store path does not exist",
             lambda ws, t: ["eval", "--store", str(t / "no-store"), "--model", str(ws.student)], ("no ddk store",)),
    BadInput("eval-store-writing", "ddk-student", "eval on a store with status 'writing'",
             lambda ws, t: ["eval", "--store", str(ws.store_writing), "--model", str(ws.student)], ("is incomplete",)),
    BadInput("eval-model-missing", "ddk-student", "eval --model names a directory that does not exist",
             lambda ws, t: ["eval", "--store", str(ws.store), "--model", str(t / "no-model")],
             ("--model", "no-model", "does not exist")),
    BadInput("eval-model-not-a-model", "ddk-student", "eval --model names a directory without config.json",
             lambda ws, t: ["eval", "--store", str(ws.store), "--model", str(write(t / "m" / "notes.txt", "x").parent)],
             ("no config.json there", "RUN/checkpoints/step-N")),
    BadInput("eval-batch-size-zero", "ddk-student", "eval --batch-size 0",
             lambda ws, t: ["eval", "--store", str(ws.store), "--model", str(ws.student), "--batch-size", "0"],
             ("--batch-size must be >= 1",)),
    BadInput("eval-heldout-rows-negative", "ddk-student", "eval --heldout-rows -1",
             lambda ws, t: ["eval", "--store", str(ws.store), "--model", str(ws.student), "--heldout-rows", "-1"],
             ("--heldout-rows must be >= 1",)),
    BadInput("report-dir-missing", "ddk-student", "report on a directory that does not exist",
             lambda ws, t: ["report", str(t / "no-run")], ("metrics.jsonl", "not found")),
    BadInput("report-metrics-not-json", "ddk-student", "report on a run whose metrics.jsonl line 2 is not JSON",
             lambda ws, t: ["report", str(_run_with_metrics(t, '{"event": "x", "step": 0}\n{oops\n'))],
             ("metrics.jsonl:2", "not valid JSON")),
    BadInput("report-metrics-missing-keys", "ddk-student", "report on an 'interval' line without its lists",
             lambda ws, t: ["report", str(_run_with_metrics(t, '{"event": "interval", "step": 0}\n'))],
             ("metrics.jsonl:1", "domains")),
    BadInput("report-path-is-a-file", "ddk-student", "report on a regular file",
             lambda ws, t: ["report", str(ws.a_file)], ("RUN_DIR", "is a file"), usage=True),
    BadInput("init-teacher-missing", "ddk-student", "init --teacher names a directory that does not exist",
             lambda ws, t: ["init", "--teacher", str(t / "no-teacher"), "--out", str(t / "student")],
             ("no-teacher", "no config.json")),
    BadInput("init-layers-malformed", "ddk-student", "init --layers two",
             lambda ws, t: ["init", "--teacher", str(ws.student), "--layers", "two", "--out", str(t / "student")],
             ("--layers 'two'",)),
    BadInput("init-out-inside-teacher", "ddk-student", "init --out inside the --teacher directory",
             lambda ws, t: ["init", "--teacher", str(_copy(ws.student, t / "teacher")), "--out",
                            str(t / "teacher" / "student")], ("is inside the teacher directory",)),
    # ------------------------------------------------------------------ ddk-store
    BadInput("info-missing", "ddk-store", "info on a path that does not exist",
             lambda ws, t: ["info", str(t / "no-store")], ("no ddk store", "no-store")),
    BadInput("info-bad-scheme", "ddk-store", "info ftp://host/store", lambda ws, t: ["info", "ftp://host/store"],
             ("unsupported scheme 'ftp'",)),
    BadInput("info-s3-without-prefix", "ddk-store", "info s3://bucket", lambda ws, t: ["info", "s3://bucket"],
             ("s3://bucket", "prefix")),
    BadInput("verify-s3-double-slash", "ddk-store", "verify s3://bucket//stores/a (an empty part in the prefix)",
             lambda ws, t: ["verify", "s3://bucket//stores/a"],
             ("an empty, '.' or '..' part in the prefix", "e.g. s3://bucket/stores/a")),
    BadInput("info-storage-option-unknown", "ddk-store", "info s3://bucket/stores/a --storage-option region_name=x",
             lambda ws, t: ["info", "s3://bucket/stores/a", "--storage-option", "region_name=eu-west-1"],
             ("--storage-option region_name: not an option of the S3 client", "client_kwargs")),
    BadInput("info-s3-dot-dot", "ddk-store", "info s3://bucket/stores/../a", lambda ws, t: ["info", "s3://bucket/stores/../a"],
             ("an empty, '.' or '..' part in the prefix",)),
    BadInput("info-file-url-relative", "ddk-store", "info file://store (host part, not a path)",
             lambda ws, t: ["info", "file://store"], ("file://store", "absolute path")),
    BadInput("info-is-a-file", "ddk-store", "info on a regular file", lambda ws, t: ["info", str(ws.a_file)],
             ("a_file.txt", "is a file, not a directory")),
    BadInput("info-format-2.0", "ddk-store", "info on a store of format_version 2.0",
             lambda ws, t: ["info", str(ws.store_v2)], ("format version 2.0 is not supported",)),
    BadInput("info-unknown-encoding", "ddk-store", "info on a store with encoding 'topk-zip-q3'",
             lambda ws, t: ["info", str(ws.store_unknown_encoding)], ("unknown top-k encoding",)),
    BadInput("info-not-ddk", "ddk-store", "info on a zarr group without ddk metadata",
             lambda ws, t: ["info", str(ws.store_plain_zarr)], ("not a ddk store",)),
    BadInput("info-not-a-store", "ddk-store", "info on a directory of unrelated files",
             lambda ws, t: ["info", str(ws.not_a_store)], ("no ddk store",)),
    BadInput("info-root-not-json", "ddk-store", "info on a store whose root zarr.json is not JSON",
             lambda ws, t: ["info", str(ws.store_bad_json)], ("zarr.json is not valid JSON",)),
    BadInput("info-memory-missing", "ddk-store", "info memory://nothing (no such in-memory store)",
             lambda ws, t: ["info", "memory://nothing-here"], ("no ddk store", "memory://nothing-here")),
    BadInput("info-root-doc-is-an-array", "ddk-store", "info on a store whose root zarr.json says node_type array",
             lambda ws, t: ["info", str(_root_is_array(ws, t))], ("zarr.json", "not a zarr group")),
    BadInput("info-group-doc-not-json", "ddk-store", "info on a store whose alpha/train zarr.json is not JSON",
             lambda ws, t: ["info", str(_group_doc_not_json(ws, t, "alpha", spec.SPLIT_TRAIN))],
             ("group 'alpha/train'", "not a zarr group's", "dump the store again")),
    BadInput("verify-group-doc-not-json", "ddk-store", "verify a store whose alpha/train zarr.json is not JSON",
             lambda ws, t: ["verify", str(_group_doc_not_json(ws, t, "alpha", spec.SPLIT_TRAIN))], ("problem(s)",),
             in_output=("FAIL alpha/train", "not a zarr group's")),
    BadInput("verify-domain-doc-not-json", "ddk-store", "verify a store whose alpha zarr.json (the domain's group) "
             "is not JSON", lambda ws, t: ["verify", str(_group_doc_not_json(ws, t, "alpha"))], ("1 problem(s)",),
             in_output=("FAIL alpha: group 'alpha'", "not a zarr group's")),
    BadInput("verify-unknown-codec", "ddk-store", "verify a store whose tokens array declares codec 'evil.exec'",
             lambda ws, t: ["verify", str(_unknown_codec(ws, t))], ("problem(s)",), in_output=("evil.exec",)),
    BadInput("info-storage-option-malformed", "ddk-store", "info --storage-option endpoint (no '=')",
             lambda ws, t: ["info", str(ws.store), "--storage-option", "endpoint"], ("--storage-option", "KEY=VALUE"),
             usage=True),
    BadInput("verify-missing", "ddk-store", "verify on a path that does not exist",
             lambda ws, t: ["verify", str(t / "no-store")], ("no ddk store at",)),
    BadInput("verify-format-2.0", "ddk-store", "verify on a store of format_version 2.0",
             lambda ws, t: ["verify", str(ws.store_v2)], ("1 problem(s)",),
             in_output=("FAIL store: ", "store format version 2.0 is not supported")),
    BadInput("verify-writing", "ddk-store", "verify on a store with status 'writing' and no unit written",
             lambda ws, t: ["verify", str(ws.store_writing)], ("problem(s)",),
             in_output=("not 'complete'", "not written")),
    BadInput("finalize-units-missing", "ddk-store", "finalize a 'writing' store whose units are not written",
             lambda ws, t: ["finalize", str(_copy(ws.store_writing, t / "w"))],
             ("unit(s) are not written yet", "rerun the dump")),
    BadInput("finalize-group-missing", "ddk-store", "finalize a 'writing' store whose alpha/heldout group is missing "
             "(its dump was killed while creating it)", lambda ws, t: ["finalize", str(_writing_without_group(ws, t))],
             ("group 'alpha/heldout' is missing", "rerun the same `ddk-teacher dump`")),
    BadInput("finalize-format-2.0", "ddk-store", "finalize a store of format_version 2.0",
             lambda ws, t: ["finalize", str(ws.store_v2)], ("format version 2.0 is not supported",)),
    BadInput("finalize-missing", "ddk-store", "finalize a path that does not exist",
             lambda ws, t: ["finalize", str(t / "no-store")], ("no ddk store",)),
]

