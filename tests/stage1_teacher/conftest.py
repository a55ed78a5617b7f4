"""Stage-1 fixtures: one tiny real teacher and one 3-domain corpus per session, plus CLI helpers."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny import TINY_TEXT, build_tiny_llama, build_tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]

#: Settings of every dump of the shared corpus: tiny rows, small units (many resume points), few held-out rows.
SEQ_LEN = 32
TOP_K = 8
HELDOUT = 4
UNIT_ROWS = 16
BASE_FLAGS = ["--seq-len", str(SEQ_LEN), "--top-k", str(TOP_K), "--heldout-seqs", str(HELDOUT), "--backend", "hf",
              "--unit-rows", str(UNIT_ROWS), "--batch-tokens", str(4 * SEQ_LEN), "--device", "cpu",
              "--no-progress"]


def domain_docs(domain: str, n: int) -> list[str]:
    """n deterministic documents for ``domain``, varied so that packing crosses document boundaries."""
    lines = TINY_TEXT[domain]
    return [f"{lines[i % len(lines)]} {lines[(i * 7 + 1) % len(lines)][: 10 + i % 30]} {i}" for i in range(n)]


def write_corpus(root: Path, n_docs: int = 120) -> Path:
    """Three domains in three formats (lines, files, jsonl) plus their CORPORA.yaml; returns the yaml path."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "scripture.txt").write_text("\n".join(domain_docs("scripture", n_docs)) + "\n", encoding="utf-8")
    py = root / "python"
    py.mkdir(exist_ok=True)
    for i, doc in enumerate(domain_docs("python", n_docs)):
        (py / f"mod_{i:04d}.py").write_text(doc, encoding="utf-8")
    with open(root / "legal.jsonl", "w", encoding="utf-8") as f:
        for i, doc in enumerate(domain_docs("legal", n_docs)):
            f.write(json.dumps({"id": i, "body": doc}) + "\n")
    yaml_path = root / "corpora.yaml"
    yaml_path.write_text(
        "domains:\n"
        "  scripture: {paths: [scripture.txt], format: lines}\n"
        "  python: {paths: ['python/**/*.py'], format: files}\n"
        "  legal: {paths: [legal.jsonl], format: jsonl, text_field: body}\n",
        encoding="utf-8",
    )
    return yaml_path


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """A random 2-layer Llama (head_dim 64, context 512) with a tiny BPE tokenizer, saved once per session."""
    root = tmp_path_factory.mktemp("tiny_teacher")
    build_tiny_tokenizer(root / "tok")
    return build_tiny_llama(root / "model", root / "tok")


@pytest.fixture(scope="session")
def corpora_yaml(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def run_cli(argv: list[str]) -> tuple[int, str]:
    """Run `ddk-teacher` in-process through its console entry; returns (exit code, stderr)."""
    from stage1_teacher.cli import main

    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as e:
            code = int(e.code or 0)
    return code, err.getvalue()


def dump_argv(teacher: Path, corpora: Path, store: Path | str, *extra: str) -> list[str]:
    return ["dump", "--teacher", str(teacher), "--corpora", str(corpora), "--store", str(store), *BASE_FLAGS, *extra]


def spawn_dump(argv: list[str], **kw) -> subprocess.Popen:
    """Start `python -m stage1_teacher.cli ...` as a real process (what a user's shell does)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "stage1_teacher.cli", *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def store_arrays(url: str) -> dict[str, object]:
    """Every stored array of a store (raw, as encoded), keyed by path: the basis of 'array-identical'."""
    import zarr

    root = zarr.open_group(url, mode="r")
    out = {}
    for dom_name, dom in root.groups():
        for split_name, split in dom.groups():
            for arr_name, arr in split.arrays():
                out[f"{dom_name}/{split_name}/{arr_name}"] = arr[...]
    return out


@pytest.fixture(scope="session")
def reference_store(tiny_teacher, corpora_yaml, tmp_path_factory) -> Path:
    """One uninterrupted single-process dump of the shared corpus: what resumed and sharded runs must equal."""
    store = tmp_path_factory.mktemp("ref") / "store"
    code, err = run_cli(dump_argv(tiny_teacher, corpora_yaml, store))
    assert code == 0, err
    return store
