"""The tiny corpus: three domains in three formats (lines, files, jsonl) and their CORPORA.yaml."""

from __future__ import annotations

import json
from pathlib import Path

from .models import TINY_TEXT


def domain_docs(domain: str, n: int) -> list[str]:
    """n deterministic documents for ``domain``, varied so that packing crosses document boundaries."""
    lines = TINY_TEXT[domain]
    return [f"{lines[i % len(lines)]} {lines[(i * 7 + 1) % len(lines)][: 10 + i % 30]} {i}" for i in range(n)]


def write_corpus(root: Path, n_docs: int = 120) -> Path:
    """Scripture lines, python files and legal jsonl under ``root``, plus their CORPORA.yaml; returns the yaml path."""
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
